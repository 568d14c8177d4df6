"""The job executor: claim → spawn → stream logs → finalize, within concurrency limits.

Ownership: a claim gives each attempt a token; every later write about that
attempt names it (`WHERE id=? AND claim_token=? AND status='running'`), so a
cancel racing an exit, or a timeout racing a finish, ends in one outcome.
Status writes and log lines go through the flusher; dependency bookkeeping
and run statuses are updated in the same transaction as the statuses that
cause them.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import random
import secrets
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import aiosqlite

from hero_procd.app import App
from hero_procd.engine import procs
from hero_procd.engine.flusher import Flusher, StatusWrite
from hero_procd.engine.output import OutputCapture
from hero_procd.errors import InvalidState, NotFound
from hero_procd.model import TERMINAL_JOB_STATES, JobStatus, now
from hero_procd.store.jobs import (
    ClaimedJob,
    GroupRoom,
    apply_outcomes,
    cancel_queued,
    claim,
    job_statuses,
    next_ready_at,
)
from hero_procd.store.queries import Q
from hero_procd.store.records import Job
from hero_procd.store.runs import refresh_status

log = logging.getLogger(__name__)

# Variables of the daemon's own environment that must not leak into children.
_PRIVATE_ENV = ("NOTIFY_SOCKET", "WATCHDOG_PID", "WATCHDOG_USEC", "LISTEN_FDS", "LISTEN_PID")
# After a job's leader exits, how long its pipes may stay open (a process that left the group).
_DRAIN_AFTER_EXIT_S = 2.0
# How long a busy dispatcher waits for more free slots before claiming (see _dispatch_loop).
_CLAIM_COALESCE_S = 0.003


def instance_id(db_path: str) -> str:
    """A stable id of this daemon's database, put in every child's environment."""
    return hashlib.sha256(os.path.realpath(db_path).encode()).hexdigest()[:16]


@dataclass(eq=False)
class RunningJob:
    """One attempt of a job that this executor owns."""

    claim: ClaimedJob
    child: procs.Child | None = None
    output: OutputCapture | None = None
    exited: bool = False
    exit_code: int | None = None
    signal: int | None = None
    cancel_requested: bool = False
    interrupted: bool = False
    timed_out: bool = False
    finalized: bool = False
    handles: list[asyncio.TimerHandle] = field(default_factory=list)


class Executor:
    """Runs queued jobs as child processes."""

    def __init__(self, app: App) -> None:
        self.app = app
        self.store = app.store
        self.config = app.config
        self.instance = instance_id(str(app.config.db_path))
        self.flusher = Flusher(
            app.store,
            app.stats,
            batch_size=app.config.flush_batch,
            interval_s=app.config.flush_interval_s,
            max_log_lines=app.config.log_buffer_lines,
            max_lines_per_owner=app.config.max_log_lines_per_owner,
            in_transaction=self._in_flush,
            after_commit=self._after_flush,
        )
        self.running: dict[int, RunningJob] = {}
        self.group_limits: dict[str, int] = {}
        self._wake = asyncio.Event()
        self._none_running = asyncio.Event()
        self._claimed_recently = False
        self._waiters: dict[int, list[asyncio.Future[None]]] = {}
        self._task: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._stopping = False
        self._paused = 0
        self._backoff_handle: asyncio.TimerHandle | None = None
        self._base_env = {k: v for k, v in os.environ.items() if k not in _PRIVATE_ENV}
        self.spawned = 0
        self.spawner = ThreadPoolExecutor(max_workers=4, thread_name_prefix="spawn")

    # -- life cycle ------------------------------------------------------------
    async def start(self) -> None:
        """Recover what a previous daemon left running, then start dispatching."""
        self.flusher.start()
        await self.recover()
        self.group_limits = await self.store.groups.all()
        self._task = asyncio.get_running_loop().create_task(self._dispatch_loop(), name="dispatch")
        self.wake()

    async def stop(self) -> None:
        """Stop claiming; terminate running jobs (they are queued again); write everything."""
        self._stopping = True
        self.wake()
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for rj in list(self.running.values()):
            rj.interrupted = True
            self._terminate(rj)
        await self._wait_no_running(timeout_s=max(10.0, self._max_kill_timeout() + 5.0))
        await self.flusher.drain()
        self.spawner.shutdown(wait=False)

    def wake(self) -> None:
        """Ask the dispatcher to look for ready jobs."""
        self._wake.set()

    def _spawn_task(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- dispatching ---------------------------------------------------------
    async def _dispatch_loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            if self._stopping:
                return
            while not self._stopping and not self._paused:
                free = self.config.max_parallel - len(self.running)
                if free <= 0:
                    break
                if free < self.config.max_parallel // 2 and self._claimed_recently:
                    # Under load a claim per freed slot is a write transaction per job:
                    # let a few more slots free up and claim them together.
                    await asyncio.sleep(_CLAIM_COALESCE_S)
                    free = self.config.max_parallel - len(self.running)
                try:
                    claimed = await self._claim(free)
                except Exception:
                    log.exception("claim failed; retrying shortly")
                    await asyncio.sleep(0.5)
                    self.wake()
                    break
                self._claimed_recently = bool(claimed)
                if not claimed:
                    await self._schedule_backoff_wake()
                    break
                for job in claimed:
                    self._spawn_task(self._launch(self.running[job.id]))
                await asyncio.sleep(0)

    def _group_room(self) -> GroupRoom:
        busy: dict[str, int] = {}
        for rj in self.running.values():
            if rj.claim.group is not None:
                busy[rj.claim.group] = busy.get(rj.claim.group, 0) + 1
        room = {g: limit - busy.get(g, 0) for g, limit in self.group_limits.items()}
        return GroupRoom(full={g for g, r in room.items() if r <= 0}, room=room)

    async def _claim(self, n: int) -> list[ClaimedJob]:
        token = secrets.token_hex(8)
        async with self.store.pool.transaction() as conn:
            claimed = await claim(conn, n, token, self._group_room(), now())
            runs = {c.run_id for c in claimed if c.run_id is not None}
            if runs:
                await refresh_status(conn, runs)
            # Registered before the write lock is released: a cancel that comes
            # next finds the job here rather than nowhere.
            for c in claimed:
                self.running[c.id] = RunningJob(c)
        return claimed

    async def _schedule_backoff_wake(self) -> None:
        at = await next_ready_at(self.store.pool, now())
        if self._backoff_handle is not None:
            self._backoff_handle.cancel()
            self._backoff_handle = None
        if at is not None:
            delay = max(0.0, at - now()) + 0.005
            self._backoff_handle = asyncio.get_running_loop().call_later(delay, self.wake)

    # -- one attempt ------------------------------------------------------------
    def _child_env(self, job: ClaimedJob) -> dict[str, str]:
        env = dict(self._base_env)
        env.update(job.spec.env or {})
        env["HERO_PROC_JOB_ID"] = str(job.id)
        env["HERO_PROC_ATTEMPT"] = str(job.attempt)
        env[procs.INSTANCE_ENV] = self.instance
        return env

    async def _launch(self, rj: RunningJob) -> None:
        job = rj.claim
        if rj.cancel_requested:
            await self._finalize(rj, error="cancelled before it started")
            return
        argv = job.spec.argv()
        env = self._child_env(job)
        if job.spec.env_from_secrets:
            try:
                env.update(await self.store.secrets.resolve(job.spec.env_from_secrets))
            except NotFound as exc:
                await self._finalize(rj, error=f"cannot start: {exc}")
                return
        loop = asyncio.get_running_loop()
        try:
            # fork/exec blocks for about a millisecond and releases the GIL:
            # it runs on a small pool, so the loop keeps serving meanwhile.
            child = await loop.run_in_executor(self.spawner, procs.spawn, argv, env, job.spec.cwd)
        except OSError as exc:
            what = exc.filename if exc.filename is not None else argv[0]
            await self._finalize(rj, error=f"cannot start {what}: {exc.strerror or exc}")
            return
        self.spawned += 1
        rj.child = child
        rj.output = OutputCapture(
            self.flusher,
            "job",
            str(job.id),
            first_seq=job.last_seq,
            max_line=self.config.max_line_bytes,
            on_closed=lambda: self._on_output_closed(rj),
        )
        rj.output.attach(child.stdout_fd, child.stderr_fd)
        loop.add_reader(child.pidfd, self._on_exit, rj)
        if job.spec.timeout_s:
            rj.handles.append(loop.call_later(job.spec.timeout_s, self._on_timeout, rj))
        if rj.cancel_requested or rj.interrupted:  # asked while it was being spawned
            self._terminate(rj)
        await self.flusher.write_status(
            StatusWrite(
                "job_set_pid", (child.pid, child.start_time, job.id, job.token), job_id=job.id
            )
        )

    def _on_output_closed(self, rj: RunningJob) -> None:
        if rj.exited:
            self._spawn_task(self._finalize(rj))

    def _on_exit(self, rj: RunningJob) -> None:
        child = rj.child
        assert child is not None
        loop = asyncio.get_running_loop()
        loop.remove_reader(child.pidfd)
        # The leader is a zombie until reaped, so its group id is still ours:
        # take down whatever it left behind in its group, then reap it.
        procs.signal_group(child.pid, signal.SIGKILL)
        rj.exit_code, rj.signal = procs.reap(child.pid)
        os.close(child.pidfd)
        rj.exited = True
        for handle in rj.handles:
            handle.cancel()
        rj.handles.clear()
        if rj.output is None or rj.output.open == 0:
            self._spawn_task(self._finalize(rj))
        else:
            rj.handles.append(loop.call_later(_DRAIN_AFTER_EXIT_S, rj.output.close_all))

    def _on_timeout(self, rj: RunningJob) -> None:
        if rj.exited or rj.finalized:
            return
        rj.timed_out = True
        self._terminate(rj)

    def _terminate(self, rj: RunningJob) -> None:
        """SIGTERM to the job's process group, SIGKILL after its kill timeout."""
        child = rj.child
        if child is None or rj.exited:
            return
        procs.signal_group(child.pid, signal.SIGTERM)
        grace = rj.claim.spec.kill_timeout_s
        grace = 5.0 if grace is None else grace
        loop = asyncio.get_running_loop()
        rj.handles.append(loop.call_later(grace, self._kill, rj))

    def _kill(self, rj: RunningJob) -> None:
        if rj.child is not None and not rj.exited:
            procs.signal_group(rj.child.pid, signal.SIGKILL)

    def _backoff(self, job: ClaimedJob) -> float:
        base = job.spec.retry_delay_s
        base = self.config.retry_base_s if base is None else base
        delay = min(self.config.retry_cap_s, base * 2.0 ** max(0, job.attempt - 1))
        return delay * random.uniform(0.8, 1.2)

    async def _finalize(self, rj: RunningJob, error: str | None = None) -> None:
        if rj.finalized:
            return
        rj.finalized = True
        job = rj.claim
        code, sig = rj.exit_code, rj.signal
        attempt_delta = 0
        not_before = 0.0
        if rj.interrupted:
            status, error, attempt_delta = JobStatus.QUEUED, "interrupted by daemon shutdown", -1
        elif rj.cancel_requested:
            status, error = JobStatus.CANCELLED, error or "cancelled"
        elif rj.timed_out:
            status, error = JobStatus.TIMED_OUT, f"timed out after {job.spec.timeout_s}s"
        elif error is None and code == 0:
            status = JobStatus.SUCCEEDED
        else:
            status = JobStatus.FAILED
            if error is None:
                error = (
                    f"exited with code {code}"
                    if code is not None
                    else f"killed by signal {signal.Signals(sig).name if sig else sig}"
                )
        if status in (JobStatus.FAILED, JobStatus.TIMED_OUT) and job.attempt < job.max_attempts:
            status = JobStatus.QUEUED
            not_before = now() + self._backoff(job)
        write = StatusWrite(
            "job_finish",
            (str(status), code, sig, error, now(), not_before, attempt_delta, job.id, job.token),
            job_id=job.id,
            run_id=job.run_id,
            status=str(status),
        )
        self.running.pop(job.id, None)
        if not self.running:
            self._none_running.set()
        await self.flusher.write_status(write)
        self.wake()

    # -- flush hooks -------------------------------------------------------------
    async def _in_flush(
        self, conn: aiosqlite.Connection, writes: list[StatusWrite]
    ) -> list[tuple[int, int | None]]:
        ends = [w for w in writes if w.query == "job_finish" and w.job_id is not None]
        if not ends:
            return []
        requeued = [w.job_id for w in ends if w.status == JobStatus.QUEUED and w.job_id is not None]
        if requeued:
            # A retry whose dedup_key a newer queued job took was cancelled instead (job_finish):
            # what the hooks and waiters see is what the row now says.
            actual = await job_statuses(conn, requeued)
            for w in ends:
                if w.job_id in actual:
                    w.status = actual[w.job_id]
        finished = [(w.job_id, w.status) for w in ends if w.job_id is not None and w.status]
        skipped = await apply_outcomes(conn, finished, now())
        runs = {w.run_id for w in writes if w.run_id is not None}
        runs.update(run_id for _, run_id in skipped if run_id is not None)
        if runs:
            await refresh_status(conn, runs)
        return skipped

    def _after_flush(self, writes: list[StatusWrite], skipped: Any) -> None:
        done = [
            w.job_id for w in writes if w.status in TERMINAL_JOB_STATES and w.job_id is not None
        ]
        done.extend(job_id for job_id, _ in skipped or [])
        self._notify(done)
        self.wake()

    def _notify(self, job_ids: list[int]) -> None:
        for job_id in job_ids:
            for fut in self._waiters.pop(job_id, []):
                if not fut.done():
                    fut.set_result(None)

    # -- verbs ---------------------------------------------------------------------
    async def wait(self, job_id: int, timeout_s: float) -> Job:
        """The job once it is terminal, or as it is when `timeout_s` has passed."""
        job = await self.store.jobs.get(job_id)
        if job.status in TERMINAL_JOB_STATES or timeout_s <= 0:
            return job
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(job_id, []).append(fut)
        try:
            job = await self.store.jobs.get(job_id)  # it may have finished meanwhile
            if job.status in TERMINAL_JOB_STATES:
                return job
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(fut, timeout_s)
        finally:
            waiters = self._waiters.get(job_id)
            if waiters is not None and fut in waiters:
                waiters.remove(fut)
                if not waiters:
                    del self._waiters[job_id]
        return await self.store.jobs.get(job_id)

    async def cancel(self, job_id: int) -> str:
        """Cancel a job: a queued one at once ('cancelled'), a running one by signal."""
        at = now()
        async with self.store.pool.transaction() as conn:
            row = await cancel_queued(conn, job_id, at, "cancelled")
            skipped: list[tuple[int, int | None]] = []
            if row is not None:
                skipped = await apply_outcomes(conn, [(job_id, JobStatus.CANCELLED)], at)
                runs = {r for _, r in [row, *skipped] if r is not None}
                if runs:
                    await refresh_status(conn, runs)
        if row is not None:
            self._notify([job_id, *(j for j, _ in skipped)])
            return "cancelled"
        rj = self.running.get(job_id)
        if rj is not None and not rj.finalized:
            rj.cancel_requested = True
            self._terminate(rj)
            return "cancelling"
        await self.flusher.wait_idle()
        job = await self.store.jobs.get(job_id)
        raise InvalidState("job is not queued or running", {"id": job_id, "status": job.status})

    async def cancel_run(self, run_id: int) -> dict[str, int]:
        """Cancel a run's queued jobs at once and signal its running ones."""
        at = now()
        async with self.store.pool.transaction() as conn:
            async with conn.execute(
                Q["job_cancel_queued_of_run"], (at, "run cancelled", run_id)
            ) as cur:
                rows = [(r[0], r[1]) for r in await cur.fetchall()]
            skipped = await apply_outcomes(conn, [(j, JobStatus.CANCELLED) for j, _ in rows], at)
            await refresh_status(conn, [run_id])
        self._notify([j for j, _ in rows] + [j for j, _ in skipped])
        signalled = 0
        for rj in list(self.running.values()):
            if rj.claim.run_id == run_id and not rj.finalized:
                rj.cancel_requested = True
                self._terminate(rj)
                signalled += 1
        return {"cancelled": len(rows) + len(skipped), "signalled": signalled}

    async def stop_all_jobs(self) -> int:
        """Pause claiming, cancel every running job and wait until written; see `resume()`."""
        self._paused += 1
        victims = [rj for rj in self.running.values() if not rj.finalized]
        for rj in victims:
            rj.cancel_requested = True
            self._terminate(rj)
        await self._wait_no_running(timeout_s=self._max_kill_timeout() + 10.0)
        await self.flusher.wait_idle()
        return len(victims)

    def resume(self) -> None:
        """Undo one `stop_all_jobs` pause."""
        self._paused = max(0, self._paused - 1)
        self.wake()

    def _max_kill_timeout(self) -> float:
        values = [rj.claim.spec.kill_timeout_s or 5.0 for rj in self.running.values()]
        return max(values, default=5.0)

    async def _wait_no_running(self, timeout_s: float) -> None:
        if self.running:
            self._none_running.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._none_running.wait(), timeout_s)
        if self.running:
            log.error(
                "jobs still running after their kill timeout", extra={"count": len(self.running)}
            )

    # -- crash recovery ------------------------------------------------------------
    async def recover(self) -> None:
        """Settle jobs a previous daemon left running; no process of theirs survives."""
        rows = await self.store.pool.fetch_all(Q["job_running_all"])
        groups: set[int] = set()
        for r in rows:
            pid, started = r["pid"], r["pid_start_time"]
            if pid and procs.is_same_process(pid, started):
                pgid = procs.process_group(pid)
                if pgid is not None:
                    groups.add(pgid)
        for pid in await asyncio.to_thread(procs.find_marked, self.instance):
            pgid = procs.process_group(pid)
            if pgid is not None and pgid != os.getpgid(0):
                groups.add(pgid)
        if groups:
            log.warning(
                "terminating processes left by a previous daemon", extra={"groups": len(groups)}
            )
            await self._terminate_groups(groups)
        if not rows:
            return
        at = now()
        updates: list[tuple[Any, ...]] = []
        finished: list[tuple[int, str]] = []
        for r in rows:
            if r["attempt"] < r["max_attempts"]:
                updates.append(
                    (
                        JobStatus.QUEUED.value,
                        "lost when the daemon stopped; retrying",
                        at,
                        0.0,
                        r["id"],
                    )
                )
            else:
                updates.append(
                    (JobStatus.LOST.value, "lost when the daemon stopped", at, 0.0, r["id"])
                )
        async with self.store.pool.transaction() as conn:
            for params in updates:  # few rows; each says where it ended (RETURNING)
                async with conn.execute(Q["job_recover"], params) as cur:
                    row = await cur.fetchone()
                if row is not None and row["status"] != JobStatus.QUEUED:
                    finished.append((row["id"], row["status"]))
            skipped = await apply_outcomes(conn, finished, at)
            runs = {r["run_id"] for r in rows if r["run_id"] is not None}
            runs.update(run_id for _, run_id in skipped if run_id is not None)
            if runs:
                await refresh_status(conn, runs)
        log.warning("recovered jobs left running", extra={"jobs": len(rows), "lost": len(finished)})

    async def _terminate_groups(self, groups: set[int]) -> None:
        for pgid in groups:
            procs.signal_group(pgid, signal.SIGTERM)
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline:
            alive = {g for g in groups if await asyncio.to_thread(procs.group_alive, g)}
            if not alive:
                return
            await asyncio.sleep(0.05)
        for pgid in groups:
            procs.signal_group(pgid, signal.SIGKILL)
