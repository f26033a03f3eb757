"""Every model preset trains as written: `python -m luna.train model=X` with no vocoder override (issue 23).

A preset off the universal HiFi-GAN's mel convention picks its own vocoder (Griffin-Lim), so the first thing a
user types works; each preset is composed exactly as the entry point composes it, validated, and trained for
two steps in this process (a small batch: the model and its vocoder pairing are what is tested, not speed).
"""
from __future__ import annotations

import pytest

from luna.config import CONF_DIR
from tests.conftest import compose_train

PRESETS = sorted(p.stem for p in (CONF_DIR / "model").glob("*.yaml") if p.stem != "base")
SMALL = ["trainer.max_steps=2", "data.batch_size=2", "data.max_val_items=2", "data.crops_per_file=1",
         "data.num_workers=0", "hardware=cpu", "hardware.threads=1", "logger=none", "trainer.progress=false",
         "checkpointing.every_epochs=0"]


def test_presets_are_found():
    assert {"rvq8", "tiny", "rvq8_causal", "rvq8_24k"} <= set(PRESETS)


@pytest.mark.slow
@pytest.mark.parametrize("preset", PRESETS)
def test_every_model_preset_trains_with_its_own_vocoder(tmp_path, preset):
    from luna.config import check_mel_compatible
    from luna.training.launch import train
    from luna.validation import validate

    cfg = compose_train([f"model={preset}", *SMALL])
    validate(cfg)
    check_mel_compatible(cfg.model.mel, cfg.vocoder.mel)  # the pairing the tokenizer itself would refuse
    cfg.output_dir = str(tmp_path)
    m = train(cfg)
    assert m["step"] == 2 and m["best_val_loss"] < float("inf")
    assert (tmp_path / "checkpoints" / "last.pt").is_file()
