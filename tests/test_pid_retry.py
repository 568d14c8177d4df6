"""An attempt's pid whose write failed (a full disk, here a trigger refusing it) is written
again while the attempt runs, and the ends of other attempts are not held behind it."""

from __future__ import annotations

import asyncio
import os
import random
import signal
from pathlib import Path
from typing import Any

import pytest

from hero_procd.app import App
from hero_procd.config import Config
from hero_procd.engine.executor import Executor
from hero_procd.model import CommandSpec, JobRequest
from hero_procd.store import Store
from tests.conftest import run_with_store

# While `refuse_pid` holds a row, recording any job's pid fails (as on a full disk).
_REFUSE = """
CREATE TABLE refuse_pid (x INTEGER);
CREATE TRIGGER refuse_pid_write BEFORE UPDATE OF pid ON jobs
WHEN NEW.pid IS NOT NULL AND EXISTS (SELECT 1 FROM refuse_pid)
BEGIN SELECT RAISE(ABORT, 'database or disk is full'); END;
INSERT INTO refuse_pid VALUES (1);
"""


async def _until(cond: Any, what: str, timeout_s: float = 30.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not await cond():
        assert asyncio.get_running_loop().time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)


def test_a_pid_whose_write_failed_is_written_while_the_attempt_runs(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    def failures() -> int:
        return sum("could not record jobs' pids" in r.getMessage() for r in caplog.records)

    async def body(store: Store) -> None:
        await store.pool.maintenance(lambda c: c.executescript(_REFUSE))
        app = App(config=Config(), store=store, openrpc={})
        ex = Executor(app)
        app.executor = ex
        await ex.start()
        try:
            for round_ in range(3):
                await store.pool.write(lambda c: c.execute("INSERT INTO refuse_pid VALUES (1)"))
                spec = CommandSpec(command=["sleep", "60"])
                failed = failures()
                job_id = await store.jobs.submit(JobRequest(spec=spec))
                ex.wake()  # as the job.submit call does

                async def pid(job_id: int = job_id) -> Any:
                    row = await store.pool.fetch_one("SELECT pid FROM jobs WHERE id = ?", (job_id,))
                    return row[0]

                async def spawned(job_id: int = job_id) -> bool:
                    rj = ex.running.get(job_id)
                    return rj is not None and rj.child is not None

                await _until(spawned, "the job to start")
                child = ex.running[job_id].child
                assert child is not None
                child_pid = child.pid
                await _until(lambda f=failed: _true(failures() > f), "the pid write to fail")
                assert await pid() is None
                # Other attempts end while the pid write keeps failing: their ends are written.
                quick = await store.jobs.submit(JobRequest(spec=CommandSpec(command=["true"])))
                ex.wake()
                await _until(lambda q=quick: _is(store, q, "succeeded"), "a quick job's end", 30.0)
                assert await pid() is None
                await asyncio.sleep(random.uniform(0, 0.3))
                await store.pool.write(lambda c: c.execute("DELETE FROM refuse_pid"))
                await _until(
                    lambda p=pid, w=child_pid: _is_pid(p, w), f"the pid written ({round_})"
                )
                os.kill(child_pid, signal.SIGKILL)
                await _until(lambda j=job_id: _is(store, j, "failed"), "the job's end")
        finally:
            await ex.stop()

    run_with_store(tmp_path / "t.db", body)


async def _true(value: bool) -> bool:  # _until awaits its condition
    return value


async def _is(store: Store, job_id: int, status: str) -> bool:
    return (await store.jobs.get(job_id)).status == status


async def _is_pid(pid: Any, want: int) -> bool:
    return bool(await pid() == want)
