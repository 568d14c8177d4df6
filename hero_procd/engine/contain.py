"""Containment: every job attempt, service run and exec health check in a cell of its own.

A *cell* is where one attempt's (or run's, or check's) processes live, and the
one handle to them: spawn into it, signal or kill all of it, know whether any
process is left, read its figures, remove it. Two implementations:

- `CgroupContainment`: a cgroup v2 directory per cell under the daemon's own
  subtree (`<own cgroup>/hero-procd-<instance>` by default, so that daemons of
  several databases on one host never touch each other's cells). The child is
  born in its cgroup (procs.spawn), a kill is `cgroup.kill` (setsid and
  double-fork escapees die too), "empty" is `populated 0` in `cgroup.events`
  (watched with one inotify descriptor on the event loop), figures come from
  `cpu.stat` and `memory.*`, limits are written before the child starts.
- `ProcessGroupContainment`: where no cgroup v2 tree can be written (or when
  told so), the cell is the leader's process group, as before.

The daemon picks one at start (`make_containment`); nothing else asks which.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import itertools
import logging
import os
import signal
import struct
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from hero_procd.engine import procs
from hero_procd.errors import InvalidParams

log = logging.getLogger(__name__)

CGROUP2 = "cgroup2"
PROCESS_GROUP = "process-group"
# The limit fields of a job, action or service, and the controller each needs.
LIMIT_CONTROLLERS = {
    "memory_max": "memory",
    "cpu_max": "cpu",
    "pids_max": "pids",
    "io_weight": "io",
}
_WANTED_CONTROLLERS = ("memory", "cpu", "pids", "io")
_CPU_PERIOD_US = 100_000
# How often a process-group cell is looked at when someone waits for it to empty.
_PG_POLL_S = 1.0


class ContainmentError(Exception):
    """The containment asked for cannot be set up (a forced cgroup2 without a tree, say)."""


@dataclass
class CellFigures:
    """What a cell's processes use: CPU seconds, memory now and at its peak (bytes, if known)."""

    cpu_s: float
    memory: int | None
    memory_peak: int | None


def limits_of(spec: dict[str, Any]) -> dict[str, Any]:
    """The limit fields set in a stored spec."""
    return {k: spec[k] for k in LIMIT_CONTROLLERS if spec.get(k) is not None}


class Cell:
    """One contained unit of processes (see the module docstring)."""

    name: str
    leader: int | None = None

    def spawn(
        self,
        argv: list[str],
        env: dict[str, str],
        cwd: str | None,
        *,
        capture: bool = True,
        read_start: bool = True,
    ) -> procs.Child:
        """Start the cell's leader (blocking: run it on the spawner pool); `read_start`:
        see procs.spawn."""
        raise NotImplementedError

    def signal(self, sig: int) -> bool:
        """Send `sig` to every process of the cell; False if none was left."""
        raise NotImplementedError

    def pids(self) -> list[int]:
        """The processes of the cell now, where it can list them (a cgroup); else none."""
        return []

    def kill(self) -> None:
        """SIGKILL every process of the cell, escapees included."""
        raise NotImplementedError

    def leader_ended(self) -> None:
        """The leader has ended (not yet reaped): kill whatever it left in the cell.

        Done at once here; a cgroup cell does it on the containment's thread, in a batch
        with the other cells that ended meanwhile (see `ended`)."""
        self.kill()

    async def ended(self) -> None:
        """Until what `leader_ended` started is done (the kill sent, the cell perhaps removed)."""

    def held(self) -> bool:
        """False if `release` has nothing left to do (the cell is gone already)."""
        return True

    def holds(self, pid: int) -> bool:
        """True if process `pid` is in the cell now, or where the cell cannot tell."""
        return True

    def populated(self) -> bool:
        """True while a live process is in the cell."""
        raise NotImplementedError

    async def wait_empty(self, timeout_s: float | None = None) -> bool:
        """Wait until no process is left (True), or `timeout_s` passed (False)."""
        raise NotImplementedError

    def figures(self) -> CellFigures | None:
        """The cell's CPU and memory, or None where the cell cannot tell (process groups)."""
        return None

    def oom_killed(self) -> bool:
        """True if the kernel's OOM killer killed a process of this cell."""
        return False

    async def release(self) -> None:
        """The cell's run is over: kill what is left, wait for it to empty, remove it."""


