"""The job engine over the real socket: argv, env, cwd, logs, exits, timeouts, retries, cancel."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from hero_procd.client import Client
from hero_procd.errors import INVALID_STATE, NOT_FOUND
from integration.daemon_proc import DaemonProcess
from integration.helpers import (
    all_logs,
    call_error,
    daemon_running,
    finish,
    gate_script,
    group_alive,
    read_lines,
    submit,
    texts,
    wait_for,
    wait_groups_gone,
    wait_running,
)

SIGKILL = 9
SIGTERM = 15


# -- what a job runs with ------------------------------------------------------------------


def test_argv_env_and_cwd_arrive_intact(c: Client, tmp_path: Path) -> None:
    """Arguments with spaces, quotes and shell syntax arrive as given; env and cwd are applied."""
    tricky = "two words \"double\" 'single' $HOME `id` ; | * \\ end"
    probe = (
        "import json, os, sys; print(json.dumps({'argv': sys.argv[1:], "
        "'var': os.environ.get('HP_TEST_VAR'), 'cwd': os.getcwd(), "
        "'job': os.environ.get('HERO_PROC_JOB_ID')}))"
    )
    job_id = submit(
        c,
        command=[sys.executable, "-c", probe, tricky, "", "plain"],
        env={"HP_TEST_VAR": "value with spaces = and 'quotes'"},
        cwd=str(tmp_path),
    )
    job = finish(c, job_id)
    assert job["status"] == "succeeded", job
    assert job["exit_code"] == 0 and job["signal"] is None and job["error"] is None
    (line,) = texts(c, job_id, "stdout")
    seen = json.loads(line)
    assert seen["argv"] == [tricky, "", "plain"]
    assert seen["var"] == "value with spaces = and 'quotes'"
    assert os.path.realpath(seen["cwd"]) == os.path.realpath(tmp_path)
    assert seen["job"] == str(job_id)


def test_daemon_environment_is_inherited_but_not_its_private_variables(workdir: Path) -> None:
    """Jobs inherit the daemon's environment, except systemd's NOTIFY_SOCKET and the like."""
    env = {"NOTIFY_SOCKET": str(workdir / "notify.sock"), "HP_FROM_DAEMON": "inherited"}
    with daemon_running(workdir, env=env) as proc, proc.client() as c:
        job_id = submit(c, command=["/bin/sh", "-c", "env"])
        assert finish(c, job_id)["status"] == "succeeded"
        seen = dict(line.split("=", 1) for line in texts(c, job_id) if "=" in line)
    assert seen.get("HP_FROM_DAEMON") == "inherited"
    assert "NOTIFY_SOCKET" not in seen
    assert seen.get("HERO_PROC_JOB_ID") == str(job_id)


def test_stdout_and_stderr_are_stored_line_by_line(c: Client) -> None:
    """Each line is stored once, in order per stream, with its stream's name and seq 1..n."""
    script = (
        "echo out1; echo err1 >&2; echo; printf 'crlf\\r\\n'; echo out3; "
        "printf 'err2\\nerr3' >&2; printf 'tail without newline'"
    )
    job_id = submit(c, command=["/bin/sh", "-c", script])
    assert finish(c, job_id)["status"] == "succeeded"
    lines = all_logs(c, job_id)
    assert [ln["seq"] for ln in lines] == list(range(1, 9))
    assert {ln["stream"] for ln in lines} == {"stdout", "stderr"}
    out = [ln["text"] for ln in lines if ln["stream"] == "stdout"]
    err = [ln["text"] for ln in lines if ln["stream"] == "stderr"]
    assert out == ["out1", "", "crlf", "out3", "tail without newline"]
    assert err == ["err1", "err2", "err3"]
    assert all(isinstance(ln["ts"], float) and ln["ts"] > 0 for ln in lines)


