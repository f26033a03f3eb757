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
(ground-truth mel → the same vocoder). It then evaluates the same way on a wider held-out set, 40 readers
of train-clean-100 that the bundled corpus lacks (``benchmarks/unseen_readers.txt``: one utterance each, read
from the shared ``../shared/data/librispeech-mini`` beside the checkout, or ``--unseen-root``); without that
folder it says so and reports dev-clean only. One JSON line per arm is appended to
``outputs/quality/results.jsonl`` (dev-clean at the top level, the 40 readers under ``unseen``) and a
Markdown row printed. Runs resume (``resume=auto``): a finished arm is only re-evaluated.
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
#: the shared LibriSpeech excerpt (251 train-clean-100 readers) beside the checkout; the unseen readers come from it
SHARED_MINI = ROOT.parent / "shared" / "data" / "librispeech-mini"
#: the fixed 40 unseen readers, one utterance each, as paths relative to SHARED_MINI
UNSEEN_LIST = ROOT / "benchmarks" / "unseen_readers.txt"


def unseen_readers(root: Path = SHARED_MINI) -> List[Path]:
    """The 40 unseen readers' files under ``root`` (in the list's order); [] when ``root`` lacks any of them."""
    rel = [ln.strip() for ln in UNSEEN_LIST.read_text().splitlines() if ln.strip() and not ln.startswith("#")]
    files = [root / r for r in rel]
    return files if all(f.is_file() for f in files) else []


def link_files(files: List[Path], folder: Path) -> Path:
    """``folder`` holding a symlink to each file (what ``luna.eval test_dir=`` reads), emptied first."""
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.iterdir():
        old.unlink()
    for f in files:
        (folder / f.name).symlink_to(f.resolve())
    return folder


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
    """The model's rate, and per-quantizer usage and normalized entropy of the training-time assignments at the
    end of the run."""
    from luna.models.tokenizer import SpeechTokenizer

    tok = SpeechTokenizer.from_checkpoint(ckpt)  # the vocoder is built lazily: never here
    stats = tok.quantizer.stats()
    return {"model": tok.config.name, "bitrate_bps": tok.bitrate, "tokens_per_second": tok.frame_rate,
            "usage": [round(s["usage"], 3) for s in stats],
            "entropy": [round(s["entropy_normalized"], 3) for s in stats],
            "replacements": [s["replacements"] for s in stats]}


def eval_command(ckpt: Path, test_dir: Path, eval_dir: Path, eval_files: Optional[int]) -> List[str]:
    """``luna.eval`` of ``ckpt`` on the audio under ``test_dir`` (at most ``eval_files``) into ``eval_dir``."""
    return [sys.executable, "-m", "luna.eval", f"checkpoint={ckpt}", f"test_dir={test_dir}", "device=cpu",
            "eval.save_wavs=2", "eval.rtf_repeats=1", *([f"eval.max_files={eval_files}"] if eval_files else []),
            f"hydra.run.dir={eval_dir}"]


def _scores(report: Dict[str, Any]) -> Dict[str, Any]:
    return {"mel_l1": report.get("mel_l1"), "stoi": report.get("stoi"), "pesq_wb": report.get("pesq_wb"),
            "ceiling": {m: report.get(f"ceiling_{m}") for m in ("mel_l1", "stoi", "pesq_wb")},
            "files": report.get("num_files")}


def measure(name: str, overrides: List[str], steps: int, threads: int, eval_files: Optional[int],
            out: Path = OUT, unseen_root: Path = SHARED_MINI) -> Dict[str, Any]:
    run_dir = out / name
    train_wall = _run([
        sys.executable, "-m", "luna.train", "experiment=quickstart", f"trainer.max_steps={steps}",
        "trainer.max_minutes=0", f"hardware.threads={threads}", "logger=none", "trainer.progress=false",
        *overrides, f"hydra.run.dir={run_dir}",
    ])
    ckpt = run_dir / "checkpoints" / "best.pt"
    eval_dir = run_dir / "eval"
    _run(eval_command(ckpt, DEV_CLEAN, eval_dir, eval_files))
    report = json.loads((eval_dir / "report.json").read_text())
    unseen, unseen_note = None, f"{unseen_root}: absent (or incomplete); evaluated on dev-clean only"
    files = unseen_readers(unseen_root)[:eval_files or None]
    if files:
        unseen_dir = run_dir / "eval-unseen"
        _run(eval_command(ckpt, link_files(files, run_dir / "unseen-readers"), unseen_dir, eval_files))
        unseen = _scores(json.loads((unseen_dir / "report.json").read_text()))
        unseen_note = f"{len(files)} train-clean-100 readers not in the bundled corpus ({UNSEEN_LIST.name})"
    else:
        print(f"note: {unseen_note}", file=sys.stderr)
    row = {
        "name": name, "overrides": overrides, "steps": steps, "threads": threads,
        "train_seconds": _train_seconds(run_dir) or train_wall,
        **_scores(report), "unseen": unseen, "unseen_note": unseen_note,
        **_codebook_health(run_dir / "checkpoints" / "last.pt"),
        "command": " ".join(["python -m benchmarks.quality", f"--name {name}", f"--steps {steps}", *overrides]),
    }
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "results.jsonl", "a") as f:
        f.write(json.dumps(row) + "\n")
    return row


def _fmt(x: Any, digits: int = 3) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}" if isinstance(x, float) else str(x)


def parser() -> argparse.ArgumentParser:
    """The command line (tests/test_docs.py parses the documented arms with it)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--name", required=True, help="arm name: outputs/quality/NAME")
    p.add_argument("--steps", type=int, default=3400, help="optimizer steps (default: the demo's 3400)")
    p.add_argument("--threads", type=int, default=2, help="torch threads for training (default 2)")
    p.add_argument("--eval-files", type=int, default=None,
                   help="at most this many files of each set (default: all 30 dev-clean, all 40 unseen readers)")
    p.add_argument("--unseen-root", type=Path, default=SHARED_MINI,
                   help="the shared librispeech-mini folder holding the unseen readers (default ../shared/data/librispeech-mini)")
    p.add_argument("--out", type=Path, default=OUT, help="where arms and results.jsonl go (default outputs/quality)")
    p.add_argument("overrides", nargs="*", help="Hydra overrides of luna.train on top of experiment=quickstart")
    return p


def main(argv: Optional[List[str]] = None) -> None:
    a = parser().parse_args(argv)
    row = measure(a.name, a.overrides, a.steps, a.threads, a.eval_files, a.out, a.unseen_root)
    u = row["unseen"] or {}
    print("| arm | steps | train s | mel L1 | STOI | PESQ-WB | unseen readers: mel L1 | STOI | PESQ-WB |")
    print("|---|---|---|---|---|---|---|---|---|")
    print(f"| {row['name']} | {row['steps']} | {_fmt(row['train_seconds'], 0)} | {_fmt(row['mel_l1'])} | "
          f"{_fmt(row['stoi'])} | {_fmt(row['pesq_wb'], 2)} | {_fmt(u.get('mel_l1'))} | {_fmt(u.get('stoi'))} | "
          f"{_fmt(u.get('pesq_wb'), 2)} |")
    print(json.dumps(row))


if __name__ == "__main__":
    main()
