"""The job state machine as the store enforces it: every transition walked, allowed or refused.

JOB_TRANSITIONS (model.py) is the table; `store.jobs.transition` and every
other status write check it (`check_transition`). The walk runs on a real
database: each allowed step changes the row, each refused one raises and
changes nothing, and a step from a state the row is not in is a lost race
(False), never a write.
"""

from __future__ import annotations

import functools
import sqlite3
from typing import Any

import pytest

from hero_procd.errors import InvalidState
from hero_procd.model import JOB_TRANSITIONS, CommandSpec, JobRequest, JobStatus
from hero_procd.store import Store
from hero_procd.store.jobs import (
    AttemptEnd,
    GroupRoom,
    IllegalTransition,
    decide,
    transition,
)
from tests.conftest import StoreRunner

STATES = list(JobStatus)


def _job(**fields: Any) -> JobRequest:
    return JobRequest(spec=CommandSpec(command=["true"]), **fields)


def test_every_transition_is_allowed_or_refused_as_the_table_says(run_store: StoreRunner) -> None:
    """All 64 (from, to) pairs: allowed ones write, refused ones raise and leave the row."""

    async def body(store: Store) -> list[tuple[str, str, str]]:
        seen: list[tuple[str, str, str]] = []
        for old in STATES:
            for new in STATES:
                job_id = await store.jobs.submit(_job())

                def force(conn: sqlite3.Connection, job_id: int = job_id, s: str = old) -> None:
                    conn.execute("UPDATE jobs SET status = ? WHERE id = ?", (s, job_id))

                await store.pool.write(force)
                step = functools.partial(transition, job_id=job_id, old=old, new=new)
                try:
                    ok = await store.pool.write(step)
                    outcome = "written" if ok else "lost"
                except IllegalTransition:
                    outcome = "refused"
                status = (await store.jobs.get(job_id)).status
                assert status == (new if outcome == "written" else old), (old, new, outcome)
                seen.append((old, new, outcome))
        return seen

    for old, new, outcome in run_store(body):
        expected = "written" if JobStatus(new) in JOB_TRANSITIONS[JobStatus(old)] else "refused"
        assert outcome == expected, (old, new)


def test_a_step_from_a_state_the_job_left_is_a_lost_race(run_store: StoreRunner) -> None:
    """queued → running guarded on 'queued' finds the job cancelled: False, nothing written."""

    async def body(store: Store) -> tuple[bool, str]:
        job_id = await store.jobs.submit(_job())
        await store.jobs.cancel(job_id)
        ok = await store.pool.write(lambda c: transition(c, job_id, "queued", "running"))
        return ok, (await store.jobs.get(job_id)).status

    assert run_store(body) == (False, "cancelled")


def _row(attempt: int = 1, max_attempts: int = 1, cancel: bool = False) -> dict[str, Any]:
    return {"attempt": attempt, "max_attempts": max_attempts, "cancel_requested": int(cancel)}


@pytest.mark.parametrize(
    ("end", "row", "status"),
    [
        # A process that ended by itself keeps its real outcome, whatever was asked.
        (AttemptEnd("exited", exit_code=0), _row(cancel=True), "succeeded"),
        (AttemptEnd("exited", exit_code=1), _row(cancel=True), "failed"),
        (AttemptEnd("exited", exit_code=1), _row(1, 3, cancel=True), "failed"),  # no retry
        (AttemptEnd("exited", exit_code=1), _row(1, 3), "queued"),  # a retry
        (AttemptEnd("exited", exit_code=1), _row(3, 3), "failed"),
        (AttemptEnd("exited", error="cannot start x"), _row(), "failed"),
        # Terminated by this daemon, for a reason.
        (AttemptEnd("cancelled", signal=15), _row(1, 3), "cancelled"),
        (AttemptEnd("timed_out", signal=15), _row(1, 3), "queued"),
        (AttemptEnd("timed_out", signal=15), _row(1, 3, cancel=True), "timed_out"),
        (AttemptEnd("timed_out", signal=15), _row(), "timed_out"),
        (AttemptEnd("interrupted", signal=15), _row(3, 3), "queued"),  # does not count
        (AttemptEnd("interrupted", signal=15), _row(cancel=True), "cancelled"),
        # It ignored (or handled) the stop's SIGTERM and succeeded: never run again.
        (AttemptEnd("interrupted", exit_code=0), _row(), "succeeded"),
        (AttemptEnd("interrupted", exit_code=0), _row(cancel=True), "succeeded"),
        (AttemptEnd("interrupted", exit_code=143), _row(), "queued"),
    ],
)
def test_outcome_precedence(end: AttemptEnd, row: dict[str, Any], status: str) -> None:
    """`decide`: the rules an attempt's end is written by."""
    got, _, _, delta = decide(end, row, 1000.0)  # type: ignore[arg-type]  # a dict reads as a Row
    assert got == status
    assert delta == (-1 if status == "queued" and end.how == "interrupted" else 0)


