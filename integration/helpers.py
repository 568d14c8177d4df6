"""Helpers shared by the integration tests: polling, jobs, runs, process groups, services."""

from __future__ import annotations

import contextlib
import http.client
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol, TypeVar

import pytest

from hero_procd.client import Client
from hero_procd.engine.contain import cgroup2_mount, own_cgroup
from hero_procd.engine.executor import instance_id
from hero_procd.engine.procs import find_marked
from hero_procd.errors import HeroError
from integration.daemon_proc import DaemonProcess, cleanup, short_tmpdir

T = TypeVar("T")

DEADLINE_S = 20.0
RUN_TERMINAL = ("succeeded", "failed", "cancelled")
# A shell that ignores SIGTERM (and so do its sleeps: an ignored signal survives exec).
IGNORES_TERM = 'trap "" TERM; while :; do sleep 0.1; done'


class Caller(Protocol):
    """Anything with the keyword form of `Client.call` (a client, or a wrapper of one)."""

    def call(self, method: str, **params: Any) -> Any:
        """Call `method` with keyword params; the result."""


# -- waiting -------------------------------------------------------------------------------


def wait_for(probe: Callable[[], T | None], what: str, timeout_s: float = DEADLINE_S) -> T:
    """Poll `probe` until it returns something other than None (or fail after `timeout_s`)."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = probe()
        if value is not None:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


# -- daemons -------------------------------------------------------------------------------


class UnixHTTPConnection(http.client.HTTPConnection):
    """HTTP/1.1 over a Unix socket (what `curl --unix-socket` does)."""

    def __init__(self, path: Path, timeout: float = 10.0) -> None:
        super().__init__("localhost", timeout=timeout)
        self.unix_path = path

    def connect(self) -> None:
        """Open the Unix socket instead of a TCP connection."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(str(self.unix_path))
        self.sock = sock


@contextlib.contextmanager
def daemon_running(
    workdir: Path | None = None,
    extra_args: list[str] | None = None,
    env: dict[str, str] | None = None,
) -> Iterator[DaemonProcess]:
    """A started daemon (in a fresh dir, removed after, if no `workdir`) that must exit 0."""
    path = short_tmpdir() if workdir is None else workdir
    try:
        proc = DaemonProcess(path, extra_args=extra_args, env=env).start()
        try:
            yield proc
        finally:
            code = proc.stop()
            assert code == 0, f"daemon exited {code}:\n{proc.log()}"
    finally:
        if workdir is None:
            cleanup(path)


def kill_leftovers(db_path: Path | str) -> None:
    """SIGKILL the groups of any process still marked as a job of the daemon of `db_path`
    (or of the instance key of a daemon on PostgreSQL, see DaemonProcess.instance_key),
    and everything in its cgroup cells, removing them (a daemon killed by -9 cannot)."""
    for pid in find_marked(instance_id(str(db_path))):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(os.getpgid(pid), signal.SIGKILL)
    remove_cells(db_path)


def remove_cells(db_path: Path | str) -> None:
    """Kill and remove the default cgroup subtree of the daemon of `db_path` (if any)."""
    mount, own = cgroup2_mount(), own_cgroup()
    if mount is None or own is None:
        return
    root = os.path.join(mount, own.lstrip("/"), f"hero-procd-{instance_id(str(db_path))}")
    if not os.path.isdir(root):
        return
    for entry in os.scandir(root):
        if entry.is_dir():
            _kill_and_remove(entry.path)
    _rmdir(root)


def _kill_and_remove(cell: str) -> None:
    with contextlib.suppress(OSError), open(os.path.join(cell, "cgroup.kill"), "w") as f:
        f.write("1")
    with contextlib.suppress(AssertionError):
        wait_for(lambda: True if _rmdir(cell) else None, "a cell to be removed", 10.0)


def _rmdir(path: str) -> bool:
    try:
        os.rmdir(path)
    except FileNotFoundError:
        return True
    except OSError:
        return False
    return True


