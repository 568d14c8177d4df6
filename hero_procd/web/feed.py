"""One internal change feed, fanned out to every open dashboard (Server-Sent Events).

The engine tells the feed what changed with cheap one-line hooks
(`publish("jobs")`, `publish("services")`, `log_rows(rows)`); nothing polls
the database for it. Topic changes are coalesced: at most one event per
topic per `coalesce_s` reaches a subscriber, however many jobs changed,
and a page that receives one re-reads what it shows. Log lines are handed
to the subscribers of their owner as they are stored, in batches.

With nobody subscribed every hook returns at once; with subscribers and an
idle daemon, no timer runs but each stream's keep-alive.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Iterable, Sequence
from typing import Any

TOPICS = ("jobs", "services", "schedules", "secrets")
# What an RPC method changes, by its area (read-only verbs publish nothing).
_READ_VERBS = frozenset(
    (
        "get",
        "list",
        "logs",
        "status",
        "status_all",
        "events",
        "wait",
        "info",
        "ping",
        "ui",
        "export",
    )
)
_TOPIC_OF_AREA = {
    "job": ("jobs",),
    "run": ("jobs",),
    "action": (),
    "group": ("jobs",),
    "service": ("services",),
    "schedule": ("schedules",),
    "secret": ("secrets",),
    "system": TOPICS,
    "stack": ("services", "schedules", "jobs"),
}
# Lines (and bytes of text) held for one slow subscriber before it is told it missed
# some (it reloads its tail): a stream that reads nothing holds at most this much.
MAX_PENDING_LINES = 2000
MAX_PENDING_BYTES = 1024 * 1024

LogKey = tuple[str, str]


class Subscriber:
    """One open event stream: the topics it follows, the log owner it tails, what is pending."""

    def __init__(self, topics: Iterable[str], log_owner: LogKey | None) -> None:
        self.topics = frozenset(topics)
        self.log_owner = log_owner
        self.changed: set[str] = set()
        self.lines: deque[Sequence[Any]] = deque()
        self.pending_bytes = 0
        self.missed_lines = False
        self.wakeup = asyncio.Event()

    def _changed(self, topics: set[str]) -> None:
        mine = topics & self.topics
        if mine:
            self.changed |= mine
            self.wakeup.set()

    def _line(self, row: Sequence[Any]) -> None:
        size = len(row[5])
        if len(self.lines) >= MAX_PENDING_LINES or self.pending_bytes + size > MAX_PENDING_BYTES:
            self.lines.clear()
            self.pending_bytes = 0
            self.missed_lines = True
        self.lines.append(row)
        self.pending_bytes += size
        self.wakeup.set()

    def take(self) -> tuple[set[str], list[Sequence[Any]], bool]:
        """What happened since the last take: topics changed, new lines, whether lines were lost."""
        changed, self.changed = self.changed, set()
        lines = list(self.lines)
        self.lines.clear()
        self.pending_bytes = 0
        missed, self.missed_lines = self.missed_lines, False
        self.wakeup.clear()
        return changed, lines, missed


class Feed:
    """The change feed: hooks publish into it, event streams subscribe to it."""

    def __init__(self, coalesce_s: float = 0.25) -> None:
        self.coalesce_s = coalesce_s
        self._subscribers: set[Subscriber] = set()
        self._tails: dict[LogKey, set[Subscriber]] = {}
        self._pending: set[str] = set()
        self._timer: asyncio.TimerHandle | None = None
        self.published = 0  # topic events fanned out (a test reads it)

    @property
    def subscribers(self) -> int:
        """How many event streams are open."""
        return len(self._subscribers)

    def subscribe(self, topics: Iterable[str], log_owner: LogKey | None = None) -> Subscriber:
        """A new subscriber; `unsubscribe` it when its stream ends."""
        sub = Subscriber(topics, log_owner)
        self._subscribers.add(sub)
        if log_owner is not None:
            self._tails.setdefault(log_owner, set()).add(sub)
        return sub

    def unsubscribe(self, sub: Subscriber) -> None:
        """Forget a subscriber (its stream ended)."""
        self._subscribers.discard(sub)
        if sub.log_owner is not None:
            tail = self._tails.get(sub.log_owner)
            if tail is not None:
                tail.discard(sub)
                if not tail:
                    del self._tails[sub.log_owner]

    def publish(self, topic: str) -> None:
        """Something under `topic` changed (committed): subscribers hear of it shortly."""
        if not self._subscribers:
            return
        self._pending.add(topic)
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self.coalesce_s, self._fan_out)

    def published_by(self, method: str) -> None:
        """An RPC method succeeded: publish the topics its area changes (none for reads)."""
        if not self._subscribers:
            return
        area, _, verb = method.partition(".")
        if verb in _READ_VERBS:
            return
        for topic in _TOPIC_OF_AREA.get(area, ()):
            self.publish(topic)

    def _fan_out(self) -> None:
        self._timer = None
        topics, self._pending = self._pending, set()
        self.published += 1
        for sub in self._subscribers:
            sub._changed(topics)

    def log_rows(self, rows: Sequence[Sequence[Any]]) -> None:
        """Log rows (owner_kind, owner_id, seq, stream, ts, text) were stored."""
        if not self._tails:
            return
        tails = self._tails
        for row in rows:
            subs = tails.get((row[0], row[1]))
            if subs:
                for sub in subs:
                    sub._line(row)

    def close(self) -> None:
        """Stop the pending fan-out (daemon shutdown)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
