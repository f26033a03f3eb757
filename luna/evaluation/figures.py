"""The reports' figures, with matplotlib's object API (``Figure`` + Agg canvas): nothing here touches pyplot's
global backend state."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Dict, List, Sequence, Tuple, Union

import torch

from luna.evaluation.codebook import codebook_stats
from luna.evaluation.markdown import fmt

__all__ = ["plot_code_usage", "plot_mel_comparison", "plot_quality_vs_bitrate", "plot_rate_distortion"]

PathLike = Union[str, Path]


def _figure(**kw: Any):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(**kw)
    FigureCanvasAgg(fig)
    return fig



def plot_mel_comparison(mel_ref: torch.Tensor, mel_est: torch.Tensor, path: PathLike, title: str = "") -> Path:
    """Original and reconstructed log-mel ``[n_mels, T]`` side by side, on one colour scale."""
    a, b = mel_ref.detach().float().cpu().numpy(), mel_est.detach().float().cpu().numpy()
    vmin, vmax = float(min(a.min(), b.min())), float(max(a.max(), b.max()))
    fig = _figure(figsize=(12, 4), layout="constrained")
    axes = fig.subplots(1, 2, sharey=True)
    for ax, m, name in zip(axes, (a, b), ("original", "reconstructed (decoded mel)")):
        im = ax.imshow(m, origin="lower", aspect="auto", vmin=vmin, vmax=vmax, interpolation="nearest")
        ax.set_title(name)
        ax.set_xlabel("mel frame")
    axes[0].set_ylabel("mel bin")
    fig.colorbar(im, ax=list(axes), label="log-mel")
    if title:
        fig.suptitle(title)
    fig.savefig(path, dpi=100)
    return Path(path)


def plot_code_usage(counts: torch.Tensor, path: PathLike) -> Path:
    """One histogram per quantizer: how often each of the K codes was emitted (counts ``[N, K]``)."""
    counts = counts.detach().cpu().double()
    n, k = counts.shape
    stats = codebook_stats(counts)
    ncols = min(4, n)
    nrows = math.ceil(n / ncols)
    fig = _figure(figsize=(4 * ncols, 2.6 * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False)
    for q in range(nrows * ncols):
        ax = axes[q // ncols][q % ncols]
        if q >= n:
            ax.set_visible(False)
            continue
        ax.stairs(counts[q].numpy(), range(k + 1), fill=True)
        s = stats[q]
        ax.set_title(f"q{q}: usage {100 * s['usage']:.0f}%, ppl {fmt(s['perplexity'], '.1f')}", fontsize=9)
        ax.set_xlim(0, k)
        ax.set_xlabel("code")
        ax.set_ylabel("count")
    fig.savefig(path, dpi=100)
    return Path(path)


def plot_rate_distortion(rows: Sequence[Dict[str, Any]], path: PathLike, metric_label: str = "mel L1") -> Path:
    """Bitrate (kbps) vs mel L1, one line per codebook size; runs missing either value are left out."""
    fig = _figure(figsize=(6, 4.5), layout="constrained")
    ax = fig.subplots()
    by_k: Dict[Any, List[Tuple[float, float]]] = {}
    for r in rows:
        if isinstance(r.get("bitrate_bps"), (int, float)) and isinstance(r.get("mel_l1"), (int, float)):
            by_k.setdefault(r.get("codebook_size"), []).append((r["bitrate_bps"] / 1000.0, r["mel_l1"]))
    for k in sorted(by_k, key=lambda v: (v is None, v if v is not None else 0)):
        pts = sorted(by_k[k])
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=f"K={k}")
    if by_k:
        ax.legend(title="codebook size")
    else:
        ax.text(0.5, 0.5, "no run has both a bitrate and a mel L1", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("bitrate (kbps)")
    ax.set_ylabel(metric_label)
    ax.set_title("rate–distortion")
    ax.grid(True, alpha=0.3)
    fig.savefig(path, dpi=100)
    return Path(path)


def plot_quality_vs_bitrate(points: Sequence[Dict[str, Any]], path: PathLike, note: str = "") -> Path:
    """STOI and wide-band PESQ against kbps, side by side. Each point: ``label``, ``kbps``, ``stoi``, ``pesq_wb``
    and ``group`` (one marker style per group, in first-seen order); a missing value leaves the point out."""
    fig = _figure(figsize=(11, 4.6), layout="constrained")
    axes = fig.subplots(1, 2)
    groups = list(dict.fromkeys(p["group"] for p in points))
    styles = [("o", "tab:blue"), ("s", "tab:orange"), ("^", "tab:green"), ("D", "0.45"), ("v", "tab:red")]
    for ax, key, name in zip(axes, ("stoi", "pesq_wb"), ("STOI", "PESQ-WB")):
        for g, group in enumerate(groups):
            marker, color = styles[g % len(styles)]
            pts = [p for p in points if p["group"] == group and isinstance(p.get(key), (int, float))]
            ax.scatter([p["kbps"] for p in pts], [p[key] for p in pts], marker=marker, color=color, label=group, zorder=3)
            for p in pts:
                ax.annotate(p["label"], (p["kbps"], p[key]), textcoords="offset points", xytext=(4, 3), fontsize=7)
        kbps = [p["kbps"] for p in points] or [1.0]
        ax.set_xscale("log")
        ax.set_xlim(min(kbps) / 1.4, max(kbps) * 2.0)  # room for the labels right of the points
        ticks = [t for t in (0.25, 0.5, 1, 2, 4, 8, 16, 32) if min(kbps) / 1.4 <= t <= max(kbps) * 2.0]
        ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
        ax.set_xlabel("bitrate (kbps, log scale)")
        ax.set_ylabel(name)
        ax.grid(True, alpha=0.3)
    axes[0].legend(fontsize=7, loc="lower right")
    fig.suptitle("quality vs bitrate" + (f"\n{note}" if note else ""), fontsize=9)
    fig.savefig(path, dpi=80)
    return Path(path)
