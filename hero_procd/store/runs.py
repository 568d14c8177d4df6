"""RunsApi: groups of jobs submitted together."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import orjson

from hero_procd.errors import NotFound
from hero_procd.model import RunStatus, now
from hero_procd.params import INT64_MAX
from hero_procd.store.pool import Conn, DbPool, chunks
from hero_procd.store.queries import Q, with_marks
from hero_procd.store.records import Job, Run


class RunsApi:
    """Reads and writes of the `runs` table."""

    def __init__(self, pool: DbPool) -> None:
        self.pool = pool

    async def get(self, run_id: int) -> tuple[Run, list[Job], list[tuple[int, int]]]:
        """The run, its jobs and its dependency edges, read on one connection."""
        async with self.pool.reader() as conn:
            async with conn.execute(Q["run_get"], (run_id,)) as cur:
                row = await cur.fetchone()
            if row is None:
                raise NotFound("run not found", {"id": run_id})
            async with conn.execute(Q["run_jobs"], (run_id,)) as cur:
                jobs = [Job.from_row(r) for r in await cur.fetchall()]
            async with conn.execute(Q["run_job_edges"], (run_id,)) as cur:
                edges = [(int(r[0]), int(r[1])) for r in await cur.fetchall()]
        return Run.from_row(row), jobs, edges

    async def list(
        self,
        *,
        status: str | None = None,
        tag: str | None = None,
        limit: int = 100,
        after_id: int = 0,
        before_id: int | None = None,
        newest_first: bool = False,
    ) -> list[Run]:
        """A page of runs: in id order after `after_id`, or newest first below `before_id`."""
        params: dict[str, Any] = {"status": status, "tag": tag, "limit": limit}
        if newest_first:
            params["before_id"] = INT64_MAX if before_id is None else before_id
            rows = await self.pool.fetch_all(Q["run_list_desc"], params)
        else:
            rows = await self.pool.fetch_all(Q["run_list"], {**params, "after_id": after_id})
        return [Run.from_row(r) for r in rows]


def insert_run(conn: Conn, name: str | None, tags: list[str]) -> int:
    """Insert a run inside a unit; its id."""
    row = conn.execute(Q["run_insert"], (name, orjson.dumps(tags).decode(), now())).fetchone()
    assert row is not None
    return int(row[0])


def delete_empty(conn: Conn, run_ids: Sequence[int]) -> int:
    """Delete those of `run_ids` left with no job, one statement per chunk; the rows deleted."""
    deleted = 0
    for chunk in chunks(run_ids):
        deleted += conn.execute(with_marks("run_delete_empty", len(chunk)), chunk).rowcount
    return deleted


def derive_status(
    total: int, queued: int, running: int, succeeded: int, cancelled: int, started: int
) -> str:
    """A run's status from the states of its jobs."""
    if running or (queued and started):
        return RunStatus.RUNNING
    if queued:
        return RunStatus.QUEUED
    if succeeded == total:
        return RunStatus.SUCCEEDED
    if cancelled:
        return RunStatus.CANCELLED
    return RunStatus.FAILED


def refresh_status(conn: Conn, run_ids: Iterable[int]) -> None:
    """Recompute and store the status of these runs, inside a unit."""
    ids = sorted(set(run_ids))
    updates: list[tuple[Any, ...]] = []
    for chunk in chunks(ids):
        for r in conn.execute(with_marks("run_status_counts", len(chunk)), chunk).fetchall():
            status = derive_status(
                r["total"],
                r["queued"],
                r["running"],
                r["succeeded"],
                r["cancelled"],
                r["started"],
            )
            done = status in (RunStatus.SUCCEEDED, RunStatus.FAILED, RunStatus.CANCELLED)
            finished = r["last_finished"] if done else None
            updates.append((str(status), finished, r["run_id"], str(status), finished))
    if updates:
        conn.executemany(Q["run_set_status"], updates)
