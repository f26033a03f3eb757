"""Write a token export (``python -m luna.tokenize``): plan, claim, shards, merge; :mod:`luna.tokens.reader` reads it.

Every readable file of the chosen subsets (``subsets=null``: ``data.subsets`` + ``data.val_subsets``; a
folder corpus without subsets: all of ``data.root``) is sorted by id, loaded at its own rate with
``luna.audio.load`` and tokenized alone with ``SpeechTokenizer.tokenize(wav, sr)``, so the stored codes
are exactly what the API returns for that file (batching would pad, and padding changes the last codes).
The output layout (shards, manifest.jsonl, failed.jsonl, codec.json) is documented in
:mod:`luna.tokens.reader`, which also reads it.

Resumable: each shard is written to a hidden temp file, fsynced and renamed into place; only then are its
manifest rows written the same way (``shards/shard-N.json``), and a restart skips every shard that has
both. ``manifest.jsonl``, ``failed.jsonl`` and finally ``codec.json`` are merged from those parts at the
end, so a directory holding ``codec.json`` is a finished export. ``shards/plan.json`` records the
checkpoint, corpus and shard size, and a restart with different ones is refused instead of mixed in.

Parallel like training: under torchrun or a multi-task SLURM job, shard ``i`` belongs to rank
``i % world_size``; rank 0 downloads and indexes the data first and merges the parts after a barrier.

Unreadable files are skipped with one warning line each, listed in ``failed.jsonl`` and counted at the
end. User errors (missing or incompatible checkpoint, bad settings, missing data, no readable file at
all) raise :class:`~luna.errors.LunaError` subclasses with one-line messages.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

import numpy as np
from hydra.utils import to_absolute_path
from omegaconf import DictConfig, OmegaConf

from luna.config import ConfigError
from luna.data.librispeech import DataError
from luna.devices import resolve_device
from luna.errors import TokensError
from luna.serialization import atomic_write, write_json, write_jsonl
from luna.tokens.reader import CODEC_FILE, FAILED_FILE, FORMAT, MANIFEST_FILE, PLAN_FILE, SHARD_DIR, shard_name
from luna.version import __version__

__all__ = ["PREFETCH", "export"]

log = logging.getLogger("luna.tokenize")

PREFETCH = 4  # files decoded ahead of the model, in threads (libsndfile releases the GIL)


def export(cfg: DictConfig) -> Optional[Dict[str, Any]]:
    """Run this process's share of the export; rank 0 returns the codec.json summary, other ranks None."""
    import torch

    from luna import distributed

    if OmegaConf.is_missing(cfg, "checkpoint"):
        raise ConfigError("checkpoint: missing; set checkpoint=PATH (a tokenizer or trainer checkpoint)")
    if OmegaConf.is_missing(cfg, "output_dir"):
        raise ConfigError("output_dir: missing; set output_dir=DIR")
    if int(cfg.shard_size) < 1:
        raise ConfigError(f"shard_size: must be >= 1, got {cfg.shard_size}")
    device = str(cfg.device)
    resolve_device(device, "device")  # a bad value is one ConfigError before anything starts
    out = Path(to_absolute_path(str(cfg.output_dir)))
    env = distributed.init(distributed.launch_mode(1), device)
    try:
        if not env.is_main:
            logging.getLogger().setLevel(logging.WARNING)  # one rank reports; the others only warn
        local = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
        if env.device.type == "cpu" and local > 1:  # ranks share this machine's cores
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // local))
        return _export(cfg, env, out)
    finally:
        distributed.cleanup()



