"""The data contract over the real socket: atomic runs, true counts, bulk deletes, concurrency."""

from __future__ import annotations

import contextlib
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hero_procd.errors import CONFLICT, INVALID_PARAMS, NOT_FOUND
from integration.daemon_proc import DaemonProcess
from integration.helpers import call_error, daemon_running, wait_running

BLOCKER = 1  # the job that holds the only execution slot of a `held` daemon

# The tables system.info counts, by the name it reports them under.
COUNTED_TABLES = {
    "actions": "actions",
    "jobs": "jobs",
    "runs": "runs",
    "services": "services",
    "logs": "log_lines",
    "schedules": "schedules",
}


@pytest.fixture
def held(workdir: Path) -> Iterator[DaemonProcess]:
    """A daemon whose jobs stay queued: one job at a time, and a sleeper holds that slot.

    The executor runs jobs as soon as they are queued; these tests need jobs that stay
    where they are put (and set statuses themselves), so the only slot is taken by a
    long `sleep` (job id BLOCKER, tagged "blocker") before anything else is submitted.
    """
    with daemon_running(workdir, extra_args=["--max-parallel", "1"]) as proc:
        with proc.client() as c:
            blocker = c.call(
                "job.submit", command=["/bin/sleep", "600"], priority=1000, tags=["blocker"]
            )
            assert blocker["id"] == BLOCKER
            wait_running(c, BLOCKER, timeout_s=30)
        yield proc


@contextlib.contextmanager
def open_db(daemon: DaemonProcess) -> Iterator[sqlite3.Connection]:
    """A second, direct connection to the daemon's database (WAL allows it beside the daemon)."""
    conn = sqlite3.connect(daemon.db_path, timeout=10, isolation_level=None)
    try:
        conn.execute("PRAGMA busy_timeout=5000")
        yield conn
    finally:
        conn.close()


def scalar(conn: sqlite3.Connection, sql: str, params: tuple[Any, ...] = ()) -> int:
    """The single integer one query returns."""
    row = conn.execute(sql, params).fetchone()
    assert row is not None
    return int(row[0])


def table_counts(daemon: DaemonProcess) -> dict[str, int]:
    """Row counts of every table, read directly from the file."""
    tables = [*COUNTED_TABLES.values(), "job_tags", "job_deps"]
    with open_db(daemon) as conn:
        return {t: scalar(conn, f"SELECT count(*) FROM {t}") for t in tables}


def chain_run(
    prefix: str, n: int, tags: list[str], *, chained: bool = False
) -> list[dict[str, Any]]:
    """`n` jobs keyed `prefix0…`, each depending on the one before if `chained`."""
    jobs: list[dict[str, Any]] = []
    for i in range(n):
        job: dict[str, Any] = {"key": f"{prefix}{i}", "command": ["/bin/true"], "tags": tags}
        if chained and i:
            job["depends_on"] = [f"{prefix}{i - 1}"]
        jobs.append(job)
    return jobs


def set_status(conn: sqlite3.Connection, status: str, where: str, params: tuple[Any, ...]) -> int:
    """Move jobs to `status` directly in the file (nothing executes jobs yet); the rows changed."""
    cur = conn.execute(
        f"UPDATE jobs SET status = ?, finished_at = ? WHERE {where}", (status, time.time(), *params)
    )
    return cur.rowcount


def add_log_lines(conn: sqlite3.Connection, kind: str, owner_ids: list[int], per_owner: int) -> int:
    """Insert `per_owner` log lines for each owner; the rows written."""
    rows = [
        (kind, str(owner), seq, "stdout" if seq % 2 else "stderr", time.time(), f"line {seq}")
        for owner in owner_ids
        for seq in range(1, per_owner + 1)
    ]
    conn.execute("BEGIN IMMEDIATE")
    conn.executemany(
        "INSERT INTO log_lines (owner_kind, owner_id, seq, stream, ts, text) VALUES (?,?,?,?,?,?)",
        rows,
    )
    conn.execute("COMMIT")
    return len(rows)


# -- run.submit ------------------------------------------------------------------------


