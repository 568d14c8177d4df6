"""The store: every read and write of hero-procd's database (SQLite, or PostgreSQL).

`Store` holds one sub-API per table and the few operations that span tables
(`submit_run`, `clean_by_tag`, `wipe_all`), each one transaction.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from hero_procd.config import default_node
from hero_procd.errors import InvalidParams, NotFound
from hero_procd.model import JobRequest, check_run_graph, now
from hero_procd.store import jobs as jobs_sql
from hero_procd.store.actions import ActionsApi, actions_by_name
from hero_procd.store.groups import GroupsApi
from hero_procd.store.jobs import JobsApi, Settled, write_run
from hero_procd.store.logs import LogsApi, delete_owners
from hero_procd.store.nodes import NodesApi
from hero_procd.store.pool import Conn, DbPool, Pool, chunks
from hero_procd.store.queries import Q, with_marks
from hero_procd.store.runs import RunsApi, delete_empty
from hero_procd.store.schedules import SchedulesApi
from hero_procd.store.schema import WIPE_ORDER
from hero_procd.store.secrets import SecretsApi
from hero_procd.store.services import ServicesApi
from hero_procd.store.stacks import StacksApi

__all__ = ["BatchResult", "CleanResult", "Store", "is_dsn"]


def is_dsn(db: Path | str) -> bool:
    """Whether `--db` names a PostgreSQL database (a URL) rather than a SQLite file."""
    return str(db).startswith(("postgresql://", "postgres://"))


# The most items one job.submit_batch may carry: all are written in ONE transaction.
MAX_BATCH_ITEMS = 100_000

# What wipe_all reports, by the table that holds it.
_WIPE_REPORT = {
    "actions": "actions",
    "jobs": "jobs",
    "runs": "runs",
    "services": "services",
    "log_lines": "logs",
    "schedules": "schedules",
}


@dataclass(frozen=True)
class CleanResult:
    """True row counts of one `clean_by_tag`."""

    jobs: int
    runs: int
    logs: int
    skipped_active: int


@dataclass
class BatchResult:
    """What `submit_batch` did with each item."""

    submitted: list[int] = field(default_factory=list)
    deduplicated: list[str] = field(default_factory=list)
    superseded: list[tuple[int, int]] = field(default_factory=list)
    failed: list[tuple[int, dict[str, Any]]] = field(default_factory=list)
    settled: Settled | None = None


class Store:
    """The database and its sub-APIs."""

    def __init__(
        self, pool: DbPool, node: str | None = None, started_at: float | None = None
    ) -> None:
        node = node or default_node()
        self.pool = pool
        self.backend = pool.backend
        self.node = node
        self.actions = ActionsApi(pool)
        self.jobs = JobsApi(pool, self.actions, node)
        self.runs = RunsApi(pool)
        self.services = ServicesApi(pool, node)
        self.logs = LogsApi(pool)
        self.groups = GroupsApi(pool)
        self.secrets = SecretsApi(pool)
        self.schedules = SchedulesApi(pool)
        self.nodes = NodesApi(pool, node, started_at)
        self.stacks = StacksApi(pool, node)

    @classmethod
    async def open(
        cls,
        db: Path | str,
        readers: int = 4,
        node: str | None = None,
        node_timeout_s: float = 15.0,
    ) -> Store:
        """Open (creating and migrating) the database: a SQLite file, or a PostgreSQL URL;
        `node` names this daemon among those sharing the database."""
        if is_dsn(db):
            from hero_procd.store.postgres import PgPool  # psycopg only when asked for

            # A node cut off mid-transaction loses its session (and locks) within its lease.
            idle_tx_s = max(1.0, node_timeout_s / 2)
            # This daemon's start: its row's started_at, which names its sessions.
            started_at = now()
            name = node or default_node()
            pool = await PgPool.open(str(db), readers, idle_tx_s, name, started_at)
            return cls(pool, node, started_at)
        return cls(await Pool.open(Path(db), readers), node)

    async def close(self) -> None:
        """Checkpoint and close every connection."""
        await self.pool.close()

    async def listen(self, on_message: Callable[[str], None]) -> None:
        """Deliver the other nodes' wake-ups (see store/notify.py) until cancelled; returns at
        once on SQLite, where there is no other node."""
        listen = getattr(self.pool, "listen", None)
        if listen is not None:
            await listen(on_message)

    async def submit_run(
        self, name: str | None, tags: list[str], jobs: list[JobRequest]
    ) -> tuple[int, dict[str, int]]:
        """Write a run and all its jobs and edges in ONE transaction; (run id, key → job id)."""
        check_run_graph(jobs)
        return await self.pool.write(lambda c: write_run(c, name, tags, jobs))

    async def submit_batch(
        self, items: list[tuple[int, JobRequest]], on_duplicate: str, result: BatchResult
    ) -> BatchResult:
        """Queue many jobs in ONE transaction (all or nothing), up to MAX_BATCH_ITEMS.

        Within the batch the last job with a dedup key wins; a key held by a
        queued job is skipped or replaces that job (`on_duplicate`): the
        replaced job is cancelled through the cancel path (dependents skipped,
        its run's status derived), in the same transaction.
        """
        if len(items) > MAX_BATCH_ITEMS:
            raise InvalidParams("jobs", f"at most {MAX_BATCH_ITEMS} items per batch")
        return await self.pool.write(lambda c: write_batch(c, items, on_duplicate, result))

    async def clean_by_tag(self, tag: str) -> CleanResult:
        """Delete the tag's finished jobs, their log lines and emptied runs, in one transaction."""

        def unit(conn: Conn) -> CleanResult:
            found = jobs_sql.select_tagged(conn, tag)
            jobs, runs, logs = delete_jobs(conn, found.deletable, found.run_ids)
            return CleanResult(jobs=jobs, runs=runs, logs=logs, skipped_active=found.active)

        return await self.pool.write(unit)

    async def delete_old_jobs(self, cutoff: float, limit: int) -> tuple[int, int, int]:
        """Delete up to `limit` finished jobs older than `cutoff` (whole runs only); counts."""

        def unit(conn: Conn) -> tuple[int, int, int]:
            rows = conn.execute(Q["retention_old_jobs"], (cutoff, limit)).fetchall()
            if not rows:
                return 0, 0, 0
            runs = {r[1] for r in rows if r[1] is not None}
            return delete_jobs(conn, [int(r[0]) for r in rows], runs)

        return await self.pool.write(unit)

    async def wipe_all(self) -> dict[str, int]:
        """Empty every table in one transaction; the rows each actually lost."""

        def unit(conn: Conn) -> dict[str, int]:
            report: dict[str, int] = {}
            for table in WIPE_ORDER:
                cur = conn.execute(f"DELETE FROM {table}")  # names from WIPE_ORDER only
                if table in _WIPE_REPORT:
                    report[_WIPE_REPORT[table]] = cur.rowcount
            return report

        return await self.pool.write(unit)

    async def reclaim_space(self, pages: int) -> tuple[int, int]:
        """Give up to `pages` free pages back to the file system; (pages freed, page size)."""

        if self.backend != "sqlite":
            return 0, 0  # PostgreSQL's autovacuum reclaims space

        def unit(conn: Any) -> tuple[int, int]:
            page_size = int(conn.execute("PRAGMA page_size").fetchone()[0])
            before = int(conn.execute("PRAGMA freelist_count").fetchone()[0])
            if before:
                # Through executescript: sqlite3's execute steps a PRAGMA once (one page).
                conn.executescript(f"PRAGMA incremental_vacuum({int(pages)});")
            after = int(conn.execute("PRAGMA freelist_count").fetchone()[0])
            return before - after, page_size

        return await self.pool.maintenance(unit)

    async def checkpoint(self) -> None:
        """Copy the WAL into the database and cut it back (to journal_size_limit)."""
        if self.backend != "sqlite":
            return
        await self.pool.maintenance(
            lambda c: c.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
        )

    async def counts(self) -> dict[str, int]:
        """Row counts of the main tables, from one read."""
        row = await self.pool.fetch_one(Q["counts_all"])
        assert row is not None
        return {k: int(row[k]) for k in row.keys()}  # noqa: SIM118 (sqlite3.Row)


def write_batch(
    conn: Conn, items: list[tuple[int, JobRequest]], on_duplicate: str, result: BatchResult
) -> BatchResult:
    """The body of `Store.submit_batch`, inside one unit."""
    requests = [req for _, req in items]
    if all(req.dedup_key is None and req.action is None for req in requests):
        # The usual big batch: nothing to deduplicate or resolve, every job is inserted.
        result.submitted.extend(jobs_sql.insert_many(conn, requests))
        return result
    last_with_key: dict[str, int] = {}
    for pos, (_, req) in enumerate(items):
        if req.dedup_key is not None:
            last_with_key[req.dedup_key] = pos
    names = [r.action for _, r in items if r.action is not None]
    actions = actions_by_name(conn, names) if names else {}
    ready: list[tuple[int, JobRequest]] = []
    deduplicated: list[str] = []
    failed: list[tuple[int, dict[str, Any]]] = []
    for pos, (index, req) in enumerate(items):
        if req.dedup_key is not None and last_with_key[req.dedup_key] != pos:
            deduplicated.append(req.dedup_key)
            continue
        if req.action is not None:
            action = actions.get(req.action)
            if action is None:
                err = NotFound("action not found", {"name": req.action})
                failed.append((index, {"code": err.code, "message": str(err)}))
                continue
            tags = list(dict.fromkeys([*action.tags, *req.tags]))
            node = req.node if req.node is not None else action.node
            req = replace(req, spec=req.spec.merged_over(action.spec), tags=tags, node=node)
        ready.append((index, req))
    keys = sorted({r.dedup_key for _, r in ready if r.dedup_key is not None})
    held: dict[str, int] = {}
    for key_chunk in chunks(keys):
        sql = with_marks("job_dedup_held", len(key_chunk))
        held.update({row[1]: row[0] for row in conn.execute(sql, key_chunk).fetchall()})
    to_insert: list[JobRequest] = []
    replaced: list[int | None] = []
    for _, req in ready:
        old = held.get(req.dedup_key) if req.dedup_key is not None else None
        if old is not None and on_duplicate == "skip":
            assert req.dedup_key is not None
            deduplicated.append(req.dedup_key)
            continue
        to_insert.append(req)
        replaced.append(old)
    olds = [o for o in replaced if o]
    settled = (
        jobs_sql.supersede(conn, olds, "superseded by a newer job with the same dedup_key")
        if olds
        else None
    )
    ids = jobs_sql.insert_many(conn, to_insert)
    # Only once the unit has written everything does the result say so.
    result.deduplicated.extend(deduplicated)
    result.failed.extend(failed)
    result.submitted.extend(ids)
    result.superseded.extend((new, old) for new, old in zip(ids, replaced, strict=True) if old)
    result.settled = settled
    return result


def delete_jobs(conn: Conn, ids: Sequence[int], run_ids: Iterable[int]) -> tuple[int, int, int]:
    """Delete jobs, their log lines, and those of `run_ids` left empty, inside a unit;
    (jobs, runs, logs) deleted, from the statements' row counts."""
    logs = delete_owners(conn, "job", [str(i) for i in ids])
    jobs = jobs_sql.delete_many(conn, ids)
    runs = delete_empty(conn, sorted(set(run_ids)))
    return jobs, runs, logs
