"""job wait, run wait and job batch --wait: live progress on a real terminal, none in a pipe."""

from __future__ import annotations

import os
import pty
import re
import subprocess
import sys
from pathlib import Path

import orjson

from integration.daemon_proc import DaemonProcess
from integration.helpers import call_error, finish
from integration.test_cli import hero_proc
from integration.test_cli_more import read_pty

_COUNT = r"(?P<done>\d+)/(?P<total>\d+) done"
PROGRESS = re.compile(
    r"\r\x1b\[K(?P<label>[^:\r]+): " + _COUNT + r", (?P<rest>[^\r]*?), (?P<s>\d+\.\d)s"
)


def on_terminal(sock: Path, *args: str, stdin: bytes | None = None) -> tuple[int, str, str]:
    """Run hero-proc with stderr on a real pseudo-terminal: (exit code, stdout, terminal text)."""
    leader, follower = pty.openpty()
    argv = [sys.executable, "-m", "hero_procd.cli.main", "--socket", str(sock), *args]
    try:
        done = subprocess.run(
            argv, input=stdin, stdout=subprocess.PIPE, stderr=follower, timeout=60, check=False
        )
    finally:
        os.close(follower)
    terminal = read_pty(leader).decode()
    os.close(leader)
    return done.returncode, done.stdout.decode(), terminal


def test_job_wait_shows_progress_on_a_terminal_only(daemon: DaemonProcess) -> None:
    """A live line redrawn in place on a TTY, then cleared; nothing of it in a pipe."""
    sock = daemon.socket_path
    with daemon.client() as c:
        job_id = int(c.call("job.submit", command=["sleep", "1.6"])["id"])
    code, out, terminal = on_terminal(sock, "job", "wait", str(job_id))
    assert code == 0 and out.startswith(f"job {job_id} succeeded in ")
    lines = [m.groupdict() for m in PROGRESS.finditer(terminal)]
    assert len(lines) >= 2, repr(terminal)
    assert {(x["label"], x["done"], x["total"]) for x in lines} == {(f"job {job_id}", "0", "1")}
    assert {x["rest"] for x in lines} <= {"queued", "running"}
    elapsed = [float(x["s"]) for x in lines]
    assert elapsed == sorted(elapsed) and elapsed[-1] >= 1.0
    assert terminal.endswith("\r\x1b[K")  # cleared before the status line went to stdout
    with daemon.client() as c:
        again = int(c.call("job.submit", command=["sleep", "0.8"])["id"])
    piped = hero_proc(sock, "job", "wait", str(again))
    assert piped.returncode == 0 and piped.stderr == ""
    assert piped.stdout.startswith(f"job {again} succeeded")


def test_run_wait(daemon: DaemonProcess) -> None:
    """run wait: progress done/total on a TTY; exit 0, 1 (a job failed) or 124 (timeout)."""
    sock = daemon.socket_path
    with daemon.client() as c:
        good = c.call(
            "run.submit",
            name="good",
            jobs=[
                {"key": "a", "command": ["sleep", "0.7"]},
                {"key": "b", "command": ["sleep", "1.4"]},
                {"key": "c", "command": ["/bin/true"], "depends_on": ["a", "b"]},
            ],
        )["id"]
        bad = c.call(
            "run.submit",
            jobs=[
                {"key": "a", "command": ["sh", "-c", "exit 3"]},
                {"key": "b", "command": ["/bin/true"], "depends_on": ["a"]},
            ],
        )["id"]
    code, out, terminal = on_terminal(sock, "run", "wait", str(good))
    assert (code, out) == (0, f"run {good} succeeded: 3 succeeded\n")
    seen = [m.groupdict() for m in PROGRESS.finditer(terminal)]
    assert seen and {x["label"] for x in seen} == {f"run {good}"}
    assert {x["total"] for x in seen} == {"3"}
    done = [int(x["done"]) for x in seen]
    assert done == sorted(done) and done[-1] <= 2
    assert any("running" in x["rest"] for x in seen)
    failed = hero_proc(sock, "run", "wait", str(bad))
    assert failed.returncode == 1 and failed.stderr == ""
    assert failed.stdout == f"run {bad} failed: 1 failed, 1 skipped\n"
    as_json = hero_proc(sock, "--json", "run", "wait", str(bad))
    result = orjson.loads(as_json.stdout)
    assert as_json.returncode == 1 and result["done"] is True and result["status"] == "failed"
    with daemon.client() as c:
        slow = c.call("run.submit", jobs=[{"key": "s", "command": ["sleep", "30"]}])["id"]
        try:
            gave_up = hero_proc(sock, "run", "wait", str(slow), "--timeout", "0.5")
            assert gave_up.returncode == 124, gave_up.stderr
            assert gave_up.stderr.startswith(f"hero-proc: run {slow} is still ")
            # The RPC: an unknown run is -32001; timeout 0 answers at once with done false.
            assert call_error(c, "run.wait", id=999999).code == -32001
            now = c.call("run.wait", id=slow, timeout_s=0)
            assert now["done"] is False and now["id"] == slow
        finally:
            c.call("run.cancel", id=slow)


