"""A sweep's summary (``python -m luna.report``): one row per Hydra multirun job, a markdown table and a
rate–distortion plot."""
from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

from omegaconf import DictConfig, OmegaConf

from luna.errors import one_line
from luna.evaluation.evaluate import mean
from luna.evaluation.figures import plot_rate_distortion
from luna.evaluation.markdown import fmt, fmt_duration, markdown_table
from luna.rate import Rate

__all__ = ["find_runs", "read_run", "summarize_sweep", "sweep_table", "write_sweep_report"]

log = logging.getLogger(__name__)

PathLike = Union[str, Path]


def find_runs(sweep_dir: PathLike) -> List[Path]:
    """Run dirs under a sweep dir: every dir holding ``.hydra/config.yaml`` with a ``model`` node."""
    runs = []
    for cfg_path in sorted(Path(sweep_dir).rglob("config.yaml")):
        if cfg_path.parent.name != ".hydra":
            continue
        try:
            cfg = OmegaConf.load(cfg_path)
        except Exception as e:  # a half-written or foreign YAML must not hide the other runs
            log.warning("skipping %s: %s", cfg_path, one_line(e))
            continue
        if isinstance(cfg, DictConfig) and "model" in cfg:
            runs.append(cfg_path.parent.parent)
    return runs


def _select(cfg: DictConfig, key: str) -> Any:
    v = OmegaConf.select(cfg, key, default=None, throw_on_resolution_failure=False)
    return v if isinstance(v, (int, float, str)) and not isinstance(v, bool) else None


def _number(x: Any) -> Optional[float]:
    return float(x) if isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) else None


def read_run(run_dir: PathLike, sweep_dir: Optional[PathLike] = None) -> Dict[str, Any]:
    """One sweep row from ``.hydra/config.yaml``, ``metrics.json`` and ``checkpoints/``; missing values are None."""
    run_dir = Path(run_dir)
    cfg = OmegaConf.load(run_dir / ".hydra" / "config.yaml")
    row: Dict[str, Any] = {
        "run": str(run_dir.relative_to(sweep_dir)) if sweep_dir is not None else run_dir.name,
        "run_dir": str(run_dir),
        "codebook_size": _select(cfg, "model.codebook_size"),
        "num_quantizers": _select(cfg, "model.num_quantizers"),
        "sample_rate": _select(cfg, "model.mel.sample_rate"),
        "hop_length": _select(cfg, "model.mel.hop_length"),
        "encoder_stride": _select(cfg, "model.encoder_stride"),
    }
    sr, hop, stride, k, n = (_number(row[key]) for key in ("sample_rate", "hop_length", "encoder_stride",
                                                         "codebook_size", "num_quantizers"))
    rate = Rate(int(sr), int(hop * stride), int(n or 1), int(k)) if sr and hop and stride and k and k >= 2 else None
    row["tokens_per_second"] = rate.tokens_per_second if rate else None
    row["bitrate_bps"] = rate.bitrate if rate and n else None
    metrics: Dict[str, Any] = {}
    mpath = run_dir / "metrics.json"
    if mpath.is_file():
        try:
            loaded = json.loads(mpath.read_text())
            metrics = loaded if isinstance(loaded, dict) else {}
        except (OSError, ValueError) as e:
            log.warning("%s: unreadable (%s)", mpath, one_line(e))
    row["best_val_loss"] = _number(metrics.get("best_val_loss"))
    row["val_mel_l1"] = _number(metrics.get("val_mel_l1"))
    row["step"] = _number(metrics.get("step"))
    row["elapsed_seconds"] = _number(metrics.get("elapsed_seconds"))
    cbs = [c for c in metrics.get("codebooks") or [] if isinstance(c, dict)]
    row["usage"] = mean([_number(c.get("usage")) for c in cbs]) if cbs else None
    row["perplexity"] = mean([_number(c.get("perplexity")) for c in cbs]) if cbs else None
    ck_dir = run_dir / "checkpoints"
    row["checkpoint"] = next((str(ck_dir / n) for n in ("best.pt", "last.pt") if (ck_dir / n).is_file()), None)
    row["mel_l1"] = row["val_mel_l1"]
    row["mel_l1_source"] = "val"
    return row


