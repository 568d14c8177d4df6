"""Readiness of many short-lived descriptors through one epoll set on the event loop.

Every job attempt has three descriptors to watch (its two output pipes and its
pidfd), most for a fraction of a second. uvloop's add_reader and remove_reader
make, start, stop and close a poll handle for each (~10 us of the loop's time a
descriptor, measured here); an epoll set of our own, itself one reader of the
loop, takes a descriptor in one epoll_ctl and reports the ready ones of a loop
step in one epoll_wait. Level-triggered, like add_reader: a callback that does
not consume what is ready is called again at the next step.
"""

from __future__ import annotations

import asyncio
import select
import weakref
from collections.abc import Callable
from typing import Any

_MAX_EVENTS = 1024


class FdWatcher:
    """`add(fd, callback, *args)`: `callback(*args)` whenever fd is readable (or hung up)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._epoll = select.epoll()  # close-on-exec
        self._callbacks: dict[int, tuple[Callable[..., None], tuple[Any, ...]]] = {}
        # Descriptors registered during a dispatch: an event of the same number read
        # before was for the descriptor that had it before (closed meanwhile).
        self._fresh: set[int] = set()
        self._dispatching = False
        # The loop holds the watcher (not the other way round): once the loop is gone,
        # so is the watcher, and its epoll descriptor is closed with it.
        loop.add_reader(self._epoll.fileno(), self._dispatch)

    def add(self, fd: int, callback: Callable[..., None], *args: Any) -> None:
        """Watch fd (not watched yet) until `remove(fd)`; remove it before closing it."""
        self._epoll.register(fd, select.EPOLLIN)
        self._callbacks[fd] = (callback, args)
        if self._dispatching:
            self._fresh.add(fd)

    def remove(self, fd: int) -> bool:
        """Stop watching fd; False if it was not watched."""
        if self._callbacks.pop(fd, None) is None:
            return False
        self._epoll.unregister(fd)
        return True

    def _dispatch(self) -> None:
        try:
            events = self._epoll.poll(0, _MAX_EVENTS)
        except InterruptedError:
            return
        self._dispatching = True
        try:
            for fd, _ in events:
                if fd in self._fresh:
                    continue
                entry = self._callbacks.get(fd)
                if entry is None:  # removed by a callback before it
                    continue
                try:
                    entry[0](*entry[1])
                except Exception as exc:  # as the loop does for a reader's callback
                    asyncio.get_running_loop().call_exception_handler(
                        {"message": "exception in an fd callback", "exception": exc}
                    )
        finally:
            self._dispatching = False
            self._fresh.clear()


_WATCHERS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, FdWatcher] = (
    weakref.WeakKeyDictionary()
)


# The last loop asked for and its watcher: the daemon has one loop, and a weak
# dictionary's lookup (a weak reference made per call) cost more than the watching.
_last: tuple[weakref.ref[asyncio.AbstractEventLoop], FdWatcher] | None = None


def watcher() -> FdWatcher:
    """The running loop's watcher (made on first use)."""
    global _last
    loop = asyncio.get_running_loop()
    if _last is not None and _last[0]() is loop:
        return _last[1]
    found = _WATCHERS.get(loop)
    if found is None:
        found = _WATCHERS[loop] = FdWatcher(loop)
    _last = (weakref.ref(loop), found)
    return found
