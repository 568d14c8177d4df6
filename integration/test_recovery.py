"""Crash and shutdown recovery of jobs: kill -9 and SIGTERM of the real daemon, then a restart."""

from __future__ import annotations

import os
import signal
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hero_procd.client import Client
from integration.daemon_proc import DaemonProcess
from integration.helpers import (
    finish,
    group_alive,
    kill_leftovers,
    list_jobs,
    run_done,
    texts,
    wait_for,
    wait_groups_gone,
    wait_running,
)

GONE_DEADLINE_S = 15.0
# Runs to the end on its second attempt; the first prints and sleeps.
SECOND_ATTEMPT_SUCCEEDS = (
    'if [ "$HERO_PROC_ATTEMPT" -ge 2 ]; then echo "second attempt"; exit 0; fi; '
    'echo "first attempt"; sleep 60'
)
# Prints and sleeps the first time; prints and succeeds the next time (a marker file in its cwd).
RUNS_TWICE = (
    "if [ -e marker ]; then echo second run; touch second-ran; exit 0; fi; "
    "touch marker; echo first run; sleep 60"
)


def logged(c: Client, job_id: int, n: int) -> list[str]:
    """Wait until the job has at least `n` log lines stored; their texts."""

    def probe() -> list[str] | None:
        lines = [ln["text"] for ln in c.call("job.logs", id=job_id)["lines"]]
        return lines if len(lines) >= n else None

    return wait_for(probe, f"{n} log lines of job {job_id}")


def stored_job(db_path: Path, job_id: int) -> dict[str, Any]:
    """A job row read straight from the database file of a stopped daemon."""
    conn = sqlite3.connect(db_path, timeout=10)
    try:
        conn.row_factory = sqlite3.Row
        row = conn.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        assert row is not None
        return dict(row)
    finally:
        conn.close()


@pytest.fixture
def started() -> Iterator[list[DaemonProcess]]:
    """Daemons a test starts itself; at the end they are stopped and their jobs' processes gone.

    A failing test may leave a daemon killed with its jobs orphaned: those are killed too.
    """
    procs: list[DaemonProcess] = []
    yield procs
    for proc in procs:
        if proc.proc is not None and proc.proc.poll() is None:
            proc.stop()
    for db in {proc.db_path for proc in procs}:
        kill_leftovers(db)


@pytest.mark.parametrize("containment", ["auto", "process-group"])
def test_kill_9_then_restart_leaves_no_running_job_and_no_process(
    workdir: Path, started: list[DaemonProcess], containment: str
) -> None:
    """After kill -9 and a restart: no job `running`, no old process alive, no job missing.

    With cgroups the watchdog kills the processes as the daemon dies; with process
    groups they outlive it and the next start's recovery kills them."""
    env = {"HERO_PROC_CONTAINMENT": containment}
    first = DaemonProcess(workdir, env=env)
    started.append(first.start())
    with first.client() as c:
        watched = c.call("system.info")["watchdog"] is not None
        c.call("group.set", name="hold-grp", max_parallel=1)
        lost = c.call("job.submit", command=["sleep", "60"], group="hold-grp")["id"]
        with_retry = {"script": SECOND_ATTEMPT_SUCCEEDS, "retries": 1, "retry_delay_s": 0}
        retried = c.call("job.submit", with_retry)["id"]
        # A process that left the job's process group (and session): only the
        # HERO_PROC_INSTANCE marker in its environment ties it to this daemon.
        escapee = c.call("job.submit", script="setsid sleep 60 & echo $!; sleep 60")["id"]
        waiting = [
            c.call("job.submit", command=["/bin/echo", f"waited {i}"], group="hold-grp")["id"]
            for i in range(5)
        ]
        pgids = [wait_running(c, j)["pid"] for j in (lost, retried, escapee)]
        assert logged(c, retried, 1) == ["first attempt"]
        escaped_pid = int(logged(c, escapee, 1)[0])
        assert os.getpgid(escaped_pid) == escaped_pid, "setsid made it a group of its own"
        assert escaped_pid not in pgids
        before = {j["id"]: j["status"] for j in list_jobs(c)}
        assert before == {lost: "running", retried: "running", escapee: "running"} | dict.fromkeys(
            waiting, "queued"
        )
    first.kill()
    assert first.proc is not None and first.proc.returncode == -signal.SIGKILL
    old_groups = [*pgids, escaped_pid]
    if watched:  # cgroups: the watchdog kills every cell, no daemon started again
        wait_groups_gone(old_groups, GONE_DEADLINE_S)
    else:  # process groups: the jobs outlive the crash, in sessions of their own
        assert all(group_alive(g) for g in old_groups)

    second = DaemonProcess(workdir, env=env)
    started.append(second.start())
    wait_groups_gone(old_groups, GONE_DEADLINE_S)
    with second.client() as c:
        job = finish(c, lost)
        assert job["status"] == "lost" and "lost" in job["error"], job
        job = finish(c, retried)
        assert job["status"] == "succeeded" and job["attempt"] == 2, job
        assert texts(c, retried) == ["first attempt", "second attempt"]
        assert finish(c, escapee)["status"] == "lost"
        for i, job_id in enumerate(waiting):
            assert finish(c, job_id)["status"] == "succeeded"
            assert texts(c, job_id) == [f"waited {i}"]
        after = {j["id"]: j["status"] for j in list_jobs(c)}
        assert sorted(after) == sorted(before), "no committed job may be lost"
        assert "running" not in after.values()
    assert second.stop() == 0


