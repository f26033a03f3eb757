"""Evaluation reports: one checkpoint on audio files (``luna.eval``) and a summary of a sweep (``luna.report``).

Both entry points are thin; the work lives here so ``luna.report --eval`` can evaluate each run of a sweep
exactly as ``luna.eval`` would without importing an entry point. Figures use matplotlib's object API
(``Figure`` + Agg canvas), so nothing here touches pyplot's global backend state.
"""
from __future__ import annotations

import json
import logging
import math
import statistics
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf, open_dict

from luna.errors import EvalError  # noqa: F401 - raised here, importable from here
from luna import audio as laudio
from luna.config import ConfigError
from luna.data import BUNDLED
from luna.evaluation.codebook import code_histogram, codebook_stats
from luna.evaluation.latency import measure_rtf
from luna.evaluation.metrics import compute_all, mel_l1, mel_l1_from_mels, pesq_wb, stoi

log = logging.getLogger(__name__)

PathLike = Union[str, Path]

#: the bundled corpus' held-out readers (LibriSpeech dev-clean): what `make demo` and ``luna.report --eval`` evaluate on
DEV_CLEAN = BUNDLED / "dev-clean"

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



# ---------------------------------------------------------------------------------------------------
# small helpers
# ---------------------------------------------------------------------------------------------------
def bitrate_bps(num_quantizers: float, codebook_size: float, tokens_per_second: float) -> float:
    """Bits per second of an RVQ token stream: N · log2(K) · tokens/s."""
    return float(num_quantizers) * math.log2(float(codebook_size)) * float(tokens_per_second)


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__


def _finite(x: Any) -> Any:
    """JSON-safe copy: non-finite floats become None, tensors/numpy scalars become Python numbers."""
    if isinstance(x, dict):
        return {str(k): _finite(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_finite(v) for v in x]
    if isinstance(x, torch.Tensor):
        x = x.item() if x.numel() == 1 else x.tolist()
    elif isinstance(x, np.generic):
        x = x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def write_json(obj: Any, path: PathLike) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(_finite(obj), indent=2, allow_nan=False) + "\n")
    return path


def find_audio_files(root: PathLike) -> List[Path]:
    """Every wav/flac/ogg file under ``root`` (recursive, any letter case), sorted for a stable order."""
    root = Path(root)
    return sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in laudio.AUDIO_EXTENSIONS)


def _fmt(x: Any, spec: str = ".4g", missing: str = "n/a") -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return missing
    if isinstance(x, (int, float)) and not isinstance(x, bool):
        return format(x, spec)
    return str(x)


def _fmt_duration(seconds: Any) -> str:
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


def _figure(**kw: Any):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(**kw)
    FigureCanvasAgg(fig)
    return fig


# ---------------------------------------------------------------------------------------------------
# figures
# ---------------------------------------------------------------------------------------------------
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
        ax.set_title(f"q{q}: usage {100 * s['usage']:.0f}%, ppl {_fmt(s['perplexity'], '.1f')}", fontsize=9)
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


