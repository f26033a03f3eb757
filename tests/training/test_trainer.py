"""The trainer end to end on the bundled corpus: learning, checkpoints, exact resume, NaN handling."""
from __future__ import annotations

import logging
import random
from pathlib import Path

import pytest
import torch

from tests.conftest import compose_train
from tests.training.helpers import TINY, assert_resumed_at, assert_same_tensors, kill_at_step, load, metrics, run_train


def test_loss_falls_on_a_short_overfit_run(tmp_path):
    run_train(tmp_path, ["trainer.max_steps=60", "trainer.val_every_steps=20"])
    m = metrics(tmp_path)
    assert m["step"] == 60
    assert m["best_val_loss"] < 0.85 * m["first_val_loss"], m


def test_checkpoint_files_best_last_epochs_keep_last(tmp_path):
    # the bundled corpus: 75 train-clean-100 files, 70 after the 5% val split / batch 8 → 8 steps per epoch; 4 epochs
    run_train(tmp_path, ["trainer.max_epochs=4", "checkpointing.every_epochs=1", "checkpointing.keep_last=2"])
    ck = tmp_path / "checkpoints"
    assert sorted(p.name for p in ck.glob("epoch_*.pt")) == ["epoch_0003.pt", "epoch_0004.pt"]
    last, best = load(ck / "last.pt"), load(ck / "best.pt")
    assert last["step"] == 32 and last["epoch"] == 4 and last["batch_pos"] == 0
    assert best["best"] == pytest.approx(metrics(tmp_path)["best_val_loss"])
    assert best["step"] <= last["step"]
    for key in ("model", "optimizer", "scaler", "step", "epoch", "rng", "best", "config", "luna_version"):
        assert key in last, key
    assert set(last["rng"]) == {"python", "numpy", "torch", "cuda"}
    assert last["config"]["model"]["name"] == "tiny"
    assert not list(ck.glob("*.tmp"))


def test_every_steps_writes_last_mid_epoch(tmp_path):
    run_train(tmp_path, ["trainer.max_steps=5", "checkpointing.every_steps=2", "checkpointing.every_epochs=0"])
    last = load(tmp_path / "checkpoints" / "last.pt")
    assert last["step"] == 5 and last["batch_pos"] == 5 and last["epoch"] == 0
    assert not list((tmp_path / "checkpoints").glob("epoch_*.pt"))


@pytest.mark.slow
@pytest.mark.parametrize("workers", [0, 2])
def test_sigkill_and_restart_gives_bit_identical_weights(tmp_path, workers):
    total = 14  # crosses an epoch boundary (9 steps per epoch)
    common = [f"trainer.max_steps={total}", "checkpointing.every_steps=1", f"data.num_workers={workers}",
              "model.quantizer_dropout=0.5", "trainer.val_every_steps=5"]
    ref, cut = tmp_path / "ref", tmp_path / "cut"
    run_train(ref, common)
    at = random.Random(workers).randint(3, total - 3)
    reached = kill_at_step(cut, common, at)
    assert reached < total, "the run finished before it could be killed; the test proves nothing"
    assert_resumed_at(run_train(cut, common), reached)  # the same command again: resume=auto
    a, b = load(ref / "checkpoints" / "last.pt"), load(cut / "checkpoints" / "last.pt")
    assert a["step"] == b["step"] == total
    assert_same_tensors(a["model"], b["model"])
    for sa, sb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        assert_same_tensors(sa, sb)


def test_resume_none_starts_over_and_resume_path_continues(tmp_path):
    first = tmp_path / "a"
    run_train(first, ["trainer.max_steps=4"])
    r = run_train(first, ["trainer.max_steps=6"])
    assert load(first / "checkpoints" / "last.pt")["step"] == 6
    assert "resumed from" in r.stdout + r.stderr
    other = tmp_path / "b"
    run_train(other, ["trainer.max_steps=8", f"resume={first / 'checkpoints' / 'last.pt'}"])
    assert load(other / "checkpoints" / "last.pt")["step"] == 8
    run_train(other, ["trainer.max_steps=3", "resume=none"])
    assert load(other / "checkpoints" / "last.pt")["step"] == 3


def _in_process_cfg(tmp_path, overrides):
    cfg = compose_train(TINY + overrides)
    cfg.output_dir = str(tmp_path)
    return cfg


