"""A claim still in flight when the executor pauses (the node's lease lost, stop all jobs)
must not start its jobs: they go back to the queue, the attempt not counted."""

from __future__ import annotations

import asyncio
import random
import threading
from typing import Any

from hero_procd.app import App
from hero_procd.config import Config
from hero_procd.engine.executor import Executor
from hero_procd.model import CommandSpec, JobRequest
from hero_procd.store import Store
from tests.conftest import StoreRunner


async def _until(cond: Any, what: str, timeout_s: float = 20.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not cond():
        assert asyncio.get_running_loop().time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.005)


def test_claim_answered_after_lease_lost_starts_nothing(run_store: StoreRunner) -> None:
    """The claim commits while the lease is being lost (its answer late: a stalled database
    connection); its jobs are interrupted before they start, queued again with attempt 0,
    and run once the lease is back (x3, randomised timing)."""

    async def body(store: Store) -> None:
        app = App(config=Config(), store=store, openrpc={})
        ex = Executor(app)
        app.executor = ex
        await ex.start()
        try:
            for _ in range(3):
                ex._paused += 1  # nothing claimed while the job is being queued
                job_id = await store.jobs.submit(JobRequest(spec=CommandSpec(command=["true"])))
                gate = threading.Event()
                blocked = threading.Event()

                def blocker(
                    conn: Any, blocked: threading.Event = blocked, gate: threading.Event = gate
                ) -> None:
                    blocked.set()
                    gate.wait(30)

                hold = asyncio.ensure_future(store.pool.write(blocker))
                await _until(blocked.is_set, "the writer to be held")
                ex.resume()  # the dispatcher claims: its unit waits behind the blocker
                await _until(lambda: ex._claims_in_flight == 1, "the claim to be in flight")
                await asyncio.sleep(random.uniform(0, 0.02))
                spawned = ex.spawned
                ex.lease_lost(grace_s=1.0)
                gate.set()
                await hold
                await _until(lambda j=job_id: j not in ex.running, "the claimed job to settle")

                async def settled(job_id: int = job_id) -> Any:
                    return await store.jobs.get(job_id)

                for _ in range(2000):
                    job = await settled()
                    if job.status == "queued" and job.error is not None:
                        break
                    await asyncio.sleep(0.005)
                assert ex.spawned == spawned, "a job claimed after the lease was lost started"
                assert job.status == "queued" and job.attempt == 0, job
                assert "interrupted" in (job.error or ""), job
                ex.resume()  # the lease is back: the job runs now
                for _ in range(4000):
                    job = await settled()
                    if job.status == "succeeded":
                        break
                    await asyncio.sleep(0.005)
                assert job.status == "succeeded" and job.attempt == 1, job
        finally:
            await ex.stop()

    run_store(body)
