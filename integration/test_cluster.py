"""Three real daemons (nodes n1 to n3, three sockets) sharing one PostgreSQL queue.

Each test has a schema of its own (tests/pg.py); without PostgreSQL they are
skipped with one line, or fail under HERO_PROC_REQUIRE_PG=1.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import os
import random
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest

from hero_procd.client import Client
from hero_procd.errors import HeroError, StorageError
from integration.daemon_proc import DaemonProcess, cleanup, short_tmpdir
from integration.helpers import kill_leftovers, wait_dead, wait_for
from integration.netns import NetNs, NetNsUnavailable
from integration.tcp_proxy import CuttableProxy
from integration.test_cli import hero_proc
from tests.pg import pg_schema

NODE_TIMEOUT_S = 3.0
NODES = ("n1", "n2", "n3")


class Cluster:
    """The three daemons of a test, and a client per node."""

    def __init__(
        self,
        workdir: Path,
        dsn: str,
        max_parallel: int,
        dsns: dict[str, str] | None = None,
        wraps: dict[str, list[str]] | None = None,
    ) -> None:
        """`dsns`: a node's own way to the database; `wraps`: what a node runs under
        (`ip netns exec NS`). Each node's jobs see its name in $TEST_NODE."""
        self.workdir = workdir
        self.dsn = dsn
        args = ["--node-timeout", str(NODE_TIMEOUT_S), "--max-parallel", str(max_parallel)]
        self.procs = {
            n: DaemonProcess(
                workdir,
                extra_args=args,
                env={"TEST_NODE": n},
                db=(dsns or {}).get(n, dsn),
                node=n,
                wrap=(wraps or {}).get(n),
            )
            for n in NODES
        }
        self.clients: dict[str, Client] = {}

    def start(self) -> Cluster:
        """Start every node; a client for each."""
        for name, proc in self.procs.items():
            proc.start()
            self.clients[name] = proc.client()
        return self

    def close(self) -> None:
        """Stop the nodes still running (SIGTERM; every one, even after one failed to stop
        cleanly), and any job process left behind; then say which did not exit 0."""
        for client in self.clients.values():
            client.close()
        bad: list[str] = []
        for proc in self.procs.values():
            if proc.proc is not None and proc.proc.poll() is None:
                code = proc.stop()
                if code != 0:
                    bad.append(f"{proc.node} exited {code}:\n{proc.log()}")
            kill_leftovers(proc.instance_key)
        assert not bad, "\n".join(bad)


@pytest.fixture
def cluster(request: pytest.FixtureRequest) -> Iterator[Cluster]:
    """Three nodes on a fresh schema (max parallel per node: the test's `max_parallel` mark)."""
    mark = request.node.get_closest_marker("max_parallel")
    max_parallel = mark.args[0] if mark else 8
    with pg_schema("cl") as dsn:
        workdir = short_tmpdir()
        cl = Cluster(workdir, dsn, max_parallel)
        try:
            yield cl.start()
        finally:
            try:
                cl.close()
            finally:
                cleanup(workdir)


def all_jobs(c: Client) -> list[dict[str, Any]]:
    """Every job, paging through job.list."""
    out: list[dict[str, Any]] = []
    after = 0
    while True:
        page = c.call("job.list", after_id=after, limit=1000)["jobs"]
        if not page:
            return out
        out.extend(page)
        after = page[-1]["id"]


def all_succeeded(c: Client) -> list[dict[str, Any]] | None:
    """Every job, once all have succeeded (None before)."""
    jobs = all_jobs(c)
    return jobs if all(j["status"] == "succeeded" for j in jobs) else None


def lines(path: Path) -> list[str]:
    """The lines of a file the jobs append to (none yet: empty)."""
    try:
        return path.read_text().split()
    except FileNotFoundError:
        return []


def test_nodes_see_each_other_and_system_info_names_backend_and_node(cluster: Cluster) -> None:
    """node.list on any node shows all three alive; system.info says postgresql and the node."""
    for name, c in cluster.clients.items():
        info = c.call("system.info")
        assert info["backend"] == "postgresql" and info["node"] == name
        listed = c.call("node.list")
        assert listed["self"] == name
        assert [n["name"] for n in listed["nodes"]] == list(NODES)
        assert all(n["alive"] and n["heartbeat_age_s"] < NODE_TIMEOUT_S for n in listed["nodes"])
    shown = hero_proc(cluster.procs["n2"].socket_path, "node", "list")
    assert shown.returncode == 0, shown.stderr
    table = shown.stdout.splitlines()
    assert table[0].split() == ["NODE", "VERSION", "HEARTBEAT", "STATE", "RUNNING"]
    assert [row.split()[:2] for row in table[1:]] == [["n1", "0.1.0"], ["n2", "*"], ["n3", "0.1.0"]]