class Containment:
    """Makes cells; one per daemon."""

    kind: str = PROCESS_GROUP
    controllers: tuple[str, ...] = ()
    # A cell keeps a process that left its session and group (cgroups do; process groups not).
    follows_escapees: bool = False

    def cell(self, label: str, limits: dict[str, Any] | None = None) -> Cell:
        """A new cell for one attempt, run or check (created at its spawn)."""
        raise NotImplementedError

    def check_limits(self, spec: dict[str, Any], path: str = "") -> None:
        """Refuse (-32602) a limit whose controller is not usable here, naming it; and a
        `type: forking` service without cgroups (a process group loses a program that
        daemonizes: it was restarted over and over, each copy left running)."""
        if spec.get("type") == "forking" and not self.follows_escapees:
            where = f"{path}.type" if path else "type"
            raise InvalidParams(
                where,
                f"forking needs cgroup v2 containment: containment is {self.kind} "
                "(a process group cannot follow a program that daemonizes)",
            )
        for field, controller in LIMIT_CONTROLLERS.items():
            if spec.get(field) is None or controller in self.controllers:
                continue
            where = f"{path}.{field}" if path else field
            if self.kind != CGROUP2:
                why = f"containment is {self.kind} (no writable cgroup v2 tree)"
            else:
                usable = ", ".join(self.controllers) or "none"
                why = f"the {controller} controller is not enabled (usable: {usable})"
            raise InvalidParams(where, f"needs the cgroup v2 {controller} controller: {why}")

    # Another daemon has taken this one's node name (PostgreSQL): the subtree, named after
    # the database and the node, is that daemon's now; `close` leaves it alone.
    handed_over = False

    async def recover(self) -> int:
        """Kill what a previous daemon left in its cells and remove them; how many there were."""
        return 0

    async def close(self) -> None:
        """The daemon stops: release what is still held."""

    def info(self) -> dict[str, Any]:
        """What system.info shows."""
        return {
            "containment": self.kind,
            "controllers": list(self.controllers),
            "cgroup": None,
            "spawner": procs.spawner_name(),
        }


# -- process groups ---------------------------------------------------------------------


class ProcessGroupCell(Cell):
    """The leader's process group (it leads a new session)."""

    def __init__(self, name: str) -> None:
        self.name = name

    def spawn(
        self,
        argv: list[str],
        env: dict[str, str],
        cwd: str | None,
        *,
        capture: bool = True,
        read_start: bool = True,
    ) -> procs.Child:
        """Start the leader of a new session: its pid is the group's id."""
        child = procs.spawn(argv, env, cwd, capture=capture, read_start=read_start)
        self.leader = child.pid
        return child

    def signal(self, sig: int) -> bool:
        """`sig` to the process group."""
        return self.leader is not None and procs.signal_group(self.leader, sig)

    def kill(self) -> None:
        """SIGKILL to the process group (a setsid escapee is out of reach)."""
        self.signal(signal.SIGKILL)

    def populated(self) -> bool:
        """True while a live process of the group exists (a scan of /proc)."""
        return self.leader is not None and procs.group_alive(self.leader)

    async def wait_empty(self, timeout_s: float | None = None) -> bool:
        """Poll the group about once a second (a scan of /proc each, on a thread)."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while await asyncio.to_thread(self.populated):
            if deadline is not None and time.monotonic() >= deadline:
                return False
            await asyncio.sleep(_PG_POLL_S)
        return True

    def held(self) -> bool:
        """Nothing to release (see `release`)."""
        return False

    async def release(self) -> None:
        """Nothing: the group was killed when its leader ended, and once the leader is
        reaped its id may belong to someone else."""


class ProcessGroupContainment(Containment):
    """Process groups: no cgroup v2 tree to manage, or forced."""

    kind = PROCESS_GROUP

    def __init__(self, reason: str) -> None:
        self.reason = reason

    def cell(self, label: str, limits: dict[str, Any] | None = None) -> Cell:
        """A process-group cell (limits were refused at submit)."""
        return ProcessGroupCell(label)

    def info(self) -> dict[str, Any]:
        """Also why cgroups are not used."""
        return {**super().info(), "reason": self.reason}


# -- cgroup v2 --------------------------------------------------------------------------


def _read(path: str) -> str:
    # os-level, like _write: cgroupfs files are read whole on every attempt's release.
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        chunks = [os.read(fd, 65536)]
        while chunks[-1]:
            chunks.append(os.read(fd, 65536))
    finally:
        os.close(fd)
    return b"".join(chunks).decode("ascii")


def _write(path: str, value: str) -> None:
    # os-level: a third of the cost of open() for these one-shot kernel files.
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, value.encode())
    finally:
        os.close(fd)


def _keyed(text: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        with contextlib.suppress(ValueError):
            out[key] = int(value)
    return out


def cgroup2_mount() -> str | None:
    """Where the cgroup v2 hierarchy is mounted (/sys/fs/cgroup, or …/unified on hybrid hosts)."""
    try:
        mounts = _read("/proc/self/mounts")
    except OSError:
        return None
    for line in mounts.splitlines():
        fields = line.split()
        if len(fields) >= 3 and fields[2] == "cgroup2":
            return fields[1].replace("\\040", " ")
    return None


def own_cgroup() -> str | None:
    """The daemon's own cgroup v2 path (`0::/path` of /proc/self/cgroup)."""
    try:
        text = _read("/proc/self/cgroup")
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("0::"):
            return line[3:].strip() or "/"
    return None


