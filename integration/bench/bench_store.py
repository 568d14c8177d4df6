"""Bulk writes over the socket against raw sqlite3: run.submit, job.clean_by_tag, submit_batch."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

from hero_procd.store.pool import chunks
from hero_procd.store.queries import Q, with_marks
from integration.bench.common import (
    FULL,
    TRUE,
    BenchResult,
    Row,
    Sizes,
    Target,
    baseline_db,
    bench_daemon,
    count_jobs,
    insert_jobs,
    job_rows,
    median,
    scratch_dir,
    timed,
    wait_all_finished,
)

CLEAN_TAG = "bench-clean"


def _time_executemany(n: int, *, keyed: bool = False, run: bool = False) -> float:
    """Seconds to insert n job rows (with a run row first) in one transaction, fresh db file."""
    with scratch_dir() as tmp:
        conn = baseline_db(tmp / "base.db")
        try:
            rows, _ = job_rows(1, n, run_id=1 if run else None, keyed=keyed)
            t0 = time.perf_counter()
            insert_jobs(conn, rows, [], run=run)
            return time.perf_counter() - t0
        finally:
            conn.close()


def bench_submit(sizes: Sizes) -> BenchResult:
    """1. `run.submit` of N jobs over the socket vs one executemany of the same rows."""
    n = sizes.submit_jobs
    result = BenchResult("submit")
    jobs = [{"key": f"j{i}", "command": [TRUE]} for i in range(n)]
    ours: list[float] = []
    with bench_daemon(["--max-parallel", "1"]) as daemon, daemon.client(timeout=300) as c:
        for _ in range(sizes.repeats):
            seconds, answer = timed(lambda: c.call("run.submit", {"name": "bench", "jobs": jobs}))
            if len(answer["jobs"]) != n:
                raise RuntimeError(f"run.submit answered {len(answer['jobs'])} jobs, not {n}")
            ours.append(seconds)
    base = [_time_executemany(n, keyed=True, run=True) for _ in range(sizes.repeats)]
    result.figures = {"jobs": n, "ours_s": ours, "sqlite_executemany_s": base}
    result.rows.append(
        Row(
            f"run.submit {n:,} jobs",
            median(ours),
            "s",
            median(base),
            "sqlite3 executemany",
            Target("<=", 0.5).scale(n / FULL.submit_jobs),
            note="daemon executes the jobs meanwhile (--max-parallel 1)",
        )
    )
    return result


def _finished_db(path: Path, n: int) -> sqlite3.Connection:
    conn = baseline_db(path)
    rows, tag_rows = job_rows(1, n, tags=[CLEAN_TAG])
    insert_jobs(conn, rows, tag_rows)
    conn.execute(
        "UPDATE jobs SET status = 'succeeded', attempt = 1, exit_code = 0,"
        " started_at = ?, finished_at = ?",
        (time.time(), time.time()),
    )
    return conn


def clean_per_id(conn: sqlite3.Connection, tag: str) -> int:
    """The naive clean: select the tag's jobs, then one DELETE per id per table, one transaction."""
    conn.execute("BEGIN IMMEDIATE")
    ids = [r[0] for r in conn.execute(Q["job_tagged_for_clean"], (tag,)).fetchall()]
    log_sql = with_marks("log_delete_owners", 1)
    edges = [
        with_marks(name, 1)
        for name in ("job_tag_delete_ids", "job_dep_delete_ids", "job_dep_delete_targets")
    ]
    job_sql = with_marks("job_delete_ids", 1)
    deleted = 0
    for job_id in ids:
        conn.execute(log_sql, ("job", str(job_id)))
        for sql in edges:
            conn.execute(sql, (job_id,))
        deleted += conn.execute(job_sql, (job_id,)).rowcount
    conn.execute("COMMIT")
    return deleted


def clean_chunked(conn: sqlite3.Connection, tag: str) -> int:
    """The daemon's statements without the daemon: one DELETE … IN (…) per chunk of 999."""
    conn.execute("BEGIN IMMEDIATE")
    ids = [r[0] for r in conn.execute(Q["job_tagged_for_clean"], (tag,)).fetchall()]
    for chunk in chunks([str(i) for i in ids], 998):
        conn.execute(with_marks("log_delete_owners", len(chunk)), ("job", *chunk))
    deleted = 0
    for chunk in chunks(ids):
        for name in ("job_tag_delete_ids", "job_dep_delete_ids", "job_dep_delete_targets"):
            conn.execute(with_marks(name, len(chunk)), chunk)
        deleted += conn.execute(with_marks("job_delete_ids", len(chunk)), chunk).rowcount
    conn.execute("COMMIT")
    return deleted


