"""The data benchmark runs and reports rows in the shared format."""
from __future__ import annotations

from benchmarks.data_pipeline import run


def test_quick_run_reports_both_worker_settings():
    rows = run(quick=True)
    assert [r["workers"] for r in rows][0] == 0 and rows[1]["workers"] >= 2
    for r in rows:
        assert r["unit"] == "x realtime" and r["threads"] == 1
        assert r["luna"] > 10 and r["wall_x_realtime_total"] > 10 and r["first_batch_s"] > 0
        assert "24 kHz" in r["what"] and "batch 16" in r["what"]
