"""The compute scheduler of ``python -m luna.serve``: every connection's model jobs, fairly, on ``workers`` threads.

Each job states the audio seconds it processes. When a worker is free it takes the waiting job of the connection
that has been served the fewest audio seconds (ties: the job that waited longest), so a client streaming huge
chunks cannot delay a real-time client by more than about one job: the server cuts big chunks into jobs of at
most ``job_seconds`` (luna/serving/server.py). A connection that was idle re-enters at the served level of the
job last started (``clock``, as in fair-share schedulers), so time spent idle is no credit to starve the others.
A job whose caller is cancelled (its connection closed) before a worker took it never runs; a running one
finishes on its thread and its result is dropped.

Batching (``max_batch`` > 1): a job may name a ``together`` key and a ``many`` function; the worker that takes
it (the least-served job, as above) also takes the other waiting jobs with the same key, least-served first, at
most one per connection and ``max_batch`` in all, and runs ``many([args, ...])`` once on them (luna/serving/
batching.py: one batched forward per model stage). Every job of the batch is charged its own seconds, so the
fair order is kept; a connection's jobs still run one after another, in order. When fewer than ``max_batch``
such jobs wait but more connections have sent jobs of that key, the worker waits for them at most
``batch_wait`` seconds after the head job arrived (a timer; then it runs what is there). ``batches`` counts the
batches run by size (tests, the log at shutdown).
"""
from __future__ import annotations

import asyncio
import itertools
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Hashable, List, Optional, Set, Tuple


@dataclass
class Job:
    owner: Hashable  # the connection
    seconds: float  # audio it processes (its cost)
    fn: Callable
    args: Tuple[Any, ...]
    result: asyncio.Future
    order: int = field(default=0)  # arrival, for ties
    together: Optional[Hashable] = None  # jobs with equal keys may run as one batch ...
    many: Optional[Callable] = None  # ... as many([args, ...]) -> their results (an Exception: raised to that caller)
    arrived: float = 0.0  # loop time


class Scheduler:
    """Least-served-first over connections; call :meth:`run` from the event loop."""

    def __init__(self, workers: int, max_batch: int = 1, batch_wait: float = 0.0):
        self.max_batch, self.batch_wait = max(1, int(max_batch)), max(0.0, float(batch_wait))
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="luna-serve")
        self.free = workers
        self.waiting: List[Job] = []
        self.served: Dict[Hashable, float] = {}  # audio seconds started per connection
        self.clock = 0.0  # served level of the job last started
        self.started = 0  # jobs handed to a worker (tests and logs)
        self.batches: Dict[int, int] = {}  # batch size -> how many ran
        self.members: Dict[Hashable, Set[Hashable]] = {}  # together key -> connections that sent such jobs
        self._wake: Optional[asyncio.TimerHandle] = None  # the batch wait's timer
        self._order = itertools.count()

    async def run(self, owner: Hashable, seconds: float, fn: Callable, *args: Any,
                  together: Optional[Hashable] = None, many: Optional[Callable] = None) -> Any:
        """``fn(*args)`` on a worker when it is ``owner``'s turn (or in a batch: see the module); its result."""
        if not any(j.owner == owner for j in self.waiting):  # (re)entering: no credit for idle time
            self.served[owner] = max(self.served.get(owner, 0.0), self.clock)
        loop = asyncio.get_running_loop()
        job = Job(owner, float(seconds), fn, args, loop.create_future(), next(self._order), together, many, loop.time())
        if together is not None and self.max_batch > 1:
            self.members.setdefault(together, set()).add(owner)
        self.waiting.append(job)
        self._dispatch()
        try:
            return await job.result
        finally:
            if job in self.waiting:  # cancelled before a worker took it: it never runs
                self.waiting.remove(job)

    def forget(self, owner: Hashable) -> int:
        """A closed connection: drop its waiting jobs (their callers see CancelledError); how many."""
        mine = [j for j in self.waiting if j.owner == owner]
        for j in mine:
            self.waiting.remove(j)
            j.result.cancel()
        self.served.pop(owner, None)
        for members in self.members.values():
            members.discard(owner)
        return len(mine)

    def _rank(self, job: Job) -> tuple:
        return self.served.get(job.owner, 0.0), job.order

    def _batch(self, head: Job) -> Optional[List[Job]]:
        """The jobs to run with ``head`` (itself first), or None to wait for more (a timer is set)."""
        batch = [head]
        if head.together is None or self.max_batch == 1:
            return batch
        for job in sorted(self.waiting, key=self._rank):
            if len(batch) < self.max_batch and job.together == head.together and all(job.owner != b.owner for b in batch):
                batch.append(job)
        loop = head.result.get_loop()
        deadline = head.arrived + self.batch_wait
        if len(batch) < min(self.max_batch, len(self.members.get(head.together, ()))) and loop.time() < deadline:
            if self._wake is None or self._wake.when() > deadline:
                if self._wake is not None:
                    self._wake.cancel()
                self._wake = loop.call_at(deadline, self._woken)
            return None
        return batch

    def _woken(self) -> None:
        self._wake = None
        self._dispatch()

    def _dispatch(self) -> None:
        while self.free and self.waiting:
            batch = self._batch(min(self.waiting, key=self._rank))
            if batch is None:  # the batch wait: the timer (or a new job) dispatches again
                return
            self.clock = self.served.get(batch[0].owner, 0.0)
            for job in batch:
                self.waiting.remove(job)
                self.served[job.owner] = self.served.get(job.owner, 0.0) + job.seconds
            self.free -= 1
            self.started += len(batch)
            self.batches[len(batch)] = self.batches.get(len(batch), 0) + 1
            loop = batch[0].result.get_loop()
            if len(batch) == 1:
                done = self.pool.submit(batch[0].fn, *batch[0].args)
            else:
                done = self.pool.submit(batch[0].many, [job.args for job in batch])
            done.add_done_callback(lambda f, batch=batch, loop=loop: _call_soon(loop, self._finished, batch, f))

    def _finished(self, batch: List[Job], done: Future) -> None:
        self.free += 1
        error = done.exception()
        if error is not None:
            outcomes = [error] * len(batch)
        else:
            outcomes = [done.result()] if len(batch) == 1 else done.result()
        for job, outcome in zip(batch, outcomes):
            if job.result.done():  # its caller was cancelled: the result is dropped
                continue
            if isinstance(outcome, BaseException):
                job.result.set_exception(outcome)
            else:
                job.result.set_result(outcome)
        # not at once: the owner wakes first and may submit its next piece, so the pick sees every connection
        # with work (else two connections would merely alternate, whatever their jobs cost)
        batch[0].result.get_loop().call_soon(self._dispatch)

    def shutdown(self) -> None:
        if self._wake is not None:
            self._wake.cancel()
        self.waiting.clear()
        self.pool.shutdown(wait=False, cancel_futures=True)


def _call_soon(loop: asyncio.AbstractEventLoop, fn: Callable, *args: Any) -> None:
    try:
        loop.call_soon_threadsafe(fn, *args)
    except RuntimeError:  # the loop closed while a job ran (server shutdown): nobody waits for it
        pass
