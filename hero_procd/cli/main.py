"""Entry point of `hero-proc`.

`status` and `ping` are served by `hero_procd.cli.fast` (stdlib only: no click,
no client, no orjson), so a whole `hero-proc status` process costs little more
than `python -c pass`. Everything else, and any error of those two, goes to
the click CLI, which imports click, orjson and hero_procd.client/errors/config
only (never asyncio, uvloop, aiosqlite, jsonrpcserver or h11).

Every error is one line on stderr (one line of JSON with --json), and the exit
code says what kind it was: see `hero_procd.cli.session` and README "Exit codes".
"""

from __future__ import annotations

import os
import sys

from hero_procd.cli import fast

TYPE_CHECKING = False  # not typing's: the fast path must not import typing
if TYPE_CHECKING:
    import click

# Exit code of an interrupted command (128 + SIGINT); hero_procd.cli.session's too.
EXIT_INTERRUPTED = 130


def main(argv: list[str] | None = None) -> None:
    """Run hero-proc; exit 0, the exit code a command chose, or one error line and its code."""
    args = sys.argv[1:] if argv is None else argv
    try:
        code = fast.run(args)
    except KeyboardInterrupt:
        sys.stderr.write("\n")
        sys.exit(EXIT_INTERRUPTED)
    except BrokenPipeError:
        _reader_gone()
    if code is not None:
        sys.exit(code)
    full(args)


def full(args: list[str]) -> None:
    """Run `args` through the click CLI; exits."""
    import signal

    import click

    from hero_procd.cli.session import EXIT_USAGE, CliError, UsageError, fail, wants_json
    from hero_procd.errors import HeroError

    # Ctrl-C (ending `logs -f` or a wait) is no error: exit 130 quietly, as a shell would,
    # rather than click's "Aborted!" and exit 1.
    signal.signal(signal.SIGINT, _interrupted)
    code: object = 0
    try:
        from hero_procd.cli.commands import cli

        try:
            # Not standalone: click would print a usage error as three lines (usage, hint,
            # error); we print one, in JSON when asked.
            code = cli.main(args=args, prog_name="hero-proc", standalone_mode=False)
        except click.exceptions.NoArgsIsHelpError as exc:
            exc.show()  # `hero-proc` or `hero-proc job` alone: the help, as click does
            sys.exit(EXIT_USAGE)
        except click.UsageError as exc:
            raise UsageError(_usage_text(exc)) from exc
        except click.ClickException as exc:  # a file that cannot be opened, say
            err = CliError(exc.format_message())
            err.exit_code = exc.exit_code
            raise err from exc
        except click.Abort:  # Ctrl-C or end of input at a prompt
            sys.stderr.write("\n")
            sys.exit(EXIT_INTERRUPTED)
    except HeroError as exc:
        fail(exc, wants_json(args))
    except BrokenPipeError:
        _reader_gone()
    sys.exit(code if isinstance(code, int) else 0)


def _reader_gone() -> None:
    """The reader went away (`hero-proc status | head -1`): not worth a traceback."""
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    sys.exit(1)


def _usage_text(exc: click.UsageError) -> str:
    """A click usage error as one sentence naming the command and where its help is."""
    message = " ".join(exc.format_message().split())
    if exc.ctx is None:
        return message
    path = exc.ctx.command_path
    command = path.removeprefix("hero-proc").strip()  # "job get"; empty for the top level
    where = f"{command}: " if command else ""
    return f"{where}{message} (see '{path} --help')"


def _interrupted(signum: int, frame: object) -> None:
    sys.stderr.write("\n")
    sys.exit(128 + signum)


if __name__ == "__main__":
    main()
