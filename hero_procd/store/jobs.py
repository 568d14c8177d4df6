"""JobsApi: jobs, their tags and dependency edges."""

from __future__ import annotations

import builtins
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import aiosqlite
import orjson

from hero_procd.errors import InvalidParams, NotFound
from hero_procd.model import (
    ACTIVE_JOB_STATES,
    TERMINAL_JOB_STATES,
    CommandSpec,
    JobRequest,
    JobStatus,
    now,
)
from hero_procd.store.actions import ActionsApi
from hero_procd.store.pool import Pool, chunks
from hero_procd.store.queries import Q, with_marks
from hero_procd.store.records import Job


@dataclass(frozen=True)
class TaggedSelection:
    """What `clean_by_tag` found for a tag: deletable ids, their runs, and active jobs skipped."""

    deletable: list[int]
    run_ids: list[int]
    active: int


async def allocate_ids(conn: aiosqlite.Connection, table: str, n: int) -> list[int]:
    """Reserve n ids of an AUTOINCREMENT table; only valid inside a write transaction."""
    async with conn.execute(Q["seq_get"], (table,)) as cur:
        row = await cur.fetchone()
    base = int(row[0]) if row is not None else 0
    return list(range(base + 1, base + n + 1))


class JobsApi:
    """Reads and writes of `jobs`, `job_tags` and `job_deps`."""

    def __init__(self, pool: Pool, actions: ActionsApi) -> None:
        self.pool = pool
        self.actions = actions

    async def resolve(
        self, conn: aiosqlite.Connection, requests: Sequence[JobRequest], field: str = "jobs"
    ) -> list[JobRequest]:
        """Fill each request's spec from its action (read in the same transaction)."""
        names = [r.action for r in requests if r.action is not None]
        if not names:
            return [_finalised(r) for r in requests]
        found = await self.actions.get_many(conn, names)
        out: list[JobRequest] = []
        for i, req in enumerate(requests):
            if req.action is None:
                out.append(_finalised(req))
                continue
            action = found.get(req.action)
            if action is None:
                where = f"{field}[{i}].action" if field else "action"
                raise NotFound("action not found", {"field": where, "name": req.action})
            merged = req.spec.merged_over(action.spec)
            tags = list(dict.fromkeys([*action.tags, *req.tags]))
            out.append(_finalised(replace(req, spec=merged, tags=tags)))
        return out

    async def insert_many(
        self, conn: aiosqlite.Connection, requests: Sequence[JobRequest], run_id: int | None = None
    ) -> list[int]:
        """Insert resolved jobs with one executemany per table; their new ids, in order."""
        if not requests:
            return []
        ids = await allocate_ids(conn, "jobs", len(requests))
        ts = now()
        rows: list[tuple[Any, ...]] = []
        tag_rows: list[tuple[str, int]] = []
        for job_id, req in zip(ids, requests, strict=True):
            spec = req.spec
            rows.append(
                (
                    job_id,
                    run_id,
                    req.key,
                    req.action,
                    orjson.dumps(spec.to_dict()).decode(),
                    orjson.dumps(req.tags).decode(),
                    req.priority,
                    req.group,
                    req.dedup_key,
                    (spec.retries or 0) + 1,
                    len(set(req.depends_on)),
                    ts,
                )
            )
            tag_rows.extend((tag, job_id) for tag in req.tags)
        cur = await conn.executemany(Q["job_insert"], rows)
        assert cur.rowcount == len(rows), "every job row must be written"
        if tag_rows:
            await conn.executemany(Q["job_tag_insert"], tag_rows)
        return ids

    async def insert_edges(
        self, conn: aiosqlite.Connection, edges: Sequence[tuple[int, int]]
    ) -> int:
        """Insert dependency edges (job_id, depends_on); the rows written."""
        if not edges:
            return 0
        cur = await conn.executemany(Q["job_dep_insert"], edges)
        return cur.rowcount

    async def submit(self, request: JobRequest) -> int:
        """Queue one job in its own transaction; its id."""
        async with self.pool.transaction() as conn:
            resolved = await self.resolve(conn, [request], field="")
            (job_id,) = await self.insert_many(conn, resolved)
        return job_id

    async def get(self, job_id: int) -> Job:
        """The job `job_id`, or NotFound."""
        row = await self.pool.fetch_one(Q["job_get"], (job_id,))
        if row is None:
            raise NotFound("job not found", {"id": job_id})
        return Job.from_row(row)

    async def depends_on(self, job_id: int) -> list[int]:
        """The ids a job waits for."""
        rows = await self.pool.fetch_all(Q["job_deps_of"], (job_id,))
        return [r[0] for r in rows]

    async def list(
        self,
        *,
        status: str | None = None,
        tag: str | None = None,
        run_id: int | None = None,
        limit: int = 100,
        after_id: int = 0,
    ) -> list[Job]:
        """A page of jobs in id order."""
        params = {
            "status": status,
            "tag": tag,
            "run_id": run_id,
            "limit": limit,
            "after_id": after_id,
        }
        sql = Q["job_list"] if tag is None else Q["job_list_by_tag"]
        rows = await self.pool.fetch_all(sql, params)
        return [Job.from_row(r) for r in rows]

    async def select_tagged(self, conn: aiosqlite.Connection, tag: str) -> TaggedSelection:
        """Split the jobs with `tag` into deletable ones and active ones."""
        deletable: builtins.list[int] = []
        runs: set[int] = set()
        active = 0
        async with conn.execute(Q["job_tagged_for_clean"], (tag,)) as cur:
            for job_id, run_id, status in await cur.fetchall():
                if status in ACTIVE_JOB_STATES:
                    active += 1
                    continue
                deletable.append(job_id)
                if run_id is not None:
                    runs.add(run_id)
        return TaggedSelection(deletable, sorted(runs), active)

    async def delete_many(
        self, ids: Sequence[int], conn: aiosqlite.Connection | None = None
    ) -> int:
        """Delete jobs by id, one statement per chunk of at most 999, all in one transaction."""
        if conn is None:
            async with self.pool.transaction() as tx:
                return await self.delete_many(ids, tx)
        deleted = 0
        for chunk in chunks(ids):
            n = len(chunk)
            for name in ("job_tag_delete_ids", "job_dep_delete_ids", "job_dep_delete_targets"):
                await (await conn.execute(with_marks(name, n), chunk)).close()
            cur = await conn.execute(with_marks("job_delete_ids", n), chunk)
            deleted += cur.rowcount
            await cur.close()
        return deleted


