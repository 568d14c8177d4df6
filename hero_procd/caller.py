"""Who is asking: the connection a call came on, so that a long wait ends with its asker.

The RPC server sets `PEER_GONE` in each connection's serving task to an event that
is set when the connection is lost. A wait (job.wait, run.wait, job.wait_all, up to
an hour) reads it and ends early when nobody is left to read its answer, so
clients that disconnect mid-wait leave no waiter behind. Calls with effects
(job.cancel, service.stop, …) never look at it: they always run to the end.
"""

from __future__ import annotations

import asyncio
from contextvars import ContextVar

PEER_GONE: ContextVar[asyncio.Event | None] = ContextVar("hero_proc_peer_gone", default=None)


def peer_gone() -> asyncio.Event | None:
    """The event set when the caller's connection is lost (None outside a connection)."""
    return PEER_GONE.get()
