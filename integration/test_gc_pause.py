"""The garbage collector's pause around big frames is always lifted (hero_procd/gcpause.py).

Over the real daemon: after big frames that succeed, fail validation, do not
parse, come as batches, are abandoned by their client mid-frame or before the
answer, and many of these overlapping at random, `system.info` shows automatic
collection on and no pause held.
"""

from __future__ import annotations

import contextlib
import random
import socket
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

from hero_procd.client import Client
from integration.helpers import daemon_running, wait_for

BIG = 300 << 10  # over the 128 KiB above which a frame pauses the collector


def _frame(method: str, **params: Any) -> bytes:
    return orjson.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": params}) + b"\n"


def _send(path: Path, frame: bytes, read: bool = True) -> dict[str, Any] | list[Any] | None:
    """Send one frame on a new connection; its answer (or None when not read)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(30)
        s.connect(str(path))
        s.sendall(frame)
        if not read:
            return None
        buf = b""
        while not buf.endswith(b"\n"):
            chunk = s.recv(1 << 16)
            assert chunk, "connection closed before the answer"
            buf += chunk
    answer: dict[str, Any] | list[Any] = orjson.loads(buf)
    return answer


def _valid(path: Path) -> None:
    # A big valid frame: a 100 KiB secret (under secret.set's 128 KiB bound) padded with
    # JSON whitespace past BIG.
    frame = _frame("secret.set", name="big", value="v" * (100 << 10))
    answer = _send(path, frame[:-1] + b" " * BIG + b"\n")
    assert isinstance(answer, dict) and answer["result"] == {"name": "big"}, answer


def _invalid_params(path: Path) -> None:
    answer = _send(path, _frame("secret.set", name="big", value="v" * BIG + "\0"))
    assert isinstance(answer, dict) and answer["error"]["code"] == -32602, answer


def _bad_batch_item(path: Path) -> None:
    jobs: list[Any] = [{"command": ["/bin/true"], "tags": ["x" * 60]} for _ in range(3000)]
    answer = _send(path, _frame("job.submit_batch", jobs=jobs, on_duplicate="bogus"))
    assert isinstance(answer, dict) and answer["error"]["code"] == -32602, answer


def _valid_batch(path: Path) -> None:
    # One key for all: at most one job runs, the rest are deduplicated (cheap to run).
    jobs = [{"command": ["/bin/true"], "dedup_key": "gc", "tags": ["x" * 60]}] * 3000
    answer = _send(path, _frame("job.submit_batch", jobs=jobs))
    assert isinstance(answer, dict) and len(answer["result"]["submitted"]) <= 1, answer


def _parse_error(path: Path) -> None:
    answer = _send(path, b'{"jsonrpc": "2.0", "id": 1, "x": "' + b"a" * BIG + b"\n")
    assert isinstance(answer, dict) and answer["error"]["code"] == -32700, answer


def _batch(path: Path) -> None:
    calls = [
        {"jsonrpc": "2.0", "id": i, "method": "system.ping", "params": {"pad": "p" * 200}}
        for i in range(1000)
    ]
    answer = _send(path, orjson.dumps(calls) + b"\n")
    assert isinstance(answer, list) and len(answer) == 1000


def _big_page(path: Path) -> None:
    answer = _send(path, _frame("job.list", limit=10_000))
    assert isinstance(answer, dict) and "result" in answer, answer


def _gone_before_answer(path: Path) -> None:
    _send(path, _frame("secret.set", name="big", value="w" * (3 << 20)), read=False)


def _gone_mid_frame(path: Path) -> None:
    _send(path, _frame("secret.set", name="big", value="m" * BIG)[: BIG // 2], read=False)


SCENARIOS: list[Callable[[Path], None]] = [
    _valid,
    _invalid_params,
    _bad_batch_item,
    _valid_batch,
    _parse_error,
    _batch,
    _big_page,
    _gone_before_answer,
    _gone_mid_frame,
]


def _collector_back(c: Client, timeout_s: float = 20.0) -> dict[str, Any]:
    def probe() -> dict[str, Any] | None:
        gc: dict[str, Any] = c.call("system.info")["gc"]
        return gc if gc["paused_by"] == 0 else None

    gc = wait_for(probe, "every gc pause to end", timeout_s)
    assert gc["enabled"] is True, gc
    return gc


def test_each_big_frame_lifts_the_pause(workdir: Path) -> None:
    """One after another: after each kind of big frame the collector is on again."""
    with daemon_running(workdir) as d, d.client() as c:
        assert c.call("system.info")["gc"] == {"enabled": True, "paused_by": 0}
        for scenario in SCENARIOS:
            scenario(d.socket_path)
            _collector_back(c)
        assert "Traceback" not in d.log()


def test_overlapping_big_frames_lift_the_pause(workdir: Path) -> None:
    """Big frames of every kind overlapping at random: the last one out turns it back on."""
    rng = random.Random()
    errors: list[BaseException] = []

    def client(seed: int) -> None:
        local = random.Random(seed)
        try:
            for _ in range(6):
                threading.Event().wait(local.uniform(0, 0.05))
                local.choice(SCENARIOS)(d.socket_path)
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    with daemon_running(workdir) as d, d.client() as c:
        for _ in range(3):
            threads = [threading.Thread(target=client, args=(rng.random(),)) for _ in range(6)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(120)
            assert not errors, errors
            _collector_back(c)
        assert "Traceback" not in d.log()


def _padded(method: str, **params: Any) -> bytes:
    """A frame over the pause threshold by whitespace alone (valid JSON)."""
    body = orjson.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": params})
    return body + b" " * BIG + b"\n"


def test_a_waiting_big_frame_does_not_keep_the_collector_paused(workdir: Path) -> None:
    """A big frame that waits (job.wait, job.wait_all, run.wait, a service verb) lets the
    collector run while it waits: a padded frame could otherwise pause it for an hour."""
    with daemon_running(workdir) as d, d.client() as c:
        job = c.call("job.submit", command=["sleep", "60"])["id"]
        run = c.call("run.submit", jobs=[{"key": "a", "command": ["sleep", "60"]}])["id"]
        c.call(
            "service.define",
            name="slow",
            command=["sh", "-c", "trap '' TERM; sleep 60"],
            stop_timeout_s=6,
        )
        c.call("service.start", name="slow")
        # Counted running after 30 s only: a start with wait_s waits past the spawn.
        c.call("service.define", name="never", command=["sleep", "60"], start_secs=30)
        waits = [
            _padded("job.wait", id=job, timeout_s=40),
            _padded("job.wait_all", ids=[job], timeout_s=40),
            _padded("run.wait", id=run, timeout_s=40),
            _padded("service.stop", name="slow"),
            _padded("service.start", name="never", wait_s=30),
        ]
        for frame in waits:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.connect(str(d.socket_path))
                s.sendall(frame)
                # The pause of its parse and check ends, while the call still waits.
                _collector_back(c, 5.0)
                s.settimeout(0)
                with contextlib.suppress(BlockingIOError):  # still waiting, as it should
                    pytest.fail(f"answered before its wait ended: {s.recv(64)!r}")
        c.call("job.cancel", id=job)
        c.call("run.cancel", id=run)
        _collector_back(c)