class _Inotify:
    """One inotify descriptor on the event loop, watching cells' cgroup.events."""

    _IN_MODIFY = 0x2
    _IN_NONBLOCK = os.O_NONBLOCK
    _IN_CLOEXEC = os.O_CLOEXEC
    _EVENT = struct.Struct("iIII")

    def __init__(self) -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        self._add = libc.inotify_add_watch
        self._add.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
        self._rm = libc.inotify_rm_watch
        self._rm.argtypes = [ctypes.c_int, ctypes.c_int]
        fd = libc.inotify_init1(self._IN_NONBLOCK | self._IN_CLOEXEC)
        if fd < 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err), "inotify_init1")
        self.fd: int = fd
        self._cells: dict[int, CgroupCell] = {}
        self._reading = False

    def watch(self, cell: CgroupCell) -> int:
        """Watch the cell's cgroup.events; the watch descriptor."""
        if not self._reading:
            asyncio.get_running_loop().add_reader(self.fd, self._on_events)
            self._reading = True
        wd: int = self._add(self.fd, os.fsencode(cell.events_path), self._IN_MODIFY)
        if wd < 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err), cell.events_path)
        self._cells[wd] = cell
        return wd

    def unwatch(self, wd: int) -> None:
        """Stop watching (the cell is removed; removing its directory drops the watch too)."""
        if self._cells.pop(wd, None) is not None:
            self._rm(self.fd, wd)

    def _on_events(self) -> None:
        try:
            data = os.read(self.fd, 65536)
        except BlockingIOError:
            return
        offset = 0
        while offset + self._EVENT.size <= len(data):
            wd, _mask, _cookie, length = self._EVENT.unpack_from(data, offset)
            offset += self._EVENT.size + length
            cell = self._cells.get(wd)
            if cell is not None:
                cell.events_changed()

    def close(self) -> None:
        """Stop reading and close the descriptor."""
        if self._reading:
            with contextlib.suppress(Exception):
                asyncio.get_running_loop().remove_reader(self.fd)
        os.close(self.fd)


