"""job.submit_batch over the real socket: defaults, partial failure, dedup keys, bulk, order."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from hero_procd.client import Client
from hero_procd.engine.executor import instance_id
from hero_procd.engine.procs import find_marked
from integration.daemon_proc import DaemonProcess, cleanup, short_tmpdir

T = TypeVar("T")

DEADLINE_S = 20.0
INVALID_PARAMS = -32602
NOT_FOUND = -32001
# Waits in its cwd until a file named `gate` appears (at most ~60 s).
GATE_SCRIPT = "i=0; while [ ! -e gate ] && [ $i -lt 1200 ]; do sleep 0.05; i=$((i+1)); done"


def wait_for(probe: Callable[[], T | None], what: str, timeout_s: float = DEADLINE_S) -> T:
    """Poll `probe` until it returns something other than None (or fail after `timeout_s`)."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = probe()
        if value is not None:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def finish(c: Client, job_id: int) -> dict[str, Any]:
    """Wait until the job is terminal; the job."""
    job: dict[str, Any] = c.call("job.wait", id=job_id, timeout_s=DEADLINE_S)
    assert job["done"], f"job {job_id} did not finish: {job}"
    return job


def hold_group(c: Client, group: str, gate_dir: Path) -> int:
    """Give `group` one slot and occupy it with a job that waits for `gate_dir/gate`; its id."""
    c.call("group.set", name=group, max_parallel=1)
    params = {"script": GATE_SCRIPT, "cwd": str(gate_dir), "group": group, "tags": ["blk"]}
    blocker = int(c.call("job.submit", params)["id"])
    wait_for(
        lambda: True if c.call("job.get", id=blocker)["status"] == "running" else None,
        f"the blocker of {group} to run",
    )
    return blocker


def count_jobs(c: Client, **filters: Any) -> int:
    """How many jobs `job.list` finds with these filters, page by page."""
    total, after = 0, 0
    while True:
        page = c.call("job.list", {**filters, "after_id": after, "limit": 10_000})
        total += len(page["jobs"])
        if page["next_after_id"] is None:
            return total
        after = page["next_after_id"]


def texts(c: Client, job_id: int) -> list[str]:
    """The text of a finished job's log lines."""
    page = c.call("job.logs", id=job_id, limit=10_000)
    assert page["done"]
    return [ln["text"] for ln in page["lines"]]


@pytest.fixture(scope="module")
def shared() -> Iterator[DaemonProcess]:
    """One daemon for the tests that do not need a daemon of their own."""
    path = short_tmpdir()
    proc = DaemonProcess(path).start()
    try:
        yield proc
    finally:
        code = proc.stop()
        log = proc.log()
        cleanup(path)
        assert code == 0, f"daemon exited {code}:\n{log}"


@pytest.fixture
def c(shared: DaemonProcess) -> Iterator[Client]:
    """A client of the shared daemon."""
    with shared.client() as client:
        yield client


@pytest.fixture
def serial(workdir: Path) -> Iterator[DaemonProcess]:
    """A daemon of its own that runs one job at a time."""
    proc = DaemonProcess(workdir, extra_args=["--max-parallel", "1"]).start()
    try:
        yield proc
    finally:
        code = proc.stop()
        assert code == 0, f"daemon exited {code}:\n{proc.log()}"


def test_defaults_apply_to_every_item(c: Client) -> None:
    """`defaults` (tags, env, priority) are applied to each item; an item's own field wins."""
    items: list[dict[str, Any]] = [
        {"command": ["/bin/sh", "-c", 'echo "$HP_BATCH_VAR $HERO_PROC_JOB_ID"']} for _ in range(3)
    ]
    items.append({"command": ["/bin/sh", "-c", 'echo "$HP_BATCH_VAR"'], "priority": 7})
    out = c.call(
        "job.submit_batch",
        jobs=items,
        defaults={"tags": ["batch-defaults"], "env": {"HP_BATCH_VAR": "from-defaults"},
                  "priority": 3},
    )  # fmt: skip
    assert out["failed"] == [] and out["deduplicated"] == [] and out["superseded"] == []
    ids = out["submitted"]
    assert len(ids) == 4 and ids == sorted(ids)
    for job_id in ids:
        assert finish(c, job_id)["status"] == "succeeded"
    for job_id in ids[:3]:
        job = c.call("job.get", id=job_id)
        assert job["tags"] == ["batch-defaults"] and job["priority"] == 3
        assert job["env"] == {"HP_BATCH_VAR": "from-defaults"}
        assert texts(c, job_id) == [f"from-defaults {job_id}"]
    assert c.call("job.get", id=ids[3])["priority"] == 7
    assert texts(c, ids[3]) == ["from-defaults"]
    assert count_jobs(c, tag="batch-defaults") == 4


