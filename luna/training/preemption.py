"""SLURM/submitit glue: save ``last.pt`` at the next step boundary when the scheduler says the job must go.

SLURM warns a job before it ends it. submitit's sbatch asks for SIGUSR2 ``signal_delay_s`` before the time
limit (clusters with ``PreemptParameters=send_user_signal`` also send it on preemption); ``scontrol
requeue``, ``scancel`` and preemption send SIGTERM, then SIGKILL after KillWait. submitit's own handlers
act at once: on USR2, rank 0 resubmits the job through the launcher's ``checkpoint()`` (hydra-submitit-
launcher returns the same job again), runs ``scontrol requeue`` and exits; SIGTERM is ignored. Either way
the steps since the last checkpoint would be lost. :class:`PreemptionWatch` only records the signal; the
trainer polls it once per step (all ranks agree on it), rank 0 writes ``last.pt``, and then the handler
that was installed before runs as it would have. The requeued job runs the same Hydra job again, lands in
the same run dir (the subdir is built from the override names) and resumes from ``last.pt``
(``resume=auto``) with the same wandb run id (``<output_dir>/wandb_run_id``).
"""
from __future__ import annotations

import logging
import os
import signal
import threading
from types import FrameType
from typing import Any, Dict, Optional

log = logging.getLogger("luna.preemption")


def requeue_signal() -> signal.Signals:
    """submitit's timeout/preemption signal (``$SUBMITIT_PREEMPT_SIGNAL``, default USR2)."""
    return getattr(signal, "SIG" + os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2"), signal.SIGUSR2)


def under_scheduler() -> bool:
    """A SLURM job (sbatch, srun, salloc) or a submitit job (slurm or local executor)."""
    return "SLURM_JOB_ID" in os.environ or "SUBMITIT_EXECUTOR" in os.environ


class PreemptionWatch:
    """Context manager around the training loop: records SIGTERM and the requeue signal, hands them on later.

    Outside a scheduler (or off the main thread) it installs nothing and :meth:`requested` is always None,
    so plain runs, torchrun and in-process spawn behave exactly as before.
    """

    def __init__(self, active: Optional[bool] = None):
        self.active = under_scheduler() if active is None else active
        self.signals = tuple(dict.fromkeys((requeue_signal(), signal.SIGTERM)))  # requeue signal first
        self.received: Dict[int, bool] = {}
        self._previous: Dict[int, Any] = {}

    def __enter__(self) -> "PreemptionWatch":
        if self.active and threading.current_thread() is threading.main_thread():
            for s in self.signals:
                self._previous[s] = signal.signal(s, self._record)
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        previous, self._previous = self._previous, {}
        for s, handler in previous.items():
            signal.signal(s, handler)
        pending = self._pick(self.received)
        self.received = {}
        if pending is not None and exc_type is None:
            # arrived after the last step boundary; the loop's final last.pt is on disk: act as if now
            self._hand_on(pending, previous.get(pending))

    def _record(self, signum: int, frame: Optional[FrameType]) -> None:
        self.received[signum] = True  # no logging here: a handler may interrupt the logging module itself

    def _pick(self, received: Dict[int, bool]) -> Optional[int]:
        """The requeue signal wins over SIGTERM (it is the one that resubmits the job)."""
        return next((s for s in self.signals if received.get(s)), None)

    def requested(self, device: Any = None) -> Optional[int]:
        """The signal to act on at this step boundary, the same on every rank (one all-reduce when
        distributed and watching), or None."""
        if not self._previous:
            return None
        flags = [1.0 if self.received.get(s) else 0.0 for s in self.signals]
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            import torch

            t = torch.tensor(flags, device=device)
            dist.all_reduce(t, op=dist.ReduceOp.MAX)
            flags = t.tolist()
        return self._pick({s: f > 0 for s, f in zip(self.signals, flags)})

    def deliver(self, signum: int, step: int) -> None:
        """After ``last.pt`` holds ``step``: run the handler that was installed before ours.

        submitit on USR2: rank 0 requeues the job and exits (SystemExit); the other ranks return from it
        and exit here, so none trains on alone. submitit on SIGTERM: ignored, training goes on until SLURM
        follows with USR2 or SIGKILL. No handler of its own (plain srun): exit with 128 + signal, as the
        default action would, but after the ``finally`` blocks (trackers, process group) ran. SIG_IGN: ignored.
        """
        self.received.pop(signum, None)
        name = signal.Signals(signum).name
        handler = self._previous.get(signum)
        log.warning("received %s: last.pt holds step %d; handing the signal on", name, step)
        if handler is not signal.SIG_IGN:
            self._hand_on(signum, handler)
            if signum != signal.SIGTERM:
                raise SystemExit(128 + signum)
        log.warning("%s ignored by the job's own handler: training continues", name)

    @staticmethod
    def _hand_on(signum: int, handler: Any) -> None:
        if callable(handler):
            handler(signum, None)
        elif handler in (signal.SIG_DFL, None):
            raise SystemExit(128 + signum)