@pytest.mark.max_parallel(16)
def test_3000_jobs_on_three_nodes_each_run_exactly_once(cluster: Cluster) -> None:
    """Every id appended exactly once, all succeeded, and every node took a share."""
    out = cluster.workdir / "ids"
    script = f'echo "$HERO_PROC_JOB_ID" >> {out}'
    res = cluster.clients["n1"].call(
        "job.submit_batch", jobs=[{"script": script}] * 3000, defaults={"tags": ["bulk"]}
    )
    ids = res["submitted"]
    assert len(ids) == 3000
    wait_for(lambda: True if len(lines(out)) >= 3000 else None, "3000 appends", timeout_s=240)
    c2 = cluster.clients["n2"]
    jobs = wait_for(lambda: all_succeeded(c2), "every job to succeed", timeout_s=60)
    seen = Counter(int(x) for x in lines(out))
    assert sorted(seen) == sorted(ids) and set(seen.values()) == {1}
    assert all(j["attempt"] == 1 for j in jobs)
    per_node = Counter(j["node"] for j in jobs)
    assert set(per_node) == set(NODES), per_node


@pytest.mark.max_parallel(4)
def test_kill_9_of_a_node_its_attempts_recovered_by_the_others_never_twice_at_once(
    cluster: Cluster,
) -> None:
    """n2 dies mid-run: its attempts run again elsewhere within node_timeout_s + 5 s, and no
    job's attempts overlap in time (each attempt writes its start and end; one killed with
    n2 writes no end: the moment its process is seen gone stands for it)."""
    out = cluster.workdir / "spans"
    script = (
        f'echo "$HERO_PROC_JOB_ID $HERO_PROC_ATTEMPT start $(date +%s.%N) $$" >> {out}; '
        f'sleep 1; echo "$HERO_PROC_JOB_ID $HERO_PROC_ATTEMPT end $(date +%s.%N)" >> {out}'
    )
    c1 = cluster.clients["n1"]
    ids = c1.call("job.submit_batch", jobs=[{"script": script, "retries": 2}] * 24)["submitted"]

    def n2_busy() -> list[int] | None:
        running = [j for j in all_jobs(c1) if j["status"] == "running" and j["node"] == "n2"]
        return [j["id"] for j in running] or None

    on_n2 = wait_for(n2_busy, "n2 to run jobs")
    cluster.procs["n2"].kill()
    killed_at = time.time()
    # n2's attempts die with it (the watchdog kills its cells): they write no end. The
    # time each open attempt's shell is seen gone bounds its end from above.
    # Read again until no open attempt is left unseen: a process n2 spawned just before
    # the kill may write its start line after a first read (before the watchdog's kill).
    seen_gone: dict[tuple[str, str], float] = {}
    while True:
        open_now: dict[tuple[str, str], int] = {}
        for line in out.read_text().splitlines():
            jid, attempt, what, *rest = line.split()
            if what == "start":
                open_now[(jid, attempt)] = int(rest[1])
            else:
                open_now.pop((jid, attempt), None)
        unseen = {key: pid for key, pid in open_now.items() if key not in seen_gone}
        if not unseen:
            break
        for key, pid in unseen.items():
            wait_dead(pid, f"attempt {key}")
            seen_gone[key] = time.time()

    def all_done() -> list[dict[str, Any]] | None:
        js = all_jobs(c1)
        return js if all(j["status"] in ("succeeded", "failed", "lost") for j in js) else None

    jobs = {j["id"]: j for j in wait_for(all_done, "every job to end", timeout_s=90)}
    assert {j["status"] for j in jobs.values()} == {"succeeded"}, jobs
    for job_id in on_n2:
        job = jobs[job_id]
        assert job["attempt"] >= 2 and job["node"] != "n2", job
        assert job["started_at"] <= killed_at + NODE_TIMEOUT_S + 5.0, (job, killed_at)
    listed = {n["name"]: n for n in c1.call("node.list")["nodes"]}
    assert not listed["n2"]["alive"] and listed["n2"]["state"] == "dead"
    spans: dict[tuple[str, str], dict[str, float]] = {}
    for line in out.read_text().splitlines():
        jid, attempt, what, at, *_ = line.split()
        spans.setdefault((jid, attempt), {})[what] = float(at)
    by_job: dict[str, list[tuple[float, float]]] = {}
    for (jid, attempt), s in spans.items():
        end = s.get("end", seen_gone.get((jid, attempt), math.inf))
        by_job.setdefault(jid, []).append((s["start"], end))
    assert {int(j) for j in by_job} == set(ids)
    for jid, attempts in by_job.items():
        attempts.sort()
        for (_, end), (start, _) in itertools.pairwise(attempts):
            assert start >= end, f"job {jid} ran twice at once: {attempts}"


