"""task=vocoder: HiFi-GAN training through the same trainer (steps, exact resume of both networks, use)."""
from __future__ import annotations

import json
import subprocess
import sys

import torch

from luna.config import ROOT
from tests.training.helpers import assert_same_tensors, kill_at_step, load, metrics, run_train

GAN = ["experiment=vocoder", "vocoder.architecture=v3", "vocoder.discriminator_width=0.125", "data.batch_size=4",
       "data.segment_seconds=0.34", "optimizer.lr=2e-4", "logger.log_every_steps=1"]


def test_a_few_gan_steps_lower_the_mel_loss(tmp_path):
    run_train(tmp_path, GAN + ["trainer.max_steps=36", "trainer.val_every_steps=4"])
    m = metrics(tmp_path)
    assert m["task"] == "vocoder" and m["step"] == 36
    assert m["best_val_loss"] < 0.9 * m["first_val_loss"], m
    state = load(tmp_path / "checkpoints" / "last.pt")
    assert {"model", "optimizer", "optimizer_d", "discriminators", "generator_config"} <= set(state)
    assert set(state["discriminators"]) == {"mpd", "msd"}


def test_gan_resume_after_sigkill_is_bit_identical(tmp_path):
    common = GAN + ["trainer.max_steps=8", "checkpoint.every_steps=1"]
    ref, cut = tmp_path / "ref", tmp_path / "cut"
    run_train(ref, common)
    assert kill_at_step(cut, common, 4) < 8
    run_train(cut, common)
    a, b = load(ref / "checkpoints" / "last.pt"), load(cut / "checkpoints" / "last.pt")
    assert a["step"] == b["step"] == 8
    assert_same_tensors(a["model"], b["model"])
    for name in ("mpd", "msd"):
        assert_same_tensors(a["discriminators"][name], b["discriminators"][name])
    for key in ("optimizer", "optimizer_d"):  # both optimizers; lr follows the step (both schedules)
        for sa, sb in zip(a[key]["state"].values(), b[key]["state"].values()):
            assert_same_tensors(sa, sb)
        assert [g["lr"] for g in a[key]["param_groups"]] == [g["lr"] for g in b[key]["param_groups"]]


def test_trained_vocoder_serves_eval_and_finetuning_from_a_tokenizer(tmp_path):
    tok_dir, voc_dir = tmp_path / "tok", tmp_path / "voc"
    run_train(tok_dir, ["trainer.max_steps=2"])
    tok = tok_dir / "checkpoints" / "best.pt"
    run_train(voc_dir, GAN + ["trainer.max_steps=2", f"vocoder.finetune_from={tok}"])
    assert metrics(voc_dir)["finetuned_from"] == str(tok)
    voc = voc_dir / "checkpoints" / "best.pt"
    wav = ROOT / "tests" / "fixtures" / "synthetic_mini" / "dev-mini" / "108" / "1000" / "108-1000-0000.flac"
    out = tmp_path / "eval"
    r = subprocess.run(
        [sys.executable, "-m", "luna.eval", f"checkpoint={tok}", f"input={wav}", "vocoder=hifigan",
         f"vocoder.checkpoint={voc}", "vocoder.architecture=v3", "eval.rtf_repeats=1", f"hydra.run.dir={out}"],
        capture_output=True, text=True, timeout=300, cwd=ROOT,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    assert report["vocoder"] in ("hifigan", {"kind": "hifigan"}) or "hifigan" in json.dumps(report["vocoder"])
    assert report["num_files"] == 1 and report["rtf"]["vocoder"]["rtf"] > 0
    assert torch.isfinite(torch.tensor(report["mse"]))
