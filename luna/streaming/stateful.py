"""Stateful streaming layers: every convolution keeps the input frames it still needs between pushes, so a push
computes only the output frames that became final (no recomputed context).

A stream layer turns the next input frames ``[B, C, n]`` into the next output frames that are final,
``step(x, last=False)``; ``last=True`` ends the stream (the right zero padding of a 'same' conv, the overlap tail
of a transposed conv) and returns the rest. ``produced(n)`` is how many frames come out of ``n`` frames in
before the end (the lag of the layer). ``reset()`` starts a new stream. Each output frame is computed from the
very same input frames, weights and zero padding as in the module's whole-clip forward, so a stream equals
the whole clip to float rounding (tests/streaming/).

- :class:`Conv`: a stride-1 ``Conv1d`` (its ``padding`` zeros on both ends, ``(k-1)·d`` frames kept) or a
  ``ConvTranspose1d`` (``floor((k-1)/u)`` input frames kept; full output index ``i`` is final once input
  ``i // u`` has arrived; ``padding`` cropped at both ends);
- :class:`Pointwise` (per-frame functions), :class:`Chain`, :class:`Residual` (skip frames queued until
  the branch catches up), :class:`Mean` (parallel branches, summed in order as they align), :class:`Drop`.
"""
from __future__ import annotations

from typing import Callable, List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn


class Conv:
    """A ``Conv1d`` (stride 1) or ``ConvTranspose1d`` on a stream; ``pad`` overrides the module's padding."""

    def __init__(self, conv: nn.Module, pad: Optional[int] = None):
        self.conv = conv
        self.transposed = isinstance(conv, nn.ConvTranspose1d)
        k, d, self.stride = conv.kernel_size[0], conv.dilation[0], conv.stride[0]
        if conv.groups != 1 or (self.transposed and d != 1) or (not self.transposed and self.stride != 1):
            raise ValueError(f"cannot stream {conv}: groups, a dilated transposed conv or a strided conv")
        self.pad = conv.padding[0] if pad is None else int(pad)
        self.k = k
        self.keep = (k - 1) // self.stride if self.transposed else (k - 1) * d  # past input frames kept
        self.reset()

    def reset(self) -> None:
        self.buffer: Optional[torch.Tensor] = None  # [B, C_in, ≤ keep (+ pad at the start)]: frames kept
        self.received = 0  # input frames so far
        self.emitted = 0  # transposed: full (uncropped) output frames computed so far

    def produced(self, n: int) -> int:
        return max(0, n * self.stride - self.pad) if self.transposed else max(0, n + self.pad - self.keep)

    def step(self, x: torch.Tensor, last: bool = False) -> torch.Tensor:
        if self.buffer is None:  # the conv's left zero padding ('same' conv); nothing for a transposed one
            self.buffer = x.new_zeros(x.shape[0], x.shape[1], 0 if self.transposed else self.pad)
        self.received += x.shape[-1]
        buf = torch.cat([self.buffer, x], dim=-1) if x.shape[-1] else self.buffer
        y = self._transposed(buf, last) if self.transposed else self._conv(buf, last)
        self.buffer = buf[..., buf.shape[-1] - min(self.keep, buf.shape[-1]) :]
        if last:
            self.reset()
        return y

    def _conv(self, buf: torch.Tensor, last: bool) -> torch.Tensor:
        c = self.conv
        if last and self.pad:
            buf = F.pad(buf, (0, self.pad))  # the right zero padding
        if buf.shape[-1] <= self.keep:
            return buf.new_zeros(buf.shape[0], c.out_channels, 0)
        return F.conv1d(buf, c.weight, c.bias, dilation=c.dilation)

    def _transposed(self, buf: torch.Tensor, last: bool) -> torch.Tensor:
        c, u = self.conv, self.stride
        start = self.received - buf.shape[-1]  # input index of buf[0]
        full = (self.received - 1) * u + self.k if self.received else 0  # full output length so far
        end = full - self.pad if last else self.received * u  # full outputs now final (the end cropped)
        lo = max(self.emitted, self.pad)  # the start cropped
        self.emitted = max(self.emitted, end)
        if end <= lo:
            return buf.new_zeros(buf.shape[0], c.out_channels, 0)
        y = F.conv_transpose1d(buf, c.weight, c.bias, stride=u)  # full outputs from start · u on
        return y[..., lo - start * u : end - start * u]


class Pointwise:
    """A function of each frame alone (activation, per-frame norm): no state, no lag."""

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor]):
        self.fn = fn

    def reset(self) -> None:
        pass

    def produced(self, n: int) -> int:
        return n

    def step(self, x: torch.Tensor, last: bool = False) -> torch.Tensor:
        return self.fn(x)


class Drop:
    """Drops the stream's first ``n`` frames (a whole-clip ``x[..., n:]``)."""

    def __init__(self, n: int):
        self.n = n
        self.reset()

    def reset(self) -> None:
        self.left = self.n

    def produced(self, n: int) -> int:
        return max(0, n - self.n)

    def step(self, x: torch.Tensor, last: bool = False) -> torch.Tensor:
        k = min(self.left, x.shape[-1])
        self.left = self.n if last else self.left - k
        return x[..., k:]


class Chain:
    """Layers one after another (an ``nn.Sequential``)."""

    def __init__(self, layers: Sequence):
        self.layers = list(layers)

    def reset(self) -> None:
        for layer in self.layers:
            layer.reset()

    def produced(self, n: int) -> int:
        for layer in self.layers:
            n = layer.produced(n)
        return n

    def step(self, x: torch.Tensor, last: bool = False) -> torch.Tensor:
        for layer in self.layers:
            x = layer.step(x, last)
        return x


class Residual:
    """``branch(x) + x[..., drop:]``: skip frames wait in a queue until the (lagging) branch reaches them."""

    def __init__(self, branch, drop: int = 0):
        self.branch, self.skip = branch, Drop(drop)
        self.reset()

    def reset(self) -> None:
        self.branch.reset()
        self.skip.reset()
        self.queue: Optional[torch.Tensor] = None

    def produced(self, n: int) -> int:
        return min(self.branch.produced(n), self.skip.produced(n))

    def step(self, x: torch.Tensor, last: bool = False) -> torch.Tensor:
        y = self.branch.step(x, last)
        skip = self.skip.step(x, last)
        q = skip if self.queue is None else torch.cat([self.queue, skip], dim=-1)
        n = y.shape[-1]
        self.queue = None if last else q[..., n:]
        return y + q[..., :n]


class Mean:
    """``(b_0(x) + b_1(x) + …) / len(branches)``, summed in that order, as far as every branch has come."""

    def __init__(self, branches: Sequence):
        self.branches = list(branches)
        self.reset()

    def reset(self) -> None:
        for b in self.branches:
            b.reset()
        self.queues: List[Optional[torch.Tensor]] = [None] * len(self.branches)

    def produced(self, n: int) -> int:
        return min(b.produced(n) for b in self.branches)

    def step(self, x: torch.Tensor, last: bool = False) -> torch.Tensor:
        ys = [b.step(x, last) for b in self.branches]
        qs = [y if q is None else torch.cat([q, y], dim=-1) for q, y in zip(self.queues, ys)]
        n = min(q.shape[-1] for q in qs)
        self.queues = [None if last else q[..., n:] for q in qs]
        out = qs[0][..., :n]
        for q in qs[1:]:
            out = out + q[..., :n]
        return out / len(qs)
