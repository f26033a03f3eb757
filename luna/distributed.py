"""Launch-mode resolution: torchrun env → SLURM/submitit tasks → in-process spawn (hardware.gpus > 1) → single.

Every rank gets the same output dir; rank 0 alone writes files and talks to trackers.
"""
from __future__ import annotations

import datetime
import logging
import os
import tempfile
from dataclasses import dataclass
from typing import Any, Callable, Dict

import torch
import torch.distributed as dist

from luna.devices import resolve_device
from luna.errors import TrainingError

log = logging.getLogger("luna.distributed")

SPAWN_STORE = "LUNA_SPAWN_STORE"  # file:// rendezvous of in-process spawned ranks


@dataclass
class DistEnv:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    mode: str = "single"  # single | torchrun | slurm | spawn
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def want_cuda(device: str) -> bool:
    return resolve_device(device, "hardware.device").type == "cuda"


def launch_mode(gpus: int) -> str:
    """Which launcher started (or should start) this process."""
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        return "torchrun"
    if int(os.environ.get("SLURM_NTASKS", "1")) > 1 and "SLURM_PROCID" in os.environ:
        return "slurm"
    if gpus > 1:
        return "spawn"
    return "single"


def init(mode: str, device: str, rank: int = 0, world_size: int = 1) -> DistEnv:
    """Join the process group for ``mode`` (gloo on CPU, nccl on CUDA) and pick this rank's device."""
    if mode == "slurm":  # submitit sets MASTER_ADDR/PORT, RANK, WORLD_SIZE, LOCAL_RANK from the task env
        import submitit

        submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
    if mode in ("torchrun", "slurm"):
        rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", rank if mode == "spawn" else 0))
    cuda = want_cuda(device)
    dev = torch.device("cuda", local_rank) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(dev)
    if world_size > 1:
        backend = "nccl" if cuda else "gloo"
        init_method = os.environ.get(SPAWN_STORE) if mode == "spawn" else None  # else env:// (torchrun, SLURM)
        dist.init_process_group(
            backend, init_method=init_method, rank=rank, world_size=world_size, timeout=datetime.timedelta(minutes=30)
        )
        log.info("rank %d/%d joined (%s, %s, device %s)", rank, world_size, mode, backend, dev)
    return DistEnv(rank=rank, local_rank=local_rank, world_size=world_size, mode=mode, device=dev)


def spawn(fn: Callable[..., Any], nprocs: int, *args: Any) -> None:
    """Run ``fn(rank, nprocs, *args)`` in ``nprocs`` local processes joined into one group (one Hydra job).

    The ranks meet through a file store in a fresh temp dir, not a TCP port: a port picked free and then
    released can be taken by another process before rank 0 binds it.
    """
    with tempfile.TemporaryDirectory(prefix="luna-spawn-") as d:
        os.environ[SPAWN_STORE] = f"file://{d}/store"
        try:
            torch.multiprocessing.spawn(fn, args=(nprocs, *args), nprocs=nprocs, join=True)
        finally:
            os.environ.pop(SPAWN_STORE, None)


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def all_reduce_mean(t: torch.Tensor) -> torch.Tensor:
    if dist.is_available() and dist.is_initialized():
        t = t.clone()
        dist.all_reduce(t)
        t /= dist.get_world_size()
    return t


def broadcast_value(value: float, device: torch.device) -> float:
    """Rank 0's value, on every rank (e.g. its wall clock)."""
    if not (dist.is_available() and dist.is_initialized()):
        return value
    t = torch.tensor([float(value)], device=device, dtype=torch.float64)
    dist.broadcast(t, 0)
    return float(t.item())


def wrap(module: torch.nn.Module, env: DistEnv) -> torch.nn.Module:
    """DDP over ``module`` when distributed, else ``module`` itself (buffers are synchronized by the modules)."""
    if not env.distributed:
        return module
    from torch.nn.parallel import DistributedDataParallel as DDP

    ids = [env.device.index] if env.device.type == "cuda" else None
    return DDP(module, device_ids=ids, broadcast_buffers=False)


@torch.no_grad()
def check_in_sync(state: Dict[str, torch.Tensor], device: torch.device, step: int) -> None:
    """Every rank must hold the same ``state`` (a module's state dict): per-tensor checksums are compared."""
    sums = torch.stack([v.double().sum() for v in state.values()]).to(device)
    gathered = [torch.empty_like(sums) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, sums)
    for r, g in enumerate(gathered[1:], start=1):
        if not torch.equal(g, gathered[0]):
            name = list(state)[int((g != gathered[0]).nonzero()[0])]
            raise TrainingError(f"rank {r} diverged from rank 0 at step {step} (first differing tensor: {name})")
