"""The service supervisor: keep long-running processes in their desired state.

Each service has a control task that spawns it (the executor's spawner),
waits `start_secs` (and its first passing health check) before calling it
running, restarts it by policy with exponential backoff, and goes `fatal`
when it restarts more than `start_limit` times within `start_window_s`.
Stopping sends `stop_signal` to the whole process group, then SIGKILL after
`stop_timeout_s`. State changes go through the flusher; statistics are
sampled in the background so `service.status_all` is one read.
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
from typing import Any

from hero_procd.app import App
from hero_procd.engine import procs
from hero_procd.engine.flusher import Flusher
from hero_procd.engine.health import run_check
from hero_procd.engine.output import OutputCapture
from hero_procd.errors import InvalidState, NotFound
from hero_procd.model import CommandSpec, ServiceState, dependency_order, now

log = logging.getLogger(__name__)

# Figures are refreshed when someone reads them and they are older than this.
_SAMPLE_EVERY_S = 3.0


@dataclass(eq=False)
class ServiceRun:
    """The supervisor's live view of one service."""

    name: str
    spec: dict[str, Any]
    desired: str = "stopped"
    state: ServiceState = ServiceState.STOPPED
    pid: int | None = None
    pid_start_time: float | None = None
    restarts: int = 0
    exit_code: int | None = None
    signal: int | None = None
    health: str | None = None
    started_at: float | None = None
    task: asyncio.Task[None] | None = None
    exit_future: asyncio.Future[None] | None = None
    stop_requested: asyncio.Event = field(default_factory=asyncio.Event)
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    restart_times: deque[float] = field(default_factory=deque)
    unhealthy_restart: bool = False


