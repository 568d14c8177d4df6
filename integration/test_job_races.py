"""Engine truth for jobs: each promise attacked by the race that broke it (issue 8).

Every test drives the real daemon over its socket with real processes. Races
are repeated with randomised timing and assert the outcome, never that
"nothing happened" after a fixed sleep.
"""

from __future__ import annotations

import contextlib
import random
import threading
import time
from pathlib import Path
from typing import Any

from hero_procd.client import Client
from hero_procd.errors import InvalidState
from integration.daemon_proc import DaemonProcess
from integration.helpers import (
    all_logs,
    daemon_running,
    finish,
    is_alive,
    read_lines,
    sh,
    submit,
    wait_for,
    wait_running,
)


def test_cancel_during_a_retry_is_never_refused_and_stops_the_retries(
    c: Client, tmp_path: Path
) -> None:
    """Finding 1: a cancel landing around a failed attempt's exit wins (x60, random timing).

    Each attempt appends a line to its own file; after the cancel is answered at
    most the attempt already under way may still start.
    """
    rng = random.Random(8001)
    outcomes: dict[str, int] = {}
    for i in range(60):
        marks = tmp_path / f"attempts-{i}"
        job_id = submit(
            c,
            command=sh(f"echo x >> {marks}; exit 1"),
            retries=8,
            retry_delay_s=0.01,
        )
        time.sleep(rng.uniform(0.0, 0.04))
        answer = c.call("job.cancel", id=job_id)  # must never be refused: the job has retries
        assert answer["result"] in ("cancelled", "cancelling"), answer
        started_at_cancel = len(read_lines(marks)) if marks.exists() else 0
        job = finish(c, job_id)
        started = len(read_lines(marks)) if marks.exists() else 0
        assert started <= started_at_cancel + 1, (job, started_at_cancel, started)
        assert job["status"] in ("cancelled", "failed"), job
        assert job["cancel_requested"] is True
        assert job["attempt"] < 9, job
        outcomes[job["status"]] = outcomes.get(job["status"], 0) + 1
    assert sum(outcomes.values()) == 60


def test_cancel_of_a_finished_job_is_refused_and_changes_nothing(c: Client) -> None:
    """Only a job that has ended is refused, and the refusal leaves it as it was."""
    job_id = submit(c, command=["true"])
    finish(c, job_id)
    before = c.call("job.get", id=job_id)
    try:
        c.call("job.cancel", id=job_id)
    except InvalidState as exc:
        assert exc.data is not None and exc.data["status"] == "succeeded"
    else:
        raise AssertionError("cancel of a finished job was accepted")
    assert c.call("job.get", id=job_id) == before


def _leader_exited_with_pipe_held(c: Client, tmp_path: Path, name: str) -> tuple[int, int]:
    """A job whose leader exits 0 while an escaped grandchild holds its output for ~1.5 s.

    Returns (job id, leader pid) once the leader is gone and the job is still running.
    """
    marks = tmp_path / name
    # The pause lets the escapee leave the job's process group before the leader exits
    # (the group is killed when the leader ends).
    script = f"echo run >> {marks}; echo a; setsid sh -c 'sleep 1.5; echo b' & sleep 0.3; exit 0"
    job_id = submit(c, command=sh(script))
    pid = int(wait_running(c, job_id)["pid"])
    wait_for(lambda: True if not is_alive(pid) else None, "the leader to exit")
    job = c.call("job.get", id=job_id)
    assert job["status"] == "running", job  # the escaped child still holds the pipe
    return job_id, pid


# An escapee can hold a finished job's output only where cells are process groups: a
# cgroup cell is killed whole when the leader ends (integration/test_containment.py).
PROCESS_GROUPS = {"HERO_PROC_CONTAINMENT": "process-group"}


def test_cancel_after_the_leader_exited_keeps_its_real_outcome(tmp_path: Path) -> None:
    """Finding 2: a cancel that lands while a finished leader's output drains does not turn
    a success into `cancelled`."""
    with daemon_running(env=PROCESS_GROUPS) as proc, proc.client() as c:
        job_id, _ = _leader_exited_with_pipe_held(c, tmp_path, "drain")
        assert c.call("job.cancel", id=job_id)["result"] == "cancelling"
        job = finish(c, job_id)
    assert job["status"] == "succeeded", job
    assert job["exit_code"] == 0
    assert job["cancel_requested"] is True