def test_invalid_items_are_reported_and_the_others_submitted(c: Client) -> None:
    """Invalid items come back in `failed` with their index; the valid ones are queued."""
    items: list[Any] = [
        {"command": ["/bin/echo", "first"], "tags": ["batch-partial"]},
        {"command": [], "tags": ["batch-partial"]},
        {"command": "/bin/echo not a list", "tags": ["batch-partial"]},
        {"command": ["/bin/echo", "fourth"], "tags": ["batch-partial"]},
        {"command": ["/bin/true"], "no_such_field": 1, "tags": ["batch-partial"]},
        {"action": "hp-no-such-action", "tags": ["batch-partial"]},
        {"tags": ["batch-partial"]},
        {"command": ["/bin/echo", "last"], "tags": ["batch-partial"]},
    ]
    out = c.call("job.submit_batch", jobs=items)
    failed = {index: err for index, err in out["failed"]}
    assert sorted(failed) == [1, 2, 4, 5, 6], out["failed"]
    assert [index for index, _ in out["failed"]] == [1, 2, 4, 5, 6], "sorted by index"
    for index in (1, 2, 4, 6):
        assert failed[index]["code"] == INVALID_PARAMS, failed[index]
        assert f"jobs[{index}]" in failed[index]["message"] or index == 6, failed[index]
    assert failed[5]["code"] == NOT_FOUND and "hp-no-such-action" in failed[5]["message"]
    assert len(out["submitted"]) == 3
    outputs = [texts(c, j) for j in out["submitted"] if finish(c, j)["status"] == "succeeded"]
    assert outputs == [["first"], ["fourth"], ["last"]]
    assert count_jobs(c, tag="batch-partial") == 3


def test_dedup_skip_keeps_the_queued_job(c: Client, tmp_path: Path) -> None:
    """With on_duplicate skip, a key held by a queued job is reported and nothing is queued."""
    hold_group(c, "dedup-skip-grp", tmp_path)
    job = {"command": ["/bin/true"], "group": "dedup-skip-grp", "tags": ["dd-skip"]}
    first = c.call("job.submit_batch", jobs=[{**job, "dedup_key": "k-skip"}])
    assert len(first["submitted"]) == 1 and first["deduplicated"] == []
    held_id = first["submitted"][0]
    again = c.call(
        "job.submit_batch",
        jobs=[{**job, "dedup_key": "k-skip"}, {**job, "dedup_key": "k-other"}],
        on_duplicate="skip",
    )
    assert again["deduplicated"] == ["k-skip"]
    assert len(again["submitted"]) == 1 and again["superseded"] == []
    assert c.call("job.get", id=again["submitted"][0])["dedup_key"] == "k-other"
    assert c.call("job.get", id=held_id)["status"] == "queued"
    # skip is the default.
    third = c.call("job.submit_batch", jobs=[{**job, "dedup_key": "k-skip"}])
    assert third["submitted"] == [] and third["deduplicated"] == ["k-skip"]
    assert count_jobs(c, tag="dd-skip", status="queued") == 2
    assert count_jobs(c, tag="dd-skip") == 2


def test_dedup_replace_supersedes_the_queued_job(c: Client, tmp_path: Path) -> None:
    """With on_duplicate replace, the old queued job is cancelled and [new, old] reported."""
    hold_group(c, "dedup-repl-grp", tmp_path)
    job = {"group": "dedup-repl-grp", "dedup_key": "k-repl", "tags": ["dd-repl"]}
    old = c.call("job.submit_batch", jobs=[{**job, "command": ["/bin/echo", "old"]}])
    (old_id,) = old["submitted"]
    new = c.call(
        "job.submit_batch",
        jobs=[{**job, "command": ["/bin/echo", "new"]}],
        on_duplicate="replace",
    )
    (new_id,) = new["submitted"]
    assert new["superseded"] == [[new_id, old_id]] and new["deduplicated"] == []
    old_job = c.call("job.get", id=old_id)
    assert old_job["status"] == "cancelled" and old_job["finished_at"] is not None
    assert "superseded" in old_job["error"]
    assert c.call("job.get", id=new_id)["status"] == "queued"
    assert count_jobs(c, tag="dd-repl", status="queued") == 1
    # Once the gate opens, only the new one runs.
    (tmp_path / "gate").touch()
    assert finish(c, new_id)["status"] == "succeeded"
    assert texts(c, new_id) == ["new"]
    assert texts(c, old_id) == []


def test_in_batch_duplicates_last_one_wins(c: Client, tmp_path: Path) -> None:
    """Within one batch the last job with a key is queued; the earlier ones are deduplicated."""
    hold_group(c, "dedup-inbatch-grp", tmp_path)
    base = {"group": "dedup-inbatch-grp", "tags": ["dd-inbatch"]}
    items = [
        {**base, "dedup_key": "k-in", "command": ["/bin/echo", "one"]},
        {**base, "command": ["/bin/echo", "no key"]},
        {**base, "dedup_key": "k-in", "command": ["/bin/echo", "two"]},
        {**base, "dedup_key": "k-in", "command": ["/bin/echo", "three"]},
    ]
    out = c.call("job.submit_batch", jobs=items)
    assert out["deduplicated"] == ["k-in", "k-in"]
    assert len(out["submitted"]) == 2
    commands = [c.call("job.get", id=j)["command"] for j in out["submitted"]]
    assert commands == [["/bin/echo", "no key"], ["/bin/echo", "three"]]
    assert count_jobs(c, tag="dd-inbatch") == 2


