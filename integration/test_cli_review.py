"""Hostile review of the CLI's logs, lists, waits and fast path (issue 11): real daemon, CLI.

Each test is an attack that once broke; the assertion is what must hold.
"""

from __future__ import annotations

import fcntl
import json
import os
import pty
import random
import signal
import socket
import struct
import subprocess
import sys
import termios
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from hero_procd.client import Client
from hero_procd.errors import HeroError
from integration.daemon_proc import DaemonProcess
from integration.helpers import call_error, finish, wait_for
from integration.test_cli import hero_proc, ok, ok_json, one_line_error
from integration.test_cli_more import read_pty

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


class HostileProxy:
    """A socket in front of the real daemon that hands its answers on badly: in random
    pieces with pauses, as an error, cut short, as garbage, or with another id."""

    def __init__(self, path: Path, daemon_socket: Path) -> None:
        self.path = path
        self.daemon_socket = daemon_socket
        self.mode = "pieces"
        self.calls = 0
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(str(path))
        self.listener.listen(16)
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return  # closed
            with conn:
                self._answer(conn)

    def _answer(self, conn: socket.socket) -> None:
        request = b""
        while b"\n" not in request:
            chunk = conn.recv(65536)
            if not chunk:
                return
            request += chunk
        self.calls += 1
        if self.mode == "hang":  # never answers: waits for the caller to go away
            while conn.recv(65536):
                pass
            return
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as upstream:
            upstream.connect(str(self.daemon_socket))
            upstream.sendall(request)
            answer = b""
            while b"\n" not in answer:
                answer += upstream.recv(65536)
        req_id = json.loads(request)["id"]
        if self.mode == "error":
            error = {"code": -32000, "message": "busy, try again", "data": {"why": "test"}}
            answer = json.dumps({"jsonrpc": "2.0", "id": req_id, "error": error}).encode() + b"\n"
        elif self.mode == "cut":
            answer = answer[: len(answer) // 2]
        elif self.mode == "garbage":
            answer = b"<html>not json</html>\n"
        elif self.mode == "other-id":
            answer = answer.replace(b'"id":%d' % req_id, b'"id":%d' % (req_id + 7))
        at = 0
        while at < len(answer):
            step = random.randint(1, 64) if self.mode == "pieces" else len(answer)
            conn.sendall(answer[at : at + step])
            at += step
            if self.mode == "pieces" and random.random() < 0.05:
                time.sleep(random.uniform(0, 0.01))

    def close(self) -> None:
        self.listener.close()


def test_fast_path_and_full_cli_agree_behind_a_hostile_transport(
    daemon: DaemonProcess, workdir: Path
) -> None:
    """Pieces, an error answer, a cut answer, garbage, a wrong id: stdout, stderr and the
    exit code of `status` and `ping` are the same on the fast path and the full CLI."""
    with daemon.client() as c:
        for name in ("a" * 128, "b.b@c:d-e_f", "9"):
            c.call("service.define", name=name, command=["/bin/true"])
    proxy = HostileProxy(workdir / "proxy.sock", daemon.socket_path)
    try:
        for mode in ("pieces", "error", "cut", "garbage", "other-id"):
            proxy.mode = mode
            for command in ("status", "ping"):
                before = proxy.calls
                fast = run_path("fast", proxy.path, command)
                fast_calls = proxy.calls - before
                full = run_path("full", proxy.path, command)
                seen = (fast.returncode, fast.stdout, fast.stderr)
                assert seen == (full.returncode, full.stdout, full.stderr), (mode, command)
                if mode == "pieces":
                    assert fast_calls == 1  # read in pieces by the fast path itself
                    assert fast.returncode == 0
                    assert command == "ping" or b"a" * 128 in fast.stdout
                else:
                    assert fast.returncode == 1 and fast.stdout == b"", (mode, fast.stderr)
                    assert fast.stderr.count(b"\n") == 1 and fast.stderr.startswith(b"hero-proc: ")
    finally:
        proxy.close()


def all_lines(c: Client, service: str) -> list[str]:
    """Every stored line of a service, page after page."""
    lines: list[str] = []
    after = 0
    while True:
        page = c.call("service.logs", name=service, after_seq=after, limit=10000)
        lines += [ln["text"] for ln in page["lines"]]
        if not page["lines"]:
            return lines
        after = page["next_seq"]


def test_merged_follow_through_restarts_deletion_and_a_flood(daemon: DaemonProcess) -> None:
    """`logs -f` of a flooding service restarted twice and of one deleted meanwhile: every
    stored line of the first exactly once, in order; the deletion of the second is said on
    stderr and the follow goes on (it used to end with 'not found', exit 1)."""
    sock = daemon.socket_path
    flood = "i=0; while [ $i -lt 4000 ]; do i=$((i+1)); echo $$-$i; done; exec sleep 1000"
    with daemon.client() as c:
        c.call("service.define", name="flood", script=flood)
        c.call("service.define", name="doomed", script="echo bye; exec sleep 1000")
        c.call("service.start", name="doomed", wait_s=10)
        first_line(c, "service.logs", {"name": "doomed"})
        follower = subprocess.Popen(
            [*CLI, "--socket", str(sock), "logs", "-f", "svc:flood", "svc:doomed"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            c.call("service.start", name="flood")
            for _ in range(2):
                time.sleep(random.uniform(0.05, 0.6))
                c.call("service.restart", name="flood")
            time.sleep(random.uniform(0.0, 0.5))
            c.call("service.stop", name="doomed")
            c.call("service.delete", name="doomed")

            def stored() -> list[str] | None:
                lines = all_lines(c, "flood")
                return lines if lines and lines[-1] == f"{pid}-4000" else None

            pid = wait_for(lambda: c.call("service.status", name="flood")["pid"], "flood's pid")

            expected = wait_for(stored, "the third life of flood written", 60)
            # The follower has printed them all once it printed the last stored line.
            last = f"flood  | {expected[-1]}\n"
            out = ""
            deadline = time.monotonic() + 60
            assert follower.stdout is not None
            while not out.endswith(last):
                assert time.monotonic() < deadline, out[-500:]
                line = follower.stdout.readline()
                assert line, f"the follower ended: {follower.wait()} {follower.stderr}"
                out += line
        finally:
            follower.terminate()
            rest, err = follower.communicate(timeout=30)
            out += rest  # nothing may come after the last line: it would be a line twice
            c.call("service.stop", name="flood")
    got = [ln.split(" | ", 1)[1] for ln in out.splitlines() if ln.startswith("flood ")]
    assert got == expected  # none lost, none twice, in order
    assert [ln for ln in out.splitlines() if ln.startswith("doomed")] == ["doomed | bye"]
    assert "doomed" in err and "deleted" in err and "Traceback" not in err, err


def test_bad_params_of_the_new_methods_are_precise(daemon: DaemonProcess) -> None:
    """Wrong types, out-of-range and unknown params of job.wait_all, run.wait, the logs' tail
    and since and the lists' paging: -32602 naming the field, and the daemon serves on."""
    big = 2**63
    cases: list[tuple[str, dict[str, Any], str]] = [
        ("job.wait_all", {"ids": "1"}, "ids"),
        ("job.wait_all", {"ids": []}, "ids"),
        ("job.wait_all", {}, "ids"),
        ("job.wait_all", {"ids": [1, 0]}, "ids[1]"),
        ("job.wait_all", {"ids": [True]}, "ids[0]"),
        ("job.wait_all", {"ids": [big]}, "ids[0]"),
        ("job.wait_all", {"ids": [1.0]}, "ids[0]"),
        ("job.wait_all", {"ids": [1], "timeout_s": -1}, "timeout_s"),
        ("job.wait_all", {"ids": [1], "timeout_s": "5"}, "timeout_s"),
        ("job.wait_all", {"ids": [1], "extra": 1}, "extra"),
        ("run.wait", {"id": 0}, "id"),
        ("run.wait", {"id": "1"}, "id"),
        ("run.wait", {"id": 1, "timeout_s": -0.5}, "timeout_s"),
        ("job.logs", {"id": 1, "tail": -1}, "tail"),
        ("job.logs", {"id": 1, "tail": big}, "tail"),
        ("job.logs", {"id": 1, "tail": 1.5}, "tail"),
        ("job.logs", {"id": 1, "tail": "3"}, "tail"),
        ("job.logs", {"id": 1, "since": -1}, "since"),
        ("job.logs", {"id": 1, "since": "1h"}, "since"),
        ("job.logs", {"id": 1, "since": True}, "since"),
        ("service.logs", {"name": "x", "tail": -3}, "tail"),
        ("service.logs", {"name": "x", "since": [1]}, "since"),
        ("job.list", {"order": "newest"}, "order"),
        ("job.list", {"order": "desc", "before_id": 0}, "before_id"),
        ("job.list", {"order": "desc", "before_id": big}, "before_id"),
        ("job.list", {"order": "desc", "after_id": 3}, "after_id"),
        ("job.list", {"before_id": 3}, "before_id"),
        ("run.list", {"order": "desc", "before_id": -5}, "before_id"),
        ("run.list", {"order": 1}, "order"),
    ]
    with daemon.client() as c:
        for method, params, field in cases:
            err = call_error(c, method, **params)
            assert err.code == -32602, (method, params, err)
            assert (err.data or {}).get("field") == field, (method, params, err.data)
        assert c.call("system.ping")
        # The largest tail is no error: the whole log.
        job_id = int(c.call("job.submit", script="echo a; echo b")["id"])
        finish(c, job_id)
        page = c.call("job.logs", id=job_id, tail=big - 1)
        assert [ln["text"] for ln in page["lines"]] == ["a", "b"] and page["done"]


def test_waits_answer_a_cancel_and_a_wipe_within_their_timeout(daemon: DaemonProcess) -> None:
    """run.wait and job.wait_all woken by run.cancel, and by system.wipe_all deleting what
    they wait for: an answer well before their timeout (run.wait: not found)."""
    results: dict[str, Any] = {}

    def wait_in_thread(name: str, method: str, params: dict[str, Any]) -> threading.Thread:
        def go() -> None:
            started = time.monotonic()
            try:
                with daemon.client() as waiter:
                    results[name] = waiter.call(method, params)
            except HeroError as exc:
                results[name] = exc
            results[name + "_s"] = time.monotonic() - started

        thread = threading.Thread(target=go)
        thread.start()
        return thread

    sleeper = {"command": ["sleep", "600"]}
    with daemon.client() as c:
        run = c.call("run.submit", jobs=[{**sleeper, "key": f"k{i}"} for i in range(3)])
        ids = list(run["jobs"].values())
        wait_for(lambda: c.call("job.get", id=ids[0])["status"] == "running" or None, "running")
        threads = [
            wait_in_thread("run", "run.wait", {"id": run["id"], "timeout_s": 60}),
            wait_in_thread("all", "job.wait_all", {"ids": ids, "timeout_s": 60}),
        ]
        time.sleep(random.uniform(0.0, 0.4))
        c.call("run.cancel", id=run["id"])
        for t in threads:
            t.join(90)
        assert results["run"]["done"] and results["run"]["status"] == "cancelled"
        assert results["all"]["done"] and results["all"]["counts"] == {"cancelled": 3}
        assert results["run_s"] < 30 and results["all_s"] < 30, results

        # Deleted while waited for: system.wipe_all under a run.wait and a job.wait_all.
        run = c.call("run.submit", jobs=[{**sleeper, "key": "k"}])
        ids = list(run["jobs"].values())
        wait_for(lambda: c.call("job.get", id=ids[0])["status"] == "running" or None, "running")
        threads = [
            wait_in_thread("run", "run.wait", {"id": run["id"], "timeout_s": 60}),
            wait_in_thread("all", "job.wait_all", {"ids": ids, "timeout_s": 60}),
        ]
        time.sleep(random.uniform(0.0, 0.4))
        c.call("system.wipe_all", confirm=True)
        for t in threads:
            t.join(90)
        # wipe_all cancels the running job before it deletes the rows: a waiter may be
        # answered by either step (the cancel, or the deletion), never by its timeout.
        run_result = results["run"]
        assert (isinstance(run_result, HeroError) and "not found" in str(run_result)) or (
            not isinstance(run_result, HeroError)
            and run_result["done"]
            and run_result["status"] == "cancelled"
        ), run_result
        all_result = results["all"]
        assert all_result["done"], all_result
        assert all_result["missing"] == 1 or all_result["counts"] == {"cancelled": 1}, all_result
        assert results["run_s"] < 30 and results["all_s"] < 30, results
        assert c.call("system.ping")


def test_paging_newest_first_while_jobs_come_and_go(daemon: DaemonProcess) -> None:
    """`job list --last N` then `--before-id` from the hint, while new jobs are submitted
    and random older ones deleted between pages: no job twice, in order, and every job
    that was never deleted is listed."""
    sock = daemon.socket_path
    with daemon.client() as c:
        ids = []
        for i in range(40):
            ids.append(int(c.call("job.submit", command=["/bin/true"], tags=["p", f"v{i}"])["id"]))
        for job_id in ids:
            finish(c, job_id)
        gone: set[int] = set()
        seen: list[int] = []
        before: int | None = None
        while True:
            paging = [] if before is None else ["--before-id", str(before)]
            args = ["--json", "job", "list", "--tag", "p", "--last", "7", *paging]
            page = ok_json(hero_proc(sock, *args))
            seen += [j["id"] for j in page["jobs"]]
            # Between pages: a new job on the list, and a random older one deleted.
            c.call("job.submit", command=["/bin/true"], tags=["p"])
            victim = random.randrange(len(ids))
            if ids[victim] not in gone:
                assert c.call("job.clean_by_tag", tag=f"v{victim}")["deleted"]["jobs"] == 1
                gone.add(ids[victim])
            before = page["next_before_id"]
            if before is None:
                break
        assert len(seen) == len(set(seen)), "a job listed twice"
        assert seen == sorted(seen, reverse=True)
        assert set(ids) - gone <= set(seen)  # every job that stayed was listed
        assert max(seen) <= max(ids)  # the first page's newest stays the newest shown


def test_progress_line_fits_a_narrow_terminal(daemon: DaemonProcess) -> None:
    """`run wait` on a 40-column terminal: each redraw of the live line fits in the width
    (a longer one wraps, and `\\r ESC[K` then clears only its last row: a trail of lines)."""
    sock = daemon.socket_path
    with daemon.client() as c:
        jobs = [
            {"key": "ok", "command": ["/bin/true"]},
            {"key": "bad", "command": ["/bin/false"]},
            {"key": "slow1", "command": ["sleep", f"{random.uniform(1.2, 2.0):.2f}"]},
            {"key": "slow2", "command": ["sleep", "2.2"]},
        ]
        run_id = int(c.call("run.submit", jobs=jobs)["id"])
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 40, 0, 0))
    argv = [*CLI, "--socket", str(sock), "run", "wait", str(run_id)]
    try:
        done = subprocess.run(argv, stdout=subprocess.PIPE, stderr=follower, timeout=60)
    finally:
        os.close(follower)
    terminal = read_pty(leader).decode()
    os.close(leader)
    assert done.returncode == 1  # a job failed
    draws = [d for d in terminal.split("\r\x1b[K") if d]
    assert draws, terminal  # the line was shown
    assert all(len(d) < 40 for d in draws), draws
    assert all(d.startswith(f"run {run_id}: ") for d in draws), draws


def test_numbers_past_what_the_daemon_takes(daemon: DaemonProcess) -> None:
    """-n past 64 bits means every line; --last/--limit past a page and ids past 64 bits
    are one error line, never an orjson traceback ('Integer exceeds 64-bit range')."""
    sock = daemon.socket_path
    huge = str(10**20)
    with daemon.client() as c:
        job_id = int(c.call("job.submit", script="echo a; echo b")["id"])
        finish(c, job_id)
    assert ok(hero_proc(sock, "job", "logs", str(job_id), "-n", huge)) == "a\nb\n"
    merged = ok(hero_proc(sock, "logs", "-n", huge, f"job:{job_id}"))
    assert [ln.split(" | ")[1] for ln in merged.splitlines()] == ["a", "b"]
    for args in (["job", "list", "--last", "10001"], ["run", "list", "--limit", huge]):
        one_line_error(hero_proc(sock, *args), "not in the range", code=2)
    one_line_error(hero_proc(sock, "job", "list", "--before-id", huge), "--before-id", code=2)
    for args in (["job", "get", huge], ["run", "wait", huge], ["job", "logs", huge]):
        one_line_error(hero_proc(sock, *args), "cannot be sent", code=1)


def test_a_huge_status_is_the_same_on_both_paths(daemon: DaemonProcess) -> None:
    """800 stopped services with names of 100-128 characters: the answer comes in many
    reads; the fast path prints the very bytes of the full CLI, on a pipe and with NO_COLOR."""
    with daemon.client() as c:
        for i in range(800):
            name = f"s{i:04d}-" + "x" * random.randrange(94, 123)
            c.call("service.define", name=name, command=["/bin/true"])
    fast = run_path("fast", daemon.socket_path, "status")
    full = run_path("full", daemon.socket_path, "status")
    assert fast.returncode == full.returncode == 0, (fast.stderr, full.stderr)
    assert fast.stdout == full.stdout and fast.stderr == full.stderr == b""
    assert fast.stdout.count(b"\n") == 801 and len(fast.stdout) > 100_000


def test_ctrl_c_while_the_daemon_is_silent_is_the_same_on_both_paths(
    daemon: DaemonProcess, workdir: Path
) -> None:
    """SIGINT while `status`/`ping` wait for a daemon that does not answer: exit 130 and a
    lone newline on stderr (no traceback), on the fast path and the full CLI alike."""
    proxy = HostileProxy(workdir / "proxy.sock", daemon.socket_path)
    proxy.mode = "hang"
    try:
        for command in ("status", "ping"):
            seen = []
            for path in ("fast", "full"):
                before = proxy.calls
                argv = [sys.executable, *ENTRIES[path], "--socket", str(proxy.path), command]
                proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
                wait_for(lambda: proxy.calls > before or None, "the call to arrive")  # noqa: B023
                time.sleep(random.uniform(0.0, 0.2))
                proc.send_signal(signal.SIGINT)
                out, err = proc.communicate(timeout=30)
                seen.append((proc.returncode, out, err))
            assert seen[0] == seen[1] == (130, b"", b"\n"), (command, seen)
    finally:
        proxy.close()
