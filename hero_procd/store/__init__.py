"""The store: every read and write of hero-procd's SQLite database.

`Store` holds one sub-API per table and the few operations that span tables
(`submit_run`, `clean_by_tag`, `wipe_all`), each one transaction.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import aiosqlite

from hero_procd.errors import NotFound
from hero_procd.model import JobRequest, check_run_graph, now
from hero_procd.store.actions import ActionsApi
from hero_procd.store.groups import GroupsApi
from hero_procd.store.jobs import JobsApi
from hero_procd.store.logs import LogsApi
from hero_procd.store.pool import Pool, chunks
from hero_procd.store.queries import Q, with_marks
from hero_procd.store.runs import RunsApi
from hero_procd.store.schedules import SchedulesApi
from hero_procd.store.schema import WIPE_ORDER
from hero_procd.store.secrets import SecretsApi
from hero_procd.store.services import ServicesApi

__all__ = ["BatchResult", "CleanResult", "Store"]

BATCH_CHUNK = 10_000

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


class Store:
    """The database and its sub-APIs."""

    def __init__(self, pool: Pool) -> None:
        self.pool = pool
        self.actions = ActionsApi(pool)
        self.jobs = JobsApi(pool, self.actions)
        self.runs = RunsApi(pool)
        self.services = ServicesApi(pool)
        self.logs = LogsApi(pool)
        self.groups = GroupsApi(pool)
        self.secrets = SecretsApi(pool)
        self.schedules = SchedulesApi(pool)

    @classmethod
    async def open(cls, path: Path, readers: int = 4) -> Store:
        """Open (creating and migrating) the database at `path`."""
        return cls(await Pool.open(path, readers))

    async def close(self) -> None:
        """Checkpoint and close every connection."""
        await self.pool.close()

    async def submit_run(
        self, name: str | None, tags: list[str], jobs: list[JobRequest]
    ) -> tuple[int, dict[str, int]]:
        """Write a run and all its jobs and edges in ONE transaction; (run id, key → job id)."""
        check_run_graph(jobs)
        async with self.pool.transaction() as conn:
            return await self.insert_run(conn, name, tags, jobs)

    async def insert_run(
        self, conn: aiosqlite.Connection, name: str | None, tags: list[str], jobs: list[JobRequest]
    ) -> tuple[int, dict[str, int]]:
        """Write a run, its jobs and edges on a transaction in progress (graph already checked)."""
        resolved = await self.jobs.resolve(conn, jobs)
        run_id = await self.runs.insert(conn, name, tags)
        ids = await self.jobs.insert_many(conn, resolved, run_id)
        by_key = {job.key: job_id for job, job_id in zip(jobs, ids, strict=True) if job.key}
        edges = [(by_key[j.key], by_key[d]) for j in jobs if j.key for d in j.depends_on]
        await self.jobs.insert_edges(conn, edges)
        return run_id, by_key

    async def submit_batch(
        self, items: list[tuple[int, JobRequest]], on_duplicate: str, result: BatchResult
    ) -> BatchResult:
        """Queue many jobs: one transaction per chunk of 10,000, dedup keys looked up per chunk.

        Within the batch the last job with a dedup key wins; a key held by a
        queued job is skipped or replaces that job (`on_duplicate`).
        """
        last_with_key: dict[str, int] = {}
        for pos, (_, req) in enumerate(items):
            if req.dedup_key is not None:
                last_with_key[req.dedup_key] = pos
        kept: list[tuple[int, JobRequest]] = []
        for pos, (index, req) in enumerate(items):
            if req.dedup_key is not None and last_with_key[req.dedup_key] != pos:
                result.deduplicated.append(req.dedup_key)
            else:
                kept.append((index, req))
        for chunk in chunks(kept, BATCH_CHUNK):
            await self._submit_chunk(list(chunk), on_duplicate, result)
        return result

    async def _submit_chunk(
        self, items: list[tuple[int, JobRequest]], on_duplicate: str, result: BatchResult
    ) -> None:
        async with self.pool.transaction() as conn:
            names = [r.action for _, r in items if r.action is not None]
            actions = await self.actions.get_many(conn, names) if names else {}
            ready: list[tuple[int, JobRequest]] = []
            for index, req in items:
                if req.action is not None:
                    action = actions.get(req.action)
                    if action is None:
                        err = NotFound("action not found", {"name": req.action})
                        result.failed.append((index, {"code": err.code, "message": str(err)}))
                        continue
                    tags = list(dict.fromkeys([*action.tags, *req.tags]))
                    req = replace(req, spec=req.spec.merged_over(action.spec), tags=tags)
                ready.append((index, req))
            keys = sorted({r.dedup_key for _, r in ready if r.dedup_key is not None})
            held: dict[str, int] = {}
            for key_chunk in chunks(keys):
                sql = with_marks("job_dedup_held", len(key_chunk))
                async with conn.execute(sql, key_chunk) as cur:
                    held.update({row[1]: row[0] for row in await cur.fetchall()})
            to_insert: list[JobRequest] = []
            replaced: list[int | None] = []
            for _, req in ready:
                old = held.get(req.dedup_key) if req.dedup_key is not None else None
                if old is not None and on_duplicate == "skip":
                    assert req.dedup_key is not None
                    result.deduplicated.append(req.dedup_key)
                    continue
                to_insert.append(req)
                replaced.append(old)
            olds = [
                (now(), "superseded by a newer job with the same dedup_key", o)
                for o in replaced
                if o
            ]
            if olds:
                await conn.executemany(Q["job_supersede"], olds)
            ids = await self.jobs.insert_many(conn, to_insert)
        result.submitted.extend(ids)
        result.superseded.extend((new, old) for new, old in zip(ids, replaced, strict=True) if old)

    async def clean_by_tag(self, tag: str) -> CleanResult:
        """Delete the tag's finished jobs, their log lines and emptied runs, in one transaction."""
        async with self.pool.transaction() as conn:
            found = await self.jobs.select_tagged(conn, tag)
            jobs, runs, logs = await self.delete_jobs(conn, found.deletable, found.run_ids)
        return CleanResult(jobs=jobs, runs=runs, logs=logs, skipped_active=found.active)

    async def delete_jobs(
        self, conn: aiosqlite.Connection, ids: Sequence[int], run_ids: Iterable[int]
    ) -> tuple[int, int, int]:
        """Delete jobs, their log lines, and those of `run_ids` left empty, on a transaction
        in progress; (jobs, runs, logs) deleted, from the statements' row counts."""
        logs = await self.logs.delete_owners(conn, "job", [str(i) for i in ids])
        jobs = await self.jobs.delete_many(ids, conn)
        runs = await self.runs.delete_empty(conn, sorted(set(run_ids)))
        return jobs, runs, logs

    async def old_finished_jobs(
        self, conn: aiosqlite.Connection, cutoff: float, limit: int
    ) -> list[tuple[int, int | None]]:
        """(id, run_id) of finished jobs older than `cutoff` whose run has no active job."""
        async with conn.execute(Q["retention_old_jobs"], (cutoff, limit)) as cur:
            return [(int(r[0]), r[1]) for r in await cur.fetchall()]

    async def wipe_all(self) -> dict[str, int]:
        """Empty every table in one transaction; the rows each actually lost."""
        report: dict[str, int] = {}
        async with self.pool.transaction() as conn:
            for table in WIPE_ORDER:
                cur = await conn.execute(f"DELETE FROM {table}")  # names from WIPE_ORDER only
                if table in _WIPE_REPORT:
                    report[_WIPE_REPORT[table]] = cur.rowcount
                await cur.close()
        return report

    async def counts(self) -> dict[str, int]:
        """Row counts of the main tables, from one read."""
        row = await self.pool.fetch_one(Q["counts_all"])
        assert row is not None
        return {k: int(row[k]) for k in row.keys()}  # noqa: SIM118 (sqlite3.Row)
