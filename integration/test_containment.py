"""Containment: no process of a job, service or health check outlives it (issue 13).

Each test starts escapees — a `setsid` child (a session and group of its own)
and a double fork (an orphan re-parented to init) — and asserts they are gone
once the job, service run or check ends. With cgroups (this machine: cgroup v2
at /sys/fs/cgroup/unified, no controllers enabled) the whole cell is killed;
the fallback to process groups is forced with HERO_PROC_CONTAINMENT and still
behaves as before. Limits are refused where their controller is not usable.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hero_procd.client import Client
from hero_procd.engine.contain import cgroup2_mount
from hero_procd.errors import HeroError
from integration.daemon_proc import DaemonProcess, cleanup, short_tmpdir
from integration.helpers import (
    DEADLINE_S,
    ESCAPEES,
    call_error,
    cgroup_daemon,
    daemon_running,
    define,
    environ,
    finish,
    info,
    is_alive,
    start_running,
    status,
    wait_dead,
    wait_for,
    wait_running,
    wait_state,
)

# The same, with the escapees' environment emptied: no instance mark finds them.
UNMARKED = "setsid env -i sleep 300 & echo $!; sh -c 'env -i sleep 300 & echo $!'"


def data(err: HeroError) -> dict[str, Any]:
    """The `data` of an error answer (field, problem)."""
    assert err.data is not None, err
    return err.data


@pytest.fixture(scope="module")
def cg() -> Iterator[DaemonProcess]:
    """A daemon with cgroups (skipped where this host has no writable cgroup v2 tree)."""
    with cgroup_daemon() as proc:
        yield proc


@pytest.fixture
def c(cg: DaemonProcess) -> Iterator[Client]:
    """A client of the module's cgroup daemon."""
    with cg.client() as client:
        yield client


def job_pids(c: Client, job_id: int, count: int = 2) -> list[int]:
    """The pids a job printed (waits until it printed `count` of them)."""

    def probe() -> list[int] | None:
        lines = c.call("job.logs", id=job_id)["lines"]
        pids = [int(ln["text"]) for ln in lines if ln["text"].strip().isdigit()]
        return pids if len(pids) >= count else None

    return wait_for(probe, f"job {job_id} to print {count} pids")


def service_pids(c: Client, name: str, count: int = 2, after_seq: int = 0) -> list[int]:
    """The pids a service printed after `after_seq`."""

    def probe() -> list[int] | None:
        lines = c.call("service.logs", name=name, after_seq=after_seq)["lines"]
        pids = [int(ln["text"]) for ln in lines if ln["text"].strip().isdigit()]
        return pids[:count] if len(pids) >= count else None

    return wait_for(probe, f"service {name} to print {count} pids")


def all_gone(pids: list[int], what: str) -> None:
    """Every pid is gone (or a zombie) within the deadline."""
    for pid in pids:
        wait_dead(pid, what)


def cells(c: Client) -> list[str]:
    """The cgroups under the daemon's subtree now."""
    root = info(c)["cgroup"]
    return sorted(e.name for e in os.scandir(root) if e.is_dir())


def no_cells_left(c: Client) -> None:
    """Every cell was removed (rmdir once empty): nothing leaks."""
    wait_for(lambda: True if not cells(c) else None, "the daemon's cells to be removed")


def own_cgroup(pid: int) -> str | None:
    """The cgroup v2 path of a process, or None if it is gone."""
    try:
        text = Path(f"/proc/{pid}/cgroup").read_text()
    except OSError:
        return None
    return next((ln[3:] for ln in text.splitlines() if ln.startswith("0::")), None)


# -- system.info and limits --------------------------------------------------------------


def test_info_says_cgroup2_and_where(c: Client) -> None:
    got = info(c)
    assert got["containment"] == "cgroup2"
    mount = cgroup2_mount()
    assert mount is not None and got["cgroup"].startswith(mount), got
    assert os.path.basename(got["cgroup"]).startswith("hero-procd-")
    assert isinstance(got["controllers"], list)
    assert set(got["controllers"]) <= {"memory", "cpu", "pids", "io"}
    assert got["spawner"] in ("clone3", "clone", "posix_spawn", "popen")


