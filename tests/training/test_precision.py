"""hardware.precision=auto: bf16 where the device computes it natively, fp32 where it would be emulated."""
from __future__ import annotations

import pytest
import torch

from luna.devices import native_bf16, resolve_precision
from tests.training.helpers import run_train

CPU = torch.device("cpu")


@pytest.mark.parametrize("avx512_bf16, amx, expected", [(True, False, "bf16"), (False, True, "bf16"),
                                                        (False, False, "fp32")])
def test_auto_is_bf16_only_on_a_cpu_with_native_bf16(monkeypatch, avx512_bf16, amx, expected):
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    assert native_bf16(CPU) is (avx512_bf16 or amx)
    assert resolve_precision("auto", CPU) == expected
    for explicit in ("fp32", "bf16", "fp16"):  # an explicit choice is never second-guessed
        assert resolve_precision(explicit, CPU) == explicit


def test_auto_on_cuda_asks_the_gpu(monkeypatch):
    for supported, expected in ((True, "bf16"), (False, "fp32")):
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: supported)
        assert resolve_precision("auto", torch.device("cuda")) == expected


def test_a_run_with_auto_precision_says_which_it_resolved_to(tmp_path):
    out = tmp_path / "run"
    run_train(out, ["hardware.precision=auto", "trainer.max_steps=2", "trainer.val_every_steps=2"])
    resolved = resolve_precision("auto", CPU)
    assert f"(single, cpu, {resolved})" in (out / "train.log").read_text()
