"""CLI conventions of `hero-proc`: one error line (JSON with --json), exit codes, NO_COLOR.

Exit codes: 0 ok, 1 error (daemon refusal, unreachable daemon, a batch with a failed
item), 2 usage, 124 a wait that gave up, the job's own code for `job wait`, 130 Ctrl-C.
"""

from __future__ import annotations

import os
import pty
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson

from integration.daemon_proc import DaemonProcess
from integration.helpers import wait_running
from integration.test_cli import hero_proc, ok, one_line_error
from integration.test_cli_more import read_pty


def json_error(result: subprocess.CompletedProcess[str], code: int) -> dict[str, Any]:
    """The one JSON line on stderr of a command that failed with exit `code`."""
    assert result.returncode == code, f"exit {result.returncode}\n{result.stderr}"
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    doc = orjson.loads(lines[0])
    assert set(doc) == {"error"}
    error: dict[str, Any] = doc["error"]
    assert error["exit_code"] == code
    return error


def test_usage_errors_are_one_line(daemon: DaemonProcess) -> None:
    """click's three-line usage report is one line, exit 2; JSON with --json anywhere."""
    sock = daemon.socket_path
    line = one_line_error(hero_proc(sock, "job", "get", "abc"), "job get", "'ID'", code=2)
    assert "hero-proc job get --help" in line
    one_line_error(hero_proc(sock, "nosuch"), "No such command", code=2)
    error = json_error(hero_proc(sock, "--json", "job", "get", "abc"), 2)
    assert (error["kind"], error["code"]) == ("UsageError", None)
    assert "'ID'" in error["message"]
    error = json_error(hero_proc(sock, "job", "get", "--json", "abc"), 2)
    assert error["kind"] == "UsageError"


def test_daemon_errors_in_json(daemon: DaemonProcess, workdir: Path) -> None:
    """With --json a refusal is one JSON line with the JSON-RPC code and data; exit 1."""
    sock = daemon.socket_path
    error = json_error(hero_proc(sock, "--json", "job", "get", "424242"), 1)
    assert (error["kind"], error["code"]) == ("NotFound", -32001)
    error = json_error(hero_proc(sock, "job", "list", "--status", "bogus", "--json"), 1)
    assert error["code"] == -32602 and error["data"]["field"] == "status"
    missing = workdir / "nobody.sock"
    error = json_error(hero_proc(missing, "--json", "ping"), 1)
    assert (error["kind"], error["code"]) == ("DaemonUnavailable", None)
    assert str(missing) in error["message"]


def test_wait_timeout_exits_124(daemon: DaemonProcess) -> None:
    """A wait that gives up exits 124; a job that fails with 1 exits 1; --json tells them apart."""
    sock = daemon.socket_path
    with daemon.client() as c:
        sleeper = c.call("job.submit", command=["sleep", "100"])["id"]
        wait_running(c, sleeper, timeout_s=15.0)
    try:
        one_line_error(
            hero_proc(sock, "job", "wait", str(sleeper), "--timeout", "0.2"), "still", code=124
        )
        error = json_error(
            hero_proc(sock, "--json", "job", "wait", str(sleeper), "--timeout", "0.2"), 124
        )
        assert error["kind"] == "WaitTimeout" and error["code"] is None
        timed_out = hero_proc(
            sock, "job", "submit", "--wait", "--wait-timeout", "0.2", "--", "sleep", "5"
        )
        assert timed_out.returncode == 124, timed_out.stderr
        followed = hero_proc(
            sock, "job", "submit", "--wait", "--logs", "--wait-timeout", "0.3", "--", "sleep", "5"
        )
        assert followed.returncode == 124, followed.stderr
    finally:
        with daemon.client() as c:
            c.call("job.cancel", id=sleeper)
    failed = hero_proc(sock, "job", "submit", "--wait", "--", "sh", "-c", "exit 1")
    assert failed.returncode == 1 and " failed" in failed.stdout


def test_batch_exit_code(daemon: DaemonProcess) -> None:
    """`job batch` exits 0 only when every item was accepted; the result is printed either way."""
    sock = daemon.socket_path
    good = orjson.dumps([{"command": ["/bin/true"]}]).decode()
    assert ok(hero_proc(sock, "job", "batch", "-f", "-", stdin=good)).startswith("submitted 1")
    mixed = orjson.dumps([{"command": ["/bin/true"]}, {"command": ["a\u0000b"]}]).decode()
    text = hero_proc(sock, "job", "batch", "-f", "-", stdin=mixed)
    assert text.returncode == 1
    assert text.stdout.strip() == "submitted 1, deduplicated 0, superseded 0, failed 1"
    assert text.stderr.startswith("jobs[1]: ") and "NUL" in text.stderr
    as_json = hero_proc(sock, "--json", "job", "batch", "-f", "-", stdin=mixed)
    assert as_json.returncode == 1
    result = orjson.loads(as_json.stdout)
    assert len(result["submitted"]) == 1 and [f[0] for f in result["failed"]] == [1]


def test_no_color(daemon: DaemonProcess) -> None:
    """`status` on a terminal is coloured, unless NO_COLOR is set (to anything non-empty)."""
    sock = daemon.socket_path
    with daemon.client() as c:
        c.call("service.define", name="web", command=["sleep", "100"])
        c.call("service.start", name="web", wait_s=10)
    try:
        outputs = {}
        for label, no_color in (("plain", None), ("no_color", "1"), ("empty", "")):
            env = dict(os.environ)
            env.pop("NO_COLOR", None)
            if no_color is not None:
                env["NO_COLOR"] = no_color
            leader, follower = pty.openpty()
            argv = [sys.executable, "-m", "hero_procd.cli.main", "--socket", str(sock), "status"]
            subprocess.run(argv, stdout=follower, env=env, timeout=60, check=True)
            os.close(follower)
            outputs[label] = read_pty(leader)
            os.close(leader)
        assert b"\x1b[" in outputs["plain"]
        assert b"\x1b[" in outputs["empty"]  # NO_COLOR="" does not count (no-color.org)
        assert b"\x1b[" not in outputs["no_color"] and b"web" in outputs["no_color"]
    finally:
        with daemon.client() as c:
            c.call("service.stop", name="web")
