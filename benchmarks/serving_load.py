"""Serving load: N concurrent full-duplex streams (audio in, codes and audio out) into ``python -m luna.serve``,
batched (``max_batch`` > 1) vs unbatched (``max_batch=1``), in the same run.

Setting: a causal preset (random-init weights, k-means-initialised codebooks: speed does not depend on training)
with its configured vocoder (the pretrained universal HiFi-GAN V1 for ``rvq8_causal``), saved as a checkpoint and
served by the real entry point in a subprocess (``threads`` torch threads, one compute worker); N clients in this
process stream real speech from the bundled corpus at the model rate, ``chunk_ms`` chunks. Per server setting:

- ``realtime``: the clients pace their chunks at real time (as a microphone): chunk latency (send → its codes
  reply; its audio frame follows at once) p50 / p95 / max, and drops (chunks without a reply, audio samples
  missing against ``done``). The streams run in real time when p95 stays near the compute of one chunk and does
  not grow with the stream (max bounded);
- ``flood``: the clients send as fast as the server takes it (back-pressure): throughput in audio seconds per
  wall second, all streams together; ``ratio`` = batched / unbatched throughput.

Also reported: the batch sizes the server ran (its log at shutdown), the 1-minute load average (the machine
may be shared: read the figures next to it), and ``stage``: the decoder + vocoder work alone, in this process,
B streams pushed one by one vs ``push_many`` (one batched forward; luna/streaming/batch.py), per-stream RTF of
each, interleaved so both see the same load: the batching payoff without the server's and clients' overhead.

    python -m benchmarks.serving_load [--streams 4] [--seconds 4] [--chunk-ms 80] [--preset rvq8_causal]
                                      [--max-batch 8] [--threads 2] [--device cpu] [--smoke] [--json OUT]
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Dict, List, Sequence

import numpy as np
import torch

from benchmarks.run import compose, speech
from benchmarks.tokenize import trained_like

ROOT = Path(__file__).resolve().parent.parent


def checkpoint(preset: str, smoke: bool, path: Path) -> Any:
    """The served model, saved to ``path``; returns it (for the smoke run's code check)."""
    from luna.models.tokenizer import SpeechTokenizer

    torch.manual_seed(0)
    overrides = ["model.hidden=32", "model.codebook_dim=0"] if smoke else []  # smoke: a narrow model, the same vocoder
    tok = SpeechTokenizer.from_config(compose(preset, "cpu", overrides))
    trained_like(tok, 0.5, 4, steps=1)
    tok.save_checkpoint(path)
    return tok


def serve(ckpt: Path, run_dir: Path, threads: int, max_batch: int, wait_ms: float, device: str) -> tuple:
    """``python -m luna.serve`` on a free port; (process, url)."""
    args = [f"checkpoint={ckpt}", "port=0", f"threads={threads}", f"max_batch={max_batch}", f"batch_wait_ms={wait_ms}",
            f"device={device}", "idle_timeout=null", f"hydra.run.dir={run_dir}"]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": str(ROOT)}
    # SIGINT as at a terminal: a shell that starts a job in the background without job control (CI's, often) has
    # it ignored, and the server would inherit that and never stop
    proc = subprocess.Popen([sys.executable, "-m", "luna.serve", *args], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    for line in proc.stdout:
        if line.startswith("serving ws://"):
            # keep reading its output: a full pipe would block the server's logging, and with it its exit
            threading.Thread(target=proc.stdout.read, daemon=True).start()
            return proc, line.split()[1]
    raise RuntimeError(f"the server did not start (exit {proc.wait()})")


def stop(proc: subprocess.Popen, run_dir: Path) -> Dict[int, int]:
    """Stop the server (SIGINT); the batch sizes it logged: {size: count}."""
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:  # should not happen (SIGINT is restored at start): say so, then end it
        print(f"warning: the server did not exit within 60 s of SIGINT (pid {proc.pid}); killed", file=sys.stderr)
        proc.kill()
        proc.wait()
    found = re.findall(r"batches by size (\{.*\})", (run_dir / "serve.log").read_text())
    return {int(k): v for k, v in json.loads(found[-1]).items()} if found else {}


def load(url: str, wavs: List[torch.Tensor], rate: int, chunk_ms: float, realtime: bool) -> Dict[str, Any]:
    """All streams at once; latencies, drops, throughput."""
    from luna.client import stream_async  # here: the GPU check imports stage() where websockets is not installed

    async def main():
        return await asyncio.gather(*(stream_async(url, w, rate, chunk_ms=chunk_ms, audio_out=True, realtime=realtime)
                                      for w in wavs))

    t0 = time.perf_counter()
    results = asyncio.run(main())
    wall = time.perf_counter() - t0
    lat = np.concatenate([r.latencies for r in results]) * 1e3
    step = int(rate * chunk_ms / 1000)
    chunks = sum(-(-w.numel() // step) for w in wavs)
    missing = sum(r.done["samples"] - (0 if r.audio is None else r.audio.shape[-1]) for r in results)
    seconds = sum(w.numel() for w in wavs) / rate
    return {"p50_ms": float(np.percentile(lat, 50)), "p95_ms": float(np.percentile(lat, 95)), "max_ms": float(lat.max()),
            "dropped_chunks": chunks - lat.size, "missing_samples": int(missing), "wall_s": wall,
            "audio_x": seconds / wall, "results": results}


def run(streams: int = 4, seconds: float = 4.0, chunk_ms: float = 80.0, preset: str = "rvq8_causal",
        max_batch: int = 8, wait_ms: float = 10.0, threads: int = 2, device: str = "cpu",
        smoke: bool = False, stage_sizes: Sequence[int] = ()) -> List[Dict[str, Any]]:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = Path(tmp) / "model.pt"
        tok = checkpoint(preset, smoke, ckpt)
        rate = tok.sample_rate
        wavs = [speech(seconds + i, rate)[-int(seconds * rate):] for i in range(streams)]  # different audio each
        for mb in (1, max_batch):
            run_dir = Path(tmp) / f"serve_{mb}"
            proc, url = serve(ckpt, run_dir, threads, mb, wait_ms, device)
            try:
                for mode in ("realtime", "flood"):
                    m = load(url, wavs, rate, chunk_ms, realtime=mode == "realtime")
                    results = m.pop("results")
                    if smoke:  # the codes a stream receives are tokenize's, batched or not
                        assert all(torch.equal(r.codes, tok.tokenize(w, rate)) for r, w in zip(results, wavs))
                    rows.append({"max_batch": mb, "mode": mode, "streams": streams, "seconds": seconds,
                                 "chunk_ms": chunk_ms, "threads": threads, "device": device, **m,
                                 "load_avg": os.getloadavg()[0]})
                    print(table(rows[-1:]).splitlines()[-1], flush=True)
            finally:
                batches = stop(proc, run_dir)
            for r in rows:
                if r["max_batch"] == mb:
                    r["batches"] = batches
    flood = {r["max_batch"]: r["audio_x"] for r in rows if r["mode"] == "flood"}
    for r in rows:
        r["ratio"] = flood[max_batch] / flood[1]
    if stage_sizes:
        rows[0]["stage"] = stage(tok.to(device), stage_sizes, chunk_ms)
    return rows


@torch.no_grad()
def stage(tok: Any, sizes: Sequence[int], chunk_ms: float, pushes: int = 12) -> List[Dict[str, Any]]:
    """Per-stream RTF of B decoders (causal decoder + vocoder) pushed one by one vs together, after 3 warm-up pushes."""
    from luna.streaming.batch import push_many

    t = max(1, round(chunk_ms / 1000 * tok.frame_rate))
    rows = []
    for b in sizes:
        codes = [torch.randint(0, tok.codebook_size, (1, tok.num_quantizers, (pushes + 3) * t)) for _ in range(b)]
        best = {}
        for together in (False, True, False, True):
            decs = [tok.stream_decoder() for _ in range(b)]
            for k in range(pushes + 3):
                if k == 3:
                    t0 = time.perf_counter()
                cs = [c[..., k * t:(k + 1) * t] for c in codes]
                push_many(decs, cs) if together else [d.push(c) for d, c in zip(decs, cs)]
            rtf = (time.perf_counter() - t0) * tok.frame_rate / (b * pushes * t)
            best[together] = min(best.get(together, rtf), rtf)
        rows.append({"streams": b, "alone_rtf": best[False], "batched_rtf": best[True],
                     "ratio": best[False] / best[True], "load_avg": os.getloadavg()[0]})
        print(f"stage: {b} streams, per-stream RTF alone {best[False]:.3f}, batched {best[True]:.3f}, "
              f"ratio {rows[-1]['ratio']:.2f} (load avg {rows[-1]['load_avg']:.1f})", flush=True)
    return rows


def table(rows: List[Dict[str, Any]]) -> str:
    lines = ["| max_batch | mode | streams | p50 | p95 | max | dropped chunks / samples | throughput | load avg |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['max_batch']} | {r['mode']} | {r['streams']} | {r['p50_ms']:.0f} ms | {r['p95_ms']:.0f} ms "
                     f"| {r['max_ms']:.0f} ms | {r['dropped_chunks']} / {r['missing_samples']} "
                     f"| {r['audio_x']:.2f}x real time | {r['load_avg']:.1f} |")
    return "\n".join(lines)


def main(argv: Sequence[str] = None) -> List[Dict[str, Any]]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--streams", type=int, default=4)
    p.add_argument("--seconds", type=float, default=4.0, help="audio per stream")
    p.add_argument("--chunk-ms", type=float, default=80.0)
    p.add_argument("--preset", default="rvq8_causal")
    p.add_argument("--max-batch", type=int, default=8, help="the batched server's max_batch (the other: 1)")
    p.add_argument("--batch-wait-ms", type=float, default=10.0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--smoke", action="store_true", help="a narrow model (numbers mean little; codes checked)")
    p.add_argument("--stage", type=int, action="append", help="also time the decoder+vocoder stage of this many "
                   "streams in-process, one by one vs batched (repeatable)")
    p.add_argument("--json", default=None)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    rows = run(a.streams, a.seconds, a.chunk_ms, a.preset, a.max_batch, a.batch_wait_ms, a.threads, a.device, a.smoke,
               a.stage or ())
    print(table(rows))
    sizes = [f"max_batch={r['max_batch']}: {r['batches']}" for r in rows if r["mode"] == "flood"]
    print("batches run (size: count): " + ", ".join(sizes))
    print(f"flood throughput batched / unbatched: {rows[0]['ratio']:.2f}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(rows, f, indent=1)
    return rows


if __name__ == "__main__":
    main()