def _export(cfg: DictConfig, env: Any, out: Path) -> Optional[Dict[str, Any]]:
    from luna.data import prepare
    from luna.models.load import load_tokenizer
    from luna import distributed

    t0 = time.time()
    checkpoint = Path(to_absolute_path(str(cfg.checkpoint)))
    tok = load_tokenizer(checkpoint, env.device)  # CheckpointError names the file
    n = _num_quantizers(cfg.num_quantizers, tok.num_quantizers)
    data_cfg = _data_config(cfg)
    shard_size = int(cfg.shard_size)
    shard_dir = out / SHARD_DIR

    # rank 0 downloads and indexes first, and claims the output dir; the others then read its cached manifest
    error, report, plan = None, None, None
    if env.is_main:
        try:
            report = prepare(data_cfg)
            entries = _sorted_entries(report.entries)
            plan = _plan(checkpoint, tok, n, shard_size, entries)
            _claim(out, plan)
        except (DataError, TokensError, OSError) as e:
            error = f"{e}"
    error = _from_rank0(error)
    if error is not None:
        raise TokensError(error)
    if not env.is_main:
        report = prepare(data_cfg)
        entries = _sorted_entries(report.entries)
    shards = [entries[i : i + shard_size] for i in range(0, len(entries), shard_size)]

    if env.is_main:
        for path, reason in report.failed:
            log.warning("skipping unreadable audio %s: %s", path, reason)
    mine = range(env.rank, len(shards), env.world_size)
    todo = [i for i in mine if not _finished(shard_dir, i)]
    done = len(mine) - len(todo)
    skipped_files = sum(len(shards[i]) for i in mine) - sum(len(shards[i]) for i in todo)
    if env.is_main:
        log.info(
            "tokenizing %d files of %s (%s) with %s on %s: %d shards of %d%s",
            len(entries), data_cfg.name, ", ".join(data_cfg.subsets) or data_cfg.root, cfg.checkpoint,
            env.device, len(shards), shard_size,
            f", {done} finished before (skipped)" if done else "",
        )
    from tqdm import tqdm

    with tqdm(total=sum(len(shards[i]) for i in mine), initial=skipped_files,
              disable=None if env.is_main else True, unit="file", desc="tokenize", dynamic_ncols=True) as bar:
        for i in todo:
            _export_shard(tok, n, i, shards[i], shard_dir, bar)
    distributed.barrier()
    if not env.is_main:
        return None
    summary = _merge(out, len(shards), report.failed, plan, checkpoint, tok, n, data_cfg)
    summary["elapsed_seconds"] = time.time() - t0
    summary["output_dir"] = str(out)
    if summary["num_utterances"] == 0:
        raise TokensError(f"none of the {summary['num_failed']} audio files could be read "
                            f"(listed in {out / FAILED_FILE})")
    return summary


def _num_quantizers(value: Any, available: int) -> int:
    if value is None:
        return available
    n = int(value)
    if not 1 <= n <= available:
        raise ConfigError(f"num_quantizers: must be in [1, {available}] for this checkpoint, got {value}")
    return n


def _data_config(cfg: DictConfig) -> DictConfig:
    """``cfg.data`` with the subsets to export as ``subsets`` (and no val_subsets, which are then included)."""
    if OmegaConf.is_missing(cfg.data, "root"):
        raise ConfigError(f"data.root: missing; data={cfg.data.name} needs data.root=DIR")
    data = OmegaConf.create(OmegaConf.to_container(cfg.data, resolve=True))
    chosen = cfg.get("subsets")
    if chosen is None:
        folder_root = data.kind == "folder" and not data.subsets  # all of root already includes any val dir
        chosen = [] if folder_root else list(dict.fromkeys([*data.subsets, *data.val_subsets]))
    elif isinstance(chosen, str):
        chosen = [chosen]
    data.subsets = [str(s) for s in chosen]
    data.val_subsets = []
    return data


def _sorted_entries(entries: Sequence[Any]) -> List[Any]:
    """By id, so shard contents do not depend on the file system's order; ids must be unique for lookup."""
    ordered = sorted(entries, key=lambda e: (e.id, e.path))
    for a, b in zip(ordered, ordered[1:]):
        if a.id == b.id:
            raise TokensError(f"utterance id {a.id!r} occurs twice ({a.path} and {b.path}); export these "
                                f"subsets separately")
    return ordered


def _plan(checkpoint: Path, tok: Any, n: int, shard_size: int, entries: Sequence[Any]) -> Dict[str, Any]:
    """What this export is of; a restart must match it exactly to reuse finished shards."""
    corpus = hashlib.sha256()
    for e in entries:
        corpus.update(f"{e.id}\t{e.path}\t{e.frames}\t{e.sample_rate}\n".encode("utf-8", "surrogateescape"))
    return {
        "format_version": FORMAT["version"],
        "checkpoint_sha256": _sha256(checkpoint),
        "model": OmegaConf.to_container(tok.config, resolve=True),
        "num_quantizers": n,
        "shard_size": shard_size,
        "num_files": len(entries),
        "corpus_sha256": corpus.hexdigest(),
    }


def _claim(out: Path, plan: Dict[str, Any]) -> None:
    """Write the plan into a new output dir, or check that an existing one is the same export."""
    path = out / SHARD_DIR / PLAN_FILE
    if path.is_file():
        try:
            old = json.loads(path.read_text(encoding="utf-8"))
        except ValueError:
            raise TokensError(f"{path}: damaged; delete {out} to start over") from None
        differ = [k for k in plan if old.get(k) != plan[k]]
        if differ:
            raise TokensError(f"{out} holds another export (different {', '.join(differ)}); use another "
                                f"output_dir, or delete it to start over")
        return
    write_json(plan, path)


