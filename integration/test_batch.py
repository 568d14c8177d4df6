"""job.submit_batch over the real socket: defaults, partial failure, dedup keys, bulk, order."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hero_procd.client import Client
from hero_procd.errors import INVALID_PARAMS, NOT_FOUND
from integration.daemon_proc import DaemonProcess
from integration.helpers import (
    finish,
    gate_script,
    kill_leftovers,
    list_jobs,
    texts,
    wait_running,
)


def hold_group(c: Client, group: str, gate_dir: Path) -> int:
    """Give `group` one slot and occupy it with a job that waits for `gate_dir/gate`; its id."""
    c.call("group.set", name=group, max_parallel=1)
    params = {"script": gate_script(), "cwd": str(gate_dir), "group": group, "tags": ["blk"]}
    blocker = int(c.call("job.submit", params)["id"])
    wait_running(c, blocker)
    return blocker


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
    assert len(list_jobs(c, tag="batch-defaults")) == 4


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
    assert len(list_jobs(c, tag="batch-partial")) == 3


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
    assert len(list_jobs(c, tag="dd-skip", status="queued")) == 2
    assert len(list_jobs(c, tag="dd-skip")) == 2


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
    assert len(list_jobs(c, tag="dd-repl", status="queued")) == 1
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
    assert len(list_jobs(c, tag="dd-inbatch")) == 2


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
        blocker = c.call("job.submit", script=gate_script(), cwd=str(tmp_path))["id"]
        wait_running(c, blocker)
        items = [{"command": ["/bin/true", str(i)]} for i in range(n)]
        out = c.call("job.submit_batch", jobs=items, defaults={"tags": ["bulk"]})
        assert out["failed"] == [] and out["deduplicated"] == []
        ids = out["submitted"]
        assert len(ids) == n and len(set(ids)) == n and ids == sorted(ids)
        assert len(list_jobs(c, tag="bulk")) == n
        assert c.call("system.info")["counts"]["jobs"] == n + 1
        # Item i became the job ids[i].
        for i in (0, 12_345, n - 1):
            job = c.call("job.get", id=ids[i])
            assert job["command"] == ["/bin/true", str(i)] and job["status"] == "queued"
        c.call("job.cancel", id=blocker)


def test_batch_keeps_submission_order(serial: DaemonProcess, tmp_path: Path) -> None:
    """Jobs of one batch at the same priority run in the order they were given."""
    with serial.client() as c:
        blocker = c.call("job.submit", script=gate_script(), cwd=str(tmp_path))["id"]
        wait_running(c, blocker)
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
                jobs=[{"script": gate_script("gate2") + "; exit 1",
                       "cwd": str(tmp_path), "dedup_key": "k-retry", "retries": 1,
                       "retry_delay_s": 0}],
            )["submitted"][0]  # fmt: skip
            wait_running(c, first)
            newer = c.call(
                "job.submit_batch",
                jobs=[{"command": ["/bin/true"], "dedup_key": "k-retry",
                       "group": "dedup-retry-grp"}],
            )  # fmt: skip
            assert len(newer["submitted"]) == 1 and newer["deduplicated"] == []
            (tmp_path / "gate2").touch()
            settled = finish(c, first, timeout_s=10)
            # Its retry would have queued a second holder of the key: it is cancelled instead.
            assert settled["status"] == "cancelled", settled
            assert "superseded" in (settled["error"] or ""), settled
            assert settled["attempt"] == 1  # no second attempt ran
            after = c.call("job.submit", command=["/bin/echo", "still writing"])["id"]
            assert finish(c, after)["status"] == "succeeded"
            assert texts(c, after) == ["still writing"]
            held = [j["id"] for j in c.call("job.list", status="queued")["jobs"]
                    if j["dedup_key"] == "k-retry"]  # fmt: skip
            assert held == newer["submitted"]  # the newer job still holds the key
        assert proc.stop(timeout_s=10) == 0
    finally:
        if proc.proc is not None and proc.proc.poll() is None:
            proc.kill()
        # A killed daemon leaves its jobs behind: end them here.
        kill_leftovers(proc.db_path)