# An attempt's process: says whether the previous attempt's process still ran when it
# started (a zombie is dead: PID 1 here may never reap), then waits long.
OVERLAP_CHECK = (
    'f="{dir}/$HERO_PROC_JOB_ID"; verdict=first; '
    'if [ -e "$f.pid" ]; then old=$(cat "$f.pid"); '
    "state=$(sed -n 's/^State:[[:space:]]*\\(.\\).*/\\1/p' /proc/$old/status 2>/dev/null); "
    'case "$state" in ""|Z|X) verdict=clean ;; *) verdict=overlap ;; esac; fi; '
    'echo "$HERO_PROC_ATTEMPT $verdict" >> "$f.log"; echo $$ > "$f.pid"; exec sleep 600'
)


@pytest.mark.max_parallel(4)
def test_kill_9_of_a_node_kills_its_attempts_before_the_node_timeout(cluster: Cluster) -> None:
    """n2 dies by kill -9 while its jobs run `sleep 600`: the watchdog kills them within
    a few seconds, before the node timeout, so the attempts run again elsewhere start
    after them (no attempt on two nodes at once), without n2 being started again."""
    out = cluster.workdir / "overlap"
    out.mkdir()
    c1 = cluster.clients["n1"]
    if c1.call("system.info")["watchdog"] is None:
        pytest.skip("no cgroup containment here: no watchdog")
    script = OVERLAP_CHECK.format(dir=out)
    job = {"script": script, "retries": 1, "retry_delay_s": 0}
    ids = c1.call("job.submit_batch", jobs=[job] * 12)["submitted"]

    def n2_running() -> dict[int, int] | None:
        js = [c1.call("job.get", id=i) for i in ids]
        if not all(j["status"] == "running" and j["pid"] for j in js):
            return None
        on_n2 = {j["id"]: j["pid"] for j in js if j["node"] == "n2"}
        return on_n2 or None

    on_n2 = wait_for(n2_running, "every job to run, some on n2", timeout_s=60)
    cluster.procs["n2"].kill()
    killed_at = time.monotonic()
    for pid in on_n2.values():
        wait_dead(pid, "n2's sleep 600")
    gone_after = time.monotonic() - killed_at
    assert gone_after < NODE_TIMEOUT_S, f"n2's processes took {gone_after:.2f} s to go"
    # Every node was full (4 each): room for n2's jobs on the others.
    for job_id in set(ids) - set(on_n2):
        c1.call("job.cancel", id=job_id)

    def retried() -> list[str] | None:
        logs = [(out / f"{i}.log") for i in on_n2]
        if not all(p.exists() and len(p.read_text().splitlines()) >= 2 for p in logs):
            return None
        return [line for p in logs for line in p.read_text().splitlines()]

    lines = wait_for(retried, "n2's jobs to run again elsewhere", timeout_s=60)
    assert sorted(set(lines)) == ["1 first", "2 clean"], lines
    for job_id in on_n2:
        assert c1.call("job.get", id=job_id)["node"] != "n2"
    for job_id in on_n2:
        c1.call("job.cancel", id=job_id)


def test_a_per_second_schedule_on_three_nodes_fires_once_per_second(cluster: Cluster) -> None:
    """Every node's scheduler sees the slot; one fire per second in total."""
    c1 = cluster.clients["n1"]
    t_set = time.time()
    c1.call("schedule.set", name="tick", cron="* * * * * *", job={"command": ["true"]})
    time.sleep(5.2)
    cluster.clients["n3"].call("schedule.delete", name="tick")
    t_deleted = time.time()
    jobs = all_jobs(c1)
    slots = Counter(math.floor(j["created_at"]) for j in jobs)
    assert max(slots.values()) == 1, slots
    crossed = math.floor(t_deleted) - math.floor(t_set)
    assert abs(len(jobs) - crossed) <= 1, (len(jobs), crossed)


@pytest.mark.max_parallel(4)
def test_group_cap_of_2_holds_across_nodes(cluster: Cluster) -> None:
    """30 jobs of group io (cap 2, set through n1) spread over three nodes: never 3 at once."""
    out = cluster.workdir / "io"
    script = f'echo "start $(date +%s.%N)" >> {out}; sleep 0.2; echo "end $(date +%s.%N)" >> {out}'
    c1 = cluster.clients["n1"]
    c1.call("group.set", name="io", max_parallel=2)
    c1.call("job.submit_batch", jobs=[{"script": script, "group": "io"}] * 30)
    jobs = wait_for(lambda: all_succeeded(c1), "the group's jobs to succeed", timeout_s=90)
    events = sorted(
        (float(at), 1 if what == "start" else -1)
        for what, at in (line.split() for line in out.read_text().splitlines())
    )
    level = peak = 0
    for _, step in events:
        level += step
        peak = max(peak, level)
    assert peak == 2, peak
    assert len({j["node"] for j in jobs}) >= 2


