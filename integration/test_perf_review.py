"""A review's attacks on the executor's batched writes (finish_many, pids riding with the
ends, shared spec objects), on the real daemon with real processes.

Many attempts are held at a gate and released together, so their ends arrive in the same
loop steps and are written as one unit; cancels, dedup-key retries, dependents and
`job.wait` calls race those ends. Every round asserts outcomes (one per job, each attempt
run once, waits answered with the committed end), never that nothing happened.
"""

from __future__ import annotations

import contextlib
import functools
import os
import random
import signal
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from hero_procd.client import Client
from hero_procd.engine.executor import instance_id
from hero_procd.engine.procs import find_marked
from hero_procd.errors import HeroError, InvalidState
from integration.daemon_proc import DaemonProcess
from integration.helpers import finish, group_alive, list_jobs, wait_for, wait_groups_gone
from tests.pg import pg_schema
from tests.tmpfs import fill, tiny_tmpfs

TERMINAL = ("succeeded", "failed", "cancelled", "timed_out", "lost", "skipped")


def _gated(gate: Path, starts: Path, tail: str) -> str:
    """A script that records its attempt (job id, attempt, a spec env var), waits for the
    gate, then runs `tail`."""
    return (
        f'echo "$HERO_PROC_JOB_ID $HERO_PROC_ATTEMPT $SHARED" >> {starts}; '
        f"while [ ! -e {gate} ]; do sleep 0.005; done; {tail}"
    )


