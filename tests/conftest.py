"""Shared fixtures: composing configs the way the entry points do, and the bundled corpus."""
from __future__ import annotations

import os
from pathlib import Path
from typing import List, Optional

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from luna.config import CONF_DIR
from tests.paths import ROOT

SYNTHETIC_MINI = ROOT / "tests" / "fixtures" / "synthetic_mini"


def compose_train(overrides: Optional[List[str]] = None, config_name: str = "train") -> DictConfig:
    """Compose ``conf/<config_name>.yaml`` with overrides, exactly as ``python -m luna.train`` would."""
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name=config_name, overrides=list(overrides or []), return_hydra_config=False)


def pytest_sessionstart(session):
    """Stop at once, naming the versions, when the installed stack does not load (not 16 collection errors)."""
    from luna.doctor import problems

    bad = problems()
    if bad:
        pytest.exit("the installed stack is broken (python -m luna.doctor; make install):\n" + "\n".join(bad), returncode=3)


def pytest_collection_modifyitems(config, items):
    """The stack tests run first: nothing else means anything if they fail."""
    items.sort(key=lambda item: item.nodeid.split("::")[0] != "tests/test_stack.py")


@pytest.fixture(autouse=True)
def _small_torch(monkeypatch):
    """Keep tests on at most 2 threads (the CI machine has 2 cores) and wandb off the network."""
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    monkeypatch.setenv("WANDB_MODE", os.environ.get("WANDB_MODE", "offline"))
    monkeypatch.setenv("WANDB_SILENT", "true")
    yield


@pytest.fixture
def synthetic_mini() -> Path:
    return SYNTHETIC_MINI
