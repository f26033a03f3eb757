"""``python -m luna.serve checkpoint=PATH [port=8765] [host=127.0.0.1]``: a tokenizer behind a WebSocket.

Protocol (stream and turn modes): luna/serving/protocol.py and README "Serving (WebSocket)". Once listening it
prints ``serving ws://HOST:PORT`` on stdout (``port=0`` picks a free port). User errors (missing checkpoint, bad
port or config) print one line ``error: ...`` on stderr and exit with code 2.
"""
from __future__ import annotations

import asyncio
import logging

import hydra
import torch
from omegaconf import DictConfig

import luna.serving.config  # noqa: F401 - registers serve_schema before Hydra composes
from luna.cli import entry_point
from luna.config import CONF_DIR
from luna.devices import resolve_device
from luna.models.tokenizer import SpeechTokenizer
from luna.serving.config import validate_serve
from luna.serving.server import Server

log = logging.getLogger("luna.serve")


@hydra.main(config_path=str(CONF_DIR), config_name="serve", version_base="1.3")
@entry_point
def main(cfg: DictConfig) -> None:
    validate_serve(cfg)
    if cfg.threads is not None:
        torch.set_num_threads(int(cfg.threads))
    device = resolve_device(cfg.device)
    tok = SpeechTokenizer.from_checkpoint(cfg.checkpoint, map_location=device)  # weights_only=True

    def ready(host: str, port: int) -> None:
        log.info("serving %s (%.4g tokens/s, %d x %d codes) on ws://%s:%d", cfg.checkpoint, tok.frame_rate,
                 tok.num_quantizers, tok.codebook_size, host, port)
        print(f"serving ws://{host}:{port}", flush=True)

    try:
        asyncio.run(Server(tok, cfg).serve(ready))
    except KeyboardInterrupt:
        log.info("stopped")


if __name__ == "__main__":
    main()