def test_job_runs_in_a_cgroup_of_its_own(c: Client) -> None:
    job_id = c.call("job.submit", script="cat /proc/self/cgroup; sleep 300")["id"]
    pid = wait_running(c, job_id)["pid"]
    path = wait_for(lambda: own_cgroup(pid), "the job's cgroup")
    root = info(c)["cgroup"]
    mount = cgroup2_mount()
    assert mount is not None
    assert os.path.join(mount, path.lstrip("/")).startswith(root + "/"), (path, root)
    assert os.path.basename(path).startswith(f"job-{job_id}-1-")
    c.call("job.cancel", id=job_id)
    assert finish(c, job_id)["status"] == "cancelled"
    no_cells_left(c)


LIMITS = {"memory_max": 64 << 20, "cpu_max": 0.5, "pids_max": 10, "io_weight": 50}
CONTROLLER = {"memory_max": "memory", "cpu_max": "cpu", "pids_max": "pids", "io_weight": "io"}


@pytest.mark.parametrize("field", sorted(LIMITS))
def test_a_limit_without_its_controller_is_refused(c: Client, field: str) -> None:
    usable = info(c)["controllers"]
    if CONTROLLER[field] in usable:
        pytest.skip(f"the {CONTROLLER[field]} controller is usable here: nothing to refuse")
    value = LIMITS[field]
    err = call_error(c, "job.submit", command=["true"], **{field: value})
    assert err.code == -32602
    assert data(err)["field"] == field
    assert f"{CONTROLLER[field]} controller" in data(err)["problem"], data(err)
    err = call_error(c, "service.define", name=f"lim-{field}", command=["true"], **{field: value})
    assert err.code == -32602 and data(err)["field"] == field
    err = call_error(c, "action.set", name=f"lim-{field}", command=["true"], **{field: value})
    assert err.code == -32602 and data(err)["field"] == field
    err = call_error(
        c,
        "run.submit",
        jobs=[{"key": "a", "command": ["true"]}, {"key": "b", "command": ["true"], field: value}],
    )
    assert err.code == -32602 and data(err)["field"] == f"jobs[1].{field}"
    batch = c.call(
        "job.submit_batch", jobs=[{"command": ["true"]}, {"command": ["true"], field: value}]
    )
    assert len(batch["submitted"]) == 1 and [f[0] for f in batch["failed"]] == [1], batch
    assert CONTROLLER[field] in batch["failed"][0][1]["message"]
    define(c, f"upd-{field}", ["true"])
    err = call_error(c, "service.update", name=f"upd-{field}", **{field: value})
    assert err.code == -32602 and data(err)["field"] == field, data(err)
    assert field not in c.call("service.get", name=f"upd-{field}")
    c.call("service.delete", name=f"upd-{field}")
    # The daemon keeps serving, and nothing of the refused service was stored.
    assert c.call("system.ping")["pong"] is True
    assert call_error(c, "service.get", name=f"lim-{field}").code == -32001


def test_pids_max_is_enforced_where_the_controller_is(c: Client) -> None:
    if "pids" not in info(c)["controllers"]:
        pytest.skip(
            "the cgroup v2 pids controller is not enabled for the daemon's cgroup on this "
            "host (system.info controllers is empty): limits cannot be enforced here"
        )
    job_id = c.call(
        "job.submit",
        script="for i in 1 2 3 4 5 6 7 8; do sleep 5 & done; wait",
        pids_max=3,
    )["id"]
    job = finish(c, job_id)
    assert job["status"] == "failed" or any(
        "fork" in ln["text"].lower() or "resource" in ln["text"].lower()
        for ln in c.call("job.logs", id=job_id)["lines"]
    ), job


def test_memory_max_oom_is_reported_where_the_controller_is(c: Client) -> None:
    if "memory" not in info(c)["controllers"]:
        pytest.skip(
            "the cgroup v2 memory controller is not enabled for the daemon's cgroup on this "
            "host (system.info controllers is empty): memory_max and OOM cannot be tested"
        )
    job_id = c.call(
        "job.submit",
        command=["python3", "-c", "b = bytearray(512 << 20); print(len(b))"],
        memory_max=32 << 20,
    )["id"]
    job = finish(c, job_id)
    assert job["status"] == "failed" and "OOM" in (job["error"] or ""), job


def test_bad_limit_values_are_refused_whatever_the_host(c: Client) -> None:
    for field, value in (("memory_max", 10), ("cpu_max", 0), ("pids_max", 0), ("io_weight", 1e9)):
        err = call_error(c, "job.submit", command=["true"], **{field: value})
        assert err.code == -32602 and data(err)["field"] == field, (field, err.data)


# -- jobs --------------------------------------------------------------------------------


