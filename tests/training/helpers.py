"""Running real training jobs from tests: tiny model, bundled corpus, CPU."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List

import torch

from tests.paths import ROOT

TINY = [
    "model=tiny", "vocoder=griffinlim",
    "hardware=cpu",
    "hardware.threads=1",
    "data.segment_seconds=0.5",
    "data.crops_per_file=1",
    "data.batch_size=8",
    "data.num_workers=0",
    "data.max_val_items=8",
    "optimizer.lr=3e-3",
    "optimizer.warmup_steps=2",
    "logger=none",
    "logger.log_every_steps=1",
    "trainer.progress=false",
]


def run_train(out: Path, overrides: List[str], env: Dict[str, str] = None, timeout: int = 300,
              module: List[str] = None, check: bool = True) -> subprocess.CompletedProcess:
    cmd = (module or [sys.executable, "-m", "luna.train"]) + TINY + overrides + [f"hydra.run.dir={out}"]
    e = {**os.environ, "PYTHONUNBUFFERED": "1", "WANDB_MODE": os.environ.get("WANDB_MODE", "offline"), **(env or {})}
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT, env=e)
    if check and r.returncode != 0:
        raise AssertionError(f"training failed ({r.returncode}):\n{r.stdout[-3000:]}\n{r.stderr[-5000:]}")
    return r


def metrics(out: Path) -> dict:
    return json.loads((out / "metrics.json").read_text())


def load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def assert_same_tensors(a: dict, b: dict, exact: bool = True, atol: float = 0.0) -> None:
    assert a.keys() == b.keys()
    for k in a:
        if exact:
            assert torch.equal(a[k], b[k]), f"{k} differs"
        else:
            assert torch.allclose(a[k].double(), b[k].double(), atol=atol, rtol=1e-3), f"{k} differs beyond tolerance"


def assert_resumed_at(r: subprocess.CompletedProcess, step: int) -> None:
    """The run ``r`` continued from ``step`` (> 0) of its run dir's last.pt, not from step 0: deterministic
    runs reach the same weights either way, so the weights alone cannot tell."""
    log = r.stdout + r.stderr
    assert step > 0, "nothing was saved before the kill; the test proves nothing"
    found = [int(s) for s in re.findall(r"resumed from \S*last\.pt at step (\d+) ", log)]
    assert found == [step], f"expected one 'resumed from .../last.pt at step {step}', found {found}:\n{log[-2000:]}"


def kill_at_step(out: Path, overrides: List[str], step: int) -> int:
    """Start training, SIGKILL it once last.pt holds at least ``step`` steps, return how far it got."""
    cmd = [sys.executable, "-m", "luna.train", *TINY, *overrides, f"hydra.run.dir={out}"]
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    last = out / "checkpoints" / "last.pt"
    deadline = time.time() + 240
    try:
        while time.time() < deadline and p.poll() is None:
            if last.is_file():
                try:
                    if load(last)["step"] >= step:
                        break
                except Exception:  # noqa: BLE001 - a file replaced under us: read again
                    pass
            time.sleep(0.05)
    finally:
        os.killpg(p.pid, signal.SIGKILL)
        p.wait()
    return load(last)["step"]
