"""Experiment trackers behind one small interface: scalars, audio, images, config. Rank 0 only.

wandb: mode from ``logger.wandb.mode``, else ``$WANDB_MODE``, else offline when no API key is set; the run
id is kept in ``<output_dir>/wandb_run_id`` so a restarted or requeued job continues the same run.
Never logs secrets: the config is logged as resolved, and keys are only ever read from the environment.
"""
from __future__ import annotations

import logging
import os
import re
import secrets
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np

log = logging.getLogger("luna.loggers")

_SECRET = re.compile(r"(api[_-]?key|token|secret|password)", re.IGNORECASE)


def scrub(obj: Any) -> Any:
    """Drop any config entry whose key looks like a credential before it reaches a tracker."""
    if isinstance(obj, dict):
        return {k: scrub(v) for k, v in obj.items() if not _SECRET.search(str(k))}
    if isinstance(obj, list):
        return [scrub(v) for v in obj]
    return obj


class Tracker:
    def log_scalars(self, values: Dict[str, float], step: int) -> None: ...
    def log_audio(self, tag: str, audio: np.ndarray, sample_rate: int, step: int) -> None: ...
    def log_figure(self, tag: str, figure: Any, step: int) -> None: ...
    def log_text(self, tag: str, text: str, step: int) -> None: ...
    def log_config(self, config: Dict[str, Any]) -> None: ...
    def close(self) -> None: ...


class TensorBoardTracker(Tracker):
    def __init__(self, directory: Path):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(directory))

    def log_scalars(self, values, step):
        for k, v in values.items():
            self.writer.add_scalar(k, v, step)

    def log_audio(self, tag, audio, sample_rate, step):
        self.writer.add_audio(tag, np.clip(audio, -1, 1).reshape(1, -1), step, sample_rate=sample_rate)

    def log_figure(self, tag, figure, step):
        self.writer.add_figure(tag, figure, step, close=False)

    def log_text(self, tag, text, step):
        self.writer.add_text(tag, text, step)

    def log_config(self, config):
        import yaml

        self.writer.add_text("config", "```\n" + yaml.safe_dump(config, sort_keys=False) + "\n```", 0)

    def close(self):
        self.writer.flush()
        self.writer.close()


class WandbTracker(Tracker):
    def __init__(self, directory: Path, cfg: Any, name: str, group: Optional[str], config: Dict[str, Any]):
        import wandb

        self.wandb = wandb
        mode = cfg.mode or os.environ.get("WANDB_MODE")
        if mode is None:
            mode = "online" if os.environ.get("WANDB_API_KEY") else "offline"
        id_file = directory / "wandb_run_id"
        run_id = id_file.read_text().strip() if id_file.is_file() else secrets.token_hex(4)
        id_file.parent.mkdir(parents=True, exist_ok=True)
        id_file.write_text(run_id)
        self.run = wandb.init(
            project=cfg.project,
            entity=cfg.entity,
            group=group,
            name=name,
            id=run_id,
            resume="allow",
            mode=mode,
            dir=str(directory),
            config=config,
            tags=list(cfg.tags),
            settings=wandb.Settings(console="off", x_disable_stats=True),
        )
        log.info("wandb run %s (%s) in %s", run_id, mode, directory)

    def log_scalars(self, values, step):
        self.run.log(dict(values), step=step)

    def log_audio(self, tag, audio, sample_rate, step):
        self.run.log({tag: self.wandb.Audio(np.clip(audio, -1, 1).reshape(-1), sample_rate=sample_rate)}, step=step)

    def log_figure(self, tag, figure, step):
        self.run.log({tag: self.wandb.Image(figure)}, step=step)

    def log_text(self, tag, text, step):
        self.run.log({tag: self.wandb.Html(f"<pre>{text}</pre>")}, step=step)

    def log_config(self, config):
        self.run.config.update(config, allow_val_change=True)

    def close(self):
        self.run.finish()


class Trackers(Tracker):
    """Fan-out to the configured backends; a tracker failing at close never hides the training result."""

    def __init__(self, trackers: List[Tracker]):
        self.trackers = trackers

    def log_scalars(self, values, step):
        for t in self.trackers:
            t.log_scalars(values, step)

    def log_audio(self, tag, audio, sample_rate, step):
        for t in self.trackers:
            t.log_audio(tag, audio, sample_rate, step)

    def log_figure(self, tag, figure, step):
        for t in self.trackers:
            t.log_figure(tag, figure, step)

    def log_text(self, tag, text, step):
        for t in self.trackers:
            t.log_text(tag, text, step)

    def log_config(self, config):
        for t in self.trackers:
            t.log_config(config)

    def close(self):
        for t in self.trackers:
            try:
                t.close()
            except Exception as e:  # noqa: BLE001 - closing must not mask the run's own outcome
                log.warning("closing %s failed: %s", type(t).__name__, e)


def sweep_group() -> Optional[str]:
    """The Hydra sweep dir's name when this process runs a multirun job, else None: every run of one sweep
    (and every requeue of a run) then lands in the same wandb group."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized():
        return None
    hc = HydraConfig.get()
    return Path(str(hc.sweep.dir)).name if hc.mode == RunMode.MULTIRUN else None


def build_trackers(logger_cfg: Any, output_dir: Path, name: str, group: Optional[str], config: Dict[str, Any]) -> Trackers:
    config = scrub(config)
    out: List[Tracker] = []
    for backend in logger_cfg.backends:
        if backend == "tensorboard":
            out.append(TensorBoardTracker(output_dir / "tensorboard"))
        elif backend == "wandb":
            out.append(WandbTracker(output_dir, logger_cfg.wandb, name, group, config))
    trackers = Trackers(out)
    trackers.log_config(config)
    return trackers


def mel_figure(mel: Any, mel_hat: Any):
    """Original vs reconstructed log-mel ``[M, T]``, one above the other (matplotlib Agg); close it after logging."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 1, figsize=(8, 5), sharex=True)
    for ax, m, title in zip(axes, (mel, mel_hat), ("original", "reconstruction")):
        ax.imshow(m.float().cpu().numpy(), origin="lower", aspect="auto", interpolation="nearest")
        ax.set_title(title)
    fig.tight_layout()
    return fig


def log_mel_pairs(trackers: "Trackers", pairs: Any, step: int) -> None:
    """One ``val/mel_<j>`` figure per (mel, mel_hat) pair."""
    import matplotlib.pyplot as plt

    for j, (mel, mel_hat) in enumerate(pairs):
        fig = mel_figure(mel, mel_hat)
        trackers.log_figure(f"val/mel_{j}", fig, step)
        plt.close(fig)

