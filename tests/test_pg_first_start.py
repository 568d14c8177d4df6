"""Several nodes' first starts on one fresh PostgreSQL schema at the same moment: the
migrations run once and the first secrets key is recorded once; every node agrees on it
(a node holding another key is refused with the key file named, never a duplicate key)."""

from __future__ import annotations

import asyncio
import os
import random
from pathlib import Path

import pytest

from hero_procd.secretbox import KeyFileError, SecretBox
from hero_procd.store import Store
from tests.pg import pg_schema

NODES = 4


async def _first_starts(dsn: str, keys: list[bytes]) -> list[object]:
    """Open one store per key at once, then unlock each with its key at once (as daemons
    do: the writer's check-then-record races the others'); each one's outcome."""

    async def open_one(i: int) -> Store:
        await asyncio.sleep(random.uniform(0.0, 0.01))
        return await Store.open(dsn, readers=1, node=f"n{i}")

    stores = await asyncio.gather(*(open_one(i) for i in range(len(keys))))
    try:

        async def unlock(store: Store, key: bytes, i: int) -> object:
            await asyncio.sleep(random.uniform(0.0, 0.003))
            try:
                return await store.secrets.unlock(SecretBox(key, Path(f"/keys/n{i}")))
            except Exception as exc:
                return exc

        outcomes = await asyncio.gather(
            *(unlock(s, k, i) for i, (s, k) in enumerate(zip(stores, keys, strict=True)))
        )
        # Whoever unlocked reads what every other unlocked node wrote.
        opened = [s for s, o in zip(stores, outcomes, strict=True) if not isinstance(o, Exception)]
        for i, store in enumerate(opened):
            await store.secrets.set(f"S{i}", f"value {i}")
        for store in opened:
            for i in range(len(opened)):
                assert await store.secrets.get(f"S{i}") == f"value {i}"
        return list(outcomes)
    finally:
        for store in stores:
            await store.close()


@pytest.mark.parametrize("round_", range(8))
def test_first_starts_at_once_record_one_key_and_all_unlock(round_: int) -> None:
    """Four nodes with the same key file: all unlock; exactly one recorded the key."""
    key = os.urandom(32)
    with pg_schema("first") as dsn:
        outcomes = asyncio.run(_first_starts(dsn, [key] * NODES))
    errors = [o for o in outcomes if isinstance(o, Exception)]
    assert errors == [], [getattr(e, "data", e) for e in errors]
    assert sum(bool(getattr(o, "first_key", False)) for o in outcomes) == 1, outcomes


@pytest.mark.parametrize("round_", range(4))
def test_first_starts_at_once_with_two_keys_one_wins_the_other_is_told(round_: int) -> None:
    """Two nodes with key A and two with key B start at once: the key recorded first is
    the cluster's; the nodes holding the other are refused naming their key file (not a
    constraint error), the others unlock."""
    a, b = os.urandom(32), os.urandom(32)
    with pg_schema("first") as dsn:
        outcomes = asyncio.run(_first_starts(dsn, [a, b, a, b]))
    refused = [i for i, o in enumerate(outcomes) if isinstance(o, Exception)]
    assert refused in ([1, 3], [0, 2]), outcomes
    for i in refused:
        exc = outcomes[i]
        assert isinstance(exc, KeyFileError), repr(exc)
        assert f"/keys/n{i}" in str(exc) and "is not the key" in str(exc), str(exc)
