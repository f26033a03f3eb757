"""Stateful streaming layers: every convolution keeps the input frames it still needs between pushes, so a push
computes only the output frames that became final (no recomputed context).

A stream layer turns the next input frames ``[B, C, n]`` into the next output frames that are final,
``step(x, last=False)``; ``last=True`` ends the stream (the right zero padding of a 'same' conv, the overlap tail
of a transposed conv) and returns the rest. ``produced(n)`` is how many frames come out of ``n`` frames in
before the end (the lag of the layer). ``reset()`` starts a new stream. Each output frame is computed from the
very same input frames, weights and zero padding as in the module's whole-clip forward, so a stream equals
the whole clip to float rounding (tests/streaming/).

- :func:`conv` → :class:`Conv`: a stride-1 ``Conv1d`` (its ``padding`` zeros at the two real ends, its last
  ``(k-1)·d`` input frames kept) or :class:`ConvTranspose`: overlap-add (the pending output sums kept;
  ``padding`` cropped at the two real ends);
- :class:`Pointwise` (per-frame functions), :class:`Chain`, :class:`Residual` (skip frames queued until
  the branch catches up), :class:`Mean` (parallel branches, summed in order as they align), :class:`Drop`.

Batching streams (luna/streaming/batch.py): ``state()`` is a layer's per-stream state as a flat list (tensors
``[1, C, k]`` or None, and int counters), ``load(items)`` sets it from an iterator of such items; ``key()`` is
what two streams must share to step together as rows of one batch (tensor lengths, counters that still change
the result: a transposed conv's count only while its left crop lasts, a Drop's frames left).
"""
from __future__ import annotations

from typing import Callable, Iterator, List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn


def _length(t: Optional[torch.Tensor]) -> Optional[int]:
    return None if t is None else t.shape[-1]


def conv(module: nn.Module, pad: Optional[int] = None):
    """The stream form of a ``Conv1d`` (stride 1) or ``ConvTranspose1d``; ``pad`` overrides its padding."""
    if module.groups != 1 or module.padding_mode != "zeros" or isinstance(module.padding, str) or (
            module.dilation[0] != 1 and isinstance(module, nn.ConvTranspose1d)):
        raise ValueError(f"cannot stream {module}: grouped, not zero-padded by number, or dilated transposed")
    return (ConvTranspose if isinstance(module, nn.ConvTranspose1d) else Conv)(module, pad)


class Conv:
    """A stride-1 ``Conv1d``: keeps its last (k-1)·d input frames; ``pad`` zeros before the first frame and after
    the last ('same' padding; 0 for a causal valid conv)."""

    def __init__(self, module: nn.Conv1d, pad: Optional[int] = None):
        if module.stride[0] != 1:
            raise ValueError(f"cannot stream {module}: strided")
        self.conv = module
        self.pad = module.padding[0] if pad is None else int(pad)
        self.keep = (module.kernel_size[0] - 1) * module.dilation[0]
        self.reset()

    def reset(self) -> None:
        self.buffer: Optional[torch.Tensor] = None  # [B, C_in, ≤ keep]: the input frames still needed

    def state(self) -> list:
        return [self.buffer]

    def load(self, items: Iterator) -> None:
        self.buffer = next(items)

    def key(self) -> tuple:
        return (_length(self.buffer),)

    def produced(self, n: int) -> int:
        return max(0, n + self.pad - self.keep)

    def step(self, x: torch.Tensor, last: bool = False) -> torch.Tensor:
        c = self.conv
        if self.buffer is None:  # the left zero padding
            self.buffer = x.new_zeros(x.shape[0], x.shape[1], self.pad)
        buf = torch.cat([self.buffer, x], dim=-1) if x.shape[-1] else self.buffer
        self.buffer = None if last else buf[..., buf.shape[-1] - min(self.keep, buf.shape[-1]) :]
        if last and self.pad:
            buf = F.pad(buf, (0, self.pad))  # the right zero padding
        if buf.shape[-1] <= self.keep:
            return buf.new_zeros(buf.shape[0], c.out_channels, 0)
        return F.conv1d(buf, c.weight, c.bias, dilation=c.dilation)