def test_logs_paging_with_after_seq_limit_and_done(c: Client) -> None:
    """`job.logs` pages by `after_seq`/`limit`; `done` only once the job ended and all is read."""
    job_id = submit(c, command=["seq", "1", "25"])
    assert finish(c, job_id)["status"] == "succeeded"
    pages = []
    after = 0
    for _ in range(5):
        page = c.call("job.logs", id=job_id, after_seq=after, limit=10)
        pages.append(page)
        after = page["next_seq"]
        if page["done"]:
            break
    assert [[ln["seq"] for ln in p["lines"]] for p in pages] == [
        list(range(1, 11)),
        list(range(11, 21)),
        list(range(21, 26)),
    ]
    assert [p["done"] for p in pages] == [False, False, True]
    assert [p["next_seq"] for p in pages] == [10, 20, 25]
    assert [ln["text"] for p in pages for ln in p["lines"]] == [str(i) for i in range(1, 26)]
    # A page that ends exactly at the last line is not yet known to be the end.
    exact = c.call("job.logs", id=job_id, after_seq=20, limit=5)
    assert [ln["seq"] for ln in exact["lines"]] == [21, 22, 23, 24, 25] and not exact["done"]
    tail = c.call("job.logs", id=job_id, after_seq=25, limit=5)
    assert tail["lines"] == [] and tail["done"] and tail["next_seq"] == 25


def test_logs_of_a_running_job_are_not_done(c: Client, tmp_path: Path) -> None:
    """While the job runs, what it printed can be read and `done` stays false."""
    job_id = submit(c, script=f"echo early; {gate_script()}; echo late", cwd=str(tmp_path))
    wait_running(c, job_id)

    def first_page() -> dict[str, Any] | None:
        page: dict[str, Any] = c.call("job.logs", id=job_id)
        return page if page["lines"] else None

    page = wait_for(first_page, "the first line of a running job")
    assert [ln["text"] for ln in page["lines"]] == ["early"]
    assert page["done"] is False and page["status"] == "running"
    (tmp_path / "gate").touch()
    assert finish(c, job_id)["status"] == "succeeded"
    assert texts(c, job_id) == ["early", "late"]


@pytest.mark.parametrize(
    ("interpreter", "script", "expected"),
    [
        ("/bin/sh", 'x=41; echo "sh says $((x+1))"; echo to-err >&2', ["sh says 42", "to-err"]),
        ("python3", "import sys\nprint('py says', 6 * 7)\nprint('to-err', file=sys.stderr)",
         ["py says 42", "to-err"]),
        (None, 'echo "default $((40+2))"', ["default 42"]),
    ],
    ids=["sh", "python3", "default-interpreter"],
)  # fmt: skip
def test_script_with_interpreter(
    c: Client, interpreter: str | None, script: str, expected: list[str]
) -> None:
    """A script runs under its interpreter (`/bin/sh` when none is given)."""
    params: dict[str, Any] = {"script": script}
    if interpreter is not None:
        params["interpreter"] = interpreter
    job_id = submit(c, **params)
    job = finish(c, job_id)
    assert job["status"] == "succeeded", job
    assert job["script"] == script
    assert texts(c, job_id) == expected


# -- how a job ends ------------------------------------------------------------------------


def test_exit_codes_are_recorded(c: Client) -> None:
    """Exit 0 is `succeeded`; a non-zero exit is `failed` with the code and a clear error."""
    ok = submit(c, command=["/bin/sh", "-c", "exit 0"])
    bad = submit(c, command=["/bin/sh", "-c", "echo about to fail; exit 3"])
    job = finish(c, ok)
    assert (job["status"], job["exit_code"], job["signal"]) == ("succeeded", 0, None)
    job = finish(c, bad)
    assert (job["status"], job["exit_code"], job["signal"]) == ("failed", 3, None)
    assert "3" in job["error"] and "exit" in job["error"]
    assert job["finished_at"] >= job["started_at"] >= job["created_at"]
    assert texts(c, bad) == ["about to fail"]


@pytest.mark.parametrize(("name", "number"), [("KILL", SIGKILL), ("TERM", SIGTERM)])
def test_killed_by_a_signal_records_it(c: Client, name: str, number: int) -> None:
    """A job killed by a signal is `failed` with that signal and no exit code."""
    job_id = submit(c, command=["/bin/sh", "-c", f"kill -{name} $$"])
    job = finish(c, job_id)
    assert job["status"] == "failed", job
    assert job["signal"] == number and job["exit_code"] is None
    assert name in job["error"]


