"""The quality yardstick (benchmarks/quality.py) trains, evaluates on the held-out readers and records one row."""
from __future__ import annotations

import json
import subprocess
import sys

from tests.paths import ROOT


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
