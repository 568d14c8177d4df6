"""Runs over the real socket: dependency order, skipped dependents, run.cancel, run status."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from hero_procd.client import Client
from integration.helpers import (
    gate_script,
    jobs_by_key,
    read_lines,
    run_done,
    wait_for,
    wait_groups_gone,
    wait_running,
)


def appender(key: str, out: Path, *, fail: bool = False) -> dict[str, Any]:
    """A run job that appends its key to `out` (and then fails if asked)."""
    tail = "; exit 1" if fail else ""
    return {"key": key, "command": ["/bin/sh", "-c", f"echo {key} >> {out}{tail}"]}


def test_chain_runs_in_dependency_order(c: Client, tmp_path: Path) -> None:
    """a → b → c run one after the other in order and the run ends `succeeded`."""
    out = tmp_path / "order"
    # Submitted in reverse so that id order alone would run them the wrong way round.
    jobs = [
        {**appender("c", out), "depends_on": ["b"]},
        {**appender("b", out), "depends_on": ["a"]},
        appender("a", out),
    ]
    submitted = c.call("run.submit", name="chain", jobs=jobs)
    assert set(submitted["jobs"]) == {"a", "b", "c"}
    run = run_done(c, submitted["id"])
    assert run["status"] == "succeeded", run
    assert read_lines(out) == ["a", "b", "c"]
    by_key = jobs_by_key(run)
    assert {k: j["status"] for k, j in by_key.items()} == dict.fromkeys("abc", "succeeded")
    assert by_key["a"]["finished_at"] <= by_key["b"]["started_at"]
    assert by_key["b"]["finished_at"] <= by_key["c"]["started_at"]
    assert run["finished_at"] is not None and run["counts"] == {"succeeded": 3}
    assert {k: j["id"] for k, j in by_key.items()} == submitted["jobs"]


def test_failed_job_skips_its_dependents_transitively(c: Client, tmp_path: Path) -> None:
    """A failing middle job skips what depends on it (transitively); other branches still run."""
    out = tmp_path / "order"
    jobs = [
        appender("a", out),
        {**appender("b", out, fail=True), "depends_on": ["a"]},
        {**appender("c", out), "depends_on": ["b"]},
        {**appender("d", out), "depends_on": ["c"]},
        {**appender("e", out), "depends_on": ["a", "d"]},
        {**appender("f", out), "depends_on": ["a"]},
        appender("g", out),
    ]
    run = run_done(c, c.call("run.submit", name="branchy", jobs=jobs)["id"])
    assert run["status"] == "failed", run
    status = {k: j["status"] for k, j in jobs_by_key(run).items()}
    assert status == {
        "a": "succeeded", "b": "failed", "c": "skipped", "d": "skipped",
        "e": "skipped", "f": "succeeded", "g": "succeeded",
    }  # fmt: skip
    ran = read_lines(out)
    assert sorted(ran) == ["a", "b", "f", "g"], "skipped jobs must never run"
    assert ran.index("a") < ran.index("b") and ran.index("a") < ran.index("f")
    for key in "cde":
        job = jobs_by_key(run)[key]
        assert job["attempt"] == 0 and job["pid"] is None and job["finished_at"] is not None
        assert job["error"]
    assert run["counts"] == {"succeeded": 3, "failed": 1, "skipped": 3}


def test_run_cancel_cancels_queued_and_signals_running(c: Client, tmp_path: Path) -> None:
    """`run.cancel` cancels the queued jobs at once, signals the running one; run `cancelled`."""
    out = tmp_path / "order"
    jobs = [
        {"key": "slow", "command": ["sleep", "60"]},
        {**appender("after", out), "depends_on": ["slow"]},
        {**appender("last", out), "depends_on": ["after"]},
    ]
    submitted = c.call("run.submit", name="to-cancel", jobs=jobs)
    slow_id = submitted["jobs"]["slow"]
    pgid = wait_running(c, slow_id)["pid"]
    assert c.call("run.get", id=submitted["id"])["status"] == "running"
    out_cancel = c.call("run.cancel", id=submitted["id"])
    assert out_cancel == {"id": submitted["id"], "cancelled": 2, "signalled": 1}
    run = run_done(c, submitted["id"])
    assert run["status"] == "cancelled", run
    assert {k: j["status"] for k, j in jobs_by_key(run).items()} == dict.fromkeys(
        ("slow", "after", "last"), "cancelled"
    )
    assert jobs_by_key(run)["slow"]["signal"] == 15
    wait_groups_gone([pgid])  # the cancelled job's processes
    assert read_lines(out) == []
    # Nothing is left to cancel; a second cancel changes nothing.
    again = c.call("run.cancel", id=submitted["id"])
    assert again == {"id": submitted["id"], "cancelled": 0, "signalled": 0}


def test_run_get_shows_statuses_and_dependency_keys(c: Client, tmp_path: Path) -> None:
    """`run.get` lists each job with its status and the keys it depends on."""
    out = tmp_path / "order"
    jobs = [
        appender("top", out),
        {**appender("left", out), "depends_on": ["top"]},
        {**appender("right", out), "depends_on": ["top"]},
        {**appender("join", out), "depends_on": ["right", "left"]},
    ]
    submitted = c.call("run.submit", name="diamond", tags=["shape"], jobs=jobs)
    run = c.call("run.get", id=submitted["id"])
    assert run["name"] == "diamond" and run["tags"] == ["shape"]
    deps = {j["key"]: j["depends_on"] for j in run["jobs"]}
    assert deps == {"top": [], "left": ["top"], "right": ["top"], "join": ["left", "right"]}
    assert all(j["run_id"] == submitted["id"] for j in run["jobs"])
    statuses = [j["status"] for j in run["jobs"]]
    assert set(statuses) <= {"queued", "running", "succeeded"}, statuses
    run = run_done(c, submitted["id"])
    assert run["status"] == "succeeded"
    assert {j["key"]: j["depends_on"] for j in run["jobs"]} == deps
    ran = read_lines(out)
    assert ran[0] == "top" and ran[-1] == "join" and sorted(ran[1:3]) == ["left", "right"]
    # job.get shows the same edges by id.
    join = c.call("job.get", id=submitted["jobs"]["join"])
    assert sorted(join["depends_on"]) == sorted(
        [submitted["jobs"]["left"], submitted["jobs"]["right"]]
    )


def test_run_status_goes_queued_running_terminal(c: Client, tmp_path: Path) -> None:
    """A run is `queued` until a job starts, `running` while one runs, then terminal."""
    c.call("group.set", name="run-state-grp", max_parallel=1)
    blocker = c.call(
        "job.submit",
        script=gate_script("gate1"),
        cwd=str(tmp_path),
        group="run-state-grp",
    )["id"]
    wait_running(c, blocker)
    jobs = [
        {"key": "first", "script": gate_script("gate2"), "cwd": str(tmp_path),
         "group": "run-state-grp"},
        {"key": "second", "command": ["/bin/true"], "depends_on": ["first"]},
    ]  # fmt: skip
    run_id = c.call("run.submit", name="states", jobs=jobs)["id"]
    run = c.call("run.get", id=run_id)
    assert run["status"] == "queued" and run["finished_at"] is None, run
    assert run["counts"] == {"queued": 2}

    (tmp_path / "gate1").touch()

    def run_running() -> dict[str, Any] | None:
        got: dict[str, Any] = c.call("run.get", id=run_id)
        assert got["status"] in ("queued", "running"), got
        return got if got["status"] == "running" else None

    run = wait_for(run_running, "the run to be running")
    assert run["finished_at"] is None
    assert jobs_by_key(run)["first"]["status"] == "running"
    assert jobs_by_key(run)["second"]["status"] == "queued"

    (tmp_path / "gate2").touch()
    run = run_done(c, run_id)
    assert run["status"] == "succeeded", run
    assert run["finished_at"] is not None
    assert run["finished_at"] == max(j["finished_at"] for j in run["jobs"])
    listed = c.call("run.list", status="succeeded")["runs"]
    assert run_id in [r["id"] for r in listed]


def test_wait_on_a_skipped_job_returns_when_it_is_skipped(c: Client) -> None:
    """`job.wait` on a dependent returns as soon as a failed dependency makes it `skipped`."""
    jobs = [
        {"key": "fails", "command": ["/bin/sh", "-c", "sleep 0.3; exit 1"]},
        {"key": "never", "command": ["/bin/true"], "depends_on": ["fails"]},
    ]
    submitted = c.call("run.submit", jobs=jobs)
    t0 = time.monotonic()
    job = c.call("job.wait", id=submitted["jobs"]["never"], timeout_s=30)
    assert job["done"] is True and job["status"] == "skipped", job
    assert time.monotonic() - t0 < 20, "job.wait should not sit out its whole timeout"
    assert c.call("job.get", id=submitted["jobs"]["fails"])["status"] == "failed"
