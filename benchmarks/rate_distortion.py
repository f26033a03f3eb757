"""The rate–distortion picture: STOI and wide-band PESQ against kbps, luna's measured runs next to published codecs.

    python -m benchmarks.rate_distortion                              # outputs/quality/results.jsonl if present
    python -m benchmarks.rate_distortion --results a.jsonl --sweep outputs/sweeps/DIR --out docs

luna's points come from ``benchmarks.quality`` rows (``results.jsonl``: dev-clean, and the 40 unseen
train-clean-100 readers when the row has them), from evaluated sweeps (``luna.report --eval`` leaves
``<run>/eval/report.json``) and from the measurements docs/quality.md records (``RECORDED``). The published points are
another test set, LibriSpeech test-clean, as the Llasa / X-Codec2 paper reports them (arXiv 2502.04128, Table 1):
the figure says so. Writes ``rate_distortion.png`` and ``rate_distortion.json`` (every point behind it).
"""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional

ROOT = Path(__file__).resolve().parent.parent
from luna.evaluation.figures import plot_quality_vs_bitrate

PUBLISHED_SOURCE = "LibriSpeech test-clean, Llasa/X-Codec2 paper (arXiv 2502.04128) Table 1"
#: (codec, kbps, STOI, PESQ-WB) as that table reports them
PUBLISHED = [("DAC-16k", 6.0, 0.95, 4.01), ("EnCodec", 6.0, 0.94, 2.77), ("EnCodec", 1.5, 0.85, 1.56),
             ("Mimi", 1.1, 0.91, 2.25), ("BigCodec", 1.04, 0.93, 2.68), ("X-Codec2", 0.8, 0.92, 2.43),
             ("WavTokenizer", 0.9, 0.90, 2.13), ("SpeechTokenizer", 1.0, 0.77, 1.25)]
#: luna measurements docs/quality.md records (the causal quality cost, 2026-12-01; dev-clean, universal HiFi-GAN)
RECORDED = [
    {"name": "noncausal3000", "label": "rvq8_256, 3k steps", "bitrate_bps": 22050 / 512 * 80, "stoi": 0.895, "pesq_wb": 1.97,
     "command": "python -m benchmarks.quality --name noncausal3000 --steps 3000"},
    {"name": "causal3000", "label": "rvq8_256 causal, 3k steps", "bitrate_bps": 22050 / 512 * 80, "stoi": 0.834, "pesq_wb": 1.37,
     "command": "python -m benchmarks.quality --name causal3000 --steps 3000 model.causal=true"},
]
DEV_CLEAN_SET = "LibriSpeech dev-clean (2 readers)"
UNSEEN_SET = "LibriSpeech train-clean-100, 40 readers not bundled"


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def published_points() -> List[Dict[str, Any]]:
    return [{"label": f"{c} {k:g}", "kbps": k, "stoi": s, "pesq_wb": p, "group": "published (test-clean)",
             "test_set": PUBLISHED_SOURCE} for c, k, s, p in PUBLISHED]


def _arm_bitrate(row: Dict[str, Any]) -> Optional[float]:
    """A quality row's bitrate: recorded in the row, else the rate of ``experiment=quickstart`` + its overrides."""
    if _finite(row.get("bitrate_bps")):
        return float(row["bitrate_bps"])
    from hydra import compose, initialize_config_dir

    from luna.config import CONF_DIR
    from luna.rate import model_rate

    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            cfg = compose("train", overrides=["experiment=quickstart", *row.get("overrides", [])])
        return model_rate(cfg.model).bitrate
    except Exception:  # an arm whose overrides no longer compose: no bitrate, no point
        return None


def quality_points(results: Path) -> List[Dict[str, Any]]:
    """Points of a ``benchmarks.quality`` results.jsonl: dev-clean, and the unseen readers when scored."""
    points = []
    for line in results.read_text().splitlines():
        row = json.loads(line) if line.strip() else None
        bps = _arm_bitrate(row) if row else None
        if bps is None:
            continue
        for group, test_set, scores in (("luna, dev-clean", DEV_CLEAN_SET, row),
                                        ("luna, 40 unseen readers", UNSEEN_SET, row.get("unseen") or {})):
            if _finite(scores.get("stoi")) or _finite(scores.get("pesq_wb")):
                points.append({"label": row["name"], "kbps": bps / 1000, "stoi": scores.get("stoi"),
                               "pesq_wb": scores.get("pesq_wb"), "group": group, "test_set": test_set,
                               "steps": row.get("steps"), "command": row.get("command"), "source": str(results)})
    return points


def sweep_points(sweep_dir: Path) -> List[Dict[str, Any]]:
    """Points of a sweep's runs that ``luna.report --eval`` evaluated (``<run>/eval/report.json``)."""
    from luna.evaluation.sweep import summarize_sweep

    points = []
    for r in summarize_sweep(sweep_dir):
        report = Path(r["run_dir"]) / "eval" / "report.json"
        if r["bitrate_bps"] is None or not report.is_file():
            continue
        rep = json.loads(report.read_text())
        points.append({"label": r["run"], "kbps": r["bitrate_bps"] / 1000, "stoi": rep.get("stoi"),
                       "pesq_wb": rep.get("pesq_wb"), "group": "luna, dev-clean", "test_set": DEV_CLEAN_SET,
                       "source": str(sweep_dir)})
    return points


def recorded_points() -> List[Dict[str, Any]]:
    return [{"label": r["label"], "kbps": r["bitrate_bps"] / 1000, "stoi": r["stoi"], "pesq_wb": r["pesq_wb"],
             "group": "luna, dev-clean", "test_set": DEV_CLEAN_SET, "command": r["command"], "source": "docs/quality.md"}
            for r in RECORDED]


def write_picture(luna: Iterable[Dict[str, Any]], out: Path) -> Dict[str, Path]:
    """``rate_distortion.png`` and ``rate_distortion.json`` (luna's points, then the published ones) in ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    points = [*luna, *published_points()]
    sets = list(dict.fromkeys(pt["test_set"] for pt in points if pt["group"].startswith("luna")))
    note = f"luna: {'; '.join(sets) or 'no points'}\npublished: {PUBLISHED_SOURCE}: a different test set"
    png = plot_quality_vs_bitrate(points, out / "rate_distortion.png", note)
    data = out / "rate_distortion.json"
    data.write_text(json.dumps({"note": note, "points": points}, indent=1) + "\n")
    return {"png": png, "json": data}


def main(argv: Optional[List[str]] = None) -> None:
    default = ROOT / "outputs" / "quality" / "results.jsonl"
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--results", type=Path, action="append", default=None,
                   help="a benchmarks.quality results.jsonl (repeatable; default outputs/quality/results.jsonl if present)")
    p.add_argument("--sweep", type=Path, action="append", default=[], help="a sweep dir evaluated by luna.report --eval")
    p.add_argument("--out", type=Path, default=ROOT / "outputs" / "quality", help="where the PNG and JSON go")
    a = p.parse_args(argv)
    results = a.results if a.results is not None else [default] if default.is_file() else []
    luna = [pt for r in results for pt in quality_points(r)] + [pt for s in a.sweep for pt in sweep_points(s)]
    paths = write_picture(luna + recorded_points(), a.out)
    print(f"{len(luna)} luna points from {len(results)} results files and {len(a.sweep)} sweeps "
          f"(+ {len(RECORDED)} recorded in docs/quality.md, {len(PUBLISHED)} published): wrote {paths['png']} and {paths['json']}")


if __name__ == "__main__":
    main()
