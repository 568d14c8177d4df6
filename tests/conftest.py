"""Shared fixtures of the fast tests: a real store — a SQLite file in pytest's tmp_path,
and the same tests again on PostgreSQL (a schema of their own, see tests/pg.py).

aiosqlite connections belong to the event loop that opened them, so a store
is opened, used and closed inside one `asyncio.run`: a test hands an async
body to `run_store` and gets the body's result back.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, Protocol, TypeVar

import pytest

from hero_procd.store import Store
from tests.pg import pg_schema, summary_line

T = TypeVar("T")


class StoreRunner(Protocol):
    """Runs an async body against a freshly opened store on a new event loop."""

    def __call__(self, body: Callable[[Store], Awaitable[T]], *, readers: int = 4) -> T:
        """Open the store, await `body(store)`, close the store; the body's result."""
        ...


def run_with_store(path: Path | str, body: Callable[[Store], Awaitable[T]], readers: int = 4) -> T:
    """Open the store at `path` (or URL), await `body(store)` and close it, on one new loop."""

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


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request: pytest.FixtureRequest) -> str:
    """The store backend a contract test runs on (every such test runs on both)."""
    return str(request.param)


@pytest.fixture
def db_url(backend: str, db_path: Path) -> Iterator[Path | str]:
    """The test's database: its SQLite file, or a PostgreSQL schema of its own."""
    if backend == "sqlite":
        yield db_path
        return
    with pg_schema() as dsn:
        yield dsn


@pytest.fixture
def run_store(db_url: Path | str) -> StoreRunner:
    """A `StoreRunner` over the test's database (one per test, reopened per call)."""

    def run(body: Callable[[Store], Awaitable[T]], *, readers: int = 4) -> T:
        return run_with_store(db_url, body, readers)

    return run


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """One visible line when the PostgreSQL side of the tests was skipped."""
    line = summary_line()
    if line is not None:
        terminalreporter.write_line(line, yellow=True)


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

    def unit(conn: Any) -> None:
        for how, sql, params in recorded.calls:
            getattr(conn, how)(sql, params)

    await store.pool.write(unit)
