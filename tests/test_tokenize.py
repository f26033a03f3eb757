"""``python -m luna.tokenize`` end to end on the bundled corpus (tiny untrained tokenizer), and ``luna.tokens``."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from hydra import compose, initialize_config_dir

import luna.config
from tests.paths import ROOT
import luna.tokens
from luna.audio import load

SYNTHETIC_MINI = ROOT / "tests" / "fixtures" / "synthetic_mini"
TRAIN_MINI = SYNTHETIC_MINI / "train-mini"
SHARD_SIZE = 8  # 80 files -> 10 shards: room to kill an export between its first and last shard
ROW_KEYS = {"id", "source_path", "duration", "shard", "offset", "frames"}

# `python -m luna.tokenize` with every tokenize call 40 ms slower, so a kill lands mid-export on any machine
SLOW_EXPORT = """
import sys, time
from luna.models.tokenizer import SpeechTokenizer
fast = SpeechTokenizer.tokenize
def slow(self, *args, **kwargs):
    time.sleep(0.04)
    return fast(self, *args, **kwargs)
SpeechTokenizer.tokenize = slow
import luna.tokenize
sys.argv = ["luna.tokenize", *sys.argv[1:]]
luna.tokenize.main()
"""


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> dict:
    # one thread: on a shared 2-core machine OpenMP threads waiting for a busy core make tiny convs 100x slower
    return {**os.environ, "XDG_CACHE_HOME": str(tmp_path_factory.mktemp("xdg")), "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    from luna.models.tokenizer import SpeechTokenizer

    with initialize_config_dir(config_dir=str(luna.config.CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides=["model=tiny", "vocoder=griffinlim"])
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pt"
    SpeechTokenizer.from_config(cfg).save_checkpoint(path)
    return path


def compose_tokenize(*overrides: str):
    with initialize_config_dir(config_dir=str(luna.config.CONF_DIR), version_base="1.3"):
        return compose("tokenize", overrides=["checkpoint=c.pt", "output_dir=out", *overrides])


@pytest.mark.parametrize("data", sorted(p.stem for p in (luna.config.CONF_DIR / "data").glob("*.yaml")))
def test_config_composes_with_every_data_preset(data):
    from luna.tokens.writer import _data_config

    folder = ["data.root=/corpus", "data.val_subsets=[held]"] if data == "folder" else []
    cfg = compose_tokenize(f"data={data}", *folder)
    assert cfg.subsets is None and cfg.shard_size >= 1 and cfg.device == "auto" and cfg.num_quantizers is None
    chosen = _data_config(cfg)
    if data == "folder":  # no subsets: all of root, which already holds the val dir
        assert list(chosen.subsets) == [] and list(chosen.val_subsets) == []
    else:
        assert list(chosen.subsets) == list(dict.fromkeys([*cfg.data.subsets, *cfg.data.val_subsets]))
    picked = _data_config(compose_tokenize(f"data={data}", "data.root=/corpus", "subsets=[dev-mini]"))
    assert list(picked.subsets) == ["dev-mini"]


def tokenize_args(checkpoint: Path, out: Path, *extra: str) -> list:
    # the synthetic fixture: it has transcripts (the bundled real excerpt has none) and exports in seconds
    own_data = any(e.startswith("data=") for e in extra)
    data = [] if own_data else [f"data.root={SYNTHETIC_MINI}", "data.subsets=[train-mini]"]
    return [f"checkpoint={checkpoint}", f"output_dir={out}", *data, f"shard_size={SHARD_SIZE}", *extra]


def run_tokenize(env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "luna.tokenize", *args], capture_output=True, text=True,
                          timeout=120, env=env)


@pytest.fixture(scope="module")
def export(checkpoint, env, tmp_path_factory) -> Path:
    """An uninterrupted export of the synthetic fixture's train-mini subset."""
    out = tmp_path_factory.mktemp("export") / "tokens"
    p = run_tokenize(env, *tokenize_args(checkpoint, out))
    assert p.returncode == 0, p.stderr
    assert p.stderr == ""
    return out


def read_jsonl(path: Path) -> list:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def transcripts(root: Path) -> dict:
    out = {}
    for f in root.rglob("*.trans.txt"):
        for line in f.read_text().splitlines():
            utt, _, text = line.partition(" ")
            out[utt] = text
    return out


