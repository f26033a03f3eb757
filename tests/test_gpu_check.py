"""benchmarks/gpu_check.py, the script a lent GPU runs (issue 16), cannot rot between loans.

The CPU dry run (``--device cpu --tiny``) goes through every section exactly as the GPU run does (one process
per section under its cap, luna's own trainer, eval and tokenizer), with a tiny model; its figures mean
nothing, its verdicts do: losses finite and falling, the quantizer in fp32, resume bit-exact in fp32.
"""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from benchmarks import gpu_check
from luna.config import CONF_DIR
from tests.paths import ROOT


def _run(tmp_path: Path, device: str, timeout: int) -> dict:
    out, work = tmp_path / "out", tmp_path / "work"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    env.pop("OUT", None)
    r = subprocess.run([sys.executable, "-m", "benchmarks.gpu_check", "--device", device, "--tiny", "--out", str(out),
                        "--work", str(work)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    assert (out / "gpu_check.json").is_file(), r.stderr[-4000:]
    report = json.loads((out / "gpu_check.json").read_text())
    failed = {k: (s["status"], s.get("error"), s.get("log_tail", "")[-1500:]) for k, s in report["sections"].items()
              if s["status"] != "pass"}
    assert r.returncode == 0 and not failed, failed or r.stderr[-4000:]
    report["_md"] = (out / "gpu_check.md").read_text()
    report["_out"] = sorted(p.name for p in out.iterdir())
    return report


def _readings(report: dict, section: str) -> dict:
    return {r["name"]: r for r in report["sections"][section]["readings"]}


def _number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


@pytest.mark.slow
def test_cpu_dry_run_measures_every_section(tmp_path):
    report = _run(tmp_path, "cpu", timeout=600)
    assert list(report["sections"]) == list(gpu_check.SECTIONS)
    assert report["_out"] == ["gpu_check.json", "gpu_check.log", "gpu_check.md", "quality_eval_report.md"]
    md = report["_md"]
    for name, s in report["sections"].items():
        assert f"## {name}: pass" in md
        assert s["readings"], name
        for r in s["readings"]:
            assert f"| {r['name']} |" in md

    c = _readings(report, "correctness")
    for precision in ("fp32", "bf16"):
        assert c[f"{precision}: losses finite"]["ok"] is True
        assert c[f"{precision}: loss going down"]["ok"] is True and c[f"{precision}: loss going down"]["value"] < 1
        assert c[f"{precision}: quantizer in fp32"]["value"] == "float32"
    assert c["fp32: checkpoint -> resume bit-exact"]["value"] is True and c["fp32: checkpoint -> resume bit-exact"]["ok"]
    assert c["fp16: losses finite"]["value"] == "n/a"  # fp16 needs CUDA
    losses = report["sections"]["correctness"]["results"]["losses"]
    assert len(losses["fp32"]) == gpu_check.PLANS["tiny"]["correctness"]["steps"]

    t = _readings(report, "throughput")
    for batch in gpu_check.PLANS["tiny"]["throughput"]["batches"]:
        r = t[f"bf16 batch {batch}"]
        assert _number(r["value"]) and r["value"] > 0 and 0 <= r["data_wait_fraction"] <= 1, r
        assert r["gpu_busy_fraction"] is None  # no CUDA events on the CPU
    assert t["best num_workers"]["value"] in gpu_check.PLANS["tiny"]["throughput"]["workers"]

    q = _readings(report, "quality")
    assert q["val loss fell"]["ok"] is True and q["training"]["value"] > 0
    for key in ("mel_l1", "stoi", "pesq_wb"):  # PESQ and STOI are installed here
        assert _number(q[key]["value"]), q[key]

    v = _readings(report, "vocoder")
    assert _number(v["experiment=vocoder"]["value"]) and v["experiment=vocoder"]["value"] > 0
    finetune = v["experiment=vocoder_finetune"]
    if (CONF_DIR / "experiment" / "vocoder_finetune.yaml").is_file():
        assert _number(finetune["value"]) and finetune["ok"] is True
    else:
        assert finetune["value"] == "not available" and finetune["ok"] is None

    r = _readings(report, "rtf")
    for batch in gpu_check.PLANS["tiny"]["rtf"]["batches"]:
        for what in ("tokenize", "detokenize"):
            assert _number(r[f"{what}, batch {batch}"]["value"]) and r[f"{what}, batch {batch}"]["value"] > 0

    s = _readings(report, "streams")
    for b in gpu_check.PLANS["tiny"]["streams"]["sizes"]:
        assert _number(s[f"{b} streams, one batched push"]["value"]) and s[f"{b} streams, one batched push"]["value"] > 0


def test_a_hung_or_crashed_section_is_recorded_and_the_report_still_written(tmp_path):
    py = sys.executable
    hung = gpu_check.run_section("throughput", [py, "-c", "import time; time.sleep(60)"], cap=1, work=tmp_path)
    crashed = gpu_check.run_section("rtf", [py, "-c", "print('boom'); raise SystemExit(3)"], cap=30, work=tmp_path)
    assert hung["status"] == "timed out" and "cap of 1 s" in hung["error"] and hung["seconds"] < 30
    assert crashed["status"] == "error" and "code 3" in crashed["error"] and "boom" in crashed["log_tail"]
    # a section that finished with a failing reading reads "fail"
    writer = ("import json, sys; json.dump({'section': 'vocoder', 'done': True, 'error': None, 'results': {}, "
              "'readings': [{'name': 'x', 'value': 1, 'unit': '', 'ok': False, 'note': ''}]}, "
              f"open({str(tmp_path / 'vocoder.json')!r}, 'w'))")
    failing = gpu_check.run_section("vocoder", [py, "-c", writer], cap=30, work=tmp_path)
    assert failing["status"] == "fail"
    md = gpu_check.markdown({"mode": "cpu tiny", "wall_seconds": 1.0, "sections": {
        "throughput": hung, "rtf": crashed, "vocoder": failing},
        "machine": {"date": "today", "cpu_count": 2, "torch": torch.__version__, "python": "3"}})
    assert "| throughput | **timed out** |" in md and "| rtf | **error** |" in md and "| x | 1 | - | **FAIL** |" in md


def test_the_carried_wheels_are_pinned_by_the_lock():
    if not (ROOT / ".uv" / "bin" / "uv").exists():
        pytest.skip("no .uv/bin/uv (make install creates it)")
    versions = gpu_check._locked_versions()
    missing = [name for name in gpu_check.GPU_WHEELS if name not in versions]
    assert not missing, f"not in uv.lock: {missing}"


@pytest.mark.gpu
def test_gpu_dry_run_passes_every_section_fp16_included(tmp_path):
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    report = _run(tmp_path, "cuda", timeout=900)
    c = _readings(report, "correctness")
    assert c["fp16: losses finite"]["ok"] is True and "fp16: GradScaler overflow steps" in c
    assert all(r["gpu_busy_fraction"] is not None for r in report["sections"]["throughput"]["readings"]
               if r["name"].startswith("bf16 batch"))
