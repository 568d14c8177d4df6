"""Hostile review of containment (issue 13): races between a job's natural end and its
cancel or timeout, fork storms, forking services with bad pid files, and the cells
left after a churn of jobs and service restarts. A real daemon, real processes, cgroup
v2 where this host has a writable tree (skipped where not)."""

from __future__ import annotations

import os
import random
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hero_procd.client import Client
from hero_procd.errors import HeroError
from integration.daemon_proc import DaemonProcess
from integration.helpers import (
    ESCAPEES,
    cgroup_daemon,
    daemon_running,
    define,
    finish,
    info,
    is_alive,
    start_running,
    status,
    wait_dead,
    wait_for,
    wait_state,
)

TERMINAL = {"succeeded", "failed", "cancelled", "timed_out"}


@pytest.fixture(scope="module")
def cg() -> Iterator[DaemonProcess]:
    with cgroup_daemon() as proc:
        yield proc


@pytest.fixture
def c(cg: DaemonProcess) -> Iterator[Client]:
    with cg.client() as client:
        yield client


def cells(c: Client) -> list[str]:
    root = info(c)["cgroup"]
    return sorted(e.name for e in os.scandir(root) if e.is_dir())


def no_cells_left(c: Client) -> None:
    wait_for(lambda: True if not cells(c) else None, "the daemon's cells to be removed")


def printed_pids(c: Client, job_id: int, count: int) -> list[int]:
    def probe() -> list[int] | None:
        lines = c.call("job.logs", id=job_id)["lines"]
        pids = [int(ln["text"]) for ln in lines if ln["text"].strip().isdigit()]
        return pids if len(pids) >= count else None

    return wait_for(probe, f"job {job_id} to print {count} pids")


