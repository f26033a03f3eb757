"""``python -m luna.eval checkpoint=PATH input=FILE | test_dir=DIR``: quality, codebook and speed report.

Writes report.json, report.md, PNGs and a few reconstruction WAVs into the Hydra run dir. Every report
states the vocoder's ceiling next to the tokens: the input's own mel through the same vocoder, scored the
same way (mel L1 of the re-analysed audio, STOI, wide-band PESQ). User errors
(unreadable input, missing or incompatible checkpoint, mismatched vocoder) print one line
``error: <what>: <reason>`` on stderr and exit with code 2.
"""
from __future__ import annotations

import logging
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from luna.cli import entry_point
from luna.config import CONF_DIR
from luna.validation import validate
from luna.evaluation.evaluate import run_evaluation

log = logging.getLogger("luna.eval")


@hydra.main(config_path=str(CONF_DIR), config_name="eval", version_base="1.3")
@entry_point
def main(cfg: DictConfig) -> None:
    out_dir = Path(HydraConfig.get().runtime.output_dir)
    validate(cfg)  # every cross-field rule, before anything is built
    report = run_evaluation(cfg, out_dir)
    log.info(
        "%d files (%d failed), %.0f bps, %.4g tokens/s: mel_l1=%s si_sdr=%s stoi=%s pesq_wb=%s "
        "(vocoder ceiling, ground-truth mel -> %s: stoi=%s pesq_wb=%s) -> %s",
        report["num_files"], report["num_failed"], report["bitrate_bps"], report["tokens_per_second"],
        report["mel_l1"], report["si_sdr"], report["stoi"], report["pesq_wb"], report["vocoder"],
        report["ceiling_stoi"], report["ceiling_pesq_wb"], out_dir / "report.md",
    )


if __name__ == "__main__":
    main()