def test_manifest_lists_every_file_with_its_frames(export, checkpoint):
    files = sorted(TRAIN_MINI.rglob("*.flac"))
    rows = read_jsonl(export / "manifest.jsonl")
    assert [r["id"] for r in rows] == [f.name[: -len(".flac")] for f in files]  # sorted by id
    assert [r["source_path"] for r in rows] == [str(f) for f in files]
    texts = transcripts(TRAIN_MINI)
    codec = json.loads((export / "codec.json").read_text())
    assert codec["tokens_per_second"] == 50.0 and codec["bitrate"] == 500.0  # tiny: 2 x 32 codes at 50 Hz
    assert codec["num_quantizers"] == 2 and codec["codebook_size"] == 32 and codec["sample_rate"] == 16000
    assert codec["checkpoint_sha256"] == hashlib.sha256(checkpoint.read_bytes()).hexdigest()
    assert codec["luna_version"] == luna.__version__ and codec["model"]["name"] == "tiny"
    assert codec["format"]["dtype"] == "int16" and codec["num_utterances"] == len(files) == 80
    assert codec["num_failed"] == 0 and (export / "failed.jsonl").read_text() == ""
    shards = {}
    for r in rows:
        assert ROW_KEYS | {"transcript"} == set(r)
        assert r["transcript"] == texts[r["id"]]
        info = sf.info(r["source_path"])
        assert r["duration"] == info.frames / info.samplerate
        assert r["frames"] == int(np.ceil(r["duration"] * codec["tokens_per_second"] - 1e-9))
        shards.setdefault(r["shard"], []).append(r)
    assert len(shards) == codec["num_shards"] == 10
    for name, members in shards.items():  # packed along time, in manifest order, nothing in between
        array = np.load(export / name)
        assert array.dtype == np.int16 and array.shape == (2, sum(r["frames"] for r in members))
        assert [r["offset"] for r in members] == list(np.cumsum([0] + [r["frames"] for r in members[:-1]]))
    assert not list(export.rglob("*.tmp"))


