"""One owner task per service: its verbs are commands, served one at a time.

`ServiceOwner.call(verb)` queues a command and awaits the future the owner
resolves. Only the owner (and the life task it starts and ends) spawns,
signals or writes the live state of its service, so two verbs can never
interleave: a start queued behind a stop runs once the stop is done (and so
ends running), a delete ends any life first, including one still waiting
for what it requires, and leaves no process.

A *life* is the background task that keeps the process in its desired
state: wait for required services, spawn, wait `start_secs` and the first
passing health check, watch, restart by policy with backoff, go `fatal` at
the start limit. Every exit of a process is recorded in the service's
history (`service_events`); an unexpected one is logged.

The fields below mirror what this owner last committed (it is their only
writer) and are set only after the store returned: the database stays the
truth, the mirror saves a read when the owner writes a whole state row.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from hero_procd import gcpause
from hero_procd.engine import procs
from hero_procd.engine.contain import Cell
from hero_procd.engine.health import CheckRunner, run_check
from hero_procd.engine.output import OutputCapture
from hero_procd.errors import HeroError, InvalidState, NotFound
from hero_procd.model import CommandSpec, ServiceState, find_cycle, now, process_part

if TYPE_CHECKING:
    from hero_procd.engine.supervisor import Supervisor

log = logging.getLogger(__name__)

FINAL_STATES = frozenset({ServiceState.STOPPED, ServiceState.EXITED, ServiceState.FATAL})


def _closing(name: str) -> InvalidState:
    return InvalidState(
        "services are being stopped (daemon stop or system.wipe_all)", {"name": name}
    )


@dataclass
class Command:
    """One verb for the owner, answered through `future`."""

    verb: str
    future: asyncio.Future[Any]
    args: dict[str, Any] = field(default_factory=dict)


@dataclass
class Exit:
    """How one process of the service ended."""

    started_at: float | None
    exit_code: int | None
    signal: int | None
    ran_s: float | None
    reason: str


class ServiceOwner:
    """The only task that acts on one service: serves its verbs, runs its life."""

    def __init__(self, supervisor: Supervisor, name: str) -> None:
        self.sup = supervisor
        self.store = supervisor.store
        self.name = name
        self.state = ServiceState.STOPPED
        self.pid: int | None = None
        self.pid_start_time: float | None = None
        self.started_at: float | None = None
        self.restarts = 0  # automatic (the restart policy), like systemd's NRestarts
        self.manual_restarts = 0  # asked for by service.restart while a life was in progress
        self.exit_code: int | None = None
        self.signal: int | None = None
        self.health: str | None = None
        # The cell (cgroup or process group) of the current run, while there is one.
        self.cell: Cell | None = None
        # Why the last life gave up before spawning (a required service never ran).
        self.failure: str | None = None
        self.changed = asyncio.Event()
        self._queue: asyncio.Queue[Command] = asyncio.Queue()
        self._life: asyncio.Task[None] | None = None
        # The definition the current life spawns its processes from.
        self._life_spec: dict[str, Any] = {}
        self._stop_life = asyncio.Event()
        self._stop_reason = "stop"
        self._captures: set[OutputCapture] = set()
        self._loaded = False
        self.retired = False
        self._closed = False
        self._task = asyncio.get_running_loop().create_task(self._serve(), name=f"svc:{name}")

    # -- the command queue -------------------------------------------------------------
    async def call(self, verb: str, **args: Any) -> Any:
        """Queue a verb and wait for its answer (a cancelled caller does not undo it)."""
        if self._closed:
            raise _closing(self.name)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(Command(verb, future, args))
        with gcpause.lifted():  # a start or stop can take long: not with the collector paused
            return await future

    @property
    def live(self) -> bool:
        """True while a life (starting, running, backing off or stopping) is in progress."""
        return self._life is not None and not self._life.done()

    async def _serve(self) -> None:
        while True:
            cmd = await self._queue.get()
            try:
                if not self._loaded:
                    await self._load()
                result = await getattr(self, f"_do_{cmd.verb}")(**cmd.args)
            except Exception as exc:
                if not isinstance(exc, NotFound) and type(exc).__module__ != "hero_procd.errors":
                    log.exception("service command failed", extra={"service": self.name})
                if not cmd.future.done():
                    cmd.future.set_exception(exc)
            else:
                if not cmd.future.done():
                    cmd.future.set_result(result)
            if self._queue.empty() and self.retired and not self.live:
                # Deleted and idle: the next verb for this name gets a new owner.
                self.sup.forget(self)
                return

    async def _load(self) -> None:
        """Take the counters of the stored row (a fresh daemon, a redefined name)."""
        with contextlib.suppress(NotFound):
            row = await self.store.services.get(self.name)
            self.restarts, self.exit_code, self.signal = row.restarts, row.exit_code, row.signal
            self.manual_restarts = row.manual_restarts
        self._loaded = True

    async def close(self) -> None:
        """Daemon shutdown or wipe, after `halt`: refuse new verbs, answer the queued ones,
        end any life begun since (a start queued before the halt), then stop serving.

        The verb in progress is let finish (cancelling it would leave its caller
        unanswered, or a life it began unstopped); every queued one is answered
        with InvalidState.
        """
        self._closed = True
        while not self._queue.empty():
            cmd = self._queue.get_nowait()
            if not cmd.future.done():
                cmd.future.set_exception(_closing(self.name))
        if not self._task.done():
            halted: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
            self._queue.put_nowait(Command("halt", halted))
            with contextlib.suppress(Exception):
                await halted
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._end_life("daemon stop")

    # -- verbs -------------------------------------------------------------------------
    async def _do_define(self, spec: dict[str, Any]) -> Any:
        # The cycle check reads the other definitions in the same unit as the write.
        service = await self.store.services.define(self.name, spec, find_cycle)
        self.retired = False
        return service

    async def _do_start(self) -> None:
        service = await self.store.services.get(self.name)
        self.retired = False
        await self.store.services.set_desired(self.name, "running")
        if not self.live:
            # Committed before the call answers: whoever reads next sees it starting.
            await self._set_state(ServiceState.STARTING)
            self._begin_life(service.spec)

    async def _do_stop(self) -> None:
        await self.store.services.get(self.name)
        await self.store.services.set_desired(self.name, "stopped")
        await self._end_life("stop")

    async def _do_restart(self) -> None:
        service = await self.store.services.get(self.name)
        await self.store.services.set_desired(self.name, "running")
        if self.live:  # a restart of a stopped service is a start: not counted
            self.manual_restarts += 1
        await self._end_life("restart")
        await self._set_state(ServiceState.STARTING)
        self._begin_life(service.spec)

    async def _do_refresh(self) -> bool:
        """The definition was changed without this owner (stack.apply, service.update): a
        life spawning from an older process definition is restarted with the stored one;
        a service that is not live stays as it is. True if restarted.

        Decided here, after every verb queued before it: a stop served first leaves
        the service stopped; a start that read the definition before the change is
        live by now and restarted.
        """
        service = await self.store.services.get(self.name)
        if not self.live or process_part(self._life_spec) == process_part(service.spec):
            return False
        await self._end_life("restart")
        await self._set_state(ServiceState.STARTING)
        self._begin_life(service.spec)
        return True

    async def _do_halt(self) -> None:
        """Daemon shutdown: end the life, keep the desired state for the next daemon."""
        await self._end_life("daemon stop")

    async def _do_delete(self) -> dict[str, int]:
        await self._end_life("delete")
        # Read what the pipes still hold now, so that every line of the service is
        # written before the delete below, and none after it.
        for capture in list(self._captures):
            capture.close_all()
        owner = await self.sup.flusher.open_owner("service", self.name)
        try:
            await self.sup.flusher.flush_owner(owner)
        finally:
            self.sup.flusher.release_owner(owner)
        deleted = await self.store.services.delete(self.name)
        # The counter stays in log_owners: a service of this name goes on from it.
        self.sup.flusher.forget_owner("service", self.name)
        self.retired = True
        self.restarts, self.manual_restarts, self.exit_code, self.signal = 0, 0, None, None
        self.state, self.health, self.failure = ServiceState.STOPPED, None, None
        return deleted

    # -- life --------------------------------------------------------------------------
    def _begin_life(self, spec: dict[str, Any]) -> None:
        self._stop_life = asyncio.Event()
        self._stop_reason = "stop"
        self.failure = None
        self._life_spec = spec
        loop = asyncio.get_running_loop()
        self._life = loop.create_task(self._live(spec), name=f"svc-life:{self.name}")

    async def _end_life(self, reason: str) -> None:
        if self._life is None:
            return
        self._stop_reason = reason
        self._stop_life.set()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.shield(self._life)

    async def _set_state(self, state: ServiceState) -> None:
        """Commit the live state, then mirror it and wake whoever waits on it."""
        await self.store.services.set_state(
            self.name,
            state=str(state),
            pid=self.pid,
            pid_start_time=self.pid_start_time,
            restarts=self.restarts,
            manual_restarts=self.manual_restarts,
            exit_code=self.exit_code,
            signal=self.signal,
            health=self.health,
            started_at=self.started_at,
        )
        self.state = state
        self.changed.set()
        self.changed = asyncio.Event()
        self.sup.state_changed()

    async def _wait_stop(self, timeout_s: float) -> bool:
        """Wait up to `timeout_s` for a stop of this life; True if one came."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop_life.wait(), timeout_s)
        return self._stop_life.is_set()

    async def _live(self, spec: dict[str, Any]) -> None:
        final = ServiceState.STOPPED
        restart_times: deque[float] = deque()
        fast_failures = 0
        try:
            await self._set_state(ServiceState.STARTING)
            problem = await self._await_requirements(spec)
            if problem is not None:
                if not self._stop_life.is_set():
                    self.failure = problem
                    log.warning(
                        "service cannot start", extra={"service": self.name, "error": problem}
                    )
                    final = ServiceState.FATAL
                return
            while not self._stop_life.is_set():
                reached, ended = await self._run_once(spec)
                if self._stop_life.is_set():
                    if ended is not None:
                        await self._record(
                            ended, True, self._stop_reason == "restart", self._stop_reason
                        )
                    break
                assert ended is not None
                clean = ended.exit_code == 0 and ended.reason != "unhealthy"
                policy = spec.get("restart", "on-failure")
                restart = not (
                    (spec.get("oneshot") and clean)
                    or policy == "never"
                    or (policy == "on-failure" and clean)
                )
                # A life that reached running but lasted under a second (start_secs 0, say)
                # is a fast failure too: an instant crash loop backs off whatever start_secs.
                lived = ended.ran_s if ended.ran_s is not None else 0.0
                stable = reached and lived >= max(1.0, float(spec.get("start_secs", 1.0)))
                fast_failures = 0 if stable else fast_failures + 1
                if restart:
                    t = time.monotonic()
                    restart_times.append(t)
                    window = float(spec.get("start_window_s", 60.0))
                    while restart_times and restart_times[0] < t - window:
                        restart_times.popleft()
                    limit = int(spec.get("start_limit", 5))
                    if limit and len(restart_times) > limit:
                        restart = False
                        ended.reason += "; start limit reached"
                        final = ServiceState.FATAL
                else:
                    final = ServiceState.EXITED
                # A clean exit is expected unless the policy says it must not end (a
                # oneshot is meant to end, whatever the policy).
                expected = clean and (policy != "always" or bool(spec.get("oneshot")))
                await self._record(ended, expected, restart, ended.reason)
                if not restart:
                    if final == ServiceState.FATAL:
                        log.warning("service hit its start limit", extra={"service": self.name})
                    break
                self.restarts += 1
                base = float(spec.get("restart_delay_s", 1.0))
                cap = float(spec.get("restart_delay_max_s", 60.0))
                delay = min(cap, base * 2.0 ** max(0, fast_failures - 1)) if fast_failures else base
                await self._set_state(ServiceState.BACKOFF)
                if await self._wait_stop(delay):
                    break
        except Exception:
            log.exception("service life failed", extra={"service": self.name})
            final = ServiceState.FATAL
        finally:
            self.pid = self.pid_start_time = self.started_at = None
            self.sup.forget_figures(self.name)
            await self._set_state(final)

    async def _await_requirements(self, spec: dict[str, Any]) -> str | None:
        """Wait until what it requires runs (and what it comes after has started); why not."""
        for req in spec.get("requires", []):
            timeout = max(30.0, float(spec.get("start_secs", 1.0)) * 3)
            if not await self.sup.wait_running(req, timeout, self._stop_life):
                return f"required service {req} did not reach running"
        for dep in spec.get("after", []):
            # `after` orders starts (as systemd's After=): wait only if it is starting too.
            if self.sup.is_live(dep):
                await self.sup.wait_running(dep, max(30.0, 3.0), self._stop_life)
        if self._stop_life.is_set():
            return "stopped while waiting for what it requires"
        return None

    async def _record(self, ended: Exit, expected: bool, restarted: bool, reason: str) -> None:
        """One exit into the history; an unexpected one is logged too."""
        await self.store.services.record_exit(
            self.name,
            started_at=ended.started_at,
            exit_code=ended.exit_code,
            signal=ended.signal,
            ran_s=ended.ran_s,
            expected=expected,
            restarted=restarted,
            reason=reason,
        )
        if not expected:
            log.warning(
                "service exited unexpectedly",
                extra={
                    "service": self.name,
                    "exit_code": ended.exit_code,
                    "signal": ended.signal,
                    "ran_s": ended.ran_s,
                    "restarting": restarted,
                    "reason": reason,
                },
            )

    def _env(self, spec: dict[str, Any]) -> dict[str, str]:
        env = dict(self.sup.base_env)
        env.update(spec.get("env") or {})
        env["HERO_PROC_SERVICE"] = self.name
        env[procs.INSTANCE_ENV] = self.sup.instance
        return env

    def _checker(self) -> CheckRunner:
        return CheckRunner(self.sup.app.contain, self.sup.spawner, f"check-{self.name}")

    def _check_env(self) -> dict[str, str]:
        # The daemon's environment with its instance mark (not the service's own mark:
        # a check is not a process of the service), found by recovery after a kill -9.
        return {**self.sup.base_env, procs.INSTANCE_ENV: self.sup.instance}

    async def _run_once(self, spec: dict[str, Any]) -> tuple[bool, Exit | None]:
        """One process: (whether it reached running, how it ended or None if not spawned)."""
        command = CommandSpec.from_dict(spec)
        self.exit_code = self.signal = None
        self.health = None
        await self._set_state(ServiceState.STARTING)
        if self._stop_life.is_set():
            return False, None
        loop = asyncio.get_running_loop()
        env = self._env(spec)
        cell = self.sup.app.contain.cell(f"svc-{self.name}", command.limits())
        try:
            self.sup.app.contain.check_limits(spec)
            if command.env_from_secrets:
                env.update(await self.store.secrets.resolve(command.env_from_secrets))
            child = await loop.run_in_executor(
                self.sup.spawner, cell.spawn, command.argv(), env, command.cwd
            )
        except (HeroError, OSError) as exc:  # a secret missing or not opening, a bad limit
            await cell.release()
            if isinstance(exc, OSError):
                what = exc.filename if exc.filename is not None else command.argv()[0]
                error = f"{what}: {exc.strerror}"
            else:
                error = str(exc)
            log.warning("service cannot start", extra={"service": self.name, "error": error})
            self.exit_code = 127
            return False, Exit(None, 127, None, 0.0, f"cannot start: {error}")
        self.cell = cell
        try:
            return await self._watch_run(spec, cell, child)
        finally:
            self.cell = None
            await cell.release()

    async def _watch_run(
        self, spec: dict[str, Any], cell: Cell, child: procs.Child
    ) -> tuple[bool, Exit]:
        """Watch one spawned run until it ends (stopped, exited, unhealthy); how it ended."""
        loop = asyncio.get_running_loop()
        self.pid, self.pid_start_time, self.started_at = child.pid, child.start_time, now()
        began = time.monotonic()
        exited: asyncio.Future[None] = loop.create_future()
        owner = await self.sup.flusher.open_owner("service", self.name)
        output = OutputCapture(
            self.sup.flusher,
            owner,
            max_line=self.sup.app.config.max_line_bytes,
            on_closed=lambda: self._captures.discard(output),
        )
        self._captures.add(output)
        output.attach(child.stdout_fd, child.stderr_fd)

        forking = spec.get("type") == "forking"
        followers: list[asyncio.Task[None]] = []
        ending = ["exited"]

        def on_exit() -> None:
            loop.remove_reader(child.pidfd)
            if forking and procs.peek_exit(child.pid) == 0 and not exited.done():
                # It went into the background: the service lives while its cell does.
                self.exit_code, self.signal = procs.reap(child.pid)
                os.close(child.pidfd)
                followers.append(loop.create_task(self._follow(spec, cell, exited, ending)))
                return
            # A service's main process ended: so does what it left behind (killed while
            # the leader is unreaped, so that its process group is still its own).
            cell.kill()
            self.exit_code, self.signal = procs.reap(child.pid)
            os.close(child.pidfd)
            if not exited.done():
                exited.set_result(None)

        loop.add_reader(child.pidfd, on_exit)
        await self._set_state(ServiceState.STARTING)  # now with its pid
        health_task: asyncio.Task[bool] | None = None
        reached = False
        reason = "exited"
        try:
            reached = await self._await_started(spec, exited)
            if reached:
                await self._set_state(ServiceState.RUNNING)
                self.sup.sample_soon()  # show its memory and CPU without waiting a period
                if spec.get("health"):
                    health_task = loop.create_task(self._health_loop(spec, exited))
                stop = loop.create_task(self._stop_life.wait())
                waits: set[asyncio.Future[Any]] = {exited, stop}
                if health_task is not None:
                    waits.add(health_task)
                await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
                stop.cancel()
                if health_task is not None and health_task.done() and health_task.result():
                    reason = "unhealthy"
            if not exited.done():
                await self._terminate(spec, cell, exited)
        finally:
            if health_task is not None and not health_task.done():
                health_task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await health_task
            if not exited.done():
                await self._terminate(spec, cell, exited)
            for task in followers:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            # A grandchild that left the group may hold the pipes: read what they hold later.
            loop.call_later(2.0, output.close_all)
        if self._stop_life.is_set() and reason == "exited":
            reason = self._stop_reason
        elif reason == "exited" and cell.oom_killed():
            reason = f"killed by the OOM killer (memory_max {spec.get('memory_max')})"
        elif reason == "exited" and ending[0] != "exited":
            reason = ending[0]
        elif self.signal is not None and reason == "exited":
            reason = f"killed by signal {self.signal}"
        ran = round(time.monotonic() - began, 3)
        return reached, Exit(self.started_at, self.exit_code, self.signal, ran, reason)

    async def _await_started(self, spec: dict[str, Any], exited: asyncio.Future[None]) -> bool:
        """Running once up for `start_secs` and (if it has one) past its first health check."""
        stop: asyncio.Future[Any] = asyncio.ensure_future(self._stop_life.wait())
        try:
            done, _ = await asyncio.wait(
                {exited, stop},
                return_when=asyncio.FIRST_COMPLETED,
                timeout=float(spec.get("start_secs", 1.0)),
            )
            if done:
                return False
            check = spec.get("health")
            if not check:
                return True
            while not exited.done() and not self._stop_life.is_set():
                # The check is cancelled (its process group killed) if the process exits
                # or a stop comes first.
                probe = asyncio.ensure_future(run_check(check, self._check_env(), self._checker()))
                done, _ = await asyncio.wait(
                    {exited, stop, probe}, return_when=asyncio.FIRST_COMPLETED
                )
                if probe not in done:
                    probe.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await probe
                    return False
                if probe.result():
                    self.health = "healthy"
                    return True
                await asyncio.wait(
                    {exited, stop},
                    return_when=asyncio.FIRST_COMPLETED,
                    timeout=min(float(check["interval_s"]), 1.0),
                )
            return False
        finally:
            stop.cancel()

    async def _health_loop(self, spec: dict[str, Any], exited: asyncio.Future[None]) -> bool:
        """Check while it runs; True when it should be restarted as unhealthy."""
        check = spec["health"]
        failures = 0
        while not exited.done():
            await asyncio.sleep(float(check["interval_s"]))
            ok = await run_check(check, self._check_env(), self._checker())
            failures = 0 if ok else failures + 1
            health = "healthy" if failures < int(check["retries"]) else "degraded"
            if health != self.health:
                self.health = health
                await self._set_state(self.state)
            if health == "degraded" and spec.get("restart_on_unhealthy"):
                log.warning("restarting unhealthy service", extra={"service": self.name})
                return True
        return False

    async def _follow(
        self, spec: dict[str, Any], cell: Cell, exited: asyncio.Future[None], ending: list[str]
    ) -> None:
        """A forking service after its launcher exited 0: alive while its cell holds a process.

        With a `pid_file`, the process it names is the main one (shown as the pid):
        when it ends, what it left is killed, as for a simple service's main process.
        """
        launched = self.pid_start_time
        try:
            left = await asyncio.to_thread(cell.pids)
            if left:  # not the launcher's pid (reaped) while the pid file is awaited
                self.pid, self.pid_start_time = left[0], procs.process_start_time(left[0])
                await self._set_state(self.state)
            main = await self._main_from_pid_file(spec, cell, launched)
            if main is not None:
                self.pid, self.pid_start_time = main, procs.process_start_time(main)
                await self._set_state(self.state)
                await self._wait_pid(main)
                cell.kill()
                ending[0] = "its main process (pid file) exited"
                await cell.wait_empty()
            else:
                left = await asyncio.to_thread(cell.pids)
                if left:
                    self.pid, self.pid_start_time = left[0], procs.process_start_time(left[0])
                    await self._set_state(self.state)
                await cell.wait_empty()
                ending[0] = "its cgroup emptied"
            self.exit_code = None
        finally:
            if not exited.done():
                exited.set_result(None)

    async def _main_from_pid_file(
        self, spec: dict[str, Any], cell: Cell, launched: float | None
    ) -> int | None:
        """The pid its pid_file names, once written (within start_secs + 5 s), or None.

        Only a process of the cell counts (where the cell can tell; elsewhere one started
        no earlier than the launcher): a stale file of a previous run, or one naming
        another program, is waited past rather than followed."""
        pid_file = spec.get("pid_file")
        if not pid_file:
            return None
        path = os.path.join(spec.get("cwd") or "/", pid_file)
        deadline = time.monotonic() + float(spec.get("start_secs", 1.0)) + 5.0
        while time.monotonic() < deadline and cell.populated():
            try:
                text = await asyncio.to_thread(_read_small, path)
                pid = int(text.split()[0])
            except (OSError, ValueError, IndexError):
                await asyncio.sleep(0.05)
                continue
            if pid > 1 and pid != os.getpid() and await asyncio.to_thread(cell.holds, pid):
                started = procs.process_start_time(pid)
                if started is not None and (launched is None or started >= launched):
                    return pid
            await asyncio.sleep(0.05)
        log.warning("service wrote no usable pid file", extra={"service": self.name})
        return None

    async def _wait_pid(self, pid: int) -> None:
        """Until process `pid` (not our child) ends: its pidfd on the loop."""
        try:
            pidfd = os.pidfd_open(pid)
        except ProcessLookupError:
            return
        loop = asyncio.get_running_loop()
        gone: asyncio.Future[None] = loop.create_future()

        def readable() -> None:
            if not gone.done():
                gone.set_result(None)

        loop.add_reader(pidfd, readable)
        try:
            await gone
        finally:
            loop.remove_reader(pidfd)
            os.close(pidfd)

    async def _terminate(
        self, spec: dict[str, Any], cell: Cell, exited: asyncio.Future[None]
    ) -> None:
        """stop_signal to every process of the cell, SIGKILL to all after stop_timeout_s."""
        if exited.done():
            return
        if self.state != ServiceState.STOPPING:
            await self._set_state(ServiceState.STOPPING)
        sig = procs.SIGNALS.get(str(spec.get("stop_signal", "TERM")), signal.SIGTERM)
        cell.signal(sig)
        try:
            await asyncio.wait_for(asyncio.shield(exited), float(spec.get("stop_timeout_s", 10.0)))
        except TimeoutError:
            log.warning("service ignored its stop signal; killing", extra={"service": self.name})
            cell.kill()
            await exited


def _read_small(path: str) -> str:
    with open(path, encoding="ascii", errors="replace") as fh:
        return fh.read(64)
