"""The flusher's promise to whoever waits for an owner: every line stored, or counted."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from hero_procd.app import Stats
from hero_procd.engine.flusher import Flusher
from hero_procd.store import Store
from tests.conftest import run_with_store


def test_flush_owner_returns_once_the_owners_dropped_lines_are_counted(db_path: Path) -> None:
    """Lines of a finished job pushed out of a full buffer by another owner's lines: once
    flush_owner returns (the job's end is written after it), the job's stored count of
    dropped lines includes them (it came one flush later: a job seen finished showed
    fewer lines stored plus dropped than it printed)."""

    async def body(store: Store) -> None:
        flusher = Flusher(store, Stats(), batch_size=100, interval_s=0.05, max_log_lines=10)
        flusher.start()
        try:
            job = await flusher.open_owner("job", "1")
            noisy = await flusher.open_owner("service", "noisy")
            for i in range(5):
                flusher.write_log(job, "stdout", time.time(), f"job {i}")
            for i in range(10):  # in the same loop step: the job's 5 are the oldest
                flusher.write_log(noisy, "stdout", time.time(), f"noisy {i}")
            await asyncio.wait_for(flusher.flush_owner(job), 10)
            stored = len(await store.logs.read("job", "1"))
            assert stored + await store.logs.dropped("job", "1") == 5, stored
            await flusher.drain()
        finally:
            await flusher.drain()

    run_with_store(db_path, body)


def test_drain_writes_counts_of_lines_dropped_with_nothing_left_queued(db_path: Path) -> None:
    """The daemon's stop (drain) when the only thing left is a count of dropped lines: the
    count is written before the flusher stops."""

    async def body(store: Store) -> None:
        flusher = Flusher(store, Stats(), batch_size=100, interval_s=10.0, max_log_lines=10)
        flusher.start()
        job = await flusher.open_owner("job", "2")
        for i in range(25):
            flusher.write_log(job, "stdout", time.time(), f"job {i}")
        await flusher.drain()
        stored = len(await store.logs.read("job", "2"))
        assert stored + await store.logs.dropped("job", "2") == 25, stored

    run_with_store(db_path, body)
