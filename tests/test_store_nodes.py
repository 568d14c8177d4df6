"""NodesApi.claim and the writes that follow it, on both backends: a node's name is
taken in one statement, only if its row is still the one seen; every later write of the
row is for the daemon that holds it."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

from hero_procd.store import Store
from tests.conftest import StoreRunner


async def _open(url: Path | str) -> Store:
    return await Store.open(url, readers=1, node="n1", node_timeout_s=3.0)


def test_claims_of_one_name_at_once_one_wins(run_store: StoreRunner, db_url: Path | str) -> None:
    """Several stores (connections, as several daemons) claim one name at the same moment,
    each having seen no row: exactly one claim writes; the others change nothing."""

    async def body(_: Store) -> None:  # the runner's store made the schema (another node)
        stores = [await _open(db_url) for _ in range(5)]
        store = stores[0]
        seen: tuple[int | None, float] | None = None  # no row yet
        try:
            for round_ in range(5):
                order = list(stores)
                random.shuffle(order)
                won = await asyncio.gather(
                    *(s.nodes.claim("v", 1000 + i, seen) for i, s in enumerate(order))
                )
                assert sum(won) == 1, (round_, won)
                winner = order[won.index(True)]
                (row,) = [n for n in await store.nodes.list(3.0) if n.name == "n1"]
                assert (row.pid, row.started_at) == (winner.nodes.pid, winner.nodes.started_at)
                for s in order:
                    assert await s.nodes.heartbeat() is (s is winner)
                seen = (winner.nodes.pid, winner.nodes.started_at)
        finally:
            for s in stores:
                await s.close()

    run_store(body)


def test_a_taken_row_is_not_heartbeat_revived_or_stopped_by_its_old_holder(
    run_store: StoreRunner, db_url: Path | str
) -> None:
    async def body(_: Store) -> None:
        store, heir = await _open(db_url), await _open(db_url)
        try:
            assert await store.nodes.claim("v", 1, None)
            old = store.nodes
            assert await old.heartbeat() and await old.revive()
            assert await heir.nodes.claim("v", 2, (old.pid, old.started_at))
            assert not await old.heartbeat()
            assert not await old.revive()
            await old.stopped()
            (row,) = [n for n in await store.nodes.list(3.0) if n.name == "n1"]
            assert row.pid == 2 and row.state == "alive"
            # A claim from a stale sight (the old holder's row) changes nothing.
            assert not await old.claim("v", 3, (1, old.started_at))
            await heir.nodes.stopped()
            (row,) = [n for n in await store.nodes.list(3.0) if n.name == "n1"]
            assert row.state == "stopped"
        finally:
            await heir.close()
            await store.close()

    run_store(body)
