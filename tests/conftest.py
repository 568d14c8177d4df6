"""Shared fixtures of the fast tests: a real SQLite store in pytest's tmp_path.

aiosqlite connections belong to the event loop that opened them, so a store
is opened, used and closed inside one `asyncio.run`: a test hands an async
body to `run_store` and gets the body's result back.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, Protocol, TypeVar

import pytest

from hero_procd.store import Store

T = TypeVar("T")


class StoreRunner(Protocol):
    """Runs an async body against a freshly opened store on a new event loop."""

    def __call__(self, body: Callable[[Store], Awaitable[T]], *, readers: int = 4) -> T:
        """Open the store, await `body(store)`, close the store; the body's result."""
        ...


def run_with_store(path: Path, body: Callable[[Store], Awaitable[T]], readers: int = 4) -> T:
    """Open the store at `path`, await `body(store)` and close it, all on one new loop."""

    async def main() -> T:
        store = await Store.open(path, readers=readers)
        try:
            return await body(store)
        finally:
            await store.close()

    return asyncio.run(main())


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    """Where the test's database file lives."""
    return tmp_path / "t.db"


@pytest.fixture
def run_store(db_path: Path) -> StoreRunner:
    """A `StoreRunner` over the test's database file (one file per test, reopened per call)."""

    def run(body: Callable[[Store], Awaitable[T]], *, readers: int = 4) -> T:
        return run_with_store(db_path, body, readers)

    return run


class Statements:
    """Statements recorded by `write_tx`, run together as one unit of the writer."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, Any]] = []

    async def execute(self, sql: str, params: Any = ()) -> None:
        """Record one statement (run when the block ends)."""
        self.calls.append(("execute", sql, params))

    async def executemany(self, sql: str, rows: Any) -> None:
        """Record one executemany (run when the block ends)."""
        self.calls.append(("executemany", sql, rows))


@contextlib.asynccontextmanager
async def write_tx(store: Store) -> AsyncIterator[Statements]:
    """Test set-up writes: the block's statements run as ONE unit (one transaction) at its end."""
    recorded = Statements()
    yield recorded

    def unit(conn: sqlite3.Connection) -> None:
        for how, sql, params in recorded.calls:
            getattr(conn, how)(sql, params)

    await store.pool.write(unit)
