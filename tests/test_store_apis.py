"""The store's sub-APIs and cross-table operations, on a real SQLite file."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from hero_procd.errors import Conflict, InvalidParams, NotFound
from hero_procd.model import CommandSpec, JobRequest
from hero_procd.store import BatchResult, CleanResult, Store
from hero_procd.store import jobs as jobs_sql
from hero_procd.store.jobs import AttemptEnd, GroupRoom
from hero_procd.store.logs import LogLine, delete_owners
from hero_procd.store.pool import DbPool
from hero_procd.store.records import Job
from hero_procd.store.runs import delete_empty, insert_run
from tests.conftest import StoreRunner, write_tx

STATUS_KEYS = {
    "name",
    "node",
    "tags",
    "state",
    "desired",
    "pid",
    "restarts",
    "manual_restarts",
    "exit_code",
    "signal",
    "health",
    "uptime_s",
    "memory_bytes",
    "cpu_percent",
}


def cmd(*argv: str, **fields: Any) -> JobRequest:
    """A job request running `argv`."""
    return JobRequest(spec=CommandSpec(command=list(argv)), **fields)


def keyed(key: str, *deps: str, **fields: Any) -> JobRequest:
    """A job of a run, with its key and dependencies."""
    return cmd("true", key=key, depends_on=list(deps), **fields)


async def count(pool: DbPool, sql: str, params: tuple[Any, ...] = ()) -> int:
    """The single integer a counting query returns."""
    row = await pool.fetch_one(sql, params)
    assert row is not None
    return int(row[0])


async def table_counts(store: Store) -> dict[str, int]:
    """Rows of the four tables a run writes."""
    return {
        t: await count(store.pool, f"SELECT count(*) FROM {t}")  # test-chosen names only
        for t in ("runs", "jobs", "job_tags", "job_deps")
    }


async def set_times(store: Store, table: str, key: str, value: str, ts: float) -> None:
    """Backdate a row's created_at and updated_at, so a later write must visibly change them."""
    async with write_tx(store) as conn:
        await conn.execute(
            f"UPDATE {table} SET created_at = ?, updated_at = ? WHERE {key} = ?",  # test names
            (ts, ts, value),
        )


# ---------------------------------------------------------------- actions


def test_action_upsert_creates_then_replaces_keeping_created_at(run_store: StoreRunner) -> None:
    """A second upsert replaces spec and tags, keeps created_at and moves updated_at."""

    async def body(store: Store) -> None:
        first = await store.actions.upsert("build", CommandSpec(command=["make"]), ["ci"])
        assert first.name == "build"
        assert first.spec.command == ["make"]
        assert first.tags == ["ci"]
        assert first.created_at == first.updated_at
        await set_times(store, "actions", "name", "build", 1000.0)

        second = await store.actions.upsert(
            "build", CommandSpec(command=["make", "all"], cwd="/src"), ["ci", "nightly"]
        )
        assert second.created_at == 1000.0
        assert second.updated_at > 1000.0
        assert second.spec == CommandSpec(command=["make", "all"], cwd="/src")
        assert second.tags == ["ci", "nightly"]
        assert await store.actions.get("build") == second
        assert await count(store.pool, "SELECT count(*) FROM actions") == 1

    run_store(body)


def test_action_get_unknown_is_not_found(run_store: StoreRunner) -> None:
    """Getting an action that does not exist raises NotFound naming it."""

    async def body(store: Store) -> NotFound:
        with pytest.raises(NotFound) as info:
            await store.actions.get("nope")
        return info.value

    err = run_store(body)
    assert err.data == {"name": "nope"}


def test_action_list_all_and_by_tag(run_store: StoreRunner) -> None:
    """list() gives every action by name; list(tag) only those carrying the tag."""

    async def body(store: Store) -> tuple[list[str], list[str], list[str]]:
        await store.actions.upsert("zeta", CommandSpec(command=["z"]), ["ci"])
        await store.actions.upsert("alpha", CommandSpec(command=["a"]), ["ci", "ops"])
        await store.actions.upsert("mid", CommandSpec(script="echo m"), ["ops"])
        await store.actions.upsert("none", CommandSpec(command=["n"]), [])
        every = [a.name for a in await store.actions.list()]
        ci = [a.name for a in await store.actions.list("ci")]
        missing = [a.name for a in await store.actions.list("cii")]
        return every, ci, missing

    every, ci, missing = run_store(body)
    assert every == ["alpha", "mid", "none", "zeta"]
    assert ci == ["alpha", "zeta"]
    assert missing == []


def test_action_delete_counts(run_store: StoreRunner) -> None:
    """Deleting an action reports 1, deleting it again 0, and it is gone."""

    async def body(store: Store) -> tuple[int, int]:
        await store.actions.upsert("gone", CommandSpec(command=["x"]), [])
        await store.actions.upsert("kept", CommandSpec(command=["y"]), [])
        first = await store.actions.delete("gone")
        second = await store.actions.delete("gone")
        with pytest.raises(NotFound):
            await store.actions.get("gone")
        assert (await store.actions.get("kept")).name == "kept"
        return first, second

    assert run_store(body) == (1, 0)


