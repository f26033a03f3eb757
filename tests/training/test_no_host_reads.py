"""The training step reads nothing back from the device and has no data-dependent shape (issue 20).

On a GPU either would stall the queue of kernels every step (and rule out CUDA graphs); on the CPU they cost
nothing, so they are caught here by what the step asks of the dispatcher: a scalar read to the host
(``_local_scalar_dense``: ``.item()``, ``bool(t)``, ``int(t)``) or an op whose output shape depends on values.
"""
from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from tests.conftest import compose_train
from tests.training.helpers import TINY

aten = torch.ops.aten
DATA_DEPENDENT = {aten._local_scalar_dense.default, aten.nonzero.default, aten.masked_select.default,
                  aten._unique2.default, aten.unique_consecutive.default, aten.unique_dim.default,
                  aten.repeat_interleave.Tensor, aten.bincount.default}


class HostReads(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.seen = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        bool_index = func is aten.index.Tensor and any(
            i is not None and i.dtype == torch.bool for i in args[1])
        if func in DATA_DEPENDENT or bool_index:
            self.seen.append(str(func))
        return func(*args, **(kwargs or {}))


def test_the_detector_sees_what_it_looks_for():
    with HostReads() as d:
        t = torch.tensor([0.0, 1.0, 2.0])
        bool(t.sum() > 0), t[t > 0], torch.nonzero(t)
    assert len(d.seen) == 3


@pytest.mark.parametrize("extra", [[], ["model.quantizer_dropout=0.5", "model.revival=worst"]])
def test_a_training_step_reads_nothing_from_the_device(tmp_path, extra):
    from luna.distributed import DistEnv
    from luna.training.loop import Loop

    cfg = compose_train(TINY + ["trainer.max_steps=4", "model.dead_code_threshold=0.9", "model.ema_decay=0.5", *extra])
    cfg.output_dir = str(tmp_path)
    loop = Loop(cfg, DistEnv())
    batches = iter(loop.loader(0, 0))
    loop.train_step([next(batches)], 1e-3)  # step 1 initializes the codebooks (k-means: once, allowed)
    revived = []
    for _ in range(3):
        with HostReads() as d:
            terms, grad_norm = loop.train_step([next(batches)], 1e-3)
        assert d.seen == [], f"host reads / data-dependent shapes in the step: {sorted(set(d.seen))}"
        revived.append(int(loop.task.model.quantizer.replacements().sum()))
    assert sum(revived) > 0  # revival (masked ops) ran inside the watched steps
    assert torch.isfinite(terms["loss"]) and torch.isfinite(grad_norm)