def test_unstartable_jobs_fail_clearly_and_the_executor_goes_on(c: Client, tmp_path: Path) -> None:
    """A missing binary, a bad cwd or a non-executable file fail with a clear error; others run."""
    not_exec = tmp_path / "not-executable"
    not_exec.write_text("#!/bin/sh\necho no\n")
    not_exec.chmod(0o644)
    missing = submit(c, command=["/nonexistent/hp-no-such-binary", "x"])
    missing_on_path = submit(c, command=["hp-no-such-program-on-path"])
    bad_cwd = submit(c, command=["/bin/true"], cwd="/nonexistent/hp-no-such-dir")
    file_cwd = submit(c, command=["/bin/true"], cwd=str(not_exec))
    denied = submit(c, command=[str(not_exec)])
    cases = {
        missing: "/nonexistent/hp-no-such-binary",
        missing_on_path: "hp-no-such-program-on-path",
        bad_cwd: "/nonexistent/hp-no-such-dir",
        file_cwd: str(not_exec),
        denied: str(not_exec),
    }
    for job_id, named in cases.items():
        job = finish(c, job_id)
        assert job["status"] == "failed", job
        assert job["exit_code"] is None and job["signal"] is None and job["pid"] is None
        assert named in job["error"], job["error"]
    assert "No such file" in finish(c, missing)["error"]
    assert "No such file" in finish(c, bad_cwd)["error"]
    assert "Not a directory" in finish(c, file_cwd)["error"]
    assert "Permission denied" in finish(c, denied)["error"]
    after = [submit(c, command=["/bin/echo", f"still here {i}"]) for i in range(3)]
    for i, job_id in enumerate(after):
        assert finish(c, job_id)["status"] == "succeeded"
        assert texts(c, job_id) == [f"still here {i}"]


def test_unstartable_jobs_in_one_claim_with_others_leave_those_running(c: Client) -> None:
    """Launches claimed together are spawned together: the ones that cannot start end
    failed, each with its own error, and every other one of the batch runs and succeeds."""
    items: list[dict[str, Any]] = []
    for i in range(12):
        if i % 4 == 1:
            items.append({"command": [f"/nonexistent/hp-batch-{i}"]})
        elif i % 4 == 3:
            items.append({"command": ["/bin/true"], "cwd": f"/nonexistent/hp-batch-dir-{i}"})
        else:
            items.append({"command": ["/bin/echo", f"ran {i}"]})
    ids = c.call("job.submit_batch", jobs=items)["submitted"]
    assert len(ids) == 12
    for i, job_id in enumerate(ids):
        job = finish(c, job_id)
        if i % 4 == 1:
            assert job["status"] == "failed" and f"/nonexistent/hp-batch-{i}" in job["error"]
        elif i % 4 == 3:
            assert job["status"] == "failed" and f"hp-batch-dir-{i}" in job["error"], job
        else:
            assert job["status"] == "succeeded", job
            assert texts(c, job_id) == [f"ran {i}"]


def test_leftover_processes_of_the_group_are_killed_when_the_job_exits(c: Client) -> None:
    """A background process the job leaves in its group is killed when the job's leader exits."""
    job_id = submit(c, command=["/bin/sh", "-c", "sleep 60 & echo $!"])
    job = finish(c, job_id)
    assert job["status"] == "succeeded", job
    (pid_text,) = texts(c, job_id)
    wait_groups_gone([job["pid"]])
    with pytest.raises(ProcessLookupError):
        os.kill(int(pid_text), 0)


# -- timeouts ------------------------------------------------------------------------------


def test_timeout_terminates_the_job(c: Client) -> None:
    """A job past its `timeout_s` gets SIGTERM and ends `timed_out`."""
    job_id = submit(c, command=["sleep", "30"], timeout_s=0.5)
    job = finish(c, job_id)
    assert job["status"] == "timed_out", job
    assert job["signal"] == SIGTERM
    assert "timed out" in job["error"]
    wait_groups_gone([job["pid"]])


def test_timeout_kills_a_child_that_ignores_sigterm(c: Client) -> None:
    """A group that ignores SIGTERM is SIGKILLed after `kill_timeout_s`; none of it survives."""
    job_id = submit(
        c,
        command=["/bin/sh", "-c", 'trap "" TERM; sleep 60 & sleep 60; wait'],
        timeout_s=0.5,
        kill_timeout_s=0.5,
    )
    job = finish(c, job_id)
    assert job["status"] == "timed_out", job
    assert job["signal"] == SIGKILL, "SIGTERM was ignored: only SIGKILL can have ended it"
    # It outlived SIGTERM by the kill timeout (a lower bound: it cannot be faster).
    assert job["finished_at"] - job["started_at"] >= 0.9
    pgid = job["pid"]
    wait_groups_gone([pgid])
    with pytest.raises(ProcessLookupError):
        os.killpg(pgid, 0)


# -- retries -------------------------------------------------------------------------------


