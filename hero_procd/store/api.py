"""The store's interface as the engine sees it: guarded transitions, claims, intents, appends.

The engine (executor, flusher) is typed against these Protocols, not against
the SQLite classes, so a second backend (PostgreSQL, several nodes) is a
second implementation of the same methods; nothing above `store/` names a
query or a connection. mypy checks that the SQLite implementation conforms
(see the assignments at the bottom).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from hero_procd.secretbox import SecretBox
from hero_procd.store.jobs import (
    AttemptEnd,
    CancelOutcome,
    ClaimedJob,
    Finished,
    GroupRoom,
    JobsApi,
    Settled,
)
from hero_procd.store.logs import BatchWritten, LogRow, LogsApi
from hero_procd.store.records import Job
from hero_procd.store.secrets import SecretsApi, Unlocked


class JobStore(Protocol):
    """Jobs: every status change is one guarded transition, committed when the call returns."""

    async def claim(
        self, n: int, token: str, groups: GroupRoom, at: float | None = None
    ) -> list[ClaimedJob]:
        """Claim up to n ready jobs (queued → running) within group limits."""
        ...

    async def set_pid(self, job_id: int, token: str, pid: int, start_time: float | None) -> bool:
        """Record an attempt's process while its claim owns it."""
        ...

    async def set_pids(self, pids: Sequence[tuple[int, str, int, float | None]]) -> None:
        """`set_pid` of several attempts (job id, token, pid, start time), as one unit."""
        ...

    async def finish(self, job_id: int, token: str, end: AttemptEnd) -> Finished | None:
        """End an attempt by the precedence rules; None if another outcome won."""
        ...

    async def finish_many(
        self,
        ends: Sequence[tuple[int, str, AttemptEnd]],
        pids: Sequence[tuple[int, str, int, float | None]] = (),
    ) -> list[Finished | None]:
        """`finish` of several attempts (job id, token, end) as one unit, in order, after
        `set_pids(pids)` in that unit."""
        ...

    async def cancel(self, job_id: int) -> CancelOutcome:
        """Cancel now (queued) or record the intent (running); refuse a finished job."""
        ...

    async def cancel_run(self, run_id: int) -> tuple[Settled, list[int]]:
        """Cancel a run's queued jobs; the running ones get the intent (their ids)."""
        ...

    async def recover(self, rows: Sequence[Any]) -> tuple[Settled, int]:
        """Settle the attempts a previous daemon left running."""
        ...

    async def running_rows(self, mine: bool = False) -> list[Any]:
        """Jobs the store says are running (id, pid, pid_start_time, …); `mine`: only
        those of this node (or of no node)."""
        ...

    async def cancel_requested_mine(self) -> list[int]:
        """This node's running attempts whose cancel was asked (through any node)."""
        ...

    async def next_ready_at(self, at: float) -> float | None:
        """When the earliest job in backoff becomes ready."""
        ...

    async def get(self, job_id: int) -> Job:
        """One job, or NotFound."""
        ...

    async def statuses(self, ids: Sequence[int]) -> dict[int, str]:
        """The status of each of `ids` that exists."""
        ...


class LogStore(Protocol):
    """Log lines: appended in batches with each owner's counters."""

    async def write_batch(
        self,
        rows: Sequence[LogRow],
        counters: Sequence[tuple[str, str, int, int]],
        trims: Sequence[tuple[str, str, int]],
        one_by_one: bool = False,
    ) -> BatchWritten:
        """Store lines, advance owners' counters (last seq, dropped), trim to the cap."""
        ...

    async def last_seq(self, owner_kind: str, owner_id: str) -> int:
        """An owner's sequence high-water mark."""
        ...


class SecretStore(Protocol):
    """Secrets: values sealed with a key kept outside the database (hero_procd/secretbox.py).

    Every backend stores only `SecretBox.seal` output and a key check, and refuses
    (KeyFileError naming the key file, changing nothing) a key that is not its own.
    """

    async def has_key(self) -> bool:
        """Whether the database's secrets were already sealed with some key."""
        ...

    async def unlock(self, box: SecretBox) -> Unlocked:
        """Check the key against the database's, then seal values stored in clear."""
        ...

    async def set(self, name: str, value: str) -> None:
        """Create or replace a secret (stored sealed)."""
        ...

    async def get(self, name: str) -> str:
        """A secret's value, or NotFound."""
        ...

    async def resolve(self, wanted: dict[str, str]) -> dict[str, str]:
        """{VAR: secret name} → {VAR: value}; NotFound names the first missing secret."""
        ...


def _conforms(
    jobs: JobsApi, logs: LogsApi, secrets: SecretsApi
) -> tuple[JobStore, LogStore, SecretStore]:
    """Never called: mypy checks here that the SQLite store implements the interface."""
    return jobs, logs, secrets
