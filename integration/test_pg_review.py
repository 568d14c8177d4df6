"""Hostile review of the PostgreSQL dead-node sweep (ends a dead daemon's sessions by
application_name, under a lock timeout): real daemons, a real PostgreSQL, a proxy that
cuts n3 in the middle of a statement stream (integration/tcp_proxy.py)."""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest

from hero_procd.errors import HeroError
from integration.daemon_proc import DaemonProcess, cleanup, short_tmpdir
from integration.helpers import kill_leftovers, wait_for, wait_running
from integration.tcp_proxy import CuttableProxy
from integration.test_cluster import NODE_TIMEOUT_S, Cluster, all_jobs
from tests.pg import pg_schema

# A job that runs long enough to be running on n3 when it is cut.
LONG = "sleep 30"


@contextmanager
def n3_behind_proxy(prefix: str) -> Iterator[tuple[Cluster, CuttableProxy, str]]:
    """Three nodes on a fresh schema, n3 reaching PostgreSQL through a cuttable proxy."""
    with pg_schema(prefix) as dsn:
        parts = urlsplit(dsn)
        proxy = CuttableProxy((parts.hostname or "127.0.0.1", parts.port or 5432)).start()
        host = f"{parts.username}@127.0.0.1:{proxy.port}" if parts.username else None
        via_proxy = urlunsplit(parts._replace(netloc=host or f"127.0.0.1:{proxy.port}"))
        workdir = short_tmpdir()
        cl = Cluster(workdir, dsn, 4, dsns={"n3": via_proxy})
        try:
            cl.start()
            yield cl, proxy, dsn
        finally:
            try:
                cl.close()
            finally:
                proxy.close()
                if os.environ.get("HERO_PROC_KEEP_LOGS"):
                    print(f"logs kept in {workdir}")
                else:
                    cleanup(workdir)


def _held(dsn: str, proxy: CuttableProxy) -> None:
    """Wait until n3's session holds a write transaction on the server, active (waiting for
    the rest of its statement stream: no idle timeout ends it)."""
    import psycopg

    plain = urlunsplit(urlsplit(dsn)._replace(query=""))
    with psycopg.connect(plain, autocommit=True) as conn:

        def holding() -> bool | None:
            row = conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE client_port = ANY(%s) "
                "AND state = 'active' AND backend_xid IS NOT NULL",
                (proxy.server_ports(),),
            ).fetchone()
            return True if row and row[0] else None

        wait_for(holding, "n3's session to hold its transaction", timeout_s=NODE_TIMEOUT_S)


def test_the_sweep_is_not_queued_behind_a_unit_that_waits_for_the_dead_nodes_locks() -> None:
    """n3 is cut in the middle of its set_pids: its session keeps the rows of the jobs it
    claimed locked. A user cancels one of those jobs through n1, and (that call hanging)
    again through n2: each node's writer now waits behind n3's row lock, and each node's
    sweep is a unit queued behind that wait on the same writer. Nothing may wedge: n3 is
    declared dead, its sessions ended, both cancels answered, both live nodes write again."""
    with n3_behind_proxy("wedge") as (cl, proxy, dsn):
        c1 = cl.clients["n1"]
        proxy.cut_holding(b"UPDATE jobs SET pid = ")
        c1.call("job.submit_batch", jobs=[{"command": ["sh", "-c", LONG]}] * 12)
        wait_for(lambda: proxy.cut_at, "n3 to be cut in the middle of its set_pids")
        on_n3 = [j["id"] for j in all_jobs(c1) if j["status"] == "running" and j["node"] == "n3"]
        assert on_n3, "n3 was cut after claiming: its claimed jobs are running on it"
        _held(dsn, proxy)

        answers: dict[str, Any] = {}

        def cancel(node: str) -> None:
            with cl.procs[node].client(timeout=120) as c:
                try:
                    answers[node] = c.call("job.cancel", id=on_n3[0])
                except HeroError as exc:
                    answers[node] = exc

        threads = [threading.Thread(target=cancel, args=(n,), daemon=True) for n in ("n1", "n2")]
        for t in threads:
            t.start()
            time.sleep(0.3)  # the second one: the user trying another node
        began = time.monotonic()
        bound = NODE_TIMEOUT_S + 15

        def settled() -> bool | None:
            by_id = {j["id"]: j for j in all_jobs(c1)}
            return True if all(by_id[i]["node"] != "n3" or by_id[i]["status"] != "running"
                               for i in on_n3) else None  # fmt: skip

        wait_for(settled, "n3's attempts to be settled by the sweep", timeout_s=bound)
        for t in threads:
            t.join(timeout=max(1.0, bound - (time.monotonic() - began)))
        assert set(answers) == {"n1", "n2"}, f"a cancel never answered: {answers}"
        for node in ("n1", "n2"):
            with cl.procs[node].client(timeout=30) as c:
                done = c.call("job.wait", id=c.call("job.submit", command=["true"])["id"],
                              timeout_s=30)  # fmt: skip
                assert done["status"] == "succeeded", (node, done)
        listed = {n["name"]: n for n in c1.call("node.list")["nodes"]}
        assert listed["n3"]["state"] == "dead", listed["n3"]
        _rejoin(cl, proxy)


