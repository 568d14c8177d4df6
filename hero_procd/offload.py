"""CPU-heavy work off the event loop, one piece at a time.

Building 10,000 rows or checking 50,000 batch items takes tens of
milliseconds of pure Python. On a thread it no longer blocks the loop, but
it still needs the GIL: several such threads at once would keep the loop
waiting for it. One worker thread serialises them, so the loop competes with
one of them at most (and with the database threads, which mostly wait on
SQLite with the GIL released).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")

_WORKER = ThreadPoolExecutor(max_workers=1, thread_name_prefix="offload")


async def offload(fn: Callable[[], T]) -> T:
    """Run `fn()` on the offload thread; its result."""
    return await asyncio.get_running_loop().run_in_executor(_WORKER, fn)