def test_cancel_and_logs_of_a_job_on_n2_through_n1(cluster: Cluster) -> None:
    """A job placed on n2 is seen, logged and cancelled through n1; job.wait on n3 answers."""
    c1, c3 = cluster.clients["n1"], cluster.clients["n3"]
    job = c1.call(
        "job.submit",
        script="echo started; exec sleep 60",
        node="n2",
    )
    job_id = job["id"]

    def started() -> dict[str, Any] | None:
        got: dict[str, Any] = c1.call("job.get", id=job_id)
        logs = c1.call("job.logs", id=job_id)["lines"]
        return got if got["status"] == "running" and logs else None

    got = wait_for(started, "the job to run on n2 and log")
    assert got["node"] == "n2" and got["pin_node"] == "n2"
    assert [ln["text"] for ln in c1.call("job.logs", id=job_id)["lines"]] == ["started"]
    began = time.monotonic()
    assert c1.call("job.cancel", id=job_id)["result"] == "cancelling"
    waited = c3.call("job.wait", id=job_id, timeout_s=20)
    assert waited["status"] == "cancelled", waited
    assert time.monotonic() - began < 5.0


def spans_of(path: Path) -> dict[int, list[tuple[float, float, str]]]:
    """Per job: (start, end, attempt) of each attempt, from the lines the attempts wrote."""
    seen: dict[tuple[int, str], dict[str, float]] = {}
    for line in path.read_text().splitlines():
        job_text, attempt, what, at = line.split()
        seen.setdefault((int(job_text), attempt), {})[what] = float(at)
    out: dict[int, list[tuple[float, float, str]]] = {}
    for (jid, att), s in seen.items():
        out.setdefault(jid, []).append((s["start"], s.get("end", math.inf), att))
    for attempts in out.values():
        attempts.sort()
    return out


def test_a_node_cut_off_from_postgresql_stops_its_jobs_before_the_others_take_them() -> None:
    """n3 reaches PostgreSQL through a proxy that the test cuts: n3 terminates its attempts
    within its lease (half the node timeout), the others declare it dead and run them again
    (never two at once); when the network returns n3 joins again and claims work."""
    out_name = "cutspans"
    script = (
        'echo "$HERO_PROC_JOB_ID $HERO_PROC_ATTEMPT start $(date +%s.%N)" >> {out}; '
        'trap \'echo "$HERO_PROC_JOB_ID $HERO_PROC_ATTEMPT end $(date +%s.%N)" >> {out}; '
        "exit 143' TERM; sleep 3 & wait; "
        'echo "$HERO_PROC_JOB_ID $HERO_PROC_ATTEMPT end $(date +%s.%N)" >> {out}'
    )
    with pg_schema("cut") as dsn:
        parts = urlsplit(dsn)
        target = (parts.hostname or "127.0.0.1", parts.port or 5432)
        proxy = CuttableProxy(target).start()
        host = (
            f"{parts.username}@127.0.0.1:{proxy.port}"
            if parts.username
            else f"127.0.0.1:{proxy.port}"
        )
        via_proxy = urlunsplit(parts._replace(netloc=host))
        workdir = short_tmpdir()
        cl = Cluster(workdir, dsn, 4, dsns={"n3": via_proxy})
        try:
            cl.start()
            out = workdir / out_name
            c1 = cl.clients["n1"]
            jobs = [{"script": script.format(out=out), "retries": 2}] * 12
            ids = c1.call("job.submit_batch", jobs=jobs)["submitted"]

            def n3_busy() -> list[int] | None:
                # Running on n3 *and* started there: a job is running on n3 from its claim's
                # commit on, before n3 has spawned it (or even heard back, if the cut falls
                # in between: the sweep then runs it elsewhere, with one start in all).
                running = [j for j in all_jobs(c1) if j["status"] == "running"]
                started = spans_of(out) if out.exists() else {}
                return [
                    j["id"] for j in running if j["node"] == "n3" and j["id"] in started
                ] or None

            on_n3 = wait_for(n3_busy, "n3 to run jobs")
            proxy.cut()
            cut_at = time.time()

            def taken_over() -> bool | None:
                by_id = {j["id"]: j for j in all_jobs(c1)}
                moved = all(by_id[i]["attempt"] >= 2 and by_id[i]["node"] != "n3" for i in on_n3)
                return True if moved else None

            wait_for(taken_over, "n3's jobs to run elsewhere", timeout_s=NODE_TIMEOUT_S + 10)
            listed = {n["name"]: n for n in c1.call("node.list")["nodes"]}
            assert listed["n3"]["state"] == "dead" and not listed["n3"]["alive"]

            def restarted() -> dict[int, list[tuple[float, float, str]]] | None:
                # Claimed elsewhere is committed before the new process writes its start.
                spans = spans_of(out)
                return spans if all(len(spans[j]) >= 2 for j in on_n3) else None

            spans = wait_for(restarted, "the taken-over attempts to start")
            for jid in on_n3:
                first, *later = spans[jid]
                assert first[1] < cut_at + NODE_TIMEOUT_S, (jid, first, cut_at)
                for (_, end, _), (start, _, _) in itertools.pairwise(spans[jid]):
                    assert start >= end, f"job {jid} ran twice at once: {spans[jid]}"
                assert later, spans[jid]

            proxy.restore()

            def n3_back() -> bool | None:
                nodes = {n["name"]: n for n in c1.call("node.list")["nodes"]}
                return True if nodes["n3"]["alive"] else None

            wait_for(n3_back, "n3 to join again", timeout_s=30)
            pinned = c1.call("job.submit", command=["true"], node="n3")["id"]
            done = c1.call("job.wait", id=pinned, timeout_s=30)
            assert done["status"] == "succeeded" and done["node"] == "n3", done
            final = wait_for(lambda: all_succeeded(c1), "every job to succeed", timeout_s=60)
            assert {j["id"] for j in final} >= set(ids)
            for jid, attempts in spans_of(out).items():
                for (_, end, _), (start, _, _) in itertools.pairwise(attempts):
                    assert start >= end, f"job {jid} ran twice at once: {attempts}"
        finally:
            try:
                cl.close()
            finally:
                proxy.close()
                if os.environ.get("HERO_PROC_KEEP_LOGS"):
                    print(f"logs kept in {workdir}")
                else:
                    cleanup(workdir)


