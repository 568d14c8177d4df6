"""Hostile tests of `Store.submit_batch`'s insert path (stretches of alike jobs written by one
json_each statement on SQLite, ids reserved in the writer's transaction), on real databases.

Inputs are random; each test's seed is in its failure message.
"""

from __future__ import annotations

import asyncio
import os
import random
import sqlite3
from pathlib import Path
from typing import Any

import orjson
import pytest

from hero_procd.errors import HeroError, NotFound
from hero_procd.model import CommandSpec, JobRequest
from hero_procd.store import BatchResult, Store
from hero_procd.store import jobs as jobs_sql
from tests.conftest import StoreRunner, run_with_store
from tests.pg import pg_schema, require_pg
from tests.tmpfs import fill, tiny_tmpfs

# Random seeds for parametrized ids: the same in every pytest-xdist worker of one run (they
# must collect the same tests), fresh for every run.
_SEEDS = random.Random(os.environ.get("PYTEST_XDIST_TESTRUNUID"))

COLUMNS = (
    "run_id, key, action, spec, tags, status, priority, grp, dedup_key, attempt,"
    " max_attempts, not_before, deps_pending, pin_node"
)
ODD = [
    "",
    "plain",
    'q"uo\\te',
    "ü ß 漢字 🙂",
    "\t\n\r\x01\x1f\x7f",
    "\u2028\u2029",
    "\ufeffbom",
    "$HOME `x` ${y}",
    "/",
    "\\u0000 not a NUL",
    "\uffff\ufffe\U0010ffff\ud7ff\ue000",
]


def _text(rng: random.Random) -> str:
    return "".join(rng.choice(ODD) for _ in range(rng.randint(0, 3)))


def _spec(rng: random.Random) -> CommandSpec:
    """A random valid spec (fields as the model allows them, odd strings in every text)."""
    fields: dict[str, Any] = {}
    if rng.random() < 0.2:
        fields["script"] = "echo " + _text(rng)
        if rng.random() < 0.5:
            fields["interpreter"] = ["/bin/sh", _text(rng) or "-e"]
    else:
        fields["command"] = ["echo", *(_text(rng) for _ in range(rng.randint(0, 4)))]
    if rng.random() < 0.3:
        fields["env"] = {f"V{i}": _text(rng) for i in range(rng.randint(0, 3))}
        if rng.random() < 0.05:
            fields["env"]["BIG"] = "x" * (128 * 1024 - 10)  # near the kernel's bound
    if rng.random() < 0.2:
        fields["cwd"] = "/tmp/" + _text(rng).replace("\0", "")
    if rng.random() < 0.2:
        fields["timeout_s"] = rng.choice([1e-7, 0.1, 3.0, 86400.0 * 365, 1 / 3])
    if rng.random() < 0.2:
        fields["kill_timeout_s"] = rng.choice([0.0, 2.5, 1e-300])
    if rng.random() < 0.2:
        fields["retries"] = rng.choice([0, 1, 1000])
    if rng.random() < 0.1:
        fields["retry_delay_s"] = rng.choice([0.0, 0.5, 1e9])
    if rng.random() < 0.1:
        fields["memory_max"] = rng.choice([4096, 2**63 - 1])
    if rng.random() < 0.1:
        fields["pids_max"] = rng.choice([1, 4_194_304])
    if rng.random() < 0.05:
        fields["cpu_max"] = rng.choice([0.01, 1024.0, 1 / 7])
    return CommandSpec(**fields)


def _shared(rng: random.Random, actions: list[str], n: int) -> dict[str, Any]:
    """The fields of a job besides its spec (what a stretch's jobs share)."""
    out: dict[str, Any] = {}
    if rng.random() < 0.4:
        out["tags"] = [rng.choice(["a", "b", "ü", "", "x" * 300]) for _ in range(rng.randint(0, 4))]
    if rng.random() < 0.3:
        out["priority"] = rng.choice([0, 1, -1, 2**31 - 1, -(2**31)])
    if rng.random() < 0.3:
        out["group"] = rng.choice(["g1", "g2"])
    if rng.random() < 0.3:
        out["node"] = rng.choice(["n1", "ü" * 255])
    if actions and rng.random() < 0.1:
        out["action"] = rng.choice(actions)
    return out


def random_requests(rng: random.Random, n: int, actions: list[str]) -> list[JobRequest]:
    """n requests in runs of random length that share all but their spec (some runs long
    enough for a stretch, some not), a few with dedup keys of their own."""
    out: list[JobRequest] = []
    while len(out) < n:
        shared = _shared(rng, actions, n)
        for _ in range(min(n - len(out), rng.choice([1, 2, 15, 16, 17, 40, 200]))):
            fields = dict(shared)
            if rng.random() < 0.03:
                fields["dedup_key"] = f"k{len(out)}-{_text(rng)}"
            if fields.get("action"):
                out.append(JobRequest(spec=CommandSpec(), **fields))
            else:
                out.append(JobRequest(spec=_spec(rng), **fields))
    return out