# ---------------------------------------------------------------- jobs


def test_job_submit_returns_increasing_ids(run_store: StoreRunner) -> None:
    """Each submit returns a larger id than the one before, and the row is queued."""

    async def body(store: Store) -> tuple[list[int], Job]:
        ids = [await store.jobs.submit(cmd("echo", str(i))) for i in range(5)]
        return ids, await store.jobs.get(ids[2])

    ids, job = run_store(body)
    assert ids == sorted(ids) and len(set(ids)) == 5
    assert job.id == ids[2]
    assert job.status == "queued"
    assert job.spec.command == ["echo", "2"]
    assert job.attempt == 0 and job.max_attempts == 1


def test_job_ids_are_never_reused(run_store: StoreRunner) -> None:
    """Ids of deleted jobs (even the highest) and of wiped jobs are not handed out again."""

    async def body(store: Store) -> None:
        ids = [await store.jobs.submit(cmd("true")) for _ in range(3)]
        assert await store.jobs.delete_many(ids[1:]) == 2
        after_delete = await store.jobs.submit(cmd("true"))
        assert after_delete > max(ids)
        _, by_key = await store.submit_run(None, [], [keyed("a"), keyed("b", "a")])
        assert min(by_key.values()) > after_delete
        await store.wipe_all()
        after_wipe = await store.jobs.submit(cmd("true"))
        assert after_wipe > max(by_key.values())

    run_store(body)


def test_job_from_action_merges_command_env_and_tags(run_store: StoreRunner) -> None:
    """A job naming an action runs its command; env merges (job wins); tags are the union."""

    async def body(store: Store) -> tuple[Job, list[str]]:
        await store.actions.upsert(
            "deploy",
            CommandSpec(
                command=["deploy.sh", "--prod"],
                env={"A": "1", "B": "2"},
                cwd="/srv",
                timeout_s=30.0,
                retries=2,
            ),
            ["ops", "prod"],
        )
        request = JobRequest(
            spec=CommandSpec(env={"B": "3", "C": "4"}, timeout_s=5.0),
            action="deploy",
            tags=["prod", "urgent"],
        )
        job_id = await store.jobs.submit(request)
        rows = await store.pool.fetch_all(
            "SELECT tag FROM job_tags WHERE job_id = ? ORDER BY tag", (job_id,)
        )
        return await store.jobs.get(job_id), [r[0] for r in rows]

    job, tag_rows = run_store(body)
    assert job.action == "deploy"
    assert job.spec.command == ["deploy.sh", "--prod"]
    assert job.spec.env == {"A": "1", "B": "3", "C": "4"}
    assert job.spec.cwd == "/srv"
    assert job.spec.timeout_s == 5.0
    assert job.spec.retries == 2
    assert job.max_attempts == 3
    assert sorted(job.tags) == ["ops", "prod", "urgent"]
    assert len(job.tags) == len(set(job.tags))
    assert tag_rows == ["ops", "prod", "urgent"]


def test_job_with_unknown_action_is_not_found(run_store: StoreRunner) -> None:
    """Submitting a job for a missing action raises NotFound and writes nothing."""

    async def body(store: Store) -> tuple[NotFound, int]:
        with pytest.raises(NotFound) as info:
            await store.jobs.submit(JobRequest(spec=CommandSpec(), action="ghost", tags=["t"]))
        return info.value, await count(store.pool, "SELECT count(*) FROM jobs")

    err, jobs = run_store(body)
    assert err.data is not None and err.data["name"] == "ghost"
    assert jobs == 0


def test_job_without_command_is_invalid(run_store: StoreRunner) -> None:
    """A job with neither command, script nor action is rejected before any write."""

    async def body(store: Store) -> int:
        with pytest.raises(InvalidParams):
            await store.jobs.submit(JobRequest(spec=CommandSpec()))
        return await count(store.pool, "SELECT count(*) FROM jobs")

    assert run_store(body) == 0


def test_job_same_dedup_key_while_queued_conflicts(run_store: StoreRunner) -> None:
    """Two queued jobs cannot share a dedup key; once the first is done, the key is free."""

    async def body(store: Store) -> None:
        first = await store.jobs.submit(cmd("true", dedup_key="nightly"))
        with pytest.raises(Conflict):
            await store.jobs.submit(cmd("true", dedup_key="nightly"))
        async with write_tx(store) as conn:
            await conn.execute("UPDATE jobs SET status = 'succeeded' WHERE id = ?", (first,))
        again = await store.jobs.submit(cmd("true", dedup_key="nightly"))
        assert again > first
        assert await count(store.pool, "SELECT count(*) FROM jobs") == 2

    run_store(body)


