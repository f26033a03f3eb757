"""Incremental resampling: torchaudio's windowed-sinc kernel (luna.audio's cached polyphase form), kept state.

``luna.audio.resample`` computes output block s (``new'`` samples) from padded input samples
``[s·o', (s + taps)·o')`` (o' = the reduced input rate, ``width`` zeros on the left). A stream computes each
block as soon as its input has arrived, and keeps the input the next block reads; ``flush`` pads zeros as
the whole-file resampler does, so the concatenated output has exactly its length (ceil(new/orig · S)) and its
values to float rounding.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from luna.audio import _polyphase


class StreamingResampler:
    """``push(x [S]) → y [S']`` at ``new`` Hz, ``flush() → the tail``; then ready for a new stream."""

    def __init__(self, orig: int, new: int, device: torch.device = torch.device("cpu")):
        self.orig, self.new = int(orig), int(new)
        self.device = torch.device(device)
        if self.orig != self.new:
            self.kernel, self.width, self.o, self.n = _polyphase(self.orig, self.new, self.device)  # [n, o, taps]
            self.taps = self.kernel.shape[-1]
        self.reset()

    def reset(self) -> None:
        self.received = 0  # input samples so far
        self.produced = 0  # output samples so far
        if self.orig != self.new:
            self.buffer = torch.zeros(self.width, device=self.device)  # padded input from block `block` on
            self.block = 0  # next output block; buffer[0] is padded sample block · o

    def push(self, x: torch.Tensor) -> torch.Tensor:
        self.received += x.shape[-1]
        if self.orig == self.new:
            self.produced += x.shape[-1]
            return x
        self.buffer = torch.cat([self.buffer, x.float()])
        return self._blocks()

    def flush(self) -> torch.Tensor:
        if self.orig == self.new:
            self.reset()
            return torch.zeros(0, device=self.device)
        total = -(-self.new * self.received // self.orig)  # what luna.audio.resample returns for the whole input
        blocks = -(-total // self.n)
        need = (blocks + self.taps - 1) * self.o - self.block * self.o  # buffer length covering every block
        self.buffer = F.pad(self.buffer, (0, max(0, need - self.buffer.shape[-1])))
        before = self.produced
        y = self._blocks()[: total - before]
        self.reset()
        return y

    def _blocks(self) -> torch.Tensor:
        count = self.buffer.shape[-1] // self.o - self.taps + 1  # output blocks whose input has all arrived
        if count <= 0:
            return torch.zeros(0, device=self.device)
        used = (count + self.taps - 1) * self.o
        x = self.buffer[:used].view(count + self.taps - 1, self.o).t().unsqueeze(0)  # [1, o, blocks + taps - 1]
        y = F.conv1d(x, self.kernel)[0].t().reshape(-1)  # [n, count] → [count · n]
        self.buffer = self.buffer[count * self.o :]
        self.block += count
        self.produced += y.shape[-1]
        return y
