"""The garbage-collector pause around big requests (hero_procd/gcpause.py)."""

from __future__ import annotations

import asyncio
import gc
import random
import threading
import time
from collections.abc import Iterator

import pytest

from hero_procd import gcpause


@pytest.fixture(autouse=True)
def collector_on() -> Iterator[None]:
    """Every test starts and ends with the collector on and nobody holding the pause."""
    gc.enable()
    yield
    assert gcpause.holders() == 0
    gc.enable()


def test_nested_pauses_resume_once_the_last_ends() -> None:
    """Off while any block holds it; on again after the outermost; `when=False` is a no-op."""
    with gcpause.paused(when=False):
        assert gc.isenabled()
    with gcpause.paused():
        assert not gc.isenabled()
        with gcpause.paused():
            assert not gc.isenabled() and gcpause.holders() == 2
        assert not gc.isenabled()
    assert gc.isenabled()


def test_an_exception_ends_the_pause() -> None:
    """A failing block still turns the collector back on."""
    with pytest.raises(ValueError), gcpause.paused():
        raise ValueError("boom")
    assert gc.isenabled()


def test_a_collector_turned_off_elsewhere_stays_off() -> None:
    """The pause restores what it found, not 'on'."""
    gc.disable()
    with gcpause.paused():
        pass
    assert not gc.isenabled()


def test_overlapping_pauses_from_threads() -> None:
    """Many threads pausing at random moments: off while any holds it, on after all end."""
    errors: list[str] = []

    def worker(seed: int) -> None:
        rnd = random.Random(seed)
        for _ in range(200):
            with gcpause.paused():
                if gc.isenabled():
                    errors.append("collector on inside a pause")
                time.sleep(rnd.random() / 10_000)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert gc.isenabled()


def test_freeze_startup_hides_what_exists() -> None:
    """After freeze_startup, objects alive then are out of the collector's generations."""
    before = gc.get_freeze_count()
    try:
        keep = [[i] for i in range(1000)]
        gcpause.freeze_startup()
        assert gc.get_freeze_count() >= before + 1000
        assert not any(obj is keep for obj in gc.get_objects())
    finally:
        gc.unfreeze()


def test_discard_frees_on_the_worker_with_the_collector_paused_until_done() -> None:
    """Lists handed to discard are emptied on the offload thread; the collector is paused
    from the call (not from when the worker gets to them) until they are gone."""
    from hero_procd import offload

    gate = threading.Event()
    blocker = offload._WORKER.submit(gate.wait, 10)  # the worker is busy elsewhere
    big = [[i] for i in range(50_000)]
    other = [{"k": i} for i in range(5_000)]
    offload.discard(big, other, [])
    assert not gc.isenabled() and gcpause.holders() == 2  # one per non-empty list
    assert len(big) == 50_000, "freed before the worker was free"
    gate.set()
    blocker.result(10)
    deadline = time.monotonic() + 10
    while (big or other or gcpause.holders()) and time.monotonic() < deadline:
        time.sleep(0.001)
    assert big == [] and other == [] and gcpause.holders() == 0
    assert gc.isenabled()


def test_lifted_lets_go_of_the_blocks_it_is_inside_of() -> None:
    """Inside nested paused blocks (even in a task made inside them), a lifted block turns the
    collector on; its end takes the pauses back; outside any block it does nothing."""

    async def request() -> None:
        with gcpause.paused(), gcpause.paused():
            assert gcpause.holders() == 2

            async def method() -> None:  # jsonrpcserver runs the method in a task of its own
                with gcpause.lifted():
                    assert gc.isenabled() and gcpause.holders() == 0
                    await asyncio.sleep(0)
                assert not gc.isenabled() and gcpause.holders() == 2

            await asyncio.gather(method())
        assert gc.isenabled() and gcpause.holders() == 0
        with gcpause.lifted():
            assert gcpause.holders() == 0
        assert gcpause.holders() == 0

    asyncio.run(request())


def test_a_cancelled_wait_and_an_ended_block_balance_the_count() -> None:
    """A wait cancelled inside lifted, and a block that ends while a task it made still
    waits lifted: the count ends at zero, the collector on."""

    async def main() -> None:
        with gcpause.paused():

            async def waits() -> None:
                with gcpause.lifted():
                    await asyncio.sleep(30)

            task = asyncio.ensure_future(waits())
            await asyncio.sleep(0.01)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert gcpause.holders() == 1
            orphan = asyncio.ensure_future(waits())  # outlives the block
            await asyncio.sleep(0.01)
        assert gcpause.holders() == 0 and gc.isenabled()
        orphan.cancel()
        with pytest.raises(asyncio.CancelledError):
            await orphan
        assert gcpause.holders() == 0 and gc.isenabled()

    asyncio.run(main())