def test_run_submit_returns_ids_and_keeps_dependencies(held: DaemonProcess) -> None:
    """A valid run answers {id, jobs: {key: id}}; run.get and job.get show the dependencies."""
    with held.client() as c:
        out = c.call(
            "run.submit",
            name="build",
            tags=["ci"],
            jobs=[
                {"key": "fetch", "command": ["/bin/true"], "tags": ["net"]},
                {"key": "compile", "script": "echo hi", "depends_on": ["fetch"]},
                {"key": "test", "command": ["/bin/true"], "depends_on": ["compile", "fetch"]},
            ],
        )
        assert set(out) == {"id", "jobs"}
        assert set(out["jobs"]) == {"fetch", "compile", "test"}
        assert len(set(out["jobs"].values())) == 3
        run = c.call("run.get", id=out["id"])
        assert run["id"] == out["id"] and run["name"] == "build" and run["tags"] == ["ci"]
        by_key = {j["key"]: j for j in run["jobs"]}
        assert {k: j["id"] for k, j in by_key.items()} == out["jobs"]
        assert by_key["fetch"]["depends_on"] == []
        assert by_key["compile"]["depends_on"] == ["fetch"]
        assert by_key["test"]["depends_on"] == ["compile", "fetch"]
        assert by_key["compile"]["script"] == "echo hi"
        assert all(j["run_id"] == out["id"] and j["status"] == "queued" for j in run["jobs"])
        assert run["counts"] == {"queued": 3}
        test_job = c.call("job.get", id=out["jobs"]["test"])
        assert test_job["depends_on"] == sorted([out["jobs"]["fetch"], out["jobs"]["compile"]])
        assert c.call("system.info")["counts"]["jobs"] == 3 + 1  # and the blocker
        assert call_error(c, "run.get", id=out["id"] + 1000).code == NOT_FOUND


def _three_valid() -> list[dict[str, Any]]:
    return [
        {"key": "a", "command": ["/bin/true"], "tags": ["t"]},
        {"key": "b", "action": "known", "depends_on": ["a"]},
        {"key": "c", "command": ["/bin/true"], "depends_on": ["a", "b"], "dedup_key": "c-once"},
    ]


# (the invalid 4th job, or a rewrite of the whole list; the code; the field named)
_INVALID_RUNS: dict[str, tuple[list[dict[str, Any]], int, str | None]] = {
    "bad field type": (
        [*_three_valid(), {"key": "d", "command": ["/bin/true"], "timeout_s": "soon"}],
        INVALID_PARAMS,
        "jobs[3].timeout_s",
    ),
    "command not a list": (
        [*_three_valid(), {"key": "d", "command": "/bin/true"}],
        INVALID_PARAMS,
        "jobs[3].command",
    ),
    "unknown field": (
        [*_three_valid(), {"key": "d", "command": ["/bin/true"], "priorty": 3}],
        INVALID_PARAMS,
        "jobs[3].priorty",
    ),
    "missing key": (
        [*_three_valid(), {"command": ["/bin/true"]}],
        INVALID_PARAMS,
        "jobs[3].key",
    ),
    "duplicate key": (
        [*_three_valid(), {"key": "a", "command": ["/bin/true"]}],
        INVALID_PARAMS,
        "jobs[3].key",
    ),
    "unknown depends_on key": (
        [*_three_valid(), {"key": "d", "command": ["/bin/true"], "depends_on": ["zzz"]}],
        INVALID_PARAMS,
        "jobs[3].depends_on[0]",
    ),
    "dependency cycle": (
        [
            *_three_valid()[:2],
            {"key": "c", "command": ["/bin/true"], "depends_on": ["d"]},
            {"key": "d", "command": ["/bin/true"], "depends_on": ["c"]},
        ],
        INVALID_PARAMS,
        "jobs",
    ),
    "unknown action": (
        [*_three_valid(), {"key": "d", "action": "no-such-action"}],
        NOT_FOUND,
        "jobs[3].action",
    ),
    # Found only by the database, mid-transaction, after the run row is written.
    "duplicate dedup_key": (
        [*_three_valid(), {"key": "d", "command": ["/bin/true"], "dedup_key": "c-once"}],
        CONFLICT,
        None,
    ),
}