def summarize_sweep(sweep_dir: PathLike) -> List[Dict[str, Any]]:
    """Rows for every run of a sweep, ordered by codebook size then quantizer count."""
    sweep_dir = Path(sweep_dir)
    rows = [read_run(r, sweep_dir) for r in find_runs(sweep_dir)]

    def key(r: Dict[str, Any]) -> Tuple:
        return tuple((r[c] is None, r[c] if r[c] is not None else 0) for c in ("codebook_size", "num_quantizers")) + (r["run"],)

    return sorted(rows, key=key)


SWEEP_COLUMNS = ("run", "codebook_size", "num_quantizers", "bitrate (bps)", "tokens/s", "val loss", "mel_l1",
                 "usage", "perplexity", "steps", "time")
#: added when the runs were evaluated (``luna.report --eval``): the tokens' score, the vocoder's ceiling in brackets
SWEEP_EVAL_COLUMNS = ("STOI (ceiling)", "PESQ-WB (ceiling)")


def _with_ceiling(row: Dict[str, Any], metric: str) -> str:
    return f"{fmt(row.get(metric), '.3g')} ({fmt(row.get('ceiling_' + metric), '.3g')})"


def sweep_table(rows: Sequence[Dict[str, Any]]) -> str:
    """The markdown table of a sweep (missing values read "n/a"); STOI and PESQ-WB columns, each with the
    vocoder's ceiling, when the runs were evaluated."""
    evaluated = any(r.get("mel_l1_source") == "eval" for r in rows)
    return markdown_table(SWEEP_COLUMNS + (SWEEP_EVAL_COLUMNS if evaluated else ()), [
        [
            r["run"],
            fmt(r["codebook_size"], "d") if isinstance(r["codebook_size"], int) else fmt(r["codebook_size"]),
            fmt(r["num_quantizers"], "d") if isinstance(r["num_quantizers"], int) else fmt(r["num_quantizers"]),
            fmt(r["bitrate_bps"], ".0f"),
            fmt(r["tokens_per_second"], ".4g"),
            fmt(r["best_val_loss"]),
            fmt(r["mel_l1"]),
            f"{100 * r['usage']:.1f}%" if r["usage"] is not None else "n/a",
            fmt(r["perplexity"], ".1f"),
            fmt(r["step"], ".0f"),
            fmt_duration(r["elapsed_seconds"]),
        ] + ([_with_ceiling(r, "stoi"), _with_ceiling(r, "pesq_wb")] if evaluated else [])
        for r in rows
    ])


def write_sweep_report(sweep_dir: PathLike, rows: Sequence[Dict[str, Any]]) -> Dict[str, Path]:
    """``report.md`` (table) and ``rate_distortion.png`` (bitrate vs mel L1 per codebook size) in the sweep dir."""
    sweep_dir = Path(sweep_dir)
    evaluated = any(r.get("mel_l1_source") == "eval" for r in rows)
    source = (
        "mel_l1: mean log-mel L1 of the best checkpoint on the bundled dev-clean readers (`luna.report --eval`); "
        "STOI and PESQ-WB of its vocoded audio, with the vocoder's ceiling (the input's own mel through the same "
        "vocoder) in brackets"
        if evaluated
        else "mel_l1: the validation mel L1 the trainer recorded in metrics.json"
    )
    png = plot_rate_distortion(rows, sweep_dir / "rate_distortion.png",
                               metric_label="mel L1 (dev-clean eval)" if evaluated else "validation mel L1")
    text = "\n".join([
        f"# Sweep report: {sweep_dir.name}",
        "",
        f"{len(rows)} runs. bitrate = num_quantizers · log2(codebook_size) · tokens/s, "
        "tokens/s = sample_rate / (hop_length · encoder_stride). usage and perplexity: mean over quantizers. "
        f"{source}.",
        "",
        sweep_table(rows),
        "",
        f"![rate-distortion]({png.name})",
        "",
    ])
    md = sweep_dir / "report.md"
    md.write_text(text)
    return {"md": md, "png": png}
