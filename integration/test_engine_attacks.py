"""A reviewer's attacks on the job half of the engine (issue 8), on the real daemon.

Each test drives a real hero-procd over its socket with real processes; races
are repeated with randomised timing and assert outcomes, never that "nothing
happened" after a fixed sleep.
"""

from __future__ import annotations

import os
import random
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hero_procd.client import Client
from hero_procd.errors import HeroError
from integration.daemon_proc import DaemonProcess
from integration.helpers import (
    all_logs,
    daemon_running,
    finish,
    read_lines,
    sh,
    submit,
    wait_for,
    wait_running,
)
from tests.tmpfs import fill, tiny_tmpfs


def test_graceful_stop_never_reruns_a_job_that_ignored_sigterm_and_succeeded(
    workdir: Path, tmp_path: Path
) -> None:
    """A job that ignores SIGTERM and then exits 0 by itself during a graceful stop was not
    terminated by the daemon: it succeeded, and must not run again after a restart."""
    marks = tmp_path / "runs"
    script = f"trap '' TERM; echo run >> {marks}; sleep 0.6; exit 0"
    proc = DaemonProcess(workdir).start()
    try:
        with proc.client() as c:
            job_id = submit(c, command=sh(script), kill_timeout_s=10)
            wait_running(c, job_id)
            wait_for(lambda: True if marks.exists() else None, "the job to start")
        assert proc.stop() == 0
        proc.start()
        with proc.client() as c:
            job = c.call("job.get", id=job_id)
            if job["status"] in ("queued", "running"):
                job = finish(c, job_id)
        assert read_lines(marks) == ["run"], f"ran {len(read_lines(marks))} times: {job}"
        assert job["status"] == "succeeded", job
    finally:
        proc.stop()


def test_wipe_all_racing_job_exits_never_stops_claiming_for_good(workdir: Path) -> None:
    """`system.wipe_all` while short jobs keep finishing: whatever it answers, jobs
    submitted afterwards still run (the claim pause of stop_all_jobs is always undone)."""
    rng = random.Random(8101)
    with daemon_running(workdir, extra_args=["--max-parallel", "16"]) as proc, proc.client() as c:
        for i in range(12):
            for _ in range(24):
                submit(c, command=sh(f"sleep 0.0{rng.randint(0, 4)}"))
            time.sleep(rng.uniform(0.0, 0.05))
            try:
                c.call("system.wipe_all", confirm=True)
                answer = "ok"
            except HeroError as exc:
                answer = f"{exc.code} {exc}"
            probe = submit(c, command=["true"])
            job = c.call("job.wait", id=probe, timeout_s=10)
            assert job["status"] == "succeeded", (i, answer, job)
            assert answer == "ok", answer


def test_group_limit_and_max_parallel_hold_under_churn(workdir: Path, tmp_path: Path) -> None:
    """Jobs of a group limited to 2 (and max_parallel 4) with random short lives: the
    processes themselves never see more than the limit alive at once."""
    marks = tmp_path / "marks"
    marks.mkdir()
    rng = random.Random(8102)
    with daemon_running(workdir, extra_args=["--max-parallel", "4"]) as proc, proc.client() as c:
        c.call("group.set", name="g", max_parallel=2)
        ids = []
        for i in range(60):
            grp = "g" if i % 3 else None
            script = (
                f"echo s $(date +%s%N) > {marks}/{i}; sleep 0.0{rng.randint(1, 6)}; "
                f"echo e $(date +%s%N) >> {marks}/{i}"
            )
            params: dict[str, Any] = {"command": sh(script)}
            if grp:
                params["group"] = grp
            ids.append((submit(c, **params), grp, i))
        for job_id, _, _ in ids:
            assert finish(c, job_id, 60)["status"] == "succeeded"
    events: list[tuple[int, int, bool]] = []  # (ns, +1/-1, in group)
    for _, grp, i in ids:
        start, end = (int(line.split()[1]) for line in read_lines(marks / str(i)))
        events += [(start, 1, grp is not None), (end, -1, grp is not None)]
    events.sort(key=lambda e: (e[0], e[1]))
    alive = in_group = peak = peak_group = 0
    for _, delta, g in events:
        alive += delta
        in_group += delta if g else 0
        peak, peak_group = max(peak, alive), max(peak_group, in_group)
    assert peak <= 4, peak
    assert peak_group <= 2, peak_group


def test_every_line_of_many_printing_jobs_is_stored_or_counted(workdir: Path) -> None:
    """20 jobs print 3,000 numbered lines each through a 2,000-line buffer: for each job
    the stored sequence numbers are unique and increasing, each line is under its own
    owner, and stored + dropped = printed."""
    env = {"HERO_PROC_LOG_BUFFER_LINES": "2000"}
    with daemon_running(workdir, env=env) as proc, proc.client() as c:
        ids = [
            submit(c, command=sh(f"i=0; while [ $i -lt 3000 ]; do echo {n}:$i; i=$((i+1)); done"))
            for n in range(20)
        ]
        for n, job_id in enumerate(ids):
            job = finish(c, job_id, 60)
            lines = all_logs(c, job_id)
            seqs = [ln["seq"] for ln in lines]
            assert seqs == sorted(set(seqs)), f"job {job_id}: duplicate or unordered seqs"
            assert all(ln["text"].startswith(f"{n}:") for ln in lines), f"job {job_id}"
            dropped = job.get("dropped_log_lines", 0)
            assert len(lines) + dropped == 3000, (job_id, len(lines), dropped)
            if seqs:
                assert seqs[-1] <= 3000


