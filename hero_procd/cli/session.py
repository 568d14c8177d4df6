"""One invocation of hero-proc: its connection, how it prints, how it fails.

Free of click, so that the fast path of `hero-proc status` never imports it.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable
from typing import Any, NoReturn

import orjson

from hero_procd.client import Client, DaemonUnavailable
from hero_procd.config import client_socket_path
from hero_procd.errors import HeroError

DEFAULT_TIMEOUT_S = 60.0


class CliError(HeroError):
    """hero-proc refused the command line before sending anything."""


class Session:
    """The global options of one invocation: where the daemon listens and how to print."""

    def __init__(
        self, socket_path: str | None, as_json: bool = False, timeout: float = DEFAULT_TIMEOUT_S
    ) -> None:
        self.socket_path = socket_path or str(client_socket_path())
        self.as_json = as_json
        self.timeout = timeout
        self._clients: dict[float, Client] = {}

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
