"""``python -m luna.tokenize checkpoint=PATH data=PRESET output_dir=DIR``: a corpus as token shards for a speech LM.

Thin on purpose (like :mod:`luna.train`): the export (resumable, parallel under torchrun or SLURM) is
:mod:`luna.tokens.writer`; the layout and its reader are :mod:`luna.tokens`. User errors (missing or
incompatible checkpoint, bad settings, missing data, no readable file at all) print one line
``error: ...`` on stderr and exit with code 2.
"""
from __future__ import annotations

import logging

import hydra
from omegaconf import DictConfig

from luna.cli import entry_point
from luna.config import CONF_DIR
from luna.validation import validate

log = logging.getLogger("luna.tokenize")


@hydra.main(config_path=str(CONF_DIR), config_name="tokenize", version_base="1.3")
@entry_point
def main(cfg: DictConfig) -> None:
    from luna.tokens.writer import FAILED_FILE, export  # heavy imports after Hydra parsed the CLI

    validate(cfg)  # every cross-field rule, before anything is built
    summary = export(cfg)
    if summary is not None:
        log.info(
            "done: %d utterances (%.2f h, %d tokens x %d quantizers) in %d shards, %d unreadable file(s) "
            "skipped%s, %.1f s -> %s",
            summary["num_utterances"], summary["total_seconds"] / 3600, summary["total_frames"],
            summary["num_quantizers"], summary["num_shards"], summary["num_failed"],
            f" (listed in {FAILED_FILE})" if summary["num_failed"] else "", summary["elapsed_seconds"],
            summary["output_dir"],
        )


if __name__ == "__main__":
    main()
