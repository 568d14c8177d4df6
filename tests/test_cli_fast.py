"""The fast path's own parts: its reading of argv, where it finds the socket, its colours."""

from __future__ import annotations

import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

import click
import pytest

from hero_procd import config
from hero_procd.cli import fast, output, session


@pytest.mark.parametrize(
    ("argv", "parsed"),
    [
        (["status"], ("status", None)),
        (["ping"], ("ping", None)),
        (["--socket", "/s", "status"], ("status", "/s")),
        (["--socket=/s", "ping"], ("ping", "/s")),
        (["--socket", "/a", "--socket", "/b", "status"], ("status", "/b")),
        (["--json", "status"], None),
        (["status", "--json"], None),
        (["status", "--socket", "/s"], None),
        (["--timeout", "3", "status"], None),
        (["--socket", "", "status"], None),
        (["--socket"], None),
        (["status", "ping"], None),
        (["status", "-h"], None),
        (["job", "list"], None),
        ([], None),
    ],
)
def test_parse(argv: list[str], parsed: tuple[str, str | None] | None) -> None:
    """Only `[--socket P] status|ping` is served; everything else goes to click."""
    assert fast.parse(argv) == parsed


def listening(path: Path) -> socket.socket:
    """A real Unix socket bound at `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(str(path))
    except BaseException:
        sock.close()
        raise
    return sock


@pytest.fixture
def short_path() -> Iterator[Path]:
    """A fresh directory under /tmp: socket paths stay under 107 bytes (pytest's tmp_path,
    under pytest-xdist, can be longer)."""
    path = Path(tempfile.mkdtemp(prefix="hpf", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.mark.parametrize("runtime", ["{tmp}/run", "{tmp}/run/", None, ""])
@pytest.mark.parametrize("bound", ["none", "runtime", "home"])
def test_socket_found_where_the_client_finds_it(
    short_path: Path, monkeypatch: pytest.MonkeyPatch, runtime: str | None, bound: str
) -> None:
    """The fast path picks the socket hero_procd.config picks, sockets bound or not."""
    tmp_path = short_path
    home = tmp_path / "home"
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("HERO_PROC_SOCKET", raising=False)
    if runtime is None:
        monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    else:
        monkeypatch.setenv("XDG_RUNTIME_DIR", runtime.format(tmp=tmp_path))
    sockets = []
    if bound == "runtime" and runtime:
        sockets.append(listening(tmp_path / "run" / "hero_proc.sock"))
    if bound == "home":
        sockets.append(listening(home / "hero" / "var" / "sockets" / "hero_proc.sock"))
    try:
        assert fast.socket_path() == str(config.client_socket_path())
    finally:
        for sock in sockets:
            sock.close()


def test_socket_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """$HERO_PROC_SOCKET wins; an empty one counts as unset (as click and config say)."""
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("HERO_PROC_SOCKET", "/x/y.sock")
    assert fast.socket_path() == "/x/y.sock" == str(config.client_socket_path())
    monkeypatch.setenv("HERO_PROC_SOCKET", "")
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    assert fast.socket_path() == str(config.client_socket_path())


@pytest.mark.parametrize("runtime", ["/run//user", "/run/./user", "./run", "."])
def test_spellings_pathlib_would_change_go_to_the_full_cli(
    monkeypatch: pytest.MonkeyPatch, runtime: str
) -> None:
    """A folder that pathlib would respell is not guessed at: None, the full CLI decides."""
    monkeypatch.delenv("HERO_PROC_SOCKET", raising=False)
    monkeypatch.setenv("XDG_RUNTIME_DIR", runtime)
    assert fast.socket_path() is None


def test_constants_agree() -> None:
    """The fast path's copies of the CLI's constants are the same values."""
    assert fast.DEFAULT_TIMEOUT_S == session.DEFAULT_TIMEOUT_S
    assert str(config.SYSTEM_SOCKET_PATH) == fast.SYSTEM_SOCKET
    from hero_procd.cli import main

    assert main.EXIT_INTERRUPTED == session.EXIT_INTERRUPTED


@pytest.mark.parametrize("colour", sorted(output._SGR))
def test_colours_are_clicks(colour: str) -> None:
    """The ANSI codes written without click are the ones click.style writes."""
    expected = click.style("x", dim=True) if colour == "dim" else click.style("x", fg=colour)
    assert output._styled("x", colour) == expected


@pytest.mark.parametrize(
    "text",
    [
        '{"jsonrpc":"2.0","id":1,"result":{"services":[{"name":"w\\u00e9b","pid":12,'
        '"uptime_s":1.5e3,"cpu_percent":0.1,"memory_bytes":123456789012,"health":null,'
        '"ok":true,"no":false,"deep":[[[]],{}],"big":18446744073709551616}]}}',
        "[]",
        '"text"',
        "-12.5e-3",
        " \n {} \n",
        "\x0b{}",
        '{"a":"\\"\\\\\\/\\b\\f\\n\\r\\t"}',
        "{} extra",
        "{",
        "",
        '{"a":1,}',
        "[1 2]",
        "nul",
    ],
)
def test_loads_is_json_loads(text: str) -> None:
    """The fast path's JSON reader takes and refuses what json.loads does, same values."""
    import json

    try:
        expected = ("ok", json.loads(text))
    except ValueError:
        expected = ("error", None)
    try:
        got = ("ok", fast.loads(text))
    except ValueError:
        got = ("error", None)
    assert got == expected