def test_retries_until_success(c: Client, tmp_path: Path) -> None:
    """A job failing twice then succeeding, with retries 3, ends `succeeded` at attempt 3."""
    script = (
        'n=$(cat count 2>/dev/null || echo 0); n=$((n+1)); echo $n > count; '
        'echo "$HERO_PROC_ATTEMPT" >> attempts; echo "attempt $n"; [ "$n" -ge 3 ]'
    )  # fmt: skip
    job_id = submit(c, script=script, cwd=str(tmp_path), retries=3, retry_delay_s=0.2)
    job = finish(c, job_id)
    assert job["status"] == "succeeded", job
    assert job["attempt"] == 3 and job["max_attempts"] == 4
    assert job["exit_code"] == 0 and job["error"] is None
    assert (tmp_path / "count").read_text().strip() == "3"
    assert read_lines(tmp_path / "attempts") == ["1", "2", "3"]
    # The output of every attempt is kept, in order, with no seq reused.
    lines = all_logs(c, job_id)
    assert [ln["text"] for ln in lines] == ["attempt 1", "attempt 2", "attempt 3"]
    assert [ln["seq"] for ln in lines] == [1, 2, 3]


def test_retries_exhausted_ends_failed(c: Client, tmp_path: Path) -> None:
    """A job that always fails runs retries+1 times and ends `failed` with its last exit code."""
    job_id = submit(
        c, script="echo x >> tries; exit 7", cwd=str(tmp_path), retries=2, retry_delay_s=0.1
    )
    job = finish(c, job_id)
    assert job["status"] == "failed", job
    assert job["attempt"] == 3 and job["max_attempts"] == 3
    assert job["exit_code"] == 7
    assert read_lines(tmp_path / "tries") == ["x", "x", "x"]


def test_retry_backoff_grows(c: Client, tmp_path: Path) -> None:
    """The wait before each retry doubles: the second gap is longer than the first."""
    delay = 0.4
    job_id = submit(
        c, script="date +%s.%N >> stamps; exit 1", cwd=str(tmp_path), retries=2, retry_delay_s=delay
    )
    job = finish(c, job_id)
    assert job["status"] == "failed" and job["attempt"] == 3, job
    stamps = [float(s) for s in read_lines(tmp_path / "stamps")]
    assert len(stamps) == 3
    first, second = stamps[1] - stamps[0], stamps[2] - stamps[1]
    # ~0.4 then ~0.8, each ±20 %: the first is at least 0.32, the second at least 0.64.
    assert first >= delay * 0.8 - 0.02, (first, second)
    assert second > first, (first, second)


def test_timed_out_attempt_is_retried(c: Client) -> None:
    """A timeout counts as a failed attempt: with retries left the job runs again."""
    script = '[ "$HERO_PROC_ATTEMPT" -ge 2 ] && exit 0; sleep 30'
    job_id = submit(c, script=script, timeout_s=0.3, retries=1, retry_delay_s=0.1)
    job = finish(c, job_id)
    assert job["status"] == "succeeded" and job["attempt"] == 2, job


def test_cancel_during_retry_backoff(c: Client, tmp_path: Path) -> None:
    """A job waiting out its retry backoff is queued: cancel ends it at once and it never reruns."""
    job_id = submit(
        c, script="echo x >> tries; exit 1", cwd=str(tmp_path), retries=3, retry_delay_s=5
    )

    def in_backoff() -> dict[str, Any] | None:
        job: dict[str, Any] = c.call("job.get", id=job_id)
        return job if job["status"] == "queued" and job["attempt"] == 1 else None

    job = wait_for(in_backoff, "the first attempt to fail")
    assert job["not_before"] > time.time()
    assert c.call("job.cancel", id=job_id)["result"] == "cancelled"
    assert c.call("job.wait", id=job_id, timeout_s=7)["status"] == "cancelled"
    assert read_lines(tmp_path / "tries") == ["x"]


# -- cancel --------------------------------------------------------------------------------


