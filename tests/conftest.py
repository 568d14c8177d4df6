"""Shared fixtures of the fast tests: a real SQLite store in pytest's tmp_path.

aiosqlite connections belong to the event loop that opened them, so a store
is opened, used and closed inside one `asyncio.run`: a test hands an async
body to `run_store` and gets the body's result back.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Protocol, TypeVar

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
