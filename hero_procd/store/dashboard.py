"""Reads of the web dashboard and the metrics: counts by state, newest-first pages, log tails.

Kept apart from the sub-APIs the engine uses: these are read-only and go
through the reader connections; their SQL is in dashboard.sql.
"""

from __future__ import annotations

from typing import Any

from hero_procd.offload import offload
from hero_procd.store.logs import LogLine
from hero_procd.store.pool import DbPool
from hero_procd.store.queries import load
from hero_procd.store.records import Run, job_wire

D: dict[str, str] = load("dashboard.sql")
# A page larger than this is built off the event loop.
_OFFLOAD_ROWS = 500


class DashboardApi:
    """Read-only views for the dashboard and /metrics."""

    def __init__(self, pool: DbPool) -> None:
        self.pool = pool

    async def _counts(self, name: str) -> dict[str, int]:
        return {str(r[0]): int(r[1]) for r in await self.pool.fetch_all(D[name])}

    async def jobs_by_status(self) -> dict[str, int]:
        """How many jobs are in each status (statuses with none are absent)."""
        return await self._counts("jobs_by_status")

    async def services_by_state(self) -> dict[str, int]:
        """How many services are in each state."""
        return await self._counts("services_by_state")

    async def runs_by_status(self) -> dict[str, int]:
        """How many runs are in each status."""
        return await self._counts("runs_by_status")

    async def jobs_newest(
        self,
        *,
        status: str | None = None,
        tag: str | None = None,
        run_id: int | None = None,
        before_id: int | None = None,
        limit: int = 50,
    ) -> list[dict[str, Any]]:
        """A page of jobs, newest first, below `before_id` (as job.list shapes them)."""
        params = {
            "status": status,
            "tag": tag,
            "run_id": run_id,
            "before_id": before_id if before_id is not None else 2**63 - 1,
            "limit": limit,
        }
        sql = D["jobs_newest"] if tag is None else D["jobs_newest_by_tag"]
        rows = await self.pool.fetch_all(sql, params)
        if len(rows) > _OFFLOAD_ROWS:
            return await offload(lambda: [job_wire(r) for r in rows])
        return [job_wire(r) for r in rows]

    async def runs_newest(self, before_id: int | None = None, limit: int = 50) -> list[Run]:
        """A page of runs, newest first, below `before_id`."""
        before = before_id if before_id is not None else 2**63 - 1
        rows = await self.pool.fetch_all(D["runs_newest"], {"before_id": before, "limit": limit})
        return [Run.from_row(r) for r in rows]

    async def log_tail(self, owner_kind: str, owner_id: str, limit: int = 200) -> list[LogLine]:
        """An owner's last `limit` lines, oldest first."""
        rows = await self.pool.fetch_all(D["log_tail"], (owner_kind, owner_id, limit))
        return [
            LogLine(r["owner_kind"], r["owner_id"], r["seq"], r["stream"], r["ts"], r["text"])
            for r in reversed(rows)
        ]