def test_cancel_queued_then_running_then_finished(c: Client, tmp_path: Path) -> None:
    """Queued → `cancelled` at once; running → signalled, ends `cancelled`; finished → -32004."""
    c.call("group.set", name="cancel-grp", max_parallel=1)
    blocker = submit(c, command=["sleep", "30"], group="cancel-grp")
    pgid = wait_running(c, blocker)["pid"]
    waiting = submit(c, command=["/bin/sh", "-c", "echo ran >> ran"], group="cancel-grp",
                     cwd=str(tmp_path))  # fmt: skip
    assert c.call("job.get", id=waiting)["status"] == "queued"

    assert c.call("job.cancel", id=waiting) == {"id": waiting, "result": "cancelled"}
    job = c.call("job.get", id=waiting)
    assert job["status"] == "cancelled" and job["finished_at"] is not None

    assert c.call("job.cancel", id=blocker) == {"id": blocker, "result": "cancelling"}
    job = finish(c, blocker)
    assert job["status"] == "cancelled", job
    assert job["signal"] == SIGTERM
    wait_groups_gone([pgid])

    for done in (waiting, blocker):
        err = call_error(c, "job.cancel", id=done)
        assert err.code == INVALID_STATE, err
        assert c.call("job.get", id=done)["status"] == "cancelled"
    assert not (tmp_path / "ran").exists(), "a cancelled queued job must never run"
    assert call_error(c, "job.cancel", id=10_000_000).code == NOT_FOUND


def test_cancel_of_a_job_ignoring_sigterm_kills_it(c: Client) -> None:
    """Cancelling a job that ignores SIGTERM SIGKILLs its group after `kill_timeout_s`."""
    job_id = submit(
        c, command=["/bin/sh", "-c", 'trap "" TERM; sleep 60 & sleep 60; wait'], kill_timeout_s=0.3
    )
    pgid = wait_running(c, job_id)["pid"]
    assert c.call("job.cancel", id=job_id)["result"] == "cancelling"
    job = finish(c, job_id)
    assert job["status"] == "cancelled" and job["signal"] == SIGKILL, job
    wait_groups_gone([pgid])


# -- job.wait ------------------------------------------------------------------------------


def test_wait_returns_when_the_job_ends(c: Client) -> None:
    """`job.wait` answers as soon as the job ends, long before its timeout."""
    job_id = submit(c, command=["sleep", "0.3"])
    t0 = time.monotonic()
    job = c.call("job.wait", id=job_id, timeout_s=30)
    assert job["done"] is True and job["status"] == "succeeded", job
    assert time.monotonic() - t0 < 20, "job.wait should not sit out its whole timeout"


def test_wait_times_out_with_the_job_still_running(c: Client) -> None:
    """On timeout, `job.wait` returns the job as it is with `done: false`."""
    job_id = submit(c, command=["sleep", "30"])
    job = c.call("job.wait", id=job_id, timeout_s=0.3)
    assert job["done"] is False and job["status"] in ("queued", "running"), job
    assert job["finished_at"] is None
    c.call("job.cancel", id=job_id)
    assert finish(c, job_id)["status"] == "cancelled"
    assert call_error(c, "job.wait", id=10_000_000, timeout_s=1).code == NOT_FOUND


# -- scheduling: priority and groups -------------------------------------------------------


def test_higher_priority_runs_first(serial: DaemonProcess, tmp_path: Path) -> None:
    """With one slot, queued jobs run by priority (highest first), then in submission order."""
    with serial.client() as c:
        blocker = submit(c, script=gate_script(), cwd=str(tmp_path))
        wait_running(c, blocker)
        order = tmp_path / "order"
        names = [("p0a", 0), ("p5", 5), ("pneg", -1), ("p0b", 0), ("p10", 10), ("p1", 1)]
        ids = [
            submit(c, command=["/bin/sh", "-c", f"echo {n} >> {order}"], priority=p)
            for n, p in names
        ]
        for job_id in ids:
            assert c.call("job.get", id=job_id)["status"] == "queued"
        (tmp_path / "gate").touch()
        for job_id in ids:
            assert finish(c, job_id)["status"] == "succeeded"
        assert read_lines(order) == ["p10", "p5", "p1", "p0a", "p0b", "pneg"]


def test_group_with_one_slot_never_overlaps(c: Client, tmp_path: Path) -> None:
    """Jobs of a group with max_parallel 1 run one after the other, never together."""
    c.call("group.set", name="serial-grp", max_parallel=1)
    log = tmp_path / "log"
    ids = [
        submit(
            c,
            command=["/bin/sh", "-c", f"echo start {i} >> {log}; sleep 0.2; echo end {i} >> {log}"],
            group="serial-grp",
        )
        for i in range(3)
    ]
    for job_id in ids:
        assert finish(c, job_id)["status"] == "succeeded"
    lines = read_lines(log)
    assert lines == [f"{what} {i}" for i in range(3) for what in ("start", "end")]
    groups = {g["name"]: g for g in c.call("group.list")["groups"]}
    assert groups["serial-grp"]["max_parallel"] == 1 and groups["serial-grp"]["running"] == 0