# ---------------------------------------------------------------------------------------------------
# one checkpoint on audio files
# ---------------------------------------------------------------------------------------------------
def _resolve_device(name: str) -> torch.device:
    name = str(name)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise EvalError(f"device: must be auto, cpu or cuda[:N], got {name!r}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise EvalError(f"device: {name} requested but CUDA is not available")
    return dev


def _inputs(cfg: DictConfig) -> Tuple[List[Path], Optional[Tuple[torch.Tensor, int]]]:
    """The files to evaluate; in single-file mode the file is loaded here so a bad one fails first."""
    single, folder = cfg.get("input"), cfg.get("test_dir")
    if single and folder:
        raise EvalError("set input=FILE or test_dir=DIR, not both")
    if single:
        path = Path(str(single))
        if path.is_dir():
            raise EvalError(f"{path}: is a directory (use test_dir={path})")
        if not path.is_file():
            raise EvalError(f"{path}: no such file")
        try:
            return [path], laudio.load(path)
        except laudio.AudioError as e:
            raise EvalError(f"{path}: {e}") from None
    if folder:
        root = Path(str(folder))
        if not root.is_dir():
            raise EvalError(f"{root}: no such directory")
        files = find_audio_files(root)
        if not files:
            raise EvalError(f"{root}: no {'/'.join(e[1:] for e in laudio.AUDIO_EXTENSIONS)} files found")
        limit = cfg.eval.get("max_files")
        return (files[: int(limit)] if limit else files), None
    raise EvalError(f"set input=FILE or test_dir=DIR (the bundled dev set is test_dir={DEV_CLEAN})")


def load_tokenizer(cfg: DictConfig, device: torch.device):
    """The checkpoint's tokenizer with ``cfg.vocoder`` attached; ``cfg.model`` becomes the checkpoint's model.

    The vocoder presets interpolate ``${model.mel}``; in evaluation the model is whatever the checkpoint
    was trained as, so its config is merged in as ``cfg.model`` before the vocoder node is resolved.
    """
    from luna.models.tokenizer import CheckpointError, SpeechTokenizer
    from luna.models.vocoder import build_vocoder

    ck = Path(str(cfg.checkpoint))
    try:
        tok = SpeechTokenizer.from_checkpoint(ck, map_location="cpu")
    except CheckpointError as e:
        msg = _one_line(e)
        raise EvalError(msg if msg.startswith(str(ck)) else f"{ck}: {msg}") from None
    with open_dict(cfg):
        cfg.model = OmegaConf.create(OmegaConf.to_container(tok.config, resolve=True))
    try:  # build_vocoder validates the vocoder node (luna.config.validate would read `checkpoint` as the trainer's group)
        vocoder = build_vocoder(cfg.vocoder, model_mel=tok.config.mel)
    except (ConfigError, ValueError, RuntimeError, OSError) as e:
        raise EvalError(f"vocoder ({cfg.vocoder.get('name', '?')}): {_one_line(e)}") from None
    tok = tok.to(device).eval()
    tok.set_vocoder(vocoder.to(device))
    return tok


def _fit(audio: torch.Tensor, n: int) -> torch.Tensor:
    """``audio`` cropped or zero-padded to ``n`` samples."""
    return audio[:n] if audio.numel() >= n else torch.nn.functional.pad(audio, (0, n - audio.numel()))


def _vocoder_ceiling(tok, ref: torch.Tensor, mel_ref: torch.Tensor) -> Tuple[Dict[str, Any], Dict[str, str], Optional[torch.Tensor]]:
    """The input's own log-mel through the same vocoder, scored like the tokens' audio: (values, reasons, audio).

    What the vocoder alone costs, so a report separates it from what the tokens cost.
    """
    keys = [k for _, k, _ in PIPELINE_METRICS]
    if mel_ref.shape[-1] == 0:
        return dict.fromkeys(keys), dict.fromkeys(keys, "clip shorter than one mel frame"), None
    sr = tok.sample_rate
    est = _fit(tok.vocode(mel_ref.unsqueeze(0))[0].float().cpu(), ref.numel())  # [n // hop * hop] -> [n]
    results = {"ceiling_mel_l1": mel_l1(ref, est, tok.mel), "ceiling_stoi": stoi(ref, est, sr),
               "ceiling_pesq_wb": pesq_wb(ref, est, sr)}
    values = {k: r.value for k, r in results.items()}
    reasons = {k: r.reason or "undefined" for k, r in results.items() if r.value is None}
    return values, reasons, est


def _evaluate_file(tok, ref: torch.Tensor, sweep: bool) -> Dict[str, Any]:
    """Tokenize → decode → vocode one mono clip at the model rate, and the vocoder's ceiling (ground-truth
    mel → the same vocoder); metrics on the original length."""
    sr = tok.sample_rate
    n = ref.numel()
    x = ref.to(tok.device)
    codes = tok.tokenize(x, sr)  # [1, N, T]
    mel_hat = tok.decode_mel(codes)  # [1, n_mels, T*stride]
    est = _fit(tok.vocode(mel_hat)[0].float().cpu(), n)  # vocoded [S'] with S' >= n (whole tokens)
    mel_ref = tok.mel(x.unsqueeze(0))[0]  # [n_mels, n // hop]
    values, reasons = compute_all(ref, est, sr, mel_module=tok.mel)
    values["mel_l1_resynth"] = values.pop("mel_l1")  # audio-level mel L1 (includes the vocoder)
    if "mel_l1" in reasons:
        reasons["mel_l1_resynth"] = reasons.pop("mel_l1")
    res = mel_l1_from_mels(mel_ref, mel_hat[0])  # the tokenizer's own reconstruction, vocoder-independent
    values["mel_l1"] = res.value
    if res.value is None:
        reasons["mel_l1"] = res.reason or "undefined"
    ceiling, ceiling_reasons, ceiling_est = _vocoder_ceiling(tok, ref, mel_ref)
    values.update(ceiling)
    reasons.update(ceiling_reasons)
    out = {"values": values, "reasons": reasons, "codes": codes.cpu(), "est": est, "ceiling_est": ceiling_est,
           "mel_ref": mel_ref.cpu(), "mel_hat": mel_hat[0, :, : mel_ref.shape[-1]].cpu()}
    if sweep:  # RVQ stage n depends only on stages < n, so a prefix of the codes is the n-quantizer encoding
        out["sweep"] = [
            mel_l1_from_mels(mel_ref, tok.decode_mel(codes[:, :q])[0]).value for q in range(1, codes.shape[1] + 1)
        ]
    return out


def _mean(xs: List[Optional[float]]) -> Optional[float]:
    vals = [x for x in xs if x is not None and math.isfinite(x)]
    return float(statistics.fmean(vals)) if vals else None


def run_evaluation(cfg: DictConfig, out_dir: PathLike) -> Dict[str, Any]:
    """Evaluate ``cfg.checkpoint`` on ``cfg.input`` or every audio file under ``cfg.test_dir``.

    Writes report.json, report.md, PNGs and the first ``eval.save_wavs`` reconstructions into ``out_dir``;
    returns the report. Raises :class:`EvalError` (one line) for a bad single input, a missing or
    incompatible checkpoint, a bad vocoder, or a directory in which no file could be read.
    """
    out_dir = Path(out_dir)
    ev = cfg.eval
    if OmegaConf.is_missing(cfg, "checkpoint") or not cfg.checkpoint:
        raise EvalError("checkpoint: required, e.g. checkpoint=outputs/runs/<run>/checkpoints/best.pt")
    files, preloaded = _inputs(cfg)
    device = _resolve_device(cfg.get("device", "auto"))
    tok = load_tokenizer(cfg, device)
    torch.manual_seed(int(cfg.get("seed", 0)))
    sr, k = tok.sample_rate, tok.codebook_size
    counts = torch.zeros(tok.num_quantizers, k, dtype=torch.long)
    per_file: List[Dict[str, Any]] = []
    failed: List[Dict[str, str]] = []
    null_reasons: Dict[str, List[Dict[str, str]]] = {}
    sweeps: List[List[Optional[float]]] = []
    first_mels: Optional[Tuple[torch.Tensor, torch.Tensor, str]] = None
    longest: Optional[torch.Tensor] = None
    save_wavs = int(ev.get("save_wavs", 0) or 0)

    with torch.inference_mode():
        for path in files:
            if preloaded is not None:
                wav, file_sr = preloaded
            else:
                try:
                    wav, file_sr = laudio.load(path)
                except laudio.AudioError as e:
                    failed.append({"path": str(path), "reason": str(e)})
                    log.warning("skipped %s: %s", path, e)
                    continue
            ref = laudio.resample(wav, file_sr, sr).float().cpu()
            r = _evaluate_file(tok, ref, bool(ev.get("quantizer_sweep", False)))
            counts += code_histogram(r["codes"], k)
            for name, reason in r["reasons"].items():
                null_reasons.setdefault(name, []).append({"path": str(path), "reason": reason})
            per_file.append({"path": str(path), "seconds": wav.numel() / file_sr, "sample_rate": file_sr, **r["values"]})
            if "sweep" in r:
                sweeps.append(r["sweep"])
            if first_mels is None and r["mel_ref"].shape[-1] > 0:
                first_mels = (r["mel_ref"], r["mel_hat"], path.name)
            if longest is None or ref.numel() > longest.numel():
                longest = ref
            if len(per_file) <= save_wavs:
                stem = f"{len(per_file) - 1:03d}_{path.stem}"
                laudio.save(out_dir / "wavs" / f"{stem}_original.wav", ref, sr)
                laudio.save(out_dir / "wavs" / f"{stem}_reconstructed.wav", r["est"], sr)
                if r["ceiling_est"] is not None:  # what the vocoder makes of the input's own mel
                    laudio.save(out_dir / "wavs" / f"{stem}_ceiling.wav", r["ceiling_est"], sr)
            log.info("%s: %s", path, ", ".join(f"{m}={_fmt(r['values'].get(m))}"
                                               for m in ("mel_l1", "si_sdr", "stoi", "ceiling_stoi", "pesq_wb", "ceiling_pesq_wb")))

        rtf = _measure_rtfs(tok, longest, ev, device) if longest is not None else None

    report: Dict[str, Any] = {m: _mean([f.get(m) for f in per_file]) for m in METRIC_KEYS}
    vocoder = str(cfg.vocoder.get("name", cfg.vocoder.get("kind")))
    report.update(
        pipelines=pipeline_rows(report, vocoder),
        bitrate_bps=float(tok.bitrate),
        tokens_per_second=float(tok.frame_rate),
        codebooks=codebook_stats(counts) if per_file else [],
        rtf=rtf,
        num_files=len(per_file),
        num_failed=len(failed),
        vocoder=vocoder,
        failed=failed,
        null_reasons=null_reasons,
        files_per_metric={m: sum(f.get(m) is not None for f in per_file) for m in METRIC_KEYS},
        checkpoint=str(cfg.checkpoint),
        model={
            "name": tok.config.get("name"),
            "sample_rate": sr,
            "num_quantizers": tok.num_quantizers,
            "codebook_size": k,
            "encoder_stride": int(tok.config.encoder_stride),
            "hop_length": int(tok.config.mel.hop_length),
        },
    )
    if ev.get("quantizer_sweep", False):
        report["quantizer_sweep"] = [
            {"num_quantizers": q, "bitrate_bps": bitrate_bps(q, k, tok.frame_rate), "mel_l1": _mean([s[q - 1] for s in sweeps])}
            for q in range(1, tok.num_quantizers + 1)
        ]
    report["per_file"] = per_file
    write_eval_report(report, out_dir, counts=counts if per_file else None, mels=first_mels)
    if not per_file:
        where = cfg.get("test_dir") or cfg.get("input")
        raise EvalError(f"{where}: none of {len(files)} files could be read (see {out_dir / 'report.json'})")
    return report


def pipeline_rows(report: Dict[str, Any], vocoder: str) -> List[Dict[str, Any]]:
    """The vocoder's ceiling (ground-truth mel → vocoder) and the tokens (tokens → vocoder), same metrics:
    the gap between the rows is what the tokens cost, the gap between the ceiling and perfect is the vocoder's."""
    ceiling = {"pipeline": f"ground-truth mel → {vocoder} (ceiling)", "input": "ground-truth mel"}
    tokens = {"pipeline": f"tokens → {vocoder}", "input": "tokens"}
    for metric, ceiling_key, _ in PIPELINE_METRICS:
        ceiling[metric], tokens[metric] = report.get(ceiling_key), report.get(metric)
    return [ceiling, tokens]


def _measure_rtfs(tok, clip: torch.Tensor, ev: DictConfig, device: torch.device) -> Dict[str, Any]:
    """RTF of tokenize, detokenize and the vocoder alone, on the longest clip (capped at rtf_max_seconds)."""
    sr = tok.sample_rate
    max_s = ev.get("rtf_max_seconds")
    if max_s:
        clip = clip[: int(max_s * sr)]
    x = clip.to(device)
    seconds = x.numel() / sr
    repeats = int(ev.get("rtf_repeats", 5))
    codes = tok.tokenize(x, sr)
    mel_hat = tok.decode_mel(codes)
    return {
        "tokenize": measure_rtf(lambda: tok.tokenize(x, sr), seconds, warmup=1, repeats=repeats, device=device),
        "detokenize": measure_rtf(lambda: tok.detokenize(codes), seconds, warmup=1, repeats=repeats, device=device),
        "vocoder": measure_rtf(lambda: tok.vocode(mel_hat), seconds, warmup=1, repeats=repeats, device=device),
    }


def eval_markdown(report: Dict[str, Any], images: Sequence[str] = ()) -> str:
    """report.md for one evaluation: headline metrics, codebooks, RTF, failures and undefined values."""
    m = report.get("model", {})
    lines = [
        "# luna evaluation",
        "",
        f"- checkpoint: `{report.get('checkpoint')}`",
        f"- model: {m.get('name')} ({m.get('num_quantizers')} × {m.get('codebook_size')} codes, {m.get('sample_rate')} Hz)",
        f"- **{_fmt(report.get('bitrate_bps'), '.0f')} bps, {_fmt(report.get('tokens_per_second'), '.4g')} tokens/s**",
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
                [p["pipeline"], *(_fmt(p.get(metric)) for metric, _, _ in PIPELINE_METRICS)] for p in pipelines
            ]),
            "",
        ]
    lines += ["## Reconstruction (mean over files; undefined values left out)", ""]
    per = report.get("files_per_metric", {})
    lines.append(markdown_table(["metric", "value", "files", "meaning"], [
        [k, _fmt(report.get(k)), per.get(k, "n/a"), desc[k]] for k in METRIC_KEYS
    ]))
    cbs = report.get("codebooks") or []
    if cbs:
        lines += ["", "## Codebooks", ""]
        lines.append(markdown_table(["quantizer", "usage", "perplexity", "entropy (norm.)", "dead codes"], [
            [i, f"{100 * c['usage']:.1f}%", _fmt(c.get("perplexity"), ".1f"), _fmt(c.get("entropy_normalized"), ".3f"), c.get("dead_codes")]
            for i, c in enumerate(cbs)
        ]))
    rtf = report.get("rtf")
    if rtf:
        lines += ["", "## Real-time factor (median wall time / audio duration; below 1 is faster than real time)", ""]
        lines.append(markdown_table(["stage", "RTF", "median s", "audio s", "repeats", "threads", "device"], [
            [stage, _fmt(r["rtf"]), _fmt(r["seconds_median"]), _fmt(r.get("audio_seconds"), ".3g"), r["repeats"], r["threads"], r["device"]]
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
                [s["num_quantizers"], _fmt(s["bitrate_bps"], ".0f"), _fmt(s["mel_l1"])] for s in report["quantizer_sweep"]
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


def write_eval_report(
    report: Dict[str, Any],
    out_dir: PathLike,
    counts: Optional[torch.Tensor] = None,
    mels: Optional[Tuple[torch.Tensor, torch.Tensor, str]] = None,
) -> Dict[str, Path]:
    """report.json, report.md and (when data is given) mel_comparison.png and code_usage.png."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths: Dict[str, Path] = {}
    if mels is not None:
        paths["mel_comparison"] = plot_mel_comparison(mels[0], mels[1], out_dir / "mel_comparison.png", title=mels[2])
    if counts is not None:
        paths["code_usage"] = plot_code_usage(counts, out_dir / "code_usage.png")
    paths["json"] = write_json(report, out_dir / "report.json")
    paths["md"] = out_dir / "report.md"
    paths["md"].write_text(eval_markdown(report, [str(p) for k, p in paths.items() if k not in ("json", "md")]))
    return paths


# ---------------------------------------------------------------------------------------------------
# a sweep: one row per Hydra multirun job
# ---------------------------------------------------------------------------------------------------
def find_runs(sweep_dir: PathLike) -> List[Path]:
    """Run dirs under a sweep dir: every dir holding ``.hydra/config.yaml`` with a ``model`` node."""
    runs = []
    for cfg_path in sorted(Path(sweep_dir).rglob("config.yaml")):
        if cfg_path.parent.name != ".hydra":
            continue
        try:
            cfg = OmegaConf.load(cfg_path)
        except Exception as e:  # a half-written or foreign YAML must not hide the other runs
            log.warning("skipping %s: %s", cfg_path, _one_line(e))
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
    sr, hop, stride = (_number(row[k]) for k in ("sample_rate", "hop_length", "encoder_stride"))
    row["tokens_per_second"] = sr / (hop * stride) if sr and hop and stride else None
    k, n = _number(row["codebook_size"]), _number(row["num_quantizers"])
    row["bitrate_bps"] = (
        bitrate_bps(n, k, row["tokens_per_second"]) if n and k and k >= 2 and row["tokens_per_second"] else None
    )
    metrics: Dict[str, Any] = {}
    mpath = run_dir / "metrics.json"
    if mpath.is_file():
        try:
            loaded = json.loads(mpath.read_text())
            metrics = loaded if isinstance(loaded, dict) else {}
        except (OSError, ValueError) as e:
            log.warning("%s: unreadable (%s)", mpath, _one_line(e))
    row["best_val_loss"] = _number(metrics.get("best_val_loss"))
    row["val_mel_l1"] = _number(metrics.get("val_mel_l1"))
    row["step"] = _number(metrics.get("step"))
    row["elapsed_seconds"] = _number(metrics.get("elapsed_seconds"))
    cbs = [c for c in metrics.get("codebooks") or [] if isinstance(c, dict)]
    row["usage"] = _mean([_number(c.get("usage")) for c in cbs]) if cbs else None
    row["perplexity"] = _mean([_number(c.get("perplexity")) for c in cbs]) if cbs else None
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
    return f"{_fmt(row.get(metric), '.3g')} ({_fmt(row.get('ceiling_' + metric), '.3g')})"


def sweep_table(rows: Sequence[Dict[str, Any]]) -> str:
    """The markdown table of a sweep (missing values read "n/a"); STOI and PESQ-WB columns, each with the
    vocoder's ceiling, when the runs were evaluated."""
    evaluated = any(r.get("mel_l1_source") == "eval" for r in rows)
    return markdown_table(SWEEP_COLUMNS + (SWEEP_EVAL_COLUMNS if evaluated else ()), [
        [
            r["run"],
            _fmt(r["codebook_size"], "d") if isinstance(r["codebook_size"], int) else _fmt(r["codebook_size"]),
            _fmt(r["num_quantizers"], "d") if isinstance(r["num_quantizers"], int) else _fmt(r["num_quantizers"]),
            _fmt(r["bitrate_bps"], ".0f"),
            _fmt(r["tokens_per_second"], ".4g"),
            _fmt(r["best_val_loss"]),
            _fmt(r["mel_l1"]),
            f"{100 * r['usage']:.1f}%" if r["usage"] is not None else "n/a",
            _fmt(r["perplexity"], ".1f"),
            _fmt(r["step"], ".0f"),
            _fmt_duration(r["elapsed_seconds"]),
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