def _comm(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return None


def _running(c: Client, ids: list[int]) -> bool | None:
    jobs = [c.call("job.get", id=i) for i in ids]
    return True if all(j["status"] == "running" and j["pid"] for j in jobs) else None


def _one_round(c: Client, sock: Path, tmp: Path, rng: random.Random, n: int) -> dict[str, int]:
    gate = tmp / f"gate{n}"
    starts = tmp / f"starts{n}"
    # One spec text for all the plain jobs: the claim gives them one shared spec object.
    # Attempt 1 fails, attempt 2 succeeds.
    shared: dict[str, Any] = {
        "script": _gated(gate, starts, '[ "$HERO_PROC_ATTEMPT" -ge 2 ]'),
        "retries": 1,
        "retry_delay_s": 0,
        "env": {"SHARED": f"s{n}"},
    }
    plain = c.call("job.submit_batch", jobs=[dict(shared) for _ in range(16)])["submitted"]
    # Two pairs of attempts holding one dedup key each (the second submitted once the
    # first runs: a dedup key is held by queued jobs only).
    pairs: list[tuple[int, int]] = []
    for k in range(2):
        key = f"k{n}-{k}"
        first: int = c.call("job.submit", {**shared, "dedup_key": key})["id"]
        wait_for(functools.partial(_running, c, [first]), "the pair's first to run")
        second: int = c.call("job.submit", {**shared, "dedup_key": key})["id"]
        assert second != first
        pairs.append((first, second))
    # A run: gated parents ending together, half failing; each with a dependent.
    run_jobs: list[dict[str, Any]] = []
    for k in range(8):
        run_jobs.append({"key": f"p{k}", "script": _gated(gate, starts, f"exit {k % 2}"),
                         "env": {"SHARED": f"s{n}"}})  # fmt: skip
        run_jobs.append({"key": f"d{k}", "command": ["true"], "depends_on": [f"p{k}"]})
    # Fan-in: one dependent of the parents that succeed, one of all of them.
    run_jobs.append({"key": "even", "command": ["true"],
                     "depends_on": [f"p{k}" for k in range(0, 8, 2)]})  # fmt: skip
    run_jobs.append({"key": "all", "command": ["true"],
                     "depends_on": [f"p{k}" for k in range(8)]})  # fmt: skip
    run = c.call("run.submit", name=f"r{n}", jobs=run_jobs)
    parents = [run["jobs"][f"p{k}"] for k in range(8)]
    gated = [*plain, *(j for p in pairs for j in p), *parents]
    wait_for(lambda: _running(c, gated), "every gated job to run", 30)

    # job.wait on every gated job, from threads, before the gate opens.
    waited: dict[int, dict[str, Any]] = {}

    def waiter(ids: list[int]) -> None:
        with Client(sock, timeout=60) as wc:
            for job_id in ids:
                waited[job_id] = wc.call("job.wait", id=job_id, timeout_s=40)

    threads = [threading.Thread(target=waiter, args=(gated[i::4],)) for i in range(4)]
    for t in threads:
        t.start()
    # Cancels racing the ends: 5 of the plain jobs, around the gate's opening.
    victims = rng.sample(plain, 5)
    answers: dict[int, str] = {}
    attempt_then: dict[int, int] = {}  # the job's attempt read right after the answer

    def canceller() -> None:
        with Client(sock, timeout=60) as cc:
            for job_id in victims:
                time.sleep(rng.uniform(0.0, 0.02))
                try:
                    answers[job_id] = cc.call("job.cancel", id=job_id)["result"]
                    attempt_then[job_id] = cc.call("job.get", id=job_id)["attempt"]
                except InvalidState:
                    answers[job_id] = "refused"

    ct = threading.Thread(target=canceller)
    time.sleep(rng.uniform(0.0, 0.05))
    ct.start()
    time.sleep(rng.uniform(0.0, 0.03))
    gate.touch()
    ct.join(60)
    for t in threads:
        t.join(60)
    dependents = [run["jobs"][f"d{k}"] for k in range(8)]
    dependents += [run["jobs"]["even"], run["jobs"]["all"]]
    final = {j: finish(c, j, 40) for j in [*gated, *dependents]}
    assert final[run["jobs"]["even"]]["status"] == "succeeded", final[run["jobs"]["even"]]
    assert final[run["jobs"]["all"]]["status"] == "skipped", final[run["jobs"]["all"]]

    # A wait is answered with the committed end: terminal, and what the job still says.
    for job_id in gated:
        got = waited[job_id]
        assert got["status"] in TERMINAL, got
        assert (got["status"], got["attempt"]) == (
            final[job_id]["status"], final[job_id]["attempt"]
        ) or got["status"] == final[job_id]["status"], (got, final[job_id])  # fmt: skip

    # Each attempt ran once, with its own job id and the shared env.
    lines = starts.read_text().split()
    seen: dict[int, list[int]] = {}
    for i in range(0, len(lines), 3):
        job_id, attempt, mark = int(lines[i]), int(lines[i + 1]), lines[i + 2]
        assert mark == f"s{n}"
        seen.setdefault(job_id, []).append(attempt)
    for job_id in gated:
        job = final[job_id]
        ran = list(range(1, job["attempt"] + 1))
        if job["status"] == "cancelled" and "before it started" in (job["error"] or ""):
            ran.pop()  # claimed, cancelled before its process started
        elif job["status"] == "cancelled" and sorted(seen.get(job_id, [])) == ran[:-1]:
            # A cancel that came while the attempt was being spawned: its process was
            # terminated as soon as it ran, before its shell wrote the start line.
            ran.pop()
        why = (job_id, job["status"], job["error"], job["attempt"], answers.get(job_id))
        assert sorted(seen.get(job_id, [])) == ran, (*why, seen.get(job_id))

    outcome: dict[str, int] = {}
    for job_id in plain:
        job = final[job_id]
        answer = answers.get(job_id)
        if answer in ("cancelled", "cancelling"):
            # The intent is kept; the job is not run again after the answer (at most the
            # attempt already claimed): it ends cancelled, or with its real outcome.
            assert job["cancel_requested"] is True, job
            assert job["status"] in ("cancelled", "failed", "succeeded"), job
            assert job["attempt"] == attempt_then[job_id], (job, attempt_then[job_id])
            outcome[f"cancel:{answer}->{job['status']}"] = (
                outcome.get(f"cancel:{answer}->{job['status']}", 0) + 1
            )
        else:
            assert (job["status"], job["attempt"]) == ("succeeded", 2), (job, answer)
    for first, second in pairs:
        a, b = final[first], final[second]
        superseded = [j for j in (a, b) if j["status"] == "cancelled"]
        assert len(superseded) <= 1, (a, b)
        assert all("superseded" in (j["error"] or "") for j in superseded), (a, b)
        assert any(j["status"] == "succeeded" and j["attempt"] == 2 for j in (a, b)), (a, b)
        outcome[f"pair:{len(superseded)}"] = outcome.get(f"pair:{len(superseded)}", 0) + 1
    for k in range(8):
        p, d = final[parents[k]], final[run["jobs"][f"d{k}"]]
        assert p["status"] == ("succeeded" if k % 2 == 0 else "failed"), p
        assert d["status"] == ("succeeded" if k % 2 == 0 else "skipped"), d
    got_run = wait_for(
        lambda: (
            ((r := c.call("run.get", id=run["id"]))["status"] not in ("queued", "running") and r)
            or None
        ),
        "the run to finish",
    )
    assert got_run["status"] == "failed", got_run
    return outcome


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_ends_released_together_race_cancels_waits_dedup_and_dependents(
    workdir: Path, tmp_path: Path, backend: str
) -> None:
    """34 attempts released at once by a gate (their ends written in batches), x4 rounds
    with random timing: cancels racing the ends keep their intent and one outcome, every
    `job.wait` is answered with the committed end, each attempt runs once with its own job
    id on a shared spec, one of two retries holding a dedup key may be superseded (never
    both), a failed parent's dependent is skipped and the run settles failed."""
    rng = random.Random(4242)
    totals: dict[str, int] = {}
    with contextlib.ExitStack() as stack:
        db = None if backend == "sqlite" else stack.enter_context(pg_schema())
        proc = DaemonProcess(workdir, ["--max-parallel", "64"], db=db, node="n1" if db else None)
        stack.enter_context(proc)
        c = stack.enter_context(proc.client(timeout=60))
        for n in range(4):
            for key, count in _one_round(c, proc.socket_path, tmp_path, rng, n).items():
                totals[key] = totals.get(key, 0) + count
        assert proc.stop() == 0
    print("outcomes", sorted(totals.items()))


# -- a full disk while a batch of ends is written -------------------------------------------


def test_ends_of_a_batch_written_once_each_after_a_full_disk(tmp_path: Path) -> None:
    """The database's disk is full when 12 attempts end together (their batch unit fails,
    then each end is retried alone) and while retries are launched: once space returns,
    every end is written once (each attempt ran once, the retries ran), the failed
    parents' dependents are skipped and the run settles failed; nothing stays running."""
    with tiny_tmpfs(Path(f"/tmp/hpfullrev{os.getpid()}"), "4m") as where:
        gate = tmp_path / "gate"
        starts = tmp_path / "starts"
        proc = DaemonProcess(where, ["--max-parallel", "64"])
        proc.start()
        try:
            with proc.client(timeout=60) as c:
                spec = {
                    "script": _gated(gate, starts, '[ "$HERO_PROC_ATTEMPT" -ge 2 ]'),
                    "retries": 1,
                    "retry_delay_s": 0,
                    "env": {"SHARED": "full"},
                }
                plain = c.call("job.submit_batch", jobs=[dict(spec) for _ in range(8)])
                plain_ids = plain["submitted"]
                run_jobs: list[dict[str, Any]] = []
                for k in range(4):
                    script = _gated(gate, starts, f"exit {k % 2}")
                    run_jobs.append({"key": f"p{k}", "script": script, "env": {"SHARED": "full"}})
                    run_jobs.append({"key": f"d{k}", "command": ["true"], "depends_on": [f"p{k}"]})
                run = c.call("run.submit", name="full", jobs=run_jobs)
                parents = [run["jobs"][f"p{k}"] for k in range(4)]
                deps = [run["jobs"][f"d{k}"] for k in range(4)]
                gated = [*plain_ids, *parents]
                wait_for(lambda: _running(c, gated), "every gated job to run", 30)
                filler = fill(where)
                # The disk is full for writes that need a new page: check one is refused.
                refused = False
                for _ in range(50):
                    try:
                        big = [{"command": ["true"], "tags": ["x" * 200]}] * 2000
                        c.call("job.submit_batch", jobs=big)
                    except HeroError as exc:
                        refused = "full" in str(exc)
                        break
                assert refused, "no write was refused on a full disk"
                gate.touch()
                # The ends cannot be written meanwhile: the jobs stay running in the database.
                time.sleep(1.0)
                still = [c.call("job.get", id=j)["status"] for j in gated]
                filler.unlink()
                final = {j: finish(c, j, 60) for j in [*gated, *deps]}
                for job_id in plain_ids:
                    assert (final[job_id]["status"], final[job_id]["attempt"]) == ("succeeded", 2)
                for k in range(4):
                    want = ("succeeded", "succeeded") if k % 2 == 0 else ("failed", "skipped")
                    got = (final[parents[k]]["status"], final[deps[k]]["status"])
                    assert got == want, (k, final[parents[k]], final[deps[k]])
                lines = starts.read_text().split()
                seen: dict[int, list[int]] = {}
                for i in range(0, len(lines), 3):
                    seen.setdefault(int(lines[i]), []).append(int(lines[i + 1]))
                for job_id in gated:
                    want_runs = list(range(1, final[job_id]["attempt"] + 1))
                    assert sorted(seen[job_id]) == want_runs, (final[job_id], seen[job_id])
                got_run = wait_for(
                    lambda: (
                        (
                            (r := c.call("run.get", id=run["id"]))["status"]
                            not in ("queued", "running")
                            and r
                        )
                        or None
                    ),
                    "the run to finish",
                )
                assert got_run["status"] == "failed", got_run
                assert list_jobs(c, status="running") == []
                print("statuses while full", sorted(set(still)))
                text = proc.log()
                print("batch failed", text.count("could not write a batch of ends"),
                      "retried alone", text.count("could not write a job's end; retrying"),
                      "pids lost", text.count("could not record jobs' pids"))  # fmt: skip
            assert proc.stop() == 0
        finally:
            proc.stop()


# -- kill -9 while launches' pids ride with the ends ----------------------------------------


def test_kill_9_with_process_groups_finds_unmarked_jobs_by_their_recorded_pid(
    workdir: Path,
) -> None:
    """Process-group containment, x3 rounds: 6 long jobs that drop the daemon's mark from
    their environment (`exec env -i`) are launched while 24 short jobs end around them
    (their pids written in the units of those ends). Each pid is recorded promptly, with the
    start time the restart checks it by: after kill -9 and a restart, every one of those
    processes is found by its pid alone and killed, and no job is left running."""
    rng = random.Random(77)
    env = {"HERO_PROC_CONTAINMENT": "process-group"}
    for _ in range(3):
        first = DaemonProcess(workdir, ["--max-parallel", "64"], env=env)
        first.start()
        pgids: list[int] = []
        long_ids: list[int] = []
        try:
            with first.client(timeout=60) as c:
                short = [{"command": ["sleep", f"{rng.uniform(0, 0.05):.3f}"]} for _ in range(24)]
                hidden = [{"command": ["env", "-i", "sleep", "600"]} for _ in range(6)]
                mixed = [*short[:12], *hidden, *short[12:]]
                got = c.call("job.submit_batch", jobs=mixed)["submitted"]
                long_ids = got[12:18]

                # Recorded promptly (with the ends being written around them).
                def recorded(ids: list[int] = long_ids) -> list[dict[str, Any]] | None:
                    js = [c.call("job.get", id=i) for i in ids]
                    ok = all(j["status"] == "running" and j["pid"] for j in js)
                    # ... and `env -i` has exec'd sleep (its mark gone from /proc/PID/environ).
                    return js if ok and all(_comm(j["pid"]) == "sleep" for j in js) else None

                jobs = wait_for(recorded, "the long jobs' pids")
                pgids = [j["pid"] for j in jobs]
                time.sleep(rng.uniform(0.0, 0.1))
            first.kill()
            assert all(group_alive(g) for g in pgids), "process groups outlive the daemon"
            # Nothing marks them any more: only the recorded pid and start time find them.
            assert not set(find_marked(instance_id(str(first.db_path)))) & set(pgids)
            second = DaemonProcess(workdir, ["--max-parallel", "64"], env=env)
            second.start()
            try:
                wait_groups_gone(pgids, 15)
                with second.client(timeout=60) as c:
                    for job_id in long_ids:
                        job = finish(c, job_id)
                        assert job["status"] == "lost", job
                    assert list_jobs(c, status="running") == []
                assert second.stop() == 0
            finally:
                second.stop()
        finally:
            first.stop()
            for g in pgids:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(g, signal.SIGKILL)


# -- a wake-up of every waiter (PostgreSQL's NOTIFY too long to name the jobs) ----------------


def test_pg_a_wait_woken_by_an_end_too_big_to_name_keeps_waiting(workdir: Path) -> None:
    """A unit that ends over a thousand jobs at once (a failed job skipping 2,000 dependents)
    NOTIFYs 'done:*', which wakes every waiter to look again: a `job.wait` on a job still
    running must go on waiting, not answer with the running job."""
    gate = workdir / "gate"
    with (
        pg_schema() as dsn,
        DaemonProcess(workdir, db=dsn, node="n1") as proc,
        proc.client(timeout=60) as c,
    ):
        jobs: list[dict[str, Any]] = [
            {"key": "root", "script": f"while [ ! -e {gate} ]; do sleep 0.01; done; exit 1"}
        ]
        jobs += [{"key": f"d{i}", "command": ["true"], "depends_on": ["root"]}
                 for i in range(2000)]  # fmt: skip
        run = c.call("run.submit", name="wide", jobs=jobs)
        other = c.call("job.submit", script="sleep 6")["id"]
        wait_for(functools.partial(_running, c, [other, run["jobs"]["root"]]), "both to run")
        answer: dict[str, Any] = {}

        def waiter() -> None:
            with Client(proc.socket_path, timeout=60) as wc:
                answer.update(wc.call("job.wait", id=other, timeout_s=30))

        t = threading.Thread(target=waiter)
        t.start()
        time.sleep(0.3)
        gate.touch()
        assert finish(c, run["jobs"]["root"])["status"] == "failed"
        t.join(60)
        assert answer["done"] is True and answer["status"] == "succeeded", answer