def refused(argv: list[str], timeout_s: float = 20.0) -> tuple[str, float]:
    """Run a daemon that must refuse to start: (its one-line reason, seconds it took).

    Asserts exit status 1, no traceback, and exactly one line of its own on
    stderr (log records of other levels may precede it, each on its line).
    """
    began = time.monotonic()
    proc = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        out, err = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        raise AssertionError(f"the daemon did not exit within {timeout_s}s:\n{err}") from None
    took = time.monotonic() - began
    assert proc.returncode == 1, f"exit {proc.returncode}:\n{err}"
    assert "Traceback" not in err, err
    reasons = [line for line in err.splitlines() if line.startswith("hero-procd: ")]
    assert len(reasons) == 1, f"want one line starting 'hero-procd: ', got:\n{err}"
    assert out == "", out
    return reasons[0], took


# -- jobs and runs -------------------------------------------------------------------------


def gate_script(gate: str = "gate") -> str:
    """A script that waits in its cwd until a file named `gate` appears (at most ~60 s)."""
    return f'i=0; while [ ! -e "{gate}" ] && [ $i -lt 1200 ]; do sleep 0.05; i=$((i+1)); done'


def sh(script: str) -> list[str]:
    """argv running `script` with /bin/sh."""
    return ["sh", "-c", script]


def submit(c: Client, **params: Any) -> int:
    """Submit one job; its id."""
    return int(c.call("job.submit", params)["id"])


def finish(c: Caller, job_id: int, timeout_s: float = DEADLINE_S) -> dict[str, Any]:
    """Wait (with `job.wait`) until the job is terminal; the job."""
    job: dict[str, Any] = c.call("job.wait", id=job_id, timeout_s=timeout_s)
    assert job["done"], f"job {job_id} did not finish in {timeout_s}s: {job}"
    return job


def wait_running(c: Client, job_id: int, timeout_s: float = DEADLINE_S) -> dict[str, Any]:
    """Wait until the job runs and its pid (= its process group) is recorded; the job."""

    def probe() -> dict[str, Any] | None:
        job: dict[str, Any] = c.call("job.get", id=job_id)
        assert job["status"] in ("queued", "running"), job
        return job if job["status"] == "running" and job["pid"] else None

    return wait_for(probe, f"job {job_id} to run", timeout_s)


def all_logs(c: Client, job_id: int) -> list[dict[str, Any]]:
    """Every log line of a finished job, read page by page."""
    lines: list[dict[str, Any]] = []
    after = 0
    while True:
        page = c.call("job.logs", id=job_id, after_seq=after, limit=10_000)
        assert page["lines"] or page["done"], f"job {job_id} has not finished: {page}"
        lines.extend(page["lines"])
        after = page["next_seq"]
        if page["done"]:
            return lines


def texts(c: Client, job_id: int, stream: str | None = None) -> list[str]:
    """The text of a finished job's log lines, optionally of one stream."""
    return [ln["text"] for ln in all_logs(c, job_id) if stream is None or ln["stream"] == stream]


def list_jobs(c: Client, **filters: Any) -> list[dict[str, Any]]:
    """Every job `job.list` finds with these filters, in id order, page by page."""
    jobs: list[dict[str, Any]] = []
    after = 0
    while True:
        page = c.call("job.list", {**filters, "after_id": after, "limit": 10_000})
        jobs.extend(page["jobs"])
        if page["next_after_id"] is None:
            return jobs
        after = page["next_after_id"]


def run_done(c: Client, run_id: int, timeout_s: float = DEADLINE_S) -> dict[str, Any]:
    """Wait until the run's status is terminal; `run.get`'s answer."""

    def probe() -> dict[str, Any] | None:
        run: dict[str, Any] = c.call("run.get", id=run_id)
        return run if run["status"] in RUN_TERMINAL else None

    return wait_for(probe, f"run {run_id} to finish", timeout_s)