async def job_rows(store: Store, ids: list[int]) -> list[tuple[Any, ...]]:
    """Each job's stored columns (bar id and time) and its tags, in the order of `ids`."""
    out = []
    for job_id in ids:
        row = await store.pool.fetch_one(f"SELECT {COLUMNS} FROM jobs WHERE id = ?", (job_id,))
        assert row is not None, f"job {job_id} was returned but not stored"
        tags = await store.pool.fetch_all(
            "SELECT tag FROM job_tags WHERE job_id = ? ORDER BY tag", (job_id,)
        )
        out.append((*tuple(row), [t[0] for t in tags]))
    return out


async def counts(store: Store) -> tuple[int, int]:
    jobs = await store.pool.fetch_one("SELECT count(*) FROM jobs")
    tags = await store.pool.fetch_one("SELECT count(*) FROM job_tags")
    assert jobs is not None and tags is not None
    return int(jobs[0]), int(tags[0])


async def make_actions(store: Store) -> list[str]:
    await store.actions.upsert("act1", CommandSpec(command=["echo", "ü"], retries=3), ["at"], None)
    await store.actions.upsert(
        "act2", CommandSpec(script="echo 2", env={"E": "v"}), ["at", "b"], "n9"
    )
    return ["act1", "act2"]


@pytest.mark.parametrize("seed", [_SEEDS.randrange(2**32) for _ in range(3)])
def test_random_batches_store_exactly_what_single_submits_store(
    run_store: StoreRunner, monkeypatch: pytest.MonkeyPatch, seed: int
) -> None:
    """Random mixes of every field, in runs that do and do not make stretches: each job of
    the batch is stored (every column and tag) as job.submit's path stores it alone, and
    the ids returned are consecutive, in item order."""
    rng = random.Random(seed)
    monkeypatch.setattr(jobs_sql, "_STRETCH_MAX", rng.choice([7, 100, 10_000]))
    n = rng.randint(50, 1500)

    async def body(store: Store) -> tuple[list[Any], list[Any], list[int]]:
        requests = random_requests(rng, n, await make_actions(store))
        res = await store.submit_batch(list(enumerate(requests)), "skip", BatchResult())
        assert not res.failed and not res.deduplicated, seed
        batch = await job_rows(store, res.submitted)
        await store.wipe_all()
        await make_actions(store)
        singles = [await store.jobs.submit(r) for r in requests]
        return batch, await job_rows(store, singles), res.submitted

    batch, single, ids = run_store(body)
    assert ids == list(range(ids[0], ids[0] + n)), f"seed {seed}"
    for i, (b, s) in enumerate(zip(batch, single, strict=True)):
        assert b == s, f"seed {seed}: job {i} differs"


def test_ids_of_deleted_highest_jobs_are_never_handed_out_again(run_store: StoreRunner) -> None:
    """After the highest jobs are deleted (delete, clean by tag, retention), the next batch
    (stretch statement, SQLite's AUTOINCREMENT counter) starts above every id ever given:
    logs, waiters and cgroups keyed by job id never meet a second job of the same id."""
    seed = random.randrange(2**32)
    rng = random.Random(seed)

    async def body(store: Store) -> None:
        highest = 0
        for round_ in range(6):
            n = rng.randint(16, 3000)
            tag = f"r{round_}"
            items = [(i, JobRequest(CommandSpec(["true", str(i)]), tags=[tag])) for i in range(n)]
            ids = (await store.submit_batch(items, "skip", BatchResult())).submitted
            assert min(ids) > highest, f"seed {seed}: id reused after a deletion"
            highest = max(ids)
            how = round_ % 3
            if how == 0:
                await store.jobs.delete_many(ids[rng.randint(0, n - 1) :])
            elif how == 1:
                await store.clean_by_tag(tag)
            else:
                await store.pool.write(lambda c: c.execute("UPDATE jobs SET status = 'done'"))
                while (await store.delete_old_jobs(1e12, 1000))[0]:
                    pass

    run_store(body)


