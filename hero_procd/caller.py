"""Who is asking: the connection a call came on, so that a long wait ends with its asker.

The RPC server sets `PEER_GONE` in each connection's serving task to an event that
is set when the connection is lost. A wait (job.wait, run.wait, job.wait_all, up to
an hour) reads it and ends early when nobody is left to read its answer, so
clients that disconnect mid-wait leave no waiter behind. Calls with effects
(job.cancel, service.stop, …) never look at it: they always run to the end.
"""

from __future__ import annotations

import asyncio
import select
import socket
from contextvars import ContextVar

PEER_GONE: ContextVar[asyncio.Event | None] = ContextVar("hero_proc_peer_gone", default=None)


def peer_gone() -> asyncio.Event | None:
    """The event set when the caller's connection is lost (None outside a connection)."""
    return PEER_GONE.get()


def hung_up(sock: socket.socket | None, *, eof_counts: bool = False) -> bool:
    """True if the peer closed its socket, without reading from it.

    An AF_UNIX stream socket whose peer is closed is shut down both ways and polls
    POLLHUP; after the peer's shutdown(SHUT_WR) it polls only POLLRDHUP. A TCP peer's
    close is only its FIN (POLLRDHUP): `eof_counts` takes that as gone (HTTP clients
    do not half-close).
    """
    if sock is None:
        return False
    mask = select.POLLHUP | (select.POLLRDHUP if eof_counts else 0)
    poller = select.poll()
    try:
        poller.register(sock.fileno(), mask)
        return any(events & mask for _, events in poller.poll(0))
    except (OSError, ValueError):
        return True


async def watch_hang_up(
    sock: socket.socket | None, gone: asyncio.Event, every_s: float = 0.5
) -> None:
    """Set `gone` once the peer of a connection not being read has hung up (cancel to end).

    While a call is answered, the HTTP listeners do not read the socket (a next request
    waits its turn), so no EOF is seen: this looks at the socket's state instead.
    """
    while not gone.is_set():
        await asyncio.sleep(every_s)
        if hung_up(sock, eof_counts=sock is not None and sock.family != socket.AF_UNIX):
            gone.set()