def test_job_end_kills_escapees(c: Client) -> None:
    job_id = c.call("job.submit", script=f"{ESCAPEES}; sleep 0.3; exit 0")["id"]
    pids = job_pids(c, job_id)
    assert finish(c, job_id)["status"] == "succeeded"
    all_gone(pids, "an escapee of a job that ended")
    no_cells_left(c)


def test_job_cancel_kills_escapees(c: Client) -> None:
    job_id = c.call("job.submit", script=f"{ESCAPEES}; sleep 300")["id"]
    pids = job_pids(c, job_id)
    assert all(is_alive(p) for p in pids)
    c.call("job.cancel", id=job_id)
    assert finish(c, job_id)["status"] == "cancelled"
    all_gone(pids, "an escapee of a cancelled job")
    no_cells_left(c)


def test_job_timeout_kills_escapees(c: Client) -> None:
    job_id = c.call("job.submit", script=f"{ESCAPEES}; sleep 300", timeout_s=1.5, kill_timeout_s=1)[
        "id"
    ]
    pids = job_pids(c, job_id)
    assert finish(c, job_id)["status"] == "timed_out"
    all_gone(pids, "an escapee of a timed-out job")
    no_cells_left(c)


def test_escapee_that_ignores_term_dies_on_cancel(c: Client) -> None:
    job_id = c.call(
        "job.submit",
        script="setsid sh -c 'trap \"\" TERM; echo $$; while :; do sleep 0.1; done' & sleep 300",
        kill_timeout_s=0.5,
    )["id"]
    (pid,) = job_pids(c, job_id, 1)
    c.call("job.cancel", id=job_id)
    assert finish(c, job_id)["status"] == "cancelled"
    wait_dead(pid, "a setsid escapee that ignores SIGTERM")


# -- services ----------------------------------------------------------------------------


def test_service_stop_kills_escapees(c: Client) -> None:
    define(c, "esc-stop", ["sh", "-c", f"{ESCAPEES}; exec sleep 300"], stop_timeout_s=2)
    start_running(c, "esc-stop")
    pids = service_pids(c, "esc-stop")
    assert all(is_alive(p) for p in pids)
    c.call("service.stop", name="esc-stop")
    all_gone(pids, "an escapee of a stopped service")
    c.call("service.delete", name="esc-stop")
    no_cells_left(c)


def test_service_restart_kills_escapees(c: Client) -> None:
    define(c, "esc-restart", ["sh", "-c", f"{ESCAPEES}; exec sleep 300"], stop_timeout_s=2)
    start_running(c, "esc-restart")
    first = service_pids(c, "esc-restart")
    seq = c.call("service.logs", name="esc-restart")["next_seq"]
    c.call("service.restart", name="esc-restart", wait_s=DEADLINE_S)
    all_gone(first, "an escapee of a restarted service's previous run")
    second = service_pids(c, "esc-restart", after_seq=seq)
    assert all(is_alive(p) for p in second)
    c.call("service.delete", name="esc-restart")
    all_gone(second, "an escapee of a deleted service")
    no_cells_left(c)


def test_service_main_exit_kills_what_it_left(c: Client) -> None:
    define(c, "esc-exit", ["sh", "-c", f"{ESCAPEES}; sleep 0.5; exit 3"], restart="never")
    c.call("service.start", name="esc-exit")
    pids = service_pids(c, "esc-exit")
    wait_state(c, "esc-exit", "exited")
    all_gone(pids, "an escapee of a service whose main process exited")
    c.call("service.delete", name="esc-exit")
    no_cells_left(c)


def test_exec_health_check_escapees_die_with_the_check(c: Client, tmp_path: Path) -> None:
    marks = tmp_path / "check-pids"
    check = f"setsid sleep 300 & echo $! >> {marks}; sh -c 'sleep 300 & echo $! >> {marks}'"
    define(
        c,
        "esc-check",
        ["sleep", "300"],
        health={"exec": ["sh", "-c", check], "interval_s": 0.3, "timeout_s": 5, "retries": 3},
    )
    start_running(c, "esc-check")

    def two() -> list[int] | None:
        pids = [int(x) for x in marks.read_text().split()] if marks.exists() else []
        return pids[:2] if len(pids) >= 2 else None

    pids = wait_for(two, "the health check to start its escapees")
    # The check ended (it passed: the service is running), so its cell was killed.
    all_gone(pids, "an escapee of an exec health check")
    assert status(c, "esc-check")["state"] == "running"
    c.call("service.delete", name="esc-check")
    no_cells_left(c)


