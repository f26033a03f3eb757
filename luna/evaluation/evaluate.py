"""One checkpoint on audio files (``python -m luna.eval``): per-file metrics, the vocoder's ceiling, codebook
health and real-time factors, written as report.json, report.md, figures and a few WAVs.

The entry points are thin; the work lives here so ``luna.report --eval`` can evaluate each run of a sweep
exactly as ``luna.eval`` would without importing an entry point.
"""
from __future__ import annotations

import logging
import math
import statistics
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

import torch
from omegaconf import DictConfig, OmegaConf, open_dict

from luna import audio as laudio
from luna.data import BUNDLED
from luna.devices import resolve_device
from luna.errors import EvalError, LunaError, one_line
from luna.evaluation.codebook import code_histogram, codebook_stats
from luna.evaluation.figures import plot_code_usage, plot_mel_comparison
from luna.evaluation.latency import measure_rtf
from luna.evaluation.markdown import METRIC_KEYS, PIPELINE_METRICS, eval_markdown, fmt
from luna.evaluation.metrics import compute_all, mel_l1, mel_l1_from_mels, pesq_wb, stoi
from luna.serialization import write_json

__all__ = ["DEV_CLEAN", "EvalError", "find_audio_files", "run_evaluation",
           "write_eval_report"]

log = logging.getLogger(__name__)

PathLike = Union[str, Path]

#: the bundled corpus' held-out readers (LibriSpeech dev-clean): what `make demo` and ``luna.report --eval`` evaluate on
DEV_CLEAN = BUNDLED / "dev-clean"


def mean(xs: List[Optional[float]]) -> Optional[float]:
    vals = [x for x in xs if x is not None and math.isfinite(x)]
    return float(statistics.fmean(vals)) if vals else None



def find_audio_files(root: PathLike) -> List[Path]:
    """Every wav/flac/ogg file under ``root`` (recursive, any letter case), sorted for a stable order."""
    root = Path(root)
    return sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in laudio.AUDIO_EXTENSIONS)



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



def _tokenizer(cfg: DictConfig, device: torch.device):
    """The checkpoint's tokenizer with ``cfg.vocoder`` attached; ``cfg.model`` becomes the checkpoint's model.

    The vocoder presets interpolate ``${model.mel}``; in evaluation the model is whatever the checkpoint
    was trained as, so its config is merged in as ``cfg.model`` before the vocoder node is resolved.
    """
    from luna.models.load import attach_vocoder, load_tokenizer

    try:
        tok = load_tokenizer(str(cfg.checkpoint), device)
    except LunaError as e:  # names the file
        raise EvalError(one_line(e)) from None
    with open_dict(cfg):
        cfg.model = OmegaConf.create(OmegaConf.to_container(tok.config, resolve=True))
    try:  # build_vocoder validates the vocoder node (luna.config.validate would read `checkpoint` as the trainer's group)
        attach_vocoder(tok, cfg.vocoder)
    except LunaError as e:
        raise EvalError(f"vocoder ({cfg.vocoder.get('name', '?')}): {one_line(e)}") from None
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
    device = resolve_device(cfg.get("device", "auto"), "device")
    tok = _tokenizer(cfg, device)
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
            log.info("%s: %s", path, ", ".join(f"{m}={fmt(r['values'].get(m))}"
                                               for m in ("mel_l1", "si_sdr", "stoi", "ceiling_stoi", "pesq_wb", "ceiling_pesq_wb")))

        rtf = _measure_rtfs(tok, longest, ev, device) if longest is not None else None

    report: Dict[str, Any] = {m: mean([f.get(m) for f in per_file]) for m in METRIC_KEYS}
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
            {"num_quantizers": q, "bitrate_bps": tok.rate.at(q).bitrate, "mel_l1": mean([s[q - 1] for s in sweeps])}
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
