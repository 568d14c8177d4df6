"""Wake-ups between the nodes sharing a PostgreSQL database (nothing on SQLite).

A unit that queues jobs, ends them or asks for a cancel sends a NOTIFY inside
its transaction (delivered at commit only); the other nodes LISTEN on their
schema's channel (store/postgres.py) and wake their dispatcher, waiters or
cancels at once instead of polling.
"""

from __future__ import annotations

from collections.abc import Sequence

from hero_procd.store.pool import Conn, is_postgres
from hero_procd.store.queries import Q

# NOTIFY payloads are at most 8000 bytes: a longer list of ids wakes every waiter instead.
_MAX_PAYLOAD = 7900


def notify(conn: Conn, kind: str, ids: Sequence[int] = ()) -> None:
    """Tell the other nodes, at commit, that jobs were queued ('jobs'), ended ('done', with
    their ids) or asked to stop ('cancel'); nothing on SQLite."""
    if not is_postgres(conn):
        return
    payload = kind if not ids else f"{kind}:{','.join(map(str, ids))}"
    if len(payload) > _MAX_PAYLOAD:
        payload = f"{kind}:*"
    conn.execute(Q["notify_pg"], (payload,))
