"""The store: every read and write of hero-procd's SQLite database.

`Store` holds one sub-API per table and the few operations that span tables
(`submit_run`, `clean_by_tag`, `wipe_all`), each one transaction.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from hero_procd.model import JobRequest, check_run_graph
from hero_procd.store.actions import ActionsApi
from hero_procd.store.jobs import JobsApi
from hero_procd.store.logs import LogsApi
from hero_procd.store.pool import Pool
from hero_procd.store.queries import Q
from hero_procd.store.runs import RunsApi
from hero_procd.store.schema import WIPE_ORDER
from hero_procd.store.services import ServicesApi

__all__ = ["CleanResult", "Store"]

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


class Store:
    """The database and its sub-APIs."""

    def __init__(self, pool: Pool) -> None:
        self.pool = pool
        self.actions = ActionsApi(pool)
        self.jobs = JobsApi(pool, self.actions)
        self.runs = RunsApi(pool)
        self.services = ServicesApi(pool)
        self.logs = LogsApi(pool)

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
            resolved = await self.jobs.resolve(conn, jobs)
            run_id = await self.runs.insert(conn, name, tags)
            ids = await self.jobs.insert_many(conn, resolved, run_id)
            by_key = {job.key: job_id for job, job_id in zip(jobs, ids, strict=True) if job.key}
            edges = [(by_key[j.key], by_key[d]) for j in jobs if j.key for d in j.depends_on]
            await self.jobs.insert_edges(conn, edges)
        return run_id, by_key

    async def clean_by_tag(self, tag: str) -> CleanResult:
        """Delete the tag's finished jobs, their log lines and emptied runs, in one transaction."""
        async with self.pool.transaction() as conn:
            found = await self.jobs.select_tagged(conn, tag)
            logs = await self.logs.delete_owners(conn, "job", [str(i) for i in found.deletable])
            jobs = await self.jobs.delete_many(found.deletable, conn)
            runs = await self.runs.delete_empty(conn, found.run_ids)
        return CleanResult(jobs=jobs, runs=runs, logs=logs, skipped_active=found.active)

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