@pytest.mark.parametrize("case", sorted(_INVALID_RUNS))
def test_run_submit_is_all_or_nothing(daemon: DaemonProcess, case: str) -> None:
    """One invalid job rejects the whole run and nothing at all is written."""
    jobs, code, field = _INVALID_RUNS[case]
    with daemon.client() as c:
        c.call("action.set", name="known", command=["/bin/echo", "known"])
        before_info = c.call("system.info")["counts"]
        before_rows = table_counts(daemon)
        err = call_error(c, "run.submit", name="bad", jobs=jobs)
        assert err.code == code, err
        if field is not None:
            assert isinstance(err.data, dict) and err.data.get("field") == field, err.data
        assert c.call("system.info")["counts"] == before_info
        assert table_counts(daemon) == before_rows
        assert c.call("job.list")["jobs"] == []
        assert c.call("run.list")["runs"] == []
        # The same run without its bad job goes through: the rejection was about that job.
        ok = c.call("run.submit", jobs=_three_valid())
        assert sorted(ok["jobs"]) == ["a", "b", "c"]
        assert c.call("system.info")["counts"]["jobs"] == 3


def test_run_submit_conflicting_with_existing_dedup_key_writes_nothing(
    held: DaemonProcess,
) -> None:
    """A run whose job clashes with an already queued job's dedup_key leaves only that job."""
    with held.client() as c:
        first = c.call("job.submit", command=["/bin/true"], dedup_key="nightly")
        before = table_counts(held)
        err = call_error(
            c,
            "run.submit",
            jobs=[*chain_run("x", 1500, ["big"]), {"key": "dup", "command": ["/bin/true"],
                                                   "dedup_key": "nightly"}],
        )  # fmt: skip
        assert err.code == CONFLICT
        assert table_counts(held) == before
        assert [j["id"] for j in c.call("job.list")["jobs"]] == [BLOCKER, first["id"]]
        assert c.call("job.get", id=first["id"])["status"] == "queued"


# -- job.clean_by_tag --------------------------------------------------------------------


