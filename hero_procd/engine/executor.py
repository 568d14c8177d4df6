"""The job executor: claim → spawn → stream logs → finalize, within concurrency limits.

The database is the one truth of every job: memory holds handles (the
child, its pipes, its timers), never a second version of its state. Each
step is a unit of the writer (store/jobs.py) committed before anyone acts on
it: a claim gives each attempt a token, and its end is written only while
that claim still owns a running row. A cancel is a persisted intent
(`cancel_requested`) honoured by whichever path holds the job; an attempt
whose process had already ended by itself keeps its real outcome; a graceful
stop queues again only the attempts whose process it terminated.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import logging
import os
import random
import secrets
import select
import signal
import time
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from hero_procd.app import App
from hero_procd.caller import peer_gone
from hero_procd.config import Config
from hero_procd.engine import fdwatch, procs
from hero_procd.engine.contain import Cell
from hero_procd.engine.flusher import Flusher, OwnerLog
from hero_procd.engine.output import OutputCapture
from hero_procd.errors import HeroError, InvalidParams, InvalidState, NotFound, StorageError
from hero_procd.model import TERMINAL_JOB_STATES, now
from hero_procd.store.api import JobStore
from hero_procd.store.jobs import AttemptEnd, ClaimedJob, GroupRoom
from hero_procd.store.records import Job

log = logging.getLogger(__name__)

# After a job's leader exits, how long its pipes may stay open (a process that left the group).
_DRAIN_AFTER_EXIT_S = 2.0
# Launches spawned per trip to the spawner pool, and trips at once (see _spawn_soon).
_SPAWN_BATCH = 8
_SPAWN_DRAINS = 2
# How long a busy dispatcher waits for more free slots before claiming (see _dispatch_loop).
_CLAIM_COALESCE_S = 0.003
# A waiter of a run or of many jobs reads them all again at least this often (it is
# woken by the end of one of them only).
RUN_WAIT_RECHECK_S = 2.0


def instance_key(config: Config) -> str:
    """What this daemon's instance id is made from: its SQLite file, or on PostgreSQL the
    database and its node (several nodes share the database, each marks its own children)."""
    return str(config.db_path) if config.db_url is None else f"{config.db_url}#{config.node}"


def instance_id(db_path: str) -> str:
    """A stable id of this daemon's database, put in every child's environment."""
    key = db_path if "://" in db_path else os.path.realpath(db_path)  # a URL is no path
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def exited_already(pidfd: int) -> bool:
    """Whether the process behind a pidfd has ended (its pidfd is readable), without waiting."""
    readable, _, _ = select.select([pidfd], [], [], 0)
    return bool(readable)


_SpawnRequest = tuple[Cell, list[str], dict[str, str], str | None, "asyncio.Future[procs.Child]"]


def _spawn_all(batch: list[_SpawnRequest]) -> list[procs.Child | BaseException]:
    """On a spawner thread: each request's child, or why it could not start."""
    out: list[procs.Child | BaseException] = []
    for cell, argv, env, cwd, _ in batch:
        try:
            out.append(cell.spawn(argv, env, cwd, read_start=False))
        except Exception as exc:
            out.append(exc)
    # The start times once the batch is spawned (none reaped yet: each pid is still its
    # child's), newest first: a child still exec'ing makes the read spin (procs.spawn),
    # and once the newest has exec'd the older ones have too.
    for child in reversed(out):
        if isinstance(child, procs.Child):
            child.start_time = procs.process_start_time(child.pid)
    return out


@dataclass(eq=False)
class RunningJob:
    """The handles of one attempt this executor owns (its state is in the database)."""

    claim: ClaimedJob
    child: procs.Child | None = None
    cell: Cell | None = None
    output: OutputCapture | None = None
    owner: OwnerLog | None = None
    exited: bool = False
    exit_code: int | None = None
    signal: int | None = None
    # Why this daemon terminated the process, if it did before the process ended by itself.
    terminated_for: str | None = None
    finalizing: bool = False
    handles: list[asyncio.TimerHandle] = field(default_factory=list)
    claimed_at: float = field(default_factory=time.monotonic)  # metrics: attempt duration