def test_graceful_stop_never_runs_a_finished_job_again(workdir: Path, tmp_path: Path) -> None:
    """Finding 2: SIGTERM while a finished leader's output drains; after restart the job is
    `succeeded` and ran once."""
    proc = DaemonProcess(workdir, env=PROCESS_GROUPS).start()
    try:
        with proc.client() as c:
            job_id, _ = _leader_exited_with_pipe_held(c, tmp_path, "stop")
        assert proc.stop() == 0
        proc.start()
        with proc.client() as c:
            job = c.call("job.get", id=job_id)
            assert job["status"] == "succeeded", job
            assert job["attempt"] == 1
            # Nothing queued is left that could run it again.
            assert c.call("job.list", status="queued")["jobs"] == []
        assert read_lines(tmp_path / "stop") == ["run"]
    finally:
        proc.stop()


def test_graceful_stop_after_cancelling_ends_cancelled(workdir: Path, tmp_path: Path) -> None:
    """Finding 2: a job answered `cancelling` when a graceful stop comes ends `cancelled`,
    not queued again."""
    marks = tmp_path / "runs"
    script = f"echo run >> {marks}; trap 'sleep 0.5; exit 0' TERM; while :; do sleep 0.05; done"
    proc = DaemonProcess(workdir).start()
    try:
        with proc.client() as c:
            job_id = submit(c, command=sh(script))
            wait_running(c, job_id)
            wait_for(lambda: True if marks.exists() else None, "the job to start")
            assert c.call("job.cancel", id=job_id)["result"] == "cancelling"
        assert proc.stop() == 0
        proc.start()
        with proc.client() as c:
            job = c.call("job.get", id=job_id)
            assert job["status"] == "cancelled", job
        assert read_lines(marks) == ["run"]
    finally:
        proc.stop()


def test_graceful_stop_requeues_only_what_it_terminated(workdir: Path, tmp_path: Path) -> None:
    """An attempt the stop terminated comes back queued (not lost, attempt not counted)."""
    marks = tmp_path / "runs"
    proc = DaemonProcess(workdir).start()
    try:
        with proc.client() as c:
            job_id = submit(c, command=sh(f"echo run >> {marks}; sleep 30"))
            wait_running(c, job_id)
            wait_for(lambda: True if marks.exists() else None, "the job to start")
        assert proc.stop() == 0
        proc.start()
        with proc.client() as c:
            running = wait_running(c, job_id)
            assert running["attempt"] == 1, running  # the interrupted attempt did not count
            c.call("job.cancel", id=job_id)
            assert finish(c, job_id)["status"] == "cancelled"
        assert read_lines(marks) == ["run", "run"]
    finally:
        proc.stop()


def test_lines_of_a_job_paused_by_backpressure_are_all_kept(workdir: Path) -> None:
    """Finding 5: a chatty job held by log backpressure that then exits keeps every line."""
    # A small buffer: the producer is paused often (and one read of a pipe may overshoot
    # the bound: those lines are dropped, and counted).
    env = {"HERO_PROC_LOG_BUFFER_LINES": "20000"}
    with daemon_running(workdir, env=env) as proc, proc.client() as c:
        dropped_total = 0
        for total in (3001, 90_001):  # under the per-owner cap (100,000): nothing trimmed
            job_id = submit(c, command=sh(f"seq 1 {total}"))
            job = finish(c, job_id)
            assert job["status"] == "succeeded", job
            lines = all_logs(c, job_id)
            seqs = [ln["seq"] for ln in lines]
            assert seqs == sorted(set(seqs)), "sequence numbers are unique and increasing"
            assert len(lines) + job["dropped_log_lines"] == total
            numbers = [int(ln["text"]) for ln in lines]
            assert numbers == sorted(set(numbers))  # what is kept is in order, no repeats
            assert numbers[-1] == total  # the tail (a crash's last words) is never the loss
            if total == 3001:
                assert job["dropped_log_lines"] == 0
            dropped_total += job["dropped_log_lines"]
        # The per-owner counts add up to what system.info reports (kept across restarts).
        assert c.call("system.info")["dropped_log_lines_total"] == dropped_total


def test_retries_never_reuse_a_sequence_number(c: Client) -> None:
    """Finding 5: each attempt's lines continue the job's sequence; none is lost."""
    job_id = submit(
        c,
        command=sh('for i in $(seq 1 500); do echo "$HERO_PROC_ATTEMPT $i"; done; exit 1'),
        retries=3,
        retry_delay_s=0.01,
    )
    job = finish(c, job_id)
    assert job["status"] == "failed" and job["attempt"] == 4, job
    lines = all_logs(c, job_id)
    assert [ln["seq"] for ln in lines] == list(range(1, 2001))
    assert [ln["text"] for ln in lines] == [f"{a} {i}" for a in range(1, 5) for i in range(1, 501)]
    assert job["dropped_log_lines"] == 0


