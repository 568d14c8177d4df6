"""Attacks on the writer (store/pool.py): units that misbehave, a closing writer, a full disk.

Every later write must still work after a unit misbehaves, a caller must get an
answer for every unit it handed over, and a database error must be told
precisely without losing what was committed.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest

from hero_procd.errors import StorageError
from hero_procd.store import Store
from hero_procd.store.pool import Conn
from tests.conftest import run_with_store
from tests.tmpfs import fill, tiny_tmpfs

T = TypeVar("T")

# A write that does not answer within this time is a wedged writer.
ANSWER_S = 2.0


class Boom(BaseException):
    """Neither an Exception nor a cancellation: what `except Exception` lets through."""


def _make_table(conn: Conn) -> None:
    conn.execute("CREATE TABLE IF NOT EXISTS t (v INTEGER)")


def _insert(v: int) -> Callable[[Conn], int]:
    def unit(conn: Conn) -> int:
        return conn.execute("INSERT INTO t (v) VALUES (?)", (v,)).rowcount

    return unit


def run_bounded(path: Path, body: Callable[[Store], Awaitable[T]]) -> tuple[T, bool]:
    """Like `run_with_store`, but a close that hangs is abandoned after ANSWER_S:
    (the body's result, whether the store closed)."""

    async def main() -> tuple[T, bool]:
        store = await Store.open(path)
        try:
            result = await body(store)
        finally:
            try:
                await asyncio.wait_for(store.close(), ANSWER_S)
                closed = True
            except TimeoutError:
                closed = False
        return result, closed

    try:
        return asyncio.run(main())
    except BaseException as exc:
        pytest.fail(f"{exc!r} escaped the writer and stopped the event loop")


async def _values(store: Store) -> list[int]:
    return [r[0] for r in await store.pool.fetch_all("SELECT v FROM t ORDER BY v")]


@pytest.mark.parametrize(
    "exc",
    [Boom(), KeyboardInterrupt(), SystemExit(3), asyncio.CancelledError(), GeneratorExit()],
    ids=["BaseException", "KeyboardInterrupt", "SystemExit", "CancelledError", "GeneratorExit"],
)
def test_a_unit_raising_a_base_exception_alone_never_wedges_the_writer(
    db_path: Path, exc: BaseException
) -> None:
    """A unit alone in its group raises a BaseException after writing: its caller gets an
    error, its write is undone, and the next write commits (not 'within a transaction')."""

    async def body(store: Store) -> tuple[str, list[int], int]:
        await store.pool.write(_make_table)

        def bad(conn: Conn) -> None:
            conn.execute("INSERT INTO t (v) VALUES (1)")
            raise exc

        try:
            await asyncio.wait_for(store.pool.write(bad), ANSWER_S)
            outcome = "no error"
        except TimeoutError:
            outcome = "no answer"
        except BaseException as err:
            outcome = type(err).__name__
        try:
            after = await asyncio.wait_for(store.pool.write(_insert(2)), ANSWER_S)
        except TimeoutError:
            after = -1
        return outcome, await _values(store), after

    (outcome, values, after), closed = run_bounded(db_path, body)
    assert closed, "the store did not close"
    assert outcome not in ("no error", "no answer"), outcome
    assert after == 1, "the write after the failing unit must commit"
    assert values == [2], values


def test_a_unit_raising_a_base_exception_in_a_group_fails_only_itself(db_path: Path) -> None:
    """Three units in one group, the middle one raises a BaseException: the others commit."""

    async def body(store: Store) -> tuple[list[str], list[int]]:
        await store.pool.write(_make_table)

        def bad(conn: Conn) -> None:
            conn.execute("INSERT INTO t (v) VALUES (99)")
            raise Boom()

        calls = [store.pool.write(_insert(1)), store.pool.write(bad), store.pool.write(_insert(3))]
        try:
            results = await asyncio.wait_for(
                asyncio.gather(*calls, return_exceptions=True), ANSWER_S
            )
        except TimeoutError:
            return ["no answer"], []
        return [type(r).__name__ for r in results], await _values(store)

    (kinds, values), closed = run_bounded(db_path, body)
    assert kinds != ["no answer"], "a group with a unit raising a BaseException never answered"
    assert closed, "the store did not close"
    assert kinds[0] == "int" and kinds[2] == "int", kinds
    assert kinds[1] != "int", kinds
    assert values == [1, 3], values


def test_close_answers_the_unit_in_flight(db_path: Path) -> None:
    """`close` while a group is being written: its caller gets the committed result
    (or an error), never an await that lasts forever."""

    async def main() -> tuple[str, list[int]]:
        store = await Store.open(db_path)
        await store.pool.write(_make_table)
        started = threading.Event()

        def slow(conn: Conn) -> int:
            started.set()
            time.sleep(0.3)
            return conn.execute("INSERT INTO t (v) VALUES (7)").rowcount

        task = asyncio.ensure_future(store.pool.write(slow))
        await asyncio.to_thread(started.wait, ANSWER_S)
        await asyncio.wait_for(store.close(), ANSWER_S)
        try:
            outcome = str(await asyncio.wait_for(task, ANSWER_S))
        except TimeoutError:
            outcome = "no answer"
        except StorageError as err:
            outcome = f"error: {err}"
        conn = sqlite3.connect(db_path)
        try:
            values = [r[0] for r in conn.execute("SELECT v FROM t")]
        finally:
            conn.close()
        return outcome, values

    outcome, values = asyncio.run(main())
    assert values == [7], values  # it was committed
    assert outcome == "1", f"the caller of a committed unit was told: {outcome}"


def test_close_with_a_unit_that_never_returns_is_bounded(db_path: Path) -> None:
    """A shutdown must not hang for ever behind one unit that does not return."""
    release = threading.Event()

    async def main() -> float:
        store = await Store.open(db_path)

        def stuck(conn: Conn) -> None:
            release.wait(30)

        task = asyncio.ensure_future(store.pool.write(stuck))
        await asyncio.sleep(0.05)
        began = time.monotonic()
        try:
            await asyncio.wait_for(store.close(), 15.0)
        except TimeoutError:
            return -1.0
        finally:
            release.set()
            with contextlib.suppress(BaseException):
                await asyncio.wait_for(task, ANSWER_S)
        return time.monotonic() - began

    took = asyncio.run(main())
    assert took >= 0, "Writer.close waited for ever behind a unit that never returns"


# -- a full disk ------------------------------------------------------------------------


@pytest.fixture
def tiny_fs(tmp_path: Path) -> Iterator[Path]:
    """A 2 MiB tmpfs (root only), unmounted after the test."""
    with tiny_tmpfs(tmp_path / "tiny", "2m") as where:
        yield where


@pytest.mark.parametrize("group", [1, 3], ids=["alone", "in-a-group"])
def test_a_full_disk_is_told_precisely_and_the_writer_recovers(tiny_fs: Path, group: int) -> None:
    """Disk full mid-unit: every caller is told 'full' (not a follow-up error of the
    rollback), nothing committed is lost, and writes work again once space returns."""
    path = tiny_fs / "db" / "hp.db"

    async def body(store: Store) -> tuple[list[str], list[int], int]:
        await store.pool.write(_make_table)
        await store.pool.write(_insert(1))
        await store.checkpoint()
        filler = fill(tiny_fs)

        def big(conn: Conn) -> None:
            # Several pages more than the page cache holds: spills to the WAL mid-unit.
            conn.executemany("INSERT INTO t (v) VALUES (?)", ((1000 + i,) for i in range(200_000)))

        results = await asyncio.wait_for(
            asyncio.gather(*(store.pool.write(big) for _ in range(group)), return_exceptions=True),
            30,
        )
        errors = [str(getattr(r, "data", "")) + " " + str(r) for r in results]
        filler.unlink()
        after = await asyncio.wait_for(store.pool.write(_insert(2)), ANSWER_S)
        return errors, await _values(store), after

    errors, values, after = run_with_store(path, body)
    for err in errors:
        assert "full" in err, f"a full disk was reported as: {err}"
    assert values == [1, 2], values[:5]
    assert after == 1