def test_concurrent_batches_submits_and_runs_get_exactly_their_rows(
    run_store: StoreRunner,
) -> None:
    """Several clients at once (batches with stretches, single submits, runs, and units that
    fail inside the same group commit): every id returned is the row of that item."""
    seed = random.randrange(2**32)
    rng = random.Random(seed)

    async def client(store: Store, name: str) -> list[tuple[int, str]]:
        got: list[tuple[int, str]] = []
        for round_ in range(rng.randint(3, 8)):
            await asyncio.sleep(rng.random() * 0.01)
            kind = rng.choice(["batch", "submit", "run", "bad"])
            marks = [f"{name}.{round_}.{i}" for i in range(rng.randint(1, 400))]
            if kind == "batch":
                reqs = [(i, JobRequest(CommandSpec(["echo", m]))) for i, m in enumerate(marks)]
                res = await store.submit_batch(reqs, "skip", BatchResult())
                got += zip(res.submitted, marks, strict=True)
            elif kind == "submit":
                got.append((await store.jobs.submit(JobRequest(CommandSpec(["echo", name]))), name))
            elif kind == "run":
                reqs2 = [JobRequest(CommandSpec(["echo", m]), key=m) for m in marks]
                _, by_key = await store.submit_run(None, [], reqs2)
                got += [(job_id, key) for key, job_id in by_key.items()]
            else:  # a run with an unknown action, queued among the others: undone alone
                reqs3 = [JobRequest(CommandSpec(["echo", m]), key=m) for m in marks]
                reqs3.append(JobRequest(CommandSpec(), action="nope", key="z"))
                with pytest.raises(NotFound):
                    await store.submit_run(None, [], reqs3)
        return got

    async def body(store: Store) -> None:
        results = await asyncio.gather(*(client(store, f"c{k}") for k in range(6)))
        pairs = [p for r in results for p in r]
        ids = [job_id for job_id, _ in pairs]
        assert len(set(ids)) == len(ids), f"seed {seed}: an id given twice"
        rows = await store.pool.fetch_all("SELECT id, spec FROM jobs")
        stored = {int(r[0]): orjson.loads(r[1])["command"][1] for r in rows}
        assert stored == dict(pairs), f"seed {seed}"

    run_store(body)


def _trigger(conn: Any, table: str, when: str) -> None:
    conn.execute(
        f"CREATE TRIGGER boom BEFORE INSERT ON {table} WHEN {when}"
        " BEGIN SELECT RAISE(ABORT, 'boom'); END"
    )


@pytest.mark.parametrize("table", ["jobs", "job_tags"])
def test_a_db_error_mid_stretch_commits_nothing_and_the_store_serves_on(
    db_path: Path, table: str
) -> None:
    """A row refused in the middle of a stretch (a trigger of the real SQLite): the whole
    batch is undone (jobs, tags, the id counter) and the next batch is stored."""
    seed = random.randrange(2**32)
    rng = random.Random(seed)

    async def body(store: Store) -> None:
        await store.submit_batch([(0, JobRequest(CommandSpec(["true"])))], "skip", BatchResult())
        before = await counts(store)
        seq = await store.pool.fetch_one("SELECT seq FROM sqlite_sequence WHERE name = 'jobs'")
        n = rng.randint(40, 30_000)
        bad = int(seq[0]) + rng.randint(1, n)
        col = "id" if table == "jobs" else "job_id"
        await store.pool.write(lambda c: _trigger(c, table, f"NEW.{col} = {bad}"))
        reqs = [(i, JobRequest(CommandSpec(["true", str(i)]), tags=["t"])) for i in range(n)]
        with pytest.raises(HeroError) as info:
            await store.submit_batch(reqs, "skip", BatchResult())
        assert "boom" in str(info.value.data), f"seed {seed}: {info.value}"
        assert await counts(store) == before, f"seed {seed}"
        after = await store.pool.fetch_one("SELECT seq FROM sqlite_sequence WHERE name = 'jobs'")
        assert after[0] == seq[0]
        await store.pool.write(lambda c: c.execute("DROP TRIGGER boom"))
        ids = (await store.submit_batch(reqs, "skip", BatchResult())).submitted
        assert ids == list(range(int(seq[0]) + 1, int(seq[0]) + 1 + n))
        assert await counts(store) == (before[0] + n, before[1] + n)

    run_with_store(db_path, body)


def test_a_full_disk_mid_batch_commits_nothing_and_the_store_serves_on(tmp_path: Path) -> None:
    """Disk full while a big batch is written: nothing of it is stored, earlier jobs stay,
    and once there is room again the same batch is stored whole."""
    with tiny_tmpfs(tmp_path / "tiny", "4m") as where:
        path = where / "hp.db"

        async def body(store: Store) -> None:
            await store.submit_batch(
                [(0, JobRequest(CommandSpec(["true"])))], "skip", BatchResult()
            )
            await store.checkpoint()
            before = await counts(store)
            filler = fill(where)
            reqs = [
                (i, JobRequest(CommandSpec(["true", "x" * 50]), tags=["t"])) for i in range(40_000)
            ]
            with pytest.raises(HeroError) as info:
                await store.submit_batch(reqs, "skip", BatchResult())
            told = f"{info.value} {info.value.data}"
            assert "full" in told, f"a full disk was reported as: {told}"
            assert await counts(store) == before
            filler.unlink()
            ids = (await store.submit_batch(reqs[:5000], "skip", BatchResult())).submitted
            assert len(ids) == 5000 and min(ids) == 2
            assert await counts(store) == (before[0] + 5000, before[1] + 5000)

        run_with_store(path, body)