def test_clean_by_tag_over_999_jobs_reports_true_counts(held: DaemonProcess) -> None:
    """Thousands of finished tagged jobs go with their logs and emptied runs; counts are exact."""
    with held.client() as c:
        run_a = c.call("run.submit", name="A", jobs=chain_run("a", 2000, ["bulk"], chained=True))
        run_b = c.call(
            "run.submit",
            name="B",
            jobs=[
                *chain_run("b", 600, ["bulk"]),
                *[
                    {"key": f"u{i}", "command": ["/bin/true"], "tags": ["keep"],
                     "depends_on": [f"b{i}"]}
                    for i in range(50)
                ],
            ],
        )  # fmt: skip
        run_c = c.call("run.submit", name="C", jobs=chain_run("c", 300, ["bulk"]))
        run_d = c.call("run.submit", name="D", jobs=chain_run("d", 40, ["other"]))
        lone = [c.call("job.submit", command=["/bin/true"], tags=["extra", "bulk"])["id"]
                for _ in range(20)]  # fmt: skip
        bulky = c.call("job.submit", command=["/bin/true"], tags=["bulky"])["id"]
        plain = [c.call("job.submit", command=["/bin/true"])["id"] for _ in range(5)]

    c_ids = [run_c["jobs"][f"c{i}"] for i in range(300)]
    with open_db(held) as db:
        db.execute("BEGIN IMMEDIATE")
        set_status(db, "succeeded", "run_id = ? AND id % 2 = 0", (run_a["id"],))
        set_status(db, "failed", "run_id = ? AND id % 2 = 1", (run_a["id"],))
        set_status(db, "succeeded", "run_id = ?", (run_b["id"],))  # the untagged u* too
        set_status(db, "cancelled", "id BETWEEN ? AND ?", (c_ids[0], c_ids[99]))
        set_status(db, "timed_out", "id BETWEEN ? AND ?", (c_ids[100], c_ids[199]))
        set_status(db, "running", "id BETWEEN ? AND ?", (c_ids[200], c_ids[249]))
        set_status(db, "succeeded", "run_id = ?", (run_d["id"],))
        set_status(db, "lost", f"id IN ({','.join('?' * len(lone))})", tuple(lone))
        set_status(db, "succeeded", "id IN (?,?,?,?,?,?)", (bulky, *plain))
        db.execute("COMMIT")

        deletable = [
            int(r[0])
            for r in db.execute(
                "SELECT j.id FROM jobs j JOIN job_tags t ON t.job_id = j.id "
                "WHERE t.tag = 'bulk' AND j.status NOT IN ('queued', 'running') ORDER BY j.id"
            )
        ]
        assert len(deletable) == 2000 + 600 + 200 + 20
        active = scalar(
            db,
            "SELECT count(*) FROM jobs j JOIN job_tags t ON t.job_id = j.id "
            "WHERE t.tag = 'bulk' AND j.status IN ('queued', 'running')",
        )
        assert active == 100
        # Logs: of most deletable jobs, and of owners that must survive.
        add_log_lines(db, "job", sorted({*deletable[::2], *deletable[-5:]}), 3)
        survivors = [run_b["jobs"]["u0"], c_ids[-1], c_ids[210], plain[0], bulky]
        add_log_lines(db, "job", survivors, 4)
        add_log_lines(db, "service", deletable[:3], 2)  # same owner ids, another kind
        db.execute("CREATE TEMP TABLE gone (id INTEGER PRIMARY KEY)")
        db.executemany("INSERT INTO temp.gone VALUES (?)", [(i,) for i in deletable])
        expected_logs = scalar(
            db,
            "SELECT count(*) FROM log_lines WHERE owner_kind = 'job' "
            "AND CAST(owner_id AS INTEGER) IN (SELECT id FROM temp.gone)",
        )
        expected_runs = scalar(
            db,
            "SELECT count(*) FROM runs r WHERE EXISTS "
            "(SELECT 1 FROM jobs j WHERE j.run_id = r.id AND j.id IN (SELECT id FROM temp.gone)) "
            "AND NOT EXISTS (SELECT 1 FROM jobs j WHERE j.run_id = r.id "
            "AND j.id NOT IN (SELECT id FROM temp.gone))",
        )
        assert expected_runs == 1  # run A only: B keeps its u*, C its active jobs
        before = {t: scalar(db, f"SELECT count(*) FROM {t}") for t in ("jobs", "runs", "log_lines")}

    with held.client() as c:
        result = c.call("job.clean_by_tag", tag="bulk")
        assert result == {
            "deleted": {"jobs": len(deletable), "runs": expected_runs, "logs": expected_logs},
            "skipped_active": active,
        }
        left = c.call("job.list", tag="bulk", limit=1000)["jobs"]
        assert len(left) == active
        assert {j["status"] for j in left} == {"queued", "running"}
        assert call_error(c, "run.get", id=run_a["id"]).code == NOT_FOUND
        for run in (run_b, run_c, run_d):
            c.call("run.get", id=run["id"])
        assert len(c.call("run.get", id=run_b["id"])["jobs"]) == 50
        assert c.call("job.get", id=bulky)["tags"] == ["bulky"]
        again = c.call("job.clean_by_tag", tag="bulk")
        assert again == {"deleted": {"jobs": 0, "runs": 0, "logs": 0}, "skipped_active": active}
        assert c.call("job.clean_by_tag", tag="never-used") == {
            "deleted": {"jobs": 0, "runs": 0, "logs": 0},
            "skipped_active": 0,
        }

    with open_db(held) as db:
        assert scalar(db, "SELECT count(*) FROM jobs") == before["jobs"] - len(deletable)
        assert scalar(db, "SELECT count(*) FROM runs") == before["runs"] - expected_runs
        assert scalar(db, "SELECT count(*) FROM log_lines") == before["log_lines"] - expected_logs
        assert scalar(db, "SELECT count(*) FROM log_lines WHERE owner_kind = 'service'") == 6
        for owner in survivors:
            sql = "SELECT count(*) FROM log_lines WHERE owner_id = ?"
            assert scalar(db, sql, (str(owner),)) == 4
        orphans = {
            "job_tags": "SELECT count(*) FROM job_tags WHERE job_id NOT IN (SELECT id FROM jobs)",
            "job_deps": "SELECT count(*) FROM job_deps WHERE job_id NOT IN (SELECT id FROM jobs) "
            "OR depends_on NOT IN (SELECT id FROM jobs)",
        }
        assert {name: scalar(db, sql) for name, sql in orphans.items()} == {
            "job_tags": 0,
            "job_deps": 0,
        }


# -- system.wipe_all ---------------------------------------------------------------------


