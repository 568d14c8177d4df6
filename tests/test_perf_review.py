"""A review's attacks on the ends written together (`finish_many`) and the cancel they race.

On PostgreSQL another node writes the same rows while a unit runs: node B cancels a job
while node A writes its attempt's end. The end's read of the row and the cancel's read
must each see what the other committed (or wait for it): a cancel answered 'cancelling'
whose intent was dropped, or an end decided on a row the cancel had changed, is a lost
cancel (the job runs again).

The other node is played by a raw connection holding the statement it writes, uncommitted,
until the unit under test waits on it (pg_blocking_pids); then it commits.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import psycopg
import pytest

from hero_procd.model import CommandSpec, JobRequest
from hero_procd.store import Store
from hero_procd.store.jobs import AttemptEnd, GroupRoom
from hero_procd.store.postgres import split_dsn
from tests.pg import pg_schema

T = TypeVar("T")


async def _claimed(store: Store, n: int, retries: int = 2) -> list[tuple[int, str]]:
    """n running attempts (job id, token), each job with `retries` left."""
    out: list[tuple[int, str]] = []
    for i in range(n):
        spec = CommandSpec(command=["x"], retries=retries)
        job_id = await store.jobs.submit(JobRequest(spec=spec))
        (claimed,) = await store.jobs.claim(1, f"tok{i}", GroupRoom(set(), {}), 0.0)
        assert claimed.id == job_id
        out.append((job_id, claimed.token))
    return out


async def _while_held(
    dsn: str, held_sql: str, params: tuple[Any, ...], unit: Callable[[], Awaitable[T]]
) -> T:
    """Run `held_sql` on another connection without committing, start `unit`, wait until
    that other transaction blocks it (it must: both write the row), then commit; the
    unit's result."""
    plain, schema = split_dsn(dsn)
    other = await psycopg.AsyncConnection.connect(plain, options=f"-c search_path={schema}")
    watch = await psycopg.AsyncConnection.connect(plain, autocommit=True)
    try:
        await other.execute(held_sql, params)
        other_pid = other.info.backend_pid
        task = asyncio.ensure_future(unit())
        for _ in range(1000):
            cur = await watch.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE %s = ANY(pg_blocking_pids(pid))",
                (other_pid,),
            )
            row = await cur.fetchone()
            if row is not None and row[0] > 0:
                break
            assert not task.done(), "the unit did not wait for the other node's write"
            await asyncio.sleep(0.01)
        else:
            pytest.fail("the unit never waited for the other node's write")
        await other.commit()
        return await asyncio.wait_for(task, 30)
    finally:
        await other.close()
        await watch.close()


def test_pg_an_end_written_while_another_node_cancels_reads_the_cancel() -> None:
    """Node B records a cancel (its UPDATE in flight) while node A writes the failed end of
    the job's attempt with retries left (a batch of two ends): A's end is decided after B's
    intent is committed, so the job is not queued again (it keeps its real outcome, failed);
    the other end of the batch is written as usual."""

    async def main(dsn: str) -> tuple[list[str | None], list[tuple[str, bool]]]:
        store = await Store.open(dsn)
        try:
            (a, ta), (b, tb) = await _claimed(store, 2)
            fail = AttemptEnd("exited", exit_code=1)
            got = await _while_held(
                dsn,
                "UPDATE jobs SET cancel_requested = 1 WHERE id = %s AND status = 'running'",
                (a,),
                lambda: store.jobs.finish_many([(a, ta, fail), (b, tb, fail)]),
            )
            rows = [await store.jobs.get(j) for j in (a, b)]
            return [f.status if f else None for f in got], [
                (r.status, r.cancel_requested) for r in rows
            ]
        finally:
            await store.close()

    with pg_schema() as dsn:
        statuses, rows = asyncio.run(main(dsn))
    assert statuses == ["failed", "queued"], statuses
    assert rows == [("failed", True), ("queued", False)], rows


def test_pg_a_cancel_while_another_node_writes_the_end_is_not_lost() -> None:
    """Node A writes an attempt's end that queues the job again (its UPDATE in flight) while
    node B cancels it: B either cancels the queued job at once ('cancelled') or its intent
    is on the row it answered 'cancelling' for — never 'cancelling' with no intent kept."""

    async def main(dsn: str) -> tuple[str, str, bool]:
        store = await Store.open(dsn)
        try:
            ((a, ta),) = await _claimed(store, 1)
            outcome = await _while_held(
                dsn,
                "UPDATE jobs SET status = 'queued', error = 'exited with code 1'"
                " WHERE id = %s AND claim_token = %s AND status = 'running'",
                (a, ta),
                lambda: store.jobs.cancel(a),
            )
            row = await store.jobs.get(a)
            return outcome.result, row.status, row.cancel_requested
        finally:
            await store.close()

    with pg_schema() as dsn:
        result, status, intent = asyncio.run(main(dsn))
    assert (result, status, intent) == ("cancelled", "cancelled", True), (result, status, intent)


def test_pg_a_row_settled_by_another_node_mid_batch_leaves_the_others_written() -> None:
    """Another node (the dead-node sweep) queues one job of a batch again while this node
    writes the batch's ends: that end finds its claim gone (None, the sweep's outcome kept)
    and the other ends are written in the same unit — not a failed unit (an end read as
    running that no longer matched its guard) retried end by end."""

    async def main(dsn: str) -> tuple[list[str | None], list[tuple[str, int]]]:
        store = await Store.open(dsn)
        try:
            claimed = await _claimed(store, 3, retries=0)
            ok = AttemptEnd("exited", exit_code=0)
            (_, _), (b, tb), (_, _) = claimed
            got = await _while_held(
                dsn,
                "UPDATE jobs SET status = 'queued', claim_token = NULL, error = 'swept'"
                " WHERE id = %s AND claim_token = %s AND status = 'running'",
                (b, tb),
                lambda: store.jobs.finish_many([(j, t, ok) for j, t in claimed]),
            )
            rows = [await store.jobs.get(j) for j, _ in claimed]
            return [f.status if f else None for f in got], [(r.status, r.attempt) for r in rows]
        finally:
            await store.close()

    with pg_schema() as dsn:
        statuses, rows = asyncio.run(main(dsn))
    assert statuses == ["succeeded", None, "succeeded"], statuses
    assert rows == [("succeeded", 1), ("queued", 1), ("succeeded", 1)], rows
