"""CPU-heavy work off the event loop, one piece at a time.

Building 10,000 rows or checking 50,000 batch items takes tens of
milliseconds of pure Python. On a thread it no longer blocks the loop, but
it still needs the GIL: several such threads at once would keep the loop
waiting for it. One worker thread serialises them, so the loop competes with
one of them at most (and with the database threads, which mostly wait on
SQLite with the GIL released).

Freeing is work too: the 200,000 objects of a 50,000-job batch take tens of
milliseconds to deallocate, in one C loop that holds the GIL. `discard`
frees big lists on the worker, a slice at a time (the loop gets the GIL
between slices), once the answer no longer needs them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from hero_procd import gcpause

T = TypeVar("T")

_WORKER = ThreadPoolExecutor(max_workers=1, thread_name_prefix="offload")
# Items freed per slice by `discard`: ~1 ms of deallocation each.
DISCARD_SLICE = 2000


async def offload(fn: Callable[[], T]) -> T:
    """Run `fn()` on the offload thread; its result."""
    return await asyncio.get_running_loop().run_in_executor(_WORKER, fn)


def _clear_in_slices(items: list[Any]) -> None:
    try:
        while items:
            del items[-DISCARD_SLICE:]
    finally:
        gcpause.release()


def discard(*lists: list[Any]) -> None:
    """Empty these lists on the offload thread, a slice at a time (their items are freed there).

    For a request's own big lists once its answer is built: nothing else may still use them.
    The collector is paused from now until they are gone: resumed earlier (when the request
    ends), its next collection would walk every object still waiting to be freed.
    """
    for items in lists:
        if items:
            gcpause.hold()
            try:
                _WORKER.submit(_clear_in_slices, items)
            except BaseException:
                gcpause.release()
                raise
