"""``python -m luna.report SWEEP_DIR [--eval]``: rate–distortion table and plot of a Hydra multirun sweep.

Writes report.md and rate_distortion.png into SWEEP_DIR and prints the table. With ``--eval`` each run's
best checkpoint (else last) is evaluated on the bundled dev-clean readers (report in ``<run>/eval/``): that
mel L1 replaces the validation mel L1 recorded by the trainer, and STOI / wide-band PESQ columns show the
vocoded tokens next to the vocoder's ceiling (the input's own mel through the same vocoder).
"""
from __future__ import annotations

import argparse
import copy
import logging
import sys
from pathlib import Path
from typing import List, Optional

from luna.cli import entry_point
from luna.errors import DataError, LunaError, one_line
from luna.evaluation.evaluate import DEV_CLEAN
from luna.evaluation.sweep import summarize_sweep, sweep_table, write_sweep_report

log = logging.getLogger("luna.report")


def _evaluate_runs(rows: List[dict], max_files: Optional[int], device: str, vocoder: Optional[str] = None) -> None:
    """Fill each row's mel_l1, STOI and PESQ-WB (with the vocoder's ceiling) from a dev-clean evaluation of its
    checkpoint (eval.yaml defaults; ``vocoder``: a conf/vocoder preset instead of eval.yaml's)."""
    from hydra import compose, initialize_config_dir

    from luna.config import CONF_DIR
    from luna.evaluation.evaluate import run_evaluation

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        base = compose("eval", overrides=[f"vocoder={vocoder}"] if vocoder else [])
    for row in rows:
        row["mel_l1"], row["mel_l1_source"] = None, "eval"
        if row["checkpoint"] is None:
            log.warning("%s: no checkpoints/best.pt or last.pt; mel_l1 left n/a", row["run"])
            continue
        cfg = copy.deepcopy(base)  # a shallow copy would share nodes whose interpolations resolve against base
        # set after composing: sweep run dirs contain '=' and ',' that the override grammar would parse
        cfg.checkpoint, cfg.test_dir, cfg.device = row["checkpoint"], str(DEV_CLEAN), device
        cfg.eval.max_files, cfg.eval.save_wavs = max_files, 0
        cfg.eval.rtf_repeats, cfg.eval.rtf_max_seconds = 1, 2.0  # the sweep table shows quality, not speed
        try:
            report = run_evaluation(cfg, Path(row["run_dir"]) / "eval")
        except LunaError as e:
            log.warning("%s: evaluation failed: %s", row["run"], one_line(e))
            continue
        row["mel_l1"] = report["mel_l1"]
        for key in ("stoi", "pesq_wb", "ceiling_stoi", "ceiling_pesq_wb"):
            row[key] = report.get(key)


def parser() -> argparse.ArgumentParser:
    """The command line of ``python -m luna.report`` (tests/test_docs.py parses the documented commands with it)."""
    p = argparse.ArgumentParser(prog="python -m luna.report", description=__doc__.splitlines()[0])
    p.add_argument("sweep_dir", type=Path, help="a Hydra multirun dir (holds one dir per job)")
    p.add_argument("--eval", action="store_true", help="evaluate each run's checkpoint on the bundled dev-clean readers")
    p.add_argument("--max-files", type=int, default=None, help="with --eval: at most this many dev-clean files")
    p.add_argument("--device", default="auto", help="with --eval: auto | cpu | cuda")
    p.add_argument("--vocoder", default=None,
                   help="with --eval: a conf/vocoder preset (default: conf/eval.yaml's); griffinlim fits any model")
    return p


@entry_point
def main(argv: Optional[List[str]] = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[%(name)s][%(levelname)s] %(message)s")

    if not args.sweep_dir.is_dir():
        raise DataError(f"{args.sweep_dir}: no such directory")
    rows = summarize_sweep(args.sweep_dir)
    if not rows:
        raise DataError(f"{args.sweep_dir}: no run dirs (.hydra/config.yaml with a model node) found")
    if args.eval:
        from luna.devices import resolve_device

        resolve_device(args.device, "--device")  # before any run is evaluated
        _evaluate_runs(rows, args.max_files, args.device, args.vocoder)
    paths = write_sweep_report(args.sweep_dir, rows)
    print(sweep_table(rows))
    print(f"\nwrote {paths['md']} and {paths['png']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