def copies(name: str) -> list[int]:
    """Live processes that carry the service's name in their environment."""
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        if f"HERO_PROC_SERVICE={name}" in environ(pid) and is_alive(pid):
            found.append(pid)
    return found


@pytest.mark.parametrize("with_pid_file", [False, True])
def test_self_daemonizing_service_is_one_copy_restarted_when_its_cgroup_empties(
    c: Client, tmp_path: Path, with_pid_file: bool
) -> None:
    name = f"daemonizing-{int(with_pid_file)}"
    pid_file = tmp_path / "main.pid"
    # The launcher puts the program in the background (a session of its own) and exits 0.
    script = f"setsid sleep 300 >/dev/null 2>&1 & echo $! > {pid_file}; exit 0"
    opts: dict[str, Any] = {"type": "forking", "restart": "always", "start_secs": 0.5}
    if with_pid_file:
        opts["pid_file"] = str(pid_file)
    define(c, name, ["sh", "-c", script], **opts)
    start_running(c, name)
    first = wait_for(lambda: written_pid(pid_file), "pid")
    assert is_alive(first)
    # Running, one copy, never restarted: its launcher's exit did not end it.
    st = wait_status_pid(c, name, first if with_pid_file else None)
    assert st["state"] == "running" and st["restarts"] == 0, st
    assert copies(name) == [first]
    assert c.call("service.events", name=name)["events"] == []
    # Its cgroup empties (the daemonized program dies): restarted, again one copy.
    pid_file.unlink()
    os.kill(first, signal.SIGKILL)
    second = wait_for(lambda: written_pid(pid_file), "pid")
    assert second != first
    wait_for(lambda: True if status(c, name)["restarts"] == 1 else None, f"{name} to restart once")
    wait_state(c, name, "running")
    assert copies(name) == [second]
    c.call("service.stop", name=name)
    wait_dead(second, "a forking service's program after stop")
    assert status(c, name)["state"] == "stopped"
    c.call("service.delete", name=name)
    no_cells_left(c)


