"""The optimizer step and resume: wherever the restored tensors live, whatever the precision, on the clock."""
from __future__ import annotations

import logging
import random
import re

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from luna.distributed import DistEnv
from luna.errors import TrainingError
from luna.training.checkpoint import rng_state, set_rng_state
from luna.training.guard import StepGuard
from luna.training.schedule import adamw
from tests.conftest import compose_train
from tests.training.helpers import TINY, assert_same_tensors, kill_at_step, load, run_train


class Elsewhere(torch.Tensor):
    """A tensor as a checkpoint loaded with ``map_location`` onto an accelerator holds it: numpy refuses it
    until it is brought to the host with ``.cpu()`` (the error CUDA raises: the bug class of issue 20)."""

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        if func in (torch.Tensor.numpy, torch.Tensor.__array__):
            raise TypeError("can't convert elsewhere:0 device type tensor to numpy. Use Tensor.cpu() first")
        if func is torch.Tensor.cpu:
            return args[0].as_subclass(torch.Tensor).clone()
        with torch._C.DisableTorchFunctionSubclass():
            return func(*args, **(kwargs or {}))


def elsewhere(obj, kind=Elsewhere):
    """Every tensor of a nested state moved 'off the host' (``kind=torch.Tensor``: back)."""
    if torch.is_tensor(obj):
        return obj.as_subclass(kind)
    if isinstance(obj, dict):
        return {k: elsewhere(v, kind) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(elsewhere(v, kind) for v in obj)
    return obj


def _draws():
    return random.random(), float(np.random.rand()), float(torch.rand(()))


def test_rng_state_restores_from_tensors_off_the_host():
    state = rng_state()
    expected = _draws()
    _draws()
    set_rng_state(elsewhere(state))
    assert _draws() == expected


def _cfg(tmp_path, overrides):
    cfg = compose_train(TINY + overrides)
    cfg.output_dir = str(tmp_path)
    return cfg


class _Killed(Exception):
    pass


def test_resume_restores_a_checkpoint_mapped_off_the_host(tmp_path, monkeypatch):
    """Model, optimizer, codebook EMA buffers, RNG and data position all restore from tensors that are not on
    the host: the resumed run ends bit-identical to an uninterrupted one."""
    from luna.training import checkpoint, loop
    from luna.training.launch import train

    common = ["trainer.max_steps=6", "checkpointing.every_steps=3", "model.quantizer_dropout=0.5"]
    train(_cfg(tmp_path / "ref", common))

    real_save = loop.Loop.save

    def save_then_die(self, name):
        real_save(self, name)
        if name == "last.pt" and self.step == 3:
            raise _Killed()

    monkeypatch.setattr(loop.Loop, "save", save_then_die)
    with pytest.raises(_Killed):
        train(_cfg(tmp_path / "cut", common))
    monkeypatch.setattr(loop.Loop, "save", real_save)
    real_load = checkpoint.safe_load
    loaded = []

    def load_elsewhere(path, map_location="cpu", **kw):
        loaded.append(path)
        return elsewhere(real_load(path, map_location, **kw))

    monkeypatch.setattr(checkpoint, "safe_load", load_elsewhere)
    real_write = checkpoint.atomic_save  # a restored CUDA tensor saves as itself; the stand-in saves as a tensor
    monkeypatch.setattr(checkpoint, "atomic_save", lambda state, path: real_write(elsewhere(state, torch.Tensor), path))
    m = train(_cfg(tmp_path / "cut", common))
    assert loaded and m["step"] == 6
    a, b = load(tmp_path / "ref" / "checkpoints" / "last.pt"), load(tmp_path / "cut" / "checkpoints" / "last.pt")
    assert_same_tensors(a["model"], b["model"])
    for sa, sb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        assert_same_tensors(sa, sb)


@pytest.mark.gpu
@pytest.mark.slow
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_run_killed_and_resumed_is_bit_exact(tmp_path):
    total = 12
    common = [f"trainer.max_steps={total}", "checkpointing.every_steps=1", "hardware.device=cuda",
              "trainer.deterministic=true", "model.quantizer_dropout=0.5"]
    ref, cut = tmp_path / "ref", tmp_path / "cut"
    run_train(ref, common, env={"CUBLAS_WORKSPACE_CONFIG": ":4096:8"})
    reached = kill_at_step(cut, common, 5)
    assert 0 < reached < total
    r = run_train(cut, common, env={"CUBLAS_WORKSPACE_CONFIG": ":4096:8"})
    assert re.search(rf"resumed from .* at step {reached}\b", r.stdout + r.stderr)
    a, b = load(ref / "checkpoints" / "last.pt"), load(cut / "checkpoints" / "last.pt")
    assert a["step"] == b["step"] == total
    assert_same_tensors(a["model"], b["model"])


# ---- the guarded step --------------------------------------------------------------------------------------------
def _net(seed=0):
    torch.manual_seed(seed)
    net = torch.nn.Linear(4, 3)
    opt = adamw(net.parameters(), OmegaConf.create({"betas": [0.9, 0.99], "weight_decay": 0.01, "eps": 1e-8}), 1e-2)
    return net, opt


def _backward(net, scale=1.0, scaler=None):
    loss = net(torch.ones(2, 4)).pow(2).sum() * scale
    (loss if scaler is None else scaler.scale(loss)).backward()
    return loss.detach()


def test_a_non_finite_step_changes_nothing_and_too_many_in_a_row_stop_naming_the_checkpoint(tmp_path, caplog):
    net, opt = _net()
    guard = StepGuard(torch.device("cpu"), max_bad_steps=3, grad_clip=1.0)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    guard.step(opt, scaler, _backward(net), 1e-2)  # a good step first: Adam has state
    before = {k: v.clone() for k, v in net.state_dict().items()}
    moments = [v.clone() for v in opt.state[net.weight].values()]
    for _ in range(2):
        guard.step(opt, scaler, _backward(net, float("nan")), 1e-2)
    assert_same_tensors(before, net.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(moments, opt.state[net.weight].values()))  # step count too
    caplog.set_level(logging.WARNING, logger="luna.trainer")
    assert guard.check(3, tmp_path / "last.pt") == 2
    assert "2 step(s) skipped" in caplog.text
    guard.step(opt, scaler, _backward(net, float("inf")), 1e-2)
    (tmp_path / "last.pt").write_bytes(b"x")
    with pytest.raises(TrainingError, match=rf"max_bad_steps=3.*Last good checkpoint: {tmp_path / 'last.pt'}"):
        guard.check(4, tmp_path / "last.pt")
    guard2 = StepGuard(torch.device("cpu"), max_bad_steps=3, grad_clip=1.0)
    for _ in range(2):  # two bad, one good, two bad: never 3 in a row
        guard2.step(opt, scaler, _backward(net, float("nan")), 1e-2)
    guard2.step(opt, scaler, _backward(net), 1e-2)
    assert not torch.equal(before["weight"], net.weight)
    for _ in range(2):
        guard2.step(opt, scaler, _backward(net, float("nan")), 1e-2)
    assert guard2.check(5, None) == 4


def test_fp16_counts_a_non_finite_loss_but_leaves_overflows_to_the_scaler():
    """Issue 24: under fp16 (GradScaler) a NaN loss was never counted, so max_bad_steps never stopped the run."""
    net, opt = _net()
    guard = StepGuard(torch.device("cpu"), max_bad_steps=2, grad_clip=0.0)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**16)
    before = net.weight.detach().clone()
    loss = _backward(net, 1e34, scaler)  # a finite loss whose gradients overflow once scaled
    assert torch.isfinite(loss) and not all(torch.isfinite(p.grad).all() for p in net.parameters())
    guard.step(opt, scaler, loss, 1e-2)
    assert torch.equal(before, net.weight) and scaler.get_scale() == 2.0**15  # skipped and backed off
    assert guard.check(1, None) == 0  # an overflow is the scaler's business, not a bad step
    for _ in range(2):
        nan = _backward(net, float("nan"), scaler)
        guard.step(opt, scaler, nan, 1e-2)
    assert torch.equal(before, net.weight)
    with pytest.raises(TrainingError, match="2 non-finite steps in a row"):
        guard.check(3, None)