def test_job_list_filters_and_pagination(run_store: StoreRunner) -> None:
    """list() filters by status, tag and run, and pages with after_id without gaps or repeats."""

    async def body(store: Store) -> None:
        tagged = [await store.jobs.submit(cmd("t", tags=["red"])) for _ in range(4)]
        plain = [await store.jobs.submit(cmd("p")) for _ in range(3)]
        run_id, by_key = await store.submit_run(
            "r", [], [keyed("a", tags=["red"]), keyed("b", "a")]
        )
        done = [tagged[0], plain[0], by_key["a"]]
        async with write_tx(store) as conn:
            await conn.execute(
                "UPDATE jobs SET status = 'succeeded' WHERE id IN (?, ?, ?)", tuple(done)
            )
        every = [*tagged, *plain, by_key["a"], by_key["b"]]

        assert [j.id for j in await store.jobs.list()] == every
        assert [j.id for j in await store.jobs.list(status="succeeded")] == done
        assert [j.id for j in await store.jobs.list(tag="red")] == [*tagged, by_key["a"]]
        assert [j.id for j in await store.jobs.list(tag="red", status="queued")] == tagged[1:]
        assert [j.id for j in await store.jobs.list(run_id=run_id)] == [by_key["a"], by_key["b"]]
        assert [j.id for j in await store.jobs.list(tag="red", run_id=run_id)] == [by_key["a"]]
        assert await store.jobs.list(tag="blue") == []

        for tag, expected in ((None, every), ("red", [*tagged, by_key["a"]])):
            seen: list[int] = []
            after = 0
            while page := await store.jobs.list(tag=tag, limit=2, after_id=after):
                assert len(page) <= 2
                seen.extend(j.id for j in page)
                after = page[-1].id
            assert seen == expected

    run_store(body)


def test_job_delete_many_removes_tags_and_edges(run_store: StoreRunner) -> None:
    """Deleting 2,500 jobs counts 2,500 and removes their job_tags and job_deps rows."""

    async def body(store: Store) -> None:
        chain = [keyed("j0", tags=["x", "y"])]
        chain += [keyed(f"j{i}", f"j{i - 1}", tags=["x", "y"]) for i in range(1, 2500)]
        _, big = await store.submit_run("big", [], chain)
        _, small = await store.submit_run(
            "small", [], [keyed("a", tags=["x"]), keyed("b", "a", tags=["x"])]
        )
        # An edge from a kept job to a deleted one must go too (job_dep_delete_targets).
        async with write_tx(store) as conn:
            await conn.execute(
                "INSERT INTO job_deps (job_id, depends_on) VALUES (?, ?)",
                (small["a"], big["j7"]),
            )
        assert await count(store.pool, "SELECT count(*) FROM job_tags") == 5002
        assert await count(store.pool, "SELECT count(*) FROM job_deps") == 2501

        deleted = await store.jobs.delete_many(list(big.values()))
        assert deleted == 2500
        assert await count(store.pool, "SELECT count(*) FROM jobs") == 2
        lo, hi = min(big.values()), max(big.values())
        assert (
            await count(
                store.pool, "SELECT count(*) FROM job_tags WHERE job_id BETWEEN ? AND ?", (lo, hi)
            )
            == 0
        )
        assert (
            await count(
                store.pool,
                "SELECT count(*) FROM job_deps WHERE job_id BETWEEN ? AND ?"
                " OR depends_on BETWEEN ? AND ?",
                (lo, hi, lo, hi),
            )
            == 0
        )
        # The other run's rows are untouched.
        assert await count(store.pool, "SELECT count(*) FROM job_tags") == 2
        row = await store.pool.fetch_one("SELECT job_id, depends_on FROM job_deps")
        assert row is not None and tuple(row) == (small["b"], small["a"])

    run_store(body)


def test_job_delete_many_of_missing_ids_counts_zero(run_store: StoreRunner) -> None:
    """Deleting ids that do not exist (or none) reports 0 and leaves other jobs alone."""

    async def body(store: Store) -> tuple[int, int, int]:
        kept = await store.jobs.submit(cmd("true", tags=["k"]))
        missing = await store.jobs.delete_many([kept + 1, kept + 2, 10_000])
        empty = await store.jobs.delete_many([])
        return missing, empty, await count(store.pool, "SELECT count(*) FROM job_tags")

    assert run_store(body) == (0, 0, 1)


def test_job_get_unknown_is_not_found(run_store: StoreRunner) -> None:
    """Getting a job that does not exist raises NotFound."""

    async def body(store: Store) -> None:
        with pytest.raises(NotFound):
            await store.jobs.get(42)

    run_store(body)


# ---------------------------------------------------------------- runs


def test_run_submit_is_atomic_on_unknown_action(run_store: StoreRunner) -> None:
    """An unknown action in job 3 of 5 leaves no row in runs, jobs, job_tags or job_deps."""

    async def body(store: Store) -> tuple[NotFound, dict[str, int]]:
        await store.actions.upsert("known", CommandSpec(command=["ok"]), ["a"])
        jobs = [
            keyed("one", tags=["t"]),
            JobRequest(spec=CommandSpec(), action="known", key="two", depends_on=["one"]),
            JobRequest(spec=CommandSpec(), action="unknown", key="three", depends_on=["two"]),
            keyed("four", "three", tags=["t"]),
            keyed("five", "one", "four"),
        ]
        with pytest.raises(NotFound) as info:
            await store.submit_run("broken", ["r"], jobs)
        return info.value, await table_counts(store)

    err, counts = run_store(body)
    assert err.data == {"field": "jobs[2].action", "name": "unknown"}
    assert counts == {"runs": 0, "jobs": 0, "job_tags": 0, "job_deps": 0}


