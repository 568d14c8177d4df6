"""Jobs actually running: /bin/true throughput against bare posix_spawn, and a flood of output."""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import threading
import time

from hero_procd.client import Client
from hero_procd.config import Config
from integration.bench.common import (
    TRUE,
    BenchResult,
    Row,
    RssSampler,
    Sizes,
    Target,
    baseline_db,
    bench_daemon,
    count_jobs,
    cpu_seconds,
    daemon_pid,
    main_thread_cpu_seconds,
    median,
    rss_bytes,
    scratch_dir,
    wait_all_finished,
)

MB = 1024 * 1024


def spawn_loop(n: int, threads: int = 1) -> float:
    """Seconds to posix_spawn + waitpid /bin/true n times, split over `threads` threads."""
    env = dict(os.environ)

    def worker(count: int) -> None:
        for _ in range(count):
            pid = os.posix_spawn(TRUE, [TRUE], env)
            os.waitpid(pid, 0)

    shares = [n // threads + (1 if i < n % threads else 0) for i in range(threads)]
    t0 = time.perf_counter()
    if threads == 1:
        worker(n)
    else:
        pool = [threading.Thread(target=worker, args=(k,)) for k in shares]
        for t in pool:
            t.start()
        for t in pool:
            t.join()
    return time.perf_counter() - t0


def default_max_parallel() -> int:
    """The daemon's default max-parallel ($HERO_PROC_MAX_PARALLEL, or Config's default)."""
    env = os.environ.get("HERO_PROC_MAX_PARALLEL", "").strip()
    if env:
        return int(env)
    default = next(f.default for f in dataclasses.fields(Config) if f.name == "max_parallel")
    assert isinstance(default, int)
    return default


def spawn_in_flight(n: int, in_flight: int) -> float:
    """Seconds to posix_spawn /bin/true n times keeping `in_flight` children, reaped by waitpid.

    The bench process must have no other child meanwhile (waitpid(-1) reaps any).
    """
    env = dict(os.environ)
    ours: set[int] = set()
    started = 0
    t0 = time.perf_counter()
    while started < min(in_flight, n):
        ours.add(os.posix_spawn(TRUE, [TRUE], env))
        started += 1
    while ours:
        pid, _ = os.waitpid(-1, 0)
        if pid not in ours:
            raise RuntimeError(f"waitpid reaped {pid}, a child the loop did not spawn")
        ours.discard(pid)
        if started < n:
            ours.add(os.posix_spawn(TRUE, [TRUE], env))
            started += 1
    return time.perf_counter() - t0


def _throughput(n: int, max_parallel: int | None) -> dict[str, float]:
    """N /bin/true jobs through the daemon; `max_parallel` None runs at the daemon's default."""
    items = [{"command": [TRUE]} for _ in range(n)]
    args = [] if max_parallel is None else ["--max-parallel", str(max_parallel)]
    with bench_daemon(args) as daemon:
        pid = daemon_pid(daemon)
        with daemon.client(timeout=600) as c:
            max_parallel = int(c.call("system.info")["max_parallel"])
            cpu0 = cpu_seconds(pid)
            loop0 = main_thread_cpu_seconds(pid)
            t0 = time.perf_counter()
            submitted = c.call("job.submit_batch", {"jobs": items})["submitted"]
            submit_s = time.perf_counter() - t0
            wait_all_finished(c, max(submitted))
            wall = time.perf_counter() - t0
            cpu = cpu_seconds(pid) - cpu0
            loop_cpu = main_thread_cpu_seconds(pid) - loop0
            succeeded = count_jobs(c, "succeeded")
    return {
        "max_parallel": max_parallel,
        "jobs": n,
        "submit_s": submit_s,
        "wall_s": wall,
        "jobs_per_s": n / wall,
        "succeeded": succeeded,
        "daemon_cpu_s": cpu,
        "daemon_cpu_ms_per_job": cpu * 1000 / n,
        "event_loop_cpu_s": loop_cpu,
        "other_threads_cpu_s": cpu - loop_cpu,
    }


def bench_throughput(sizes: Sizes) -> BenchResult:
    """4. N /bin/true jobs from submit_batch to all succeeded, vs posix_spawn loops.

    The first run is at the daemon's default max-parallel, against a raw loop keeping
    as many children in flight, measured just before and just after it (the mean of
    the two is the baseline).
    """
    n = sizes.throughput_jobs
    result = BenchResult("throughput")
    in_flight = default_max_parallel()
    raw_before = spawn_in_flight(n, in_flight)
    default = _throughput(n, None)
    raw_after = spawn_in_flight(n, in_flight)
    if int(default["max_parallel"]) != in_flight:
        raise RuntimeError(
            f"the daemon's default max-parallel is {default['max_parallel']}, not {in_flight}"
        )
    raw_s = (raw_before + raw_after) / 2
    runs = [default, _throughput(n, 32)]
    seq_s = spawn_loop(n)
    par_s = spawn_loop(n, threads=16)
    result.figures = {
        "daemon": runs,
        "posix_spawn_in_flight": in_flight,
        "posix_spawn_in_flight_s": [raw_before, raw_after],
        "posix_spawn_sequential_s": seq_s,
        "posix_spawn_16_threads_s": par_s,
    }
    result.rows.append(
        Row(
            f"{n:,} /bin/true jobs, default max-parallel ({in_flight})",
            default["jobs_per_s"],
            "jobs/s",
            n / raw_s,
            f"posix_spawn+waitpid, {in_flight} in flight",
            Target("x>=", 0.75),
            f"raw loop {n / raw_before:,.0f} jobs/s before the daemon's run,"
            f" {n / raw_after:,.0f} after; the mean of their times is the baseline",
        )
    )
    for k, run in enumerate(runs):
        ok = run["succeeded"] == n
        loop_share = run["event_loop_cpu_s"] / run["daemon_cpu_s"] if run["daemon_cpu_s"] else 0
        note = (
            f"daemon CPU {run['daemon_cpu_ms_per_job']:.2f} ms/job"
            f" ({loop_share:.0%} on the event-loop thread)"
        )
        if not ok:
            note += f"; only {int(run['succeeded'])} of {n} succeeded"
        name = f"{n:,} /bin/true jobs, max-parallel {int(run['max_parallel'])}"
        result.rows += [
            Row(
                "  same" if k == 0 else name,
                run["jobs_per_s"],
                "jobs/s",
                n / seq_s,
                "posix_spawn+waitpid loop",
                Target(">=", 1000),
                note,
            ),
            Row("  same", run["jobs_per_s"], "jobs/s", n / par_s, "posix_spawn, 16 threads"),
        ]
    return result


def _wait_logs_stored(c: Client, expected: int, timeout_s: float = 300.0) -> dict[str, int]:
    """Poll system.info until the flusher is empty and stored + dropped lines stop changing."""
    deadline = time.monotonic() + timeout_s
    last = (-1, -1)
    while True:
        info = c.call("system.info")
        now = (info["counts"]["logs"], info["dropped_log_lines"])
        if info["flusher_pending"] == 0 and (sum(now) >= expected or now == last):
            return {"stored": now[0], "dropped": now[1]}
        if time.monotonic() > deadline:
            raise TimeoutError(f"log lines still pending after {timeout_s}s: {info}")
        last = now
        time.sleep(0.05)


def _sqlite_log_insert(n: int) -> float:
    """Seconds to insert n log lines with one executemany in one transaction (the floor)."""
    with scratch_dir() as tmp:
        conn = baseline_db(tmp / "base.db")
        try:
            ts = time.time()
            rows = [("job", "1", i, "stdout", ts, str(i)) for i in range(1, n + 1)]
            t0 = time.perf_counter()
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany(
                "INSERT INTO log_lines (owner_kind, owner_id, seq, stream, ts, text)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                rows,
            )
            conn.execute("COMMIT")
            seconds = time.perf_counter() - t0
            return seconds
        finally:
            conn.close()


def bench_logs(sizes: Sizes) -> BenchResult:
    """5. A job printing N lines: time to finish, stored + dropped lines, daemon's peak RSS."""
    n = sizes.log_lines
    result = BenchResult("logs")
    seq = shutil.which("seq")
    if seq is None:
        raise RuntimeError("seq is not installed")
    # The per-owner cap (a retention policy, 100,000 lines by default) is lifted here:
    # this measures storing every line, not trimming them.
    env = {"HERO_PROC_MAX_LOG_LINES": str(2 * n)}
    with bench_daemon(env=env) as daemon, daemon.client(timeout=600) as c:
        pid = daemon_pid(daemon)
        rss_idle = rss_bytes(pid)
        cpu0 = cpu_seconds(pid)
        with RssSampler(pid) as sampler:
            t0 = time.perf_counter()
            job_id = c.call("job.submit", {"command": [seq, str(n)]})["id"]
            job = c.call("job.wait", id=job_id, timeout_s=600)
            done_s = time.perf_counter() - t0
            counts = _wait_logs_stored(c, n)
            stored_s = time.perf_counter() - t0
        cpu = cpu_seconds(pid) - cpu0
    base: list[float] = []
    for _ in range(3):
        t0 = time.perf_counter()
        subprocess.run([seq, str(n)], stdout=subprocess.DEVNULL, check=True)
        base.append(time.perf_counter() - t0)
    floor = _sqlite_log_insert(n)
    adds_up = counts["stored"] + counts["dropped"] == n
    result.figures = {
        "lines": n,
        "job_status": job["status"],
        "exit_code": job.get("exit_code"),
        "done_s": done_s,
        "all_stored_s": stored_s,
        "stored": counts["stored"],
        "dropped": counts["dropped"],
        "adds_up": adds_up,
        "rss_idle_bytes": rss_idle,
        "rss_peak_bytes": sampler.peak,
        "rss_samples": sampler.samples,
        "daemon_cpu_s": cpu,
        "seq_devnull_s": base,
        "sqlite_executemany_s": floor,
    }
    tally = f"stored {counts['stored']:,} + dropped {counts['dropped']:,}"
    tally += " = N" if adds_up else f" != {n:,} (MISMATCH)"
    result.rows += [
        Row(f"job printing {n:,} lines: done", done_s, "s", median(base), "seq > /dev/null"),
        Row(
            "  all lines stored",
            stored_s,
            "s",
            floor,
            "sqlite3 executemany of the lines",
            note=tally,
        ),
        Row(
            "  daemon peak RSS",
            sampler.peak / MB,
            "MB",
            rss_idle / MB,
            "same daemon at rest",
            note=f"{sampler.samples} samples every 50 ms",
        ),
    ]
    return result
