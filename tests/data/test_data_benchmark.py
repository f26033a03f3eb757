"""The data benchmark runs and reports rows in the shared format."""
from __future__ import annotations

from benchmarks.data_pipeline import run


def test_quick_run_reports_both_worker_settings_the_no_resampling_reference_and_the_cache():
    rows = run(quick=True)
    assert [r["workers"] for r in rows][0] == 0 and rows[1]["workers"] >= 2 and rows[2]["workers"] == rows[3]["workers"] == 0
    for r in rows:
        assert r["unit"] == "x realtime" and r["threads"] == 1
        assert r["luna"] > 10 and r["wall_x_realtime_total"] > 10 and r["first_batch_s"] > 0
        assert "batch 16" in r["what"]
    assert all("22.05 kHz (from 16 kHz)" in r["what"] for r in (rows[0], rows[1], rows[3]))  # model=rvq8's rate
    assert "16 kHz (no resampling)" in rows[2]["what"]
    cache = rows[3]
    assert "data.cache" in cache["what"] and cache["items_per_epoch"] == rows[0]["items_per_epoch"]
    assert cache["vs_decode"] == round(cache["luna"] / rows[0]["luna"], 1)
    assert cache["vs_decode"] > 3 and cache["cache_build_s"] > 0  # per CPU second: slicing beats decoding by far