def test_run_submit_is_atomic_when_a_later_write_fails(run_store: StoreRunner) -> None:
    """A constraint failure after the run row is written rolls back the run as well."""

    async def body(store: Store) -> dict[str, int]:
        jobs = [
            keyed("a", tags=["t"], dedup_key="same"),
            keyed("b", "a", tags=["t"], dedup_key="same"),
        ]
        with pytest.raises(Conflict):
            await store.submit_run("dup", ["r"], jobs)
        return await table_counts(store)

    assert run_store(body) == {"runs": 0, "jobs": 0, "job_tags": 0, "job_deps": 0}


def test_run_edges_are_stored_and_returned(run_store: StoreRunner) -> None:
    """runs.get returns the run, its jobs in submission order, and every edge by job id."""

    async def body(store: Store) -> None:
        jobs = [keyed("a"), keyed("b", "a"), keyed("c", "a"), keyed("d", "b", "c")]
        run_id, by_key = await store.submit_run("diamond", ["nightly"], jobs)
        assert set(by_key) == {"a", "b", "c", "d"}
        run, got_jobs, edges = await store.runs.get(run_id)
        assert run.id == run_id
        assert run.name == "diamond"
        assert run.tags == ["nightly"]
        assert run.status == "queued"
        assert [j.key for j in got_jobs] == ["a", "b", "c", "d"]
        assert [j.id for j in got_jobs] == [by_key[k] for k in "abcd"]
        assert all(j.run_id == run_id for j in got_jobs)
        k = by_key
        assert sorted(edges) == sorted(
            [(k["b"], k["a"]), (k["c"], k["a"]), (k["d"], k["b"]), (k["d"], k["c"])]
        )
        assert await store.jobs.depends_on(k["d"]) == sorted([k["b"], k["c"]])
        assert await store.jobs.depends_on(k["a"]) == []

    run_store(body)


def test_run_get_unknown_is_not_found(run_store: StoreRunner) -> None:
    """Getting a run that does not exist raises NotFound."""

    async def body(store: Store) -> None:
        with pytest.raises(NotFound):
            await store.runs.get(7)

    run_store(body)


def test_run_delete_empty_deletes_only_runs_without_jobs(run_store: StoreRunner) -> None:
    """delete_empty removes the given runs that have no job left, and no other run."""

    async def body(store: Store) -> None:
        full, _ = await store.submit_run("full", [], [keyed("a")])
        emptied, emptied_jobs = await store.submit_run("emptied", [], [keyed("a"), keyed("b")])
        await store.jobs.delete_many(list(emptied_jobs.values()))
        never = await store.pool.write(lambda c: insert_run(c, "never had jobs", []))
        untouched = await store.pool.write(lambda c: insert_run(c, "not asked", []))
        deleted = await store.pool.write(lambda c: delete_empty(c, [full, emptied, never, 999]))
        assert deleted == 2
        left = [r.id for r in await store.runs.list()]
        assert left == [full, untouched]

    run_store(body)


# ---------------------------------------------------------------- logs


def line(owner_id: str, seq: int, kind: str = "job", stream: str = "stdout") -> LogLine:
    """One log line with a recognisable text."""
    return LogLine(kind, owner_id, seq, stream, 1000.0 + seq, f"{kind}{owner_id} line {seq}")


def test_logs_insert_and_read_pages(run_store: StoreRunner) -> None:
    """Lines come back in order, page by page after a sequence number, per owner."""

    async def body(store: Store) -> None:
        lines = [line("1", s, stream="stderr" if s % 5 == 0 else "stdout") for s in range(1, 26)]
        assert await store.logs.insert_many(lines) == 25
        assert await store.logs.insert_many([line("2", s) for s in range(1, 4)]) == 3
        assert await store.logs.insert_many([line("1", s, kind="service") for s in (1, 2)]) == 2
        # A line already stored (same owner and seq) is refused, never silently ignored.
        with pytest.raises(Conflict):
            await store.logs.insert_many(lines[:3])
        assert await store.logs.insert_many([]) == 0

        pages: list[list[int]] = []
        after = 0
        while page := await store.logs.read("job", "1", after_seq=after, limit=10):
            pages.append([ln.seq for ln in page])
            after = page[-1].seq
        assert pages == [list(range(1, 11)), list(range(11, 21)), list(range(21, 26))]

        page = await store.logs.read("job", "1", after_seq=4, limit=2)
        assert page == [line("1", 5, stream="stderr"), line("1", 6)]
        assert [ln.seq for ln in await store.logs.read("job", "2")] == [1, 2, 3]
        assert [ln.text for ln in await store.logs.read("service", "1")] == [
            "service1 line 1",
            "service1 line 2",
        ]
        assert await store.logs.last_seq("job", "1") == 25
        assert await store.logs.last_seq("job", "2") == 3
        assert await store.logs.last_seq("job", "404") == 0

    run_store(body)


