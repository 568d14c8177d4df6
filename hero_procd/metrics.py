"""Prometheus metrics: counters bumped where things happen, gauges read at scrape time.

`GET /metrics` (on the Unix socket and on the browser listener) answers the
Prometheus text format built by `prometheus_client`, from a registry of our
own (never the process-global default: several daemons in one test process
must not share figures).

Counters and histograms are incremented by one-line hooks in the dispatcher
(RPC calls and their latency), the executor (spawns, spawn failures, attempt
durations) and the flusher (log lines stored). Everything else is read when
scraped: counts by state from the database (reader connections, never the
writer), service restarts and health, the dropped log lines, the write queue,
and the database and WAL sizes (stat on the offload thread). The text itself
is generated on the offload thread too: a scrape never blocks the event loop.
"""

from __future__ import annotations

import os
import time
from bisect import bisect_left
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from hero_procd.errors import HeroError
from hero_procd.offload import offload

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

    from hero_procd.app import App
    from hero_procd.engine.executor import RunningJob

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
PREFIX = "hero_proc"
JOB_STATES = ("queued", "running", "succeeded", "failed", "cancelled", "timed_out", "lost")
SERVICE_STATES = ("stopped", "starting", "running", "stopping", "backoff", "exited", "fatal")
HEALTH_STATES = ("healthy", "degraded", "unhealthy")
_RPC_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0)
_JOB_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0)


@dataclass
class Scraped:
    """The figures read at scrape time (off the registry, so generation needs no await)."""

    jobs: dict[str, int] = field(default_factory=dict)
    services: dict[str, int] = field(default_factory=dict)
    restarts: dict[str, int] = field(default_factory=dict)
    manual_restarts: dict[str, int] = field(default_factory=dict)
    health: dict[str, str | None] = field(default_factory=dict)
    spawns: int = 0
    dropped_log_lines: int = 0
    write_queue: int = 0
    log_queue: int = 0
    jobs_running_here: int = 0
    job_waiters: int = 0
    service_waiters: int = 0
    db_bytes: int = 0
    wal_bytes: int = 0
    uptime_s: float = 0.0


class RpcTally:
    """One method's calls: outcomes counted, durations in histogram buckets."""

    __slots__ = ("buckets", "outcomes", "seconds")

    def __init__(self) -> None:
        self.outcomes: dict[str, int] = {"ok": 0}
        self.buckets = [0] * (len(_RPC_BUCKETS) + 1)  # the last one is +Inf
        self.seconds = 0.0

    def end(self, seconds: float, error: str | None) -> None:
        """One call ended: `error` is None, or its code (or "internal")."""
        outcome = "ok" if error is None else error
        self.outcomes[outcome] = self.outcomes.get(outcome, 0) + 1
        self.buckets[bisect_left(_RPC_BUCKETS, seconds)] += 1
        self.seconds += seconds


def _tally(tallies: dict[str, RpcTally], method: str) -> RpcTally:
    tally = tallies.get(method)
    if tally is None:
        tally = tallies[method] = RpcTally()  # a method never called adds no series
    return tally


def _rpc_families(tallies: dict[str, RpcTally]) -> Iterator[Metric]:
    calls = CounterMetricFamily(
        f"{PREFIX}_rpc_calls",
        "RPC calls answered, by method and outcome (ok, or the error code)",
        labels=["method", "outcome"],
    )
    seconds = HistogramMetricFamily(
        f"{PREFIX}_rpc_duration_seconds", "Time to answer an RPC call, by method", labels=["method"]
    )
    for method, tally in sorted(tallies.items()):
        for outcome, n in sorted(tally.outcomes.items()):
            calls.add_metric([method, outcome], n)
        cumulative, running = [], 0
        for bound, n in zip([*map(str, _RPC_BUCKETS), "+Inf"], tally.buckets, strict=True):
            running += n
            cumulative.append((bound, running))
        seconds.add_metric([method], cumulative, tally.seconds)
    yield calls
    yield seconds


