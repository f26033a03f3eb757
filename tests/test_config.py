"""Every option of every config group composes and validates; invalid values are rejected naming the key."""
from __future__ import annotations

import pytest
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf
from omegaconf.errors import ConfigKeyError, ValidationError

from luna.config import CONF_DIR, ConfigError
from luna.validation import validate
from tests.conftest import compose_train

GROUPS = ["model", "data", "optimizer", "logger", "hardware", "vocoder", "experiment"]


def options(group):
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


@pytest.mark.parametrize("group,option", [(g, o) for g in GROUPS for o in options(g)])
def test_every_option_composes_and_validates(group, option):
    overrides = [f"{group}={option}"]
    if group == "data" and option == "folder":
        overrides.append("data.root=/tmp")
    if group == "model" and option in ("rvq8_24k", "tiny"):
        overrides.append("vocoder=griffinlim")  # off the default (universal) vocoder's mel convention
    if group == "experiment" and option == "vocoder_finetune":
        overrides.append(f"vocoder.tokenizer_checkpoint={__file__}")  # required; validate only checks it exists
    cfg = compose_train(overrides)
    validate(cfg)
    # the option is applied: every value its YAML sets is the composed value (an experiment is _global_ and also
    # picks other groups' options in its defaults list); keys the test itself overrides are skipped
    yaml = OmegaConf.to_container(OmegaConf.load(CONF_DIR / group / f"{option}.yaml"), resolve=False)
    root = () if group == "experiment" else (group,)
    mine = {o.split("=")[0] for o in overrides[1:]}  # what the test overrides itself is not judged
    checked = 0
    for path, value in _leaves(yaml, root):
        dotted = ".".join(path)
        if any(dotted == m or dotted.startswith(m + ".") for m in mine) or path[0] == "hydra" or "${" in str(value):
            continue
        got = cfg
        for part in path:
            got = got[part]
        assert (OmegaConf.to_container(got) if OmegaConf.is_config(got) else got) == value, path
        checked += 1
    for entry in yaml.get("defaults", []):  # an experiment's "override /model: rvq8_256" picks that option
        for k, v in (entry.items() if isinstance(entry, dict) else ()):
            sub = k.removeprefix("override /")
            if sub in GROUPS and sub not in mine and "name" not in yaml.get(sub, {}):
                assert cfg[sub].name == v, (k, v)
                checked += 1
    assert checked >= 2, f"conf/{group}/{option}.yaml: nothing of it checked"


def _leaves(node, prefix):
    """(key path, value) of every leaf of a plain YAML tree; lists are leaves; ``defaults`` is not config."""
    for k, v in node.items():
        if k == "defaults":
            continue
        if isinstance(v, dict):
            yield from _leaves(v, (*prefix, k))
        else:
            yield (*prefix, k), v


def test_groups_have_options():
    for g in GROUPS:
        assert options(g), f"conf/{g} has no options"
    assert {"rvq8", "rvq4", "rvq8_24k", "rvq8_256", "rvq8_12hz", "tiny"} <= set(options("model"))
    assert {"cpu", "auto", "a100_80g", "a40_48g", "rtx4090", "h100_80g", "h200"} <= set(options("hardware"))


def test_default_is_rvq8_on_real_speech():
    cfg = compose_train()
    assert cfg.model.name == "rvq8" and cfg.data.name == "librispeech_mini"
    assert cfg.model.codebook_size == 1024 and cfg.model.num_quantizers == 8 and cfg.hardware.gpus == 1
    assert isinstance(cfg.seed, int)


@pytest.mark.parametrize(
    "override,key",
    [
        ("model.codebook_size=1", "model.codebook_size"),
        ("model.num_quantizers=0", "model.num_quantizers"),
        ("model.mel.hop_length=2000", "model.mel.hop_length"),
        ("model.mel.win_length=4096", "model.mel.hop_length"),
        ("model.mel.f_max=20000", "model.mel.f_max"),
        ("model.ema_decay=1.5", "model.ema_decay"),
        ("model.quantizer_dropout=2", "model.quantizer_dropout"),
        ("model.gradient=straight", "model.gradient"),
        ("model.hidden=30", "model.hidden"),
        ("data.segment_seconds=0.01", "data.segment_seconds"),
        ("data.val_fraction=1.5", "data.val_fraction"),
        ("optimizer.lr=0", "optimizer.lr"),
        ("optimizer.lr=-1e-3", "optimizer.lr"),
        ("optimizer.betas=[0.9]", "optimizer.betas"),
        ("hardware.precision=fp8", "hardware.precision"),
        ("hardware.gpus=0", "hardware.gpus"),
        ("trainer.accumulate=0", "trainer.accumulate"),
        ("trainer.max_steps=0", "trainer.max_steps"),
        ("checkpointing.keep_last=0", "checkpointing.keep_last"),
        ("resume=/does/not/exist.pt", "resume"),
        ("task=dance", "task"),
        ("logger.wandb.mode=sometimes", "logger.wandb.mode"),
    ],
)
def test_invalid_values_are_rejected_naming_the_key(override, key):
    cfg = compose_train([override])
    with pytest.raises(ConfigError) as e:
        validate(cfg)
    assert str(e.value).startswith(key + ":"), str(e.value)


