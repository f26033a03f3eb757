"""Codebook health during training: usage, perplexity and replacements per quantizer, and a collapse alarm."""
from __future__ import annotations

import logging
import math
from collections import deque
from typing import Any, Deque, Dict, List, Optional, Tuple

log = logging.getLogger("luna.health")

#: perplexity counts as rising when it grew by more than this factor over the alarm window
RISING_PERPLEXITY = 1.05


def alarm_grace_steps(cfg: Any) -> int:
    """Steps before the codebook alarm may fire, and the window over which usage must have stopped rising.

    The longest of: the learning-rate warm-up (``optimizer.warmup_steps``), the grace a revived code gets
    before it is judged (``model.revival_grace_steps``), and the horizon of the EMA the usage statistics
    are (``1 / (1 - model.ema_decay)`` steps). Before that, low usage on real speech is the codebooks
    settling after k-means, not a collapse.
    """
    m = cfg.model
    horizon = math.ceil(1.0 / (1.0 - float(m.ema_decay))) if float(m.ema_decay) < 1 else 0
    return max(int(cfg.optimizer.warmup_steps), int(m.revival_grace_steps), horizon)


class CodebookMonitor:
    """A quantizer is in alarm when its usage or perplexity is below ``trainer.alarm_usage`` / ``alarm_perplexity``,
    the first :func:`alarm_grace_steps` steps are over, and neither has risen over that many steps (usage by a
    code, perplexity by 5%): codebooks still filling up after k-means are not collapsed. ``codebook/q{i}_alarm``
    is logged at every such step; the warning line at most once per window per quantizer."""

    def __init__(self, cfg: Any):
        self.usage, self.perplexity = cfg.trainer.alarm_usage, cfg.trainer.alarm_perplexity
        self.codebook_size = int(cfg.model.codebook_size)
        self.window = alarm_grace_steps(cfg)
        self.history: Dict[int, Deque[Tuple[int, float, float]]] = {}  # quantizer -> (step, usage, perplexity)
        self.last_alarm: Dict[int, int] = {}  # quantizer -> step of its last alarm line

    def observe(self, step: int, stats: List[Dict[str, float]], scalars: Dict[str, float]) -> List[str]:
        """Add ``codebook/*`` scalars for ``stats`` (one dict per quantizer); return the alarm lines to print."""
        lines = []
        for i, s in enumerate(stats):
            scalars[f"codebook/q{i}_usage"] = s["usage"]
            scalars[f"codebook/q{i}_perplexity"] = s["perplexity"]
            scalars[f"codebook/q{i}_replacements"] = float(s["replacements"])
            msg = self._check(i, step, s)
            if msg is not None:
                scalars[f"codebook/q{i}_alarm"] = 1.0
                if step - self.last_alarm.get(i, -self.window) >= self.window:
                    self.last_alarm[i] = step
                    log.warning("step %d: %s", step, msg)
                    lines.append(msg)
        return lines

    def _check(self, i: int, step: int, s: Dict[str, float]) -> Optional[str]:
        history = self.history.setdefault(i, deque())
        # the reference: the last point at least a window ago (else, e.g. just after a resume, the oldest)
        ref = next((h for h in reversed(history) if h[0] <= step - self.window), history[0] if history else None)
        history.append((step, s["usage"], s["perplexity"]))
        while len(history) > 1 and history[1][0] <= step - self.window:
            history.popleft()  # keep one point at or before the window's start
        low = s["usage"] < self.usage or s["perplexity"] < self.perplexity
        if not low or step <= self.window:
            return None
        if ref is not None and (s["usage"] > ref[1] or s["perplexity"] > RISING_PERPLEXITY * ref[2]):
            return None  # still filling up
        since = f"since step {ref[0]}" if ref is not None else "(no earlier point)"
        return (f"codebook alarm: quantizer {i} uses {s['usage']:.1%} of {self.codebook_size} codes, "
                f"perplexity {s['perplexity']:.1f}, not rising {since} (alarm below usage {self.usage:.1%} "
                f"or perplexity {self.perplexity}, after step {self.window}); {s['replacements']} codes replaced "
                f"this step")
