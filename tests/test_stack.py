"""The installed stack really loads (the first tests to run: see conftest.py), and the lock guards it."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from luna import doctor
from tests.paths import ROOT


def test_every_compiled_component_works():
    bad = doctor.problems()
    assert not bad, "the installed stack is broken:\n" + "\n".join(bad)


def test_doctor_prints_the_stack_and_exits_0():
    r = subprocess.run([sys.executable, "-m", "luna.doctor"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    for name in ("python", "torch", "torchaudio", "soundfile", "pesq", "pystoi", "vocoder", "devices"):
        assert any(line.split()[1:2] == [name] for line in r.stdout.splitlines()), (name, r.stdout)
    assert "CUDA" in r.stdout and "threads" in r.stdout


def test_doctor_names_both_versions_when_torchaudio_does_not_load(tmp_path):
    """A torchaudio whose library fails to load (what a range pin once installed) is one clear line, exit 1."""
    fake = tmp_path / "torchaudio"
    fake.mkdir()
    (fake / "__init__.py").write_text(
        "raise OSError('libtorchaudio.so: undefined symbol: torch_exception_get_what_without_backtrace')\n"
    )
    env = dict(os.environ, PYTHONPATH=f"{tmp_path}{os.pathsep}{ROOT}")
    r = subprocess.run([sys.executable, "-m", "luna.doctor"], capture_output=True, text=True, timeout=120, env=env)
    assert r.returncode == 1, r.stdout + r.stderr
    bad = [line for line in r.stdout.splitlines() if line.startswith("BAD")]
    assert len(bad) == 1 and "torchaudio" in bad[0], r.stdout
    assert f"torchaudio {doctor._version('torchaudio')}" in bad[0] and f"torch {doctor._version('torch')}" in bad[0]
    assert "undefined symbol" in bad[0] and "Traceback" not in r.stdout + r.stderr


def test_binary_pair_is_pinned_exactly():
    text = (ROOT / "pyproject.toml").read_text()
    assert '"torch==2.11.0"' in text and '"torchaudio==2.11.0"' in text
    lock = (ROOT / "uv.lock").read_text()
    for name in ("torch", "torchaudio"):
        assert f'name = "{name}"\nversion = "2.11.0"' in lock, name


def _uv() -> str:
    uv = ROOT / ".uv" / "bin" / "uv"
    if uv.is_file():
        return str(uv)
    found = shutil.which("uv")
    if not found:
        pytest.skip("uv is not installed (make install puts it in .uv/)")
    return found


def _project_copy(tmp_path: Path) -> Path:
    work = tmp_path / "project"
    work.mkdir()
    for name in ("pyproject.toml", "uv.lock", "README.md"):
        shutil.copy(ROOT / name, work / name)
    return work


def test_lock_matches_pyproject(tmp_path):
    r = subprocess.run([_uv(), "lock", "--check"], cwd=_project_copy(tmp_path), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr


def test_lock_check_fails_when_a_pin_is_deleted(tmp_path):
    work = _project_copy(tmp_path)
    lock = (work / "uv.lock").read_text()
    blocks = lock.split("\n[[package]]\n")
    kept = [b for b in blocks if not b.startswith('name = "torchaudio"\n')]
    assert len(kept) == len(blocks) - 1
    (work / "uv.lock").write_text("\n[[package]]\n".join(kept))
    r = subprocess.run([_uv(), "lock", "--check"], cwd=work, capture_output=True, text=True, timeout=300)
    assert r.returncode != 0 and "torchaudio" in r.stderr, r.stderr