def written_pid(path: Path) -> int | None:
    """The pid in `path` once its line is complete (the shell creates the file, then writes)."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    return int(text) if text.endswith("\n") else None


def wait_status_pid(c: Client, name: str, pid: int | None) -> dict[str, Any]:
    """The status once running (with `pid` as its pid, if given)."""

    def probe() -> dict[str, Any] | None:
        st = status(c, name)
        ok = st["state"] == "running" and (pid is None or st["pid"] == pid)
        return st if ok else None

    return wait_for(probe, f"{name} to run" + (f" as pid {pid}" if pid else ""))


def test_forking_launcher_that_fails_is_not_running(c: Client) -> None:
    define(
        c,
        "fork-fail",
        ["sh", "-c", "setsid sleep 300 & echo $!; exit 2"],
        type="forking",
        restart="never",
    )
    c.call("service.start", name="fork-fail")
    (pid,) = service_pids(c, "fork-fail", 1)
    wait_state(c, "fork-fail", "exited")
    wait_dead(pid, "what a failed forking launcher left")
    c.call("service.delete", name="fork-fail")


def test_pid_file_needs_type_forking(c: Client) -> None:
    err = call_error(c, "service.define", name="pf", command=["true"], pid_file="/tmp/x.pid")
    assert err.code == -32602 and data(err)["field"] == "pid_file"


# -- crash recovery ----------------------------------------------------------------------


def test_kill_9_kills_leftovers_at_once_and_the_restart_finds_the_cells_empty(
    workdir: Path, started: list[DaemonProcess]
) -> None:
    """kill -9 of the daemon: the watchdog kills every cell (escapees included) without a
    daemon started again; the next start settles the job, starts the service afresh and
    removes the old (empty) cells."""
    daemon = DaemonProcess(workdir)
    started.append(daemon.start())
    with daemon.client() as c:
        job_id = c.call("job.submit", script=f"{UNMARKED}; sleep 300")["id"]
        job_escapees = job_pids(c, job_id)
        define(c, "left", ["sh", "-c", f"{UNMARKED}; exec sleep 300"])
        start_running(c, "left")
        svc_escapees = service_pids(c, "left")
        root = info(c)["cgroup"]
    leftovers = [*job_escapees, *svc_escapees]
    for pid in leftovers:  # nothing but their cgroup ties them to the daemon
        assert not any(v.startswith("HERO_PROC_INSTANCE=") for v in environ(pid)), pid
    daemon.kill()
    all_gone(leftovers, "a leftover of a daemon killed by -9, no daemon started again")
    old_cells = [e.path for e in os.scandir(root) if e.is_dir()]
    assert old_cells, "the watchdog kills, it does not remove: the next start does"
    started.append(daemon.start())
    assert all(not os.path.exists(p) for p in old_cells)
    assert "killed the cells of a previous daemon" not in daemon.log(), "they were empty"
    with daemon.client() as c:
        assert finish(c, job_id)["status"] == "lost"
        wait_state(c, "left", "running")  # started afresh
        c.call("service.stop", name="left")
        names = sorted(e.name for e in os.scandir(root) if e.is_dir())
        assert names == [], names
    assert daemon.stop() == 0
    assert not os.path.exists(root), "the subtree is removed with the daemon"


# -- the fallback ------------------------------------------------------------------------


def test_forced_process_groups_work_as_before(tmp_path: Path) -> None:
    with (
        daemon_running(env={"HERO_PROC_CONTAINMENT": "process-group"}) as proc,
        proc.client() as c,
    ):
        got = info(c)
        assert got["containment"] == "process-group"
        assert got["controllers"] == [] and got["cgroup"] is None
        assert "configuration" in got["reason"]
        # A child left in the job's group dies with the job, as before.
        job_id = c.call("job.submit", script="sleep 300 & echo $!; sleep 0.3")["id"]
        (pid,) = job_pids(c, job_id, 1)
        assert finish(c, job_id)["status"] == "succeeded"
        wait_dead(pid, "a child left in a job's process group")
        job_id = c.call("job.submit", script="echo $$; sleep 300")["id"]
        (leader,) = job_pids(c, job_id, 1)
        assert own_cgroup(leader) == own_cgroup(proc.proc.pid if proc.proc else 0)
        c.call("job.cancel", id=job_id)
        assert finish(c, job_id)["status"] == "cancelled"
        # Services and exec checks still run and stop.
        define(
            c,
            "pg",
            ["sleep", "300"],
            health={"exec": ["true"], "interval_s": 0.3, "timeout_s": 5, "retries": 3},
        )
        st = start_running(c, "pg")
        c.call("service.stop", name="pg")
        wait_dead(st["pid"], "a service's process after stop")
        # Limits cannot be enforced: refused, naming why.
        err = call_error(c, "job.submit", command=["true"], pids_max=5)
        assert err.code == -32602 and "process-group" in data(err)["problem"], data(err)


def test_forced_cgroup2_without_a_tree_refuses_to_start(workdir: Path) -> None:
    # A subtree under a file of the hierarchy cannot be made: forced, it is an error.
    daemon = DaemonProcess(
        workdir,
        env={"HERO_PROC_CONTAINMENT": "cgroup2", "HERO_PROC_CGROUP": "/cgroup.procs/cells"},
    )
    if cgroup2_mount() is None:
        pytest.skip("no cgroup v2 mount here")
    # A generous bound: on a loaded machine start-up alone can take seconds.
    with pytest.raises(RuntimeError, match="containment"):
        daemon.start(timeout_s=60)


def test_daemons_of_two_databases_never_touch_each_others_cells(
    started: list[DaemonProcess],
) -> None:
    dirs = [short_tmpdir(), short_tmpdir()]
    try:
        a, b = DaemonProcess(dirs[0]), DaemonProcess(dirs[1])
        started += [a.start(), b.start()]
        with a.client() as ca, b.client() as cb:
            root_a, root_b = info(ca)["cgroup"], info(cb)["cgroup"]
            assert root_a != root_b and os.path.dirname(root_a) == os.path.dirname(root_b)
            job_a = ca.call("job.submit", script=f"{ESCAPEES}; sleep 300")["id"]
            job_b = cb.call("job.submit", script=f"{ESCAPEES}; sleep 300")["id"]
            pids_b = job_pids(cb, job_b)
            job_pids(ca, job_a)
        # A crash and a restart of one daemon (its recovery kills its own old cells)
        # leaves the other's job and escapees running.
        a.kill()
        started.append(a.start())
        with a.client() as ca, b.client() as cb:
            assert finish(ca, job_a)["status"] == "lost"
            assert cb.call("job.get", id=job_b)["status"] == "running"
            assert all(is_alive(p) for p in pids_b)
            cb.call("job.cancel", id=job_b)
            assert finish(cb, job_b)["status"] == "cancelled"
            all_gone(pids_b, "an escapee of the other daemon's cancelled job")
    finally:
        for d in dirs:
            cleanup(d)
