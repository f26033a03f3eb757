"""Read a token export written by ``python -m luna.tokenize``: ``tokens = luna.tokens.open(DIR)``.

Layout of an export directory (format ``luna-tokens`` version 1; ``codec.json["format"]`` repeats it)::

    codec.json          how the tokens were made: checkpoint sha256, model config, sample_rate,
                        tokens_per_second, bitrate, num_quantizers, codebook_size, luna version, counts.
                        Written last: a directory without it is an unfinished export.
    manifest.jsonl      one utterance per line, sorted by id: id, source_path, duration (seconds of the
                        source file), shard, offset, frames, and transcript where the corpus has one.
    failed.jsonl        files that could not be read and were skipped: source_path, reason.
    shards/shard-NNNNN.npy   int16 [num_quantizers, total_frames]: the codes of the shard's utterances
                        concatenated along time in manifest order. An utterance is
                        ``np.load(DIR / shard)[:, offset:offset + frames]``.
    shards/shard-NNNNN.json  that shard's manifest rows and failures; its presence marks the shard done.
    shards/plan.json    what is being exported (checkpoint, corpus, shard size): a restart cannot mix two.

Shard ``i`` holds sorted utterances ``[i * shard_size, (i + 1) * shard_size)`` minus the unreadable ones.
int16 because codebooks hold at most 32768 codes (``luna.config.validate_model`` enforces it); ``.npy``
because any numpy can memory-map it without luna.

Usage::

    tokens = luna.tokens.open("tokens/clean100")
    tokens.codec["tokens_per_second"]
    for utt_id, codes in tokens:          # codes: numpy int64 [num_quantizers, frames]
        ...
    codes = tokens["103-1240-0000"]       # torch.from_numpy(codes)[None] == tokenizer.tokenize(wav, sr)
"""
from __future__ import annotations

import io
import json
from collections import OrderedDict
from pathlib import Path
from typing import Any, Dict, Iterator, List, Tuple, Union

import numpy as np
from luna.errors import TokensError  # noqa: F401 - raised here, importable from here

__all__ = ["TokenSet", "TokensError", "open", "FORMAT", "shard_name"]

CODEC_FILE = "codec.json"
MANIFEST_FILE = "manifest.jsonl"
FAILED_FILE = "failed.jsonl"
SHARD_DIR = "shards"
PLAN_FILE = "plan.json"

#: written into codec.json so a reader without luna knows how to slice the shards
FORMAT: Dict[str, Any] = {
    "name": "luna-tokens",
    "version": 1,
    "shards": SHARD_DIR + "/shard-{index:05d}.npy",
    "dtype": "int16",
    "layout": "[num_quantizers, total_frames]: the shard's utterances concatenated along time in manifest order",
    "utterance": "codes = numpy.load(DIR / row['shard'])[:, row['offset']:row['offset'] + row['frames']]",
    "manifest": MANIFEST_FILE + ": one JSON object per utterance, sorted by id: id, source_path, duration, "
                "shard, offset, frames[, transcript]",
    "failed": FAILED_FILE + ": one JSON object per skipped file: source_path, reason",
    "loader": "luna.tokens.open(DIR)",
}



def shard_name(index: int) -> str:
    """``shard-00042``: zero-padded so a directory listing is in shard order."""
    return f"shard-{index:05d}"


