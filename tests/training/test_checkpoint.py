"""Training checkpoints on their own (luna/training/checkpoint.py): RNG state, the non-finite guard, which files are
kept, which one a run resumes from, what a checkpoint must hold. The trainer's use of them: test_trainer.py."""
from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from luna.serialization import CheckpointError, atomic_save
from luna.training.checkpoint import CheckpointManager, non_finite_tensors, rng_state, set_rng_state
from tests.training.helpers import load


def _state(step: int = 1, w: torch.Tensor = None, **extra) -> dict:
    return {"model": {"w": torch.ones(3) if w is None else w}, "optimizer": {}, "step": step, "epoch": 0, **extra}


def _draws() -> tuple:
    """One value from each generator, each one's cached Gaussian included (python and numpy make normals in pairs)."""
    return (random.random(), random.gauss(0, 1), np.random.rand(), np.random.standard_normal(),
            torch.rand(2).tolist())


def test_rng_state_survives_a_weights_only_file_and_restores_every_generator(tmp_path):
    random.seed(1), np.random.seed(1), torch.manual_seed(1)
    random.gauss(0, 1), np.random.standard_normal()  # each now holds a cached second normal
    atomic_save({"rng": rng_state()}, tmp_path / "rng.pt")
    expected = _draws()
    random.seed(2), np.random.seed(2), torch.manual_seed(2)
    assert _draws() != expected
    set_rng_state(load(tmp_path / "rng.pt")["rng"])  # weights_only=True
    assert _draws() == expected


def test_rng_state_holds_plain_containers_and_tensors():
    s = rng_state()
    assert set(s) == {"python", "numpy", "torch", "cuda"}
    assert s["python"]["state"].dtype == torch.int64 and s["python"]["version"] == random.getstate()[0]
    assert s["numpy"]["kind"] == "MT19937" and s["numpy"]["keys"].dtype == torch.int64 and s["numpy"]["keys"].numel() == 624
    assert isinstance(s["numpy"]["pos"], int) and isinstance(s["numpy"]["cached"], float)
    assert torch.equal(s["torch"], torch.get_rng_state())
    if not torch.cuda.is_available():
        assert s["cuda"] == []


def test_non_finite_tensors_names_each_bad_tensor_by_its_path():
    nan, inf = float("nan"), float("inf")
    state = {"enc": {"w": torch.tensor([1.0, nan]), "b": torch.zeros(2)},
             "groups": [torch.ones(1), torch.tensor([-inf]), torch.ones(1)], "pair": (torch.tensor([inf]), torch.ones(1)),
             "count": torch.tensor([3]), "note": "text", "lr": nan}  # integer tensors and non-tensors are not judged
    assert non_finite_tensors(state) == ["enc.w", "groups[1]", "pair[0]"]
    assert non_finite_tensors(state, "model") == ["model.enc.w", "model.groups[1]", "model.pair[0]"]
    assert non_finite_tensors(torch.tensor([nan])) == ["<tensor>"]
    assert non_finite_tensors(torch.tensor([nan]), "x") == ["x"]
    assert non_finite_tensors({"ok": torch.ones(2), "half": torch.ones(2, dtype=torch.float16)}) == []


def test_non_finite_values_never_reach_a_checkpoint(tmp_path):
    mgr = CheckpointManager(tmp_path, keep_last=1)
    with pytest.raises(CheckpointError, match=r"^refusing to write last.pt: non-finite values in model.w$"):
        mgr.save(_state(w=torch.tensor([1.0, float("nan")])), "last.pt")
    bad_opt = _state(optimizer={"state": {0: {"exp_avg": torch.tensor([float("inf")])}}})
    with pytest.raises(CheckpointError, match=r"non-finite values in optimizer.state.0.exp_avg$"):
        mgr.save(bad_opt, "last.pt")
    many = _state(w=torch.tensor([float("nan")]), **{})
    many["model"].update({f"v{i}": torch.tensor([float("nan")]) for i in range(6)})
    with pytest.raises(CheckpointError) as e:
        mgr.save(many, "best.pt")
    assert str(e.value).endswith("model.w, model.v0, model.v1, model.v2, model.v3")  # the first five named
    assert not list(tmp_path.iterdir())
    assert mgr.save(_state(), "last.pt") == tmp_path / "last.pt"
    assert load(tmp_path / "last.pt")["step"] == 1
    atomic_save({"x": 1}, tmp_path / "plain.pt")
    assert load(tmp_path / "plain.pt") == {"x": 1}


