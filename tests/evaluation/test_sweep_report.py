"""Sweep summary (luna.report) over a hand-made Hydra multirun dir, and the figures/JSON of an eval report."""
from __future__ import annotations

import json
from pathlib import Path

import matplotlib.image
import pytest
import torch
from omegaconf import OmegaConf

from luna import report as report_cli
from luna.evaluation.evaluate import find_audio_files, write_eval_report
from luna.evaluation.sweep import read_run, summarize_sweep
from luna.rate import Rate

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def make_run(root: Path, name: str, k: int, n: int, metrics: dict | None, ckpt: str | None = "best.pt") -> Path:
    run = root / name
    (run / ".hydra").mkdir(parents=True)
    cfg = {
        "model": {
            "name": "rvq",
            "codebook_size": k,
            "num_quantizers": n,
            "encoder_stride": 2,
            "mel": {"sample_rate": 24000, "hop_length": 240, "n_fft": 1024},
        },
        "data": {"root": "${luna_pkg:}/data/librispeech_mini"},
    }
    OmegaConf.save(OmegaConf.create(cfg), run / ".hydra" / "config.yaml")
    (run / ".hydra" / "overrides.yaml").write_text(f"- model.codebook_size={k}\n- model.num_quantizers={n}\n")
    if metrics is not None:
        (run / "metrics.json").write_text(json.dumps(metrics))
    if ckpt:
        (run / "checkpoints").mkdir()
        (run / "checkpoints" / ckpt).write_bytes(b"")
    return run


def assert_png(path: Path) -> None:
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE and len(data) > 1000
    img = matplotlib.image.imread(path)
    assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 100


@pytest.fixture
def sweep(tmp_path) -> Path:
    root = tmp_path / "sweeps" / "2026-01-01_00-00-00"
    make_run(root, "model.codebook_size=1024,model.num_quantizers=8", 1024, 8, {
        "best_val_loss": 0.5, "val_mel_l1": 0.42, "step": 1200, "elapsed_seconds": 3725.0,
        "codebooks": [{"usage": 0.9, "perplexity": 700.0}, {"usage": 0.7, "perplexity": 500.0}],
    })
    make_run(root, "model.codebook_size=256,model.num_quantizers=4", 256, 4, {"val_mel_l1": 0.61, "step": 300})
    (root / "multirun.yaml").write_text("hydra: {}\n")
    return root


def test_bitrate_formula():
    # rvq8_24k: 24 kHz / (240 · 2) = 50 tokens/s; 8 · log2(1024) · 50 = 4000 bps; the first 2 streams: 1000
    rate = Rate(24000, 240 * 2, 8, 1024)
    assert (rate.tokens_per_second, rate.bitrate, rate.at(2).bitrate) == (50.0, 4000.0, 1000.0)


def test_summary_rows_and_missing_keys(sweep):
    rows = summarize_sweep(sweep)
    assert [r["codebook_size"] for r in rows] == [256, 1024]  # ordered by codebook size
    small, big = rows
    assert big["tokens_per_second"] == 50.0 and big["bitrate_bps"] == 4000.0
    assert small["bitrate_bps"] == 4 * 8 * 50
    assert big["usage"] == pytest.approx(0.8) and big["perplexity"] == pytest.approx(600.0)
    assert big["checkpoint"].endswith("best.pt")
    assert small["best_val_loss"] is None and small["usage"] is None and small["elapsed_seconds"] is None
    assert small["mel_l1"] == 0.61 and small["step"] == 300


def test_report_cli_writes_table_and_plot(sweep, capsys):
    assert report_cli.main([str(sweep)]) == 0
    md = (sweep / "report.md").read_text()
    table = [line for line in md.splitlines() if line.startswith("| model.")]
    assert len(table) == 2
    header = next(line for line in md.splitlines() if line.startswith("| run"))
    for col in ("codebook_size", "num_quantizers", "bitrate", "val loss", "mel_l1", "usage", "perplexity", "steps", "time"):
        assert col in header
    big = next(line for line in table if "=1024," in line)
    cells = [c.strip() for c in big.strip("|").split("|")]
    assert cells[1:4] == ["1024", "8", "4000"] and "80.0%" in cells and "1h02m" in cells
    small = next(line for line in table if "=256," in line)
    assert small.count("n/a") == 4  # val loss, usage, perplexity, time
    assert_png(sweep / "rate_distortion.png")
    printed = capsys.readouterr().out
    assert "| run" in printed and printed.count("| model.") == 2


def test_report_tolerates_broken_runs(tmp_path, capsys):
    root = tmp_path / "sweep"
    make_run(root, "a", 512, 2, None, ckpt=None)  # no metrics.json, no checkpoint
    run = make_run(root, "b", 512, 4, {"val_mel_l1": "oops"})
    (run / "metrics.json").write_text("{truncated")  # half-written by a killed job
    (root / "c" / ".hydra").mkdir(parents=True)
    (root / "c" / ".hydra" / "config.yaml").write_text("task: other\n")  # not a training run: ignored
    rows = summarize_sweep(root)
    assert [r["run"] for r in rows] == ["a", "b"]
    assert all(r["mel_l1"] is None and r["checkpoint"] is None for r in rows[:1])
    assert read_run(run)["bitrate_bps"] == 4 * 9 * 50
    assert report_cli.main([str(root)]) == 0
    assert_png(root / "rate_distortion.png")  # no plottable point: still a valid figure
    with pytest.raises(SystemExit) as e:  # the one error policy: a user error is exit code 2
        report_cli.main([str(tmp_path / "missing")])
    assert e.value.code == 2
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit) as e:
        report_cli.main([str(tmp_path / "empty")])  # no runs inside
    assert e.value.code == 2
    assert capsys.readouterr().err.count("error:") == 2


def test_eval_report_files(tmp_path):
    counts = torch.tensor([[5, 0, 3, 1], [2, 2, 2, 2]])
    mels = (torch.randn(40, 60), torch.randn(40, 60), "clip.wav")
    report = {"mel_l1": float("nan"), "si_sdr": None, "codebooks": [], "num_files": 1, "num_failed": 0, "model": {}}
    paths = write_eval_report(report, tmp_path, counts=counts, mels=mels)
    assert_png(paths["mel_comparison"])
    assert_png(paths["code_usage"])
    loaded = json.loads((tmp_path / "report.json").read_text())  # strict JSON: NaN became null
    assert loaded["mel_l1"] is None and loaded["si_sdr"] is None
    md = (tmp_path / "report.md").read_text()
    assert "mel_comparison.png" in md and "code_usage.png" in md


def test_find_audio_files(tmp_path):
    for name in ("a.wav", "sub/b.FLAC", "sub/deeper/c.ogg", "notes.txt", "d.mp3"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    assert [p.relative_to(tmp_path).as_posix() for p in find_audio_files(tmp_path)] == [
        "a.wav", "sub/b.FLAC", "sub/deeper/c.ogg"
    ]