def test_a_node_cut_mid_statement_holding_its_job_rows_is_swept_all_the_same() -> None:
    """n3 is cut in the middle of a statement stream: its first `set_pids` (the UPDATE of
    the jobs it just claimed) reaches the server and runs, the Sync after it never does.
    Its session stays active inside its transaction with those rows locked (no idle
    timeout applies, the half-open TCP never breaks): the sweep must end n3's sessions, not
    wait behind them, and n1/n2 run n3's jobs again within the usual bound."""
    script = (
        'echo "$HERO_PROC_JOB_ID $HERO_PROC_ATTEMPT start $(date +%s.%N)" >> {out}; '
        'trap \'echo "$HERO_PROC_JOB_ID $HERO_PROC_ATTEMPT end $(date +%s.%N)" >> {out}; '
        "exit 143' TERM; sleep 2 & wait; "
        'echo "$HERO_PROC_JOB_ID $HERO_PROC_ATTEMPT end $(date +%s.%N)" >> {out}'
    )
    import psycopg

    with pg_schema("hold") as dsn:
        parts = urlsplit(dsn)
        proxy = CuttableProxy((parts.hostname or "127.0.0.1", parts.port or 5432)).start()
        host = f"{parts.username}@127.0.0.1:{proxy.port}" if parts.username else None
        via_proxy = urlunsplit(parts._replace(netloc=host or f"127.0.0.1:{proxy.port}"))
        workdir = short_tmpdir()
        cl = Cluster(workdir, dsn, 4, dsns={"n3": via_proxy})
        try:
            cl.start()
            out = workdir / "holdspans"
            c1, c2 = cl.clients["n1"], cl.clients["n2"]
            # n3's set_pids for the first jobs it claims: the statement carries this text.
            proxy.cut_holding(b"UPDATE jobs SET pid = ")
            jobs = [{"script": script.format(out=out), "retries": 2}] * 12
            ids = c1.call("job.submit_batch", jobs=jobs)["submitted"]
            wait_for(lambda: proxy.cut_at, "n3 to be cut in the middle of its set_pids")
            assert proxy.cut_at is not None
            cut_at = proxy.cut_at
            running = [j for j in all_jobs(c1) if j["status"] == "running"]
            on_n3 = [j["id"] for j in running if j["node"] == "n3"]
            assert on_n3, "n3 was cut after claiming: its claimed jobs are running on it"

            # The attack is in place: n3's session holds a write transaction on the server
            # and waits for the rest of the stream (not idle: no idle timeout ends it).
            plain = urlunsplit(parts._replace(query=""))
            with psycopg.connect(plain, autocommit=True) as conn:

                def holding() -> bool | None:
                    row = conn.execute(
                        "SELECT count(*) FROM pg_stat_activity WHERE client_port = ANY(%s) "
                        "AND state = 'active' AND backend_xid IS NOT NULL",
                        (proxy.server_ports(),),
                    ).fetchone()
                    return True if row and row[0] else None

                wait_for(holding, "n3's session to hold its transaction", timeout_s=NODE_TIMEOUT_S)

            def taken_over() -> bool | None:
                by_id = {j["id"]: j for j in all_jobs(c1)}
                moved = all(by_id[i]["attempt"] >= 2 and by_id[i]["node"] != "n3" for i in on_n3)
                return True if moved else None

            wait_for(taken_over, "n3's jobs to run elsewhere", timeout_s=NODE_TIMEOUT_S + 10)
            assert time.time() - cut_at < NODE_TIMEOUT_S + 10
            # The sweeper's writer is not wedged: both live nodes still write.
            for c in (c1, c2):
                done = c.call("job.wait", id=c.call("job.submit", command=["true"])["id"],
                              timeout_s=30)  # fmt: skip
                assert done["status"] == "succeeded", done
            final = wait_for(lambda: all_succeeded(c1), "every job to succeed", timeout_s=60)
            assert {j["id"] for j in final} >= set(ids)
            for jid, attempts in spans_of(out).items():
                for (_, end, _), (start, _, _) in itertools.pairwise(attempts):
                    assert start >= end, f"job {jid} ran twice at once: {attempts}"

            proxy.restore()
            wait_for(
                lambda: (
                    {n["name"]: n for n in c1.call("node.list")["nodes"]}["n3"]["alive"] or None
                ),
                "n3 to join again",
                timeout_s=30,
            )
        finally:
            try:
                cl.close()
            finally:
                proxy.close()
                if os.environ.get("HERO_PROC_KEEP_LOGS"):
                    print(f"logs kept in {workdir}")
                else:
                    cleanup(workdir)


