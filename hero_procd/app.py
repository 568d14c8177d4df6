"""The daemon's shared state, handed to every RPC method."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from hero_procd import __version__
from hero_procd.config import Config
from hero_procd.store import Store

if TYPE_CHECKING:
    from hero_procd.engine.cluster import Node
    from hero_procd.engine.executor import Executor
    from hero_procd.engine.janitor import Janitor
    from hero_procd.engine.scheduler import Scheduler
    from hero_procd.engine.supervisor import Supervisor


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

    def wake_jobs(self) -> None:
        """Tell the executor that jobs were queued (no-op without one)."""
        if self.executor is not None:
            self.executor.wake()

    def uptime_s(self) -> float:
        """Seconds since the daemon started."""
        return round(time.monotonic() - self.started_mono, 3)
