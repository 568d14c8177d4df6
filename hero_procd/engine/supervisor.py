"""The service supervisor: the registry of service owners, dependencies, figures.

Every verb of a service is a command to that service's owner task
(engine/services/owner.py), which alone spawns, signals and writes its
service. What spans several services lives here and only sends commands:
a start starts what the service requires first, a stop stops what requires
it first, the daemon's stop halts dependents before what they require. No
owner ever waits for another owner's queue, so verbs on services that
depend on each other cannot deadlock, and every walk of the dependency
graph is bounded (a cycle stored by an older version cannot recurse).
Statistics are sampled in the background so `service.status_all` is one read.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Sequence
from typing import Any

from hero_procd import gcpause
from hero_procd.app import App
from hero_procd.caller import peer_gone
from hero_procd.engine import procs
from hero_procd.engine.contain import Cell
from hero_procd.engine.flusher import Flusher
from hero_procd.engine.services.owner import FINAL_STATES, ServiceOwner
from hero_procd.errors import HeroError, InvalidState, NotFound
from hero_procd.model import ServiceState, dependency_order
from hero_procd.store.records import Service

log = logging.getLogger(__name__)

# Figures are refreshed when someone reads them and they are older than this.
_SAMPLE_EVERY_S = 3.0


class Supervisor:
    """Owns every service process of the daemon, through one owner per service."""

    def __init__(self, app: App, flusher: Flusher, spawner: Any, instance: str) -> None:
        self.app = app
        self.store = app.store
        self.flusher = flusher
        self.spawner = spawner
        self.instance = instance
        self.owners: dict[str, ServiceOwner] = {}
        # Set by halt_all(forget=True): no owner may be made (no process started) until
        # reopen(), so nothing spawns between a wipe's halt and its delete of the rows.
        self._closed = False
        self.base_env = procs.child_base_env()
        self._any_change = asyncio.Event()
        self._sampler: asyncio.Task[None] | None = None
        self._autostart: asyncio.Task[None] | None = None
        self._sample_soon = asyncio.Event()
        self._sampled_at = 0.0
        self._written: dict[str, tuple[int, float | None]] = {}
        self._cpu_prev: dict[str, tuple[float, float]] = {}
        self.waiters = 0  # calls waiting for a service to reach running (a gauge)
        # Set when a graceful stop begins: every wait for `running` answers at once.
        self._released = asyncio.Event()

    # -- life cycle ----------------------------------------------------------
    async def answer_waits(self) -> None:
        """A graceful stop begins: every call waiting (wait_s) for a service to reach
        running answers now with the service as it is (its start was done), instead of
        holding the socket's close for the shutdown grace."""
        self._released.set()

    async def start(self) -> None:
        """Reset live states (no process of ours survived recovery) and start what should run."""
        # SQLite has one node: this daemon adopts every service. On PostgreSQL a daemon
        # supervises only its own node's services.
        await self.store.services.reset_all(adopt=self.store.backend == "sqlite")
        services = [s for s in await self.store.services.list() if s.node == self.app.config.node]
        wanted = [s.name for s in services if s.desired == "running" or s.spec.get("autostart")]
        order = dependency_order(_graph(services, with_after=True), wanted)
        loop = asyncio.get_running_loop()
        # In the background: start-up (and the socket) does not wait for slow services.
        self._autostart = loop.create_task(self._start_in_order(order), name="autostart")
        self._sampler = loop.create_task(self._sample_loop(), name="sampler")

    async def _start_in_order(self, names: list[str]) -> None:
        for name in names:
            try:
                await self.owner(name).call("start")
            except Exception:
                log.exception("autostart failed", extra={"service": name})

    async def stop(self) -> None:
        """Stop every service, dependents before what they require; desired states are kept."""
        for task in (self._autostart, self._sampler):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        await self.halt_all(forget=True)

    async def halt_all(self, *, forget: bool = False) -> None:
        """Stop every service process, dependents first, keeping desired states.

        With `forget`, the owners are closed too (daemon stop, system.wipe_all), each
        ending any life begun meanwhile, and no new owner is made until `reopen`.
        """
        if forget:
            self._closed = True
        alive = {n for n, o in self.owners.items() if o.live}
        graph = _graph(await self.store.services.list(), with_after=True)
        order = dependency_order(graph, alive)
        # Waves in reverse dependency order; the services of one wave stop in parallel.
        while alive:
            wave = [
                n
                for n in reversed(order)
                if n in alive and not any(n in graph.get(m, []) for m in alive)
            ]
            if not wave:
                wave = list(alive)  # a stored cycle: stop the rest together
            await asyncio.gather(*(self.owners[n].call("halt") for n in wave))
            alive -= set(wave)
        if forget:
            owners, self.owners = list(self.owners.values()), {}
            for owner in owners:
                await owner.close()

    def reopen(self) -> None:
        """After system.wipe_all: verbs are served again."""
        self._closed = False

    # -- owners ----------------------------------------------------------------
    def owner(self, name: str) -> ServiceOwner:
        """The owner of `name`, created on first use (refused while halted for good)."""
        owner = self.owners.get(name)
        if owner is None:
            if self._closed:
                raise InvalidState(
                    "services are being stopped (daemon stop or system.wipe_all)", {"name": name}
                )
            owner = self.owners[name] = ServiceOwner(self, name)
        return owner

    def forget(self, owner: ServiceOwner) -> None:
        """A deleted service's owner went idle: drop it from the registry."""
        if self.owners.get(owner.name) is owner:
            del self.owners[owner.name]

    def is_live(self, name: str) -> bool:
        """True while `name` has a life in progress."""
        owner = self.owners.get(name)
        return owner is not None and owner.live

    def state_changed(self) -> None:
        """Some owner committed a state: wake whoever waits on another service."""
        self.app.feed.publish("services")
        self._any_change.set()
        self._any_change = asyncio.Event()

    async def wait_running(
        self, name: str, timeout_s: float, give_up: asyncio.Event | None = None
    ) -> bool:
        """Wait until `name` runs; False on timeout, `give_up`, or a life that ended short."""
        deadline = time.monotonic() + timeout_s
        while True:
            owner = self.owners.get(name)
            if owner is not None and owner.state == ServiceState.RUNNING:
                return True
            if (give_up is not None and give_up.is_set()) or self._released.is_set():
                return False
            # Not starting and not going to: its start was sent before anyone waits on it.
            if owner is None or (not owner.live and owner.state in FINAL_STATES):
                return False
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            waits = [
                asyncio.ensure_future(self._any_change.wait()),
                asyncio.ensure_future(self._released.wait()),
            ]
            if give_up is not None:
                waits.append(asyncio.ensure_future(give_up.wait()))
            try:
                await asyncio.wait(waits, timeout=left, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for w in waits:
                    w.cancel()

    # -- verbs -----------------------------------------------------------------
    async def define(self, name: str, spec: dict[str, Any]) -> Service:
        """Create or redefine a service (checked for cycles in the same unit as the write)."""
        service: Service = await self.owner(name).call("define", spec=spec)
        return service

    async def start_service(self, name: str, wait_s: float = 0.0) -> None:
        """Start a service, what it requires first; with `wait_s`, wait until it is running."""
        await self._start_requirements(name)
        await self.owner(name).call("start")
        if wait_s > 0:
            await self._wait_started(name, wait_s)

    async def stop_service(self, name: str) -> None:
        """Stop a service, after the services that require it."""
        errors = await self.stop_services([name])
        if name in errors:
            raise errors[name]

    async def stop_services(self, names: Sequence[str]) -> dict[str, HeroError]:
        """Stop several services in the order given, each after what requires it, as
        `stop_service` does, but reading the definitions twice in all rather than twice
        per service (a bulk stop of 500 was quadratic); the errors, by name."""
        errors: dict[str, HeroError] = {}
        services = await self.store.services.list()
        settled = {s.name for s in services if s.desired == "stopped" and not self.is_live(s.name)}
        stopped: list[str] = []
        for name in names:
            try:
                await self.store.services.get(name)
                await self._stop_dependents(
                    name, live_only=False, services=services, settled=settled
                )
                await self.owner(name).call("stop")
                stopped.append(name)
                settled.add(name)
            except HeroError as exc:
                errors[name] = exc
        # A dependent whose start was served after the pass above saw its requirement
        # still running and spawned: stop it now, or it runs without what it requires.
        services = await self.store.services.list()
        for name in stopped:
            await self._stop_dependents(name, live_only=True, services=services)
        return errors

    async def _stop_dependents(
        self,
        name: str,
        *,
        live_only: bool,
        services: list[Service] | None = None,
        settled: set[str] | None = None,
    ) -> None:
        """Stop what requires `name`; a dependent with no life is marked desired stopped,
        unless it is in `settled` (known stopped in this call: a bulk stop of a chain of
        500 wrote ~125,000 such rows without it)."""
        settled = set() if settled is None else settled
        for dep in await self._dependents(name, services):
            owner = self.owners.get(dep)
            if owner is not None and owner.live:
                await owner.call("stop")
            elif not live_only and dep not in settled:
                await self.store.services.set_desired(dep, "stopped")
            settled.add(dep)

    async def restart_service(self, name: str, wait_s: float = 0.0) -> None:
        """Stop the service's process (not its dependents) and start it again."""
        await self._start_requirements(name)
        await self.owner(name).call("restart")
        if wait_s > 0:
            await self._wait_started(name, wait_s)

    async def refresh(self, name: str) -> bool:
        """After a definition changed without the owner: restart `name` if its life runs an
        older process definition (what it requires first, as a restart does); True if so.

        A stopped service is never started by this. Without an owner no life exists,
        and a start still on its way reads the definition when its owner serves it,
        after the change was committed.
        """
        if name not in self.owners:
            return False
        if self.is_live(name) and any(not self.is_live(r) for r in await self._requirements(name)):
            await self._start_requirements(name)
        restarted: bool = await self.owner(name).call("refresh")
        return restarted

    async def delete_service(self, name: str) -> int:
        """Stop a service (and what requires it), delete it with its lines; rows deleted."""
        with contextlib.suppress(NotFound):
            await self.stop_service(name)
        deleted: dict[str, int] = await self.owner(name).call("delete")
        return deleted["services"]

    async def _start_requirements(self, name: str) -> None:
        """Start what `name` requires and wait until it runs (here, not in any owner's queue,
        so a stop or delete of `name` meanwhile is served at once)."""
        for req in await self._requirements(name):
            owner = self.owner(req)
            await owner.call("start")
            spec = (await self.store.services.get(req)).spec
            timeout = max(30.0, float(spec.get("start_secs", 1.0)) * 3)
            if not await self.wait_running(req, timeout):
                raise InvalidState(
                    "a required service did not reach running",
                    {"name": req, "state": str(owner.state), "required_by": name},
                )

    async def _wait_started(self, name: str, wait_s: float) -> None:
        # The start itself was done above whatever happens; only the wait for `running`
        # ends early when the asker disconnected (nobody reads its answer: caller.py).
        gone = peer_gone()
        self.waiters += 1
        try:
            with gcpause.lifted():  # up to 600 s: not with a big request's collector pause
                if await self.wait_running(name, wait_s, give_up=gone):
                    return
        finally:
            self.waiters -= 1
        if (gone is not None and gone.is_set()) or self._released.is_set():
            return  # the asker left, or the daemon stops: answered with the state as it is
        owner = self.owners.get(name)
        if owner is not None and owner.failure is not None:
            raise InvalidState(owner.failure, {"name": name, "state": str(owner.state)})

    async def _requirements(self, name: str) -> list[str]:
        """What `name` requires, transitively, dependencies first (not `name` itself)."""
        services = {s.name: s for s in await self.store.services.list()}
        if name not in services:
            raise NotFound("service not found", {"name": name})
        graph = {n: list(s.spec.get("requires", [])) for n, s in services.items()}
        order = dependency_order(graph, [name])
        for n in order:
            for req in graph.get(n, []):
                if req not in services:
                    raise NotFound("required service not found", {"name": req, "required_by": n})
        return [n for n in order if n != name]

    async def _dependents(self, name: str, services: list[Service] | None = None) -> list[str]:
        """What requires `name`, transitively, the furthest first (not `name` itself), in
        `services` (read from the store if not given)."""
        if services is None:
            services = await self.store.services.list()
        required_by: dict[str, list[str]] = {}
        for s in services:
            for req in s.spec.get("requires", []):
                required_by.setdefault(req, []).append(s.name)
        seen: set[str] = set()
        todo = [name]
        while todo:  # a walk with a visited set: bounded whatever the graph
            for dep in required_by.get(todo.pop(), []):
                if dep not in seen and dep != name:
                    seen.add(dep)
                    todo.append(dep)
        graph = {s.name: list(s.spec.get("requires", [])) for s in services}
        return [n for n in reversed(dependency_order(graph, seen)) if n in seen]

    def watched(self) -> None:
        """Someone read service status: refresh the figures in the background if they are old."""
        if time.monotonic() - self._sampled_at >= _SAMPLE_EVERY_S:
            self._sample_soon.set()

    def sample_soon(self) -> None:
        """A service just started: sample its figures without waiting a period."""
        self._sample_soon.set()

    def forget_figures(self, name: str) -> None:
        """A service's process is gone: its CPU baseline and last figures no longer apply."""
        self._cpu_prev.pop(name, None)
        self._written.pop(name, None)

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
            live = {n: o.cell for n, o in self.owners.items() if o.cell is not None}
            if not live:
                continue
            try:
                stats = await asyncio.to_thread(sample_cells, live)
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


def _graph(services: list[Service], *, with_after: bool) -> dict[str, list[str]]:
    """name -> what it depends on (requires, and `after` if asked), only defined names."""
    names = {s.name for s in services}
    graph: dict[str, list[str]] = {}
    for s in services:
        deps = [*s.spec.get("requires", []), *(s.spec.get("after", []) if with_after else [])]
        graph[s.name] = [d for d in deps if d in names]
    return graph


def sample_cells(cells: dict[str, Cell]) -> dict[str, tuple[int, float]]:
    """(memory bytes, CPU seconds) of each service's cell.

    A cgroup tells its CPU (cpu.stat) and, with the memory controller, its memory
    (memory.current); otherwise memory is the RSS of its processes (psutil). A
    process group is summed from one scan of the process table.
    """
    import psutil

    out: dict[str, tuple[int, float]] = {}
    groups: dict[str, int] = {}
    for name, cell in cells.items():
        figures = cell.figures()
        if figures is None:
            if cell.leader is not None:
                groups[name] = cell.leader
            continue
        memory = figures.memory
        if memory is None:
            memory = 0
            for pid in cell.pids():
                with contextlib.suppress(psutil.Error):
                    memory += psutil.Process(pid).memory_info().rss
        out[name] = (memory, figures.cpu_s)
    if groups:
        out.update(sample_groups(groups))
    return out


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
