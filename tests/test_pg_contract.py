"""The same writes on SQLite and on PostgreSQL read back the same (a contract across the
two dialects: job.list's page built by SQLite's JSON functions against the rows built
in Python on PostgreSQL; job.get; timestamps to the last bit)."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path
from typing import Any

import orjson

from hero_procd.model import CommandSpec, JobRequest
from hero_procd.store import Store
from hero_procd.store.jobs import GroupRoom
from tests.conftest import run_with_store
from tests.pg import pg_schema

# Times whose shortest repr needs all 17 digits, and odd values.
_CASES: list[dict[str, Any]] = [
    {"spec": CommandSpec(command=["true", "é ü 中"]), "tags": ["b", "A", "a"]},
    {"spec": CommandSpec(command=["x"], env={"K": "v"}, timeout_s=0.1 + 0.2), "priority": -3},
    {"spec": CommandSpec(command=["y"], retries=2), "group": "G", "dedup_key": "d%_\\"},
    {"spec": CommandSpec(command=["z"], cwd="/tmp"), "priority": 2**31 - 1, "node": "n1"},
]


async def _snapshot(store: Store) -> dict[str, Any]:
    ids = [await store.jobs.submit(JobRequest(**case)) for case in _CASES]
    await store.jobs.cancel(ids[1])
    page, n, last = await store.jobs.list_json(limit=100)
    desc, _, low = await store.jobs.list_json(limit=100, newest_first=True)
    got = [(await store.jobs.get(i)) for i in ids]
    return {
        "page": orjson.loads(page),
        "n": n,
        "last": last,
        "desc": orjson.loads(desc),
        "low": low,
        "get": [repr(j).split("created_at")[0] for j in got],
    }


def _without_times(snap: dict[str, Any]) -> dict[str, Any]:
    for key in ("page", "desc"):
        for job in snap[key]:
            for field in ("created_at", "not_before", "finished_at", "started_at", "node"):
                job.pop(field, None)
    return snap


def test_same_writes_read_back_the_same_on_both_backends(tmp_path: Path) -> None:
    lite = run_with_store(tmp_path / "c.db", _snapshot)
    with pg_schema() as dsn:
        pg = run_with_store(dsn, _snapshot)
    for snap in (lite, pg):  # a timestamp round-trips: the float written is the float read
        for job in snap["page"]:
            assert isinstance(job["created_at"], float)
    assert _without_times(pg) == _without_times(lite)


_NAMES = ["beta", "Alpha", "alpha", "a-b", "ab", "a_b", "Zed", "_x", "é", "e"]


async def _group_order(store: Store) -> list[str]:
    for name in _NAMES:
        await store.groups.set(name, 1)
    return [name for name, _, _ in await store.groups.entries()]


def test_names_sort_bytewise_on_a_database_with_a_linguistic_collation(tmp_path: Path) -> None:
    """Lists ordered by name come in SQLite's order (bytes) on PostgreSQL too, whatever the
    database's default collation (initdb takes the system locale: often en_US, where
    'Alpha' < 'alpha' < 'beta' and '_x' sorts among the x's)."""
    import uuid

    import psycopg

    from tests.pg import pg_test_dsn, require_pg, with_schema

    require_pg()
    db = f"hp_icu_{uuid.uuid4().hex[:8]}"
    admin = pg_test_dsn()
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(
            f"CREATE DATABASE {db} TEMPLATE template0 LOCALE_PROVIDER icu "
            "ICU_LOCALE 'en-US' LOCALE 'C.UTF-8'"
        )
    try:
        dsn = admin.rsplit("/", 1)[0] + f"/{db}"
        pg = run_with_store(with_schema(dsn, "hero_proc"), _group_order)
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")
    lite = run_with_store(tmp_path / "o.db", _group_order)
    assert lite == sorted(_NAMES, key=lambda s: s.encode())
    assert pg == lite


def _caught_violation(conn: Any) -> str:
    """A unit that meets a unique violation, handles it, and goes on writing (fine on
    SQLite; on PostgreSQL the failed statement aborts the transaction unless the unit
    wrapped it in a savepoint of its own — the writer gives each unit one)."""
    conn.execute("INSERT INTO groups (name, max_parallel) VALUES ('dup', 1)")
    try:
        conn.execute("INSERT INTO groups (name, max_parallel) VALUES ('dup', 1)")
    except Exception as exc:  # the unit's own handling
        return type(exc).__name__
    return "no error"


async def _violations(store: Store) -> tuple[list[str], list[str]]:
    async def other(name: str) -> str:
        await store.groups.set(name, 1)
        return "ok"

    results = await asyncio.gather(
        other("before"),
        store.pool.write(_caught_violation),
        other("after"),
        *(other(f"n{i}") for i in range(random.randrange(1, 20))),
        return_exceptions=True,
    )
    shown = [r if isinstance(r, str) else type(r).__name__ for r in results[:3]]
    assert all(r == "ok" for i, r in enumerate(results) if i != 1), results
    return shown, sorted(n for n in (await store.groups.all()) if not n.startswith("n"))


def test_a_unit_meeting_a_violation_never_undoes_the_units_beside_it(tmp_path: Path) -> None:
    """In one group commit: the units beside the one that met a unique violation commit on
    both backends. On PostgreSQL the unit that went on after its failed statement is undone
    and told so (a StorageError); before, the aborted transaction failed the whole group."""
    lite = run_with_store(tmp_path / "v.db", _violations)
    with pg_schema() as dsn:
        pg = run_with_store(dsn, _violations)
    assert lite == (["ok", "IntegrityError", "ok"], ["after", "before", "dup"])
    assert pg == (["ok", "StorageError", "ok"], ["after", "before"])


async def _pids_recorded(store: Store) -> list[tuple[int | None, float | None]]:
    ids = [await store.jobs.submit(JobRequest(spec=CommandSpec(command=["x"]))) for _ in range(3)]
    claimed = await store.jobs.claim(3, "tok", GroupRoom(set(), {}))
    assert sorted(c.id for c in claimed) == ids
    # One batch: two attempts this claim owns, one whose claim is no longer (a stale token).
    await store.jobs.set_pids([(ids[0], "tok", 4242, 12.5), (ids[1], "other", 4343, 13.0)])
    await store.jobs.set_pids([(ids[2], "tok", 4444, None)])
    return [((j := await store.jobs.get(i)).pid, j.pid_start_time) for i in ids]


def test_set_pids_records_only_what_the_claim_owns_on_both_backends(tmp_path: Path) -> None:
    want = [(4242, 12.5), (None, None), (4444, None)]
    assert run_with_store(tmp_path / "p.db", _pids_recorded) == want
    with pg_schema() as dsn:
        assert run_with_store(dsn, _pids_recorded) == want