def test_nan_losses_are_skipped_then_the_run_stops_with_a_clear_message(tmp_path, monkeypatch, caplog):
    from luna.models.tokenizer import SpeechTokenizer
    from luna.errors import TrainingError
    from luna.training.launch import train

    real = SpeechTokenizer.forward_mel
    calls = {"n": 0, "poison": {3, 4}}

    def poisoned(self, mel, *a, **k):
        calls["n"] += 1
        if self.training and calls["n"] in calls["poison"]:
            mel = mel * float("nan")
        return real(self, mel, *a, **k)

    monkeypatch.setattr(SpeechTokenizer, "forward_mel", poisoned)
    caplog.set_level(logging.WARNING, logger="luna.trainer")
    m = train(_in_process_cfg(tmp_path / "a", ["trainer.max_steps=8", "checkpointing.every_steps=1"]))
    assert m["step"] == 8
    assert sum("non-finite" in r.message for r in caplog.records) == 2
    state = load(tmp_path / "a" / "checkpoints" / "last.pt")
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())

    calls["n"], calls["poison"] = 0, set(range(1, 1000))
    with pytest.raises(TrainingError, match="max_bad_steps=3"):
        train(_in_process_cfg(tmp_path / "b", ["trainer.max_steps=20", "trainer.max_bad_steps=3"]))


def test_global_batch_must_divide_by_world_and_accumulation(tmp_path):
    r = run_train(tmp_path, ["data.batch_size=6", "trainer.accumulate=4"], check=False)
    assert r.returncode == 2
    assert "data.batch_size" in r.stderr and "divisible" in r.stderr


def test_accumulation_counts_optimizer_steps_not_micro_batches(tmp_path):
    # global batch 8 = micro-batch 2 x accumulate 4; EMA codebooks see each micro-batch, so this is not
    # bit-equal to one batch of 8 (DDP is: its EMA statistics are all-reduced, see test_distributed)
    run_train(tmp_path, ["trainer.max_steps=3", "trainer.accumulate=4"])
    last = load(tmp_path / "checkpoints" / "last.pt")
    assert last["step"] == 3 and last["batch_pos"] == 12


def _scalars(run_dir, tag):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    ea = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0})
    ea.Reload()
    return {e.step: e.value for e in ea.Scalars(tag)} if tag in ea.Tags()["scalars"] else {}


def test_codebook_alarm_fires_on_a_forced_collapse(tmp_path, monkeypatch, caplog):
    """An encoder that outputs one constant vector collapses every quantizer onto one code: once the
    grace period is over (here max(warmup 2, revival grace 20, EMA horizon 1/(1-0.9)) = 20 steps), the alarm
    fires, one warning line per window, the tracker flag at every logged step."""
    from luna.models.codec import Encoder
    from luna.training.launch import train
    from luna.training.health import alarm_grace_steps

    real = Encoder.forward
    monkeypatch.setattr(Encoder, "forward", lambda self, mel: real(self, mel) * 0 + 1.0)
    caplog.set_level(logging.WARNING, logger="luna.trainer")
    cfg = _in_process_cfg(tmp_path, ["trainer.max_steps=30", "logger=tensorboard", "trainer.alarm_usage=0.1",
                                     "model.ema_decay=0.9"])
    assert alarm_grace_steps(cfg) == 20
    train(cfg)
    alarms = [r.message for r in caplog.records if "codebook alarm" in r.message]
    assert alarms, "no alarm on a collapsed codebook"
    assert all(a.startswith("step 21: ") for a in alarms) and len(alarms) == 2  # both quantizers, once each
    assert "quantizer 0 uses 3.1% of 32 codes" in alarms[0] and "perplexity 1.0" in alarms[0]
    assert "not rising since step 1" in alarms[0] and "replaced this step" in alarms[0]
    assert sorted(_scalars(tmp_path, "codebook/q0_alarm")) == list(range(21, 31))


