"""Helpers for the data tests: synthetic audio written with soundfile, a loopback HTTP server, configs."""
from __future__ import annotations

import hashlib
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
import soundfile as sf
from omegaconf import OmegaConf

from luna.config import DataConfig

SYNTHETIC_MINI = Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "synthetic_mini"


def tone(seconds: float, sr: int, freq: float = 220.0, channels: int = 1, amp: float = 0.5) -> np.ndarray:
    """A sine (plus a quieter fifth) so every crop is distinguishable; ``[frames]`` or ``[frames, C]``."""
    t = np.arange(int(round(seconds * sr))) / sr
    x = amp * np.sin(2 * np.pi * freq * t) + 0.2 * amp * np.sin(2 * np.pi * 1.5 * freq * t + 0.3)
    x = x * (1 + 0.5 * np.sin(2 * np.pi * 0.7 * t))  # slow envelope: crops differ along the file
    if channels > 1:
        x = np.stack([x * (1 - 0.3 * c) for c in range(channels)], axis=1)
    return x.astype(np.float32)


def write(path: Path, data: np.ndarray, sr: int, subtype: Optional[str] = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), data, sr, subtype=subtype)
    return path


def make_libri_tree(root: Path, subset: str = "train-x", speakers=(11, 12), chapters=(7,), utts: int = 3,
                    sr: int = 16000, seconds: float = 1.5) -> List[str]:
    """LibriSpeech layout with transcripts; returns the utterance ids."""
    ids = []
    for spk in speakers:
        for chap in chapters:
            d = root / subset / str(spk) / str(chap)
            lines = []
            for u in range(utts):
                utt = f"{spk}-{chap}-{u:04d}"
                write(d / f"{utt}.flac", tone(seconds + 0.1 * u, sr, 200 + 30 * u + spk), sr)
                lines.append(f"{utt} HELLO WORLD NUMBER {u}")
                ids.append(utt)
            (d / f"{spk}-{chap}.trans.txt").write_text("\n".join(lines) + "\n")
    return ids


def data_cfg(root, **overrides):
    """A typed DataConfig node, as Hydra would compose it."""
    cfg = OmegaConf.structured(DataConfig(root=str(root)))
    for k, v in overrides.items():
        cfg[k] = v
    return cfg


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


class Server:
    """127.0.0.1 HTTP server for ``files`` with ``Range: bytes=N-`` support; records every request.

    ``cut_after``: the first full response announces the whole length but closes after that many bytes
    (a dropped connection). ``ignore_range``: answer 200 with the whole file even to a Range request.
    """

    def __init__(self, files: Dict[str, bytes]):
        self.files = files
        self.requests: List[Dict[str, Optional[str]]] = []
        self.cut_after: Optional[int] = None
        self.ignore_range = False
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep pytest output clean
                pass

            def do_GET(self):
                rng = self.headers.get("Range")
                server.requests.append({"path": self.path, "range": rng})
                data = server.files.get(self.path)
                if data is None:
                    self.send_error(404, "Not Found")
                    return
                start = 0
                if rng and not server.ignore_range:
                    start = int(rng.removeprefix("bytes=").split("-")[0])
                    if start >= len(data):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(data)}")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                body = data[start:]
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Accept-Ranges", "bytes")
                self.end_headers()
                if server.cut_after is not None:
                    body, server.cut_after = body[: server.cut_after], None
                    self.wfile.write(body)
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.02,), daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()
