"""Training checkpoints: what they hold, where they go, how many are kept. All loadable with weights_only=True."""
from __future__ import annotations

import random
import re
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np
import torch

from luna.serialization import CheckpointError, atomic_save, safe_load

EPOCH_RE = re.compile(r"^epoch_(\d{4,})\.pt$")


def rng_state() -> Dict[str, Any]:
    """Python, numpy, torch and CUDA generator states as plain containers and tensors (no pickle needed)."""
    version, mt, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "python": {"version": version, "state": torch.tensor(mt, dtype=torch.int64), "gauss": gauss},
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached": float(cached)},
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: Dict[str, Any]) -> None:
    """Restore :func:`rng_state`, wherever its tensors were mapped (a checkpoint loaded onto a GPU included):
    every tensor comes to the host before it becomes a Python, numpy or generator state."""
    p = state["python"]
    random.setstate((p["version"], tuple(int(v) for v in p["state"].cpu().tolist()), p["gauss"]))
    n = state["numpy"]
    keys = n["keys"].cpu().numpy().astype(np.uint32)
    np.random.set_state((n["kind"], keys, int(n["pos"]), int(n["has_gauss"]), float(n["cached"])))
    torch.set_rng_state(state["torch"].cpu())
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


def non_finite_tensors(obj: Any, prefix: str = "") -> List[str]:
    """Names of floating tensors holding NaN/inf anywhere in a nested state."""
    bad: List[str] = []
    if torch.is_tensor(obj):
        if obj.is_floating_point() and not torch.isfinite(obj).all():
            bad.append(prefix or "<tensor>")
    elif isinstance(obj, dict):
        for k, v in obj.items():
            bad += non_finite_tensors(v, f"{prefix}.{k}" if prefix else str(k))
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            bad += non_finite_tensors(v, f"{prefix}[{i}]")
    return bad


class CheckpointManager:
    """``last.pt`` (latest), ``best.pt`` (lowest val loss), ``epoch_0001.pt``... (every N epochs, keep K)."""

    def __init__(self, directory: Path, keep_last: int):
        self.dir = Path(directory)
        self.keep_last = keep_last

    @property
    def last(self) -> Path:
        return self.dir / "last.pt"

    @property
    def best(self) -> Path:
        return self.dir / "best.pt"

    def save(self, state: Dict[str, Any], name: str) -> Path:
        bad = non_finite_tensors(state["model"], "model") + non_finite_tensors(state.get("optimizer", {}), "optimizer")
        if bad:
            raise CheckpointError(f"refusing to write {name}: non-finite values in {', '.join(bad[:5])}")
        path = self.dir / name
        atomic_save(state, path)
        return path

    def save_epoch(self, state: Dict[str, Any], epoch: int) -> Path:
        path = self.save(state, f"epoch_{epoch:04d}.pt")
        for old in self.epoch_files()[: -self.keep_last]:
            old.unlink(missing_ok=True)
        return path

    def epoch_files(self) -> List[Path]:
        files = [p for p in self.dir.glob("epoch_*.pt") if EPOCH_RE.match(p.name)]
        return sorted(files, key=lambda p: int(EPOCH_RE.match(p.name).group(1)))

    def resume_path(self, resume: str) -> Optional[Path]:
        """auto: last.pt if present; none: nothing; otherwise the given file (must exist)."""
        if resume == "none":
            return None
        if resume == "auto":
            return self.last if self.last.is_file() else None
        path = Path(resume)
        if not path.is_file():
            raise CheckpointError(f"{path}: resume checkpoint not found")
        return path

    @staticmethod
    def load(path: Path, map_location: Any = "cpu") -> Dict[str, Any]:
        state = safe_load(path, map_location)
        missing = [k for k in ("model", "optimizer", "step", "epoch") if k not in state]
        if missing:
            raise CheckpointError(f"{path}: not a luna training checkpoint (missing {', '.join(missing)})")
        return state