@pytest.mark.parametrize(
    "override,key",
    [
        ("model.codebook_size=many", "codebook_size"),
        ("model.codebook_sise=512", "codebook_sise"),
        ("model.num_quantizers=2.5", "num_quantizers"),
        ("trainer.max_epochs=abc", "max_epochs"),
        ("hardware.gpu=2", "hardware.gpu"),
        ("seed=x", "seed"),
        ("data.cache=maybe", "data.cache"),
    ],
)
def test_wrong_types_and_unknown_keys_fail_at_compose_time(override, key):
    with pytest.raises((ConfigCompositionException, ValidationError, ConfigKeyError)) as e:
        compose_train([override])
    assert key in str(e.value) or key in str(e.value.__cause__)


def test_cli_rejects_invalid_config_before_compute(tmp_path):
    import subprocess
    import sys

    r = subprocess.run(
        [sys.executable, "-m", "luna.train", "model.codebook_size=1", f"hydra.run.dir={tmp_path}"],
        capture_output=True, text=True, timeout=120,
    )
    assert r.returncode == 2
    assert "model.codebook_size" in r.stderr
    assert not (tmp_path / "checkpoints").exists()


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="checks the machine without CUDA")
@pytest.mark.parametrize("entry,args", [
    ("luna.train", ["hardware.device=cuda", "model=tiny", "vocoder=griffinlim"]),
    ("luna.eval", ["device=cuda", "input=x.wav"]),
])
def test_cuda_without_cuda_is_a_user_error_not_a_traceback(tmp_path, entry, args):
    """One error policy: every entry point turns a LunaError into one line on stderr and exit code 2."""
    import subprocess
    import sys

    from luna.models.tokenizer import SpeechTokenizer

    ckpt = tmp_path / "tok.pt"
    SpeechTokenizer.from_config(compose_train(["model=tiny", "vocoder=griffinlim"])).save_checkpoint(ckpt)
    extra = [f"checkpoint={ckpt}"] if entry == "luna.eval" else []
    r = subprocess.run([sys.executable, "-m", entry, *args, *extra, f"hydra.run.dir={tmp_path / 'run'}"],
                       capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert r.returncode == 2, r.stderr[-2000:]
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "device=cuda" in lines[0], r.stderr
    assert "Traceback" not in r.stderr and not (tmp_path / "run" / "checkpoints").exists()


#: exceptions luna defines that are not user errors of an entry point, each with its reason
NOT_USER_ERRORS = {"luna.serving.protocol.ProtocolError": "a client's protocol violation, answered on the socket"}


def _luna_exception_classes():
    import importlib
    import inspect
    import pkgutil

    import luna

    found = {}
    for info in pkgutil.walk_packages(luna.__path__, "luna."):
        if info.name.rsplit(".", 1)[-1] == "__main__":
            continue
        module = importlib.import_module(info.name)
        for _, cls in inspect.getmembers(module, inspect.isclass):
            if issubclass(cls, BaseException) and cls.__module__ == info.name:
                found[f"{cls.__module__}.{cls.__qualname__}"] = cls
    return found


def test_the_error_policy_is_one_base_class(capsys):
    """Every exception class defined anywhere in luna is a LunaError (or listed above with its reason), and
    @entry_point turns each LunaError into one line ``error: ...`` on stderr and exit code 2."""
    from luna.cli import USER_ERROR, entry_point
    from luna.errors import LunaError, ServerError

    classes = _luna_exception_classes()
    assert len(classes) >= 10 and set(NOT_USER_ERRORS) <= set(classes)  # the walk found them
    strays = sorted(name for name, cls in classes.items() if not issubclass(cls, LunaError) and name not in NOT_USER_ERRORS)
    assert not strays, f"exceptions outside the error policy: {strays}"
    for name, cls in classes.items():
        if not issubclass(cls, LunaError):
            continue

        @entry_point
        def main():
            raise (cls("E1", "two\nlines") if cls is ServerError else cls("bad value:\n  two lines"))

        with pytest.raises(SystemExit) as e:
            main()
        assert e.value.code == USER_ERROR == 2, name
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("error: ") and "two lines" in err, (name, err)

    @entry_point
    def bug():
        raise KeyError("a bug keeps its traceback")

    with pytest.raises(KeyError):
        bug()