def test_wipe_all_needs_confirm_and_reports_true_counts(held: DaemonProcess) -> None:
    """Without `confirm: true` nothing goes; with it every table empties and the counts are true."""
    with held.client() as c:
        for i in range(3):
            c.call("action.set", name=f"act{i}", command=["/bin/true"], tags=["w"])
        c.call("run.submit", jobs=chain_run("p", 700, ["w"], chained=True))
        c.call("run.submit", jobs=chain_run("q", 600, []))
        for _ in range(3):
            c.call("job.submit", action="act0")
        for i in range(4):
            c.call("service.define", name=f"svc{i}", command=["/bin/sleep", "60"])
    with open_db(held) as db:
        add_log_lines(db, "job", list(range(1, 31)), 5)
        add_log_lines(db, "service", [1], 7)
        now = time.time()
        db.executemany(
            "INSERT INTO schedules (name, cron, target, created_at, updated_at) "
            "VALUES (?, '*/5 * * * *', '{\"action\": \"act0\"}', ?, ?)",
            [(f"sched{i}", now, now) for i in range(2)],
        )
    before = table_counts(held)
    assert before["jobs"] == 1303 + 1  # and the blocker
    assert before["log_lines"] == 157 and before["job_deps"] == 699

    with held.client() as c:
        for params in ({}, {"confirm": False}, {"confirm": "yes"}, {"confirm": 1}):
            err = call_error(c, "system.wipe_all", **params)
            assert err.code == INVALID_PARAMS
            assert isinstance(err.data, dict) and err.data.get("field") == "confirm"
        assert table_counts(held) == before

        result = c.call("system.wipe_all", confirm=True)
        assert result["deleted"] == {name: before[table] for name, table in COUNTED_TABLES.items()}
        assert result["stopped_jobs"] == 1  # the blocker, stopped before its row went
        assert c.call("system.info")["counts"] == dict.fromkeys(COUNTED_TABLES, 0)
        assert table_counts(held) == dict.fromkeys(before, 0)
        again = c.call("system.wipe_all", confirm=True)
        assert again["deleted"] == dict.fromkeys(COUNTED_TABLES, 0)
        assert again["stopped_jobs"] == 0
        # The daemon is still a working daemon afterwards, executing jobs again.
        job = c.call("job.submit", command=["/bin/true"])
        assert c.call("job.wait", id=job["id"], timeout_s=30)["status"] == "succeeded"


def test_wipe_of_100k_jobs_does_not_stall_status_reads(held: DaemonProcess) -> None:
    """While wipe_all deletes 100,000 jobs, service.status_all keeps answering, each call fast."""
    with held.client(timeout=120) as c:
        for size in (25_000, 25_000, 25_000, 24_999):  # and the blocker: 100,000 jobs
            out = c.call("run.submit", jobs=chain_run(f"r{size}-", size, ["load"]))
            assert len(out["jobs"]) == size
        for i in range(100):
            c.call("service.define", name=f"svc{i:03d}", command=["/bin/sleep", "60"])
        assert c.call("system.info")["counts"]["jobs"] == 100_000

    wipe_window: dict[str, float] = {}
    wipe_result: dict[str, Any] = {}
    wipe_failed: list[BaseException] = []
    done = threading.Event()
    warmed_up = threading.Event()
    samples: list[tuple[float, float, int]] = []  # (start, end, services seen)
    reader_failed: list[BaseException] = []

    def read_status() -> None:
        try:
            while not done.is_set():
                start = time.monotonic()
                with held.client(timeout=10) as rc:  # a new connection each time
                    seen = len(rc.call("service.status_all")["services"])
                samples.append((start, time.monotonic(), seen))
                if len(samples) >= 5:
                    warmed_up.set()
        except BaseException as exc:
            reader_failed.append(exc)
            warmed_up.set()

    def wipe() -> None:
        try:
            with held.client(timeout=120) as wc:
                wipe_window["start"] = time.monotonic()
                wipe_result.update(wc.call("system.wipe_all", confirm=True))
                wipe_window["end"] = time.monotonic()
        except BaseException as exc:
            wipe_failed.append(exc)
        finally:
            done.set()

    reader = threading.Thread(target=read_status, daemon=True)
    reader.start()
    assert warmed_up.wait(30), "no status answer before the wipe"
    wiper = threading.Thread(target=wipe, daemon=True)
    wiper.start()
    wiper.join(120)
    reader.join(30)
    assert not wiper.is_alive() and not reader.is_alive()
    assert not wipe_failed, wipe_failed
    assert not reader_failed, reader_failed

    assert wipe_result["deleted"]["jobs"] == 100_000
    assert wipe_result["deleted"]["services"] == 100
    assert wipe_result["deleted"]["runs"] == 4
    slowest = max(end - start for start, end, _ in samples)
    assert slowest < 1.0, f"a status_all call took {slowest:.3f}s"
    during = [s for s in samples if s[0] >= wipe_window["start"] and s[1] <= wipe_window["end"]]
    assert len(during) >= 3, (
        f"only {len(during)} status calls answered during a "
        f"{wipe_window['end'] - wipe_window['start']:.3f}s wipe"
    )
    # Readers see the wipe whole or not at all, never a half-emptied table.
    assert {seen for _, _, seen in samples} <= {100, 0}
    assert samples[0][2] == 100