def _rejoin(cl: Cluster, proxy: CuttableProxy) -> None:
    """The network comes back: n3 joins again (and can then stop cleanly)."""
    proxy.restore()
    c1 = cl.clients["n1"]
    wait_for(
        lambda: {n["name"]: n for n in c1.call("node.list")["nodes"]}["n3"]["alive"] or None,
        "n3 to join again",
        timeout_s=30,
    )


# A daemon in a pid namespace of its own is pid 1 there, as in a container: a restarted
# daemon has the same node name and the same pid as the one it replaces.
PIDNS = ["unshare", "--pid", "--fork", "--mount-proc"]


def _pidns_daemon(workdir: Path, dsn: str, i: int) -> DaemonProcess:
    proc = DaemonProcess(
        workdir,
        extra_args=["--node-timeout", str(NODE_TIMEOUT_S), "--max-parallel", "4"],
        env={"TEST_NODE": "n3"},
        db=dsn,
        node="n3",
        wrap=PIDNS,
    )
    proc.log_path = workdir / f"n3-{i}.log"
    return proc


def _signal_group(proc: DaemonProcess, sig: int) -> None:
    """Signal the daemon through its process group (unshare does not pass signals on)."""
    assert proc.proc is not None
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.proc.pid, sig)
    proc.proc.wait(30)


def test_a_restarted_daemon_with_the_same_name_and_pid_keeps_its_sessions() -> None:
    """n3 runs as pid 1 of a pid namespace (a container) and is killed; a new n3, pid 1
    again, starts as its row goes stale (the sweep of the dead one is due while the new one
    starts up). The sweep ends the dead daemon's sessions only: the new daemon, which took
    the name, keeps its own (no heartbeat lost, no lease lost, its job never interrupted).
    Several rounds, each with its own delay around the node timeout."""
    if shutil.which("unshare") is None:
        pytest.skip("unshare is not installed")
    with pg_schema("samepid") as dsn:
        workdir = short_tmpdir()
        cl = Cluster(workdir, dsn, 4)
        current: DaemonProcess | None = None
        try:
            for name in ("n1", "n2"):
                cl.procs[name].start()
                cl.clients[name] = cl.procs[name].client()
            del cl.procs["n3"]
            c1 = cl.clients["n1"]
            current = _pidns_daemon(workdir, dsn, 0).start()
            rounds = 6
            for i in range(1, rounds + 1):
                with current.client() as c:
                    job = c.call("job.submit", command=["sh", "-c", "sleep 600"], retries=0)["id"]
                    wait_running(c, job)
                row = {n["name"]: n for n in c1.call("node.list")["nodes"]}["n3"]
                assert row["pid"] == 1, row
                _signal_group(current, signal.SIGKILL)
                time.sleep(random.uniform(NODE_TIMEOUT_S - 2.0, NODE_TIMEOUT_S - 0.5))
                current = _pidns_daemon(workdir, dsn, i).start()
                with current.client() as c:
                    job = c.call("job.submit", command=["sh", "-c", "sleep 600"], retries=0)["id"]
                    wait_running(c, job)
                    # Longer than the sweep's period and the node timeout: whatever sweep
                    # was due has run by then.
                    time.sleep(NODE_TIMEOUT_S + 1.0)
                    assert c.call("job.get", id=job)["status"] == "running"
                log = current.log()
                for bad in ("administrator command", "half the node timeout", "heartbeat failed"):
                    assert bad not in log, f"round {i}: the new n3 lost its sessions:\n{log}"
        finally:
            if current is not None and current.proc is not None:
                _signal_group(current, signal.SIGTERM)
            try:
                cl.close()
            finally:
                kill_leftovers(f"{dsn}#n3")
                cleanup(workdir)