def test_logs_delete_owners_beyond_one_chunk(run_store: StoreRunner) -> None:
    """delete_owners handles more owners than one statement's parameter limit."""

    async def body(store: Store) -> None:
        owners = [str(i) for i in range(1, 1501)]
        await store.logs.insert_many([line(o, s) for o in owners for s in (1, 2)])
        await store.logs.insert_many([line("9999", 1), line("5", 1, kind="service")])
        deleted = await store.pool.write(lambda c: delete_owners(c, "job", owners))
        assert deleted == 3000
        rows = await store.pool.fetch_all(
            "SELECT owner_kind, owner_id FROM log_lines ORDER BY owner_kind"
        )
        assert [tuple(r) for r in rows] == [("job", "9999"), ("service", "5")]

    run_store(body)


# ---------------------------------------------------------------- services


def test_service_define_twice_keeps_live_fields(run_store: StoreRunner) -> None:
    """Redefining a service replaces its spec and keeps its live state and creation time."""

    async def body(store: Store) -> None:
        first = await store.services.define("web", {"command": ["srv", "-p", "80"]})
        assert first.state == "stopped" and first.desired == "stopped" and first.pid is None
        async with write_tx(store) as conn:
            await conn.execute(
                "UPDATE services SET state = 'running', desired = 'running', pid = 4321,"
                " restarts = 2, started_at = 1500.0, created_at = 1000.0, updated_at = 1000.0"
                " WHERE name = 'web'"
            )
        second = await store.services.define("web", {"command": ["srv", "-p", "8080"]})
        assert second.spec == {"command": ["srv", "-p", "8080"]}
        assert (second.state, second.desired, second.pid, second.restarts) == (
            "running",
            "running",
            4321,
            2,
        )
        assert second.started_at == 1500.0
        assert second.created_at == 1000.0
        assert second.updated_at > 1000.0
        assert await store.services.get("web") == second
        assert [s.name for s in await store.services.list()] == ["web"]

    run_store(body)


def test_service_status_all_from_one_query(run_store: StoreRunner, backend: str) -> None:
    """status_all reads every service with one statement and returns the documented keys."""
    if backend != "sqlite":
        pytest.skip("counts statements with SQLite's trace callback")

    async def body(store: Store) -> tuple[list[dict[str, Any]], list[str]]:
        for name in ("db", "web", "cache", "api", "queue"):
            await store.services.define(name, {"command": [name]})
        async with write_tx(store) as conn:
            await conn.execute(
                "UPDATE services SET state = 'running', pid = 99, started_at = 1000.0"
                " WHERE name = 'web'"
            )
        statements: list[str] = []
        async with store.pool.reader() as conn:  # the only reader of this store
            await conn.set_trace_callback(statements.append)
        status = await store.services.status_all()
        async with store.pool.reader() as conn:
            await conn.set_trace_callback(None)  # None clears it
        return status, statements

    status, statements = run_store(body, readers=1)
    assert len(statements) == 1
    assert [s["name"] for s in status] == ["api", "cache", "db", "queue", "web"]
    for entry in status:
        assert set(entry) == STATUS_KEYS
    web = status[-1]
    assert web["state"] == "running" and web["pid"] == 99
    assert web["uptime_s"] is not None and web["uptime_s"] > 0
    assert status[0]["state"] == "stopped" and status[0]["uptime_s"] is None


def test_service_unknown_is_not_found(run_store: StoreRunner) -> None:
    """status, get of an unknown service raise NotFound; delete reports 1 then 0."""

    async def body(store: Store) -> tuple[NotFound, int, int]:
        with pytest.raises(NotFound) as info:
            await store.services.status("ghost")
        with pytest.raises(NotFound):
            await store.services.get("ghost")
        await store.services.define("real", {"command": ["x"]})
        one = await store.services.status("real")
        assert set(one) == STATUS_KEYS and one["name"] == "real"
        first = (await store.services.delete("real"))["services"]
        return info.value, first, (await store.services.delete("real"))["services"]

    err, first, second = run_store(body)
    assert err.data == {"name": "ghost"}
    assert (first, second) == (1, 0)


# ---------------------------------------------------------------- store-wide


