"""Several nodes on one PostgreSQL queue: throughput 3 nodes vs 1, submit-to-start latency
on another node, submit_batch on PostgreSQL vs SQLite, status_all over 3 nodes' services.

Needs PostgreSQL at $HERO_PROC_TEST_PG (default postgresql://postgres@127.0.0.1:5432/test);
each measurement has a schema of its own, dropped afterwards. Skipped without it.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator

from hero_procd.client import Client
from integration.bench.bench_jobs import _wait_logs_stored
from integration.bench.common import (
    TRUE,
    BenchResult,
    Row,
    Sizes,
    Skipped,
    Target,
    bench_daemon,
    median,
    percentile,
    wait_all_finished,
)
from integration.daemon_proc import DaemonProcess, cleanup, short_tmpdir
from tests.pg import pg_schema, unreachable

NODE_ARGS = ["--log-level", "warning", "--max-parallel", "8"]


@contextlib.contextmanager
def nodes(count: int, dsn: str) -> Iterator[list[DaemonProcess]]:
    """`count` daemons (n1…) on one schema, stopped and removed afterwards."""
    workdir = short_tmpdir("hpc")
    procs = [
        DaemonProcess(workdir, extra_args=NODE_ARGS, db=dsn, node=f"n{i + 1}") for i in range(count)
    ]
    try:
        for proc in procs:
            proc.start()
        yield procs
    finally:
        for proc in procs:
            if proc.proc is not None and proc.proc.poll() is None:
                proc.stop(timeout_s=60.0)
        cleanup(workdir)


def _drain_seconds(count: int, jobs: int) -> float:
    """Seconds for `count` nodes to run `jobs` x sleep 0.05 submitted in one batch."""
    with pg_schema("bench") as dsn, nodes(count, dsn) as procs, procs[0].client(300) as c:
        t0 = time.perf_counter()
        ids = c.call("job.submit_batch", jobs=[{"command": ["sleep", "0.05"]}] * jobs)["submitted"]
        wait_all_finished(c, ids[-1])
        return time.perf_counter() - t0


def _latency_ms(samples: int) -> list[float]:
    """Submit through n1 a job placed on n2 (idle), one at a time: created → started."""
    out: list[float] = []
    with pg_schema("bench") as dsn, nodes(3, dsn) as procs, procs[0].client(60) as c:
        time.sleep(1.0)  # every node idle, listening
        for _ in range(samples):
            job_id = c.call("job.submit", command=[TRUE], node="n2")["id"]
            job = c.call("job.wait", id=job_id, timeout_s=30)
            out.append((job["started_at"] - job["created_at"]) * 1000.0)
    return out


def _batch_seconds(c: Client, n: int) -> float:
    jobs = [{"command": [TRUE]}] * n
    t0 = time.perf_counter()
    answer = c.call("job.submit_batch", jobs=jobs)
    took = time.perf_counter() - t0
    if len(answer["submitted"]) != n:
        raise RuntimeError(f"submit_batch queued {len(answer['submitted'])} of {n}")
    return took


def _log_seconds(c: Client, lines: int) -> float:
    """A job printing `lines` lines: seconds until every line is stored."""
    t0 = time.perf_counter()
    job_id = c.call("job.submit", command=["seq", str(lines)])["id"]
    c.call("job.wait", id=job_id, timeout_s=300)
    counts = _wait_logs_stored(c, lines)
    if counts["stored"] != lines:
        raise RuntimeError(f"stored {counts} of {lines} lines")
    return time.perf_counter() - t0


def _status_all_ms(c: Client, calls: int) -> list[float]:
    out: list[float] = []
    for _ in range(calls):
        t0 = time.perf_counter()
        c.call("service.status_all")
        out.append((time.perf_counter() - t0) * 1000.0)
    return out


def bench_cluster(sizes: Sizes) -> BenchResult:
    """The several-nodes figures of issue 10, each beside its one-node or SQLite baseline."""
    why = unreachable()
    if why is not None:
        raise Skipped(why)
    quick = sizes.quick
    result = BenchResult("cluster")
    jobs = 300 if quick else 2000
    one = _drain_seconds(1, jobs)
    three = _drain_seconds(3, jobs)
    result.rows.append(
        Row(
            f"{jobs:,} x sleep 0.05, max-parallel 8 per node: 3 nodes",
            jobs / three,
            "jobs/s",
            jobs / one,
            "1 node",
            Target("x>=", 2.5),
            note="PostgreSQL; ratio = 3-node throughput / 1-node",
        )
    )
    lat = _latency_ms(20 if quick else 100)
    result.rows.append(
        Row(
            "submit-to-start on another node (idle cluster), p50",
            median(lat),
            "ms",
            target=Target("<=", 10.0),
            note=f"p95 {percentile(lat, 95):.1f} ms; submitted on n1, started by n2 (NOTIFY)",
        )
    )
    n = 5_000 if quick else 50_000
    with pg_schema("bench") as dsn, nodes(1, dsn) as procs, procs[0].client(300) as c:
        # --max-parallel 8 and 50k `true`: the node starts running them meanwhile.
        pg = [_batch_seconds(c, n) for _ in range(sizes.repeats)]
    with bench_daemon(["--max-parallel", "8"]) as daemon, daemon.client(timeout=300) as c:
        lite = [_batch_seconds(c, n) for _ in range(sizes.repeats)]
    result.rows.append(
        Row(
            f"job.submit_batch {n:,} on PostgreSQL",
            median(pg),
            "s",
            median(lite),
            "the same on SQLite",
            Target("<=", 1.5 * n / 50_000),
        )
    )
    services = 100
    with pg_schema("bench") as dsn, nodes(3, dsn) as procs, procs[0].client(60) as c:
        for i in range(services):
            c.call("service.define", name=f"s{i}", command=["sleep", "600"], node=f"n{i % 3 + 1}")
        pg_ms = _status_all_ms(c, 50 if quick else 300)
    with bench_daemon() as daemon, daemon.client(timeout=60) as c:
        for i in range(services):
            c.call("service.define", name=f"s{i}", command=["sleep", "600"])
        lite_ms = _status_all_ms(c, 50 if quick else 300)
    result.rows.append(
        Row(
            f"service.status_all, {services} services on 3 nodes, p50",
            median(pg_ms),
            "ms",
            median(lite_ms),
            "1 SQLite daemon",
            Target("<=", 5.0),
        )
    )
    lines = 20_000 if quick else 100_000
    env = {"HERO_PROC_MAX_LOG_LINES": str(2 * lines)}
    with pg_schema("bench") as dsn:
        workdir = short_tmpdir("hpc")
        proc = DaemonProcess(workdir, extra_args=NODE_ARGS, db=dsn, node="n1", env=env)
        try:
            proc.start()
            with proc.client(300) as c:
                pg_logs = _log_seconds(c, lines)
        finally:
            proc.stop(timeout_s=60.0)
            cleanup(workdir)
    with bench_daemon(env=env) as daemon, daemon.client(timeout=300) as c:
        lite_logs = _log_seconds(c, lines)
    result.rows.append(
        Row(
            f"job printing {lines:,} lines: all stored, PostgreSQL",
            pg_logs,
            "s",
            lite_logs,
            "the same on SQLite",
            note="batched flushes (COPY on PostgreSQL)",
        )
    )
    result.figures = {
        "log_lines": lines,
        "logs_pg_s": pg_logs,
        "logs_sqlite_s": lite_logs,
        "jobs": jobs,
        "drain_1_node_s": one,
        "drain_3_nodes_s": three,
        "latency_ms": lat,
        "batch": n,
        "batch_pg_s": pg,
        "batch_sqlite_s": lite,
        "status_all_pg_ms": pg_ms,
        "status_all_sqlite_ms": lite_ms,
    }
    return result
