"""benchmarks/rate_distortion.py: luna's measured points and the published codecs, as a PNG and the JSON behind it."""
from __future__ import annotations

import json

import pytest
from omegaconf import OmegaConf

from benchmarks.rate_distortion import PUBLISHED, PUBLISHED_SOURCE, main
from tests.conftest import compose_train
from tests.paths import ROOT

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _row(name, overrides, stoi, pesq, **extra):
    return {"name": name, "overrides": overrides, "steps": 3, "stoi": stoi, "pesq_wb": pesq, **extra}


def test_the_picture_holds_the_published_points_and_the_luna_rows(tmp_path):
    results = tmp_path / "results.jsonl"
    rows = [_row("mimi", ["model=rvq8_12hz_2k"], 0.81, 1.52),  # an older row: the bitrate is derived from its overrides
            _row("recorded", [], 0.87, 1.9, bitrate_bps=1234.0, unseen={"stoi": 0.85, "pesq_wb": 1.7, "files": 40}),
            _row("broken", ["model=no_such_preset"], 0.5, 1.1)]  # no bitrate: left out
    results.write_text("".join(json.dumps(r) + "\n" for r in rows))
    # a sweep run evaluated by `luna.report --eval`: its config and its eval report
    run = tmp_path / "sweep" / "0"
    (run / ".hydra").mkdir(parents=True)
    OmegaConf.save(compose_train(["model=rvq4"]), run / ".hydra" / "config.yaml")
    (run / "eval").mkdir()
    (run / "eval" / "report.json").write_text(json.dumps({"stoi": 0.8, "pesq_wb": 1.6}))
    main(["--results", str(results), "--sweep", str(tmp_path / "sweep"), "--out", str(tmp_path / "out")])

    png = (tmp_path / "out" / "rate_distortion.png").read_bytes()
    assert png.startswith(PNG_MAGIC) and 10_000 < len(png) < 200_000
    data = json.loads((tmp_path / "out" / "rate_distortion.json").read_text())
    assert "a different test set" in data["note"] and PUBLISHED_SOURCE in data["note"]
    published = [(p["label"], p["kbps"], p["stoi"], p["pesq_wb"]) for p in data["points"] if p["group"].startswith("published")]
    assert published == [(f"{c} {k:g}", k, s, q) for c, k, s, q in PUBLISHED]
    assert ("Mimi 1.1", 1.1, 0.91, 2.25) in published and len(published) == 8
    luna = {(p["label"], p["group"]): p for p in data["points"] if p["group"].startswith("luna")}
    assert luna["mimi", "luna, dev-clean"]["kbps"] == pytest.approx(22050 / 2048 * 88 / 1000)
    assert (luna["mimi", "luna, dev-clean"]["stoi"], luna["mimi", "luna, dev-clean"]["pesq_wb"]) == (0.81, 1.52)
    assert luna["recorded", "luna, dev-clean"]["kbps"] == pytest.approx(1.234)
    assert luna["recorded", "luna, 40 unseen readers"]["stoi"] == 0.85  # the unseen readers: their own points
    assert ("mimi", "luna, 40 unseen readers") not in luna and not any(k[0] == "broken" for k in luna)
    assert luna["0", "luna, dev-clean"]["kbps"] == pytest.approx(22050 / 512 * 40 / 1000)  # the sweep's rvq4 run
    # docs/quality.md's measured 3,000-step point, on dev-clean
    assert luna["rvq8_256, 3k steps", "luna, dev-clean"]["stoi"] == 0.895
    assert luna["rvq8_256, 3k steps", "luna, dev-clean"]["pesq_wb"] == 1.97


def test_the_readme_shows_the_committed_picture():
    png = ROOT / "docs" / "rate_distortion.png"
    assert png.read_bytes().startswith(PNG_MAGIC) and png.stat().st_size < 200_000
    assert "(docs/rate_distortion.png)" in (ROOT / "README.md").read_text()
    data = json.loads((ROOT / "docs" / "rate_distortion.json").read_text())
    assert len([p for p in data["points"] if p["group"].startswith("published")]) == len(PUBLISHED)