def test_clean_by_tag_counts_are_the_rows_deleted(run_store: StoreRunner) -> None:
    """clean_by_tag deletes finished tagged jobs, their logs and emptied runs, skipping active."""

    async def body(store: Store) -> None:
        # run "big": 2,497 finished tagged jobs, so the run is emptied and deleted.
        _, big = await store.submit_run(
            "big", [], [keyed(f"b{i}", tags=["batch"]) for i in range(2497)]
        )
        # run "mixed": 2 finished tagged + 1 queued tagged: kept.
        mixed, mixed_jobs = await store.submit_run(
            "mixed", [], [keyed("m0", tags=["batch"]), keyed("m1", tags=["batch"]), keyed("mq")]
        )
        # run "shared": 1 finished tagged + 1 finished untagged: kept.
        shared, shared_jobs = await store.submit_run(
            "shared", [], [keyed("s0", tags=["batch"]), keyed("s1", tags=["other"])]
        )
        async with write_tx(store) as conn:
            await conn.execute(
                "UPDATE jobs SET tags = '[\"batch\"]' WHERE id = ?", (mixed_jobs["mq"],)
            )
            await conn.execute(
                "INSERT INTO job_tags (tag, job_id) VALUES ('batch', ?)", (mixed_jobs["mq"],)
            )
        running = await store.jobs.submit(cmd("sleep", tags=["batch"]))
        queued = [await store.jobs.submit(cmd("q", tags=["batch"])) for _ in range(2)]
        untagged = [await store.jobs.submit(cmd("u", tags=["keep"])) for _ in range(3)]

        finished = [
            *big.values(),
            mixed_jobs["m0"],
            mixed_jobs["m1"],
            shared_jobs["s0"],
        ]
        assert len(finished) == 2500
        others = [shared_jobs["s1"], *untagged]
        async with write_tx(store) as conn:
            ended = ("succeeded", "failed", "cancelled", "timed_out", "lost", "skipped")
            await conn.executemany(
                "UPDATE jobs SET status = ? WHERE id = ?",
                [(ended[i % len(ended)], j) for i, j in enumerate([*finished, *others])],
            )
            await conn.execute("UPDATE jobs SET status = 'running' WHERE id = ?", (running,))
        survivors = [mixed_jobs["mq"], running, *queued, *others]
        await store.logs.insert_many(
            [line(str(j), s) for j in finished for s in (1, 2)]
            + [line(str(j), 1) for j in survivors]
            + [line(str(finished[0]), 1, kind="service")]
        )
        before = await store.counts()

        result = await store.clean_by_tag("batch")

        after = await store.counts()
        assert result == CleanResult(jobs=2500, runs=1, logs=5000, skipped_active=4)
        assert before["jobs"] - after["jobs"] == result.jobs
        assert before["logs"] - after["logs"] == result.logs
        assert before["runs"] - after["runs"] == result.runs
        left = [j.id for j in await store.jobs.list(limit=100)]
        assert left == sorted(survivors)
        assert [r.name for r in await store.runs.list()] == ["mixed", "shared"]
        assert (await store.runs.get(mixed))[0].name == "mixed"
        assert [j.id for j in (await store.runs.get(shared))[1]] == [shared_jobs["s1"]]
        tag_rows = await store.pool.fetch_all("SELECT tag, job_id FROM job_tags ORDER BY job_id")
        assert sorted(r[1] for r in tag_rows if r[0] == "batch") == sorted(
            [mixed_jobs["mq"], running, *queued]
        )
        assert await count(store.pool, "SELECT count(*) FROM job_tags") == len(survivors)
        # The service's log line that shares an id with a deleted job stays.
        assert await store.logs.last_seq("service", str(finished[0])) == 1

        again = await store.clean_by_tag("batch")
        assert again == CleanResult(jobs=0, runs=0, logs=0, skipped_active=4)

    run_store(body)


async def populate(store: Store) -> None:
    """A little of everything, with known counts (see EXPECTED_COUNTS)."""
    await store.actions.upsert("a1", CommandSpec(command=["x"]), ["t"])
    await store.actions.upsert("a2", CommandSpec(script="echo"), [])
    await store.submit_run("r1", [], [keyed("a", tags=["t"]), keyed("b", "a")])
    await store.submit_run("r2", [], [keyed("c")])
    await store.jobs.submit(cmd("solo", tags=["t", "u"]))
    await store.services.define("web", {"command": ["web"]})
    await store.services.define("db", {"command": ["db"]})
    await store.services.define("cache", {"command": ["cache"]})
    await store.logs.insert_many([line("1", s) for s in range(1, 6)] + [line("web", 1, "service")])
    async with write_tx(store) as conn:
        await conn.execute(
            "INSERT INTO schedules (name, cron, target, created_at, updated_at)"
            " VALUES ('nightly', '0 3 * * *', '{}', 0, 0)"
        )


EXPECTED_COUNTS = {"actions": 2, "jobs": 4, "runs": 2, "services": 3, "logs": 6, "schedules": 1}


def test_counts(run_store: StoreRunner) -> None:
    """counts() reports the rows of each main table."""

    async def body(store: Store) -> tuple[dict[str, int], dict[str, int]]:
        empty = await store.counts()
        await populate(store)
        return empty, await store.counts()

    empty, full = run_store(body)
    assert empty == dict.fromkeys(EXPECTED_COUNTS, 0)
    assert full == EXPECTED_COUNTS


def test_wipe_all_counts_what_existed(run_store: StoreRunner) -> None:
    """wipe_all empties every table and reports the rows each table held."""

    async def body(store: Store) -> tuple[dict[str, int], dict[str, int], dict[str, int]]:
        await populate(store)
        report = await store.wipe_all()
        after = await store.counts()
        assert await table_counts(store) == {"runs": 0, "jobs": 0, "job_tags": 0, "job_deps": 0}
        return report, after, await store.wipe_all()

    report, after, second = run_store(body)
    assert report == EXPECTED_COUNTS
    assert after == dict.fromkeys(EXPECTED_COUNTS, 0)
    assert second == dict.fromkeys(EXPECTED_COUNTS, 0)