def test_a_stretch_bigger_than_sqlites_longest_string_is_split(db_path: Path) -> None:
    """Jobs whose specs add up past SQLite's longest string (SQLITE_LIMIT_LENGTH; 1 GB by
    default, within reach of a batch under a raised max_frame) are stored as the row by
    row path stores them, not refused as 'string or blob too big'."""
    limit = 1_000_000

    async def body(store: Store) -> None:
        await store.pool.write(lambda c: c.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, limit))
        reqs = [(i, JobRequest(CommandSpec(["echo", f"{i}" + "y" * 20_000]))) for i in range(200)]
        ids = (await store.submit_batch(reqs, "skip", BatchResult())).submitted
        assert len(ids) == 200
        rows = await store.pool.fetch_all("SELECT spec FROM jobs ORDER BY id")
        assert [orjson.loads(r[0])["command"][1] for r in rows] == [
            r.spec.command[1] for _, r in reqs if r.spec.command
        ]

    run_with_store(db_path, body)


@pytest.mark.parametrize("seed", [_SEEDS.randrange(2**32) for _ in range(2)])
def test_postgresql_stores_the_same_rows_as_sqlite(db_path: Path, seed: int) -> None:
    """The same random batch on SQLite (stretches) and PostgreSQL (COPY): the same rows
    and tags (specs compared as JSON: PostgreSQL may space them otherwise)."""
    require_pg()
    rng = random.Random(seed)
    requests = random_requests(rng, rng.randint(200, 1200), [])

    async def body(store: Store) -> list[Any]:
        res = await store.submit_batch(list(enumerate(requests)), "skip", BatchResult())
        rows = await job_rows(store, res.submitted)
        return [(*r[:3], orjson.loads(r[3]), *r[4:]) for r in rows]

    lite = run_with_store(db_path, body)
    with pg_schema() as dsn:
        pg = run_with_store(dsn, body)
    assert len(lite) == len(pg)
    for i, (a, b) in enumerate(zip(lite, pg, strict=True)):
        assert a == b, f"seed {seed}: job {i} differs"


def test_a_batch_failing_inside_a_group_commit_undoes_only_itself(db_path: Path) -> None:
    """Batches that fail mid-stretch (a trigger on one job's command) queued together with
    good batches and submits (one group transaction, a savepoint each): the failing ones
    leave nothing, not even a gap the others notice; each good id is its own item's row."""
    seed = random.randrange(2**32)
    rng = random.Random(seed)

    async def good(store: Store, name: str) -> list[tuple[int, str]]:
        await asyncio.sleep(rng.random() * 0.005)
        if rng.random() < 0.3:
            return [(await store.jobs.submit(JobRequest(CommandSpec(["echo", name]))), name)]
        marks = [f"{name}.{i}" for i in range(rng.randint(1, 3000))]
        reqs = [(i, JobRequest(CommandSpec(["echo", m]), tags=["g"])) for i, m in enumerate(marks)]
        ids = (await store.submit_batch(reqs, "skip", BatchResult())).submitted
        return list(zip(ids, marks, strict=True))

    async def bad(store: Store) -> None:
        await asyncio.sleep(rng.random() * 0.005)
        n = rng.randint(20, 3000)
        reqs = [(i, JobRequest(CommandSpec(["echo", "x"]), tags=["b"])) for i in range(n)]
        reqs[rng.randrange(n)] = (0, JobRequest(CommandSpec(["echo", "bad"]), tags=["b"]))
        with pytest.raises(HeroError):
            await store.submit_batch(reqs, "skip", BatchResult())

    async def body(store: Store) -> None:
        await store.pool.write(
            lambda c: _trigger(c, "jobs", "json_extract(NEW.spec, '$.command[1]') = 'bad'")
        )
        tasks = [good(store, f"g{k}") for k in range(8)] + [bad(store) for _ in range(4)]
        rng.shuffle(tasks)
        results = await asyncio.gather(*tasks)
        pairs = [p for r in results if r for p in r]
        rows = await store.pool.fetch_all("SELECT id, spec FROM jobs")
        stored = {int(r[0]): orjson.loads(r[1])["command"][1] for r in rows}
        assert stored == dict(pairs), f"seed {seed}"
        tags = await store.pool.fetch_all("SELECT DISTINCT tag FROM job_tags")
        assert {t[0] for t in tags} <= {"g"}, f"seed {seed}"

    run_with_store(db_path, body)
