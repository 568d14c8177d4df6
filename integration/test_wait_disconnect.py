"""A wait ends with its asker: clients that disconnect mid-wait leave no waiter behind.

job.wait, run.wait and job.wait_all may wait up to an hour. Before, a client that
sent one and went away left its task and waiter in the daemon until the timeout;
repeated, they piled up. Their count is the `hero_proc_job_waiters` gauge.
"""

from __future__ import annotations

import random
import socket
from typing import Any

import orjson
from prometheus_client.parser import text_string_to_metric_families

from integration.daemon_proc import DaemonProcess
from integration.helpers import UnixHTTPConnection, finish, submit, wait_for, wait_running


def _waiters(daemon: DaemonProcess) -> int:
    return _metric(daemon, "hero_proc_job_waiters")


def _metric(daemon: DaemonProcess, name: str) -> int:
    """A gauge of the daemon's /metrics (on its socket)."""
    conn = UnixHTTPConnection(daemon.socket_path)
    try:
        conn.request("GET", "/metrics")
        body = conn.getresponse().read().decode()
    finally:
        conn.close()
    for family in text_string_to_metric_families(body):
        if family.name == name:
            return int(family.samples[0].value)
    raise AssertionError(f"no {name} in /metrics")


def _send(daemon: DaemonProcess, method: str, params: dict[str, Any]) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(str(daemon.socket_path))
    frame = {"jsonrpc": "2.0", "id": 1, "method": method, "params": params}
    sock.sendall(orjson.dumps(frame) + b"\n")
    return sock


def test_waits_of_disconnected_clients_end(daemon: DaemonProcess) -> None:
    rng = random.Random()
    with daemon.client() as c:
        job = submit(c, command=["sleep", "300"])
        run = c.call("run.submit", jobs=[{"key": "a", "command": ["sleep", "300"]}])
        wait_running(c, job)
        calls = [
            ("job.wait", {"id": job, "timeout_s": 3600}),
            ("run.wait", {"id": run["id"], "timeout_s": 3600}),
            ("job.wait_all", {"ids": [job], "timeout_s": 3600}),
        ]
        socks = [_send(daemon, *rng.choice(calls)) for _ in range(30)]
        try:
            # Every wait is in place (the control: the gauge sees them)...
            wait_for(lambda: _waiters(daemon) >= 30 or None, "30 waiters registered")
        finally:
            for s in socks:
                s.close()
        # ...and every one ends once its client is gone, long before its hour.
        wait_for(lambda: _waiters(daemon) == 0 or None, "no waiter left", timeout_s=30)
        # A client that stays still gets its answer: the job is cancelled and reported.
        keep = _send(daemon, "job.wait", {"id": job, "timeout_s": 60})
        try:
            wait_for(lambda: _waiters(daemon) == 1 or None, "the kept waiter registered")
            c.call("job.cancel", id=job)
            keep.settimeout(30)
            answer = orjson.loads(keep.makefile("rb").readline())
            assert answer["result"]["status"] == "cancelled", answer
        finally:
            keep.close()
        c.call("run.cancel", id=run["id"])
        finish(c, job)


def test_a_half_closed_client_still_gets_its_wait_answered(daemon: DaemonProcess) -> None:
    # `printf '…' | nc -N -U sock`: the request, then shutdown(SHUT_WR), then the answer.
    with daemon.client() as c:
        job = submit(c, command=["sleep", "300"])
        wait_running(c, job)
        sock = _send(daemon, "job.wait", {"id": job, "timeout_s": 60})
        try:
            sock.shutdown(socket.SHUT_WR)
            wait_for(lambda: _waiters(daemon) == 1 or None, "the waiter registered")
            c.call("job.cancel", id=job)
            sock.settimeout(30)
            answer = orjson.loads(sock.makefile("rb").readline())
            assert answer["result"]["status"] == "cancelled", answer
        finally:
            sock.close()


def test_service_waits_of_disconnected_clients_end_and_the_start_still_happens(
    daemon: DaemonProcess,
) -> None:
    """service.start/restart with wait_s: the start is done whatever the client does, the
    wait for `running` ends when its client leaves (no waiter left until wait_s)."""
    rng = random.Random()

    def waiters() -> int:
        return _metric(daemon, "hero_proc_service_waiters")

    with daemon.client() as c:
        # Not running for 300 s (start_secs): every wait_s call would wait its whole 600 s.
        c.call("service.define", name="slow", command=["sleep", "1000"], start_secs=300)
        # A restart ends the life the other calls wait for (their wait ends: 'ended short'):
        # one restart alone first, then starts (which leave the starting life alone).
        for method, count in (("service.restart", 1), ("service.start", 10)):
            socks = [_send(daemon, method, {"name": "slow", "wait_s": 600}) for _ in range(count)]
            expected = count
            try:
                wait_for(lambda: waiters() >= expected or None, f"{count} {method} waiter(s)")  # noqa: B023
            finally:
                rng.shuffle(socks)
                for s in socks:
                    s.close()
            wait_for(lambda: waiters() == 0 or None, "no service waiter left", timeout_s=30)

            # The effect stayed: the service is starting, with a process (a restart commits
            # `starting` before its new life is spawned: the pid may come just after).
            def started() -> dict[str, Any] | None:
                status: dict[str, Any] = c.call("service.status", name="slow")
                assert status["state"] == "starting", status
                return status if status["pid"] else None

            wait_for(started, "the started life's process")
        # A client that stays gets its answer when its own wait_s has passed.
        assert c.call("service.start", name="slow", wait_s=0.2)["state"] == "starting"
        c.call("service.stop", name="slow")
