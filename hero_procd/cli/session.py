"""One invocation of hero-proc: its connection, how it prints, how it fails.

Free of click, so that the fast path of `hero-proc status` never imports it.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any, NoReturn

import orjson

from hero_procd.client import Client, DaemonUnavailable
from hero_procd.config import default_socket_path
from hero_procd.errors import HeroError

DEFAULT_TIMEOUT_S = 60.0


class CliError(HeroError):
    """hero-proc refused the command line before sending anything."""


class Session:
    """The global options of one invocation: where the daemon listens and how to print."""

    def __init__(
        self, socket_path: str | None, as_json: bool = False, timeout: float = DEFAULT_TIMEOUT_S
    ) -> None:
        self.socket_path = socket_path or str(default_socket_path())
        self.as_json = as_json
        self.timeout = timeout
        self._client: Client | None = None

    def call(self, method: str, params: dict[str, Any] | None = None) -> Any:
        """Call `method` on the daemon; one connection serves the whole invocation."""
        if self._client is None:
            self._client = Client(self.socket_path, timeout=self.timeout)
        return self._client.call(method, params)

    def close(self) -> None:
        """Close the connection, if one was opened."""
        if self._client is not None:
            self._client.close()
            self._client = None

    def show(self, result: Any, human: Callable[[Any], str]) -> None:
        """Print `result` as indented JSON with --json, else the text `human(result)` makes."""
        if self.as_json:
            sys.stdout.write(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode() + "\n")
            return
        text = human(result)
        if text:
            sys.stdout.write(text + "\n")


def error_line(exc: HeroError) -> str:
    """The one line that reports `exc` on stderr: `hero-proc: <message>`."""
    # The socket is already in DaemonUnavailable's message; its data would repeat it.
    message = exc.message if isinstance(exc, DaemonUnavailable) else str(exc)
    return "hero-proc: " + " ".join(message.split())


def fail(exc: HeroError) -> NoReturn:
    """Report `exc` in one line on stderr and exit 1."""
    sys.stderr.write(error_line(exc) + "\n")
    sys.stderr.flush()
    sys.exit(1)
