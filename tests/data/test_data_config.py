"""Every conf/data option composes into the typed schema, validates, and says what it should."""
from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from omegaconf.errors import MissingMandatoryValue

from luna.config import CONF_DIR, DataConfig
from luna.validation import validate

OFFICIAL_MD5 = {
    "train-clean-100.tar.gz": "2a93770f6d5c6c964bc36631d331a522",
    "train-clean-360.tar.gz": "c0e676e450a7ff2f54aeade5171606fa",
    "train-other-500.tar.gz": "d1a0fd59409feb2c614ce4d30c387708",
    "dev-clean.tar.gz": "42e2234ba48799c1f50f24a7926300a1",
    "dev-other.tar.gz": "c8d0bcc9cca99d4f8b62fcc847357931",
    "test-clean.tar.gz": "32fa31d27d2e1cad72775fee3f4849a9",
    "test-other.tar.gz": "fb5a50374b501bb3bac4815ee91d3135",
}
LIBRISPEECH = {
    "clean100": ["train-clean-100"],
    "clean360": ["train-clean-360"],
    "other500": ["train-other-500"],
    "all960": ["train-clean-100", "train-clean-360", "train-other-500"],
}


def _data(name: str, *overrides: str):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(overrides=[f"+data={name}", *overrides])
    assert OmegaConf.get_type(cfg.data) is DataConfig  # typed by the registered data/base schema
    return cfg


def test_every_data_option_is_listed():
    assert sorted(p.stem for p in (CONF_DIR / "data").glob("*.yaml")) == sorted(
        ["librispeech_mini", "folder", *LIBRISPEECH]
    )


def test_librispeech_mini_is_the_offline_bundled_corpus():
    cfg = _data("librispeech_mini")
    validate(cfg)
    d = cfg.data
    root = Path(d.root)
    assert d.kind == "librispeech" and not d.download
    assert list(d.subsets) == ["train-clean-100"] and list(d.val_subsets) == []
    assert (root / "train-clean-100").is_dir() and (root / "dev-clean").is_dir()
    assert root.parent.parent.name == "luna"  # ${luna_pkg:}/data/librispeech_mini
    # real speech with its attribution: the README and SOURCES.tsv list every bundled file
    assert "CC BY 4.0" in (root / "README.md").read_text()
    listed = {line.split("\t")[0] for line in (root / "SOURCES.tsv").read_text().splitlines()[1:]}
    bundled = {str(p.relative_to(root)) for p in root.rglob("*.flac")}
    assert bundled == listed and len(bundled) >= 100
    assert sum(p.stat().st_size for p in root.rglob("*.flac")) < 21e6  # the GPU machine's tree limit
    assert d.val_fraction == pytest.approx(0.05)


@pytest.mark.parametrize("name", sorted(LIBRISPEECH))
def test_librispeech_options(name, monkeypatch):
    monkeypatch.delenv("LUNA_DATA_DIR", raising=False)
    cfg = _data(name)
    validate(cfg)
    d = cfg.data
    assert d.name == name and d.kind == "librispeech" and d.download
    assert list(d.subsets) == LIBRISPEECH[name]
    assert d.base_url == "https://www.openslr.org/resources/12"
    assert dict(d.md5) == OFFICIAL_MD5
    assert d.root == "data/LibriSpeech"
    monkeypatch.setenv("LUNA_DATA_DIR", "/datasets")
    assert _data(name).data.root == "/datasets/LibriSpeech"


def test_folder_requires_a_root(tmp_path):
    cfg = _data("folder")
    assert cfg.data.kind == "folder" and not cfg.data.download and list(cfg.data.subsets) == []
    with pytest.raises(MissingMandatoryValue):
        _ = cfg.data.root
    cfg = _data("folder", f"data.root={tmp_path}")
    validate(cfg)
    assert cfg.data.root == str(tmp_path)
