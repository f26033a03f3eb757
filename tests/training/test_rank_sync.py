"""Loop.check_ranks_in_sync on 2 real gloo ranks: identical weights pass, one perturbed tensor on one rank stops
training with a TrainingError naming the rank, the step and the tensor."""
from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def _rank(rank: int, world: int, init: str, perturb: str, out: str) -> None:
    from luna.errors import TrainingError
    from luna.training.loop import Loop

    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        torch.manual_seed(0)  # identical weights on both ranks...
        model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 2))
        if perturb and rank == 1:  # ...but one tensor on rank 1
            with torch.no_grad():
                model.state_dict()[perturb].view(-1)[0] += 1e-6
        fake = SimpleNamespace(env=SimpleNamespace(distributed=True, world_size=world), task=SimpleNamespace(model=model),
                               device=torch.device("cpu"), step=7, sync_checks=0)
        try:
            Loop.check_ranks_in_sync(fake)
            result = {"error": None, "checks": fake.sync_checks}
        except TrainingError as e:
            result = {"error": str(e), "checks": fake.sync_checks}
        with open(f"{out}.{rank}", "w") as f:
            json.dump(result, f)
    finally:
        dist.destroy_process_group()


def _run(tmp_path, perturb: str) -> list:
    out = tmp_path / f"result_{perturb or 'none'}"
    mp.spawn(_rank, args=(2, f"file://{tmp_path / ('store_' + (perturb or 'none'))}", perturb, str(out)), nprocs=2)
    return [json.loads((tmp_path / f"{out.name}.{r}").read_text()) for r in range(2)]


@pytest.mark.slow  # two spawned processes import torch and luna: ~30-70 s on 2 busy cores
def test_identical_ranks_pass_and_a_diverged_rank_stops_training_naming_it(tmp_path):
    assert _run(tmp_path, "") == [{"error": None, "checks": 1}] * 2
    results = _run(tmp_path, "1.bias")
    expected = "rank 1 diverged from rank 0 at step 7 (first differing tensor: 1.bias)"
    assert results == [{"error": expected, "checks": 0}] * 2  # every rank stops, none counts the check as passed


def test_a_single_process_run_is_never_checked():
    from luna.training.loop import Loop

    fake = SimpleNamespace(env=SimpleNamespace(distributed=False), sync_checks=0)
    Loop.check_ranks_in_sync(fake)
    assert fake.sync_checks == 0
