"""``python -m luna.eval`` end to end on a tiny untrained checkpoint, and ``luna.report --eval`` on a sweep of two.

The tiny model is 16 kHz; the default vocoder (universal HiFi-GAN, 22.05 kHz) does not fit it, so every
evaluation here uses vocoder=griffinlim, which fits any model.
"""
from __future__ import annotations

import copy
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

import luna.config
from tests.paths import ROOT
from luna import report as report_cli
from luna.audio import load, resample
from luna.evaluation.evaluate import EvalError, run_evaluation

SPEECH = ROOT / "tests" / "fixtures" / "synthetic_mini" / "dev-mini" / "109" / "1010" / "109-1010-0001.flac"

REPORT_KEYS = {
    "mse": float, "mae": float, "peak_original": float, "peak_reconstructed": float, "mel_l1": float,
    "stft_distance": float, "si_sdr": float, "stoi": float, "pesq_wb": float, "bitrate_bps": float,
    "tokens_per_second": float, "codebooks": list, "rtf": dict, "num_files": int, "num_failed": int,
    "vocoder": str, "failed": list, "null_reasons": dict, "ceiling_mel_l1": float, "ceiling_stoi": float,
    "ceiling_pesq_wb": float, "pipelines": list,
}


def compose_cfg(name: str, overrides=()):
    with initialize_config_dir(config_dir=str(luna.config.CONF_DIR), version_base="1.3"):
        return compose(name, overrides=list(overrides))


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    from luna.models.tokenizer import SpeechTokenizer

    torch.manual_seed(0)
    tok = SpeechTokenizer.from_config(compose_cfg("train", ["model=tiny", "vocoder=griffinlim"]))
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pt"
    tok.save_checkpoint(path)
    return path


@pytest.fixture(scope="module")
def speech() -> torch.Tensor:
    wav, sr = load(SPEECH)
    return wav[int(0.1 * sr) : int(1.6 * sr)]  # 1.5 s, 16 kHz


def run_eval(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "luna.eval", "vocoder=griffinlim", *args], capture_output=True, text=True,
                          timeout=120)


