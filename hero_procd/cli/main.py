"""Entry point of `hero-proc`.

Import-light on purpose: click, orjson and hero_procd.client/errors/config
only (never asyncio, uvloop, aiosqlite, jsonrpcserver or h11), so a whole
`hero-proc status` process stays well under `supervisorctl status`.
"""

from __future__ import annotations

import os
import signal
import sys

from hero_procd.cli.session import fail
from hero_procd.errors import HeroError


def main(argv: list[str] | None = None) -> None:
    """Run hero-proc; a daemon or CLI error is one line on stderr and exit 1."""
    args = sys.argv[1:] if argv is None else argv
    # Ctrl-C (ending `logs -f` or a wait) is no error: exit 130 quietly, as a shell would,
    # rather than click's "Aborted!" and exit 1.
    signal.signal(signal.SIGINT, _interrupted)
    try:
        from hero_procd.cli.commands import cli

        cli.main(args=args, prog_name="hero-proc")
    except HeroError as exc:
        fail(exc)
    except BrokenPipeError:
        # The reader went away (`hero-proc status | head -1`): not worth a traceback.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(1)


def _interrupted(signum: int, frame: object) -> None:
    sys.stderr.write("\n")
    sys.exit(128 + signum)


if __name__ == "__main__":
    main()
