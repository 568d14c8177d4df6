"""Retention: everything that grows is cut back in the background.

One pass deletes finished jobs older than the retention (with their log
lines and the runs they leave empty), caps every owner's stored log lines
(oldest first, counted), and returns free pages to the file system with
`incremental_vacuum` in steps of 1,000 pages. Each step is its own short transaction,
so readers, the executor and the flusher are never held up for long.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import asdict, dataclass
from typing import Any

from hero_procd.app import App
from hero_procd.model import now

log = logging.getLogger(__name__)

_JOB_CHUNK = 2000
_TRIM_CHUNK = 20_000


@dataclass
class RetentionReport:
    """What one retention pass deleted and freed."""

    jobs: int = 0
    runs: int = 0
    logs: int = 0
    log_lines_trimmed: int = 0
    pages_freed: int = 0
    bytes_freed: int = 0


class Janitor:
    """Runs a retention pass every `janitor_interval_s`, and on demand."""

    def __init__(self, app: App) -> None:
        self.app = app
        self.store = app.store
        self.config = app.config
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        self.last: dict[str, Any] | None = None

    def start(self) -> None:
        """Start the periodic passes."""
        self._task = asyncio.get_running_loop().create_task(self._loop(), name="janitor")

    async def stop(self) -> None:
        """Stop the periodic passes."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def settings(self) -> dict[str, Any]:
        """The retention settings in force (shown by system.info)."""
        return {
            "job_retention_days": self.config.job_retention_days,
            "max_log_lines_per_owner": self.config.max_log_lines_per_owner,
            "interval_s": self.config.janitor_interval_s,
        }

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.janitor_interval_s)
            try:
                await self.run_once()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("retention pass failed")

    async def run_once(self) -> dict[str, Any]:
        """One full pass; what it deleted and freed."""
        async with self._lock:
            report = RetentionReport()
            await self._old_jobs(report)
            await self._cap_logs(report)
            await self._vacuum(report)
            await self.store.checkpoint()
            self.app.stats.log_lines_trimmed += report.log_lines_trimmed
            result = asdict(report)
            self.last = {"at": now(), **result}
            if report.jobs or report.log_lines_trimmed or report.pages_freed:
                log.info("retention pass", extra=result)
            return result

    async def _old_jobs(self, report: RetentionReport) -> None:
        cutoff = now() - self.config.job_retention_days * 86400.0
        while True:
            jobs, emptied, logs = await self.store.delete_old_jobs(cutoff, _JOB_CHUNK)
            if not jobs:
                return
            report.jobs += jobs
            report.runs += emptied
            report.logs += logs
            await asyncio.sleep(0)  # let other writers in between chunks

    async def _cap_logs(self, report: RetentionReport) -> None:
        cap = self.config.max_log_lines_per_owner
        for kind, owner, stored, last in await self.store.logs.owners_over(cap):
            # Oldest first, at most _TRIM_CHUNK lines a transaction: the write lock is never
            # held long, whatever the backlog.
            upto = last - cap
            first = upto - stored + cap  # the owner's first stored seq, or below it
            for cut in range(first + _TRIM_CHUNK, upto + _TRIM_CHUNK, _TRIM_CHUNK):
                report.log_lines_trimmed += await self.store.logs.trim(kind, owner, min(cut, upto))
                await asyncio.sleep(0)

    async def _vacuum(self, report: RetentionReport) -> None:
        while True:
            freed, page_size = await self.store.reclaim_space(int(self.config.vacuum_step_pages))
            if freed <= 0:
                return
            report.pages_freed += freed
            report.bytes_freed += freed * page_size
            await asyncio.sleep(0)
