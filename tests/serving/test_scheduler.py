"""The compute scheduler on its own: least-served audio seconds first, idle time is no credit, cancelled jobs
never run (luna/serving/scheduler.py; the server-level tests are in test_limits.py)."""
from __future__ import annotations

import asyncio
import threading

from luna.serving.scheduler import Scheduler


def run_owners(costs, jobs_each, scheduler=None):
    """Each owner runs ``jobs_each`` jobs one after another (as a connection does); the order jobs started."""
    scheduler = scheduler or Scheduler(workers=1)
    started = []

    async def owner(name, cost):
        for _ in range(jobs_each):
            await scheduler.run(name, cost, started.append, name)

    async def main():
        await asyncio.gather(*(owner(n, c) for n, c in costs.items()))

    asyncio.run(main())
    scheduler.shutdown()
    return started


def test_least_served_first():
    """A's jobs are 1 s of audio, B's 0.1 s: B runs about ten jobs for each of A's (first come, first served
    would alternate A, B, A, B)."""
    started = run_owners({"A": 1.0, "B": 0.1}, jobs_each=40)
    assert len(started) == 80
    first = started[:33]  # both have work waiting the whole time here
    assert first.count("A") <= 4 and first.count("B") >= 29, first


def test_equal_costs_take_turns():
    started = run_owners({"A": 0.5, "B": 0.5, "C": 0.5}, jobs_each=5)
    assert all(sorted(started[i:i + 3]) == ["A", "B", "C"] for i in range(0, 15, 3)), started


def test_idle_time_is_no_credit_and_cancelled_jobs_never_run():
    scheduler = Scheduler(workers=1)
    gate, ran = threading.Event(), []

    async def main():
        for _ in range(5):  # A is served 5 s while B is away
            await scheduler.run("A", 1.0, ran.append, "A")
        blocker = asyncio.create_task(scheduler.run("A", 1.0, gate.wait))  # holds the only worker
        await asyncio.sleep(0.05)
        waiting = asyncio.create_task(scheduler.run("C", 1.0, ran.append, "C-never"))
        await asyncio.sleep(0.05)
        waiting.cancel()  # its connection closed before a worker was free
        b = asyncio.create_task(scheduler.run("B", 1.0, ran.append, "B"))  # B comes back
        a = asyncio.create_task(scheduler.run("A", 1.0, ran.append, "A"))
        await asyncio.sleep(0.05)
        gate.set()
        await asyncio.gather(blocker, b, a)
        return scheduler.served["B"]

    served_b = asyncio.run(main())
    scheduler.shutdown()
    assert "C-never" not in ran
    assert served_b >= 5.0  # B re-entered at A's level (not at 0, which would let it starve A for 5 s)