def test_codes_equal_tokenize(export, checkpoint):
    from luna.models.tokenizer import SpeechTokenizer

    tok = SpeechTokenizer.from_checkpoint(checkpoint).eval()
    tokens = luna.tokens.open(export)
    ids = tokens.ids()
    for utt_id in (ids[0], ids[len(ids) // 2], ids[-1]):
        wav, sr = load(tokens.info(utt_id)["source_path"])
        expected = tok.tokenize(wav, sr)  # LongTensor [1, N, T]
        codes = tokens[utt_id]
        assert codes.dtype == np.int64
        assert np.array_equal(codes, expected[0].numpy())
        assert len(np.unique(codes)) > 4  # an untrained codebook still spreads: equality means something


def test_tokens_open_round_trips_every_utterance(export):
    tokens = luna.tokens.open(export)
    rows = read_jsonl(export / "manifest.jsonl")
    assert len(tokens) == len(rows)
    assert tokens.codec == json.loads((export / "codec.json").read_text())
    seen = []
    for (utt_id, codes), row in zip(tokens, rows):
        raw = np.load(export / row["shard"])[:, row["offset"] : row["offset"] + row["frames"]]
        assert utt_id == row["id"] and codes.shape == (2, row["frames"])
        assert np.array_equal(codes, raw) and np.array_equal(tokens[utt_id], codes)
        assert utt_id in tokens
        seen.append(utt_id)
    assert seen == [r["id"] for r in rows]
    assert "no-such-id" not in tokens
    with pytest.raises(KeyError, match="no-such-id"):
        tokens["no-such-id"]


def test_open_refuses_an_unfinished_export(export, tmp_path):
    partial = tmp_path / "partial"
    shutil.copytree(export, partial)
    (partial / "codec.json").unlink()
    with pytest.raises(luna.tokens.TokensError, match="unfinished export"):
        luna.tokens.open(partial)


def test_resume_after_kill_skips_finished_shards(export, checkpoint, env, tmp_path):
    out = tmp_path / "tokens"
    shards = out / "shards"
    proc = subprocess.Popen([sys.executable, "-c", SLOW_EXPORT, *tokenize_args(checkpoint, out)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 90
        while not list(shards.glob("shard-*.json")) and proc.poll() is None and time.time() < deadline:
            time.sleep(0.005)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the export ended before it could be killed"
    done = sorted(p.name[: -len(".json")] for p in shards.glob("shard-*.json"))
    assert 0 < len(done) < 10 and not (out / "codec.json").exists()
    with pytest.raises(luna.tokens.TokensError):
        luna.tokens.open(out)
    finished = [shards / f"{n}.{ext}" for n in done for ext in ("npy", "json")]
    stamps = {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in finished}
    stale = shards / ".shard-00009.npy.killed.tmp"  # what a kill during a write leaves
    stale.write_bytes(b"half a shard")

    p = run_tokenize(env, *tokenize_args(checkpoint, out))
    assert p.returncode == 0, p.stderr
    assert f"{len(done)} finished before (skipped)" in p.stdout
    assert {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in stamps} == stamps  # not rewritten
    assert not list(out.rglob("*.tmp"))
    for name in ["manifest.jsonl", "failed.jsonl", "codec.json", *(f"shards/shard-{i:05d}.{ext}" for i in range(10)
                                                                   for ext in ("npy", "json"))]:
        assert (out / name).read_bytes() == (export / name).read_bytes(), name  # = the uninterrupted export

    p = run_tokenize(env, *tokenize_args(checkpoint, out)[:-1], "shard_size=16")
    assert p.returncode == 2 and p.stderr.startswith("error: ") and "shard_size" in p.stderr


def test_folder_with_unreadable_files(checkpoint, env, tmp_path):
    root = tmp_path / "audio"
    picked = sorted(TRAIN_MINI.rglob("*.flac"))[:3]
    for i, src in enumerate(picked):
        (root / ("a" if i < 2 else "b")).mkdir(parents=True, exist_ok=True)
        shutil.copy(src, root / ("a" if i < 2 else "b") / src.name)
    (root / "b" / "text.flac").write_text("not audio at all\n")  # soundfile cannot open it
    (root / "empty.flac").write_bytes(b"")
    nan = np.zeros(1600, dtype=np.float32)
    nan[100] = np.nan
    sf.write(root / "b" / "nan.wav", nan, 16000, subtype="FLOAT")  # opens fine, fails when read
    out = tmp_path / "tokens"
    p = run_tokenize(env, *tokenize_args(checkpoint, out, "data=folder", f"data.root={root}", "shard_size=2"))
    assert p.returncode == 0, p.stderr
    assert p.stderr == ""
    rows = read_jsonl(out / "manifest.jsonl")
    assert [r["id"] for r in rows] == [f"{'a' if i < 2 else 'b'}/{f.name[:-5]}" for i, f in enumerate(picked)]
    assert all(set(r) == ROW_KEYS for r in rows)  # a folder corpus has no transcripts
    bad = [str(root / "b" / "nan.wav"), str(root / "b" / "text.flac"), str(root / "empty.flac")]
    failed = read_jsonl(out / "failed.jsonl")
    assert sorted(f["source_path"] for f in failed) == sorted(bad) and all(f["reason"] for f in failed)
    warnings = [line for line in p.stdout.splitlines() if "skipping unreadable audio" in line]
    assert len(warnings) == 3 and all(any(b in w for w in warnings) for b in bad)  # one line each
    assert "3 unreadable file(s) skipped" in p.stdout
    codec = json.loads((out / "codec.json").read_text())
    assert codec["num_failed"] == 3 and codec["num_utterances"] == 3 and codec["data"]["kind"] == "folder"
    tokens = luna.tokens.open(out)
    assert [utt for utt, _ in tokens] == [r["id"] for r in rows]


def test_every_file_unreadable_fails(checkpoint, env, tmp_path):
    root = tmp_path / "audio"
    root.mkdir()
    sf.write(root / "nan.wav", np.full(1600, np.nan, dtype=np.float32), 16000, subtype="FLOAT")
    p = run_tokenize(env, *tokenize_args(checkpoint, tmp_path / "tokens", "data=folder", f"data.root={root}"))
    assert p.returncode == 2
    assert p.stderr.startswith("error: none of the 1 audio files could be read")


def test_missing_checkpoint_is_one_line(env, tmp_path):
    missing = tmp_path / "nope.pt"
    p = run_tokenize(env, *tokenize_args(missing, tmp_path / "tokens"))
    assert p.returncode == 2
    assert p.stderr.splitlines() == [f"error: {missing}: no such checkpoint file"]
    assert not (tmp_path / "tokens" / "codec.json").exists()


# `python -m luna.tokenize` that also records which rank exported which shard (one line "rank index" per shard)
RECORD_SHARDS = """
import os, sys
import luna.tokens.writer as writer
real = writer._export_shard
def recorded(tok, n, index, *args, **kwargs):
    with open(os.environ["LUNA_TEST_SHARD_LOG"], "a") as f:
        f.write(f"{os.environ['RANK']} {index}\\n")
    return real(tok, n, index, *args, **kwargs)
writer._export_shard = recorded
import luna.tokenize
sys.argv = ["luna.tokenize", *sys.argv[1:]]
luna.tokenize.main()
"""


@pytest.mark.slow  # torchrun starts 2 processes that import torch and luna
def test_two_gloo_ranks_split_the_shards_and_merge_what_one_process_writes(export, checkpoint, env, tmp_path):
    """Under torchrun with 2 ranks: shard i is written by rank i mod 2, every shard exactly once, and the
    merged export is the single-process one (manifest rows and codes)."""
    from luna.tokens.reader import MANIFEST_FILE, SHARD_DIR

    driver, record, out = tmp_path / "record_shards.py", tmp_path / "shards.log", tmp_path / "tokens"
    driver.write_text(RECORD_SHARDS)
    p = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                        str(driver), *tokenize_args(checkpoint, out)], capture_output=True, text=True, timeout=300,
                       env={**env, "LUNA_TEST_SHARD_LOG": str(record)}, cwd=ROOT)
    assert p.returncode == 0, p.stderr[-3000:]
    written = sorted((int(i), int(r)) for r, i in (line.split() for line in record.read_text().splitlines()))
    shards = sorted(p.name for p in (export / SHARD_DIR).glob("*.npy"))
    assert len(shards) == 10  # 80 files in shards of 8
    assert [i for i, _ in written] == list(range(len(shards)))  # every shard once
    assert all(r == i % 2 for i, r in written) and {r for _, r in written} == {0, 1}
    assert read_jsonl(out / MANIFEST_FILE) == read_jsonl(export / MANIFEST_FILE)
    for name in shards:
        assert np.array_equal(np.load(out / SHARD_DIR / name), np.load(export / SHARD_DIR / name)), name