def _finalised(req: JobRequest) -> JobRequest:
    if req.spec.command is None and req.spec.script is None:
        raise InvalidParams("command", "one of command or script is required")
    return req


@dataclass(frozen=True)
class ClaimedJob:
    """A job this executor now owns for one attempt."""

    id: int
    run_id: int | None
    spec: CommandSpec
    group: str | None
    attempt: int
    max_attempts: int
    token: str
    last_seq: int = 0  # the last log line of earlier attempts: this one continues after it


@dataclass
class GroupRoom:
    """Free slots per concurrency group at the time of a claim."""

    full: set[str]
    room: dict[str, int]


async def claim(
    conn: aiosqlite.Connection, n: int, token: str, groups: GroupRoom, at: float
) -> list[ClaimedJob]:
    """Claim up to n ready jobs (priority, then age) within group limits, on a write transaction."""
    full = sorted(groups.full)
    scan = n * 2 + 16
    if full:
        sql = with_marks("job_claim_candidates_excluding", len(full))
        params: tuple[Any, ...] = (at, *full, scan)
    else:
        sql = Q["job_claim_candidates"]
        params = (at, scan)
    async with conn.execute(sql, params) as cur:
        candidates = await cur.fetchall()
    room = dict(groups.room)
    chosen: list[int] = []
    for job_id, grp in candidates:
        if grp is not None and grp in room:
            if room[grp] <= 0:
                continue
            room[grp] -= 1
        chosen.append(job_id)
        if len(chosen) == n:
            break
    if not chosen:
        return []
    async with conn.execute(with_marks("job_claim", len(chosen)), (token, at, *chosen)) as cur:
        rows = await cur.fetchall()
    out = [
        ClaimedJob(
            id=r["id"],
            run_id=r["run_id"],
            # Defaults are filled in when the job runs, not stored in every row.
            spec=CommandSpec.from_dict(orjson.loads(r["spec"])).with_defaults(),
            group=r["grp"],
            attempt=r["attempt"],
            max_attempts=r["max_attempts"],
            token=r["claim_token"],
            last_seq=r["last_seq"] or 0,
        )
        for r in rows
    ]
    out.sort(key=lambda c: chosen.index(c.id) if len(chosen) < 64 else c.id)
    return out


async def apply_outcomes(
    conn: aiosqlite.Connection, finished: Sequence[tuple[int, str]], at: float
) -> list[tuple[int, int | None]]:
    """Release dependents of succeeded jobs and skip (transitively) those of failed ones.

    Returns the (id, run_id) of every job skipped.
    """
    succeeded = [(job_id,) for job_id, status in finished if status == JobStatus.SUCCEEDED]
    if succeeded:
        await conn.executemany(Q["job_release_dependents"], succeeded)
    frontier = [
        job_id
        for job_id, status in finished
        if status in TERMINAL_JOB_STATES and status != JobStatus.SUCCEEDED
    ]
    skipped: list[tuple[int, int | None]] = []
    while frontier:
        nxt: list[int] = []
        for chunk in chunks(frontier, 998):
            sql = with_marks("job_skip_dependents", len(chunk))
            async with conn.execute(sql, (at, *chunk)) as cur:
                for row in await cur.fetchall():
                    skipped.append((row[0], row[1]))
                    nxt.append(row[0])
        frontier = nxt
    return skipped


async def cancel_queued(
    conn: aiosqlite.Connection, job_id: int, at: float, reason: str
) -> tuple[int, int | None] | None:
    """Cancel a queued job; its (id, run_id), or None if it was not queued."""
    async with conn.execute(Q["job_cancel_queued"], (at, reason, job_id)) as cur:
        row = await cur.fetchone()
    return None if row is None else (row[0], row[1])


async def next_ready_at(pool: Pool, at: float) -> float | None:
    """When the earliest job in backoff becomes ready, if any."""
    row = await pool.fetch_one(Q["job_next_ready_at"], (at,))
    return None if row is None or row[0] is None else float(row[0])


async def job_statuses(conn: aiosqlite.Connection, ids: Sequence[int]) -> dict[int, str]:
    """The current status of some jobs, read on `conn`."""
    out: dict[int, str] = {}
    for chunk in chunks(ids):
        async with conn.execute(with_marks("job_status_of", len(chunk)), chunk) as cur:
            for row in await cur.fetchall():
                out[row["id"]] = row["status"]
    return out