def test_cancel_right_after_submit_never_refused_never_runs_long(c: Client) -> None:
    """x60: a cancel at a random moment around claim and spawn is answered cancelled or
    cancelling, and the job ends cancelled (or succeeded if it already exited), quickly."""
    rng = random.Random(8103)
    for _ in range(60):
        job_id = submit(c, command=sh("sleep 30"))
        time.sleep(rng.uniform(0.0, 0.02))
        answer = c.call("job.cancel", id=job_id)
        assert answer["result"] in ("cancelled", "cancelling"), answer
        job = finish(c, job_id, 10)
        assert job["status"] == "cancelled", job


def test_a_cancel_during_a_retry_backoff_never_lets_a_later_attempt_run_cancelled(
    c: Client, tmp_path: Path
) -> None:
    """x50: a job fails and retries; a cancel at a random moment. Once the job is terminal,
    a job submitted next with the same command is never killed by a stale pending cancel."""
    rng = random.Random(8104)
    for i in range(50):
        job_id = submit(c, command=sh("exit 1"), retries=3, retry_delay_s=0.01)
        time.sleep(rng.uniform(0.0, 0.03))
        c.call("job.cancel", id=job_id)
        finish(c, job_id)
        ok = submit(c, command=sh("sleep 0.05"))
        assert finish(c, ok)["status"] == "succeeded", i


# -- a full disk ----------------------------------------------------------------------


@pytest.fixture
def tiny_dir() -> Iterator[Path]:
    """A 4 MiB tmpfs under /tmp (root only), for a database that runs out of space."""
    with tiny_tmpfs(Path(f"/tmp/hpfull{os.getpid()}"), "4m") as where:
        yield where


def test_a_full_disk_is_answered_precisely_and_nothing_is_lost_when_space_returns(
    tiny_dir: Path,
) -> None:
    """The database's disk fills while jobs print and finish: submits are refused with a
    precise error (not a hang), no finished job is lost or stuck, every line is stored or
    counted, and once space returns everything proceeds."""
    proc = DaemonProcess(tiny_dir)
    proc.start()
    try:
        with proc.client(timeout=30) as c:
            before = [submit(c, command=["true"]) for _ in range(5)]
            for job_id in before:
                finish(c, job_id)
            during = [
                submit(
                    c,
                    command=sh(
                        "sleep 0.3; i=0; while [ $i -lt 500 ]; do echo $i; i=$((i+1)); done"
                    ),
                )
                for _ in range(4)
            ]
            filler = fill(tiny_dir)
            errors: list[str] = []
            deadline = time.monotonic() + 10
            while not errors and time.monotonic() < deadline:
                try:
                    # Big enough to need new pages whatever the free list holds.
                    c.call(
                        "job.submit_batch",
                        jobs=[{"command": ["true"], "tags": ["x" * 200]} for _ in range(2000)],
                    )
                except HeroError as exc:
                    errors.append(f"{exc.code} {exc}")
            assert errors, "no write was refused on a full disk"
            assert "full" in errors[0], errors[0]
            # Answers keep coming while the disk is full (reads, and a ping).
            c.call("system.ping")
            filler.unlink()
            for job_id in during:
                job = finish(c, job_id, 30)
                assert job["status"] == "succeeded", job
                got = len(all_logs(c, job_id))
                assert got + job.get("dropped_log_lines", 0) == 500, (job_id, got)
            for job_id in before:
                assert c.call("job.get", id=job_id)["status"] == "succeeded"
            after = submit(c, command=["true"])
            assert finish(c, after)["status"] == "succeeded"
        assert proc.stop() == 0
    finally:
        proc.stop()


# -- event loop stalls ---------------------------------------------------------------------


def test_a_big_batch_does_not_stall_other_connections(workdir: Path) -> None:
    """A 50,000-job submit_batch on one connection: pings on another keep answering.

    Issue 8's figure (ping max <= 100 ms) is a speed target, measured by `make bench`
    (integration/bench/bench_latency.py) against an idle baseline in the same run; a test
    on a shared 2-core machine only guards against the loop freezing (the old code held
    other connections for the whole batch)."""
    with daemon_running(workdir, extra_args=["--max-parallel", "1"]) as proc:
        stop = threading.Event()
        worst = [0.0]
        pings = [0]

        def pinger() -> None:
            with proc.client() as p:
                while not stop.is_set():
                    t0 = time.monotonic()
                    p.call("system.ping")
                    worst[0] = max(worst[0], time.monotonic() - t0)
                    pings[0] += 1
                    time.sleep(0.005)

        with proc.client(timeout=120) as c:
            c.call("job.submit", command=sh("sleep 60"))  # keeps the one slot busy
            thread = threading.Thread(target=pinger)
            thread.start()
            try:
                jobs = [{"command": ["true"], "tags": ["big"]} for _ in range(50_000)]
                res = c.call("job.submit_batch", jobs=jobs)
                assert len(res["submitted"]) == 50_000
            finally:
                stop.set()
                thread.join()
            c.call("system.wipe_all", confirm=True)
        assert pings[0] >= 10, "pings did not go on during the batch"
        assert worst[0] < 2.0, f"a ping waited {worst[0] * 1000:.0f} ms"
