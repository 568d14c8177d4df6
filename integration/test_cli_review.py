"""Hostile review of the CLI's logs, lists, waits and fast path (issue 11): real daemon, CLI.

Each test is an attack that once broke; the assertion is what must hold.
"""

from __future__ import annotations

import random
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from hero_procd.client import Client
from integration.daemon_proc import DaemonProcess
from integration.helpers import wait_for
from integration.test_cli import hero_proc, ok

CLI = [sys.executable, "-m", "hero_procd.cli.main"]


def local_iso(ts: float) -> str:
    """A Unix time as an RFC 3339 local time with its offset, to the microsecond."""
    return datetime.fromtimestamp(ts).astimezone().isoformat(timespec="microseconds")


def first_line(c: Client, method: str, who: dict[str, Any]) -> dict[str, Any]:
    """The owner's first stored line, once there is one."""
    return wait_for(lambda: (c.call(method, who)["lines"] or [None])[0], f"a line of {who}")


def test_follow_since_a_time_after_every_line_shows_no_older_line(
    daemon: DaemonProcess, workdir: Path
) -> None:
    """`--since T -f` where no line is at or after T yet: the follower's next rounds (which
    leave `since` out) used to start again from line 0 and print every older line."""
    sock = daemon.socket_path
    gate = workdir / "go"
    with daemon.client() as c:
        c.call("service.define", name="quiet", script="echo old; exec sleep 1000")
        c.call("service.start", name="quiet")
        job_id = int(
            c.call(
                "job.submit",
                script=f"echo old; while [ ! -e {gate} ]; do sleep 0.02; done; echo new",
            )["id"]
        )
        try:
            old_svc = first_line(c, "service.logs", {"name": "quiet"})
            old_job = first_line(c, "job.logs", {"id": job_id})
            # The contract: a page with no line since T resumes past the lines T skipped.
            cut = float(old_svc["ts"]) + 0.001
            page = c.call("service.logs", name="quiet", since=cut)
            assert page["lines"] == [] and page["next_seq"] >= int(old_svc["seq"])
            assert c.call("service.logs", name="quiet", after_seq=page["next_seq"])["lines"] == []
            since = local_iso(cut)
            # Idle owners, followed for longer than one poll: nothing at all to print.
            for argv in (
                ["service", "logs", "quiet", "-f", "--since", since],
                ["logs", "-f", "--since", since, "svc:quiet"],
            ):
                wait_s = f"{random.uniform(1.2, 2.5):.2f}"
                out = ok(hero_proc(sock, *argv, "--max-wait", wait_s))
                assert out == "", (argv, out)
            # A job followed from a time after its first line: only the later line.
            job_since = local_iso(float(old_job["ts"]) + 0.001)
            follower = subprocess.Popen(
                [
                    *CLI,
                    "--socket",
                    str(sock),
                    "job",
                    "logs",
                    str(job_id),
                    "-f",
                    "--since",
                    job_since,
                ],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            time.sleep(random.uniform(1.3, 2.6))  # the follower polls a few times meanwhile
            gate.touch()
            out, err = follower.communicate(timeout=60)
            assert follower.returncode == 0, err
            assert out == "new\n"
        finally:
            gate.touch()
            c.call("service.stop", name="quiet")


# The full click CLI, the fast path skipped (as integration/test_cli_fast.py runs it).
FULL = "import sys; from hero_procd.cli.main import full; full(sys.argv[1:])"
ENTRIES = {"fast": ["-m", "hero_procd.cli.main"], "full": ["-c", FULL]}


def run_path(
    path: str, sock: Path, *args: str, stdout: int | None = subprocess.PIPE
) -> subprocess.CompletedProcess[bytes]:
    """`hero-proc --socket S ARGS` through the fast path's entry or the full CLI only."""
    argv = [sys.executable, *ENTRIES[path], "--socket", str(sock), *args]
    return subprocess.run(argv, stdout=stdout, stderr=subprocess.PIPE, timeout=60, check=False)


def test_output_that_cannot_be_written_is_one_error_line_on_both_paths(
    daemon: DaemonProcess,
) -> None:
    """`hero-proc status > /dev/full`: one line on stderr and exit 1, the same on the fast
    path and the full CLI (both printed a Python traceback)."""
    for command in ("status", "ping", "info"):
        seen = []
        for path in ("fast", "full"):
            with open("/dev/full", "w") as full:
                done = run_path(path, daemon.socket_path, command, stdout=full.fileno())
            assert done.returncode == 1, (path, command, done.stderr)
            assert done.stderr == b"hero-proc: cannot write the output: No space left on device\n"
            seen.append(done.stderr)
        assert seen[0] == seen[1]
