"""The learning-rate schedule (a pure function of the step) and the optimizer factory, value by value."""
from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from luna.training.schedule import adamw, lr_at


def approx(x: float):
    return pytest.approx(x, rel=1e-12, abs=1e-15)


def test_warmup_rises_linearly_to_the_base_lr():
    # base 2.0 over 10 warm-up steps: step s gives 2.0 * (s + 1) / 10, the last warm-up step reaches the base
    assert [lr_at(s, 2.0, 110, 10) for s in (0, 4, 9)] == [approx(0.2), approx(1.0), approx(2.0)]
    assert lr_at(10, 2.0, 110, 10) == approx(2.0)  # the first step after warm-up: cosine at progress 0
    # warm-up applies to every kind
    assert lr_at(1, 2.0, 110, 10, kind="constant") == approx(0.4)
    assert lr_at(1, 2.0, 110, 10, kind="exponential", gamma=0.5) == approx(0.4)


def test_no_warmup_starts_at_the_base_lr():
    assert lr_at(0, 3.0, 100, 0) == approx(3.0)
    assert lr_at(0, 3.0, 100, 0, kind="constant") == approx(3.0)


@pytest.mark.parametrize("min_ratio", [0.0, 0.1])
def test_cosine_at_known_points(min_ratio):
    base, total, warm = 2.0, 110, 10  # 100 decay steps after warm-up

    def expected(progress):
        return base * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))

    assert lr_at(35, base, total, warm, min_ratio=min_ratio) == approx(expected(0.25))
    assert lr_at(60, base, total, warm, min_ratio=min_ratio) == approx(base * (min_ratio + (1 - min_ratio) / 2))
    assert lr_at(85, base, total, warm, min_ratio=min_ratio) == approx(expected(0.75))
    assert lr_at(total, base, total, warm, min_ratio=min_ratio) == approx(base * min_ratio)  # the end: base·min_ratio
    assert lr_at(total + 50, base, total, warm, min_ratio=min_ratio) == approx(base * min_ratio)  # and stays there
    lrs = [lr_at(s, base, total, warm, min_ratio=min_ratio) for s in range(warm, total + 1)]
    assert all(a > b for a, b in zip(lrs, lrs[1:]))  # strictly falling over the decay


def test_cosine_is_the_default_and_decays_to_zero_by_default():
    assert lr_at(60, 1.0, 110, 10) == approx(0.5)
    assert lr_at(110, 1.0, 110, 10) == approx(0.0)


def test_cosine_with_no_decay_steps_left_drops_to_the_floor():
    # total == warmup: a span of one step, so the step after warm-up is already at the end
    assert lr_at(5, 1.0, 5, 5, min_ratio=0.2) == approx(1.0)
    assert lr_at(6, 1.0, 5, 5, min_ratio=0.2) == approx(0.2)


def test_constant_stays_flat():
    assert {lr_at(s, 0.5, 100, 0, kind="constant") for s in (0, 1, 50, 100, 1000)} == {0.5}


def test_exponential_decays_once_per_epoch():
    lr = [lr_at(s, 1.0, 100, 0, kind="exponential", gamma=0.5, steps_per_epoch=10) for s in (0, 9, 10, 19, 20, 35)]
    assert lr == [approx(v) for v in (1.0, 1.0, 0.5, 0.5, 0.25, 0.125)]
    # steps_per_epoch defaults to 1 (and 0 counts as 1): a decay every step; gamma defaults to 0.999
    assert lr_at(3, 1.0, 100, 0, kind="exponential", gamma=0.5) == approx(0.125)
    assert lr_at(3, 1.0, 100, 0, kind="exponential", gamma=0.5, steps_per_epoch=0) == approx(0.125)
    assert lr_at(3, 1.0, 100, 0, kind="exponential") == approx(0.999 ** 3)


def test_adamw_takes_its_settings_from_the_config_node():
    p = [torch.nn.Parameter(torch.zeros(3))]
    o = SimpleNamespace(betas=[0.8, 0.95], weight_decay=0.05, eps=1e-7)
    opt = adamw(p, o, lr=3e-4)  # not AdamW's default 1e-3
    assert isinstance(opt, torch.optim.AdamW)
    d = opt.defaults
    assert (d["lr"], d["betas"], d["weight_decay"], d["eps"], d["fused"]) == (3e-4, (0.8, 0.95), 0.05, 1e-7, True)
    assert adamw(p, o, lr=1e-3, betas=[0.5, 0.9]).defaults["betas"] == (0.5, 0.9)  # an explicit override wins


def test_min_progress_is_a_floor_on_the_schedules_position():
    # the wall clock's share of trainer.max_minutes counts as step min_progress x total (warm-up and decay alike):
    # at step 10 of 100 (warm-up 10), a clock at 55% is step 55, the cosine's midpoint
    assert lr_at(10, 2.0, 100, 10, min_ratio=0.1, min_progress=0.55) == approx(2.0 * (0.1 + 0.9 / 2))
    assert lr_at(85, 2.0, 110, 10, min_progress=0.5) == approx(lr_at(85, 2.0, 110, 10))  # the step is further: it wins
    assert lr_at(10, 2.0, 110, 10, min_ratio=0.1, min_progress=3.0) == approx(0.2)  # clamped at the end
    assert lr_at(3, 2.0, 110, 10, min_progress=0.05) == approx(2.0 * 6.5 / 10)  # the clock says step 5.5: warming
    assert lr_at(3, 2.0, 110, 10, min_progress=0.9) < 0.2  # a clock near its end leaves warm-up behind
    assert lr_at(3, 2.0, 110, 0, kind="constant", min_progress=0.9) == approx(2.0)
