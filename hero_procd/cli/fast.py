"""The fast path of `hero-proc status` and `hero-proc ping`.

These two are what people and monitoring scripts run most, so they are served
without click, the client class, orjson, typing or even `json` (its C scanner
only): one JSON-RPC call over a raw Unix socket, then the same text the full CLI
prints (`hero_procd.cli.text.status_table`; a test compares the bytes).
A whole `hero-proc status` then costs little more than `python -c pass`.

Anything else — another command, `--json`, `--timeout`, `--help`, a socket
that cannot be reached, an error from the daemon — returns None and
`hero_procd.cli.main` runs the full click CLI, which does it (and reports
errors) the one usual way.
"""

from __future__ import annotations

import os
import stat
import sys

TYPE_CHECKING = False  # not typing's: importing typing costs this path ~3 ms
if TYPE_CHECKING:
    from typing import Any

DEFAULT_TIMEOUT_S = 60.0  # hero_procd.cli.session.DEFAULT_TIMEOUT_S (a test holds them equal)
SYSTEM_SOCKET = "/run/hero-procd/hero_proc.sock"  # hero_procd.config.SYSTEM_SOCKET_PATH
SOCKET_NAME = "hero_proc.sock"
METHODS = {"status": "service.status_all", "ping": "system.ping"}
MAX_ANSWER = 64 * 1024 * 1024


def parse(args: list[str]) -> tuple[str, str | None] | None:
    """(command, --socket value or None) when `args` is `[--socket P] status|ping`; else None."""
    command: str | None = None
    socket_path: str | None = None
    i = 0
    while i < len(args):
        word = args[i]
        if command is None and word == "--socket" and i + 1 < len(args):
            socket_path = args[i + 1]
            i += 2
        elif command is None and word.startswith("--socket="):
            socket_path = word.removeprefix("--socket=")
            i += 1
        elif command is None and word in METHODS:
            command = word
            i += 1
        else:
            return None  # another command, an option this path does not serve, extra words
    if command is None or socket_path == "":
        return None
    return command, socket_path


def _under(folder: str, *names: str) -> str | None:
    """`folder/names...` spelled as pathlib would (`str(Path(folder, *names))`), or None.

    A folder pathlib would respell (`//`, `/./`, a `.` part) is left to the full CLI.
    """
    trimmed = folder.rstrip("/")
    if not trimmed or "//" in trimmed or "/./" in trimmed + "/" or trimmed.startswith("./"):
        return None
    if trimmed == ".":
        return None
    return "/".join((trimmed, *names))


def _is_socket(path: str) -> bool:
    try:
        return stat.S_ISSOCK(os.stat(path).st_mode)
    except (OSError, ValueError):
        return False


def socket_path() -> str | None:
    """Where the daemon listens when no --socket is given, as `hero_procd.config` finds it.

    `$HERO_PROC_SOCKET`; else the first socket of `$XDG_RUNTIME_DIR/hero_proc.sock`,
    `~/hero/var/sockets/hero_proc.sock` and the systemd unit's; else the daemon's
    default. None when the spelling would need pathlib (the full CLI then decides).
    """
    env = os.environ.get("HERO_PROC_SOCKET")
    if env:
        return env
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    runtime_sock = _under(runtime, SOCKET_NAME) if runtime else None
    if runtime and runtime_sock is None:
        return None
    home_sock = _under(os.path.expanduser("~"), "hero", "var", "sockets", SOCKET_NAME)
    if home_sock is None:
        return None
    for candidate in (runtime_sock, home_sock, SYSTEM_SOCKET):
        if candidate is not None and _is_socket(candidate):
            return candidate
    return runtime_sock or home_sock


def call(path: str, method: str, timeout_s: float = DEFAULT_TIMEOUT_S) -> Any:
    """The result of one parameterless call; None when the full CLI should take over.

    A daemon that does not answer within `timeout_s` is reported here, as the full CLI
    would report it (retrying would double the wait).
    """
    import _socket  # socket.py's enums cost ~2 ms; the C module does all this needs

    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout_s)
        try:
            sock.connect(path)
        except OSError:
            return None  # the full CLI says which socket and why, the usual way
        request = '{"jsonrpc":"2.0","method":"%s","id":1}\n' % method  # noqa: UP031
        buf = b""
        try:
            sock.sendall(request.encode())
            while b"\n" not in buf:
                chunk = sock.recv(1 << 20)
                if not chunk or len(buf) > MAX_ANSWER:
                    return None
                buf += chunk
        except TimeoutError:
            _no_answer(timeout_s)
        except OSError:
            return None
    finally:
        sock.close()
    try:
        answer = loads(buf[: buf.index(b"\n")].decode())
    except ValueError:
        return None
    if not isinstance(answer, dict) or answer.get("id") != 1 or "result" not in answer:
        return None  # an error: the full CLI calls again and reports it
    return answer["result"]


_JSON_SPACE = " \t\n\r"  # the whitespace JSON allows around a value (RFC 8259)


class _ScanContext:
    """What `_json.make_scanner` reads off a JSONDecoder: the stdlib's own defaults."""

    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int
    parse_constant = float  # NaN, Infinity, -Infinity (never sent by the daemon)


def loads(text: str) -> Any:
    """`json.loads` of one compact JSON text, by the C scanner `json` itself uses.

    `import json` costs ~5 ms where nothing has loaded `re` and `enum` yet (its
    decoder compiles regular expressions); its C scanner needs neither. A test holds
    this equal to `json.loads`. ValueError for anything but exactly one JSON value.
    """
    try:
        from _json import make_scanner
    except ImportError:  # an interpreter without the C accelerator
        import json

        return json.loads(text)
    start = len(text) - len(text.lstrip(_JSON_SPACE))
    try:
        value, end = make_scanner(_ScanContext())(text, start)  # type: ignore[arg-type]
    except StopIteration as exc:
        raise ValueError(f"not JSON at {exc.value}") from None
    if text[end:].strip(_JSON_SPACE):
        raise ValueError(f"extra data at {end}")
    return value


def _no_answer(timeout_s: float) -> None:
    from hero_procd.cli.session import fail
    from hero_procd.client import DaemonUnavailable

    fail(DaemonUnavailable(f"no answer from hero-procd within {timeout_s}s"))


def text_of(command: str, result: Any, socket: str) -> str:
    """What the full CLI prints for `command`'s result (without the final newline)."""
    from hero_procd.cli import text

    if command == "ping":
        return f"pong: hero-procd {result.get('version')} on {socket}"
    return text.status_table(result, colour=text.use_colour())


def run(args: list[str]) -> int | None:
    """Serve `args` here and return the exit code, or None for the full CLI to serve them."""
    parsed = parse(args)
    if parsed is None:
        return None
    command, given = parsed
    path = given if given is not None else socket_path()
    if path is None:
        return None
    result = call(path, METHODS[command])
    if not isinstance(result, dict):
        return None
    sys.stdout.write(text_of(command, result, path) + "\n")
    sys.stdout.flush()
    return 0