def read_pid(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except FileNotFoundError:
        return None
    return int(text) if text.isdigit() else None


def test_cancel_racing_the_natural_end_leaves_nothing(c: Client) -> None:
    """A cancel sent at a random instant around the job's own exit: whichever wins, the
    job ends in one terminal state, its escapees die and its cell is removed."""
    rng = random.Random()
    escapees: list[int] = []
    jobs: list[int] = []
    for _ in range(12):
        life = rng.uniform(0.05, 0.4)
        job_id = c.call("job.submit", script=f"{ESCAPEES}; sleep {life:.3f}; exit 0")["id"]
        escapees += printed_pids(c, job_id, 2)
        # a cancel a little before, at, or after the job's own end
        time.sleep(max(0.0, life + rng.uniform(-0.1, 0.1)))
        try:
            c.call("job.cancel", id=job_id)
        except HeroError as err:  # already finished: a precise error, not a crash
            assert err.code < 0, err
        jobs.append(job_id)
    for job_id in jobs:
        assert finish(c, job_id)["status"] in ("succeeded", "cancelled")
    for pid in escapees:
        wait_dead(pid, "an escapee of a job whose cancel raced its end")
    no_cells_left(c)


def test_timeout_racing_the_natural_end_leaves_nothing(c: Client) -> None:
    """timeout_s equal (within a few ms) to the job's life: one terminal state, no escapee."""
    rng = random.Random()
    escapees: list[int] = []
    jobs: list[int] = []
    for _ in range(10):
        life = rng.uniform(0.3, 0.6)
        timeout = life + rng.uniform(-0.05, 0.05)
        job_id = c.call(
            "job.submit",
            script=f"{ESCAPEES}; sleep {life:.3f}; exit 0",
            timeout_s=round(timeout, 3),
            kill_timeout_s=0.2,
        )["id"]
        jobs.append(job_id)
    for job_id in jobs:
        escapees += printed_pids(c, job_id, 2)
    for job_id in jobs:
        assert finish(c, job_id)["status"] in ("succeeded", "timed_out")
    for pid in escapees:
        wait_dead(pid, "an escapee of a job whose timeout raced its end")
    no_cells_left(c)


def test_a_fork_storm_without_pids_max_dies_whole_on_cancel(c: Client) -> None:
    """200 setsid'd sleepers, forked as fast as sh can: the cancel kills every one."""
    script = (
        "i=0; while [ $i -lt 200 ]; do setsid sleep 300 & i=$((i+1)); done; echo ready; sleep 300"
    )
    job_id = c.call("job.submit", script=script, kill_timeout_s=0.5)["id"]
    wait_for(
        lambda: (
            True
            if any(ln["text"] == "ready" for ln in c.call("job.logs", id=job_id)["lines"])
            else None
        ),
        "the storm to be forked",
    )
    cell = wait_for(lambda: cells(c)[0] if cells(c) else None, "the storm's cell")
    procs_file = Path(info(c)["cgroup"], cell, "cgroup.procs")
    pids = [int(p) for p in procs_file.read_text().split()]
    assert len(pids) >= 200, len(pids)
    c.call("job.cancel", id=job_id)
    assert finish(c, job_id)["status"] == "cancelled"
    for pid in pids:
        wait_dead(pid, "a process of a fork storm")
    no_cells_left(c)


def test_churn_of_jobs_cancels_timeouts_and_restarts_leaks_no_cell(c: Client) -> None:
    """Jobs that end, are cancelled or time out, and a service restarted over and over:
    once all is over, no cell is left under the daemon's subtree."""
    rng = random.Random()
    define(c, "churn", ["sh", "-c", f"{ESCAPEES}; exec sleep 300"], stop_timeout_s=1)
    start_running(c, "churn")
    jobs = []
    for i in range(60):
        kind = i % 3
        if kind == 0:
            jobs.append(c.call("job.submit", script=f"{ESCAPEES}; exit 0")["id"])
        elif kind == 1:
            job_id = c.call("job.submit", script=f"{ESCAPEES}; sleep 300")["id"]
            if rng.random() < 0.5:
                printed_pids(c, job_id, 1)
            c.call("job.cancel", id=job_id)
            jobs.append(job_id)
        else:
            jobs.append(
                c.call(
                    "job.submit",
                    script=f"{ESCAPEES}; sleep 300",
                    timeout_s=round(rng.uniform(0.1, 0.5), 3),
                    kill_timeout_s=0.1,
                )["id"]
            )
        if i % 10 == 0:
            c.call("service.restart", name="churn")
    for job_id in jobs:
        assert finish(c, job_id)["status"] in TERMINAL
    c.call("service.stop", name="churn")
    wait_state(c, "churn", "stopped")
    c.call("service.delete", name="churn")
    no_cells_left(c)


DEAD_PID = "stale"  # a pid that was alive once and is gone: a previous run's file


def a_dead_pid() -> int:
    import subprocess

    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


@pytest.mark.parametrize(
    "content", ["", "garbage\n", "-1", "0", "99999999999999999999", "1", "outsider", DEAD_PID]
)
def test_forking_service_with_a_bad_pid_file_follows_its_cell(
    c: Client, tmp_path: Path, content: str
) -> None:
    """A pid file that is empty, garbage, negative, 0, huge, init's, another live program's
    or a dead one's (a previous run's), and that the program rewrites only later: the
    daemon never takes a process outside the cell for the main one, shows a live pid of
    the cell meanwhile, runs one copy, never restarts it, and stops it."""
    name = f"badpf-{abs(hash(content)) % 10000}"
    pid_file = tmp_path / "main.pid"
    marker = tmp_path / "bg.pid"
    text = {"outsider": str(os.getpid()), DEAD_PID: str(a_dead_pid())}.get(content, content)
    pid_file.write_text(text)
    late = random.uniform(0.5, 1.5)
    # The daemonized program writes its own pid to the pid file only after a while.
    program = f"sleep {late:.2f}; echo $$ > {pid_file}; exec sleep 300"
    script = f"setsid sh -c '{program}' >/dev/null 2>&1 & echo $! > {marker}; exit 0"
    define(
        c,
        name,
        ["sh", "-c", script],
        type="forking",
        pid_file=str(pid_file),
        restart="always",
        start_secs=0.2,
        stop_timeout_s=1,
    )
    c.call("service.start", name=name)
    bg = wait_for(lambda: read_pid(marker), "the background program's pid")
    st = wait_for(
        lambda: (lambda s: s if s["state"] == "running" and s["pid"] == bg else None)(
            status(c, name)
        ),
        f"{name} to run with pid {bg} (a process of its cell)",
    )
    # once the program wrote its pid (the same process, exec'd), it is still the one
    wait_for(lambda: True if read_pid(pid_file) == bg else None, "the real pid file")
    st = status(c, name)
    assert st["state"] == "running" and st["pid"] == bg and st["restarts"] == 0, st
    assert is_alive(bg)
    c.call("service.stop", name=name)
    wait_dead(bg, "a forking service's program after stop")
    assert status(c, name)["restarts"] == 0
    c.call("service.delete", name=name)
    no_cells_left(c)


def subtree_procs(root: str) -> list[int]:
    try:
        return [int(p) for p in Path(root, "cgroup.procs").read_text().split()]
    except FileNotFoundError:
        return []


def first_stray(root: str) -> int | None:
    pids = subtree_procs(root)
    return pids[0] if pids else None


def test_a_process_that_moves_itself_into_the_daemons_subtree_dies_with_its_job(
    c: Client,
) -> None:
    """As root a process may write its pid to any cgroup.procs. One that moves from its
    cell into the daemon's subtree itself is killed when a cell is released (it would
    outlive its job and keep the subtree from being removed at stop)."""
    root = info(c)["cgroup"]
    script = (
        f"sh -c 'echo $$ > {root}/cgroup.procs && echo $$ && exec sleep 300' & "
        f"sleep {random.uniform(0.2, 0.6):.2f}; exit 0"
    )
    job_id = c.call("job.submit", script=script)["id"]
    (pid,) = printed_pids(c, job_id, 1)
    assert finish(c, job_id)["status"] == "succeeded"
    wait_dead(pid, "a process that moved itself into the daemon's subtree")
    assert subtree_procs(root) == []
    no_cells_left(c)


def test_daemon_stop_kills_what_moved_into_its_subtree_and_removes_it() -> None:
    """At stop (a service still running, one of its processes moved out of its cell into
    the subtree): the stray is killed and the subtree removed."""
    with daemon_running(env={"HERO_PROC_CONTAINMENT": "auto"}) as proc, proc.client() as c:
        if info(c)["containment"] != "cgroup2":
            pytest.skip("no writable cgroup v2 tree here")
        root = info(c)["cgroup"]
        define(
            c,
            "mover",
            ["sh", "-c", f"sh -c 'echo $$ > {root}/cgroup.procs; exec sleep 300' & exec sleep 300"],
        )
        start_running(c, "mover")
        stray = wait_for(lambda: first_stray(root), "a stray in the subtree")
    wait_dead(stray, "a stray of the subtree after the daemon stopped")
    assert not os.path.exists(root), "the subtree is removed with the daemon"


def test_kill_9_kills_what_moved_into_the_subtree(
    workdir: Path, started: list[DaemonProcess]
) -> None:
    daemon = DaemonProcess(workdir, env={"HERO_PROC_CONTAINMENT": "auto"})
    started.append(daemon.start())
    with daemon.client() as c:
        if info(c)["containment"] != "cgroup2":
            pytest.skip("no writable cgroup v2 tree here")
        root = info(c)["cgroup"]
        script = f"env -i sh -c 'echo $$ > {root}/cgroup.procs; exec sleep 300' & sleep 300"
        c.call("job.submit", script=script)
        stray = wait_for(lambda: first_stray(root), "a stray in the subtree")
    daemon.kill()
    # The watchdog kills the strays of the subtree too, no daemon started again.
    wait_dead(stray, "a stray in the subtree of a daemon killed by -9")
    started.append(daemon.start())
    assert daemon.stop() == 0
    assert not os.path.exists(root)


def test_forking_is_refused_with_process_groups() -> None:
    """With process groups a daemonizing program leaves the launcher's group at once: the
    service was restarted again and again, every copy left running. type forking is
    refused there (-32602 naming the field), and the daemon keeps serving."""
    with (
        daemon_running(env={"HERO_PROC_CONTAINMENT": "process-group"}) as proc,
        proc.client() as c,
    ):
        extras: list[dict[str, Any]] = [{}, {"pid_file": "/tmp/hp-never.pid"}]
        for extra in extras:
            with pytest.raises(HeroError) as info:
                c.call(
                    "service.define",
                    name="fk",
                    command=["sh", "-c", "setsid sleep 300 & exit 0"],
                    type="forking",
                    **extra,
                )
            assert info.value.code == -32602
            assert info.value.data is not None and info.value.data["field"] == "type"
            assert "cgroup v2" in str(info.value.data)
        define(c, "simple", ["sleep", "300"])
        start_running(c, "simple")
        c.call("service.stop", name="simple")