def test_finish_needs_the_claim_that_owns_the_attempt(run_store: StoreRunner) -> None:
    """An end written with a stale token (or twice) changes nothing: one outcome per attempt."""

    async def body(store: Store) -> tuple[Any, Any, Any, str]:
        job_id = await store.jobs.submit(_job())
        (claimed,) = await store.jobs.claim(1, "tok", GroupRoom(set(), {}), 0.0)
        stale = await store.jobs.finish(job_id, "other", AttemptEnd("exited", exit_code=0))
        first = await store.jobs.finish(job_id, claimed.token, AttemptEnd("exited", exit_code=1))
        again = await store.jobs.finish(job_id, claimed.token, AttemptEnd("exited", exit_code=0))
        return stale, first, again, (await store.jobs.get(job_id)).status

    stale, first, again, status = run_store(body)
    assert stale is None and again is None
    assert first is not None and first.status == "failed"
    assert status == "failed"


def test_cancel_is_a_persisted_intent_on_a_running_job(run_store: StoreRunner) -> None:
    """cancel of a running job records the intent (committed) and answers 'cancelling'; the
    attempt's later failure is then not retried; a finished job is refused."""

    async def body(store: Store) -> tuple[str, bool, str, str]:
        job_id = await store.jobs.submit(JobRequest(spec=CommandSpec(command=["false"], retries=5)))
        (claimed,) = await store.jobs.claim(1, "tok", GroupRoom(set(), {}), 0.0)
        outcome = await store.jobs.cancel(job_id)
        intent = (await store.jobs.get(job_id)).cancel_requested
        end = await store.jobs.finish(job_id, claimed.token, AttemptEnd("exited", exit_code=1))
        assert end is not None
        with pytest.raises(InvalidState):
            await store.jobs.cancel(job_id)
        return outcome.result, intent, end.status, (await store.jobs.get(job_id)).status

    assert run_store(body) == ("cancelling", True, "failed", "failed")


def test_ends_written_together_are_each_written_as_alone(run_store: StoreRunner) -> None:
    """`finish_many` (the ends of one loop step, and the pids of the launches, in one unit)
    gives each end what `finish` gives it one after another: a stale token or a second end
    changes nothing, a cancel intent is honoured, and of two retries holding one dedup key
    the second is superseded."""

    ends = [
        AttemptEnd("exited", exit_code=0),
        AttemptEnd("exited", exit_code=1),  # retries left: queued again
        AttemptEnd("exited", exit_code=1),  # the same dedup key: superseded
        AttemptEnd("exited", exit_code=1),  # cancel asked: not retried
        AttemptEnd("timed_out", signal=15),
        AttemptEnd("interrupted", signal=15),  # queued, the attempt not counted
    ]

    async def one_set(store: Store, key: str) -> list[tuple[int, str]]:
        """Six claimed attempts (the 2nd and 3rd hold `key`), each with its token."""
        out: list[tuple[int, str]] = []
        for i in range(len(ends)):
            spec = CommandSpec(command=["x"], retries=2)
            job_id = await store.jobs.submit(
                JobRequest(spec=spec, dedup_key=key if i in (1, 2) else None)
            )
            (claimed,) = await store.jobs.claim(1, f"{key}{i}", GroupRoom(set(), {}), 0.0)
            assert claimed.id == job_id
            if i == 3:
                await store.jobs.cancel(job_id)
            out.append((job_id, claimed.token))
        return out

    async def body(store: Store) -> tuple[list[Any], list[Any], list[Any], list[Any]]:
        alone = await one_set(store, "a")
        together = await one_set(store, "b")
        pairs = zip(alone, ends, strict=True)
        got_alone = [await store.jobs.finish(j, t, e) for (j, t), e in pairs]
        # A stale token and a second end of the first attempt are part of the batch too.
        batch = [(j, t, e) for (j, t), e in zip(together, ends, strict=True)]
        batch += [(together[0][0], "stale", ends[1]), (together[0][0], together[0][1], ends[1])]
        # The pids of the attempts are recorded in the same unit, before their ends (a
        # stale token's pid is not).
        pids = [(j, t, 4000 + i, 12.5) for i, (j, t) in enumerate(together)]
        pids.append((together[1][0], "stale", 99, 1.0))
        got_together = await store.jobs.finish_many(batch, pids)
        rows_alone = [await store.jobs.get(j) for j, _ in alone]
        rows_together = [await store.jobs.get(j) for j, _ in together]
        return got_alone, got_together, rows_alone, rows_together

    got_alone, got_together, rows_alone, rows_together = run_store(body)
    assert [f.status if f else None for f in got_alone] == [
        "succeeded", "queued", "cancelled", "failed", "queued", "queued"
    ]  # fmt: skip
    assert [f.status if f else None for f in got_together] == [
        *(f.status if f else None for f in got_alone),
        None,
        None,
    ]
    for a, b in zip(rows_alone, rows_together, strict=True):
        assert (a.status, a.error, a.attempt, a.exit_code, a.signal) == (
            b.status, b.error, b.attempt, b.exit_code, b.signal
        )  # fmt: skip
    assert rows_together[2].error is not None and "superseded" in rows_together[2].error
    assert [(j.pid, j.pid_start_time) for j in rows_together] == [
        (4000 + i, 12.5) for i in range(len(ends))
    ]
    # The terminal ones are the jobs to wake, once for the whole batch.
    done = got_together[0].settled.done if got_together[0] else []
    assert sorted(done) == sorted(
        j.id for j in rows_together if j.status in ("succeeded", "cancelled", "failed")
    )