def test_a_replaced_job_settles_its_run(c: Client, tmp_path: Path) -> None:
    """Finding 8: `on_duplicate: replace` cancels the old job through the cancel path: its
    dependents are skipped, its run finishes, and waits on them return."""
    gate = tmp_path / "gate"
    run = c.call(
        "run.submit",
        jobs=[
            {"key": "hold", "command": sh(f"while [ ! -e {gate} ]; do sleep 0.02; done")},
            {"key": "old", "command": ["true"], "depends_on": ["hold"], "dedup_key": "k8"},
            {"key": "after", "command": ["true"], "depends_on": ["old"]},
        ],
    )
    ids = run["jobs"]
    out = c.call("job.submit_batch", jobs=[{"command": ["true"], "dedup_key": "k8"}],
                 on_duplicate="replace")  # fmt: skip
    assert out["superseded"] == [[out["submitted"][0], ids["old"]]]
    assert finish(c, ids["after"], timeout_s=10)["status"] == "skipped"
    assert finish(c, ids["old"])["status"] == "cancelled"
    gate.touch()
    assert finish(c, ids["hold"])["status"] == "succeeded"
    assert finish(c, out["submitted"][0])["status"] == "succeeded"
    final: dict[str, Any] = wait_for(
        lambda: (
            ((r := c.call("run.get", id=run["id"]))["status"] not in ("queued", "running") and r)
            or None
        ),
        "the run to finish",
    )
    assert final["status"] == "cancelled", final


def test_kill_9_during_a_big_batch_commits_all_or_nothing(workdir: Path) -> None:
    """Finding 14: a batch is one transaction: a crash mid-way leaves none or all of it."""
    rng = random.Random(14)
    proc = DaemonProcess(workdir, extra_args=["--max-parallel", "1"])
    total = 0
    for round_ in range(4):
        proc.start()

        def send(n: int = 30_000, tag: str = f"r{round_}") -> None:
            try:
                with proc.client(timeout=60) as c:
                    c.call("job.submit_batch", jobs=[{"command": ["true"], "tags": [tag]}] * n)
            except Exception:
                pass  # the daemon is killed under it

        t = threading.Thread(target=send)
        t.start()
        time.sleep(rng.uniform(0.05, 1.2))
        proc.kill()
        t.join()
        proc.start()
        with proc.client() as c:
            found = len(c.call("job.list", tag=f"r{round_}", limit=10_000)["jobs"])
            if found:
                pages = found
                after = c.call("job.list", tag=f"r{round_}", limit=10_000)["next_after_id"]
                while after:
                    page = c.call("job.list", tag=f"r{round_}", limit=10_000, after_id=after)
                    pages += len(page["jobs"])
                    after = page["next_after_id"]
                found = pages
            assert found in (0, 30_000), found
            total += found
        proc.stop()
    assert total % 30_000 == 0


def test_wait_is_answered_at_a_graceful_stop(workdir: Path) -> None:
    """Front door 12: a pending job.wait is answered with the job's state when the daemon
    stops, not held for the whole grace and cut."""
    proc = DaemonProcess(workdir).start()
    answers: list[Any] = []
    try:
        with proc.client() as c:
            job_id = submit(c, command=["sleep", "30"])
            wait_running(c, job_id)

        def waiter() -> None:
            with proc.client() as w:
                answers.append(w.call("job.wait", id=job_id, timeout_s=60))

        t = threading.Thread(target=waiter)
        t.start()
        time.sleep(0.3)
        began = time.monotonic()
        assert proc.stop() == 0
        t.join(20)
        assert answers, "the wait was not answered"
        assert answers[0]["done"] is False
        assert time.monotonic() - began < 9
    finally:
        proc.stop()


def test_many_cancels_against_exits_one_outcome_each(c: Client) -> None:
    """Cancel racing a natural exit (x80, random timing): one outcome per job, and a job that
    exited 0 before the cancel stopped it stays `succeeded`."""
    rng = random.Random(2)
    ids = []
    for _ in range(80):
        job_id = submit(c, command=["sleep", f"{rng.uniform(0.0, 0.05):.3f}"])
        ids.append(job_id)
        time.sleep(rng.uniform(0.0, 0.05))
        with contextlib.suppress(InvalidState):  # it had already finished: nothing changed
            c.call("job.cancel", id=job_id)
    for job_id in ids:
        job = finish(c, job_id)
        assert job["status"] in ("succeeded", "cancelled"), job
        if job["status"] == "succeeded":
            assert job["exit_code"] == 0
        else:
            assert job["cancel_requested"] is True