def test_codebook_alarm_stays_silent_while_usage_rises_on_real_speech(tmp_path, caplog):
    """4 x 1024 codes on the bundled corpus: after k-means the deeper stages use 0.4% of their codes and
    fill up over the next hundreds of steps. The old rule (usage below 5%) warned at every logged step."""
    from luna.training.launch import train
    from luna.training.health import alarm_grace_steps

    caplog.set_level(logging.WARNING, logger="luna.trainer")
    cfg = _in_process_cfg(tmp_path, ["trainer.max_steps=60", "model.codebook_size=1024", "model.num_quantizers=4",
                                     "data.segment_seconds=1.0", "model.ema_decay=0.95", "logger=tensorboard",
                                     "logger.log_every_steps=5"])
    grace = alarm_grace_steps(cfg)
    assert grace == 20  # max(warmup 2, revival grace 20, EMA horizon 1/(1-0.95))
    train(cfg)
    assert not [r.message for r in caplog.records if "codebook alarm" in r.message]
    usage = _scalars(tmp_path, "codebook/q1_usage")
    judged = [step for step in usage if step > grace]
    assert len(judged) >= 6 and all(usage[step] < 0.05 for step in judged)  # low all along, but rising
    assert usage[max(judged)] > usage[min(judged)]
    assert not _scalars(tmp_path, "codebook/q1_alarm")


def test_training_on_a_folder_with_broken_files_logs_what_it_skipped(tmp_path):
    import shutil

    from tests.conftest import SYNTHETIC_MINI

    root = tmp_path / "corpus"
    for i, f in enumerate(sorted(SYNTHETIC_MINI.glob("train-mini/*/*/*.flac"))[:12]):
        (root / f"spk{i % 3}").mkdir(parents=True, exist_ok=True)
        shutil.copy(f, root / f"spk{i % 3}" / f.name)
    (root / "bad").mkdir()
    (root / "bad" / "empty.flac").write_bytes(b"")
    (root / "bad" / "notes.wav").write_text("not audio")
    good = sorted(root.glob("spk0/*.flac"))[0].read_bytes()
    (root / "bad" / "truncated.flac").write_bytes(good[: len(good) // 3])
    r = run_train(tmp_path / "run", ["data=folder", f"data.root={root}", "data.batch_size=4", "trainer.max_steps=6"])
    log = r.stdout + r.stderr
    assert "2 unreadable skipped" in log  # found by the manifest pass (empty, not audio)
    assert "truncated.flac" in log  # fails only when decoded: logged once, its items fall back
    assert load(tmp_path / "run" / "checkpoints" / "last.pt")["step"] == 6
    # the run dir lists every skipped file with its reason; the log says how many and where
    listing = tmp_path / "run" / "skipped_files.tsv"
    assert f"2 unreadable audio file(s) skipped (train and val): every one, with its reason, in {listing}" in log
    header, *lines = listing.read_text().splitlines()
    assert header == "path\treason\tfound"
    rows = {Path(p).name: (Path(p), reason, found) for p, reason, found in (line.split("\t") for line in lines)}
    assert len(rows) == len(lines) == 3
    assert rows["empty.flac"][1:] == ("empty file (0 bytes)", "indexing")
    assert rows["notes.wav"][2] == "indexing" and rows["notes.wav"][1]
    assert rows["truncated.flac"][2] == "decoding" and rows["truncated.flac"][1]  # e.g. a failed seek
    assert all(p.is_file() and p.parent.parent == root for p, _, _ in rows.values())
    assert f"(the files, with reasons: {listing})" in log


def test_wall_clock_budget_stops_the_run_early_saves_last_and_says_so(tmp_path, caplog):
    from luna.training.launch import train

    caplog.set_level(logging.INFO, logger="luna")
    # 3 s of budget (a few dozen steps of the tiny model); 10000 steps would take many minutes
    m = train(_in_process_cfg(tmp_path, ["trainer.max_steps=10000", "trainer.max_epochs=2000",
                                         "trainer.max_minutes=0.05", "trainer.val_every_steps=0"]))
    last = load(tmp_path / "checkpoints" / "last.pt")
    assert 1 <= m["step"] == last["step"] < 2000, m["step"]  # stopped early, its position saved
    assert last["epoch"] * 8 + last["batch_pos"] == last["step"]  # 8 steps per epoch
    assert metrics(tmp_path)["step"] == m["step"]
    stops = [r.getMessage() for r in caplog.records if r.getMessage().startswith("stopped at step")]
    assert len(stops) == 1 and stops[0].startswith(f"stopped at step {m['step']} of 10000 (wall clock)"), stops