def test_single_file_report(checkpoint, speech, tmp_path):
    wav = tmp_path / "speech.wav"
    sf.write(wav, speech.numpy(), 16000)
    out = tmp_path / "out"
    p = run_eval(f"checkpoint={checkpoint}", f"input={wav}", f"hydra.run.dir={out}", "eval.rtf_repeats=1", "eval.rtf_max_seconds=0.5",
                 "eval.save_wavs=1", "eval.quantizer_sweep=true")
    assert p.returncode == 0, p.stderr
    assert p.stderr == ""  # warnings go to the log
    report = json.loads((out / "report.json").read_text())
    for key, typ in REPORT_KEYS.items():
        assert isinstance(report[key], typ), (key, report[key])
    assert report["num_files"] == 1 and report["num_failed"] == 0 and report["failed"] == []
    assert report["bitrate_bps"] == 500.0 and report["tokens_per_second"] == 50.0  # tiny: 2 x 32 codes at 50 Hz
    assert report["vocoder"] == "griffinlim"
    assert len(report["codebooks"]) == 2
    for cb in report["codebooks"]:
        assert set(cb) == {"usage", "perplexity", "entropy_normalized", "dead_codes"}
        assert 0 < cb["usage"] <= 1 and 1 <= cb["perplexity"] <= 32 and cb["dead_codes"] == round(32 * (1 - cb["usage"]))
    assert set(report["rtf"]) == {"tokenize", "detokenize", "vocoder"}
    for r in report["rtf"].values():
        assert r["rtf"] > 0 and r["threads"] >= 1 and r["device"] == "cpu"
    assert [s["num_quantizers"] for s in report["quantizer_sweep"]] == [1, 2]
    assert [s["bitrate_bps"] for s in report["quantizer_sweep"]] == [250.0, 500.0]
    assert report["quantizer_sweep"][-1]["mel_l1"] == pytest.approx(report["mel_l1"], rel=1e-5)
    md = (out / "report.md").read_text()
    assert "500 bps, 50 tokens/s" in md and "quantizer dropout" in md
    for png in ("mel_comparison.png", "code_usage.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG"
    assert sf.info(str(out / "wavs" / "000_speech_reconstructed.wav")).frames == len(speech)
    assert sf.info(str(out / "wavs" / "000_speech_ceiling.wav")).frames == len(speech)
    assert_states_the_vocoders_ceiling(report, out, speech)


def assert_states_the_vocoders_ceiling(report, out, speech):
    """Ground-truth mel → the same vocoder, scored like the tokens: an untrained tokenizer is far below it."""
    ceiling, tokens = report["pipelines"]
    assert ceiling == {"pipeline": "ground-truth mel → griffinlim (ceiling)", "input": "ground-truth mel",
                       "mel_l1_resynth": report["ceiling_mel_l1"], "stoi": report["ceiling_stoi"],
                       "pesq_wb": report["ceiling_pesq_wb"]}
    assert tokens == {"pipeline": "tokens → griffinlim", "input": "tokens", "mel_l1_resynth": report["mel_l1_resynth"],
                      "stoi": report["stoi"], "pesq_wb": report["pesq_wb"]}
    # real vocoding: Griffin-Lim on the true mel is good but not perfect, and far better than untrained tokens
    assert 0.6 < report["ceiling_stoi"] < 0.999 and report["ceiling_stoi"] > report["stoi"] + 0.2
    assert 0 < report["ceiling_mel_l1"] < report["mel_l1_resynth"]
    assert report["ceiling_pesq_wb"] >= 1.0 and report["ceiling_pesq_wb"] <= 4.65  # (PESQ can rate an untrained model's loud buzz above GL: no order)
    ceiling_wav, _ = load(out / "wavs" / "000_speech_ceiling.wav")
    assert not torch.allclose(ceiling_wav, speech, atol=1e-2)  # vocoded, not the input copied through
    md = (out / "report.md").read_text()
    assert "| pipeline | mel L1 | STOI | PESQ-WB |" in md
    assert f"| ground-truth mel → griffinlim (ceiling) | {report['ceiling_mel_l1']:.4g} | {report['ceiling_stoi']:.4g} |" in md
    assert f"| tokens → griffinlim | {report['mel_l1_resynth']:.4g} | {report['stoi']:.4g} | {report['pesq_wb']:.4g} |" in md
    assert report["files_per_metric"]["ceiling_stoi"] == 1 and "ceiling_stoi" not in report["null_reasons"]


def test_ceiling_of_a_clip_shorter_than_one_mel_frame_is_null_with_a_reason(checkpoint, tmp_path):
    wav = tmp_path / "blip.wav"
    sf.write(wav, 0.1 * np.sin(np.arange(100) / 3.0).astype(np.float32), 16000)  # 100 samples < hop 160
    report = run_evaluation(eval_cfg(checkpoint, input=str(wav)), tmp_path / "out")
    for key in ("ceiling_mel_l1", "ceiling_stoi", "ceiling_pesq_wb"):
        assert report[key] is None and report["per_file"][0][key] is None
        assert report["null_reasons"][key][0]["reason"] == "clip shorter than one mel frame"
    assert report["pipelines"][0]["stoi"] is None and "n/a" in (tmp_path / "out" / "report.md").read_text()


def test_directory_with_degenerate_and_broken_files(checkpoint, speech, tmp_path):
    d = tmp_path / "data"
    (d / "sub").mkdir(parents=True)
    x = speech.numpy()
    sf.write(d / "silence.wav", np.zeros(16000, dtype=np.float32), 16000)
    sf.write(d / "short50ms.wav", x[8000:8800], 16000)
    sf.write(d / "sub" / "rate8k.wav", resample(speech, 16000, 8000).numpy(), 8000)
    s48 = resample(speech, 16000, 48000).numpy()
    sf.write(d / "sub" / "stereo48k.flac", np.stack([s48, 0.5 * s48], axis=1), 48000)
    sf.write(d / "pcm_u8.wav", x, 16000, subtype="PCM_U8")
    sf.write(d / "vorbis.ogg", x, 16000, format="OGG", subtype="VORBIS")
    (d / "broken.flac").write_bytes(b"fLaC and then garbage")
    out = tmp_path / "out"
    p = run_eval(f"checkpoint={checkpoint}", f"test_dir={d}", f"hydra.run.dir={out}", "eval.rtf_repeats=1", "eval.rtf_max_seconds=0.5", "eval.save_wavs=0")
    assert p.returncode == 0, p.stderr
    report = json.loads((out / "report.json").read_text())
    assert report["num_files"] == 6 and report["num_failed"] == 1
    assert [Path(f["path"]).name for f in report["failed"]] == ["broken.flac"] and report["failed"][0]["reason"]
    evaluated = {Path(f["path"]).name for f in report["per_file"]}
    assert evaluated == {"silence.wav", "short50ms.wav", "rate8k.wav", "stereo48k.flac", "pcm_u8.wav", "vorbis.ogg"}

    def undefined(metric):
        return {Path(i["path"]).name: i["reason"] for i in report["null_reasons"].get(metric, [])}

    assert set(undefined("si_sdr")) == {"silence.wav"} and "silent" in undefined("si_sdr")["silence.wav"]
    assert set(undefined("stoi")) == {"silence.wav", "short50ms.wav"}
    assert set(undefined("pesq_wb")) == {"silence.wav", "short50ms.wav"}
    assert "1/4 of a second" in undefined("pesq_wb")["short50ms.wav"]
    # the vocoder's ceiling is undefined exactly where the tokens' scores are, for the same reasons
    for metric in ("stoi", "pesq_wb"):
        assert undefined(f"ceiling_{metric}") == undefined(metric)
    assert "ceiling_mel_l1" not in report["null_reasons"]
    # averages skip the undefined values instead of becoming undefined themselves
    for metric in ("si_sdr", "stoi", "pesq_wb", "mel_l1", "ceiling_mel_l1", "ceiling_stoi", "ceiling_pesq_wb"):
        assert isinstance(report[metric], float)
    assert report["files_per_metric"]["stoi"] == 4 and report["files_per_metric"]["mel_l1"] == 6
    per = {Path(f["path"]).name: f for f in report["per_file"]}
    assert per["stereo48k.flac"]["sample_rate"] == 48000 and per["rate8k.wav"]["sample_rate"] == 8000
    assert per["silence.wav"]["si_sdr"] is None and per["short50ms.wav"]["si_sdr"] is not None


@pytest.mark.parametrize("case", ["unreadable", "missing_checkpoint"])
def test_bad_input_is_one_line_and_exit_2(checkpoint, speech, tmp_path, case):
    bad = tmp_path / "bad input.wav"
    bad.write_bytes(b"RIFF not really a wave file")
    good = tmp_path / "good.wav"
    sf.write(good, speech.numpy(), 16000)
    if case == "unreadable":
        args, named = [f"checkpoint={checkpoint}", f"input={bad}"], bad
    else:
        named = tmp_path / "nope.pt"
        args = [f"checkpoint={named}", f"input={good}"]
    p = run_eval(*args, f"hydra.run.dir={tmp_path / 'out'}")
    assert p.returncode == 2
    lines = p.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {named}: "), p.stderr
    assert "Traceback" not in p.stdout


def eval_cfg(checkpoint, **keys):
    cfg = compose_cfg("eval", [f"checkpoint={checkpoint}", "vocoder=griffinlim", "device=cpu", "eval.rtf_repeats=1",
                               "eval.rtf_max_seconds=0.5", "eval.save_wavs=0"])
    for k, v in keys.items():
        OmegaConf.update(cfg, k, v)
    return cfg


def test_in_process_errors(checkpoint, tmp_path):
    empty = tmp_path / "empty.wav"
    sf.write(empty, np.zeros(0, dtype=np.float32), 16000)
    with pytest.raises(EvalError, match=f"^{empty}: no audio samples$"):
        run_evaluation(eval_cfg(checkpoint, input=str(empty)), tmp_path / "o1")
    wrong = tmp_path / "wrong.pt"
    torch.save({"weights": torch.zeros(2)}, wrong)
    with pytest.raises(EvalError, match=f"^{wrong}: not a luna tokenizer checkpoint"):
        run_evaluation(eval_cfg(wrong, input=str(SPEECH)), tmp_path / "o2")
    folder = tmp_path / "all_broken"
    folder.mkdir()
    (folder / "a.wav").write_bytes(b"junk")
    with pytest.raises(EvalError, match="none of 1 files could be read"):
        run_evaluation(eval_cfg(checkpoint, test_dir=str(folder)), tmp_path / "o3")
    report = json.loads((tmp_path / "o3" / "report.json").read_text())
    assert report["num_files"] == 0 and report["num_failed"] == 1 and report["mel_l1"] is None
    with pytest.raises(EvalError, match="^checkpoint: required"):
        run_evaluation(compose_cfg("eval", [f"input={SPEECH}", "vocoder=griffinlim"]), tmp_path / "o5")
    with pytest.raises(EvalError, match="not both"):
        run_evaluation(eval_cfg(checkpoint, input=str(SPEECH), test_dir=str(folder)), tmp_path / "o4")


def test_quantizer_prefix_is_the_n_quantizer_encoding(checkpoint, speech):
    """The quantizer sweep decodes code prefixes; that must equal tokenizing with fewer quantizers."""
    from luna.models.tokenizer import SpeechTokenizer

    tok = SpeechTokenizer.from_checkpoint(checkpoint)
    full = tok.tokenize(speech, 16000)
    assert torch.equal(tok.tokenize(speech, 16000, num_quantizers=1), full[:, :1])


def test_report_eval_uses_dev_clean_mel_l1_and_shows_the_ceiling(checkpoint, tmp_path, capsys):
    sweep = tmp_path / "sweep"
    tiny = OmegaConf.to_container(compose_cfg("train", ["model=tiny", "vocoder=griffinlim"]).model, resolve=True)
    for n in (1, 2):
        run = sweep / f"model.num_quantizers={n}"
        (run / ".hydra").mkdir(parents=True)
        model = copy.deepcopy(tiny)
        model["num_quantizers"] = 2  # the checkpoint's own N is what gets evaluated
        OmegaConf.save(OmegaConf.create({"model": model}), run / ".hydra" / "config.yaml")
        (run / "metrics.json").write_text(json.dumps({"val_mel_l1": 123.0, "step": 10}))
        (run / "checkpoints").mkdir()
        shutil.copy(checkpoint, run / "checkpoints" / "best.pt")
    assert report_cli.main([str(sweep), "--eval", "--max-files", "1", "--device", "cpu", "--vocoder", "griffinlim"]) == 0
    md = (sweep / "report.md").read_text()
    rows = [line for line in md.splitlines() if line.startswith("| model.")]
    assert len(rows) == 2 and all("123" not in r for r in rows)
    assert "| STOI (ceiling) | PESQ-WB (ceiling) |" in md
    for n in (1, 2):
        ev = json.loads((sweep / f"model.num_quantizers={n}" / "eval" / "report.json").read_text())
        assert ev["num_files"] == 1 and ev["vocoder"] == "griffinlim" and f"{ev['mel_l1']:.4g}" in rows[n - 1]
        assert f"| {ev['stoi']:.3g} ({ev['ceiling_stoi']:.3g}) | {ev['pesq_wb']:.3g} ({ev['ceiling_pesq_wb']:.3g}) |" in rows[n - 1]
    assert "dev-clean" in md
    assert (sweep / "rate_distortion.png").read_bytes()[:4] == b"\x89PNG"
