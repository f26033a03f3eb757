"""The quality yardstick (benchmarks/quality.py) trains, evaluates on the held-out readers (dev-clean and 40 unseen
train-clean-100 readers) and records one row."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from benchmarks import rate_distortion
from benchmarks.quality import SHARED_MINI, UNSEEN_LIST, eval_command, link_files, unseen_readers
from luna.data import BUNDLED
from tests.paths import ROOT

needs_shared = pytest.mark.skipif(not SHARED_MINI.is_dir(), reason=f"{SHARED_MINI} absent (the shared corpus)")


@pytest.mark.slow  # trains, then two evaluations with the universal HiFi-GAN
def test_quality_arm_trains_evaluates_and_records(tmp_path):
    small = ["model.hidden=32", "model.codebook_dim=16", "model.codebook_size=16", "model.num_quantizers=2",
             "data.crops_per_file=1", "data.max_val_items=4", "trainer.val_every_steps=1000"]
    r = subprocess.run([sys.executable, "-m", "benchmarks.quality", "--name", "smoke", "--steps", "3", "--threads", "1",
                        "--eval-files", "2", "--out", str(tmp_path), *small],
                       cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    rows = [json.loads(line) for line in (tmp_path / "results.jsonl").read_text().splitlines()]
    assert len(rows) == 1 and rows[0]["name"] == "smoke" and rows[0]["steps"] == 3 and rows[0]["files"] == 2
    row = rows[0]
    assert 0 < row["mel_l1"] < 20 and 0 <= row["stoi"] <= 1 and 1 <= row["pesq_wb"] <= 4.7
    # the ceiling (ground-truth mel -> the same universal HiFi-GAN) is far better than 3 steps of tokens
    assert row["ceiling"]["stoi"] > 0.9 and row["ceiling"]["stoi"] > row["stoi"]
    assert len(row["usage"]) == 2 and all(0 < u <= 1 for u in row["usage"]) and row["train_seconds"] > 0
    assert (tmp_path / "smoke" / "eval" / "report.md").is_file()
    assert "| smoke | 3 |" in r.stdout
    assert row["model"] == "rvq8_256" and row["bitrate_bps"] == pytest.approx(22050 / 512 * 2 * 4)  # 2 x 16 codes
    rate_distortion.main(["--results", str(tmp_path / "results.jsonl"), "--out", str(tmp_path / "rd")])
    points = json.loads((tmp_path / "rd" / "rate_distortion.json").read_text())["points"]
    assert [(p["group"], p["stoi"]) for p in points if p["label"] == "smoke"][0] == ("luna, dev-clean", row["stoi"])
    if unseen_readers():  # the 40 unseen readers, scored apart from dev-clean (the first 2 of them here)
        u = row["unseen"]
        assert u["files"] == 2 and 0 <= u["stoi"] <= 1 and 1 <= u["pesq_wb"] <= 4.7 and u["ceiling"]["stoi"] > u["stoi"]
        linked = sorted(p.resolve() for p in (tmp_path / "smoke" / "unseen-readers").iterdir())
        assert linked == sorted(f.resolve() for f in unseen_readers()[:2])
        assert json.loads((tmp_path / "smoke" / "eval-unseen" / "report.json").read_text())["num_files"] == 2
    else:  # without the shared folder: said so, dev-clean only
        assert row["unseen"] is None and "absent" in row["unseen_note"] and "absent" in r.stderr


def _listed():
    return [ln for ln in UNSEEN_LIST.read_text().splitlines() if ln and not ln.startswith("#")]


def test_the_unseen_readers_are_40_fixed_readers_none_of_them_bundled():
    listed = _listed()
    speakers = [rel.split("/")[1] for rel in listed]
    assert len(listed) == 40 and len(set(speakers)) == 40 and all(r.startswith("train-clean-100/") for r in listed)
    bundled = {p.name for p in (BUNDLED / "train-clean-100").iterdir()} | {p.name for p in (BUNDLED / "dev-clean").iterdir()}
    assert len(bundled) > 70 and not bundled & set(speakers)  # no reader of the list is in the bundled corpus
    assert speakers == sorted(speakers, key=int)


@needs_shared
def test_the_unseen_list_is_the_rule_applied_to_the_shared_corpus(tmp_path):
    train = SHARED_MINI / "train-clean-100"
    bundled = {p.name for p in (BUNDLED / "train-clean-100").iterdir()}
    unseen = sorted((p.name for p in train.iterdir() if p.name not in bundled), key=int)
    assert len(unseen) >= 40  # 176 in the shared corpus
    rule = [str(sorted((train / s).rglob("*.flac"))[0].relative_to(SHARED_MINI)) for s in unseen[:40]]
    assert _listed() == rule
    files = unseen_readers()
    assert [str(f.relative_to(SHARED_MINI)) for f in files] == rule
    folder = link_files(files[:3], tmp_path / "links")
    cmd = eval_command(tmp_path / "best.pt", folder, tmp_path / "eval", 3)
    assert f"test_dir={folder}" in cmd and "eval.max_files=3" in cmd
    assert sorted(p.resolve() for p in folder.iterdir()) == sorted(f.resolve() for f in files[:3])
    assert unseen_readers(tmp_path / "nowhere") == []  # absent: dev-clean only
