"""Keeping Python's cyclic garbage collector from stalling the event loop on big requests.

A 50,000-job `job.submit_batch` makes some 400,000 container objects (the
parsed frame, the checked requests, the rows) that live for about a second
and die by reference counting: none is part of a cycle. With the collector
on, allocating them sets off full collections that walk every one of them
while holding the GIL, 100-200 ms each and several per batch (measured: all
collected nothing), and the event loop, which needs the same GIL, answers no
one meanwhile. Building a 10,000-row `job.list` page does the same on a
smaller scale.

So while a big request is being handled, automatic collection is off
(`paused()`, nested and shared by concurrent requests: the last one out turns
it back on), except while it waits for something else (`lifted()`: job.wait,
run.wait, a service verb), which can take an hour. Freed objects leave the
collector's count as they die, so turning it back on sets off no catch-up
collection. And once the daemon has
started, `freeze_startup()` moves everything made so far (modules,
functions, the engines) out of the collector's sight for good, so a full
collection walks only what is alive since: tens of microseconds at rest
instead of ~45 ms.
"""

from __future__ import annotations

import contextlib
import contextvars
import gc
import threading
from collections.abc import Iterator

_lock = threading.Lock()
_holders = 0
_resume = False  # whether the collector was on when the first holder paused it


def hold() -> None:
    """Pause automatic collection until the matching `release` (prefer `paused()`)."""
    global _holders, _resume
    with _lock:
        if _holders == 0:
            _resume = gc.isenabled()
            gc.disable()
        _holders += 1


def release() -> None:
    """End one `hold`; the last one out turns automatic collection back on."""
    global _holders
    with _lock:
        _holders -= 1
        if _holders == 0 and _resume:
            gc.enable()


class _Hold:
    """One `paused()` block: whether it holds a pause now, whether it has ended."""

    __slots__ = ("done", "held")

    def __init__(self) -> None:
        self.held = True
        self.done = False


# The `paused()` blocks the running code is inside of (tasks made inside inherit them:
# jsonrpcserver runs each request in a task of its own), for `lifted()`.
_blocks: contextvars.ContextVar[tuple[_Hold, ...]] = contextvars.ContextVar(
    "gcpause_blocks", default=()
)


@contextlib.contextmanager
def paused(when: bool = True) -> Iterator[None]:
    """Automatic garbage collection off for the duration of the block (if `when`)."""
    if not when:
        yield
        return
    hold()
    block = _Hold()
    outer = _blocks.get()
    _blocks.set((*outer, block))
    try:
        yield
    finally:
        _blocks.set(outer)
        block.done = True
        if block.held:
            block.held = False
            release()


@contextlib.contextmanager
def lifted() -> Iterator[None]:
    """The pauses of the blocks this code is inside of let go for the block: a big request
    that then waits (for a job, a run, a service) must not keep the collector off meanwhile.

    Loop thread only, like `paused()` blocks.
    """
    mine = [b for b in _blocks.get() if b.held and not b.done]
    for block in mine:
        block.held = False
        release()
    try:
        yield
    finally:
        for block in mine:
            if not block.done:  # its block ended meanwhile: it holds nothing any more
                block.held = True
                hold()


def holders() -> int:
    """How many blocks hold the collector paused now (for tests and system.info)."""
    return _holders


def freeze_startup() -> None:
    """Collect once, then keep every object alive now out of all later collections."""
    gc.collect()
    gc.freeze()