def test_job_list_json_is_the_record_as_shown_in_every_state(run_store: StoreRunner) -> None:
    """SQLite's JSON of a page equals Job.to_dict(): odd floats, nulls, text, every state."""

    async def body(store: Store) -> None:
        spec = CommandSpec(
            script='echo "quoted" \\ back\nline ünï',
            interpreter=["/bin/bash", "-e"],
            env={"A": "1", "Ü": 'x"y'},
            cwd="/tmp",
            timeout_s=0.1 + 0.2,
            kill_timeout_s=1e-7,
            retries=2,
            retry_delay_s=123456.78901234567,
        )
        await store.jobs.submit(JobRequest(spec=spec, tags=["t", "ü"], dedup_key='d"k'))
        for i in range(4):
            await store.jobs.submit(cmd("sleep", str(i), priority=-(2**31) + i, group="g"))
        claimed = await store.jobs.claim(3, "tok", GroupRoom(set(), {}), at=1796026072.6272097)
        assert len(claimed) == 3
        done = await store.jobs.finish(
            claimed[0].id, "tok", AttemptEnd("exited", exit_code=3, error='bad "x"\n')
        )
        assert done is not None
        await store.jobs.cancel(claimed[1].id)  # running: the intent is recorded
        slow = [j.to_dict() for j in await store.jobs.list(limit=50)]
        assert any(j["cancel_requested"] for j in slow) and any(j["finished_at"] for j in slow)
        blob, count, last_id = await store.jobs.list_json(limit=50)
        assert orjson.loads(blob) == slow and count == 5 and last_id == slow[-1]["id"]
        for a, b in zip(orjson.loads(blob), slow, strict=True):
            for key, value in b.items():
                if isinstance(value, float):
                    assert a[key] == value and isinstance(a[key], float), key
        page, count, last_id = await store.jobs.list_json(limit=2, after_id=slow[0]["id"])
        assert orjson.loads(page) == slow[1:3] and last_id == slow[2]["id"]
        many = [(i, cmd("true", str(i), tags=["many"], priority=i % 7)) for i in range(600)]
        await store.submit_batch(many, "skip", BatchResult())
        for tag in (None, "many"):
            page, count, last_id = await store.jobs.list_json(tag=tag, limit=500, after_id=3)
            ids = [j["id"] for j in orjson.loads(page)]
            want = [j.id for j in await store.jobs.list(tag=tag, limit=500, after_id=3)]
            assert ids == want and count == 500 and last_id == want[-1], tag
            page, count, last_id = await store.jobs.list_json(tag=tag, newest_first=True)
            ids = [j["id"] for j in orjson.loads(page)]
            assert ids == sorted(ids, reverse=True) and count == 100 and last_id == ids[-1]
        running, _, _ = await store.jobs.list_json(status="running")
        assert [j["id"] for j in orjson.loads(running)] == sorted([claimed[1].id, claimed[2].id])

    run_store(body)


def test_job_wire_is_the_record_as_shown(run_store: StoreRunner) -> None:
    """job.list's fast path gives exactly what Job.from_row(...).to_dict() gives."""

    async def body(store: Store) -> None:
        await store.actions.upsert("act", CommandSpec(command=["x"], env={"A": "1"}), ["t"])
        await store.jobs.submit(cmd("plain"))
        await store.jobs.submit(cmd("tagged", tags=["a", "b"], priority=3, group="g"))
        await store.submit_run("r", [], [keyed("a"), keyed("b", "a")])
        slow = [j.to_dict() for j in await store.jobs.list(limit=50)]
        fast = await store.jobs.list_wire(limit=50)
        assert fast == slow and len(fast) == 4
        # The JSON SQLite builds is the same again, every float exactly.
        blob, count, last_id = await store.jobs.list_json(limit=50)
        assert orjson.loads(blob) == slow and count == 4 and last_id == slow[-1]["id"]
        by_tag, count, _ = await store.jobs.list_json(tag="a", limit=50)
        assert orjson.loads(by_tag) == [slow[1]] and count == 1
        assert await store.jobs.list_json(after_id=slow[-1]["id"]) == (b"[]", 0, None)

    run_store(body)


def test_submit_batch_of_many_stores_every_job_and_tag(run_store: StoreRunner) -> None:
    """A batch big enough for PostgreSQL's COPY path: every row, tag and placement stored."""
    from hero_procd.store import BatchResult

    async def body(store: Store) -> tuple[list[int], int, list[Job], int]:
        items = [
            (i, cmd("true", tags=["bulk", "bulk", f"t{i % 3}"], node="n2" if i % 2 else None))
            for i in range(700)
        ]
        res = await store.submit_batch(items, "skip", BatchResult())
        listed = await store.jobs.list(tag="t1", limit=1000)
        tags = await count(store.pool, "SELECT count(*) FROM job_tags")
        return res.submitted, len(listed), listed, tags

    ids, n_t1, listed, tags = run_store(body)
    assert len(ids) == 700 and ids == sorted(ids) and len(set(ids)) == 700
    assert n_t1 == len([i for i in range(700) if i % 3 == 1])
    assert all(j.status == "queued" and j.attempt == 0 and j.tags[0] == "bulk" for j in listed)
    assert {j.pin_node for j in listed} == {"n2", None}
    assert tags == 700 * 2


