"""Logs with time, tail and since; several owners merged; lists newest first (real daemon, CLI)."""

from __future__ import annotations

import itertools
import os
import pty
import re
import subprocess
import sys
import time
from datetime import datetime
from typing import Any

import orjson

from hero_procd.client import Client
from integration.daemon_proc import DaemonProcess
from integration.helpers import call_error, finish, wait_for
from integration.test_cli import hero_proc, ok, ok_json, one_line_error, rows_of
from integration.test_cli_more import read_pty

RFC3339_MS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}[+-]\d\d:\d\d$")


def counted_job(c: Client, n: int, pause_s: float = 0.0) -> int:
    """A finished job that printed `line 1` .. `line N` (pausing between lines if asked)."""
    script = f"for i in $(seq 1 {n}); do echo line $i; sleep {pause_s}; done"
    job_id = int(c.call("job.submit", script=script)["id"])
    finish(c, job_id)
    return job_id


def test_job_logs_tail_since_timestamps(daemon: DaemonProcess) -> None:
    """-n N gives the last N lines (fetched as such), -t stamps each line, --since filters."""
    sock = daemon.socket_path
    with daemon.client() as c:
        job_id = counted_job(c, 3000)
        logs = c.call("job.logs", id=job_id, limit=10000)["lines"]
        # The daemon sends only the tail: one small page, not 3,000 lines.
        tail = c.call("job.logs", id=job_id, tail=5)
        assert [ln["text"] for ln in tail["lines"]] == [f"line {i}" for i in range(2996, 3001)]
        assert tail["done"] is True and tail["next_seq"] == logs[-1]["seq"]
    last = ok(hero_proc(sock, "job", "logs", str(job_id), "-n", "3"))
    assert last == "line 2998\nline 2999\nline 3000\n"
    assert ok(hero_proc(sock, "job", "logs", str(job_id), "--tail", "0")) == ""
    assert ok(hero_proc(sock, "job", "logs", str(job_id), "-n", "5000")).count("\n") == 3000
    stamped = ok(hero_proc(sock, "job", "logs", str(job_id), "-n", "2", "-t")).splitlines()
    for line, original in zip(stamped, logs[-2:], strict=True):
        stamp, text = line.split(" ", 1)
        assert RFC3339_MS.match(stamp), stamp
        assert text == original["text"]
        # The stamp is the line's own time, in local time with its offset.
        assert abs(datetime.fromisoformat(stamp).timestamp() - original["ts"]) < 0.001
    # --since: an RFC 3339 time between two lines keeps those at or after it.
    cut = logs[1500]["ts"]
    moment = datetime.fromtimestamp(cut).astimezone().isoformat(timespec="microseconds")
    since = ok(hero_proc(sock, "job", "logs", str(job_id), "--since", moment)).splitlines()
    exact = datetime.fromisoformat(moment).timestamp()  # what the text says, to the microsecond
    assert since == [ln["text"] for ln in logs if ln["ts"] >= exact]
    assert 1400 < len(since) < 1600
    assert ok(hero_proc(sock, "job", "logs", str(job_id), "--since", "1h")).count("\n") == 3000
    future = datetime.fromtimestamp(time.time() + 3600).isoformat()
    assert ok(hero_proc(sock, "job", "logs", str(job_id), "--since", future)) == ""
    bad = hero_proc(sock, "job", "logs", str(job_id), "--since", "yesterday-ish")
    one_line_error(bad, "--since", "duration", code=2)
    one_line_error(hero_proc(sock, "job", "logs", str(job_id), "-n", "-1"), "-n", code=2)


def test_service_logs_since_duration(daemon: DaemonProcess) -> None:
    """service logs --since 2s leaves out older lines; -n with -f prints the tail then new lines."""
    sock = daemon.socket_path
    with daemon.client() as c:
        c.call(
            "service.define",
            name="tick",
            script="i=0; while :; do i=$((i+1)); echo t$i; sleep 0.1; done",
        )
        c.call("service.start", name="tick", wait_s=10)
        try:
            wait_for(
                lambda: len(c.call("service.logs", name="tick")["lines"]) >= 40 or None,
                "40 lines of tick",
            )
            recent = ok(hero_proc(sock, "service", "logs", "tick", "--since", "2s")).split()
            everything = [
                ln["text"] for ln in c.call("service.logs", name="tick", limit=10000)["lines"]
            ]
            assert 5 <= len(recent) < len(everything)
            assert (
                recent == everything[everything.index(recent[0]) : everything.index(recent[-1]) + 1]
            )
            followed = hero_proc(
                sock, "service", "logs", "tick", "-n", "2", "-f", "--max-wait", "1"
            )
            lines = ok(followed).split()
            # The two last lines at the start, then the new ones, in order, no gap.
            numbers = [int(t[1:]) for t in lines]
            assert len(numbers) >= 4 and numbers == list(
                range(numbers[0], numbers[0] + len(numbers))
            )
        finally:
            c.call("service.stop", name="tick")