# An attempt of a job that says where it runs: "<job> <attempt> <node> start|ok|term <time>".
NODE_SPAN_SCRIPT = (
    'say() { echo "$HERO_PROC_JOB_ID $HERO_PROC_ATTEMPT $TEST_NODE $1 $(date +%s.%N)" >> {out}; }; '
    "say start; trap 'say term; exit 143' TERM; sleep {sleep_s} & wait; say ok"
)


class Span:
    """One attempt as the attempt itself wrote it: node, start, end and how it ended."""

    def __init__(self, node: str, attempt: str, start: float) -> None:
        self.node, self.attempt, self.start = node, attempt, start
        self.end: float | None = None
        self.how: str | None = None

    def __repr__(self) -> str:
        return f"Span({self.node} #{self.attempt} {self.start:.3f}-{self.end} {self.how})"


def node_spans(path: Path) -> dict[int, list[Span]]:
    """Per job, its attempts in order of start (an end closes the last open attempt of
    the same node and attempt number)."""
    out: dict[int, list[Span]] = {}
    for line in path.read_text().splitlines():
        job_text, attempt, node, what, at = line.split()
        spans = out.setdefault(int(job_text), [])
        if what == "start":
            spans.append(Span(node, attempt, float(at)))
            continue
        opened = [s for s in spans if (s.node, s.attempt, s.end) == (node, attempt, None)]
        assert opened, f"an end without a start: {line}"
        opened[-1].end, opened[-1].how = float(at), what
    for spans in out.values():
        spans.sort(key=lambda s: s.start)
    return out


