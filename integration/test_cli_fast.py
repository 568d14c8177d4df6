"""The fast path of `hero-proc status` and `ping` against the full click CLI, real daemon."""

from __future__ import annotations

import os
import pty
import subprocess
import sys
from pathlib import Path

from hero_procd.client import Client
from integration.daemon_proc import DaemonProcess
from integration.helpers import wait_status
from integration.test_cli import hero_proc, imported_modules, ok
from integration.test_cli_more import read_pty

# The full click CLI, the fast path skipped: what `status` printed before it existed.
FULL = "import sys; from hero_procd.cli.main import full; full(sys.argv[1:])"


def run_both(
    sock: Path, *args: str, env: dict[str, str] | None = None, tty: bool = False
) -> tuple[bytes, bytes]:
    """(fast path output, full CLI output) of `hero-proc --socket S ARGS`, bytes as written."""
    outputs = []
    for head in (["-m", "hero_procd.cli.main"], ["-c", FULL]):
        argv = [sys.executable, *head, "--socket", str(sock), *args]
        full_env = {**os.environ, **(env or {})}
        if not tty:
            done = subprocess.run(argv, capture_output=True, env=full_env, timeout=60, check=False)
            assert done.returncode == 0, done.stderr
            outputs.append(done.stdout)
            continue
        leader, follower = pty.openpty()
        try:
            subprocess.run(argv, stdout=follower, env=full_env, timeout=60, check=True)
        finally:
            os.close(follower)
        outputs.append(read_pty(leader))
        os.close(leader)
    return outputs[0], outputs[1]


def same_output(
    sock: Path, *args: str, env: dict[str, str] | None = None, tty: bool = False
) -> bytes:
    """The output, once the fast path and the full CLI printed the same bytes.

    Live figures (uptime, memory, cpu) may move between the two runs: tried up to 5 times.
    """
    fast = full = b""
    for _ in range(5):
        fast, full = run_both(sock, *args, env=env, tty=tty)
        if fast == full:
            return fast
    raise AssertionError(f"fast path:\n{fast!r}\nfull CLI:\n{full!r}")


def test_status_and_ping_print_what_the_full_cli_prints(daemon: DaemonProcess) -> None:
    """Same bytes from both paths: empty table, every state, a pipe, a terminal, NO_COLOR."""
    sock = daemon.socket_path
    no_colour = {"NO_COLOR": "1"}
    empty = same_output(sock, "status")
    assert empty == b"NAME  STATE  HEALTH  PID  UPTIME  RESTARTS  MEMORY  CPU\n"
    with Client(sock) as c:
        c.call("service.define", name="web", command=["sleep", "1000"], start_secs=0)
        c.call("service.define", name="a-long-service-name", command=["/bin/true"], oneshot=True)
        c.call("service.define", name="crash", command=["sh", "-c", "exit 3"], restart="never")
        c.call("service.define", name="idle", command=["/bin/true"])
        c.call("service.start", name="web", wait_s=10)
        c.call("service.start", name="a-long-service-name")
        c.call("service.start", name="crash")
        wait_status(c, "crash", lambda st: st["state"] == "exited", "crash to exit")
    try:
        text = same_output(sock, "status", env=no_colour)
        rows = [line.split() for line in text.decode().splitlines()[1:]]
        assert [r[:2] for r in rows] == [
            ["a-long-service-name", "exited"],
            ["crash", "exited"],
            ["idle", "stopped"],
            ["web", "running"],
        ]
        coloured = same_output(sock, "status", tty=True)
        assert b"\x1b[32mrunning\x1b[0m" in coloured and b"\x1b[2mstopped\x1b[0m" in coloured
        assert b"\x1b[" not in same_output(sock, "status", env=no_colour, tty=True)
        pong = same_output(sock, "ping")
        assert pong == f"pong: hero-procd 0.1.0 on {sock}\n".encode()
        assert same_output(sock, "ping", tty=True) == pong.replace(b"\n", b"\r\n")
    finally:
        with Client(sock) as c:
            c.call("service.stop", name="web")


def test_fast_path_imports_nothing_heavy(daemon: DaemonProcess) -> None:
    """status and ping load neither click, nor the client, nor orjson, nor typing (nor output.py:
    the table is in the small text.py, as this machine compiles every module it imports)."""
    flags = ("-X", "importtime")
    for command in ("status", "ping"):
        done = hero_proc(daemon.socket_path, command, python_flags=flags)
        assert done.returncode == 0, done.stderr
        modules = imported_modules(done.stderr)
        assert "hero_procd.cli.fast" in modules  # the parse saw the real imports
        heavy = {
            "click",
            "hero_procd.client",
            "hero_procd.cli.output",
            "orjson",
            "typing",
            "socket",
        }
        heavy &= modules
        assert heavy == set(), heavy
    # --json, another option, or another command: the full CLI, with click.
    done = hero_proc(daemon.socket_path, "--json", "ping", python_flags=flags)
    assert done.returncode == 0 and "click" in imported_modules(done.stderr)


def test_what_the_fast_path_leaves_to_the_full_cli(daemon: DaemonProcess, workdir: Path) -> None:
    """--json, errors, unknown words and a missing daemon all behave as the full CLI says."""
    sock = daemon.socket_path
    assert b'"services": []' in run_both(sock, "--json", "status")[0]
    fast, full = run_both(sock, "status", "--json")
    assert fast == full
    missing = workdir / "nobody.sock"
    for command in ("status", "ping"):
        done = hero_proc(missing, command)
        assert done.returncode == 1 and done.stdout == ""
        assert done.stderr == f"hero-proc: cannot reach hero-procd at {missing}: " + (
            "No such file or directory\n"
        )
    usage = hero_proc(sock, "status", "extra")
    assert usage.returncode == 2 and usage.stderr.startswith("hero-proc: ")
    # $HERO_PROC_SOCKET is the socket when no --socket is given.
    env_run = hero_proc(None, "ping", env={"HERO_PROC_SOCKET": str(sock)})
    assert ok(env_run) == f"pong: hero-procd 0.1.0 on {sock}\n"