def test_a_log_flush_with_a_taken_sequence_fails_whole_then_line_by_line(
    run_store: StoreRunner,
) -> None:
    """A batch (big enough for PostgreSQL's COPY) holding taken seqs is refused as a whole;
    line by line, the free ones are stored and the taken ones counted per owner."""
    from hero_procd.store.logs import as_row

    async def body(store: Store) -> tuple[int, dict[tuple[str, str], int], list[int]]:
        first = [LogLine("job", "1", s, "stdout", 1.0, f"l{s}") for s in range(1, 11)]
        await store.logs.insert_many(first)
        rows = [as_row(LogLine("job", "1", s, "stdout", 2.0, f"m{s}")) for s in range(5, 105)]
        with pytest.raises(Conflict):
            await store.logs.write_batch(rows, [], [])
        done = await store.logs.write_batch(rows, [], [], one_by_one=True)
        stored = await store.logs.read("job", "1", 0, 1000)
        return done.written, done.refused, [ln.seq for ln in stored]

    written, refused, seqs = run_store(body)
    assert written == 94 and refused == {("job", "1"): 6}
    assert seqs == list(range(1, 105))


def test_an_actions_node_places_its_jobs_unless_the_job_says_otherwise(
    run_store: StoreRunner,
) -> None:
    """action.set `node` is the placement of its jobs; a job's own `node` wins."""
    from hero_procd.model import CommandSpec as Spec

    async def body(store: Store) -> tuple[str | None, str | None, str | None]:
        action = await store.actions.upsert("backup", Spec(command=["true"]), [], "db1")
        from_action = await store.jobs.submit(JobRequest(spec=Spec(), action="backup"))
        own = await store.jobs.submit(JobRequest(spec=Spec(), action="backup", node="db2"))
        return (
            action.node,
            (await store.jobs.get(from_action)).pin_node,
            (await store.jobs.get(own)).pin_node,
        )

    assert run_store(body) == ("db1", "db1", "db2")


@pytest.mark.parametrize("stretch_max", [None, 7])
def test_submit_batch_rows_are_those_of_single_submits(
    run_store: StoreRunner, monkeypatch: pytest.MonkeyPatch, stretch_max: int | None
) -> None:
    """Stretches of alike jobs (one statement each on SQLite, or several: `stretch_max`)
    and the jobs between them (row by row) are stored exactly as the same requests
    submitted one at a time."""
    if stretch_max is not None:
        monkeypatch.setattr(jobs_sql, "_STRETCH_MAX", stretch_max)
    odd = 'q"uo\\te ü\t\n\u2028 $HOME'
    fancy = CommandSpec(
        command=["echo", odd], env={"A": odd}, cwd="/tmp", timeout_s=1e-7, retries=2
    )
    scripted = CommandSpec(script=f"echo {odd}", interpreter=["/bin/bash", "-e"])
    shared: dict[str, Any] = {"tags": ["x", "ü", "x"], "priority": -5, "group": "g", "node": "n1"}
    requests = (
        [cmd("echo", odd, str(i)) for i in range(20)]
        + [JobRequest(spec=fancy, **shared) for _ in range(17)]
        + [cmd("true", dedup_key=f"k{i}", tags=["d"]) for i in range(3)]  # one row each
        + [JobRequest(spec=scripted if i % 2 else fancy, **shared) for i in range(16)]
        + [cmd("true", str(i), tags=["t"]) for i in range(15)]  # too few for a stretch
    )
    columns = (
        "run_id, key, action, spec, tags, status, priority, grp, dedup_key, attempt,"
        " max_attempts, not_before, deps_pending, pin_node"
    )

    async def rows(store: Store, ids: list[int]) -> list[tuple[Any, ...]]:
        out = []
        for job_id in ids:
            row = await store.pool.fetch_one(f"SELECT {columns} FROM jobs WHERE id = ?", (job_id,))
            tags = await store.pool.fetch_all(
                "SELECT tag FROM job_tags WHERE job_id = ? ORDER BY tag", (job_id,)
            )
            out.append((*tuple(row), [t[0] for t in tags]))
        return out

    async def body(store: Store) -> tuple[list[Any], list[Any], list[int]]:
        res = await store.submit_batch(list(enumerate(requests)), "skip", BatchResult())
        batch = await rows(store, res.submitted)
        await store.wipe_all()  # the dedup keys are free again
        singles = [await store.jobs.submit(r) for r in requests]
        return batch, await rows(store, singles), res.submitted

    batch, single, ids = run_store(body)
    assert ids == list(range(ids[0], ids[0] + len(requests)))
    assert batch == single
    assert orjson.loads(batch[20][3])["env"] == {"A": odd} and batch[20][-1] == ["x", "ü"]
