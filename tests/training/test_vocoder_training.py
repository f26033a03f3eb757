"""task=vocoder: HiFi-GAN training through the same trainer (steps, exact resume of both networks, use), and
experiment=vocoder_finetune: UNIVERSAL_V1 fine-tuned on a frozen tokenizer's decoded mels."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from luna import audio
from luna.config import ConfigError, MelConfig
from luna.validation import validate
from tests.paths import ROOT
from luna.features import MelSpectrogram
from luna.models.tokenizer import SpeechTokenizer
from luna.models.hifigan import HIFIGAN_PRESETS
from luna.models.hifigan_official import generator_for_training
from luna.training.tasks.vocoder import load_frozen_tokenizer
from tests.conftest import compose_train
from tests.training.helpers import assert_resumed_at, assert_same_tensors, kill_at_step, load, metrics, run_train

# vocoder=hifigan: the experiment's own choice, restated because TINY's vocoder=griffinlim would win over it
GAN = ["experiment=vocoder", "vocoder=hifigan", "vocoder.architecture=v3", "vocoder.discriminator_width=0.125", "data.batch_size=4",
       "data.segment_seconds=0.34", "optimizer.lr=2e-4", "logger.log_every_steps=1"]


def test_a_few_gan_steps_lower_the_mel_loss(tmp_path):
    run_train(tmp_path, GAN + ["trainer.max_steps=36", "trainer.val_every_steps=4"])
    m = metrics(tmp_path)
    assert m["task"] == "vocoder" and m["step"] == 36
    assert m["best_val_loss"] < 0.9 * m["first_val_loss"], m
    state = load(tmp_path / "checkpoints" / "last.pt")
    assert {"model", "optimizer", "optimizer_d", "discriminators", "generator_config"} <= set(state)
    assert set(state["discriminators"]) == {"mpd", "msd"}


def assert_same_gan(a: dict, b: dict) -> None:
    """Bit-identical generator, discriminators and both optimizers (states and learning rates)."""
    assert_same_tensors(a["model"], b["model"])
    for name in ("mpd", "msd"):
        assert_same_tensors(a["discriminators"][name], b["discriminators"][name])
    for key in ("optimizer", "optimizer_d"):  # both optimizers; lr follows the step (both schedules)
        for sa, sb in zip(a[key]["state"].values(), b[key]["state"].values()):
            assert_same_tensors(sa, sb)
        assert [g["lr"] for g in a[key]["param_groups"]] == [g["lr"] for g in b[key]["param_groups"]]


@pytest.mark.slow
@pytest.mark.parametrize("accumulate", [1, 2])
def test_gan_resume_after_sigkill_is_bit_identical(tmp_path, accumulate):
    common = GAN + ["trainer.max_steps=8", "checkpointing.every_steps=1", f"trainer.accumulate={accumulate}"]
    ref, cut = tmp_path / "ref", tmp_path / "cut"
    run_train(ref, common)
    reached = kill_at_step(cut, common, 4)
    assert reached < 8
    assert_resumed_at(run_train(cut, common), reached)
    a, b = load(ref / "checkpoints" / "last.pt"), load(cut / "checkpoints" / "last.pt")
    assert a["step"] == b["step"] == 8
    assert_same_gan(a, b)


def test_gan_accumulation_takes_the_step_of_the_larger_batch(tmp_path):
    """accumulate=2 over micro-batches of 2 = one batch of 4 (the same items and crops): both players' weights
    after two steps agree closely (float rounding, and the spectral-norm estimate of the first scale
    discriminator sees one power iteration per forward call), and differ clearly from another run."""
    common = GAN + ["trainer.max_steps=2", "trainer.val_every_steps=0"]
    run_train(tmp_path / "one", common)
    run_train(tmp_path / "acc", common + ["trainer.accumulate=2"])
    run_train(tmp_path / "other", common + ["seed=7"])
    a, b, c = (load(tmp_path / d / "checkpoints" / "last.pt") for d in ("one", "acc", "other"))

    def gap(x: dict, y: dict, skip: str = "-") -> float:
        return max(float((x[k] - y[k]).abs().max()) for k in x if x[k].is_floating_point() and not k.startswith(skip))

    for name, pick, skip in (("generator", lambda s: s["model"], "-"), ("mpd", lambda s: s["discriminators"]["mpd"], "-"),
                             # the spectral-normed first scale: its power iteration advances once per forward call
                             ("msd", lambda s: s["discriminators"]["msd"], "discriminators.0.")):
        assert gap(pick(a), pick(b), skip) < 1e-4, name
        assert gap(pick(a), pick(c), skip) > 1e-3, name


def test_trained_vocoder_serves_eval_and_finetuning_from_a_tokenizer(tmp_path):
    tok_dir, voc_dir = tmp_path / "tok", tmp_path / "voc"
    run_train(tok_dir, ["trainer.max_steps=2"])
    tok = tok_dir / "checkpoints" / "best.pt"
    run_train(voc_dir, GAN + ["trainer.max_steps=2", f"vocoder.tokenizer_checkpoint={tok}"])
    assert metrics(voc_dir)["tokenizer_checkpoint"] == str(tok) and metrics(voc_dir)["init"] is None
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


# ------------------------------------------------------------------------ experiment=vocoder_finetune

#: the preset on CPU: the real UNIVERSAL_V1 generator (14 M parameters), tiny fresh discriminators, 0.25 s × 2;
#: the preset's vocoder, lr and warmup restated because TINY's (helpers.py) would win over them
FINETUNE = ["model=rvq8", "experiment=vocoder_finetune", "vocoder=hifigan", "vocoder.discriminator_width=0.125",
            "optimizer.lr=2e-4", "optimizer.warmup_steps=0", "data.batch_size=2",
            "data.segment_seconds=0.25", "data.max_val_items=2", "logger.log_every_steps=1"]
TRAIN_FLAC = sorted((ROOT / "luna" / "data" / "librispeech_mini" / "train-clean-100").rglob("*.flac"))[0]


def tiny_tokenizer(path: Path, *overrides: str) -> Path:
    """A tiny tokenizer (rvq8's mel convention unless overridden, hidden 32, 2 × 16 codes), codebooks initialized
    on real speech by one training forward, saved with SpeechTokenizer.save_checkpoint."""
    cfg = compose_train(["model=rvq8", "model.hidden=32", "model.codebook_dim=0", "model.res_blocks=1",
                         "model.codebook_size=16", "model.num_quantizers=2", *overrides])
    torch.manual_seed(0)
    tok = SpeechTokenizer.from_config(cfg)
    speech, _ = audio.load(TRAIN_FLAC, tok.sample_rate)
    tok.train()
    tok(speech[None, : 2 * tok.sample_rate])
    tok.save_checkpoint(path)
    return path


@pytest.fixture(scope="module")
def universal_tokenizer(tmp_path_factory) -> Path:
    return tiny_tokenizer(tmp_path_factory.mktemp("tok") / "tok.pt")


def test_frozen_tokenizer_gives_its_decoded_mels(universal_tokenizer, tmp_path):
    """The trainer's input: forward_mel on the crop's mel = decode_mel(tokenize(crop)); eval mode, no gradients."""
    tok = load_frozen_tokenizer(str(universal_tokenizer), MelConfig())
    assert not tok.training and not any(p.requires_grad for p in tok.parameters())
    speech, _ = audio.load(TRAIN_FLAC, 22050, start=16000, frames=8192)  # ~0.5 s at 16 kHz
    speech = speech[None, : (speech.numel() // tok.samples_per_token) * tok.samples_per_token]
    with torch.no_grad():
        mel_in = tok.forward_mel(MelSpectrogram(MelConfig())(speech)).mel_hat
    torch.testing.assert_close(mel_in, tok.decode_mel(tok.tokenize(speech, 22050)), atol=1e-5, rtol=0)
    with pytest.raises(ConfigError, match=r"^vocoder.tokenizer_checkpoint: .*sample_rate: tokenizer 22050 vs vocoder.mel 24000"):
        load_frozen_tokenizer(str(universal_tokenizer), MelConfig(sample_rate=24000, hop_length=240, f_max=12000.0))
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ConfigError, match=r"^vocoder.tokenizer_checkpoint: "):
        load_frozen_tokenizer(str(tmp_path / "junk.pt"), MelConfig())


@pytest.mark.slow  # the real 14 M-parameter generator: 181 MB per checkpoint, 4 of them
def test_finetune_from_universal_resumes_exactly_and_serves_eval(tmp_path, universal_tokenizer):
    common = FINETUNE + [f"vocoder.tokenizer_checkpoint={universal_tokenizer}", "trainer.max_steps=3"]
    ref, cut = tmp_path / "ref", tmp_path / "cut"
    run_train(ref, common)  # saves only at the end: 181 MB per checkpoint (generator, discriminators, optimizers)
    reached = kill_at_step(cut, common + ["checkpointing.every_steps=1"], 1)
    assert reached < 3
    assert_resumed_at(run_train(cut, common), reached)
    a, b = load(ref / "checkpoints" / "last.pt"), load(cut / "checkpoints" / "last.pt")
    assert a["step"] == b["step"] == 3
    assert_same_gan(a, b)
    m = metrics(ref)
    assert m["init"] == "universal" and m["tokenizer_checkpoint"] == str(universal_tokenizer)
    assert m["upsample_rates"] == [8, 8, 2, 2] and m["hop_length"] == 256 and m["sample_rate"] == 22050

    # it started from UNIVERSAL_V1 (weight norm on) and moved only a few Adam steps of lr 2e-4 away from it
    start = generator_for_training("universal", HIFIGAN_PRESETS["v1"], 80).state_dict()
    assert a["model"].keys() == start.keys()
    moved = max(float((a["model"][k] - start[k]).abs().max()) for k in start)
    assert 0 < moved < 3 * 2e-4 * 2, moved  # measured 6.2e-4
    assert a["generator_config"] == HIFIGAN_PRESETS["v1"]

    # the result is a vocoder=hifigan for eval and detokenize: V1 at hop 256 on the tokenizer's convention
    cfg = compose_train(["vocoder=hifigan", f"vocoder.checkpoint={ref / 'checkpoints' / 'best.pt'}"])
    validate(cfg)
    tok = SpeechTokenizer.from_checkpoint(universal_tokenizer, vocoder=cfg.vocoder)
    assert tok.vocoder.kind == "hifigan" and tok.vocoder.generator.h == HIFIGAN_PRESETS["v1"]
    speech, _ = audio.load(TRAIN_FLAC, 22050, frames=8000)
    codes = tok.tokenize(speech, 22050)
    out = tok.detokenize(codes)
    assert out.shape == (1, codes.shape[-1] * 512) and torch.isfinite(out).all() and out.abs().max() > 1e-3
    for run in (ref, cut):  # ~0.7 GB of checkpoints
        shutil.rmtree(run)


@pytest.mark.parametrize("override,key", [
    ([], "vocoder.tokenizer_checkpoint"),  # the preset needs a tokenizer
    (["vocoder.tokenizer_checkpoint=/does/not/exist.pt"], "vocoder.tokenizer_checkpoint"),
    (["vocoder.init=/does/not/exist.pt"], "vocoder.init"),
    (["model=rvq8_24k"], "vocoder.mel"),  # universal weights, another mel convention
    (["vocoder.architecture=v3"], "vocoder.architecture"),
    (["+vocoder.generator.upsample_initial_channel=256"], "vocoder.generator"),
    (["vocoder.checkpoint=README.md"], "vocoder.checkpoint"),  # eval's key, not where training starts
    (["vocoder.finetune_from=README.md"], "vocoder.finetune_from"),  # renamed
    (["task=tokenizer"], "vocoder.init"),  # training-only keys outside task=vocoder
])
def test_finetune_bad_combinations_name_the_key(override, key):
    tok = [] if override == [] or "tokenizer_checkpoint" in override[0] else ["vocoder.tokenizer_checkpoint=README.md"]
    cfg = compose_train(["experiment=vocoder_finetune", *tok, *override])
    with pytest.raises(ConfigError) as e:
        validate(cfg)
    assert str(e.value).startswith(key + ":"), str(e.value)


def test_finetune_checks_the_tokenizer_before_the_data(tmp_path):
    """A tokenizer on another mel convention than vocoder.mel: exit 2 naming the key, before any data or step."""
    tok = tiny_tokenizer(tmp_path / "tok24k.pt", "model=rvq8_24k", "vocoder=griffinlim")
    r = run_train(tmp_path / "run", FINETUNE + [f"vocoder.tokenizer_checkpoint={tok}"], check=False)
    assert r.returncode == 2, r.stderr[-3000:]
    assert "error: vocoder.tokenizer_checkpoint: " in r.stderr and "sample_rate: tokenizer 24000 vs vocoder.mel 22050" in r.stderr
    assert "luna.data" not in r.stderr + r.stdout and not (tmp_path / "run" / "checkpoints").exists()