def test_logs_of_several_owners_merged(daemon: DaemonProcess) -> None:
    """`logs` merges services and jobs in time order, each line prefixed with its owner."""
    sock = daemon.socket_path
    with daemon.client() as c:
        c.call(
            "service.define",
            name="web",
            script="for i in 1 2 3; do echo w$i; sleep 0.2; done; exec sleep 1000",
        )
        c.call(
            "service.define",
            name="db",
            script="sleep 0.1; for i in 1 2 3; do echo d$i >&2; sleep 0.2; done; exec sleep 1000",
        )
        c.call("service.start", name="web")
        c.call("service.start", name="db")
        job_id = int(c.call("job.submit", script="sleep 0.05; echo j1; sleep 0.3; echo j2")["id"])
        try:
            finish(c, job_id)

            def three_lines(name: str) -> bool | None:
                return len(c.call("service.logs", name=name)["lines"]) == 3 or None

            wait_for(lambda: three_lines("web"), "3 lines of web")
            wait_for(lambda: three_lines("db"), "3 lines of db")
            merged = hero_proc(sock, "logs", "svc:web", "db", str(job_id))
            assert merged.returncode == 0, merged.stderr
            width = len(f"job:{job_id}")
            out = merged.stdout.splitlines()
            assert out[0].startswith("web".ljust(width) + " | ")
            assert {ln.split(" | ")[1] for ln in out} == {"w1", "w2", "w3", "j1", "j2"}
            assert merged.stderr.splitlines() == [f"{'db'.ljust(width)} | d{i}" for i in (1, 2, 3)]
            # --json: one object per line with its owner, in time order across owners.
            records = [
                orjson.loads(x)
                for x in ok(
                    hero_proc(sock, "--json", "logs", "web", "db", f"job:{job_id}")
                ).splitlines()
            ]
            assert [r["ts"] for r in records] == sorted(r["ts"] for r in records)
            assert {r["owner"] for r in records} == {"web", "db", f"job:{job_id}"}
            assert [r["text"] for r in records if r["owner"] == "db"] == ["d1", "d2", "d3"]
            # -n is per owner; -t puts the time after the owner.
            tails = ok(
                hero_proc(sock, "logs", "-n", "1", "-t", "web", f"job:{job_id}")
            ).splitlines()
            assert sorted(ln.split(" | ")[0].strip() for ln in tails) == sorted(
                ["web", f"job:{job_id}"]
            )
            for line in tails:
                stamp, text = line.split(" | ")[1].split(" ", 1)
                assert RFC3339_MS.match(stamp) and text in ("w3", "j2")
            # No owner: every service.
            every = hero_proc(sock, "logs")
            assert every.returncode == 0, every.stderr
            assert [ln.split(" | ")[1] for ln in every.stdout.splitlines()] == ["w1", "w2", "w3"]
            assert [ln.split(" | ")[0] for ln in every.stdout.splitlines()] == ["web"] * 3
            assert every.stderr.splitlines() == ["db  | d1", "db  | d2", "db  | d3"]
            # Unknown owners are errors naming them; nothing else is printed.
            one_line_error(hero_proc(sock, "logs", "web", "nope"), "not found", "nope")
            one_line_error(hero_proc(sock, "logs", "job:999999"), "not found", "999999")
            one_line_error(hero_proc(sock, "logs", "job:x"), "job id", code=2)
        finally:
            c.call("service.stop", name="web")
            c.call("service.stop", name="db")


def test_logs_follow_merges_new_lines_and_colours_on_a_terminal(daemon: DaemonProcess) -> None:
    """-f prints new lines of every owner as they come; labels are coloured only on a TTY;
    following only jobs ends when they have all ended."""
    sock = daemon.socket_path
    with daemon.client() as c:
        first = int(c.call("job.submit", script="sleep 0.3; echo a1; sleep 0.6; echo a2")["id"])
        second = int(c.call("job.submit", script="sleep 0.6; echo b1; sleep 0.6; echo b2")["id"])
    argv = [sys.executable, "-m", "hero_procd.cli.main", "--socket", str(sock)]
    leader, follower = pty.openpty()
    try:
        env = {k: v for k, v in os.environ.items() if k != "NO_COLOR"}
        done = subprocess.run(
            [*argv, "logs", "-f", str(first), str(second)],
            stdout=follower,
            stderr=subprocess.PIPE,
            env=env,
            timeout=60,
            check=False,
        )
    finally:
        os.close(follower)
    out = read_pty(leader).decode()
    os.close(leader)
    assert done.returncode == 0, done.stderr
    lines = re.sub(r"\x1b\[[0-9;]*m", "", out).split("\r\n")
    assert lines[-1] == ""
    # Each owner's lines in order, under its padded label (ids may differ in length).
    width = max(len(f"job:{first}"), len(f"job:{second}"))
    mine = [ln for ln in lines if ln.startswith(f"job:{first}".ljust(width) + " | ")]
    theirs = [ln for ln in lines if ln.startswith(f"job:{second}".ljust(width) + " | ")]
    assert [ln[-2:] for ln in mine] == ["a1", "a2"] and [ln[-2:] for ln in theirs] == ["b1", "b2"]
    assert len(lines) == 5
    assert f"\x1b[36mjob:{first}".encode().decode() in out  # the first owner's colour
    # Into a pipe: no colour.
    piped = ok(hero_proc(sock, "logs", "-f", str(first), str(second)))
    assert "\x1b[" not in piped and piped.count("\n") == 4


