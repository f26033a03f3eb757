"""The quality yardstick: train a fixed budget on the bundled real speech, evaluate on held-out readers.

    python -m benchmarks.quality --name base                      # the demo recipe (experiment=quickstart)
    python -m benchmarks.quality --name dropout0 model.quantizer_dropout=0.0   # an A/B arm: any overrides
    python -m benchmarks.quality --name base --steps 500 --eval-files 10      # a shorter screen

Each arm trains ``experiment=quickstart`` plus the given overrides for ``--steps`` optimizer steps (a fixed
step count, so an arm's result does not depend on the machine's load; its training time is measured and
reported so arms can be compared at equal CPU time), on ``hardware.threads`` CPU threads, into
``outputs/quality/<name>``; then ``python -m luna.eval`` decodes the held-out LibriSpeech dev-clean readers
(``luna/data/librispeech_mini/dev-clean``, never seen in training) with the default vocoder (the pretrained
universal HiFi-GAN) and reports log-mel L1, STOI and wide-band PESQ next to the vocoder's own ceiling
(ground-truth mel → the same vocoder). One JSON line per arm is appended to ``outputs/quality/results.jsonl``
and a Markdown row printed. Runs resume (``resume=auto``): a finished arm is only re-evaluated.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

ROOT = Path(__file__).resolve().parent.parent  # the repository (benchmarks run from a checkout)
from luna.evaluation.evaluate import DEV_CLEAN

OUT = ROOT / "outputs" / "quality"


def _run(cmd: List[str]) -> float:
    t0 = time.perf_counter()
    r = subprocess.run(cmd, cwd=ROOT, text=True, capture_output=True)
    if r.returncode != 0:
        raise SystemExit(f"failed ({r.returncode}): {' '.join(cmd)}\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}")
    return time.perf_counter() - t0


def _train_seconds(run_dir: Path) -> Optional[float]:
    """Training wall time the trainer recorded (excludes evaluation; survives resumes)."""
    metrics = run_dir / "metrics.json"
    if metrics.is_file():
        m = json.loads(metrics.read_text())
        return m.get("train_seconds") or m.get("elapsed_seconds")
    return None


def _codebook_health(ckpt: Path) -> Dict[str, Any]:
    """Per-quantizer usage and normalized entropy of the training-time assignments at the end of the run."""
    from luna.models.tokenizer import SpeechTokenizer

    stats = SpeechTokenizer.from_checkpoint(ckpt).quantizer.stats()  # the vocoder is built lazily: never here
    return {"usage": [round(s["usage"], 3) for s in stats],
            "entropy": [round(s["entropy_normalized"], 3) for s in stats],
            "replacements": [s["replacements"] for s in stats]}


def measure(name: str, overrides: List[str], steps: int, threads: int, eval_files: Optional[int],
            out: Path = OUT) -> Dict[str, Any]:
    run_dir = out / name
    train_wall = _run([
        sys.executable, "-m", "luna.train", "experiment=quickstart", f"trainer.max_steps={steps}",
        "trainer.max_minutes=0", f"hardware.threads={threads}", "logger=none", "trainer.progress=false",
        *overrides, f"hydra.run.dir={run_dir}",
    ])
    ckpt = run_dir / "checkpoints" / "best.pt"
    eval_dir = run_dir / "eval"
    _run([
        sys.executable, "-m", "luna.eval", f"checkpoint={ckpt}", f"test_dir={DEV_CLEAN}", "device=cpu",
        "eval.save_wavs=2", "eval.rtf_repeats=1", *([f"eval.max_files={eval_files}"] if eval_files else []),
        f"hydra.run.dir={eval_dir}",
    ])
    report = json.loads((eval_dir / "report.json").read_text())
    row = {
        "name": name, "overrides": overrides, "steps": steps, "threads": threads,
        "train_seconds": _train_seconds(run_dir) or train_wall,
        "mel_l1": report.get("mel_l1"), "stoi": report.get("stoi"), "pesq_wb": report.get("pesq_wb"),
        "ceiling": {m: report.get(f"ceiling_{m}") for m in ("mel_l1", "stoi", "pesq_wb")}, "files": report.get("num_files"),
        **_codebook_health(run_dir / "checkpoints" / "last.pt"),
        "command": " ".join(["python -m benchmarks.quality", f"--name {name}", f"--steps {steps}", *overrides]),
    }
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "results.jsonl", "a") as f:
        f.write(json.dumps(row) + "\n")
    return row


def _fmt(x: Any, digits: int = 3) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}" if isinstance(x, float) else str(x)


def main(argv: Optional[List[str]] = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--name", required=True, help="arm name: outputs/quality/NAME")
    p.add_argument("--steps", type=int, default=3000, help="optimizer steps (default: the demo's 3000)")
    p.add_argument("--threads", type=int, default=2, help="torch threads for training (default 2)")
    p.add_argument("--eval-files", type=int, default=None, help="at most this many dev-clean files (default: all 30)")
    p.add_argument("--out", type=Path, default=OUT, help="where arms and results.jsonl go (default outputs/quality)")
    p.add_argument("overrides", nargs="*", help="Hydra overrides of luna.train on top of experiment=quickstart")
    a = p.parse_args(argv)
    row = measure(a.name, a.overrides, a.steps, a.threads, a.eval_files, a.out)
    print("| arm | steps | train s | mel L1 | STOI | PESQ-WB |")
    print("|---|---|---|---|---|---|")
    print(f"| {row['name']} | {row['steps']} | {_fmt(row['train_seconds'], 0)} | {_fmt(row['mel_l1'])} | "
          f"{_fmt(row['stoi'])} | {_fmt(row['pesq_wb'], 2)} |")
    print(json.dumps(row))


if __name__ == "__main__":
    main()
