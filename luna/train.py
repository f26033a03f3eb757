"""``python -m luna.train [overrides]``: compose, validate, train. Thin on purpose (lightning-hydra-template)."""
from __future__ import annotations

import logging

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf, open_dict

from luna.cli import entry_point
from luna.config import CONF_DIR
from luna.validation import validate

log = logging.getLogger("luna.train")


@hydra.main(config_path=str(CONF_DIR), config_name="train", version_base="1.3")
@entry_point
def main(cfg: DictConfig) -> float:
    from luna.training.launch import train  # heavy imports after Hydra parsed the CLI

    validate(cfg)  # every cross-field rule, before anything is built
    with open_dict(cfg):
        if cfg.output_dir is None:
            cfg.output_dir = HydraConfig.get().runtime.output_dir
    OmegaConf.resolve(cfg)
    metrics = train(cfg)
    if metrics:
        log.info(
            "done: step %s, val loss first %.4f → last %.4f (best %.4f); checkpoints in %s/checkpoints",
            metrics.get("step"), metrics.get("first_val_loss") or float("nan"),
            metrics.get("val_loss", float("nan")), metrics.get("best_val_loss"), metrics.get("output_dir"),
        )
    return float(metrics.get("best_val_loss", float("nan"))) if metrics else float("nan")


if __name__ == "__main__":
    main()
