"""Trackers for real: TensorBoard event files read back, a wandb offline run dir that `wandb sync` could upload."""
from __future__ import annotations

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from luna.training.loggers import scrub
from tests.training.helpers import run_train

SECRET = "sk-test-0123456789abcdef"


def test_tensorboard_events_hold_the_scalars_and_media(tmp_path):
    run_train(tmp_path, ["logger=tensorboard", "trainer.max_steps=4", "logger.log_every_steps=2", "logger.audio_samples=1"])
    ea = EventAccumulator(str(tmp_path / "tensorboard"), size_guidance={"scalars": 0, "audio": 0, "images": 0})
    ea.Reload()
    tags = ea.Tags()
    for tag in ("train/loss", "train/mel_l1", "train/mel_mse", "train/commitment", "train/lr", "train/grad_norm",
                "train/audio_seconds_per_second", "codebook/q0_usage", "codebook/q1_perplexity", "val/loss", "val/mel_l1"):
        assert tag in tags["scalars"], tag
    assert [e.step for e in ea.Scalars("train/loss")] == [2, 4]
    assert all(e.value > 0 for e in ea.Scalars("train/loss"))
    assert "val/reconstruction_0" in tags["audio"]
    assert "val/mel_0" in tags["images"]


def test_wandb_offline_run_dir_with_config_and_scalars_and_same_id_on_restart(tmp_path):
    env = {"WANDB_MODE": "offline", "WANDB_API_KEY": SECRET}
    run_train(tmp_path, ["logger=wandb", "trainer.max_steps=3"], env=env)
    run_id = (tmp_path / "wandb_run_id").read_text().strip()
    runs = sorted((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and runs[0].name.endswith(run_id)
    (log,) = runs[0].glob(f"run-{run_id}.wandb")  # the transaction log `wandb sync` uploads
    records = log.read_bytes()  # protobuf records: config keys and history keys appear verbatim
    for key in (b"codebook_size", b"num_quantizers", b"train/loss", b"val/loss", b"codebook/q0_usage"):
        assert key in records, key
    run_train(tmp_path, ["logger=wandb", "trainer.max_steps=5"], env=env)  # a restarted job
    runs = sorted((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 2 and all(r.name.endswith(run_id) for r in runs)  # continues the same run
    for f in tmp_path.rglob("*"):
        if f.is_file():
            assert SECRET.encode() not in f.read_bytes(), f"API key leaked into {f}"


def test_scrub_drops_credentials_from_logged_config():
    cfg = {"logger": {"wandb": {"api_key": "x", "project": "p"}}, "token": "y", "lr": 1}
    assert scrub(cfg) == {"logger": {"wandb": {"project": "p"}}, "lr": 1}