def _labelled(
    family: GaugeMetricFamily | CounterMetricFamily, values: dict[str, int]
) -> GaugeMetricFamily | CounterMetricFamily:
    """`family` with one sample per label value, in label order."""
    for label, value in sorted(values.items()):
        family.add_metric([label], value)
    return family


class _ScrapedCollector(Collector):
    """Yields the gauges of the `Scraped` figures handed to it just before generation."""

    def __init__(self, rpc: dict[str, RpcTally]) -> None:
        self.figures = Scraped()
        self.rpc = rpc

    def collect(self) -> Iterator[Metric]:
        yield from _rpc_families(self.rpc)
        f = self.figures
        yield _labelled(
            GaugeMetricFamily(f"{PREFIX}_jobs", "Jobs in the store by status", labels=["status"]),
            {state: f.jobs.get(state, 0) for state in set(JOB_STATES) | set(f.jobs)},
        )
        yield _labelled(
            GaugeMetricFamily(f"{PREFIX}_services", "Services by state", labels=["state"]),
            {state: f.services.get(state, 0) for state in set(SERVICE_STATES) | set(f.services)},
        )
        yield _labelled(
            CounterMetricFamily(
                f"{PREFIX}_service_restarts",
                "Automatic restarts of each service (its `restarts` in service.status)",
                labels=["service"],
            ),
            f.restarts,
        )
        yield _labelled(
            CounterMetricFamily(
                f"{PREFIX}_service_manual_restarts",
                "Restarts of each service asked for by service.restart (its `manual_restarts`)",
                labels=["service"],
            ),
            f.manual_restarts,
        )
        health = GaugeMetricFamily(
            f"{PREFIX}_service_health",
            "1 for the health status each service with a health check is in",
            labels=["service", "status"],
        )
        for name, status in sorted(f.health.items()):
            if status is not None:
                for choice in HEALTH_STATES:
                    health.add_metric([name, choice], 1 if status == choice else 0)
        yield health
        yield CounterMetricFamily(
            f"{PREFIX}_spawns", "Child processes of jobs spawned by this daemon", value=f.spawns
        )
        yield CounterMetricFamily(
            f"{PREFIX}_log_lines_dropped",
            "Log lines dropped, over every owner in the store (system.info's total)",
            value=f.dropped_log_lines,
        )
        yield GaugeMetricFamily(
            f"{PREFIX}_write_queue_depth",
            "Store write units waiting for the next group commit",
            value=f.write_queue,
        )
        yield GaugeMetricFamily(
            f"{PREFIX}_log_queue_lines", "Log lines waiting to be flushed", value=f.log_queue
        )
        yield GaugeMetricFamily(
            f"{PREFIX}_jobs_running_here",
            "Attempts this daemon's executor holds a slot for",
            value=f.jobs_running_here,
        )
        yield GaugeMetricFamily(
            f"{PREFIX}_job_waiters",
            "Calls waiting for a job to end (job.wait, run.wait, job.wait_all)",
            value=f.job_waiters,
        )
        yield GaugeMetricFamily(
            f"{PREFIX}_service_waiters",
            "Calls waiting for a service to reach running (service.start/restart with wait_s)",
            value=f.service_waiters,
        )
        yield GaugeMetricFamily(f"{PREFIX}_db_bytes", "Size of the database file", value=f.db_bytes)
        yield GaugeMetricFamily(f"{PREFIX}_wal_bytes", "Size of the WAL file", value=f.wal_bytes)
        yield GaugeMetricFamily(
            f"{PREFIX}_uptime_seconds", "Seconds since the daemon started", value=f.uptime_s
        )


def _file_sizes(db: Path) -> tuple[int, int]:
    sizes = []
    for path in (db, Path(f"{db}-wal")):
        try:
            sizes.append(os.stat(path).st_size)
        except OSError:
            sizes.append(0)
    return sizes[0], sizes[1]