def _from_rank0(error: Optional[str]) -> Optional[str]:
    """Rank 0's error (or None) on every rank, so a failure ends all ranks instead of hanging them."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return error
    box = [error]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _finished(shard_dir: Path, index: int) -> bool:
    name = shard_name(index)
    return (shard_dir / f"{name}.json").is_file() and (shard_dir / f"{name}.npy").is_file()


def _export_shard(tok: Any, n: int, index: int, entries: Sequence[Any], shard_dir: Path, bar: Any) -> None:
    """Tokenize one shard; the .npy is in place (fsynced) before its rows are, so rows never point at nothing."""
    name = shard_name(index)
    for stale in shard_dir.glob(f".{name}.*.tmp"):  # left by a run killed mid-write
        stale.unlink(missing_ok=True)
    rel = f"{SHARD_DIR}/{name}.npy"
    blocks: List[np.ndarray] = []
    rows: List[Dict[str, Any]] = []
    failed: List[Dict[str, str]] = []
    offset = 0
    for e, loaded in _prefetched(_read, entries, PREFETCH):
        if isinstance(loaded, str):
            log.warning("skipping unreadable audio %s: %s", e.path, loaded)
            failed.append({"source_path": e.path, "reason": loaded})
        else:
            wav, sr = loaded
            codes = tok.tokenize(wav, sr, n)[0].cpu().numpy()  # [n, T] int64
            blocks.append(codes.astype(np.int16))  # codebook_size <= 32768 (luna.config)
            row = {"id": e.id, "source_path": e.path, "duration": wav.numel() / sr, "shard": rel,
                   "offset": offset, "frames": int(codes.shape[1])}
            if e.transcript:
                row["transcript"] = e.transcript
            rows.append(row)
            offset += codes.shape[1]
        bar.update(1)
    array = np.concatenate(blocks, axis=1) if blocks else np.zeros((n, 0), dtype=np.int16)
    atomic_write(shard_dir / f"{name}.npy", lambda f: np.save(f, array, allow_pickle=False))
    part = {"shard": rel, "rows": rows, "failed": failed}
    write_json(part, shard_dir / f"{name}.json", indent=None)


def _read(entry: Any):
    """(wav, sr) at the file's own rate, or the reason it cannot be read."""
    from luna.audio import AudioError, load

    try:
        return load(entry.path)
    except AudioError as e:
        return str(e)


def _prefetched(fn: Callable[[Any], Any], items: Iterable[Any], depth: int) -> Iterator[Tuple[Any, Any]]:
    """``(item, fn(item))`` in order, with up to ``depth`` calls running ahead in threads."""
    with ThreadPoolExecutor(max_workers=min(depth, 2)) as pool:
        pending: deque = deque()
        for item in items:
            pending.append((item, pool.submit(fn, item)))
            if len(pending) > depth:
                head, future = pending.popleft()
                yield head, future.result()
        while pending:
            head, future = pending.popleft()
            yield head, future.result()


def _merge(out: Path, num_shards: int, index_failed: Sequence[Tuple[str, str]], plan: Dict[str, Any],
           checkpoint: Path, tok: Any, n: int, data_cfg: DictConfig) -> Dict[str, Any]:
    """manifest.jsonl and failed.jsonl from the shard parts, then codec.json (last: it marks the export finished)."""
    # every rank is past the barrier, so no temp file is still being written: clear those of killed runs
    for stale in [*(out / SHARD_DIR).glob(".*.tmp"), *(t for name in (MANIFEST_FILE, FAILED_FILE, CODEC_FILE)
                                                         for t in out.glob(f".{name}.*.tmp"))]:
        stale.unlink(missing_ok=True)
    rows: List[Dict[str, Any]] = []
    failed = [{"source_path": p, "reason": r} for p, r in index_failed]
    for i in range(num_shards):
        part = json.loads((out / SHARD_DIR / f"{shard_name(i)}.json").read_text(encoding="utf-8"))
        rows += part["rows"]
        failed += part["failed"]
    failed.sort(key=lambda f: f["source_path"])
    write_jsonl(rows, out / MANIFEST_FILE)
    write_jsonl(failed, out / FAILED_FILE)
    codec = {
        "luna_version": __version__,
        "checkpoint": str(checkpoint),
        "checkpoint_sha256": plan["checkpoint_sha256"],
        "sample_rate": tok.sample_rate,
        "tokens_per_second": tok.frame_rate,
        "samples_per_token": tok.samples_per_token,
        "num_quantizers": n,
        "codebook_size": tok.codebook_size,
        "bitrate": tok.rate.at(n).bitrate,  # bits/s of the exported streams
        "num_utterances": len(rows),
        "num_failed": len(failed),
        "num_shards": num_shards,
        "shard_size": plan["shard_size"],
        "total_frames": sum(r["frames"] for r in rows),
        "total_seconds": sum(r["duration"] for r in rows),
        "data": {"name": data_cfg.name, "kind": data_cfg.kind, "root": str(data_cfg.root),
                 "subsets": list(data_cfg.subsets)},
        "format": FORMAT,
        "model": plan["model"],
    }
    write_json(codec, out / CODEC_FILE)
    return codec


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