# -- actions, jobs, services -------------------------------------------------------------


def test_action_set_get_list_delete(daemon: DaemonProcess) -> None:
    """Actions are created, replaced, listed (by tag) and deleted by name."""
    with daemon.client() as c:
        made = c.call(
            "action.set",
            name="backup",
            command=["/usr/bin/rsync", "-a", "/src", "/dst"],
            env={"RSYNC_RSH": "ssh"},
            timeout_s=600,
            retries=2,
            tags=["nightly", "io"],
        )
        assert made["name"] == "backup"
        assert made["command"] == ["/usr/bin/rsync", "-a", "/src", "/dst"]
        assert made["tags"] == ["nightly", "io"]
        c.call("action.set", name="report", script="echo done", tags=["nightly"])
        c.call("action.set", name="lint", command=["/bin/true"])
        got = c.call("action.get", name="backup")
        assert got["env"] == {"RSYNC_RSH": "ssh"}
        assert got["timeout_s"] == 600 and got["retries"] == 2
        assert got["created_at"] == made["created_at"]

        replaced = c.call("action.set", name="backup", command=["/bin/echo", "v2"], tags=["io"])
        assert replaced["created_at"] == made["created_at"]
        assert replaced["updated_at"] >= made["updated_at"]
        assert c.call("action.get", name="backup")["command"] == ["/bin/echo", "v2"]

        names = [a["name"] for a in c.call("action.list")["actions"]]
        assert names == ["backup", "lint", "report"]
        assert [a["name"] for a in c.call("action.list", tag="nightly")["actions"]] == ["report"]
        assert [a["name"] for a in c.call("action.list", tag="io")["actions"]] == ["backup"]
        assert c.call("action.list", tag="nope")["actions"] == []

        assert c.call("action.delete", name="lint") == {"deleted": 1}
        assert c.call("action.delete", name="lint") == {"deleted": 0}
        err = call_error(c, "action.get", name="lint")
        assert err.code == NOT_FOUND
        assert c.call("system.info")["counts"]["actions"] == 2

        bad = call_error(c, "action.set", name="no command")
        assert bad.code == INVALID_PARAMS and isinstance(bad.data, dict)
        assert bad.data["field"] == "name"
        bad = call_error(c, "action.set", name="nocommand")
        assert bad.code == INVALID_PARAMS and isinstance(bad.data, dict)
        assert bad.data["field"] == "command"


def test_job_submit_with_action(daemon: DaemonProcess) -> None:
    """A job naming an action takes its command from it; an unknown action is -32001."""
    with daemon.client() as c:
        c.call(
            "action.set",
            name="greet",
            command=["/bin/echo", "hello"],
            env={"A": "1", "B": "2"},
            tags=["from-action"],
        )
        out = c.call("job.submit", action="greet", env={"B": "3"}, tags=["mine"])
        assert out["status"] == "queued"
        job = c.call("job.get", id=out["id"])
        assert job["action"] == "greet"
        assert job["command"] == ["/bin/echo", "hello"]
        assert job["env"] == {"A": "1", "B": "3"}
        assert set(job["tags"]) == {"from-action", "mine"}
        # The job keeps its command even if the action changes later.
        c.call("action.set", name="greet", command=["/bin/echo", "bye"])
        assert c.call("job.get", id=out["id"])["command"] == ["/bin/echo", "hello"]

        err = call_error(c, "job.submit", action="ghost")
        assert err.code == NOT_FOUND
        assert isinstance(err.data, dict) and err.data.get("name") == "ghost"
        both = call_error(c, "job.submit", action="greet", command=["/bin/true"])
        assert both.code == INVALID_PARAMS
        assert call_error(c, "job.get", id=10_000).code == NOT_FOUND
        assert c.call("system.info")["counts"]["jobs"] == 1


