"""Big frames are handled with the garbage collector paused, and it comes back on after."""

from __future__ import annotations

import asyncio
import gc
from typing import Any

import orjson

from hero_procd import gcpause
from hero_procd.app import App
from hero_procd.config import Config
from hero_procd.params import Params
from hero_procd.rpc.dispatch import Dispatcher
from hero_procd.rpc.registry import load_methods
from hero_procd.store import Store
from tests.conftest import StoreRunner


def _frame(method: str, params: dict[str, Any]) -> bytes:
    return orjson.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": params})


def test_collector_paused_for_big_frames_only(run_store: StoreRunner) -> None:
    """A handler sees the collector off for a 200 KiB frame, on for a small one; on after."""
    seen: list[bool] = []

    async def probe(app: App, p: Params) -> dict[str, Any]:
        p.take_all()
        seen.append(gc.isenabled())
        return {}

    async def body(store: Store) -> None:
        app = App(config=Config(), store=store, openrpc={})
        dispatcher = Dispatcher(app, {"probe.it": probe})
        for pad in (10, 200_000, 10):
            answer = await dispatcher.handle(_frame("probe.it", {"pad": "x" * pad}))
            assert answer is not None and b'"result"' in answer
        assert seen == [True, False, True]
        assert gc.isenabled() and gcpause.holders() == 0

    gc.enable()
    run_store(body)


def test_big_submit_batch_leaves_the_collector_on(run_store: StoreRunner) -> None:
    """A 6,000-job submit_batch through the real method: every job written, and once its
    lists are freed on the offload thread nothing holds the collector paused."""

    async def body(store: Store) -> None:
        app = App(config=Config(), store=store, openrpc={})
        dispatcher = Dispatcher(app, load_methods())
        items = [{"command": ["/bin/true", str(i)]} for i in range(6000)]
        answer = await dispatcher.handle(_frame("job.submit_batch", {"jobs": items}))
        assert answer is not None
        result = orjson.loads(answer)["result"]
        assert len(result["submitted"]) == 6000 and result["failed"] == []
        for _ in range(1000):
            if gcpause.holders() == 0:
                break
            await asyncio.sleep(0.01)
        assert gcpause.holders() == 0 and gc.isenabled()
        page = orjson.loads((await store.jobs.list_json(limit=10_000))[0])
        assert [j["command"][1] for j in page] == [str(i) for i in range(6000)]

    gc.enable()
    run_store(body)