def job_ids(result: Any) -> list[int]:
    return [j["id"] for j in result["jobs"]]


def test_lists_newest_first(daemon: DaemonProcess) -> None:
    """job list and run list show the newest first; --last N; --before-id pages down."""
    sock = daemon.socket_path
    with daemon.client() as c:
        ids = [int(c.call("job.submit", command=["/bin/true"], tags=["l"])["id"]) for _ in range(7)]
        runs = [
            int(c.call("run.submit", jobs=[{"key": "k", "command": ["/bin/true"]}])["id"])
            for _ in range(3)
        ]
        # The RPC default stays oldest first; order desc is newest first.
        assert job_ids(c.call("job.list", tag="l", limit=2)) == ids[:2]
        page = c.call("job.list", tag="l", order="desc", limit=3)
        assert job_ids(page) == ids[::-1][:3] and page["next_before_id"] == ids[4]
        assert job_ids(c.call("job.list", tag="l", order="desc", before_id=ids[4])) == ids[:4][::-1]
        # Each order pages one way only: a precise -32602 naming the param.
        wrong = call_error(c, "job.list", order="desc", after_id=1)
        assert (wrong.code, (wrong.data or {}).get("field")) == (-32602, "after_id")
        wrong = call_error(c, "run.list", before_id=5)
        assert (wrong.code, (wrong.data or {}).get("field")) == (-32602, "before_id")
        wrong = call_error(c, "job.logs", id=ids[0], tail=-1)
        assert (wrong.code, (wrong.data or {}).get("field")) == (-32602, "tail")
        assert c.call("system.ping")  # and the daemon goes on
    last = rows_of(ok(hero_proc(sock, "job", "list", "--tag", "l", "--last", "3")))
    assert [int(r[0]) for r in last] == ids[::-1][:3]
    more = hero_proc(sock, "job", "list", "--tag", "l", "--last", "3")
    assert more.stderr.strip() == f"(more: --before-id {ids[4]})"
    older = rows_of(ok(hero_proc(sock, "job", "list", "--tag", "l", "--before-id", str(ids[4]))))
    assert [int(r[0]) for r in older] == ids[:4][::-1]
    default = ok_json(hero_proc(sock, "--json", "job", "list", "--tag", "l"))
    assert job_ids(default) == ids[::-1]
    oldest = ok_json(
        hero_proc(sock, "--json", "job", "list", "--tag", "l", "--oldest-first", "--limit", "2")
    )
    assert job_ids(oldest) == ids[:2] and oldest["next_after_id"] == ids[1]
    listed = rows_of(ok(hero_proc(sock, "run", "list", "--last", "2")))
    assert [int(r[0]) for r in listed] == runs[::-1][:2]
    one_line_error(
        hero_proc(sock, "job", "list", "--last", "2", "--after-id", "1"), "order", code=2
    )


def test_logs_of_several_owners_merge_across_pages(daemon: DaemonProcess) -> None:
    """Without -f, the merge reads each owner a page at a time (not all of it first):
    owners of several pages each, printing at the same time, come out in time order,
    each owner's lines complete and in their own order."""
    n = 5000  # 3 pages of LOG_PAGE (2,000) per owner
    program = (
        "import sys, time\n"
        f"for i in range(1, {n} + 1):\n"
        "    print(sys.argv[1], i, flush=True)\n"
        "    if i % 50 == 0:\n"
        "        time.sleep(0.002)\n"
    )
    with daemon.client() as c:
        ids = [
            int(c.call("job.submit", command=[sys.executable, "-c", program, tag])["id"])
            for tag in ("a", "b")
        ]
        for job_id in ids:
            finish(c, job_id)
        wait_for(
            lambda: all(c.call("job.logs", id=i, after_seq=n - 1)["lines"] for i in ids) or None,
            "every line stored",
        )
    shown = hero_proc(daemon.socket_path, "--json", "logs", *(f"job:{i}" for i in ids))
    assert shown.returncode == 0, shown.stderr
    records = [orjson.loads(x) for x in shown.stdout.splitlines()]
    assert len(records) == 2 * n
    assert [r["ts"] for r in records] == sorted(r["ts"] for r in records)
    for tag, job_id in zip(("a", "b"), ids, strict=True):
        mine = [r["text"] for r in records if r["owner"] == f"job:{job_id}"]
        assert mine == [f"{tag} {i}" for i in range(1, n + 1)]
    # The two owners' lines really interleave (else the merge was not put to work).
    owners = [r["owner"] for r in records]
    assert sum(1 for x, y in itertools.pairwise(owners) if x != y) > 2
    # The text form: the same lines, in the same order, prefixed with their owner.
    text = ok(hero_proc(daemon.socket_path, "logs", *(f"job:{i}" for i in ids))).splitlines()
    assert [ln.split(" | ", 1)[1] for ln in text] == [r["text"] for r in records]