def test_job_list_pagination_and_filters(held: DaemonProcess) -> None:
    """job.list pages by `after_id`/`next_after_id` and filters by status, tag and run."""
    with held.client() as c:
        run = c.call("run.submit", jobs=chain_run("k", 12, ["in-run"]))
        loose = [
            c.call("job.submit", command=["/bin/true"], tags=["odd"] if i % 2 else [])["id"]
            for i in range(13)
        ]
    run_ids = sorted(run["jobs"].values())
    all_ids = sorted([BLOCKER, *run_ids, *loose])
    with open_db(held) as db:
        assert set_status(db, "failed", "id IN (?, ?, ?)", (run_ids[0], run_ids[5], loose[1])) == 3

    with held.client() as c:
        seen: list[int] = []
        after = 0
        pages = 0
        while True:
            page = c.call("job.list", limit=10, after_id=after)
            seen.extend(j["id"] for j in page["jobs"])
            pages += 1
            if page["next_after_id"] is None:
                break
            assert page["next_after_id"] == page["jobs"][-1]["id"]
            after = page["next_after_id"]
        assert seen == all_ids and pages == 3

        def ids(**filters: Any) -> list[int]:
            return [j["id"] for j in c.call("job.list", limit=1000, **filters)["jobs"]]

        assert ids(run_id=run["id"]) == run_ids
        assert ids(tag="in-run") == run_ids
        assert ids(tag="odd") == [i for n, i in enumerate(loose) if n % 2]
        assert ids(status="failed") == sorted([run_ids[0], run_ids[5], loose[1]])
        assert ids(status="failed", run_id=run["id"]) == [run_ids[0], run_ids[5]]
        assert ids(status="failed", tag="odd") == [loose[1]]
        assert ids(status="queued", tag="in-run", after_id=run_ids[5]) == run_ids[6:]
        assert ids(status="succeeded") == []
        assert ids(status="running") == [BLOCKER]
        assert ids(run_id=run["id"] + 99) == []
        tag_page = c.call("job.list", tag="in-run", limit=5)
        assert [j["id"] for j in tag_page["jobs"]] == run_ids[:5]
        assert tag_page["next_after_id"] == run_ids[4]

        err = call_error(c, "job.list", status="sleeping")
        assert err.code == INVALID_PARAMS
        assert isinstance(err.data, dict) and err.data["field"] == "status"
        assert call_error(c, "job.list", limit=0).code == INVALID_PARAMS
        assert call_error(c, "job.list", after_id="x").code == INVALID_PARAMS


STATUS_FIELDS = {"name", "state", "pid", "restarts", "exit_code", "uptime_s", "memory_bytes",
                 "cpu_percent"}  # fmt: skip


def test_service_define_and_status_shape(daemon: DaemonProcess) -> None:
    """service.define stores a definition; status and status_all have the documented shape."""
    with daemon.client() as c:
        made = c.call(
            "service.define",
            name="web",
            command=["/bin/sleep", "3600"],
            restart="always",
            env={"PORT": "8080"},
        )
        assert made["name"] == "web" and made["command"] == ["/bin/sleep", "3600"]
        assert made["restart"] == "always" and made["state"] == "stopped"
        c.call("service.define", name="db", script="exec sleep 3600")
        got = c.call("service.get", name="web")
        assert got["env"] == {"PORT": "8080"}

        status = c.call("service.status", name="web")
        assert set(status) >= STATUS_FIELDS, status
        assert status["name"] == "web" and status["state"] == "stopped"
        assert status["pid"] is None and status["restarts"] == 0 and status["uptime_s"] is None

        every = c.call("service.status_all")["services"]
        assert [s["name"] for s in every] == ["db", "web"]
        for entry in every:
            assert set(entry) >= STATUS_FIELDS, entry
        assert c.call("service.list")["services"][1]["name"] == "web"

        redefined = c.call("service.define", name="web", command=["/bin/sleep", "10"])
        assert redefined["created_at"] == made["created_at"]
        assert c.call("service.get", name="web")["command"] == ["/bin/sleep", "10"]

        for method in ("service.get", "service.status"):
            err = call_error(c, method, name="ghost")
            assert err.code == NOT_FOUND, method
        bad = call_error(c, "service.define", name="x", command=["/bin/true"], restart="sometimes")
        assert bad.code == INVALID_PARAMS
        assert isinstance(bad.data, dict) and bad.data["field"] == "restart"
        assert c.call("service.delete", name="db") == {"deleted": 1}
        assert c.call("service.delete", name="db") == {"deleted": 0}
        assert [s["name"] for s in c.call("service.status_all")["services"]] == ["web"]
