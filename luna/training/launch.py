"""Launching a training run: single process, ``torchrun``, a multi-task SLURM job, or spawned local ranks.

:func:`train` picks the mode from the environment and ``hardware.gpus``; :func:`run_rank` joins the process
group, sets threads and determinism, and runs the task's loop on this rank.
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Dict

import torch
from omegaconf import DictConfig, OmegaConf

from luna.config import to_container
from luna import distributed
from luna.training.loggers import sweep_group

def _configure_threads(cfg: DictConfig, env: distributed.DistEnv) -> None:
    threads = cfg.hardware.threads
    if threads is None and env.device.type == "cpu" and env.mode == "spawn":
        threads = max(1, (os.cpu_count() or 1) // env.world_size)  # ranks share this machine's cores
    if threads:
        torch.set_num_threads(int(threads))


def run_rank(cfg: DictConfig, mode: str, rank: int = 0, world_size: int = 1) -> Dict[str, Any]:
    env = distributed.init(mode, cfg.hardware.device, rank, world_size)
    if mode == "slurm" and not env.is_main:  # every SLURM task runs the Hydra job and logs to its train.log
        logging.getLogger().setLevel(logging.WARNING)
    try:
        _configure_threads(cfg, env)
        if cfg.trainer.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
        from luna.training.loop import Loop

        return Loop(cfg, env).fit()
    finally:
        distributed.cleanup()


def _spawned(rank: int, world_size: int, cfg_dict: Dict[str, Any]) -> None:
    cfg = OmegaConf.create(cfg_dict)
    level = logging.INFO if rank == 0 else logging.WARNING
    logging.basicConfig(level=level, format=f"[%(asctime)s][rank {rank}][%(name)s][%(levelname)s] - %(message)s")
    if rank == 0:
        fh = logging.FileHandler(Path(cfg.output_dir) / "train.log")
        fh.setFormatter(logging.Formatter("[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"))
        logging.getLogger().addHandler(fh)
    run_rank(cfg, "spawn", rank, world_size)


def train(cfg: DictConfig) -> Dict[str, Any]:
    """Train with whatever launch mode the environment and ``hardware.gpus`` call for."""
    group = sweep_group() if cfg.logger.wandb.group is None else None  # explicit group wins
    if group:  # set here, before spawn: spawned ranks have no HydraConfig to read it from
        cfg.logger.wandb.group = group
    mode = distributed.launch_mode(cfg.hardware.gpus)
    if mode == "spawn":
        Path(cfg.output_dir).mkdir(parents=True, exist_ok=True)
        distributed.spawn(_spawned, cfg.hardware.gpus, to_container(cfg))
        metrics = Path(cfg.output_dir) / "metrics.json"
        return json.loads(metrics.read_text()) if metrics.is_file() else {}
    return run_rank(cfg, mode)
