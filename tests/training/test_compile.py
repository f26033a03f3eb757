"""``trainer.compile=true``: the same training as eager, up to float rounding (issue 20)."""
from __future__ import annotations

import pytest
import torch

from tests.conftest import compose_train
from tests.training.helpers import TINY

TOLERANCE = 1e-4  # relative, per loss value: inductor fuses and reorders float ops, nothing else


def _losses(tmp_path, compile_: bool):
    from luna.distributed import DistEnv
    from luna.training.loop import Loop, seed_everything

    cfg = compose_train(TINY + ["trainer.max_steps=4", f"trainer.compile={str(compile_).lower()}"])
    cfg.output_dir = str(tmp_path)
    seed_everything(0)
    loop = Loop(cfg, DistEnv())
    batches = iter(loop.loader(0, 0))
    out = []
    for step in range(4):
        loop.step = step
        terms, _ = loop.train_step([next(batches)], loop.lr_at(step))
        out.append(float(terms["loss"]))
    return out, loop


@pytest.mark.slow
def test_compiled_training_matches_eager(tmp_path):
    eager, _ = _losses(tmp_path / "eager", False)
    compiled, loop = _losses(tmp_path / "compiled", True)
    assert hasattr(loop.task.model.encoder, "_compiled_call_impl") and loop.task.model.encoder._compiled_call_impl
    assert compiled == pytest.approx(eager, rel=TOLERANCE)
    assert eager[-1] < eager[0]  # it trained
    assert not any(k.startswith("_orig_mod") for k in loop.task.model.state_dict())  # checkpoints keep their keys


def test_compile_mode_is_validated():
    from luna.config import ConfigError
    from luna.validation import validate

    with pytest.raises(ConfigError, match="trainer.compile_mode"):
        validate(compose_train(TINY + ["trainer.compile_mode=fastest"]))