class CgroupCell(Cell):
    """A cgroup v2 directory of its own."""

    def __init__(self, owner: CgroupContainment, name: str, limits: dict[str, Any]) -> None:
        self.owner = owner
        self.name = name
        self.path = os.path.join(owner.root, name)
        self.events_path = os.path.join(self.path, "cgroup.events")
        self.limits = limits
        self.created = False
        self._wd: int | None = None
        self._empty: asyncio.Event | None = None
        # Set by `leader_ended`: done once the batch that removed (or killed) the cell ran.
        self._ending: asyncio.Future[None] | None = None
        self._oom: bool | None = None  # memory.events read just before the cell was removed

    def spawn(
        self,
        argv: list[str],
        env: dict[str, str],
        cwd: str | None,
        *,
        capture: bool = True,
        read_start: bool = True,
    ) -> procs.Child:
        """Create the cgroup, write its limits, start the leader inside it."""
        if not self.created:
            os.mkdir(self.path)
            self.created = True
            self._write_limits()
        child = procs.spawn(
            argv, env, cwd, cgroup=self.path, capture=capture, read_start=read_start
        )
        self.leader = child.pid
        return child

    def _write_limits(self) -> None:
        values = self.limits
        if values.get("memory_max") is not None:
            _write(os.path.join(self.path, "memory.max"), str(int(values["memory_max"])))
            with contextlib.suppress(OSError):  # no swap accounting: nothing to turn off
                _write(os.path.join(self.path, "memory.swap.max"), "0")
        if values.get("cpu_max") is not None:
            quota = max(1000, round(float(values["cpu_max"]) * _CPU_PERIOD_US))
            _write(os.path.join(self.path, "cpu.max"), f"{quota} {_CPU_PERIOD_US}")
        if values.get("pids_max") is not None:
            _write(os.path.join(self.path, "pids.max"), str(int(values["pids_max"])))
        if values.get("io_weight") is not None:
            _write(os.path.join(self.path, "io.weight"), f"default {int(values['io_weight'])}")

    def pids(self) -> list[int]:
        """The processes of the cell now."""
        try:
            return [int(p) for p in _read(os.path.join(self.path, "cgroup.procs")).split()]
        except (OSError, ValueError):
            return []

    def holds(self, pid: int) -> bool:
        """True if process `pid` is in the cgroup now."""
        return pid in self.pids()

    def signal(self, sig: int) -> bool:
        """`sig` to every process of the cgroup (and the leader's group, for a zombie leader)."""
        if sig == signal.SIGKILL:
            self.kill()
            return True
        sent = False
        for pid in self.pids():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)
                sent = True
        return sent

    def kill(self) -> None:
        """cgroup.kill: every process, whatever session or group it moved to."""
        if not self.created:
            return
        try:
            _write(os.path.join(self.path, "cgroup.kill"), "1")
        except FileNotFoundError:
            return
        except OSError:  # no cgroup.kill (before 5.14): freeze, kill one by one, thaw
            freeze = os.path.join(self.path, "cgroup.freeze")
            with contextlib.suppress(OSError):
                _write(freeze, "1")  # a frozen process cannot fork meanwhile; SIGKILL still acts
            for pid in self.pids():
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
            with contextlib.suppress(OSError):
                _write(freeze, "0")

    def leader_ended(self) -> None:
        """Queue the cell for the containment's thread: rmdir if nothing is left (the
        usual case: the kernel refuses it while a live process is in the cell), else
        cgroup.kill (an escapee). One trip to the thread for all the cells that ended
        meanwhile, and none of it on the event loop."""
        if self.created and self._ending is None:
            self._ending = self.owner.end_soon(self)

    async def ended(self) -> None:
        """Until the batch that took this cell at its leader's end has run."""
        # Not shielded (a shield per job costs): a cancel of the waiter cancels the future,
        # which the batch then skips, and `release` still removes the cell.
        if self._ending is not None and not self._ending.done():
            await self._ending

    def held(self) -> bool:
        """True while the directory exists, or the batch removing it has not run yet."""
        return self.created or (self._ending is not None and not self._ending.done())

    def end_now(self) -> None:
        """On the containment's thread: what `leader_ended` queued (see there)."""
        if not self.created:
            return
        if "memory" in self.owner.controllers:
            self._oom = self._read_oom()
        try:
            os.rmdir(self.path)
        except FileNotFoundError:
            pass
        except OSError:  # EBUSY: a process is left (an escapee): kill it; `release` waits
            self._oom = None
            self.kill()
            return
        self.created = False

    def populated(self) -> bool:
        """`populated 1` in cgroup.events."""
        if not self.created:
            return False
        try:
            return _keyed(_read(self.events_path)).get("populated", 0) == 1
        except OSError:
            return False

    def events_changed(self) -> None:
        """inotify said cgroup.events changed: wake a waiter once it is empty."""
        if self._empty is not None and not self.populated():
            self._empty.set()

    async def wait_empty(self, timeout_s: float | None = None) -> bool:
        """Until `populated 0` (inotify on cgroup.events, no polling)."""
        if not self.populated():
            return True
        if self._empty is None:
            self._empty = asyncio.Event()
            self._wd = self.owner.inotify.watch(self)
        if not self.populated():  # emptied before the watch was in place
            self._empty.set()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._empty.wait(), timeout_s)
        return self._empty.is_set()

    def figures(self) -> CellFigures | None:
        """cpu.stat's usage, memory.current and memory.peak where the controller is on."""
        if not self.created:
            return None
        try:
            cpu = _keyed(_read(os.path.join(self.path, "cpu.stat"))).get("usage_usec", 0) / 1e6
        except OSError:
            return None
        memory = peak = None
        if "memory" in self.owner.controllers:
            with contextlib.suppress(OSError, ValueError):
                memory = int(_read(os.path.join(self.path, "memory.current")))
            with contextlib.suppress(OSError, ValueError):
                peak = int(_read(os.path.join(self.path, "memory.peak")))
        return CellFigures(cpu, memory, peak)

    def oom_killed(self) -> bool:
        """memory.events counts an oom_kill (as read when the cell was removed, if it is)."""
        if self._oom is not None:
            return self._oom
        return self._read_oom()

    def _read_oom(self) -> bool:
        if not self.created or "memory" not in self.owner.controllers:
            return False
        try:
            return _keyed(_read(os.path.join(self.path, "memory.events"))).get("oom_kill", 0) > 0
        except OSError:
            return False

    def _remove_now(self) -> bool:
        """Remove the cgroup if it is empty already, else kill what is left (on a thread).

        rmdir itself is the test: the kernel refuses (EBUSY) to remove a cgroup that
        holds a live process, so a finished job's cell (usually empty: its leader
        killed the rest at exit) costs one rmdir, not a kill, a read and an rmdir.
        Only when it is refused is the cell killed (and waited for by `release`)."""
        self.owner.kill_strays()
        try:
            os.rmdir(self.path)
        except FileNotFoundError:
            pass
        except OSError:
            self.kill()
            return False
        self.created = False
        return True

    async def release(self) -> None:
        """Kill what is left, wait until empty, rmdir (retried: the kernel lags a little).

        The common case (nothing left) is one trip to the containment's thread, so
        the event loop spends no time in cgroupfs for it.
        """
        await self.ended()
        if not self.created:
            return
        loop = asyncio.get_running_loop()
        if await loop.run_in_executor(self.owner.pool, self._remove_now):
            return
        if not await self.wait_empty(30.0):
            log.error("a cell did not empty after cgroup.kill", extra={"cgroup": self.path})
        if self._wd is not None:
            self.owner.inotify.unwatch(self._wd)
            self._wd = None
        for delay in (0.0, 0.01, 0.05, 0.1, 0.5, 1.0):
            if delay:
                await asyncio.sleep(delay)
            try:
                await loop.run_in_executor(self.owner.pool, os.rmdir, self.path)
            except FileNotFoundError:
                break
            except OSError as exc:  # EBUSY: zombies not yet gone
                if delay == 1.0:
                    log.error(
                        "cannot remove a cell", extra={"cgroup": self.path, "error": str(exc)}
                    )
                continue
            break
        self.created = False