def jobs_by_key(run: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """A run's jobs by key."""
    return {j["key"]: j for j in run["jobs"]}


def call_error(c: Client, method: str, **params: Any) -> HeroError:
    """Call `method`, which must fail; the error the daemon answered."""
    with pytest.raises(HeroError) as info:
        c.call(method, params)
    return info.value


def read_lines(path: Path) -> list[str]:
    """The lines of a file the test's jobs or services append to (none if never written)."""
    return path.read_text().splitlines() if path.exists() else []


# -- processes -----------------------------------------------------------------------------


def group_alive(pgid: int) -> bool:
    """True while some process of the group `pgid` exists (a zombie counts)."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def wait_groups_gone(pgids: list[int], timeout_s: float = DEADLINE_S) -> None:
    """Wait until none of these process groups has a process left (orphans take init a while)."""
    wait_for(
        lambda: True if not any(group_alive(g) for g in pgids) else None,
        f"process groups {pgids} to be gone",
        timeout_s,
    )


def proc_stat(pid: int) -> list[str] | None:
    """Fields 3.. of /proc/PID/stat (state first), or None if the process is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return raw[raw.rfind(")") + 2 :].split()


def is_alive(pid: int) -> bool:
    """True if `pid` is a live process: present and not a zombie (PID 1 here may never reap)."""
    fields = proc_stat(pid)
    return fields is not None and fields[0] not in ("Z", "X")


def wait_dead(pid: int, what: str) -> None:
    """Poll until `pid` is no live process."""
    wait_for(lambda: True if not is_alive(pid) else None, f"{what} (pid {pid}) to be gone")


def all_pids() -> list[int]:
    """Every pid in /proc."""
    return [int(e.name) for e in os.scandir("/proc") if e.name.isdigit()]


def group_members(pgid: int) -> list[int]:
    """The live (not zombie) processes of the process group `pgid`."""
    members = []
    for pid in all_pids():
        fields = proc_stat(pid)
        if fields is not None and fields[0] not in ("Z", "X") and int(fields[2]) == pgid:
            members.append(pid)
    return members


def environ(pid: int) -> list[str]:
    """The environment of a process as NAME=value strings (empty if unreadable or gone)."""
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return []
    return [v.decode(errors="replace") for v in raw.split(b"\0") if v]


# -- services ------------------------------------------------------------------------------


def define(c: Client, name: str, command: list[str], **opts: Any) -> dict[str, Any]:
    """Define a service with short start and restart delays unless told otherwise."""
    opts.setdefault("start_secs", 0.2)
    opts.setdefault("restart_delay_s", 0.2)
    service: dict[str, Any] = c.call("service.define", name=name, command=command, **opts)
    return service


def status(c: Client, name: str) -> dict[str, Any]:
    """The live status of one service."""
    st: dict[str, Any] = c.call("service.status", name=name)
    return st


def wait_status(
    c: Client,
    name: str,
    check: Callable[[dict[str, Any]], bool],
    what: str,
    timeout_s: float = DEADLINE_S,
) -> dict[str, Any]:
    """Poll the service's status until `check` holds; that status."""

    def probe() -> dict[str, Any] | None:
        st = status(c, name)
        return st if check(st) else None

    return wait_for(probe, what, timeout_s)


def wait_state(c: Client, name: str, state: str) -> dict[str, Any]:
    """Poll until the service is in `state`; its status."""
    return wait_status(c, name, lambda st: st["state"] == state, f"{name} to be {state}")


def start_running(c: Client, name: str) -> dict[str, Any]:
    """Start a service and wait until it runs; its status (with a pid)."""
    c.call("service.start", name=name, wait_s=DEADLINE_S)
    st = wait_state(c, name, "running")
    assert isinstance(st["pid"], int), st
    return st


# -- a daemon's resources ------------------------------------------------------------------


def open_fds(pid: int) -> int:
    """How many file descriptors process `pid` holds (/proc/PID/fd)."""
    return len(os.listdir(f"/proc/{pid}/fd"))


def rss_bytes(pid: int) -> int:
    """Resident set size of process `pid` (VmRSS of /proc/PID/status)."""
    with open(f"/proc/{pid}/status", encoding="ascii") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for pid {pid}")


# -- cgroup containment (integration/test_containment*.py) --------------------------------

# Prints the pid of a setsid escapee and of a double-forked orphan, one per line.
ESCAPEES = "setsid sleep 300 & echo $!; sh -c 'sleep 300 & echo $!'"


def info(c: Client) -> dict[str, Any]:
    """system.info."""
    result: dict[str, Any] = c.call("system.info")
    return result


@contextlib.contextmanager
def cgroup_daemon() -> Iterator[DaemonProcess]:
    """A daemon with cgroups (the test is skipped where this host has no writable cgroup v2
    tree)."""
    with daemon_running(env={"HERO_PROC_CONTAINMENT": "auto"}) as proc:
        with proc.client() as c:
            if info(c)["containment"] != "cgroup2":
                pytest.skip(f"no writable cgroup v2 tree here: {info(c).get('reason')}")
        yield proc