def test_dedup_key_of_a_finished_job_does_not_block(c: Client) -> None:
    """Only a queued job holds its dedup key: once it has run, the key can be queued again."""
    first = c.call("job.submit_batch", jobs=[{"command": ["/bin/true"], "dedup_key": "k-done"}])
    (first_id,) = first["submitted"]
    assert finish(c, first_id)["status"] == "succeeded"
    second = c.call("job.submit_batch", jobs=[{"command": ["/bin/true"], "dedup_key": "k-done"}])
    assert len(second["submitted"]) == 1 and second["deduplicated"] == []
    assert finish(c, second["submitted"][0])["status"] == "succeeded"


def test_batch_of_25000_jobs_in_one_call(serial: DaemonProcess, tmp_path: Path) -> None:
    """25,000 jobs are accepted by one call and `job.list` finds every one of them."""
    n = 25_000
    with serial.client(timeout=120) as c:
        blocker = c.call("job.submit", script=GATE_SCRIPT, cwd=str(tmp_path))["id"]
        wait_for(
            lambda: True if c.call("job.get", id=blocker)["status"] == "running" else None,
            "the blocker to run",
        )
        items = [{"command": ["/bin/true", str(i)]} for i in range(n)]
        out = c.call("job.submit_batch", jobs=items, defaults={"tags": ["bulk"]})
        assert out["failed"] == [] and out["deduplicated"] == []
        ids = out["submitted"]
        assert len(ids) == n and len(set(ids)) == n and ids == sorted(ids)
        assert count_jobs(c, tag="bulk") == n
        assert c.call("system.info")["counts"]["jobs"] == n + 1
        # Item i became the job ids[i].
        for i in (0, 12_345, n - 1):
            job = c.call("job.get", id=ids[i])
            assert job["command"] == ["/bin/true", str(i)] and job["status"] == "queued"
        c.call("job.cancel", id=blocker)


def test_batch_keeps_submission_order(serial: DaemonProcess, tmp_path: Path) -> None:
    """Jobs of one batch at the same priority run in the order they were given."""
    with serial.client() as c:
        blocker = c.call("job.submit", script=GATE_SCRIPT, cwd=str(tmp_path))["id"]
        wait_for(
            lambda: True if c.call("job.get", id=blocker)["status"] == "running" else None,
            "the blocker to run",
        )
        order = tmp_path / "order"
        # Names that sort differently from their position.
        names = ["j", "c", "h", "a", "e", "b", "i", "d", "g", "f"]
        out = c.call(
            "job.submit_batch",
            jobs=[{"command": ["/bin/sh", "-c", f"echo {name} >> {order}"]} for name in names],
        )
        assert len(out["submitted"]) == len(names)
        (tmp_path / "gate").touch()
        for job_id in out["submitted"]:
            assert finish(c, job_id)["status"] == "succeeded"
        assert order.read_text().splitlines() == names


def test_retry_of_a_job_whose_dedup_key_was_taken_does_not_jam_the_daemon(
    workdir: Path, tmp_path: Path
) -> None:
    """A failed job due for a retry while a newer queued job holds its dedup key: all goes on.

    Only queued jobs hold a key, so the newer job is accepted while the first one
    runs; the retry must then not trip the unique key and block every later write.
    """
    proc = DaemonProcess(workdir).start()
    try:
        with proc.client() as c:
            hold_group(c, "dedup-retry-grp", tmp_path)
            first = c.call(
                "job.submit_batch",
                jobs=[{"script": GATE_SCRIPT.replace("gate", "gate2") + "; exit 1",
                       "cwd": str(tmp_path), "dedup_key": "k-retry", "retries": 1,
                       "retry_delay_s": 0}],
            )["submitted"][0]  # fmt: skip
            wait_for(
                lambda: True if c.call("job.get", id=first)["status"] == "running" else None,
                "the first job to run",
            )
            newer = c.call(
                "job.submit_batch",
                jobs=[{"command": ["/bin/true"], "dedup_key": "k-retry",
                       "group": "dedup-retry-grp"}],
            )  # fmt: skip
            assert len(newer["submitted"]) == 1 and newer["deduplicated"] == []
            (tmp_path / "gate2").touch()
            job = c.call("job.wait", id=first, timeout_s=10)
            assert job["done"], f"the first job never settled: {job}"
            after = c.call("job.submit", command=["/bin/echo", "still writing"])["id"]
            assert finish(c, after)["status"] == "succeeded"
            assert texts(c, after) == ["still writing"]
            queued = c.call("job.list", status="queued")["jobs"]
            assert len([j for j in queued if j["dedup_key"] == "k-retry"]) <= 1
        assert proc.stop(timeout_s=10) == 0
    finally:
        if proc.proc is not None and proc.proc.poll() is None:
            proc.kill()
        # A killed daemon leaves its jobs behind: end them here.
        for pid in find_marked(instance_id(str(proc.db_path))):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(os.getpgid(pid), signal.SIGKILL)