class CgroupContainment(Containment):
    """A cgroup v2 subtree of the daemon's, one child cgroup per cell."""

    kind = CGROUP2
    follows_escapees = True

    def __init__(self, mount: str, subtree: str, controllers: tuple[str, ...]) -> None:
        self.mount = mount
        self.subtree = subtree
        self.root = os.path.join(mount, subtree.lstrip("/"))
        self.controllers = controllers
        self._seq = itertools.count(1)
        # Removing cells (cgroupfs calls of ~0.2 ms each) stays off the event loop.
        self.pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="cgroup")
        self._inotify: _Inotify | None = None
        # Cells whose leader ended, waiting for the thread (see CgroupCell.leader_ended).
        self._ending: list[tuple[CgroupCell, asyncio.Future[None]]] = []
        self._ender: asyncio.Task[None] | None = None
        self._loop_seen: asyncio.AbstractEventLoop | None = None

    @property
    def inotify(self) -> _Inotify:
        """The daemon's one inotify descriptor (made on first use, on the loop)."""
        if self._inotify is None:
            self._inotify = _Inotify()
        return self._inotify

    def cell(self, label: str, limits: dict[str, Any] | None = None) -> Cell:
        """A new cgroup under the subtree, named after what it holds plus a sequence number."""
        name = f"{label}-{next(self._seq)}"
        return CgroupCell(self, name, limits or {})

    def end_soon(self, cell: CgroupCell) -> asyncio.Future[None]:
        """Queue `cell` for the next batch of `CgroupCell.end_now`; done once it ran."""
        loop = self._loop_seen
        if loop is None or loop.is_closed():  # kept: get_running_loop is a getpid syscall
            loop = self._loop_seen = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        self._ending.append((cell, fut))
        if self._ender is None:
            self._ender = loop.create_task(self._end_batches(), name="cells-ended")
        return fut

    async def _end_batches(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self._ending:
                batch, self._ending = self._ending, []
                try:
                    await loop.run_in_executor(self.pool, self._end_batch, [c for c, _ in batch])
                finally:
                    for _, fut in batch:
                        if not fut.done():
                            fut.set_result(None)
        finally:
            self._ender = None

    def _end_batch(self, cells: list[CgroupCell]) -> None:
        """On the thread: what moved into the subtree itself dies, then each cell ends."""
        self.kill_strays()
        for cell in cells:
            try:
                cell.end_now()
            except Exception:  # the others still end; `release` retries this one
                log.exception("could not end a cell", extra={"cgroup": cell.path})

    def kill_strays(self) -> int:
        """SIGKILL the processes in the subtree's own cgroup, outside every cell (blocking).

        No process of the daemon's belongs there: one is there only because it moved
        itself out of its cell (a root process may write its pid to any cgroup.procs),
        and it would outlive its job and keep the subtree from being removed."""
        try:
            pids = [int(p) for p in _read(os.path.join(self.root, "cgroup.procs")).split()]
        except (OSError, ValueError):
            return 0
        killed = 0
        for pid in pids:
            if pid == os.getpid():
                continue
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
                killed += 1
                log.warning("killed a process that left its cell", extra={"pid": pid})
        return killed

    async def recover(self) -> int:
        """Kill and remove every cell a previous daemon of this database left (and what
        moved out of its cell into the subtree itself)."""
        found = await asyncio.to_thread(self.kill_strays)
        try:
            names = [e.name for e in os.scandir(self.root) if e.is_dir()]
        except OSError:
            return 0
        for name in names:
            cell = CgroupCell(self, name, {})
            cell.created = True
            if cell.populated():
                found += 1
                log.warning("killing what a previous daemon left", extra={"cgroup": cell.path})
            await cell.release()
        return found

    async def close(self) -> None:
        """Close the inotify descriptor; kill what moved into the subtree itself; remove
        the subtree if no cell is left in it."""
        if self._inotify is not None:
            self._inotify.close()
            self._inotify = None
        if self.handed_over:
            self.pool.shutdown(wait=False)
            return
        try:
            await asyncio.to_thread(self.kill_strays)
            await self._remove_root()
        finally:
            self.pool.shutdown(wait=False)

    async def _remove_root(self) -> None:
        for delay in (0.0, 0.01, 0.05, 0.1, 0.5, 1.0):  # the killed ones may linger a moment
            await asyncio.sleep(delay)
            try:
                await asyncio.to_thread(os.rmdir, self.root)
            except FileNotFoundError:
                return
            except OSError:  # a cell still there (logged where it stuck), or EBUSY
                if await asyncio.to_thread(self._only_cells_hold_it):
                    return
                continue
            return

    def _only_cells_hold_it(self) -> bool:
        """True if the subtree is kept by a cell (not by a process of its own cgroup)."""
        try:
            own = _read(os.path.join(self.root, "cgroup.procs")).split()
            return not own and any(e.is_dir() for e in os.scandir(self.root))
        except OSError:
            return True

    def info(self) -> dict[str, Any]:
        """Also the subtree's path."""
        return {**super().info(), "cgroup": self.root}


def _setup_cgroup(subtree: str | None, instance: str) -> CgroupContainment:
    mount = cgroup2_mount()
    if mount is None:
        raise ContainmentError("no cgroup v2 hierarchy is mounted")
    own = own_cgroup()
    if own is None:
        raise ContainmentError("this process is in no cgroup v2 cgroup (/proc/self/cgroup)")
    if subtree is None:
        subtree = os.path.join(own, f"hero-procd-{instance}")
    elif not subtree.startswith("/"):
        subtree = os.path.join(own, subtree)
    subtree = os.path.normpath(subtree)
    own_dir = os.path.join(mount, own.lstrip("/"))
    root = os.path.join(mount, subtree.lstrip("/"))
    try:
        os.makedirs(root, exist_ok=True)
        # A cell must be creatable and killable here, or this is no tree of ours.
        probe = os.path.join(root, f"probe-{os.getpid()}")
        with contextlib.suppress(FileExistsError):
            os.mkdir(probe)
        os.rmdir(probe)
    except OSError as exc:
        raise ContainmentError(f"cannot manage cgroups under {root}: {exc.strerror}") from exc
    controllers = _enable_controllers(mount, own, own_dir, root)
    return CgroupContainment(mount, subtree, controllers)


def _enable_controllers(mount: str, own: str, own_dir: str, root: str) -> tuple[str, ...]:
    """Turn on what we may of memory, cpu, pids, io for the cells; those now usable.

    Every cgroup between the daemon's own and the cells must list the controller
    in its subtree_control. A cgroup other than the root that holds processes
    cannot (the no-internal-processes rule), so under systemd (Delegate=yes) the
    daemon first moves itself into a leaf `daemon` of its own cgroup.
    """
    try:
        available = set(_read(os.path.join(own_dir, "cgroup.controllers")).split())
    except OSError:
        return ()
    wanted = [c for c in _WANTED_CONTROLLERS if c in available]
    if not wanted:
        return ()
    chain = [own_dir]
    rel = os.path.relpath(root, own_dir)
    for part in rel.split(os.sep)[:-1] if rel != "." else []:
        chain.append(os.path.join(chain[-1], part))
    if own != "/":
        # Only when the daemon is alone in its cgroup (a systemd unit with Delegate=yes):
        # others there (a login shell's scope, say) are not ours to move, and then the
        # controllers stay off (limits are refused, naming them).
        try:
            alone = _read(os.path.join(own_dir, "cgroup.procs")).split() == [str(os.getpid())]
            if alone:
                leaf = os.path.join(own_dir, "daemon")
                os.makedirs(leaf, exist_ok=True)
                _write(os.path.join(leaf, "cgroup.procs"), str(os.getpid()))
        except OSError as exc:
            log.warning("cannot move the daemon into a leaf cgroup", extra={"error": str(exc)})
    for directory in chain:
        for controller in wanted:
            with contextlib.suppress(OSError):
                _write(os.path.join(directory, "cgroup.subtree_control"), f"+{controller}")
    try:
        enabled = set(_read(os.path.join(root, "cgroup.controllers")).split())
    except OSError:
        return ()
    usable = [c for c in wanted if c in enabled]
    for controller in usable:
        with contextlib.suppress(OSError):
            _write(os.path.join(root, "cgroup.subtree_control"), f"+{controller}")
    try:
        on = set(_read(os.path.join(root, "cgroup.subtree_control")).split())
    except OSError:
        return ()
    return tuple(c for c in usable if c in on)


def make_containment(mode: str, subtree: str | None, instance: str) -> Containment:
    """`auto`: cgroups where a v2 tree can be managed, process groups otherwise.

    `cgroup2` insists (ContainmentError if it cannot); `process-group` never tries.
    """
    if mode == PROCESS_GROUP:
        return ProcessGroupContainment("chosen by configuration")
    try:
        return _setup_cgroup(subtree, instance)
    except ContainmentError as exc:
        if mode == CGROUP2:
            raise
        log.info("containment by process group", extra={"reason": str(exc)})
        return ProcessGroupContainment(str(exc))