def test_grad_clip_scales_the_gradient_the_optimizer_sees():
    seen = []
    for clip in (0.5, 0.0):
        net, opt = _net()
        opt.register_step_pre_hook(lambda o, a, k: seen.append(
            float(torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in net.parameters()])))))
        guard = StepGuard(torch.device("cpu"), max_bad_steps=3, grad_clip=clip)
        norm = guard.step(opt, torch.amp.GradScaler("cpu", enabled=False), _backward(net, 10.0), 1e-2)
        assert float(norm) > 5  # the norm before clipping is what the loop logs
    assert seen[0] == pytest.approx(0.5, rel=1e-4)  # clipped to grad_clip
    assert seen[1] == pytest.approx(float(norm), rel=1e-6)  # grad_clip=0: untouched


def _adversary(seed):
    from luna.training.adversary import Adversary

    cfg = OmegaConf.create({"vocoder": {"discriminator_width": 0.125},
                            "optimizer": {"lr": 1e-3, "betas": [0.8, 0.99], "weight_decay": 0.0, "eps": 1e-8},
                            "hardware": {"lr_scale": 1.0}, "trainer": {"accumulate": 1, "grad_clip": 0.0}})
    torch.manual_seed(seed)
    gen = torch.nn.Linear(4, 4)
    gen_opt = adamw(gen.parameters(), cfg.optimizer, 1e-3)
    return gen, gen_opt, Adversary(cfg, DistEnv(), gen_opt)