def test_a_node_in_its_own_network_namespace_cut_off_by_veth_down_stops_its_jobs_first() -> None:
    """n3 runs in a network namespace of its own, its only way to PostgreSQL a veth pair
    (and a plain forwarder on the root side to 127.0.0.1:5432). The root end of the pair
    goes down: n3's packets are dropped, nothing errors quickly. n3 terminates its attempts
    (they write their end) before n1/n2 start any of them again; every job succeeds exactly
    once and no two attempts of a job overlap. The link comes back: n3 heartbeats again
    and claims work by itself."""
    with pg_schema("ns") as dsn:
        ns = NetNs()
        proxy: CuttableProxy | None = None
        cl: Cluster | None = None
        workdir = short_tmpdir()
        try:
            try:
                ns.create()
            except NetNsUnavailable as exc:
                if os.environ.get("CI") == "true":
                    pytest.fail(f"{exc} (CI=true: this test must run)")
                pytest.skip(str(exc))
            parts = urlsplit(dsn)
            proxy = CuttableProxy(
                (parts.hostname or "127.0.0.1", parts.port or 5432), host=ns.host_ip
            ).start()
            user = f"{parts.username}@" if parts.username else ""
            via_veth = urlunsplit(parts._replace(netloc=f"{user}{ns.host_ip}:{proxy.port}"))
            cl = Cluster(workdir, dsn, 4, dsns={"n3": via_veth}, wraps={"n3": ns.exec_prefix})
            cl.start()
            n3_proc = cl.procs["n3"].proc
            assert n3_proc is not None
            assert os.readlink(f"/proc/{n3_proc.pid}/ns/net") != os.readlink("/proc/self/ns/net")
            c1, c3 = cl.clients["n1"], cl.clients["n3"]
            assert c3.call("system.info")["node"] == "n3"  # its Unix socket, from out here

            out = workdir / "spans"
            script = NODE_SPAN_SCRIPT.replace("{out}", str(out)).replace("{sleep_s}", "5")
            ids = c1.call("job.submit_batch", jobs=[{"script": script, "retries": 2}] * 12)[
                "submitted"
            ]

            def n3_busy() -> list[int] | None:
                # Running on n3 *and* started there: a job is running on n3 from its claim's
                # commit on, before n3 has spawned it (or even heard back, if the cut falls
                # in between: the sweep then runs it elsewhere, with one start in all).
                running = [j for j in all_jobs(c1) if j["status"] == "running"]
                started = node_spans(out) if out.exists() else {}
                return [
                    j["id"] for j in running if j["node"] == "n3" and j["id"] in started
                ] or None

            on_n3 = wait_for(n3_busy, "n3 to run jobs")
            time.sleep(random.uniform(0.0, 1.0))  # the cut lands anywhere in n3's beat
            ns.set_link(up=False)
            cut_at = time.time()

            def n3_dead() -> bool | None:
                nodes = {n["name"]: n for n in c1.call("node.list")["nodes"]}
                return True if nodes["n3"]["state"] == "dead" else None

            wait_for(n3_dead, "n1 to declare n3 dead", timeout_s=NODE_TIMEOUT_S + 10)
            final = wait_for(lambda: all_succeeded(c1), "every job to succeed", timeout_s=60)
            assert sorted(j["id"] for j in final) == sorted(ids)
            spans = node_spans(out)
            assert sorted(spans) == sorted(ids)
            cut_jobs: set[int] = set()
            for jid, attempts in spans.items():
                assert all(s.end is not None for s in attempts), (jid, attempts)
                assert [s.how for s in attempts].count("ok") == 1, (jid, attempts)
                assert attempts[-1].how == "ok", (jid, attempts)
                for before, after in itertools.pairwise(attempts):
                    assert before.end is not None and after.start >= before.end, (
                        f"job {jid} ran twice at once: {attempts}"
                    )
                for i, s in enumerate(attempts):
                    if s.node == "n3" and s.start < cut_at:
                        # Cut off mid-attempt: n3 itself ended it, within its lease (before
                        # the others could call it dead), and before the next attempt began.
                        cut_jobs.add(jid)
                        assert s.how == "term" and s.end is not None, (jid, attempts)
                        assert s.end < cut_at + NODE_TIMEOUT_S, (jid, attempts, cut_at)
                        later = attempts[i + 1 :]
                        assert later and later[0].node != "n3", (jid, attempts)
                        assert later[0].start > s.end, (jid, attempts)
            assert cut_jobs >= set(on_n3), (on_n3, spans)  # n3 may have claimed more since

            ns.set_link(up=True)

            def n3_back() -> bool | None:
                try:
                    seen = [
                        {n["name"]: n for n in c.call("node.list")["nodes"]}["n3"] for c in (c1, c3)
                    ]
                except StorageError:
                    # n3 answers "database unreachable" (-32005) until its connections
                    # are made again: the seconds it takes are the point of waiting.
                    return None
                return True if all(n["alive"] and n["state"] != "dead" for n in seen) else None

            wait_for(n3_back, "n3 to heartbeat again", timeout_s=30)
            pinned = c1.call("job.submit", script=script, node="n3")["id"]
            done = c1.call("job.wait", id=pinned, timeout_s=30)
            assert done["status"] == "succeeded" and done["node"] == "n3", done
            ran = node_spans(out)[pinned]
            assert [(r.node, r.how) for r in ran] == [("n3", "ok")], ran
        finally:
            try:
                if cl is not None:
                    with contextlib.suppress(RuntimeError):
                        ns.set_link(up=True)  # so that n3 can end cleanly after a failure
                    cl.close()
            finally:
                if proxy is not None:
                    proxy.close()
                ns.delete()
                if os.environ.get("HERO_PROC_KEEP_LOGS"):
                    print(f"logs kept in {workdir}")
                else:
                    cleanup(workdir)


def test_services_stay_on_their_node_and_show_unknown_when_it_dies(cluster: Cluster) -> None:
    """A service defined for n2 (through n1) is started by n2 only; status_all on any node
    shows every node's services with their node, and `unknown` once that node is dead."""
    c1, c2, c3 = (cluster.clients[n] for n in NODES)
    c1.call("service.define", name="web", command=["sleep", "600"])
    defined = c1.call("service.define", name="worker", command=["sleep", "600"], node="n2")
    assert defined["node"] == "n2"
    with pytest.raises(HeroError) as refused:
        c1.call("service.start", name="worker")
    assert refused.value.data == {"name": "worker", "node": "n2"}
    assert c2.call("service.start", name="worker", wait_s=10)["state"] == "running"
    assert c1.call("service.start", name="web", wait_s=10)["state"] == "running"
    every = {s["name"]: s for s in c3.call("service.status_all")["services"]}
    assert (every["web"]["node"], every["web"]["state"]) == ("n1", "running")
    assert (every["worker"]["node"], every["worker"]["state"]) == ("n2", "running")
    cluster.procs["n2"].kill()

    def worker_unknown() -> bool | None:
        services = {s["name"]: s for s in c3.call("service.status_all")["services"]}
        return True if services["worker"]["state"] == "unknown" else None

    wait_for(worker_unknown, "n2's service to be unknown", timeout_s=NODE_TIMEOUT_S + 10)
    services = {s["name"]: s for s in c1.call("service.status_all")["services"]}
    assert services["web"]["state"] == "running"
    c1.call("service.stop", name="web")