class TokenSet:
    """The utterances of one export: ``len``, iteration of ``(id, codes)`` in id order, ``tokens[id]``.

    ``codes`` is a numpy ``int64 [num_quantizers, frames]`` array (a copy: shards stay read-only memory
    maps, at most ``max_open_shards`` at a time so a large export never runs out of file descriptors).
    Picklable, so it can be handed to DataLoader workers (each reopens the shards it touches).
    """

    def __init__(self, root: Union[str, Path], max_open_shards: int = 64):
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"{self.root}: no such directory")
        codec_path = self.root / CODEC_FILE
        if not codec_path.is_file():
            if (self.root / SHARD_DIR).is_dir():
                raise TokensError(f"{self.root}: unfinished export (no {CODEC_FILE}); run luna.tokenize again "
                                  f"with the same arguments to finish it")
            raise TokensError(f"{self.root}: not a luna token export (no {CODEC_FILE})")
        self.codec: Dict[str, Any] = json.loads(codec_path.read_text(encoding="utf-8"))
        fmt = self.codec.get("format") or {}
        if fmt.get("name") != FORMAT["name"] or fmt.get("version") != FORMAT["version"]:
            raise TokensError(f"{codec_path}: format {fmt.get('name')!r} v{fmt.get('version')} is not "
                              f"{FORMAT['name']} v{FORMAT['version']}")
        with io.open(self.root / MANIFEST_FILE, encoding="utf-8") as f:
            self.rows: List[Dict[str, Any]] = [json.loads(line) for line in f if line.strip()]
        if len(self.rows) != self.codec.get("num_utterances"):
            raise TokensError(f"{self.root / MANIFEST_FILE}: {len(self.rows)} rows, but {CODEC_FILE} says "
                              f"{self.codec.get('num_utterances')}")
        self._index = {row["id"]: i for i, row in enumerate(self.rows)}
        self.num_quantizers = int(self.codec["num_quantizers"])
        self.max_open_shards = max(1, int(max_open_shards))
        self._open: "OrderedDict[str, np.ndarray]" = OrderedDict()

    def __len__(self) -> int:
        return len(self.rows)

    def __iter__(self) -> Iterator[Tuple[str, np.ndarray]]:
        for row in self.rows:
            yield row["id"], self._codes(row)

    def __getitem__(self, utt_id: str) -> np.ndarray:
        return self._codes(self.rows[self._position(utt_id)])

    def __contains__(self, utt_id: object) -> bool:
        return utt_id in self._index

    def ids(self) -> List[str]:
        return [row["id"] for row in self.rows]

    def info(self, utt_id: str) -> Dict[str, Any]:
        """The utterance's manifest row (source_path, duration, shard, offset, frames, transcript)."""
        return dict(self.rows[self._position(utt_id)])

    def _position(self, utt_id: str) -> int:
        try:
            return self._index[utt_id]
        except KeyError:
            raise KeyError(f"{utt_id!r} is not in the token export {self.root}") from None

    def _codes(self, row: Dict[str, Any]) -> np.ndarray:
        shard = self._shard(row["shard"])
        offset, frames = int(row["offset"]), int(row["frames"])
        if offset + frames > shard.shape[1]:
            raise TokensError(f"{self.root / row['shard']}: {row['id']} needs frames [{offset}, {offset + frames}) "
                              f"of {shard.shape[1]}")
        return shard[:, offset : offset + frames].astype(np.int64)

    def _shard(self, name: str) -> np.ndarray:
        shard = self._open.get(name)
        if shard is not None:
            self._open.move_to_end(name)
            return shard
        path = self.root / name
        shard = np.load(path, mmap_mode="r", allow_pickle=False)
        if shard.ndim != 2 or shard.shape[0] != self.num_quantizers or shard.dtype != np.int16:
            raise TokensError(f"{path}: expected int16 [{self.num_quantizers}, frames], got "
                              f"{shard.dtype} {list(shard.shape)}")
        self._open[name] = shard
        if len(self._open) > self.max_open_shards:
            self._open.popitem(last=False)
        return shard

    def __getstate__(self) -> Dict[str, Any]:
        state = dict(self.__dict__)
        state["_open"] = OrderedDict()  # memory maps are per process
        return state

    def __repr__(self) -> str:
        return (f"TokenSet({str(self.root)!r}: {len(self)} utterances, {self.num_quantizers} x "
                f"{self.codec.get('codebook_size')} codes at {self.codec.get('tokens_per_second')} tokens/s)")


def open(path: Union[str, Path], max_open_shards: int = 64) -> TokenSet:  # noqa: A001 (luna.tokens.open)
    """Open a finished export written by ``python -m luna.tokenize``."""
    return TokenSet(path, max_open_shards)
