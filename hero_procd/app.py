"""The daemon's shared state, handed to every RPC method."""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from hero_procd import __version__
from hero_procd.config import Config
from hero_procd.metrics import Metrics
from hero_procd.store import Store
from hero_procd.web.feed import Feed

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Sequence

    from hero_procd.engine.cluster import Node
    from hero_procd.engine.contain import Containment
    from hero_procd.engine.executor import Executor
    from hero_procd.engine.janitor import Janitor
    from hero_procd.engine.scheduler import Scheduler
    from hero_procd.engine.supervisor import Supervisor
    from hero_procd.engine.watchdog import Watchdog


@dataclass
class Stats:
    """Counters shown by `system.info`."""

    requests: int = 0
    dropped_log_lines: int = 0
    log_lines_trimmed: int = 0


@dataclass
class App:
    """What a running daemon is made of."""

    config: Config
    store: Store
    openrpc: dict[str, Any]
    started_at: float = field(default_factory=time.time)
    started_mono: float = field(default_factory=time.monotonic)
    pid: int = field(default_factory=os.getpid)
    version: str = __version__
    stats: Stats = field(default_factory=Stats)
    executor: Executor | None = None
    supervisor: Supervisor | None = None
    scheduler: Scheduler | None = None
    janitor: Janitor | None = None
    node: Node | None = None
    containment: Containment | None = None
    # Kills the cells if the daemon dies without a stop (cgroups only; engine/watchdog.py).
    watchdog: Watchdog | None = None
    # The dashboard's change feed and the Prometheus metrics (hero_procd/web, metrics.py).
    feed: Feed = field(default_factory=Feed)
    metrics: Metrics = field(default_factory=Metrics)
    # The browser listener's URLs once it is bound (None: not enabled); see system.ui.
    http_url: str | None = None
    http_login_url: str | None = None
    # One stack apply at a time, its carry-out included (hero_procd/stack.py).
    stack_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    # Set when the daemon must stop on its own (its node's name taken by another daemon):
    # it stops as on SIGTERM, then exits 1 with this line (daemon.serve).
    exit_reason: str | None = None
    stop_requested: asyncio.Event = field(default_factory=asyncio.Event)

    def exit_with(self, reason: str) -> None:
        """Stop the daemon gracefully, then exit 1 saying `reason` (the first one given)."""
        if self.exit_reason is None:
            self.exit_reason = reason
        self.stop_requested.set()

    @property
    def jobs(self) -> Executor:
        """The job executor (present once the daemon has started it)."""
        assert self.executor is not None, "executor not started"
        return self.executor

    @property
    def services(self) -> Supervisor:
        """The service supervisor (present once the daemon has started it)."""
        assert self.supervisor is not None, "supervisor not started"
        return self.supervisor

    @property
    def contain(self) -> Containment:
        """How children are contained: what the daemon set up, else process groups."""
        if self.containment is None:
            from hero_procd.engine.contain import ProcessGroupContainment

            self.containment = ProcessGroupContainment("no containment was set up")
        return self.containment

    def check_limits(self, spec: dict[str, Any], path: str = "") -> None:
        """Refuse limit fields this daemon cannot enforce (-32602 naming the controller)."""
        if self.containment is not None:
            self.containment.check_limits(spec, path)

    def wake_jobs(self) -> None:
        """Tell the executor that jobs were queued (no-op without one)."""
        if self.executor is not None:
            self.executor.wake()
        self.feed.publish("jobs")

    def observed(self, method: str, fn: Callable[..., Awaitable[Any]]) -> Callable[..., Any]:
        """An RPC handler counted and timed in the metrics, publishing what it changed."""
        return self.metrics.timed(method, fn, after=self.feed.published_by)

    def logs_stored(self, rows: Sequence[Sequence[Any]], written: int) -> None:
        """The flusher stored a batch of log lines: count them, hand them to live tails."""
        self.metrics.log_lines_stored.inc(written)
        self.feed.log_rows(rows)

    def uptime_s(self) -> float:
        """Seconds since the daemon started."""
        return round(time.monotonic() - self.started_mono, 3)