def test_group_with_two_slots_runs_two_at_once(c: Client, tmp_path: Path) -> None:
    """A group with max_parallel 2 runs two jobs together (each waits until both are there)."""
    c.call("group.set", name="pair-grp", max_parallel=2)
    rendezvous = (
        "touch $HERO_PROC_JOB_ID.here; i=0; "
        'while [ "$(ls *.here | wc -l)" -lt 2 ]; do '
        "sleep 0.05; i=$((i+1)); [ $i -gt 300 ] && exit 1; done; exit 0"
    )
    ids = [submit(c, script=rendezvous, cwd=str(tmp_path), group="pair-grp") for _ in range(2)]
    for job_id in ids:
        assert finish(c, job_id)["status"] == "succeeded"


# -- bulk operations -----------------------------------------------------------------------


def test_wipe_all_stops_running_jobs(daemon: DaemonProcess) -> None:
    """`system.wipe_all` while jobs run stops them (no process left) and deletes everything."""
    with daemon.client() as c:
        c.call("group.set", name="wipe-grp", max_parallel=1)
        sleepers = [submit(c, command=["sleep", "60"]) for _ in range(2)]
        stubborn = submit(
            c, command=["/bin/sh", "-c", 'trap "" TERM; sleep 60'], kill_timeout_s=0.3
        )
        held = submit(c, command=["sleep", "60"], group="wipe-grp")
        queued = submit(c, command=["sleep", "60"], group="wipe-grp")
        pgids = [wait_running(c, j)["pid"] for j in (*sleepers, stubborn, held)]
        for pgid in pgids:
            assert group_alive(pgid)
        out = c.call("system.wipe_all", confirm=True)
        assert out["stopped_jobs"] == 4, out
        assert out["deleted"]["jobs"] == 5, out
        for pgid in pgids:
            wait_groups_gone([pgid])
        for job_id in (*sleepers, stubborn, held, queued):
            assert call_error(c, "job.get", id=job_id).code == NOT_FOUND
        assert c.call("system.info")["counts"]["jobs"] == 0
        # The executor works again afterwards.
        again = submit(c, command=["/bin/echo", "after wipe"])
        assert finish(c, again)["status"] == "succeeded"
        assert texts(c, again) == ["after wipe"]


def test_clean_by_tag_skips_active_jobs(c: Client) -> None:
    """`job.clean_by_tag` deletes finished jobs with their logs, and counts running/queued ones."""
    c.call("group.set", name="clean-grp", max_parallel=1)
    done = [
        submit(c, command=["/bin/sh", "-c", f"echo line {i}; echo err {i} >&2"], tags=["cleanme"])
        for i in range(2)
    ]
    failed = submit(c, command=["/bin/sh", "-c", "echo bye; exit 2"], tags=["cleanme"])
    for job_id in [*done, failed]:
        assert finish(c, job_id)["status"] in ("succeeded", "failed")
    active = submit(c, command=["sleep", "60"], tags=["cleanme", "other"], group="clean-grp")
    wait_running(c, active)
    queued = submit(c, command=["sleep", "60"], tags=["cleanme"], group="clean-grp")
    untagged = submit(c, command=["/bin/echo", "keep"])
    finish(c, untagged)

    out = c.call("job.clean_by_tag", tag="cleanme")
    assert out == {"deleted": {"jobs": 3, "runs": 0, "logs": 5}, "skipped_active": 2}
    for job_id in [*done, failed]:
        assert call_error(c, "job.get", id=job_id).code == NOT_FOUND
    assert c.call("job.get", id=active)["status"] == "running"
    assert c.call("job.get", id=queued)["status"] == "queued"
    assert texts(c, untagged) == ["keep"]
    for job_id in (queued, active):
        c.call("job.cancel", id=job_id)
        assert finish(c, job_id)["status"] == "cancelled"


def test_twenty_thousand_lines_are_all_stored_in_order(c: Client) -> None:
    """A job printing 20,000 lines has every one stored, seq 1..20000, none dropped."""
    job_id = submit(c, command=["seq", "1", "20000"])
    assert finish(c, job_id)["status"] == "succeeded"
    lines = all_logs(c, job_id)
    assert len(lines) == 20_000
    assert [ln["seq"] for ln in lines] == list(range(1, 20_001))
    assert [ln["text"] for ln in lines] == [str(i) for i in range(1, 20_001)]
    assert all(ln["stream"] == "stdout" for ln in lines)
    assert c.call("system.info")["dropped_log_lines"] == 0
