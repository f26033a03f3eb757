"""Several streams of one model stepped together: the rows of one batched forward, each with its own state.

Stream layers (luna/streaming/stateful.py) keep each stream's state as ``[1, C, k]`` tensors and int counters
(``state()`` / ``load()``). :func:`step_many` concatenates B streams' states along the batch dim into the
first stream's layers, runs one ``step`` on ``[B, C, n]``, then splits the new state back, row i to stream i
(a counter: the stream's own plus the batch's change). It needs streams with equal ``key()`` and the same
``n``; :func:`groups` sorts streams into such groups. Each row reads the same numbers as its stream alone, so a
batched stream equals the stream stepped alone to float rounding (kernels pick their blocking by shape: ~1e-7
relative; tests/streaming/test_batch.py).

:func:`push_many` is ``StreamingDecoder.push`` for many decoders: per group, one ``quantizer.decode``, one
decoder step, one vocoder step on the stacked rows. The encoder is not batched here: a stream's codes must be
bit-identical to ``tokenize`` (batch 1), and a batched encoder forward rounds the latents differently (measured
on CPU: up to 6e-7), which can flip a code.
"""
from __future__ import annotations

from typing import Any, Dict, Hashable, List, Sequence

import torch

from luna.streaming.decoder import StreamingDecoder


def step_many(streams: Sequence[Any], x: torch.Tensor) -> torch.Tensor:
    """``streams`` (stream layers with equal ``key()``), ``x`` ``[B, C, n]`` (row i for stream i) → the outputs
    ``[B, C', n']`` of ``streams[i].step(x[i:i+1])`` for all i at once; every stream's state advances."""
    before = [s.state() for s in streams]
    lead = streams[0]
    lead.load(iter([_stack([b[j] for b in before]) for j in range(len(before[0]))]))
    y = lead.step(x)
    after = lead.state()
    for i, (stream, mine) in enumerate(zip(streams, before)):
        stream.load(iter([_row(a, i, m, first) for a, m, first in zip(after, mine, before[0])]))
    return y


def _stack(items: List[Any]) -> Any:
    """One state item of every stream → the batch's (tensors concatenated; None or counters: the lead's)."""
    return torch.cat(items) if torch.is_tensor(items[0]) else items[0]


def _row(after: Any, i: int, mine: Any, lead: Any) -> Any:
    """Stream i's share of the batch's new state item ``after``."""
    if torch.is_tensor(after):
        return after[i : i + 1]
    if after is None:
        return None
    return mine + (after - lead)  # a counter: it moved as the lead's did


def groups(keys: Sequence[Hashable]) -> List[List[int]]:
    """Indices with equal keys together, groups in order of first appearance, indices in order."""
    out: Dict[Hashable, List[int]] = {}
    for i, k in enumerate(keys):
        out.setdefault(k, []).append(i)
    return list(out.values())


@torch.no_grad()
def push_many(decoders: Sequence[StreamingDecoder], codes: Sequence[torch.Tensor]) -> List[torch.Tensor]:
    """``[d.push(c) for d, c in zip(decoders, codes)]`` (distinct decoders of one tokenizer, codes ``[1, n, t]``),
    with one batched forward per stage for each group of streams whose states and ``(n, t)`` match."""
    def key(d: StreamingDecoder, c: torch.Tensor) -> tuple:
        return tuple(c.shape), d.layers.key(), d.vocoder.layers.key() if d.vocoder is not None else None

    out: List[Any] = [None] * len(decoders)
    for idx in groups([key(d, c) for d, c in zip(decoders, codes)]):
        if len(idx) == 1 or codes[idx[0]].shape[-1] == 0:
            for i in idx:
                out[i] = decoders[i].push(codes[i])
            continue
        ds = [decoders[i] for i in idx]
        audio = _push_group(ds, torch.cat([codes[i] for i in idx]))
        for row, (i, d) in enumerate(zip(idx, ds)):
            out[i] = d._aligned(audio[row : row + 1])
    return out


def _push_group(ds: List[StreamingDecoder], codes: torch.Tensor) -> torch.Tensor:
    """Codes ``[B, n, t]`` of B matching decoders → their vocoders' new audio ``[B, samples]`` (not yet aligned)."""
    tok = ds[0].tok
    latents = tok.quantizer.decode(codes.to(tok.device).long())
    mel = step_many([d.layers for d in ds], latents) * tok._scale + tok._offset  # as push_mel
    for row, d in enumerate(ds):
        d.last_mel = mel[row : row + 1]
    vocoder = ds[0]._vocoder()  # as StreamingVocoder.push
    w = vocoder.generator.conv_pre.weight
    vocoder.vocoder._check_input(mel)
    return step_many([d.vocoder.layers for d in ds], mel.to(device=w.device, dtype=w.dtype))[:, 0]