class ConvTranspose:
    """A ``ConvTranspose1d`` (stride u, kernel k) by overlap-add: each push adds the new frames' contributions to
    the pending sums the previous frames left; output i is final once input i // u has arrived; ``pad`` outputs
    cropped at each end. The contributions are one matmul (PyTorch's native transposed conv is ~7× slower on
    the few frames of a push)."""

    def __init__(self, module: nn.ConvTranspose1d, pad: Optional[int] = None):
        self.conv = module
        self.pad = module.padding[0] if pad is None else int(pad)
        self.u, self.k = module.stride[0], module.kernel_size[0]
        self.m = -(-self.k // self.u)  # input frames one output reads at most (the kernel in blocks of u)
        self.cached: tuple = ()
        self.reset()

    def reset(self) -> None:
        self.tail: Optional[torch.Tensor] = None  # [B, C_out, (m - 1)·u]: sums pending for the next outputs, no bias
        self.received = 0  # input frames so far

    def state(self) -> list:
        return [self.tail, self.received]

    def load(self, items: Iterator) -> None:
        self.tail, self.received = next(items), next(items)

    def key(self) -> tuple:  # once received·u ≥ pad the count only matters at the end (last=True)
        return (_length(self.tail), min(self.received, -(-self.pad // self.u)))

    def produced(self, n: int) -> int:
        return max(0, n * self.u - self.pad)

    def _weight(self) -> torch.Tensor:
        """The weight as ``[C_in, C_out · m · u]`` (kernel zero-padded to m·u), cached while it is unchanged."""
        w = self.conv.weight
        if self.cached != (w.data_ptr(), w._version, w.device, w.dtype):
            self.cached = (w.data_ptr(), w._version, w.device, w.dtype)
            self.w = F.pad(w.detach(), (0, self.m * self.u - self.k)).reshape(w.shape[0], -1)
        return self.w

    def step(self, x: torch.Tensor, last: bool = False) -> torch.Tensor:
        c, u, m = self.conv, self.u, self.m
        b, n = x.shape[0], x.shape[-1]
        if self.tail is None:
            self.tail = x.new_zeros(b, c.out_channels, (m - 1) * u)
        y = self.tail
        if n:  # contributions [B, n, C_out, m, u], added at output blocks t .. t + m - 1 of frame t
            parts = (x.transpose(1, 2) @ self._weight()).view(b, n, -1, m, u).permute(0, 2, 3, 1, 4)
            y = x.new_zeros(b, c.out_channels, n + m - 1, u)
            for i in range(m):
                y[:, :, i : i + n] += parts[:, :, i]
            y = y.view(b, c.out_channels, -1)
            y[..., : self.tail.shape[-1]] += self.tail
        start = self.received * u  # uncropped index of y[0]
        self.received += n
        end = ((self.received - 1) * u + self.k - self.pad if self.received else 0) if last else self.received * u
        self.tail = y[..., self.received * u - start :]
        y = y[..., max(0, self.pad - start) : max(0, end - start)]
        if c.bias is not None:
            y = y + c.bias[:, None]
        if last:
            self.reset()
        return y


class Pointwise:
    """A function of each frame alone (activation, per-frame norm): no state, no lag."""

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor]):
        self.fn = fn

    def reset(self) -> None:
        pass

    def state(self) -> list:
        return []

    def load(self, items: Iterator) -> None:
        pass

    def key(self) -> tuple:
        return ()

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

    def state(self) -> list:
        return [self.left]

    def load(self, items: Iterator) -> None:
        self.left = next(items)

    def key(self) -> tuple:
        return (self.left,)

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

    def state(self) -> list:
        return [item for layer in self.layers for item in layer.state()]

    def load(self, items: Iterator) -> None:
        for layer in self.layers:
            layer.load(items)

    def key(self) -> tuple:
        return tuple(layer.key() for layer in self.layers)

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

    def state(self) -> list:
        return [*self.branch.state(), *self.skip.state(), self.queue]

    def load(self, items: Iterator) -> None:
        self.branch.load(items)
        self.skip.load(items)
        self.queue = next(items)

    def key(self) -> tuple:
        return (self.branch.key(), self.skip.key(), _length(self.queue))

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

    def state(self) -> list:
        return [item for b in self.branches for item in b.state()] + self.queues

    def load(self, items: Iterator) -> None:
        for b in self.branches:
            b.load(items)
        self.queues = [next(items) for _ in self.branches]

    def key(self) -> tuple:
        return (tuple(b.key() for b in self.branches), tuple(_length(q) for q in self.queues))

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
