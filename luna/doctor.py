"""``python -m luna.doctor``: does the installed stack really load? One line per component, exit 1 on any problem.

It exercises the compiled parts, not just the imports: torchaudio's library (a resample and a mel
spectrogram), libsndfile with FLAC (a round trip in memory), pesq and pystoi (a score each), and the
pretrained vocoder's weights (size and sha256). A torchaudio that does not load next to the installed
torch (the failure a range pin once caused) is named with both versions.
"""
from __future__ import annotations

import io
import os
import platform
import sys
from importlib import metadata
from typing import Callable, List, Tuple

import numpy as np

Check = Tuple[str, bool, str]  # (component, ok, detail)


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}".strip()


def _torch() -> str:
    import torch

    return f"{torch.__version__} (CUDA build {torch.version.cuda or 'none'})"


def _torchaudio() -> str:
    try:
        import torch
        import torchaudio

        x = torch.sin(torch.linspace(0, 2000, 16000))[None]
        y = torchaudio.functional.resample(x, 16000, 22050)
        mel = torchaudio.transforms.MelSpectrogram(22050, n_fft=1024, hop_length=256, n_mels=80)(y)
    except Exception as e:  # an OSError from the library, or an ImportError from its extension
        raise RuntimeError(
            f"torchaudio {_version('torchaudio')} does not load next to torch {_version('torch')} "
            f"(they must be the exact pair in uv.lock; run `make install`): {_first_line(e)}"
        ) from None
    if _version("torchaudio").split("+")[0] != _version("torch").split("+")[0]:
        raise RuntimeError(f"torchaudio {_version('torchaudio')} is not the pair of torch {_version('torch')} (`make install`)")
    assert y.shape[-1] == 22050 and mel.shape[-2] == 80
    return torchaudio.__version__


def _soundfile() -> str:
    import soundfile as sf

    if "FLAC" not in sf.available_formats():
        raise RuntimeError(f"libsndfile {sf.__libsndfile_version__} has no FLAC support")
    x = (np.sin(np.linspace(0, 600, 8000)) * 0.5).astype(np.float32)
    buf = io.BytesIO()
    sf.write(buf, x, 16000, format="FLAC", subtype="PCM_16")
    buf.seek(0)
    y, sr = sf.read(buf, dtype="float32")
    if sr != 16000 or np.abs(y - x).max() > 1e-4:
        raise RuntimeError("a FLAC round trip through libsndfile changed the audio")
    return f"{sf.__version__} (libsndfile {sf.__libsndfile_version__}, FLAC ok)"


def _speech(seconds: float = 2.0, sr: int = 16000) -> Tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    t = np.arange(int(seconds * sr)) / sr
    envelope = 0.5 + 0.5 * np.sin(2 * np.pi * 3 * t)  # syllable-rate modulation so PESQ finds speech
    clean = envelope * np.sin(2 * np.pi * (150 + 50 * np.sin(2 * np.pi * t)) * t)
    return clean, clean + 0.05 * rng.standard_normal(clean.shape)


def _pesq() -> str:
    from pesq import pesq

    clean, noisy = _speech()
    score = pesq(16000, clean, noisy, "wb")
    return f"{_version('pesq')} (a score of {score:.2f})"


def _pystoi() -> str:
    from pystoi import stoi

    clean, noisy = _speech()
    return f"{_version('pystoi')} (a score of {stoi(clean, noisy, 16000):.2f})"


def _vocoder() -> str:
    from luna.pretrained import ENV, SIZE, locate_universal_hifigan

    files = locate_universal_hifigan(key="vocoder")  # the file every use of the pretrained HiFi-GAN would read
    if files.source.startswith(ENV):
        return f"HiFi-GAN UNIVERSAL_V1 from {files.source} (explicit: size and sha256 not checked)"
    return f"HiFi-GAN UNIVERSAL_V1 {SIZE:,} bytes, sha256 ok ({files.generator})"


def _devices() -> str:
    import torch

    threads = f"{torch.get_num_threads()} torch threads, {os.cpu_count()} CPUs"
    if torch.cuda.is_available():
        names = ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
        return f"CUDA available: {names}; {threads}"
    return f"CUDA not available (CPU only); {threads}"


CHECKS: List[Tuple[str, Callable[[], str]]] = [
    ("torch", _torch),
    ("torchaudio", _torchaudio),
    ("soundfile", _soundfile),
    ("pesq", _pesq),
    ("pystoi", _pystoi),
    ("vocoder", _vocoder),
    ("devices", _devices),
]


def run_checks() -> List[Check]:
    """Every check, in order; one failing never stops the others."""
    results: List[Check] = [("python", True, f"{platform.python_version()} ({sys.executable})")]
    for name, check in CHECKS:
        try:
            results.append((name, True, check()))
        except Exception as e:
            msg = str(e) if isinstance(e, RuntimeError) else _first_line(e)
            results.append((name, False, " ".join(msg.split())))
    return results


def problems() -> List[str]:
    """One line per failing check (empty when the stack is sound)."""
    return [f"{name}: {detail}" for name, ok, detail in run_checks() if not ok]


def main() -> int:
    results = run_checks()
    for name, ok, detail in results:
        print(f"{'ok ' if ok else 'BAD'} {name:<10} {detail}")
    bad = [r for r in results if not r[1]]
    print(f"luna doctor: {len(bad)} problem(s)" if bad else "luna doctor: the stack loads")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