def test_job_batch_wait(daemon: DaemonProcess) -> None:
    """batch --wait: done/total climbs on a TTY, the outcome is printed, exit 1 on a failure."""
    sock = daemon.socket_path
    jobs = [{"command": ["sleep", f"0.{i % 9 + 1}"]} for i in range(24)]
    jobs.append({"command": ["sh", "-c", "sleep 1; exit 4"]})
    code, out, terminal = on_terminal(
        sock, "job", "batch", "-f", "-", "--wait", stdin=orjson.dumps({"jobs": jobs})
    )
    assert code == 1
    assert (
        out == "submitted 25, deduplicated 0, superseded 0, failed 0\n"
        "finished: 24 succeeded, 1 failed\n"
    )
    seen = [m.groupdict() for m in PROGRESS.finditer(terminal)]
    assert seen and {x["label"] for x in seen} == {"25 jobs"}
    # While the call itself is answered (if it took long enough to draw): 0 done.
    assert all(x["done"] == "0" for x in seen if x["rest"] == "submitting")
    done = [int(x["done"]) for x in seen]
    assert done == sorted(done) and done[0] >= 0 and done[-1] < 25
    # Without --wait: the submission's line while the call is answered, then the summary.
    # 20,000 jobs held behind a sleeper in a group of one: queued, never run here.
    with daemon.client() as c:
        c.call("group.set", name="held", max_parallel=1)
    sleeper = {"command": ["sleep", "1000"], "group": "held", "priority": 1}
    many = orjson.dumps([sleeper, *[{"command": ["/bin/true"], "group": "held"}] * 19_999])
    code, out, terminal = on_terminal(sock, "job", "batch", "-f", "-", stdin=many)
    assert (code, out) == (0, "submitted 20000, deduplicated 0, superseded 0, failed 0\n")
    lines = list(PROGRESS.finditer(terminal))
    assert lines and {(m["done"], m["total"], m["rest"]) for m in lines} == {
        ("0", "20000", "submitting")
    }
    assert terminal.endswith("\r\x1b[K")
    ok_jobs = orjson.dumps([{"command": ["/bin/true"]} for _ in range(5)]).decode()
    piped = hero_proc(sock, "job", "batch", "-f", "-", "--wait", stdin=ok_jobs)
    assert (piped.returncode, piped.stderr) == (0, "")
    assert piped.stdout.endswith("finished: 5 succeeded\n")
    as_json = hero_proc(sock, "--json", "job", "batch", "-f", "-", "--wait", stdin=ok_jobs)
    finished = orjson.loads(as_json.stdout)["finished"]
    assert finished == {
        "total": 5,
        "ended": 5,
        "missing": 0,
        "counts": {"succeeded": 5},
        "done": True,
    }
    # The RPC refuses bad ids precisely and counts unknown ones as missing.
    with daemon.client() as c:
        for ids, field in (([], "ids"), ([1, 0], "ids[1]"), ("1", "ids"), ([True], "ids[0]")):
            error = call_error(c, "job.wait_all", ids=ids)
            assert (error.code, (error.data or {}).get("field")) == (-32602, field)
        known = int(c.call("job.submit", command=["/bin/true"])["id"])
        finish(c, known)
        state = c.call("job.wait_all", ids=[known, known, 10**9], timeout_s=5)
        assert state == {
            "total": 2,
            "ended": 1,
            "missing": 1,
            "counts": {"succeeded": 1},
            "done": True,
        }