def test_a_crash_mid_save_leaves_the_previous_checkpoint_loadable(tmp_path, monkeypatch):
    mgr = CheckpointManager(tmp_path, keep_last=2)
    mgr.save(_state(1), "last.pt")

    def crash(obj, f, *a, **k):
        f.write(b"half a checkpoint")
        raise OSError("disk full (injected)")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(OSError, match="injected"):
        mgr.save(_state(2, torch.zeros(3)), "last.pt")
    monkeypatch.undo()
    state = CheckpointManager.load(mgr.last)
    assert state["step"] == 1 and torch.equal(state["model"]["w"], torch.ones(3))
    assert not [p for p in tmp_path.iterdir() if p.name != "last.pt"]


def test_epoch_files_keep_the_last_k_in_numeric_order(tmp_path):
    mgr = CheckpointManager(tmp_path, keep_last=2)
    assert (mgr.last, mgr.best) == (tmp_path / "last.pt", tmp_path / "best.pt")
    for name in ("epoch_01.pt", "epoch_0001.pt.bak", "epoch_abcd.pt", "xepoch_0001.pt"):  # not epoch checkpoints
        (tmp_path / name).write_bytes(b"")
    for epoch in (9998, 9999, 10000):  # past 4 digits: numeric order, not name order
        assert mgr.save_epoch(_state(epoch), epoch) == tmp_path / f"epoch_{epoch:04d}.pt"
    assert [p.name for p in mgr.epoch_files()] == ["epoch_9999.pt", "epoch_10000.pt"]
    assert load(tmp_path / "epoch_10000.pt")["step"] == 10000
    assert {p.name for p in tmp_path.iterdir()} >= {"epoch_01.pt", "epoch_0001.pt.bak", "epoch_abcd.pt", "xepoch_0001.pt"}
    one = CheckpointManager(tmp_path / "one", keep_last=1)
    for epoch in (1, 2, 3):
        one.save_epoch(_state(epoch), epoch)
    assert [p.name for p in one.epoch_files()] == ["epoch_0003.pt"]


def test_resume_path_auto_none_and_an_explicit_file(tmp_path):
    mgr = CheckpointManager(tmp_path, keep_last=1)
    assert mgr.resume_path("auto") is None  # nothing yet: start over
    mgr.save(_state(), "last.pt")
    assert mgr.resume_path("auto") == tmp_path / "last.pt"
    assert mgr.resume_path("none") is None  # even with last.pt present
    other = mgr.save(_state(), "best.pt")
    assert mgr.resume_path(str(other)) == other
    with pytest.raises(CheckpointError, match=r"nope\.pt: resume checkpoint not found"):
        mgr.resume_path(str(tmp_path / "nope.pt"))
    with pytest.raises(CheckpointError, match="resume checkpoint not found"):
        mgr.resume_path(str(tmp_path))  # a folder is not a checkpoint


def test_load_refuses_a_file_that_is_not_a_training_checkpoint(tmp_path):
    atomic_save({"model": {}, "step": 3}, tmp_path / "weights.pt")
    with pytest.raises(CheckpointError, match=r"weights\.pt: not a luna training checkpoint \(missing optimizer, epoch\)"):
        CheckpointManager.load(tmp_path / "weights.pt")
    atomic_save(_state(7), tmp_path / "ok.pt")
    state = CheckpointManager.load(tmp_path / "ok.pt")
    assert state["step"] == 7 and state["model"]["w"].device.type == "cpu"
    assert CheckpointManager.load(tmp_path / "ok.pt", map_location="meta")["model"]["w"].device.type == "meta"


def test_cuda_generators_are_saved_and_restored_only_where_there_are_some(monkeypatch):
    """The CUDA arm without a GPU: a fake torch.cuda records what rng_state/set_rng_state do with it."""
    calls = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: [torch.tensor([7, 8], dtype=torch.uint8)])
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", lambda states: calls.append([s.tolist() for s in states]))
    s = rng_state()
    assert [t.tolist() for t in s["cuda"]] == [[7, 8]]
    set_rng_state(s)
    assert calls == [[[7, 8]]]
    set_rng_state({**s, "cuda": []})  # a checkpoint from a CPU run resumed on a GPU: CUDA generators left alone
    assert calls == [[[7, 8]]]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    set_rng_state(s)  # a GPU checkpoint resumed on CPU: nothing to restore them into
    assert calls == [[[7, 8]]]
    assert rng_state()["cuda"] == []