def _d_params(adv):
    """The period discriminators' weights (the first scale discriminator's spectral norm advances its power
    iteration at every forward, so it depends on how many forwards ran, not only on the steps taken)."""
    return {f"{i}": p.detach().clone() for i, p in enumerate(adv.mpd.parameters())}


def test_discriminator_gradients_are_not_carried_over_a_skipped_step():
    """Issue 24: a skipped step left the discriminators' gradients in place, and the next step added them."""
    torch.manual_seed(1)
    y1, f1, y2, f2 = (torch.randn(2, 1, 4096) * 0.1 for _ in range(4))
    scaler = torch.amp.GradScaler("cpu", enabled=False)

    gen, gen_opt, adv = _adversary(0)
    start = _d_params(adv)
    adv.accumulate(y1, f1)
    _backward(gen)
    StepGuard(torch.device("cpu"), 10, 0.0).step(gen_opt, scaler, torch.tensor(float("nan")), 1e-3)  # skipped
    assert_same_tensors(start, _d_params(adv))  # the discriminators skipped with the generator
    assert all(p.grad is None for p in adv.params)
    adv.accumulate(y2, f2)
    _backward(gen)
    StepGuard(torch.device("cpu"), 10, 0.0).step(gen_opt, scaler, torch.tensor(1.0), 1e-3)

    _, gen_opt_ref, ref = _adversary(0)  # the same start, only the second step's batch
    gen_ref = gen_opt_ref.param_groups[0]["params"]
    ref.accumulate(y2, f2)
    for p in gen_ref:
        p.grad = torch.zeros_like(p)
    StepGuard(torch.device("cpu"), 10, 0.0).step(gen_opt_ref, scaler, torch.tensor(1.0), 1e-3)
    after, expected = _d_params(adv), _d_params(ref)
    assert not torch.equal(after["0"], start["0"])
    assert_same_tensors(after, expected)


def test_a_run_stopped_by_its_clock_ends_with_its_schedule_annealed(tmp_path, caplog):
    from luna.training.launch import train

    caplog.set_level(logging.INFO, logger="luna.trainer")
    m = train(_cfg(tmp_path, ["trainer.max_steps=100000", "trainer.max_minutes=0.05", "optimizer.warmup_steps=0"]))
    assert 0 < m["step"] < 100000
    line = next(r.message for r in caplog.records if r.message.startswith("stopped at step"))
    assert "(wall clock)" in line, line
    lr, peak = (float(x) for x in re.search(r"learning rate (\S+) \(peak (\S+)\)", line).groups())
    # the last step ran at >= the clock's progress one step before the budget ran out: near the cosine's end
    assert peak == pytest.approx(3e-3) and lr < 0.1 * peak, line
