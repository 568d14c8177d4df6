"""One invocation of hero-proc: its connection, how it prints, how it fails.

Free of click, so that the fast path of `hero-proc status` never imports it.
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Callable
from typing import Any, NoReturn

import orjson

from hero_procd.client import Client, DaemonUnavailable
from hero_procd.config import client_socket_path
from hero_procd.errors import HeroError

DEFAULT_TIMEOUT_S = 60.0

# Exit codes of hero-proc (README, "Exit codes"). A waited-for job's own exit code
# (1-255) is passed through by `job wait` and `job submit --wait`.
EXIT_OK = 0
EXIT_ERROR = 1  # the daemon refused the call, could not be reached, or a command failed
EXIT_USAGE = 2  # the command line is wrong (click's convention)
EXIT_WAIT_TIMEOUT = 124  # a wait gave up; the job goes on (like timeout(1))
EXIT_INTERRUPTED = 130  # Ctrl-C (128 + SIGINT)


class CliError(HeroError):
    """hero-proc refused the command line, or a command could not do what it was asked."""

    exit_code = EXIT_ERROR


class UsageError(CliError):
    """The command line is wrong: an unknown option, a missing argument, a bad value."""

    exit_code = EXIT_USAGE


class WaitTimeout(CliError):
    """A wait for a job gave up before the job was done (the job goes on)."""

    exit_code = EXIT_WAIT_TIMEOUT


# The session of this invocation, so that `main` can tell how to report an error
# raised after the options were read (--json given to the group or to a command).
_current: Session | None = None


class Session:
    """The global options of one invocation: where the daemon listens and how to print."""

    def __init__(
        self, socket_path: str | None, as_json: bool = False, timeout: float = DEFAULT_TIMEOUT_S
    ) -> None:
        self.socket_path = socket_path or str(client_socket_path())
        self.as_json = as_json
        self.timeout = timeout
        self._clients: dict[float, Client] = {}
        global _current
        _current = self

    def call(
        self, method: str, params: dict[str, Any] | None = None, *, wait_s: float = 0.0
    ) -> Any:
        """Call `method` on the daemon; `wait_s` is how long the daemon may take on purpose.

        The answer is awaited for `wait_s` plus the global --timeout. One connection
        serves every call of the invocation that waits alike.
        """
        slack = float(math.ceil(wait_s))  # a client per whole second of waiting, not per value
        client = self._clients.get(slack)
        if client is None:
            client = self._clients[slack] = Client(self.socket_path, timeout=self.timeout + slack)
        return client.call(method, params)

    def close(self) -> None:
        """Close the connections, if any were opened."""
        for client in self._clients.values():
            client.close()
        self._clients.clear()

    def show(self, result: Any, human: Callable[[Any], str]) -> None:
        """Print `result` as indented JSON with --json, else the text `human(result)` makes."""
        if self.as_json:
            write_out(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode() + "\n")
            return
        text = human(result)
        if text:
            write_out(text + "\n")


def write_out(text: str) -> None:
    """Write `text` to stdout now; a stdout that refuses it (`> /dev/full`) is a CliError.

    BrokenPipeError (the reader went away) is left to `hero_procd.cli.main`.
    """
    try:
        sys.stdout.write(text)
        sys.stdout.flush()
    except BrokenPipeError:
        raise
    except OSError as exc:
        raise output_error(exc) from exc


def output_error(exc: OSError) -> CliError:
    """The error of a stdout that refused the output; stdout is then /dev/null, so that
    the interpreter's last flush at exit fails no second time (with a traceback)."""
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return CliError(f"cannot write the output: {exc.strerror or exc}")


def error_line(exc: HeroError) -> str:
    """The one line that reports `exc` on stderr: `hero-proc: <message>`."""
    # The socket is already in DaemonUnavailable's message; its data would repeat it.
    message = exc.message if isinstance(exc, DaemonUnavailable) else str(exc)
    return "hero-proc: " + " ".join(message.split())


def exit_code_of(exc: HeroError) -> int:
    """What hero-proc exits with for `exc`: the CLI error's own code, else 1."""
    return exc.exit_code if isinstance(exc, CliError) else EXIT_ERROR


def error_json(exc: HeroError, exit_code: int) -> str:
    """The one line of JSON that reports `exc` on stderr with --json.

    `code` is the daemon's JSON-RPC error code, or null when hero-proc itself
    refused (usage, unreachable daemon, wait timeout); `kind` names the class.
    """
    from_daemon = not isinstance(exc, CliError | DaemonUnavailable) and exc.code != -32603
    error: dict[str, Any] = {
        "kind": type(exc).__name__,
        "code": exc.code if from_daemon else None,
        "message": error_line(exc).removeprefix("hero-proc: "),
        "exit_code": exit_code,
    }
    if exc.data is not None:
        error["data"] = exc.data
    return orjson.dumps({"error": error}, default=str).decode()


def wants_json(argv: list[str]) -> bool:
    """True if this invocation asked for --json (an option read, or seen before `--`)."""
    if _current is not None and _current.as_json:
        return True
    # A usage error can come before the session exists: look at the words themselves.
    words = argv[: argv.index("--")] if "--" in argv else argv
    return "--json" in words


def report(exc: HeroError, as_json: bool, exit_code: int) -> NoReturn:
    """Report `exc` in one line on stderr (JSON with --json) and exit with `exit_code`."""
    line = error_json(exc, exit_code) if as_json else error_line(exc)
    sys.stderr.write(line + "\n")
    sys.stderr.flush()
    sys.exit(exit_code)


def fail(exc: HeroError, as_json: bool = False) -> NoReturn:
    """Report `exc` in one line on stderr and exit with its exit code (1 unless a CliError's)."""
    report(exc, as_json, exit_code_of(exc))