class Metrics:
    """The daemon's metrics registry, its event counters and its scrape."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        r = self.registry
        # RPC calls are tallied in plain lists (the hot path: ~0.5 us a call, against
        # ~3.5 us through prometheus_client's locked Counter and Histogram) and turned
        # into metric families at scrape time.
        self.rpc: dict[str, RpcTally] = {}
        self.job_seconds = Histogram(
            f"{PREFIX}_job_duration_seconds",
            "Duration of job attempts, claim to end, by how the attempt ended",
            ["how"],
            buckets=_JOB_BUCKETS,
            registry=r,
        )
        self._job_seconds_of: dict[str, Histogram] = {}
        self.spawn_failures = Counter(
            f"{PREFIX}_spawn_failures",
            "Job attempts whose process could not be started",
            registry=r,
        )
        self.log_lines_stored = Counter(
            f"{PREFIX}_log_lines_stored",
            "Log lines written to the store by the flusher",
            registry=r,
        )
        self._scraped = _ScrapedCollector(self.rpc)
        r.register(self._scraped)

    def timed(
        self,
        method: str,
        fn: Callable[..., Awaitable[Any]],
        after: Callable[[str], None] | None = None,
    ) -> Callable[..., Any]:
        """`fn` (an RPC handler) counting its calls and timing them under `method`.

        `after(method)` is called when a call succeeded (the change feed's hook).
        """
        tallies = self.rpc
        perf = time.perf_counter

        async def handler(*args: Any, **kwargs: Any) -> Any:
            start = perf()
            try:
                result = await fn(*args, **kwargs)
            except HeroError as exc:
                _tally(tallies, method).end(perf() - start, str(exc.code))
                raise
            except Exception:
                _tally(tallies, method).end(perf() - start, "internal")
                raise
            _tally(tallies, method).end(perf() - start, None)
            if after is not None:
                after(method)
            return result

        return handler

    def attempt_ended(self, rj: RunningJob) -> None:
        """An attempt's end was written: its duration into the histogram."""
        how = rj.terminated_for or ("exited" if rj.child is not None else "not_started")
        child = self._job_seconds_of.get(how)
        if child is None:  # a label lookup (a lock, a tuple, a dict) once per outcome, not per job
            child = self._job_seconds_of[how] = self.job_seconds.labels(how)
        child.observe(time.monotonic() - rj.claimed_at)

    async def scrape(self, app: App) -> Scraped:
        """Read the scrape-time figures: the store through its readers, files off the loop."""
        from hero_procd.store.dashboard import DashboardApi

        reads = DashboardApi(app.store.pool)
        statuses = await app.store.services.status_all()
        db_bytes, wal_bytes = await offload(lambda: _file_sizes(app.config.db_path))
        executor = app.executor
        return Scraped(
            jobs=await reads.jobs_by_status(),
            services=await reads.services_by_state(),
            restarts={s["name"]: int(s["restarts"] or 0) for s in statuses},
            manual_restarts={s["name"]: int(s["manual_restarts"] or 0) for s in statuses},
            health={s["name"]: s["health"] for s in statuses},
            spawns=executor.spawned if executor is not None else 0,
            dropped_log_lines=await app.store.logs.dropped_total(),
            write_queue=app.store.pool.writer.pending(),
            log_queue=executor.flusher.pending() if executor is not None else 0,
            jobs_running_here=len(executor.running) if executor is not None else 0,
            job_waiters=executor.waiters() if executor is not None else 0,
            service_waiters=app.supervisor.waiters if app.supervisor is not None else 0,
            db_bytes=db_bytes,
            wal_bytes=wal_bytes,
            uptime_s=app.uptime_s(),
        )

    async def render(self, app: App) -> bytes:
        """The Prometheus text of every metric, generated off the event loop."""
        figures = await self.scrape(app)

        def generate() -> bytes:
            # The offload thread runs one piece at a time: no other scrape swaps the figures.
            self._scraped.figures = figures
            return generate_latest(self.registry)

        return await offload(generate)
