"""Real multi-process DDP on CPU (gloo): in-process spawn and torchrun agree with one process."""
from __future__ import annotations

import sys

import pytest

from tests.training.helpers import assert_same_tensors, load, metrics, run_train

# no quantizer dropout (random per rank) and no revival (picks from rank 0's share of the batch): what
# is left must match one process with the same global batch up to floating-point summation order
COMMON = ["trainer.max_steps=4", "data.batch_size=8", "model.quantizer_dropout=0", "model.dead_code_threshold=0"]


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    out = tmp_path_factory.mktemp("single")
    run_train(out, COMMON)
    return load(out / "checkpoints" / "last.pt")["model"]


def _check(out, single):
    m = metrics(out)
    assert m["world_size"] == 2
    assert m["rank_sync_checks"] >= 4  # every logged step: identical weights and codebooks on both ranks
    state = load(out / "checkpoints" / "last.pt")
    assert state["step"] == 4
    assert_same_tensors(state["model"], single, exact=False, atol=2e-4)


def test_in_process_spawn_two_gloo_ranks(tmp_path, single):
    r = run_train(tmp_path, COMMON + ["hardware.gpus=2"])
    assert "rank 1/2 joined (spawn, gloo" in r.stdout + r.stderr or (tmp_path / "metrics.json").is_file()
    _check(tmp_path, single)


def test_torchrun_two_gloo_ranks(tmp_path, single):
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "luna.train"]
    run_train(tmp_path, COMMON, module=torchrun)
    _check(tmp_path, single)
