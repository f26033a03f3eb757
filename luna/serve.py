"""``python -m luna.serve checkpoint=PATH [port=8765] [host=127.0.0.1]``: a tokenizer behind a WebSocket.

Protocol (stream and turn modes): luna/serving/protocol.py and docs/streaming.md "Server (WebSocket)". Once listening it
prints ``serving ws://HOST:PORT (page: http://HOST:PORT/)`` on stdout (``port=0`` picks a free port). User errors (missing checkpoint, bad
port or config) print one line ``error: ...`` on stderr and exit with code 2.
"""
from __future__ import annotations

import asyncio
import logging

import hydra
import torch
from omegaconf import DictConfig

from luna.cli import entry_point
from luna.config import CONF_DIR
from luna.devices import resolve_device
from luna.models.load import load_tokenizer
from luna.serving.admission import check_limits
from luna.serving.server import Server
from luna.validation import validate

log = logging.getLogger("luna.serve")


@hydra.main(config_path=str(CONF_DIR), config_name="serve", version_base="1.3")
@entry_point
def main(cfg: DictConfig) -> None:
    validate(cfg)  # every cross-field rule (port range, queue sizes, rates, checkpoint, device), before anything
    check_limits(cfg)  # connections, timeouts, audio budget, origins, token: before the checkpoint is loaded
    if cfg.threads is not None:
        torch.set_num_threads(int(cfg.threads))
    device = resolve_device(cfg.device)
    tok = load_tokenizer(cfg.checkpoint, device)  # weights_only=True; eval mode

    def ready(host: str, port: int) -> None:
        log.info("serving %s (%.4g tokens/s, %d x %d codes) on ws://%s:%d", cfg.checkpoint, tok.frame_rate,
                 tok.num_quantizers, tok.codebook_size, host, port)
        print(f"serving ws://{host}:{port} (page: http://{host}:{port}/)", flush=True)

    try:
        asyncio.run(Server(tok, cfg).serve(ready))
    except KeyboardInterrupt:
        log.info("stopped")


if __name__ == "__main__":
    main()