class Executor:
    """Runs queued jobs as child processes."""

    def __init__(self, app: App) -> None:
        self.app = app
        self.store = app.store
        self.jobs: JobStore = app.store.jobs
        self.config = app.config
        self.instance = instance_id(instance_key(app.config))
        self.contain = app.contain
        self.flusher = Flusher(
            app.store,
            app.stats,
            batch_size=app.config.flush_batch,
            interval_s=app.config.flush_interval_s,
            max_log_lines=app.config.log_buffer_lines,
            max_lines_per_owner=app.config.max_log_lines_per_owner,
        )
        self.running: dict[int, RunningJob] = {}
        self.group_limits: dict[str, int] = {}
        self._wake = asyncio.Event()
        self._none_running = asyncio.Event()
        self._stopped = asyncio.Event()
        self._claimed_recently = False
        self._cancel_pending: set[int] = set()
        self._claims_in_flight = 0
        self._finishing: set[int] = set()  # ended, their end not yet committed
        self._waiters: dict[int, list[asyncio.Future[None]]] = {}
        self._task: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._stopping = False
        self._paused = 0
        self._backoff_handle: asyncio.TimerHandle | None = None
        self._base_env = procs.child_base_env()
        self.spawned = 0
        self._to_spawn: list[_SpawnRequest] = []
        self._spawn_drains = 0
        self._token_prefix = secrets.token_hex(8)
        self._claims = itertools.count(1)
        self._pids: list[tuple[int, str, int, float | None]] = []  # to write (see _started)
        # Ends to write, and whether a task writes them and the pids (see _write_soon).
        self._ends: list[tuple[ClaimedJob, AttemptEnd, asyncio.Future[None]]] = []
        self._writing = False
        # Pids whose write failed, to write again while their attempts run (_retry_pids).
        self._pids_failed: list[tuple[int, str, int, float | None]] = []
        self._retrying_pids = False
        self.spawner = ThreadPoolExecutor(max_workers=4, thread_name_prefix="spawn")
        self._loop_seen: asyncio.AbstractEventLoop | None = None
        self._watcher_seen: tuple[asyncio.AbstractEventLoop, fdwatch.FdWatcher] | None = None

    # -- life cycle ------------------------------------------------------------
    async def start(self) -> None:
        """Recover what a previous daemon left running, then start dispatching."""
        self.flusher.start()
        await self.recover()
        self.group_limits = await self.store.groups.all()
        self._task = asyncio.get_running_loop().create_task(self._dispatch_loop(), name="dispatch")
        self.wake()

    async def stop(self) -> None:
        """Stop claiming; terminate running attempts (queued again); answer waits; write all."""
        self._stopping = True
        self.wake()
        self._stopped.set()  # pending job.wait calls answer with the job's state now
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for rj in list(self.running.values()):
            if rj.exited and rj.output is not None:
                rj.output.close_all()  # ended by itself: keep its outcome, stop waiting for pipes
            else:
                self._terminate(rj, "interrupted")
        await self._wait_no_running(timeout_s=max(10.0, self._max_kill_timeout() + 5.0))
        if self._tasks:  # cells being removed
            await asyncio.wait(list(self._tasks), timeout=10.0)
        await self.flusher.drain()
        self.spawner.shutdown(wait=False)

    async def answer_waits(self) -> None:
        """A graceful stop begins: every pending `job.wait` answers with the job as it is."""
        self._stopped.set()

    def wake(self) -> None:
        """Ask the dispatcher to look for ready jobs."""
        self._wake.set()

    def _loop(self) -> asyncio.AbstractEventLoop:
        """The running loop, kept after the first look (the daemon has one loop, and
        asyncio.get_running_loop costs a getpid syscall a call, a dozen calls a job)."""
        loop = self._loop_seen
        if loop is None or loop.is_closed():
            loop = self._loop_seen = asyncio.get_running_loop()
        return loop

    def _fdwatch(self) -> fdwatch.FdWatcher:
        """The loop's fdwatch watcher, kept like the loop."""
        found = self._watcher_seen
        if found is None or found[0] is not self._loop():
            found = self._watcher_seen = (self._loop(), fdwatch.watcher())
        return found[1]

    def _spawn_task(self, coro: Any) -> None:
        task = self._loop().create_task(coro)
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
                    # Under load a claim per freed slot is a unit per job:
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
                    try:
                        await self._schedule_backoff_wake()
                    except HeroError:
                        # The database went away (a cut-off node): look again shortly.
                        log.warning("could not read the next backoff; retrying shortly")
                        self._backoff_handle = asyncio.get_running_loop().call_later(1.0, self.wake)
                    break
                self._spawn_task(self._launch_all([self.running[job.id] for job in claimed]))
                await asyncio.sleep(0)

    def _group_room(self) -> GroupRoom:
        busy: dict[str, int] = {}
        for rj in self.running.values():
            if rj.claim.group is not None:
                busy[rj.claim.group] = busy.get(rj.claim.group, 0) + 1
        room = {g: limit - busy.get(g, 0) for g, limit in self.group_limits.items()}
        return GroupRoom(full={g for g, r in room.items() if r <= 0}, room=room)

    async def _claim(self, n: int) -> list[ClaimedJob]:
        # Unique per claim: this executor's random prefix and a count (os.urandom per claim
        # was a syscall and a hex encoding under load, a claim every few jobs).
        token = f"{self._token_prefix}{next(self._claims):x}"
        self._claims_in_flight += 1
        try:
            claimed = await self.jobs.claim(n, token, self._group_room())
        finally:
            self._claims_in_flight -= 1
        # Registered in the same loop step as the commit is seen: a cancel answered
        # 'cancelling' after this finds the job here, or in _cancel_pending.
        for c in claimed:
            rj = RunningJob(c)
            if c.id in self._cancel_pending:
                self._cancel_pending.discard(c.id)
                rj.terminated_for = "cancelled"
            elif self._paused:
                # Paused while the claim was in flight (the lease lost, stop all jobs):
                # nothing new starts; the job is queued again, the attempt not counted.
                rj.terminated_for = "interrupted"
            self.running[c.id] = rj
        if claimed:
            self.app.feed.publish("jobs")
        return claimed

    async def _schedule_backoff_wake(self) -> None:
        at = await self.jobs.next_ready_at(now())
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

    async def _launch_all(self, rjs: list[RunningJob]) -> None:
        """Launch the attempts of one claim: one task, their spawns in a batch."""
        spawning: list[tuple[RunningJob, list[str], asyncio.Future[procs.Child]]] = []
        for rj in rjs:
            if rj.claim.spec.env_from_secrets and len(rjs) > 1:
                self._spawn_task(self._launch_all([rj]))  # its secrets are read meanwhile
                continue
            try:
                prepared = await self._prepare(rj)
            except Exception as exc:  # one attempt that cannot start holds up none of the others
                log.exception("launch failed", extra={"job_id": rj.claim.id})
                self.app.metrics.spawn_failures.inc()
                self._spawn_task(self._finalize(rj, error=f"cannot start: {exc}"))
                continue
            if prepared is not None:
                argv, env, cwd = prepared
                assert rj.cell is not None
                spawning.append((rj, argv, self._spawn_soon(rj.cell, argv, env, cwd)))
        for rj, argv, fut in spawning:
            try:
                child = await fut
            except OSError as exc:
                self.app.metrics.spawn_failures.inc()
                what = exc.filename if exc.filename is not None else argv[0]
                self._spawn_task(
                    self._finalize(rj, error=f"cannot start {what}: {exc.strerror or exc}")
                )
                continue
            except Exception as exc:
                log.exception("launch failed", extra={"job_id": rj.claim.id})
                self.app.metrics.spawn_failures.inc()
                self._spawn_task(self._finalize(rj, error=f"cannot start: {exc}"))
                continue
            try:
                self._started(rj, child)
            except Exception:  # as when each launch had its task: the others still start
                log.exception("could not watch a started job", extra={"job_id": rj.claim.id})

    async def _prepare(self, rj: RunningJob) -> tuple[list[str], dict[str, str], str | None] | None:
        """The argv, env and cwd of an attempt about to be spawned (its cell and its log
        owner made), or None if it ended without starting."""
        job = rj.claim
        if rj.terminated_for is not None:  # cancelled (or the daemon stopping) before it started
            self._spawn_task(self._finalize(rj, error=f"{rj.terminated_for} before it started"))
            return None
        argv = job.spec.argv()
        env = self._child_env(job)
        if job.spec.env_from_secrets:
            try:
                env.update(await self.store.secrets.resolve(job.spec.env_from_secrets))
            except HeroError as exc:  # missing, or a sealed value that does not open
                self._spawn_task(self._finalize(rj, error=f"cannot start: {exc}"))
                return None
        limits = job.spec.limits()  # a job has no `type`: its limits are all there is to check
        try:
            if limits:
                self.contain.check_limits(limits)
        except InvalidParams as exc:  # an action defined where the controller was enabled
            self._spawn_task(self._finalize(rj, error=f"cannot start: {exc.field}: {exc.problem}"))
            return None
        rj.cell = self.contain.cell(f"job-{job.id}-{job.attempt}", limits)
        rj.owner = await self.flusher.open_owner("job", str(job.id), job.last_seq)
        return argv, env, job.spec.cwd

    def _started(self, rj: RunningJob, child: procs.Child) -> None:
        """The attempt's process runs: read its output, watch its exit and its timeout."""
        job = rj.claim
        loop = self._loop()
        self.spawned += 1
        rj.child = child
        assert rj.owner is not None
        rj.output = OutputCapture(
            self.flusher,
            rj.owner,
            max_line=self.config.max_line_bytes,
            on_closed=lambda: self._on_output_closed(rj),
        )
        watcher = self._fdwatch()
        rj.output.attach(child.stdout_fd, child.stderr_fd, watcher)
        watcher.add(child.pidfd, self._on_exit, rj)
        if job.spec.timeout_s:
            rj.handles.append(loop.call_later(job.spec.timeout_s, self._on_timeout, rj))
        if rj.terminated_for is not None:  # asked while it was being spawned
            reason, rj.terminated_for = rj.terminated_for, None
            self._terminate(rj, reason)
        # Written with the other launches of this loop step (and the ends queued by then)
        # as one unit: queued to the writer before the end of this attempt can be (that
        # takes its pidfd's event), or in the same unit before it.
        self._pids.append((job.id, job.token, child.pid, child.start_time))
        self._write_soon()

    async def _record_pids(self, pids: list[tuple[int, str, int, float | None]]) -> None:
        try:
            await self.jobs.set_pids(pids)
        except Exception:
            log.exception(
                "could not record jobs' pids; retrying", extra={"job_ids": [p[0] for p in pids]}
            )
            self._retry_pids_later(pids)

    def _retry_pids_later(self, pids: list[tuple[int, str, int, float | None]]) -> None:
        """Write these pids again, on a task of their own (never ahead of the ends), with a
        growing delay, for as long as their attempts run: recovery contains an attempt's
        process group by its recorded pid (the marker in its environment can be removed)."""
        self._pids_failed.extend(pids)
        if not self._retrying_pids:
            self._retrying_pids = True
            self._spawn_task(self._retry_pids())

    def _still_running(
        self, pids: list[tuple[int, str, int, float | None]]
    ) -> list[tuple[int, str, int, float | None]]:
        """Those of `pids` whose attempt (its claim's token) still runs here."""
        out: list[tuple[int, str, int, float | None]] = []
        for p in pids:
            rj = self.running.get(p[0])
            if rj is not None and rj.claim.token == p[1]:
                out.append(p)
        return out

    async def _retry_pids(self) -> None:
        # A pid written late is harmless: job_set_pid changes only a running row of the same
        # claim token, so one whose end was written (or that another claim took) is left.
        # It ends once none of its attempts runs (at a stop too, once they were terminated).
        delay = 0.05
        try:
            while True:
                await asyncio.sleep(delay)
                pids = self._still_running(self._pids_failed)
                self._pids_failed = []
                if not pids:
                    return
                try:
                    await self.jobs.set_pids(pids)
                except Exception as exc:
                    log.warning(
                        "could not record jobs' pids; retrying",
                        extra={"job_ids": [p[0] for p in pids], "error": str(exc)},
                    )
                    self._pids_failed[:0] = pids
                    delay = min(delay * 2, 5.0)
        finally:
            self._retrying_pids = False
            self._pids_failed = []

    def _spawn_soon(
        self, cell: Cell, argv: list[str], env: dict[str, str], cwd: str | None
    ) -> asyncio.Future[procs.Child]:
        """Spawn into `cell` on the spawner pool, in a batch with the launches of the
        same claim: fork/exec blocks for a fraction of a millisecond and releases the
        GIL, so it runs off the loop; one trip to the pool per batch, not per job."""
        loop = self._loop()
        fut: asyncio.Future[procs.Child] = loop.create_future()
        self._to_spawn.append((cell, argv, env, cwd, fut))
        if self._spawn_drains < _SPAWN_DRAINS:
            self._spawn_drains += 1
            self._spawn_task(self._drain_spawns())
        return fut

    async def _drain_spawns(self) -> None:
        loop = self._loop()
        try:
            while self._to_spawn:
                batch = self._to_spawn[:_SPAWN_BATCH]
                del self._to_spawn[:_SPAWN_BATCH]
                try:
                    results = await loop.run_in_executor(self.spawner, _spawn_all, batch)
                except BaseException as exc:  # the pool is shut down (the daemon stops)
                    results = [exc] * len(batch)
                for (*_, fut), got in zip(batch, results, strict=True):
                    if fut.done():
                        continue
                    if isinstance(got, BaseException):
                        fut.set_exception(got)
                    else:
                        fut.set_result(got)
        finally:
            self._spawn_drains -= 1

    def _on_output_closed(self, rj: RunningJob) -> None:
        if rj.exited:
            self._spawn_task(self._finalize(rj))

    def _on_exit(self, rj: RunningJob) -> None:
        child = rj.child
        assert child is not None
        loop = self._loop()
        self._fdwatch().remove(child.pidfd)
        # A job never outlives its main process: kill whatever it left in its cell
        # (for a process group the leader, a zombie until reaped, keeps its id ours;
        # a cgroup's kill, or its removal when empty, is batched on a thread, and its
        # end is written only once that has run: see _finalize).
        assert rj.cell is not None
        rj.cell.leader_ended()
        rj.exit_code, rj.signal = procs.reap(child.pid)
        os.close(child.pidfd)
        rj.exited = True
        for handle in rj.handles:
            handle.cancel()
        rj.handles.clear()
        if rj.output is None or rj.output.open == 0:
            self._spawn_task(self._finalize(rj))
        else:
            delay = 0.0 if self._stopping else _DRAIN_AFTER_EXIT_S
            rj.handles.append(loop.call_later(delay, rj.output.close_all))

    def _on_timeout(self, rj: RunningJob) -> None:
        self._terminate(rj, "timed_out")

    def _terminate(self, rj: RunningJob, reason: str, grace_s: float | None = None) -> None:
        """SIGTERM to the job's process group, SIGKILL after its kill timeout.

        The first reason sticks (a cancel is not turned into an interruption by a
        stop that follows). A process that has already ended is not signalled: it
        keeps its real outcome.
        """
        child = rj.child
        if rj.exited or rj.finalizing:
            return
        if child is None:
            rj.terminated_for = rj.terminated_for or reason  # honoured at launch
            return
        if exited_already(child.pidfd):
            return  # its exit is being delivered: the real outcome wins
        if rj.terminated_for is not None:
            return  # already on its way down
        rj.terminated_for = reason
        if rj.cell is not None:
            rj.cell.signal(signal.SIGTERM)
        grace = rj.claim.spec.kill_timeout_s
        grace = 5.0 if grace is None else grace
        if grace_s is not None:
            grace = min(grace, grace_s)
        loop = self._loop()
        rj.handles.append(loop.call_later(grace, self._kill, rj))

    def _kill(self, rj: RunningJob) -> None:
        if rj.cell is not None and not rj.exited:
            rj.cell.kill()

    def _backoff(self, job: ClaimedJob) -> float:
        base = job.spec.retry_delay_s
        base = self.config.retry_base_s if base is None else base
        delay = min(self.config.retry_cap_s, base * 2.0 ** max(0, job.attempt - 1))
        return delay * random.uniform(0.8, 1.2)

    async def _finalize(self, rj: RunningJob, error: str | None = None) -> None:
        if rj.finalizing:
            return
        rj.finalizing = True
        job = rj.claim
        cell, rj.cell = rj.cell, None
        if cell is not None:
            await cell.ended()  # what its leader left is killed (or its cgroup removed)
        how = rj.terminated_for or "exited"
        if how == "timed_out":
            error = f"timed out after {job.spec.timeout_s}s"
        elif cell is not None and error is None and cell.oom_killed():
            error = f"killed by the OOM killer (memory_max {job.spec.memory_max})"
        if cell is not None and cell.held():
            self._spawn_task(cell.release())  # kill what is left, remove the cgroup
        end = AttemptEnd(
            how=how,
            exit_code=rj.exit_code,
            signal=rj.signal,
            error=error,
            # Read only when a retry is left (`decide`): the claim's attempt is the row's.
            retry_delay_s=self._backoff(job) if job.attempt < job.max_attempts else 0.0,
        )
        # Its process is gone: the slot is free now, while the end is being written (the
        # row stays `running` until then, so nothing can claim the job meanwhile).
        self.running.pop(job.id, None)
        self._finishing.add(job.id)
        self.wake()
        try:
            if rj.owner is not None:
                # Whoever sees the job finished sees all its lines.
                await self.flusher.flush_owner(rj.owner)
            await self._write_end(job, end)
        finally:
            if rj.owner is not None and rj.output is None:
                self.flusher.release_owner(rj.owner)
            self._finishing.discard(job.id)
            if not self.running and not self._finishing:
                self._none_running.set()
        self.app.metrics.attempt_ended(rj)

    def _write_end(self, job: ClaimedJob, end: AttemptEnd) -> asyncio.Future[None]:
        """Queue an attempt's end for the writer; done once committed and its waiters
        woken. The ends queued in one loop step (and while a batch is being written) are
        written together, as one unit (`JobsApi.finish_many`)."""
        fut: asyncio.Future[None] = self._loop().create_future()
        self._ends.append((job, end, fut))
        self._write_soon()
        return fut

    def _write_soon(self) -> None:
        """Have the attempts' pids and ends queued so far written (one task at a time)."""
        if not self._writing:
            self._writing = True
            self._spawn_task(self._write_attempts())

    async def _write_attempts(self) -> None:
        try:
            while self._ends or self._pids:
                pids, self._pids = self._pids, []
                batch, self._ends = self._ends, []
                if not batch:
                    await self._record_pids(pids)
                    continue
                try:
                    done = await self._finish_batch([(job, end) for job, end, _ in batch], pids)
                except BaseException as exc:
                    for *_, fut in batch:
                        if not fut.done():
                            fut.set_exception(exc)
                    raise
                # The finalizers go on first (their slots, metrics), then the waiters wake.
                for *_, fut in batch:
                    if not fut.done():
                        fut.set_result(None)
                self.notify(done)
                self.wake()  # again once committed: a retry queued, dependents released
        finally:
            self._writing = False

    async def _finish_batch(
        self,
        batch: list[tuple[ClaimedJob, AttemptEnd]],
        pids: list[tuple[int, str, int, float | None]],
    ) -> list[int]:
        """Write the ends of a batch of attempts, after `pids`; the ids of the jobs it made
        terminal.

        One unit for them all; if that unit fails, the pids in a unit, then a unit per
        attempt (one bad row never loses the others' ends), each retried until written."""
        if len(batch) > 1 or pids:
            ends = [(j.id, j.token, e) for j, e in batch]
            try:
                results = await self.jobs.finish_many(ends, pids)
            except Exception:
                log.exception("could not write a batch of ends; writing them one by one")
                if pids:
                    await self._record_pids(pids)
            else:
                for finished in results:
                    if finished is not None:  # the batch's settle, the same in each
                        return finished.settled.done
                return []
        ones = await asyncio.gather(
            *(self._finish_one(job, end) for job, end in batch), return_exceptions=True
        )
        done: list[int] = []
        for got in ones:
            if isinstance(got, BaseException):
                log.error("could not write a job's end", exc_info=got)
            else:
                done.extend(got)
        return done

    async def _finish_one(self, job: ClaimedJob, end: AttemptEnd) -> list[int]:
        delay = 0.05
        while True:
            try:
                finished = await self.jobs.finish(job.id, job.token, end)
            except StorageError:
                # The outcome must not be lost: keep trying (the database may be full or busy).
                log.exception("could not write a job's end; retrying", extra={"job_id": job.id})
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
                continue
            return finished.settled.done if finished is not None else []

    def waiters(self) -> int:
        """Calls waiting for a job to end (job.wait, run.wait, job.wait_all)."""
        return sum(len(futs) for futs in self._waiters.values())

    def notify(self, job_ids: list[int]) -> None:
        """Wake the waiters of jobs that reached a terminal state (after the commit)."""
        self.app.feed.publish("jobs")
        for job_id in job_ids:
            for fut in self._waiters.pop(job_id, []):
                if not fut.done():
                    fut.set_result(None)

    # -- verbs ---------------------------------------------------------------------
    async def wait(self, job_id: int, timeout_s: float) -> Job:
        """The job once it is terminal, or as it is when `timeout_s` has passed or we stop."""
        job = await self.jobs.get(job_id)
        if job.status in TERMINAL_JOB_STATES or timeout_s <= 0 or self._stopped.is_set():
            return job
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(job_id, []).append(fut)
        stopped: asyncio.Future[Any] = asyncio.ensure_future(self._stopped.wait())
        ends: list[asyncio.Future[Any]] = [fut, stopped]
        gone = peer_gone()
        if gone is not None:  # the asker disconnected: nobody reads the answer (caller.py)
            ends.append(asyncio.ensure_future(gone.wait()))
        try:
            job = await self.jobs.get(job_id)  # it may have finished meanwhile
            if job.status in TERMINAL_JOB_STATES:
                return job
            deadline = time.monotonic() + timeout_s
            while True:
                left = deadline - time.monotonic()
                # On a shared database another node may end the job: a NOTIFY wakes this
                # waiter, and a look once a second covers a missed one.
                step = left if self.store.backend == "sqlite" else min(left, 1.0)
                await asyncio.wait(ends, timeout=step, return_when=asyncio.FIRST_COMPLETED)
                if any(f.done() for f in ends[1:]) or time.monotonic() >= deadline:
                    break
                job = await self.jobs.get(job_id)
                if job.status in TERMINAL_JOB_STATES:
                    return job
                if fut.done():
                    # Woken to look again, not ended (every waiter is woken when a unit
                    # ended too many jobs to name them, `notify_all`): wait on.
                    fut = asyncio.get_running_loop().create_future()
                    self._waiters.setdefault(job_id, []).append(fut)
                    ends[0] = fut
        finally:
            for end in ends[1:]:
                end.cancel()
            waiters = self._waiters.get(job_id)
            if waiters is not None and fut in waiters:
                waiters.remove(fut)
                if not waiters:
                    del self._waiters[job_id]
        return await self.jobs.get(job_id)

    async def wait_run(self, run_id: int, timeout_s: float) -> None:
        """Until every job of the run is terminal, `timeout_s` has passed or we stop."""

        async def pending() -> set[int]:
            _, jobs, _ = await self.store.runs.get(run_id)
            return {j.id for j in jobs if j.status not in TERMINAL_JOB_STATES}

        await self._wait_ended(pending, timeout_s)

    async def wait_jobs(self, ids: Sequence[int], timeout_s: float) -> dict[int, str]:
        """Until each of `ids` is terminal (or gone), `timeout_s` has passed or we stop;
        the statuses of those that exist."""
        statuses: dict[int, str] = {}

        async def pending() -> set[int]:
            nonlocal statuses
            statuses = await self.jobs.statuses(ids)
            return {i for i, status in statuses.items() if status not in TERMINAL_JOB_STATES}

        await self._wait_ended(pending, timeout_s)
        return statuses

    async def _wait_ended(
        self, pending_jobs: Callable[[], Awaitable[set[int]]], timeout_s: float
    ) -> None:
        """Until `pending_jobs()` (read from the store) is empty, `timeout_s` passed or we stop.

        Waits for one job at a time, the highest pending id (mostly the last to end: a
        run's sink, a batch's tail), then reads them all again: a few reads per wait
        whatever the number of jobs, and the database says when they are done.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        gone = peer_gone()
        while True:
            pending = await pending_jobs()
            remaining = deadline - loop.time()
            if not pending or remaining <= 0 or self._stopped.is_set():
                return
            if gone is not None and gone.is_set():
                return  # the asker disconnected (caller.py)
            with contextlib.suppress(NotFound):  # cleaned meanwhile: it is no longer pending
                await self.wait(max(pending), min(remaining, RUN_WAIT_RECHECK_S))

    async def cancel(self, job_id: int) -> str:
        """Cancel any job not yet finished: 'cancelled' at once, or 'cancelling' (a process)."""
        outcome = await self.jobs.cancel(job_id)
        if outcome.result == "cancelled":
            self.notify(outcome.settled.done)
            self.wake()
            return outcome.result
        self._stop_attempt(job_id)
        return outcome.result

    def _stop_attempt(self, job_id: int) -> None:
        if job_id in self._finishing:
            return  # its process is gone; the end being written reads the intent
        rj = self.running.get(job_id)
        if rj is None:
            if self._claims_in_flight:
                self._cancel_pending.add(job_id)  # perhaps claimed, about to be registered
            # else another node runs it: that node stops it (it reads the intent)
        else:
            self._terminate(rj, "cancelled")

    async def cancel_run(self, run_id: int) -> dict[str, int]:
        """Cancel a run's queued jobs at once and stop its running ones (a persisted intent)."""
        settled, running = await self.jobs.cancel_run(run_id)
        self.notify(settled.done)
        for job_id in running:
            self._stop_attempt(job_id)
        return {"cancelled": len(settled.done), "signalled": len(running)}

    async def stop_all_jobs(self) -> int:
        """Pause claiming, cancel every running job and wait until written; see `resume()`."""
        self._paused += 1
        victims = [rj for rj in self.running.values() if not rj.finalizing]
        for rj in victims:
            if rj.finalizing:
                continue  # it ended while an earlier victim's cancel was being written
            with contextlib.suppress(InvalidState):  # ended meanwhile: nothing to cancel
                await self.jobs.cancel(rj.claim.id)
            self._terminate(rj, "cancelled")
        await self._wait_no_running(timeout_s=self._max_kill_timeout() + 10.0)
        await self.flusher.wait_idle()
        return len(victims)

    def resume(self) -> None:
        """Undo one `stop_all_jobs` pause."""
        self._paused = max(0, self._paused - 1)
        self.wake()

    def lease_lost(self, grace_s: float) -> None:
        """This node lost its lease: stop claiming (until `resume()`) and terminate every
        running attempt within `grace_s` (each ends `interrupted`: queued again, the attempt
        not counted, once its end can be written — unless a live node settled it first)."""
        self._paused += 1
        for rj in list(self.running.values()):
            self._terminate(rj, "interrupted", grace_s=grace_s)

    def cancel_asked(self, job_ids: list[int]) -> None:
        """Stop the attempts of ours whose cancel was asked, possibly through another node
        (the intent is in the database; its end reads it)."""
        for job_id in job_ids:
            rj = self.running.get(job_id)
            if rj is not None and rj.terminated_for is None:
                self._terminate(rj, "cancelled")

    def notify_all(self) -> None:
        """Wake every waiter to look at its job again (too many ended to name them)."""
        self.notify(list(self._waiters))

    def _max_kill_timeout(self) -> float:
        values = [rj.claim.spec.kill_timeout_s or 5.0 for rj in self.running.values()]
        return max(values, default=5.0)

    async def _wait_no_running(self, timeout_s: float) -> None:
        """Until no attempt runs and every end is committed (or `timeout_s`)."""
        if self.running or self._finishing:
            self._none_running.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._none_running.wait(), timeout_s)
        if self.running or self._finishing:
            log.error(
                "jobs still running after their kill timeout",
                extra={"count": len(self.running), "finishing": len(self._finishing)},
            )

    # -- crash recovery ------------------------------------------------------------
    async def recover(self) -> None:
        """Settle jobs a previous daemon left running; no process of theirs survives.

        Its cells first (every process of a cgroup, escapees included), then, for
        what was in no cell (process groups), by pid plus start time and by mark.
        """
        cells = await self.contain.recover()
        if cells:
            log.warning("killed the cells of a previous daemon", extra={"cells": cells})
        # On a shared database only this node's attempts are ours to recover (the others'
        # belong to live nodes, or to the dead-node sweep).
        rows = await self.jobs.running_rows(mine=self.store.backend != "sqlite")
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
        settled, lost = await self.jobs.recover(rows)
        self.notify(settled.done)
        log.warning("recovered jobs left running", extra={"jobs": len(rows), "lost": lost})

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
