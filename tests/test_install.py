"""luna as a user gets it from ``pip install .``: a wheel, not this checkout, run from another directory.

The wheel is built from this tree (``uv build``), installed without dependencies into a fresh venv that sees
the project's locked dependencies (a ``.pth`` line naming their site-packages, so the editable hook there is
not processed), and every entry point runs from a temp dir: train, eval, tokenize, and the README's Python
example. ``luna`` must import from the venv, never from this repository.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from tests.paths import ROOT

pytestmark = pytest.mark.slow

UV = ROOT / ".uv" / "bin" / "uv"


def _run(cmd, cwd, timeout=600, env=None):
    r = subprocess.run([str(c) for c in cmd], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)
    assert r.returncode == 0, f"{' '.join(map(str, cmd))}\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}"
    return r


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    if not UV.exists():
        pytest.skip("needs the pinned uv in .uv/ (make install)")
    tmp = tmp_path_factory.mktemp("install")
    src = tmp / "src"  # a clean copy: what `git clone` + `pip install .` would see (no build dirs, no outputs)
    shutil.copytree(ROOT, src, symlinks=True, ignore=shutil.ignore_patterns(
        ".venv", ".uv", ".git", "outputs", "build", "*.egg-info", "__pycache__", ".pytest_cache", ".gpu-wheels", "tests"))
    _run([UV, "build", "--wheel", "--out-dir", tmp / "dist", src], cwd=tmp)
    wheel = next((tmp / "dist").glob("luna-*.whl"))
    venv = tmp / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", venv], cwd=tmp)
    py = venv / "bin" / "python"
    site = Path(_run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], cwd=tmp).stdout.strip())
    (site / "luna_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")  # the locked dependencies
    _run([UV, "pip", "install", "--python", py, "--no-deps", wheel], cwd=tmp)
    work = tmp / "elsewhere"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH",)}
    env.update(WANDB_MODE="offline", OMP_NUM_THREADS="1")
    where = _run([py, "-c", "import luna, luna.config as c; print(luna.__file__); print(c.CONF_DIR)"], cwd=work, env=env)
    return py, work, env, where.stdout.split()


def test_luna_imports_from_the_install_not_the_checkout(installed):
    py, work, env, (module, conf) = installed
    assert str(ROOT) not in module and "site-packages" in module
    assert (Path(conf) / "train.yaml").is_file() and (Path(conf) / "experiment" / "quickstart.yaml").is_file()


def test_train_eval_tokenize_from_another_directory(installed):
    py, work, env, _ = installed
    run = work / "run"
    _run([py, "-m", "luna.train", "model=tiny", "vocoder=griffinlim", "trainer.max_steps=2", "data.batch_size=4",
          "hardware=cpu", "hardware.threads=1", "data.num_workers=0", "logger=none", "trainer.progress=false",
          f"output_dir={run}", f"hydra.run.dir={run}"], cwd=work, env=env)
    ckpt = run / "checkpoints" / "last.pt"
    assert ckpt.is_file()
    files = _run([py, "-c", "from luna.data import BUNDLED; print(BUNDLED)"], cwd=work, env=env).stdout.strip()
    dev = Path(files) / "dev-clean"
    assert str(ROOT) not in files and dev.is_dir()  # the bundled corpus came with the wheel
    _run([py, "-m", "luna.eval", f"checkpoint={ckpt}", f"test_dir={dev}", "eval.max_files=1", "vocoder=griffinlim",
          "eval.rtf_repeats=1", f"hydra.run.dir={work / 'eval'}"], cwd=work, env=env)
    assert (work / "eval" / "report.json").is_file()
    _run([py, "-m", "luna.tokenize", f"checkpoint={ckpt}", "data=folder", f"data.root={dev / '84'}",
          f"output_dir={work / 'tokens'}"], cwd=work, env=env)
    assert (work / "tokens" / "codec.json").is_file()


def test_the_readme_example_from_another_directory(installed):
    py, work, env, _ = installed
    block = re.search(r"## Python API\s+```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S).group(1)
    from luna import SpeechTokenizer
    from tests.conftest import compose_train

    ckpt = work / "outputs" / "runs" / "quickstart" / "checkpoints" / "best.pt"
    SpeechTokenizer.from_config(compose_train(["model=tiny", "vocoder=griffinlim"])).save_checkpoint(ckpt)
    bundled = _run([py, "-c", "from luna.data import BUNDLED; print(BUNDLED)"], cwd=work, env=env).stdout.strip()
    block = block.replace('"luna/data/librispeech_mini/', f'"{bundled}/')  # the corpus as installed
    _run([py, "-c", block], cwd=work, env=env)
    assert (work / "reconstruction.wav").stat().st_size > 1000


def test_the_serve_page_comes_with_the_wheel(installed):
    """luna.serve answers ``/`` from luna/serving/static: package data, so it must be in the wheel."""
    py, work, env, _ = installed
    code = ("from luna.serving.page import FILES, STATIC; print(STATIC); "
            "print(all((STATIC / name).stat().st_size > 500 for name, _ in FILES.values()))")
    static, ok = _run([py, "-c", code], cwd=work, env=env).stdout.split()
    assert str(ROOT) not in static and "site-packages" in static and ok == "True"