def test_on_sqlite_the_daemon_is_the_only_node(daemon: DaemonProcess) -> None:
    """Same code path on SQLite: one node, this daemon's, heartbeating; jobs record it."""
    with daemon.client() as c:
        info = c.call("system.info")
        assert info["backend"] == "sqlite"
        listed = c.call("node.list")
        (only,) = listed["nodes"]
        assert only["name"] == info["node"] == listed["self"] and only["alive"]
        job_id = c.call("job.submit", command=["true"])["id"]
        assert c.call("job.wait", id=job_id, timeout_s=20)["node"] == info["node"]


def test_a_second_daemon_as_a_live_node_is_refused_a_dead_ones_name_is_taken(
    cluster: Cluster,
) -> None:
    """Two daemons as one node would recover and kill each other's attempts: a daemon
    started as n2 while n2 heartbeats is refused, changing nothing; once n2 is killed
    (kill -9: its row still says alive), a new daemon takes the name over."""
    c1, c2 = cluster.clients["n1"], cluster.clients["n2"]
    job = c1.call("job.submit", command=["sleep", "600"], node="n2")["id"]
    wait_for(lambda: c1.call("job.get", id=job)["status"] == "running" or None, "running on n2")
    args = ["--node-timeout", str(NODE_TIMEOUT_S)]
    twin = DaemonProcess(short_tmpdir(), extra_args=args, db=cluster.dsn, node="n2")
    try:
        with pytest.raises(RuntimeError) as refused:
            twin.start()
        assert "another daemon is live as node 'n2'" in str(refused.value), refused.value
        assert twin.proc is not None and twin.proc.returncode not in (None, 0)
    finally:
        if twin.proc is not None and twin.proc.poll() is None:
            twin.kill()
        # No kill_leftovers here: the twin's mark is n2's (database and node name).
        cleanup(twin.workdir)
    # n2 did not notice: its attempt runs on, and it serves.
    assert c2.call("job.get", id=job)["status"] == "running"
    assert c2.call("system.info")["node"] == "n2"

    cluster.procs["n2"].kill()
    heir = DaemonProcess(short_tmpdir(), extra_args=args, db=cluster.dsn, node="n2")
    try:
        heir.start()
        with heir.client() as c:
            (row,) = [n for n in c.call("node.list")["nodes"] if n["name"] == "n2"]
            assert row["alive"] and row["pid"] == heir.proc.pid if heir.proc else False, row
            # The dead daemon's attempt is settled (by the heir's recovery or a sweep).
            wait_for(
                lambda: c.call("job.get", id=job)["status"] != "running" or None,
                "the dead n2's attempt settled",
                timeout_s=NODE_TIMEOUT_S + 15,
            )
        assert heir.stop() == 0, heir.log()
    finally:
        if heir.proc is not None and heir.proc.poll() is None:
            heir.kill()
        kill_leftovers(heir.instance_key)
        cleanup(heir.workdir)


def test_three_first_starts_at_once_on_a_fresh_database_all_come_up_with_one_key() -> None:
    """Three daemons started at the same moment on an empty schema (round after round,
    at randomised offsets): every one comes up (no `secrets_key_pkey` duplicate from two
    first keys recorded at once), and they agree on one key — a secret set through any
    node reads the same through every other."""
    rounds = 6
    for rnd in range(rounds):
        with pg_schema("first") as dsn:
            workdir = short_tmpdir()
            procs = [
                DaemonProcess(workdir, extra_args=["--node-timeout", str(NODE_TIMEOUT_S)],
                              db=dsn, node=n)
                for n in NODES
            ]  # fmt: skip
            gate = threading.Barrier(len(procs))

            def start(proc: DaemonProcess, gate: threading.Barrier = gate) -> DaemonProcess:
                gate.wait()
                time.sleep(random.uniform(0.0, 0.05))
                return proc.start()

            try:
                with ThreadPoolExecutor(len(procs)) as pool:
                    futures = [pool.submit(start, p) for p in procs]
                    failed = []
                    for proc, fut in zip(procs, futures, strict=True):
                        try:
                            fut.result()
                        except RuntimeError as exc:
                            failed.append(f"{proc.node}: {exc}")
                assert not failed, f"round {rnd}: " + "\n".join(failed)
                for i, setter in enumerate(procs):
                    with setter.client() as c:
                        c.call("secret.set", name=f"S{i}", value=f"value-{rnd}-{i}")
                for reader in procs:
                    with reader.client() as c:
                        for i in range(len(procs)):
                            got = c.call("secret.get", name=f"S{i}")["value"]
                            assert got == f"value-{rnd}-{i}", (rnd, reader.node, i, got)
            finally:
                for proc in procs:
                    if proc.proc is not None and proc.proc.poll() is None:
                        assert proc.stop() == 0, proc.log()
                    kill_leftovers(proc.instance_key)
                cleanup(workdir)