class Supervisor:
    """Owns every service process of the daemon."""

    def __init__(self, app: App, flusher: Flusher, spawner: Any, instance: str) -> None:
        self.app = app
        self.store = app.store
        self.flusher = flusher
        self.spawner = spawner
        self.instance = instance
        self.services: dict[str, ServiceRun] = {}
        self._base_env = {
            k: v
            for k, v in os.environ.items()
            if k not in ("NOTIFY_SOCKET", "LISTEN_FDS", "LISTEN_PID")
        }
        self._sampler: asyncio.Task[None] | None = None
        self._autostart: asyncio.Task[None] | None = None
        self._sample_soon = asyncio.Event()
        self._sampled_at = 0.0
        self._written: dict[str, tuple[int, float | None]] = {}
        self._cpu_prev: dict[str, tuple[float, float]] = {}

    # -- life cycle ----------------------------------------------------------
    async def start(self) -> None:
        """Reset live states (no process of ours survived recovery) and start what should run."""
        await self.store.services.reset_all()
        for svc in await self.store.services.list():
            run = ServiceRun(svc.name, svc.spec, desired=svc.desired, restarts=svc.restarts)
            self.services[svc.name] = run
        wanted = [
            n for n, s in self.services.items() if s.desired == "running" or s.spec.get("autostart")
        ]
        order = dependency_order({n: self._deps(n) for n in self.services}, wanted)
        loop = asyncio.get_running_loop()
        # In the background: start-up (and the socket) does not wait for slow services.
        self._autostart = loop.create_task(self._start_in_order(order), name="autostart")
        self._sampler = loop.create_task(self._sample_loop(), name="sampler")

    async def _start_in_order(self, names: list[str]) -> None:
        for name in names:
            try:
                await self.start_service(name, wait_s=0)
            except Exception:
                log.exception("autostart failed", extra={"service": name})

    async def stop(self) -> None:
        """Stop every service, dependents before what they require; desired states are kept."""
        for task in (self._autostart, self._sampler):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        await self.halt_all()

    async def halt_all(self) -> None:
        """Stop every running service process, dependents first, without changing desired states."""
        alive = {n for n, s in self.services.items() if s.task is not None and not s.task.done()}
        order = dependency_order({n: self._deps(n) for n in self.services}, alive)
        # Waves in reverse dependency order; the services of one wave stop in parallel.
        while alive:
            wave = [n for n in reversed(order) if n in alive and not self._dependents(n) & alive]
            if not wave:
                wave = list(alive)
            await asyncio.gather(*(self._halt(self.services[n]) for n in wave))
            alive -= set(wave)

    def _deps(self, name: str) -> list[str]:
        spec = self.services[name].spec
        return [
            d for d in [*spec.get("requires", []), *spec.get("after", [])] if d in self.services
        ]

    def _dependents(self, name: str) -> set[str]:
        return {n for n, s in self.services.items() if name in s.spec.get("requires", [])}

    # -- verbs -----------------------------------------------------------------
    def defined(self, name: str, spec: dict[str, Any]) -> None:
        """A service was defined or redefined: the new spec applies from its next start."""
        run = self.services.get(name)
        if run is None:
            self.services[name] = ServiceRun(name, spec)
        else:
            run.spec = spec

    def _get(self, name: str) -> ServiceRun:
        run = self.services.get(name)
        if run is None:
            raise NotFound("service not found", {"name": name})
        return run

    async def start_service(
        self, name: str, wait_s: float = 0.0, _chain: tuple[str, ...] = ()
    ) -> None:
        """Start a service once what it requires is running (and healthy); maybe wait for it."""
        run = self._get(name)
        for req in run.spec.get("requires", []):
            if req in _chain:
                continue
            if req not in self.services:
                raise NotFound("required service not found", {"name": req, "required_by": name})
            required = self.services[req]
            await self.start_service(req, wait_s=0, _chain=(*_chain, name))
            timeout = max(30.0, float(required.spec.get("start_secs", 1.0)) * 3)
            if not await self._wait_for(required, {ServiceState.RUNNING}, timeout):
                raise InvalidState(
                    "a required service did not reach running",
                    {"name": req, "state": str(required.state), "required_by": name},
                )
        for dep in run.spec.get("after", []):
            # `after` orders starts (as systemd's After=): wait for it if it is starting too.
            other = self.services.get(dep)
            if other is not None and other.task is not None and not other.task.done():
                timeout = max(30.0, float(other.spec.get("start_secs", 1.0)) * 3)
                await self._wait_for(other, {ServiceState.RUNNING}, timeout)
        await self._set_desired(run, "running")
        if run.task is None or run.task.done():
            run.stop_requested = asyncio.Event()
            run.restart_times.clear()
            run.task = asyncio.get_running_loop().create_task(
                self._control(run), name=f"svc:{name}"
            )
        if wait_s > 0:
            await self._wait_for(run, {ServiceState.RUNNING}, wait_s)

    async def stop_service(self, name: str) -> None:
        """Stop a service, after the services that require it."""
        run = self._get(name)
        for dep in sorted(self._dependents(name)):
            other = self.services[dep]
            if other.desired == "running" or (other.task is not None and not other.task.done()):
                await self.stop_service(dep)
        await self._set_desired(run, "stopped")
        await self._halt(run)

    async def restart_service(self, name: str, wait_s: float = 0.0) -> None:
        """Stop the service's process (not its dependents) and start it again."""
        run = self._get(name)
        await self._halt(run)
        await self.start_service(name, wait_s=wait_s)

    async def delete_service(self, name: str) -> None:
        """Stop a service (and its dependents) and forget it."""
        if name in self.services:
            await self.stop_service(name)
            del self.services[name]

    def watched(self) -> None:
        """Someone read service status: refresh the figures in the background if they are old."""
        if time.monotonic() - self._sampled_at >= _SAMPLE_EVERY_S:
            self._sample_soon.set()

    # -- the control loop ------------------------------------------------------
    async def _halt(self, run: ServiceRun) -> None:
        run.stop_requested.set()
        if run.task is not None and not run.task.done():
            with contextlib.suppress(asyncio.CancelledError):
                await run.task

    async def _set_desired(self, run: ServiceRun, desired: str) -> None:
        if run.desired == desired:
            return
        run.desired = desired
        await self.store.services.set_desired(run.name, desired)

    async def _set_state(self, run: ServiceRun, state: ServiceState) -> None:
        run.state = state
        changed, run.changed = run.changed, asyncio.Event()
        await self.store.services.set_state(
            run.name,
            state=str(state),
            pid=run.pid,
            pid_start_time=run.pid_start_time,
            restarts=run.restarts,
            exit_code=run.exit_code,
            signal=run.signal,
            health=run.health,
            started_at=run.started_at,
        )
        changed.set()  # waiters read the database: wake them once the state is committed

    async def _wait_for(self, run: ServiceRun, states: set[ServiceState], timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        final = {ServiceState.FATAL, ServiceState.EXITED, ServiceState.STOPPED}
        while run.state not in states:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            if run.state in final and (run.task is None or run.task.done()):
                return False
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(run.changed.wait(), left)
        return True

    def _env(self, run: ServiceRun) -> dict[str, str]:
        env = dict(self._base_env)
        env.update(run.spec.get("env") or {})
        env["HERO_PROC_SERVICE"] = run.name
        env[procs.INSTANCE_ENV] = self.instance
        return env

    async def _control(self, run: ServiceRun) -> None:
        fast_failures = 0
        final_state = ServiceState.STOPPED
        try:
            while not run.stop_requested.is_set():
                reached_running = await self._run_once(run)
                if run.stop_requested.is_set():
                    break
                spec = run.spec
                clean = run.exit_code == 0 and not run.unhealthy_restart
                if spec.get("oneshot") and clean:
                    final_state = ServiceState.EXITED
                    break
                policy = spec.get("restart", "on-failure")
                if policy == "never" or (policy == "on-failure" and clean):
                    final_state = ServiceState.EXITED
                    break
                fast_failures = 0 if reached_running else fast_failures + 1
                t = time.monotonic()
                run.restart_times.append(t)
                window = float(spec.get("start_window_s", 60.0))
                while run.restart_times and run.restart_times[0] < t - window:
                    run.restart_times.popleft()
                limit = int(spec.get("start_limit", 5))
                if limit and len(run.restart_times) > limit:
                    log.warning("service hit its start limit", extra={"service": run.name})
                    final_state = ServiceState.FATAL
                    break
                run.restarts += 1
                base = float(spec.get("restart_delay_s", 1.0))
                cap = float(spec.get("restart_delay_max_s", 60.0))
                delay = min(cap, base * 2.0 ** max(0, fast_failures - 1)) if fast_failures else base
                await self._set_state(run, ServiceState.BACKOFF)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(run.stop_requested.wait(), delay)
        except Exception:
            log.exception("service control failed", extra={"service": run.name})
            final_state = ServiceState.FATAL
        run.pid = None
        run.pid_start_time = None
        run.started_at = None
        self._cpu_prev.pop(run.name, None)
        self._written.pop(run.name, None)
        await self._set_state(run, final_state)

    async def _run_once(self, run: ServiceRun) -> bool:
        """One life of the process; True if it reached running."""
        spec = run.spec
        command = CommandSpec.from_dict(spec)
        run.exit_code = run.signal = None
        run.health = None
        run.unhealthy_restart = False
        await self._set_state(run, ServiceState.STARTING)
        loop = asyncio.get_running_loop()
        env = self._env(run)
        try:
            if command.env_from_secrets:
                env.update(await self.store.secrets.resolve(command.env_from_secrets))
            child = await loop.run_in_executor(
                self.spawner, procs.spawn, command.argv(), env, command.cwd
            )
        except NotFound as exc:
            log.warning("service cannot start", extra={"service": run.name, "error": str(exc)})
            run.exit_code = 127
            return False
        except OSError as exc:
            what = exc.filename if exc.filename is not None else command.argv()[0]
            log.warning(
                "service cannot start",
                extra={"service": run.name, "error": f"{what}: {exc.strerror}"},
            )
            run.exit_code = 127
            return False
        run.pid, run.pid_start_time, run.started_at = child.pid, child.start_time, now()
        exited: asyncio.Future[Any] = loop.create_future()
        run.exit_future = exited
        owner = await self.flusher.open_owner("service", run.name)
        output = OutputCapture(
            self.flusher,
            owner,
            max_line=self.app.config.max_line_bytes,
            on_closed=lambda: None,
        )
        output.attach(child.stdout_fd, child.stderr_fd)

        def on_exit() -> None:
            loop.remove_reader(child.pidfd)
            procs.signal_group(child.pid, signal.SIGKILL)  # what it left in its group
            run.exit_code, run.signal = procs.reap(child.pid)
            os.close(child.pidfd)
            if not exited.done():
                exited.set_result(None)

        loop.add_reader(child.pidfd, on_exit)
        await self._set_state(run, ServiceState.STARTING)
        health_task: asyncio.Task[None] | None = None
        reached = False
        try:
            reached = await self._await_started(run, exited)
            if reached:
                await self._set_state(run, ServiceState.RUNNING)
                self._sample_soon.set()  # show its memory and CPU without waiting a period
                if spec.get("health"):
                    health_task = loop.create_task(self._health_loop(run, exited))
                stop: asyncio.Future[Any] = loop.create_task(run.stop_requested.wait())
                await asyncio.wait({exited, stop}, return_when=asyncio.FIRST_COMPLETED)
                stop.cancel()
            if not exited.done():
                await self._terminate(run, child.pid, exited)
        finally:
            if health_task is not None:
                health_task.cancel()
            if not exited.done():
                await self._terminate(run, child.pid, exited)
            loop.call_later(2.0, output.close_all)
        return reached

    async def _await_started(self, run: ServiceRun, exited: asyncio.Future[Any]) -> bool:
        """Running once up for `start_secs` and (if it has one) past its first health check."""
        stop: asyncio.Future[Any] = asyncio.ensure_future(run.stop_requested.wait())
        try:
            done, _ = await asyncio.wait(
                {exited, stop},
                return_when=asyncio.FIRST_COMPLETED,
                timeout=float(run.spec.get("start_secs", 1.0)),
            )
            if done:
                return False
            check = run.spec.get("health")
            if not check:
                return True
            while not exited.done() and not run.stop_requested.is_set():
                if await run_check(check):
                    run.health = "healthy"
                    return True
                done, _ = await asyncio.wait(
                    {exited, stop},
                    return_when=asyncio.FIRST_COMPLETED,
                    timeout=min(float(check["interval_s"]), 1.0),
                )
            return False
        finally:
            stop.cancel()

    async def _health_loop(self, run: ServiceRun, exited: asyncio.Future[None]) -> None:
        check = run.spec["health"]
        failures = 0
        while not exited.done():
            await asyncio.sleep(float(check["interval_s"]))
            ok = await run_check(check)
            failures = 0 if ok else failures + 1
            health = "healthy" if failures < int(check["retries"]) else "degraded"
            if health != run.health:
                run.health = health
                await self._set_state(run, run.state)
            if health == "degraded" and run.spec.get("restart_on_unhealthy") and run.pid:
                log.warning("restarting unhealthy service", extra={"service": run.name})
                run.unhealthy_restart = True
                await self._terminate(run, run.pid, exited)
                return

    async def _terminate(self, run: ServiceRun, pid: int, exited: asyncio.Future[None]) -> None:
        """stop_signal to the process group, SIGKILL after stop_timeout_s."""
        if exited.done():
            return
        if run.state != ServiceState.STOPPING:
            await self._set_state(run, ServiceState.STOPPING)
        sig = procs.SIGNALS.get(str(run.spec.get("stop_signal", "TERM")), signal.SIGTERM)
        procs.signal_group(pid, sig)
        try:
            await asyncio.wait_for(
                asyncio.shield(exited), float(run.spec.get("stop_timeout_s", 10.0))
            )
        except TimeoutError:
            log.warning("service ignored its stop signal; killing", extra={"service": run.name})
            procs.signal_group(pid, signal.SIGKILL)
            await exited

    # -- statistics ----------------------------------------------------------------
    async def _sample_loop(self) -> None:
        # A scan of /proc costs ~13 ms of CPU for 100 services here, so figures are
        # sampled on demand: when a status read finds them older than _SAMPLE_EVERY_S
        # (the answer carries the previous figures; the call never waits for a scan),
        # and when a service has just started. An unwatched daemon does not wake at all.
        while True:
            await self._sample_soon.wait()
            self._sample_soon.clear()
            self._sampled_at = time.monotonic()
            live = {n: s.pid for n, s in self.services.items() if s.pid is not None}
            if not live:
                continue
            try:
                stats = await asyncio.to_thread(sample_groups, live)
            except Exception:
                log.exception("sampling failed")
                continue
            t = time.monotonic()
            for name, (rss, cpu_total) in stats.items():
                prev = self._cpu_prev.get(name)
                self._cpu_prev[name] = (t, cpu_total)
                pct = (
                    None
                    if prev is None
                    else round(100.0 * (cpu_total - prev[1]) / (t - prev[0]), 1)
                )
                figures = (rss, max(0.0, pct) if pct is not None else None)
                if self._written.get(name) == figures:
                    continue
                self._written[name] = figures
                await self.store.services.set_stats([(*figures, name)])


def sample_groups(groups: dict[str, int]) -> dict[str, tuple[int, float]]:
    """(RSS bytes, CPU seconds) summed over each process group, from one scan of the processes."""
    import psutil

    wanted = {pgid: name for name, pgid in groups.items()}
    out: dict[str, tuple[int, float]] = {}
    for proc in psutil.process_iter():
        try:
            pgid = os.getpgid(proc.pid)
            name = wanted.get(pgid)
            if name is None:
                continue
            with proc.oneshot():
                rss = proc.memory_info().rss
                times = proc.cpu_times()
        except (psutil.Error, ProcessLookupError):
            continue
        total_rss, total_cpu = out.get(name, (0, 0.0))
        out[name] = (total_rss + rss, total_cpu + times.user + times.system)
    return out
