"""Text of the reports: number formatting, markdown tables, and report.md of one evaluation."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Dict, Iterable, Sequence

__all__ = ["METRIC_KEYS", "PIPELINE_METRICS", "eval_markdown", "fmt", "fmt_duration", "markdown_table"]

#: per-file metrics averaged into report.json (None values are skipped; their reasons are kept)
METRIC_KEYS = (
    "mse",
    "mae",
    "peak_original",
    "peak_reconstructed",
    "mel_l1",
    "mel_l1_resynth",
    "stft_distance",
    "si_sdr",
    "stoi",
    "pesq_wb",
    "ceiling_mel_l1",
    "ceiling_stoi",
    "ceiling_pesq_wb",
)

#: the pipelines table: (metric, the vocoder ceiling's key, column title). The ceiling is the input's own mel
#: through the same vocoder, scored exactly as the tokens' vocoded audio is (whose keys are the metrics')
PIPELINE_METRICS = (
    ("mel_l1_resynth", "ceiling_mel_l1", "mel L1"),
    ("stoi", "ceiling_stoi", "STOI"),
    ("pesq_wb", "ceiling_pesq_wb", "PESQ-WB"),
)




def fmt(x: Any, spec: str = ".4g", missing: str = "n/a") -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return missing
    if isinstance(x, (int, float)) and not isinstance(x, bool):
        return format(x, spec)
    return str(x)


def fmt_duration(seconds: Any) -> str:
    if not isinstance(seconds, (int, float)) or not math.isfinite(seconds):
        return "n/a"
    seconds = float(seconds)
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, sec = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{sec:02d}s"


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)



def eval_markdown(report: Dict[str, Any], images: Sequence[str] = ()) -> str:
    """report.md for one evaluation: headline metrics, codebooks, RTF, failures and undefined values."""
    m = report.get("model", {})
    lines = [
        "# luna evaluation",
        "",
        f"- checkpoint: `{report.get('checkpoint')}`",
        f"- model: {m.get('name')} ({m.get('num_quantizers')} × {m.get('codebook_size')} codes, {m.get('sample_rate')} Hz)",
        f"- **{fmt(report.get('bitrate_bps'), '.0f')} bps, {fmt(report.get('tokens_per_second'), '.4g')} tokens/s**",
        f"- vocoder: {report.get('vocoder')}",
        f"- files evaluated: {report.get('num_files')}, failed: {report.get('num_failed')}",
        "",
    ]
    desc = {
        "mse": "waveform MSE",
        "mae": "waveform MAE",
        "peak_original": "peak |x| of the input",
        "peak_reconstructed": "peak |x| of the reconstruction",
        "mel_l1": "log-mel L1: input mel vs the tokenizer's decoded mel (no vocoder)",
        "mel_l1_resynth": "log-mel L1 of the vocoded audio (includes the vocoder)",
        "stft_distance": "multi-resolution STFT: spectral convergence + log-magnitude L1",
        "si_sdr": "scale-invariant SDR (dB)",
        "stoi": "STOI at 16 kHz (0–1)",
        "pesq_wb": "wide-band PESQ at 16 kHz (1.04–4.64)",
        "ceiling_mel_l1": "log-mel L1 of the input's own mel through the vocoder (the vocoder's ceiling)",
        "ceiling_stoi": "STOI of the input's own mel through the vocoder (the vocoder's ceiling)",
        "ceiling_pesq_wb": "wide-band PESQ of the input's own mel through the vocoder (the vocoder's ceiling)",
    }
    pipelines = report.get("pipelines") or []
    if pipelines:
        lines += [
            "## Tokens vs the vocoder's ceiling (mean over files)",
            "",
            "Same vocoder, same scoring (the audio re-analysed with the model's mel; STOI and wide-band PESQ at "
            "16 kHz). The ceiling vocodes the input's own mel, i.e. a perfect tokenizer's output: its distance "
            "from perfect is what the vocoder costs, the gap between the two rows is what the tokens cost.",
            "",
            markdown_table(["pipeline", *(title for _, _, title in PIPELINE_METRICS)], [
                [p["pipeline"], *(fmt(p.get(metric)) for metric, _, _ in PIPELINE_METRICS)] for p in pipelines
            ]),
            "",
        ]
    lines += ["## Reconstruction (mean over files; undefined values left out)", ""]
    per = report.get("files_per_metric", {})
    lines.append(markdown_table(["metric", "value", "files", "meaning"], [
        [k, fmt(report.get(k)), per.get(k, "n/a"), desc[k]] for k in METRIC_KEYS
    ]))
    cbs = report.get("codebooks") or []
    if cbs:
        lines += ["", "## Codebooks", ""]
        lines.append(markdown_table(["quantizer", "usage", "perplexity", "entropy (norm.)", "dead codes"], [
            [i, f"{100 * c['usage']:.1f}%", fmt(c.get("perplexity"), ".1f"), fmt(c.get("entropy_normalized"), ".3f"), c.get("dead_codes")]
            for i, c in enumerate(cbs)
        ]))
    rtf = report.get("rtf")
    if rtf:
        lines += ["", "## Real-time factor (median wall time / audio duration; below 1 is faster than real time)", ""]
        lines.append(markdown_table(["stage", "RTF", "median s", "audio s", "repeats", "threads", "device"], [
            [stage, fmt(r["rtf"]), fmt(r["seconds_median"]), fmt(r.get("audio_seconds"), ".3g"), r["repeats"], r["threads"], r["device"]]
            for stage, r in rtf.items()
        ]))
    if "quantizer_sweep" in report:
        lines += [
            "",
            "## Quantizer sweep",
            "",
            "Decoding with the first n quantizers only. Meaningful only for models trained with quantizer dropout "
            "(`model.quantizer_dropout` > 0); otherwise the decoder never saw fewer than all N stages.",
            "",
            markdown_table(["quantizers", "bitrate (bps)", "mel_l1"], [
                [s["num_quantizers"], fmt(s["bitrate_bps"], ".0f"), fmt(s["mel_l1"])] for s in report["quantizer_sweep"]
            ]),
        ]
    if report.get("failed"):
        lines += ["", "## Failed files (not evaluated)", ""]
        lines += [f"- `{f['path']}`: {f['reason']}" for f in report["failed"]]
    if report.get("null_reasons"):
        lines += ["", "## Undefined values", ""]
        for metric, items in report["null_reasons"].items():
            for it in items:
                lines.append(f"- {metric}: `{it['path']}`: {it['reason']}")
    if images:
        lines += ["", "## Figures", ""] + [f"![{Path(p).stem}]({Path(p).name})" for p in images]
    return "\n".join(lines) + "\n"
