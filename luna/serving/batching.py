"""Stream chunks of many connections computed together (``max_batch`` > 1 in ``python -m luna.serve``).

The scheduler (luna/serving/scheduler.py) hands a worker up to ``max_batch`` waiting stream jobs with equal
:func:`together` keys (same client rate, quantizers, chunk length, audio on), one per connection, and the worker
runs :func:`push_streams` on them once:

1. each stream's encoder, one after another: codes must stay bit-identical to ``tok.tokenize`` (batch 1), and a
   batched encoder forward rounds the latents differently (luna/streaming/batch.py);
2. the decoders and vocoders of the streams that reconstruct audio: one ``quantizer.decode``, one causal decoder
   step and one HiFi-GAN step per group of streams whose states and token counts match, each stream's cached
   state gathered into the batch and scattered back (luna/streaming/batch.py). The audio equals each stream
   alone to float rounding.

A stream's error (e.g. audio its resampler refuses) is that job's alone; the others' outputs still come back.
"""
from __future__ import annotations

from typing import Any, Hashable, List, Optional, Sequence, Tuple

import torch

from luna.serving.protocol import Hello
from luna.serving.session import Output, StreamSession
from luna.streaming.batch import push_many


def together(hello: Hello, pcm: torch.Tensor) -> Optional[Hashable]:
    """The batch key of a stream job: jobs batch only with jobs of equal keys; None (never batched) for streams
    without audio out (nothing to share: their encoders run one by one anyway)."""
    if hello.mode != "stream" or not hello.audio:
        return None
    return "stream", hello.sample_rate, hello.num_quantizers, pcm.numel()


def push_one(session: StreamSession, pcm: torch.Tensor) -> Output:
    return session.push(pcm)


@torch.no_grad()
def push_streams(jobs: Sequence[Tuple[StreamSession, torch.Tensor]]) -> List[Any]:
    """``[push_one(s, pcm) for s, pcm in jobs]`` (distinct sessions of one model), decoders batched; an item is
    an exception where that stream's encoder raised."""
    outs: List[Any] = []
    for session, pcm in jobs:
        try:
            outs.append(session.take(session.encoder.push(pcm)))
        except Exception as e:  # noqa: BLE001 - that connection's error (bad input), not the batch's
            outs.append(e)
    live = [i for i, c in enumerate(outs) if not isinstance(c, Exception)]
    codes = {i: outs[i] for i in live}
    for i in live:
        outs[i] = jobs[i][0].codes_out(codes[i])
    speaking = [i for i in live if jobs[i][0].decoder is not None and codes[i].shape[-1]]
    audio = push_many([jobs[i][0].decoder for i in speaking], [codes[i][None] for i in speaking])
    parts = {i: [a] for i, a in zip(speaking, audio)}
    for i in live:
        if jobs[i][0].decoder is not None:
            jobs[i][0].audio_out(outs[i], parts.get(i, []))
    return outs
