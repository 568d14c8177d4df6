"""Entry point of `hero-proc`, with a click-free fast path for `hero-proc status`.

Import-light on purpose: click, orjson and hero_procd.client/errors/config
only (never asyncio, uvloop, aiosqlite, jsonrpcserver or h11). `status` is
what people and monitors run in a loop, and importing click costs about a
fifth of a whole `hero-proc` process, so the exact shape
`[--socket PATH] [--json] [--timeout S] status` is served without click;
every other command line (help, typos included) goes to the click tree in
`hero_procd.cli.commands`, whose `status` prints the same thing.
"""

from __future__ import annotations

import os
import sys

from hero_procd.cli.session import DEFAULT_TIMEOUT_S, Session, fail
from hero_procd.errors import HeroError


def parse_fast_status(args: list[str]) -> Session | None:
    """A Session for `[--socket P] [--json] [--timeout S] status`, else None (click decides)."""
    socket_path: str | None = None  # Session falls back on $HERO_PROC_SOCKET, like click
    as_json = False
    timeout = DEFAULT_TIMEOUT_S
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "status":
            return Session(socket_path, as_json, timeout) if i == len(args) - 1 else None
        if arg == "--json":
            as_json = True
            i += 1
            continue
        name, eq, value = arg.partition("=")
        if name not in ("--socket", "--timeout"):
            return None
        if not eq:
            if i + 1 >= len(args):
                return None
            value = args[i + 1]
            i += 1
        i += 1
        if name == "--socket":
            socket_path = value or None
            continue
        try:
            timeout = float(value)
        except ValueError:
            return None
        if not timeout > 0:  # also NaN: let click word the usage error
            return None
    return None


def fast_status(session: Session) -> None:
    """`hero-proc status` without click: the same table (or JSON) as the click command."""
    from hero_procd.cli.output import status_table

    colour = sys.stdout.isatty()
    try:
        session.show(session.call("service.status_all"), lambda r: status_table(r, colour=colour))
    finally:
        session.close()


def main(argv: list[str] | None = None) -> None:
    """Run hero-proc; a daemon or CLI error is one line on stderr and exit 1."""
    args = sys.argv[1:] if argv is None else argv
    try:
        session = parse_fast_status(args)
        if session is not None:
            fast_status(session)
            sys.stdout.flush()
            return
        from hero_procd.cli.commands import cli

        cli.main(args=args, prog_name="hero-proc")
    except HeroError as exc:
        fail(exc)
    except BrokenPipeError:
        # The reader went away (`hero-proc status | head -1`): not worth a traceback.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(1)


if __name__ == "__main__":
    main()
