"""The compute scheduler of ``python -m luna.serve``: every connection's model jobs, fairly, on ``workers`` threads.

Each job states the audio seconds it processes. When a worker is free it takes the waiting job of the connection
that has been served the fewest audio seconds (ties: the job that waited longest), so a client streaming huge
chunks cannot delay a real-time client by more than about one job: the server cuts big chunks into jobs of at
most ``job_seconds`` (luna/serving/server.py). A connection that was idle re-enters at the served level of the
job last started (``clock``, as in fair-share schedulers), so time spent idle is no credit to starve the others.
A job whose caller is cancelled (its connection closed) before a worker took it never runs; a running one
finishes on its thread and its result is dropped. One place for the policy: batching across connections would
take several waiting jobs here at once.
"""
from __future__ import annotations

import asyncio
import itertools
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Hashable, List, Tuple


@dataclass
class Job:
    owner: Hashable  # the connection
    seconds: float  # audio it processes (its cost)
    fn: Callable
    args: Tuple[Any, ...]
    result: asyncio.Future
    order: int = field(default=0)  # arrival, for ties


class Scheduler:
    """Least-served-first over connections; call :meth:`run` from the event loop."""

    def __init__(self, workers: int):
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="luna-serve")
        self.free = workers
        self.waiting: List[Job] = []
        self.served: Dict[Hashable, float] = {}  # audio seconds started per connection
        self.clock = 0.0  # served level of the job last started
        self.started = 0  # jobs handed to a worker (tests and logs)
        self._order = itertools.count()

    async def run(self, owner: Hashable, seconds: float, fn: Callable, *args: Any) -> Any:
        """``fn(*args)`` on a worker when it is ``owner``'s turn; its result (or exception)."""
        if not any(j.owner == owner for j in self.waiting):  # (re)entering: no credit for idle time
            self.served[owner] = max(self.served.get(owner, 0.0), self.clock)
        job = Job(owner, float(seconds), fn, args, asyncio.get_running_loop().create_future(), next(self._order))
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
        return len(mine)

    def _dispatch(self) -> None:
        while self.free and self.waiting:
            job = min(self.waiting, key=lambda j: (self.served.get(j.owner, 0.0), j.order))
            self.waiting.remove(job)
            self.free -= 1
            self.started += 1
            self.clock = self.served.get(job.owner, 0.0)
            self.served[job.owner] = self.clock + job.seconds
            loop = job.result.get_loop()
            done = self.pool.submit(job.fn, *job.args)
            done.add_done_callback(lambda f, job=job, loop=loop: _call_soon(loop, self._finished, job, f))

    def _finished(self, job: Job, done: Future) -> None:
        self.free += 1
        if not job.result.done():  # else its caller was cancelled: the result is dropped
            error = done.exception()
            if error is None:
                job.result.set_result(done.result())
            else:
                job.result.set_exception(error)
        # not at once: the owner wakes first and may submit its next piece, so the pick sees every connection
        # with work (else two connections would merely alternate, whatever their jobs cost)
        job.result.get_loop().call_soon(self._dispatch)

    def shutdown(self) -> None:
        self.waiting.clear()
        self.pool.shutdown(wait=False, cancel_futures=True)


def _call_soon(loop: asyncio.AbstractEventLoop, fn: Callable, *args: Any) -> None:
    try:
        loop.call_soon_threadsafe(fn, *args)
    except RuntimeError:  # the loop closed while a job ran (server shutdown): nobody waits for it
        pass