def _time_clean(clean: Callable[[sqlite3.Connection, str], int], n: int) -> float:
    with scratch_dir() as tmp:
        conn = _finished_db(tmp / "base.db", n)
        try:
            t0 = time.perf_counter()
            deleted = clean(conn, CLEAN_TAG)
            seconds = time.perf_counter() - t0
        finally:
            conn.close()
    if deleted != n:
        raise RuntimeError(f"baseline deleted {deleted} jobs, not {n}")
    return seconds


def bench_clean(sizes: Sizes) -> BenchResult:
    """2. `job.clean_by_tag` of N finished jobs vs a per-id DELETE loop in raw sqlite3."""
    n = sizes.clean_jobs
    result = BenchResult("clean")
    items = [{"command": [TRUE], "tags": [CLEAN_TAG]} for _ in range(n)]
    with bench_daemon() as daemon, daemon.client(timeout=600) as c:
        t0 = time.perf_counter()
        submitted = c.call("job.submit_batch", {"jobs": items})["submitted"]
        wait_all_finished(c, max(submitted))
        setup_s = time.perf_counter() - t0
        succeeded = count_jobs(c, "succeeded")
        ours, answer = timed(lambda: c.call("job.clean_by_tag", {"tag": CLEAN_TAG}))
        left = count_jobs(c)
    per_id = [_time_clean(clean_per_id, n) for _ in range(sizes.repeats)]
    chunked = [_time_clean(clean_chunked, n) for _ in range(sizes.repeats)]
    result.figures = {
        "jobs": n,
        "setup_s": setup_s,
        "succeeded_before": succeeded,
        "answer": answer,
        "jobs_left": left,
        "ours_s": ours,
        "sqlite_per_id_s": per_id,
        "sqlite_chunked_s": chunked,
    }
    ok = answer["deleted"]["jobs"] == n and left == 0
    note = "" if ok else f"deleted {answer['deleted']['jobs']} of {n}, {left} left"
    target = Target("<=", 0.3).scale(n / FULL.clean_jobs)
    name = f"job.clean_by_tag {n:,} jobs"
    result.rows += [
        Row(name, ours, "s", median(per_id), "sqlite3 per-id DELETE loop", target, note),
        Row("  same", ours, "s", median(chunked), "sqlite3 same chunked SQL (floor)"),
    ]
    return result


def bench_batch(sizes: Sizes) -> BenchResult:
    """3. `job.submit_batch` of N jobs vs N single `job.submit` calls and raw executemany."""
    n = sizes.batch_jobs
    singles = sizes.single_submits
    result = BenchResult("batch")
    items = [{"command": [TRUE]} for _ in range(n)]
    ours: list[float] = []
    with bench_daemon(["--max-parallel", "1"]) as daemon, daemon.client(timeout=300) as c:
        for _ in range(sizes.repeats):
            seconds, answer = timed(lambda: c.call("job.submit_batch", {"jobs": items}))
            if len(answer["submitted"]) != n:
                raise RuntimeError(f"submit_batch queued {len(answer['submitted'])}, not {n}")
            ours.append(seconds)
    with bench_daemon(["--max-parallel", "1"]) as daemon, daemon.client(timeout=300) as c:
        one = {"command": [TRUE]}

        def submit_singles() -> None:
            for _ in range(singles):
                c.call("job.submit", one)

        single_s, _ = timed(submit_singles)
    base = [_time_executemany(n) for _ in range(sizes.repeats)]
    extrapolated = single_s * n / singles
    result.figures = {
        "jobs": n,
        "ours_s": ours,
        "single_submits": singles,
        "single_submits_s": single_s,
        "single_extrapolated_s": extrapolated,
        "sqlite_executemany_s": base,
    }
    name = f"job.submit_batch {n:,} jobs"
    result.rows += [
        Row(
            name,
            median(ours),
            "s",
            extrapolated,
            f"{n:,} job.submit ({singles:,} x{n // singles})",
            Target("<=", 1.0).scale(n / FULL.batch_jobs),
            "daemon executes the jobs meanwhile (--max-parallel 1)",
        ),
        Row(
            "  same",
            median(ours),
            "s",
            median(base),
            "sqlite3 executemany, 1 tx",
            Target("x<=", 2.0),
            f"from sending to the answer; median of {len(ours)}"
            f" ({', '.join(f'{s:.2f}' for s in ours)} s), the baseline median of {len(base)}"
            f" ({', '.join(f'{s:.3f}' for s in base)} s): the same rows into the same jobs"
            " table, one executemany in one transaction, a fresh db file, in this process",
        ),
    ]
    return result