def test_lost_job_skips_its_dependents(workdir: Path, started: list[DaemonProcess]) -> None:
    """A run job found lost after a crash makes its dependents `skipped`; the run ends `failed`."""
    first = DaemonProcess(workdir)
    started.append(first.start())
    with first.client() as c:
        jobs = [
            {"key": "a", "command": ["sleep", "60"]},
            {"key": "b", "command": ["/bin/true"], "depends_on": ["a"]},
            {"key": "c", "command": ["/bin/true"], "depends_on": ["b"]},
            {"key": "side", "command": ["/bin/echo", "independent"]},
        ]
        run = c.call("run.submit", name="crashy", jobs=jobs)
        pgid = wait_running(c, run["jobs"]["a"])["pid"]
        assert finish(c, run["jobs"]["side"])["status"] == "succeeded"
    first.kill()
    # Killed by the watchdog (cgroups) or by the next start's recovery (process groups).

    second = DaemonProcess(workdir)
    started.append(second.start())
    wait_groups_gone([pgid], GONE_DEADLINE_S)
    with second.client() as c:
        got = run_done(c, run["id"])
        assert got["status"] == "failed", got
        statuses = {j["key"]: j["status"] for j in got["jobs"]}
        assert statuses == {"a": "lost", "b": "skipped", "c": "skipped", "side": "succeeded"}
    assert second.stop() == 0


def test_sigterm_requeues_the_running_job_and_it_runs_after_restart(
    workdir: Path, started: list[DaemonProcess]
) -> None:
    """A graceful stop terminates a running job and queues it again; a restart runs it."""
    first = DaemonProcess(workdir)
    started.append(first.start())
    with first.client() as c:
        job_id = c.call("job.submit", script=RUNS_TWICE, cwd=str(workdir))["id"]
        pgid = wait_running(c, job_id)["pid"]
        assert logged(c, job_id, 1) == ["first run"]
    assert first.stop() == 0
    wait_groups_gone([pgid], GONE_DEADLINE_S)
    row = stored_job(first.db_path, job_id)
    assert row["status"] == "queued", row
    assert row["error"] == "interrupted by daemon shutdown"

    second = DaemonProcess(workdir)
    started.append(second.start())
    with second.client() as c:
        job = finish(c, job_id)
        assert job["status"] == "succeeded" and job["exit_code"] == 0, job
        assert job["error"] is None
        # An interruption is not a failed attempt.
        assert job["attempt"] == 1
        assert (workdir / "second-ran").exists()
    assert second.stop() == 0


def test_output_of_the_run_after_a_restart_is_kept(
    workdir: Path, started: list[DaemonProcess]
) -> None:
    """What a job prints when it runs again after a graceful stop is stored after the first."""
    first = DaemonProcess(workdir)
    started.append(first.start())
    with first.client() as c:
        job_id = c.call("job.submit", script=RUNS_TWICE, cwd=str(workdir))["id"]
        wait_running(c, job_id)
        assert logged(c, job_id, 1) == ["first run"]
    assert first.stop() == 0

    second = DaemonProcess(workdir)
    started.append(second.start())
    with second.client() as c:
        assert finish(c, job_id)["status"] == "succeeded"
        lines = c.call("job.logs", id=job_id)["lines"]
        assert [(ln["seq"], ln["text"]) for ln in lines] == [(1, "first run"), (2, "second run")]
    assert second.stop() == 0


def _key_taken_while_running(c: Client) -> tuple[int, int, int]:
    """A running job with dedup key "k" and retries, and a newer queued job holding "k".

    Only queued jobs hold a key, so the second is accepted while the first runs.
    Returns (first, newer, blocker): the newer waits behind `blocker` in a full group.
    """
    c.call("group.set", name="key-grp", max_parallel=1)
    blocker = c.call("job.submit", command=["sleep", "60"], group="key-grp")["id"]
    first = c.call(
        "job.submit_batch",
        jobs=[{"script": SECOND_ATTEMPT_SUCCEEDS, "dedup_key": "k", "retries": 1}],
    )["submitted"][0]
    wait_running(c, blocker)
    wait_running(c, first)
    newer = c.call(
        "job.submit_batch", jobs=[{"command": ["/bin/true"], "dedup_key": "k", "group": "key-grp"}]
    )
    assert len(newer["submitted"]) == 1, newer
    return first, newer["submitted"][0], blocker


def test_restart_after_crash_with_a_requeued_job_whose_key_was_taken(
    workdir: Path, started: list[DaemonProcess]
) -> None:
    """Recovery queues a job again while a newer queued job holds its dedup key: it still starts."""
    first = DaemonProcess(workdir)
    started.append(first.start())
    with first.client() as c:
        ids = _key_taken_while_running(c)
    first.kill()

    second = DaemonProcess(workdir)
    started.append(second.start(timeout_s=15))
    with second.client() as c:
        for job_id in ids:
            assert finish(c, job_id)["status"] != "running"
        assert c.call("job.list", status="running")["jobs"] == []
    assert second.stop() == 0


def test_graceful_stop_with_a_requeued_job_whose_key_was_taken(
    workdir: Path, started: list[DaemonProcess]
) -> None:
    """A graceful stop writes every interrupted job back, even one whose dedup key was taken."""
    first = DaemonProcess(workdir)
    started.append(first.start())
    with first.client() as c:
        first_id, newer, blocker = _key_taken_while_running(c)
    assert first.stop(timeout_s=10) == 0
    assert stored_job(first.db_path, blocker)["status"] == "queued"
    assert stored_job(first.db_path, blocker)["error"] == "interrupted by daemon shutdown"
    assert stored_job(first.db_path, first_id)["status"] != "running"
    assert stored_job(first.db_path, newer)["status"] in ("queued", "cancelled")
