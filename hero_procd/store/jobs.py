"""JobsApi: jobs, their tags and dependency edges — and the job state machine.

Every change of a job's status is one guarded statement (`WHERE id=? AND
status=?`, plus the claim token for an attempt) inside a unit that runs on
the writer thread from BEGIN to COMMIT (see pool.py). A unit may read the row
and decide in Python: nothing else writes between its read and its write.
`JOB_TRANSITIONS` (model.py) is checked by `check_transition` before any
status is written, so the table is the code's table.
"""

from __future__ import annotations

import builtins
import signal
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass, replace
from operator import attrgetter
from typing import Any

import orjson

from hero_procd.errors import InvalidParams, InvalidState, NotFound
from hero_procd.model import (
    ACTIVE_JOB_STATES,
    JOB_TRANSITIONS,
    TERMINAL_JOB_STATES,
    CommandSpec,
    JobRequest,
    JobStatus,
    now,
)
from hero_procd.offload import offload
from hero_procd.params import INT64_MAX
from hero_procd.store.actions import ActionsApi, actions_by_name
from hero_procd.store.notify import notify
from hero_procd.store.pool import Conn, DbPool, chunks, is_postgres
from hero_procd.store.queries import Q, with_marks
from hero_procd.store.records import Job, job_wire
from hero_procd.store.runs import insert_run, refresh_status

_SUPERSEDED = "superseded: a newer queued job holds its dedup_key"


def _signal_name(number: int | None) -> str:
    try:
        return signal.Signals(number).name if number is not None else "?"
    except ValueError:
        return str(number)


def _key_taken(conn: Conn, dedup_key: str, job_id: int) -> bool:
    return conn.execute(Q["job_dedup_taken"], (dedup_key, job_id)).fetchone() is not None


class IllegalTransition(AssertionError):
    """A write that JOB_TRANSITIONS does not allow: a bug, never a lost race."""


def check_transition(old: str, new: str) -> None:
    """Raise IllegalTransition unless the job state machine allows old → new."""
    if JobStatus(new) not in JOB_TRANSITIONS[JobStatus(old)]:
        raise IllegalTransition(f"job transition {old} -> {new} is not allowed")


@dataclass(frozen=True)
class TaggedSelection:
    """What `clean_by_tag` found for a tag: deletable ids, their runs, and active jobs skipped."""

    deletable: list[int]
    run_ids: list[int]
    active: int


def allocate_ids(conn: Conn, table: str, n: int) -> list[int]:
    """Reserve n ids of an AUTOINCREMENT table; only valid inside a write transaction."""
    if is_postgres(conn):
        # Other nodes take ids meanwhile: each is drawn from the table's sequence.
        return [int(r[0]) for r in conn.execute(Q["ids_allocate_pg"], (table, n)).fetchall()]
    row = conn.execute(Q["seq_get"], (table,)).fetchone()
    base = int(row[0]) if row is not None else 0
    return list(range(base + 1, base + n + 1))


def resolve(
    conn: Conn, requests: Sequence[JobRequest], field: str = "jobs"
) -> builtins.list[JobRequest]:
    """Fill each request's spec from its action (read in the same transaction)."""
    names = [r.action for r in requests if r.action is not None]
    if not names:
        return [_finalised(r) for r in requests]
    found = actions_by_name(conn, names)
    out: builtins.list[JobRequest] = []
    for i, req in enumerate(requests):
        if req.action is None:
            out.append(_finalised(req))
            continue
        action = found.get(req.action)
        if action is None:
            where = f"{field}[{i}].action" if field else "action"
            raise NotFound("action not found", {"field": where, "name": req.action})
        merged = req.spec.merged_over(action.spec)
        tags = list(dict.fromkeys([*action.tags, *req.tags]))
        node = req.node if req.node is not None else action.node
        out.append(_finalised(replace(req, spec=merged, tags=tags, node=node)))
    return out


# From this many rows, a PostgreSQL insert of jobs goes through COPY (same columns as job_insert).
_COPY_FROM = 200
_COPY_COLUMNS = (
    "id", "run_id", "key", "action", "spec", "tags", "status", "priority", "grp", "dedup_key",
    "attempt", "max_attempts", "not_before", "deps_pending", "created_at", "pin_node",
)  # fmt: skip


def _page_query(filters: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """The job_list* statement of a page and its params: oldest first after `after_id`,
    or with `newest_first` below `before_id`."""
    name = "job_list" if filters.get("tag") is None else "job_list_by_tag"
    params = {"status": None, "tag": None, "run_id": None, "limit": 100}
    params.update(filters)
    newest_first = params.pop("newest_first", False)
    before_id = params.pop("before_id", None)
    if newest_first:
        params.pop("after_id", None)
        params["before_id"] = INT64_MAX if before_id is None else before_id
        name += "_desc"
    else:
        params.setdefault("after_id", 0)
    return name, params


def insert_many(
    conn: Conn, requests: Sequence[JobRequest], run_id: int | None = None
) -> builtins.list[int]:
    """Insert resolved jobs (and their tags) in the current transaction; their new ids, in order."""
    if not requests:
        return []
    ids = allocate_ids(conn, "jobs", len(requests))
    ts = now()
    if is_postgres(conn) or run_id is not None or len(requests) < _STRETCH_MIN:
        # PostgreSQL has COPY; the jobs of a run have keys of their own (never two alike).
        _insert_rows(conn, _job_rows(ids, requests, run_id, ts))
    else:
        _insert_sqlite(conn, ids, requests, run_id, ts)
    notify(conn, "jobs")
    return ids


# The fields of a request stored in a job row, apart from its spec (see `_insert_sqlite`).
_row_fields = attrgetter(
    "tags", "priority", "group", "dedup_key", "key", "action", "node", "spec.retries", "depends_on"
)
# A stretch of at least this many consecutive jobs whose rows differ in id and spec only is
# inserted by one statement per _STRETCH_MAX jobs, reading their specs from a JSON array
# (SQLite); an array longer than SQLite's longest string (1 GB unless lowered: 10,000 specs
# of 100 KiB pass it) is written in halves (`_insert_stretch`).
_STRETCH_MIN = 16
_STRETCH_MAX = 10_000


def _insert_sqlite(
    conn: Conn, ids: Sequence[int], requests: Sequence[JobRequest], run_id: int | None, ts: float
) -> None:
    """Insert job rows on SQLite: the usual batch (jobs alike but for their spec) with a
    statement per stretch of alike jobs, the rest with one executemany.

    `job_insert_stretch` reads a stretch's specs from one JSON array with json_each (SQLite
    gives back the text of each object as orjson wrote it): the rows are made and written by
    SQLite in C, with the GIL released (sqlite3 lets it go while a statement runs), instead
    of binding 13 parameters a row, one row at a time, holding the GIL for each (3x slower
    for 50,000 jobs). The ids are consecutive (`allocate_ids`, in the writer's transaction):
    a job's id is its stretch's first id plus its position in the array.
    """
    specs = [r.spec.to_dict() for r in requests]
    bound = _longest_string(conn)
    # Python loops, not groupby/map consumed in C: those would hold the GIL (and the event
    # loop) for the whole batch at once.
    alike = [_row_fields(r) for r in requests]
    edges = [i for i in range(1, len(alike)) if alike[i] != alike[i - 1]]
    if len(edges) == len(alike) - 1:  # no two neighbours alike (say, each a dedup key)
        texts = [orjson.dumps(spec).decode() for spec in specs]
        _insert_rows(conn, _job_rows(ids, requests, run_id, ts, texts))
        return
    loose: builtins.list[int] = []
    for start, end in zip([0, *edges], [*edges, len(alike)], strict=True):
        if end - start < _STRETCH_MIN:
            loose.extend(range(start, end))
            continue
        for first in range(start, end, _STRETCH_MAX):
            last = min(first + _STRETCH_MAX, end)
            _insert_stretch(conn, alike[start], ids[first], specs[first:last], run_id, ts, bound)
    if loose:
        texts = [orjson.dumps(specs[i]).decode() for i in loose]
        picked = [requests[i] for i in loose]
        _insert_rows(conn, _job_rows([ids[i] for i in loose], picked, run_id, ts, texts))


def _longest_string(conn: Conn) -> int:
    """The most bytes a string may have on this SQLite connection (SQLITE_LIMIT_LENGTH)."""
    getlimit = getattr(conn, "getlimit", None)  # sqlite3 from Python 3.11
    return int(getlimit(sqlite3.SQLITE_LIMIT_LENGTH)) if getlimit else 1_000_000_000


def _insert_stretch(
    conn: Conn,
    shared: tuple[Any, ...],
    first_id: int,
    specs: builtins.list[dict[str, Any]],
    run_id: int | None,
    ts: float,
    bound: int,
) -> None:
    """Insert jobs `first_id`, `first_id + 1`, … with these specs and the `_row_fields` they
    share, and their tags, by one statement each (SQLite); in halves while the JSON array
    of the specs is longer than `bound` bytes (SQLite's longest string)."""
    text = orjson.dumps(specs)
    if len(text) > bound and len(specs) > 1:
        half = len(specs) // 2
        _insert_stretch(conn, shared, first_id, specs[:half], run_id, ts, bound)
        _insert_stretch(conn, shared, first_id + half, specs[half:], run_id, ts, bound)
        return
    tags, priority, group, dedup_key, key, action, node, retries, deps = shared
    params = {
        "first_id": first_id,
        "specs": text.decode(),  # text: SQLite would read a blob as JSONB
        "run_id": run_id,
        "key": key,
        "action": action,
        "tags": orjson.dumps(tags).decode() if tags else "[]",
        "priority": priority,
        "grp": group,
        "dedup_key": dedup_key,
        "max_attempts": (retries or 0) + 1,
        "deps_pending": len(set(deps)) if deps else 0,
        "created_at": ts,
        "pin_node": node,
    }
    cur = conn.execute(Q["job_insert_stretch"], params)
    assert cur.rowcount == len(specs), "every job row must be written"
    last_id = first_id + len(specs) - 1
    for tag in dict.fromkeys(tags):
        conn.execute(Q["job_tag_insert_range"], (tag, first_id, last_id))


def _job_rows(
    ids: Sequence[int],
    requests: Sequence[JobRequest],
    run_id: int | None,
    ts: float,
    specs: Sequence[str] | None = None,
) -> tuple[builtins.list[tuple[Any, ...]], builtins.list[tuple[str, int]]]:
    """The `job_insert` rows of these jobs and their `job_tag_insert` rows."""
    dumps = orjson.dumps
    rows: builtins.list[tuple[Any, ...]] = []
    tag_rows: builtins.list[tuple[str, int]] = []
    for pos, (job_id, req) in enumerate(zip(ids, requests, strict=True)):
        spec = req.spec
        tags = req.tags
        deps = req.depends_on
        rows.append(
            (
                job_id,
                run_id,
                req.key,
                req.action,
                dumps(spec.to_dict()).decode() if specs is None else specs[pos],
                dumps(tags).decode() if tags else "[]",
                req.priority,
                req.group,
                req.dedup_key,
                (spec.retries or 0) + 1,
                len(set(deps)) if deps else 0,
                ts,
                req.node,
            )
        )
        if tags:
            tag_rows.extend((tag, job_id) for tag in tags)
    return rows, tag_rows


def _insert_rows(
    conn: Conn, rows_and_tags: tuple[builtins.list[tuple[Any, ...]], builtins.list[tuple[str, int]]]
) -> None:
    """Write `_job_rows`: COPY on PostgreSQL from _COPY_FROM rows, else one executemany."""
    rows, tag_rows = rows_and_tags
    if is_postgres(conn) and len(rows) >= _COPY_FROM:
        # COPY: 50,000 rows in one stream instead of 50,000 pipelined statements.
        copy = getattr(conn, "copy_rows")  # noqa: B009 (the PostgreSQL connection's own)
        copy(
            "jobs",
            _COPY_COLUMNS,
            [(*r[:6], "queued", *r[6:9], 0, r[9], 0.0, *r[10:]) for r in rows],
        )
        if tag_rows:
            copy("job_tags", ("tag", "job_id"), sorted(set(tag_rows)))
    else:
        cur = conn.executemany(Q["job_insert"], rows)
        assert cur.rowcount == len(rows), "every job row must be written"
        if tag_rows:
            conn.executemany(Q["job_tag_insert"], tag_rows)


def insert_edges(conn: Conn, edges: Sequence[tuple[int, int]]) -> int:
    """Insert dependency edges (job_id, depends_on); the rows written."""
    if not edges:
        return 0
    return conn.executemany(Q["job_dep_insert"], edges).rowcount


def apply_outcomes(
    conn: Conn, finished: Sequence[tuple[int, str]], at: float
) -> builtins.list[tuple[int, int | None]]:
    """Release dependents of succeeded jobs and skip (transitively) those of failed ones.

    Returns the (id, run_id) of every job skipped.
    """
    succeeded = [(job_id,) for job_id, status in finished if status == JobStatus.SUCCEEDED]
    if succeeded:
        conn.executemany(Q["job_release_dependents"], succeeded)
    frontier = [
        job_id
        for job_id, status in finished
        if status in TERMINAL_JOB_STATES and status != JobStatus.SUCCEEDED
    ]
    skipped: builtins.list[tuple[int, int | None]] = []
    while frontier:
        nxt: builtins.list[int] = []
        for chunk in chunks(frontier, 998):
            sql = with_marks("job_skip_dependents", len(chunk))
            for row in conn.execute(sql, (at, *chunk)).fetchall():
                skipped.append((row[0], row[1]))
                nxt.append(row[0])
        frontier = nxt
    return skipped


@dataclass(frozen=True)
class Settled:
    """Jobs that reached a terminal state in one unit: the ids to wake and the runs touched."""

    done: builtins.list[int]
    runs: builtins.list[int]


def settle(conn: Conn, finished: Sequence[tuple[int, str, int | None]], at: float) -> Settled:
    """Dependents and run statuses after jobs (id, status, run_id) changed, in the same unit."""
    terminal = [(j, s) for j, s, _ in finished if s in TERMINAL_JOB_STATES]
    skipped = apply_outcomes(conn, terminal, at) if terminal else []
    runs = {r for _, _, r in finished if r is not None}
    runs.update(r for _, r in skipped if r is not None)
    if runs:
        refresh_status(conn, runs)
    done = [j for j, _ in terminal] + [j for j, _ in skipped]
    if done:
        notify(conn, "done", done)
    if any(s == JobStatus.QUEUED for _, s, _ in finished):
        notify(conn, "jobs")
    return Settled(done, sorted(runs))


# -- one attempt's end --------------------------------------------------------------


@dataclass(frozen=True)
class AttemptEnd:
    """How an attempt ended, as the process owner saw it.

    `how` is 'exited' (the process ended by itself, or could not start: `error`),
    'cancelled' / 'timed_out' / 'interrupted' (this daemon terminated it for that
    reason before it ended by itself). An attempt whose process ended by itself
    keeps its real outcome, whatever was asked meanwhile.
    """

    how: str
    exit_code: int | None = None
    signal: int | None = None
    error: str | None = None
    retry_delay_s: float = 0.0


@dataclass(frozen=True)
class Finished:
    """What an attempt's end wrote: the job's new status and who to wake."""

    status: str
    settled: Settled


def decide(end: AttemptEnd, row: sqlite3.Row, at: float) -> tuple[str, str | None, float, int]:
    """(status, error, not_before, attempt delta) of an attempt's end — the precedence rules."""
    cancel = bool(row["cancel_requested"])
    retries_left = row["attempt"] < row["max_attempts"]
    if end.how == "interrupted":
        if end.exit_code == 0 and end.error is None:
            # It ended with success (it ignored or handled the stop's SIGTERM): a job that
            # succeeded never runs again.
            return JobStatus.SUCCEEDED, None, 0.0, 0
        if cancel:
            return JobStatus.CANCELLED, "cancelled", 0.0, 0
        # Terminated by a graceful stop of the daemon: the attempt does not count.
        return JobStatus.QUEUED, "interrupted by daemon shutdown", 0.0, -1
    if end.how == "cancelled":
        return JobStatus.CANCELLED, end.error or "cancelled", 0.0, 0
    error: str
    if end.how == "timed_out":
        status, error = JobStatus.TIMED_OUT, end.error or "timed out"
    elif end.error is None and end.exit_code == 0:
        return JobStatus.SUCCEEDED, None, 0.0, 0
    else:
        status = JobStatus.FAILED
        if end.error is not None:
            error = end.error
        else:
            error = (
                f"exited with code {end.exit_code}"
                if end.exit_code is not None
                else f"killed by signal {_signal_name(end.signal)}"
            )
    if retries_left and not cancel:
        return JobStatus.QUEUED, error, at + end.retry_delay_s, 0
    return status, error, 0.0, 0


def _finish_params(
    job_id: int,
    token: str,
    end: AttemptEnd,
    status: str,
    error: str | None,
    at: float,
    not_before: float,
    delta: int,
) -> dict[str, Any]:
    """The parameters of `job_finish` for one attempt's end."""
    return {
        "status": str(status),
        "error": error,
        "exit_code": end.exit_code,
        "signal": end.signal,
        "finished_at": at,
        "not_before": not_before,
        "attempt_delta": delta,
        "id": job_id,
        "token": token,
    }


def finish_attempt(conn: Conn, job_id: int, token: str, end: AttemptEnd) -> Finished | None:
    """End an attempt (a unit): None if this claim no longer owns a running job."""
    row = conn.execute(Q["job_end_state"], (job_id,)).fetchone()
    if row is None or row["status"] != JobStatus.RUNNING or row["claim_token"] != token:
        return None
    at = now()
    status, error, not_before, delta = decide(end, row, at)
    if status == JobStatus.QUEUED and row["dedup_key"] is not None:
        taken = conn.execute(Q["job_dedup_taken"], (row["dedup_key"], job_id)).fetchone()
        if taken is not None:
            status, error = JobStatus.CANCELLED, _SUPERSEDED
    check_transition(JobStatus.RUNNING, status)
    cur = conn.execute(
        Q["job_finish"], _finish_params(job_id, token, end, status, error, at, not_before, delta)
    )
    assert cur.rowcount == 1
    return Finished(str(status), settle(conn, [(job_id, str(status), row["run_id"])], at))


def set_pids(conn: Conn, pids: Sequence[tuple[int, str, int, float | None]]) -> None:
    """Record the processes of claimed attempts, (job id, token, pid, start time) each,
    where the claim still owns a running job."""
    params = [(pid, start, job_id, token) for job_id, token, pid, start in pids]
    conn.executemany(Q["job_set_pid"], params)


def finish_many(
    conn: Conn,
    ends: Sequence[tuple[int, str, AttemptEnd]],
    pids: Sequence[tuple[int, str, int, float | None]] = (),
) -> builtins.list[Finished | None]:
    """End several attempts (job id, token, end) in one unit: `finish_attempt` of each, in
    order, with one read of their rows, one executemany and one settle. Each end's result
    as `finish_attempt` gives it (None if its claim no longer owns a running job); the
    `settled` of each is the whole unit's (its ids are the jobs of the whole batch).
    `pids` are recorded first (`set_pids`), in the same unit."""
    if pids:
        set_pids(conn, pids)
    rows: dict[int, Any] = {}
    ids = [job_id for job_id, _, _ in ends]
    for chunk in chunks(ids):
        for row in conn.execute(with_marks("job_end_states", len(chunk)), chunk).fetchall():
            rows[row["id"]] = row
    at = now()
    params: builtins.list[dict[str, Any]] = []
    statuses: builtins.list[str | None] = []
    finished: builtins.list[tuple[int, str, int | None]] = []
    requeued_keys: set[str] = set()  # dedup keys queued by an earlier end of this batch
    for job_id, token, end in ends:
        row = rows.get(job_id)
        if row is None or row["status"] != JobStatus.RUNNING or row["claim_token"] != token:
            statuses.append(None)
            continue
        # An end is written once: a second end of the same claim in the batch finds the
        # row no longer running (as it would after the first's commit).
        rows[job_id] = None
        status, error, not_before, delta = decide(end, row, at)
        key = row["dedup_key"]
        if status == JobStatus.QUEUED and key is not None:
            if key in requeued_keys or _key_taken(conn, key, job_id):
                status, error = JobStatus.CANCELLED, _SUPERSEDED
            else:
                requeued_keys.add(key)
        check_transition(JobStatus.RUNNING, status)
        params.append(_finish_params(job_id, token, end, status, error, at, not_before, delta))
        statuses.append(str(status))
        finished.append((job_id, str(status), row["run_id"]))
    if not params:
        return [None] * len(ends)
    cur = conn.executemany(Q["job_finish"], params)
    assert cur.rowcount == len(params), "every end read as running must be written"
    settled = settle(conn, finished, at)
    return [None if s is None else Finished(s, settled) for s in statuses]


@dataclass(frozen=True)
class CancelOutcome:
    """What `job.cancel` did: 'cancelled' at once, or 'cancelling' (a process to stop)."""

    result: str
    settled: Settled


def request_cancel(conn: Conn, job_id: int, reason: str = "cancelled") -> CancelOutcome:
    """Cancel a job (a unit): a queued one now, a running one by a persisted intent."""
    row = conn.execute(Q["job_end_state"], (job_id,)).fetchone()
    if row is None:
        raise NotFound("job not found", {"id": job_id})
    at = now()
    if row["status"] == JobStatus.QUEUED:
        check_transition(JobStatus.QUEUED, JobStatus.CANCELLED)
        conn.execute(Q["job_cancel_queued"], (at, reason, job_id)).fetchall()
        settled = settle(conn, [(job_id, JobStatus.CANCELLED, row["run_id"])], at)
        return CancelOutcome("cancelled", settled)
    if row["status"] == JobStatus.RUNNING:
        conn.execute(Q["job_request_cancel"], (job_id,))
        notify(conn, "cancel", [job_id])
        return CancelOutcome("cancelling", Settled([], []))
    raise InvalidState("job has already finished", {"id": job_id, "status": row["status"]})


def transition(conn: Conn, job_id: int, old: str, new: str, error: str | None = None) -> bool:
    """The generic guarded step old → new; False if the job was not in `old` (a lost race)."""
    check_transition(old, new)
    params = {
        "to_status": new,
        "from_status": old,
        "id": job_id,
        "error": error,
        "finished_at": now() if new in TERMINAL_JOB_STATES else None,
    }
    return conn.execute(Q["job_transition"], params).rowcount == 1


# -- claims -------------------------------------------------------------------------


@dataclass(frozen=True)
class ClaimedJob:
    """A job this executor now owns for one attempt."""

    id: int
    run_id: int | None
    spec: CommandSpec
    group: str | None
    attempt: int
    max_attempts: int
    token: str
    last_seq: int = 0  # the job's log sequence so far: this attempt's lines continue after it


@dataclass
class GroupRoom:
    """Free slots per concurrency group at the time of a claim."""

    full: set[str]
    room: dict[str, int]


def claim(
    conn: Conn, n: int, token: str, groups: GroupRoom, at: float, node: str = "local"
) -> list[ClaimedJob]:
    """Claim up to n ready jobs (priority, then age) within group limits, for `node` (a unit).

    On PostgreSQL other nodes claim too: rows being claimed are skipped (SKIP LOCKED), and
    when groups have limits the claims take turns and count every node's running attempts.
    """
    if is_postgres(conn) and conn.execute(Q["group_any"]).fetchone()[0]:
        # Limits are cluster-wide (another node may have set one this node has not seen).
        conn.execute(Q["claim_lock_pg"]).fetchall()
        room_now = {r[0]: int(r[1]) for r in conn.execute(Q["group_room"]).fetchall()}
        groups = GroupRoom(full={g for g, r in room_now.items() if r <= 0}, room=room_now)
    full = sorted(groups.full)
    scan = n * 2 + 16
    if full:
        sql = with_marks("job_claim_candidates_excluding", len(full))
        params: tuple[Any, ...] = (at, node, *full, scan)
    else:
        sql = Q["job_claim_candidates"]
        params = (at, node, scan)
    candidates = conn.execute(sql, params).fetchall()
    room = dict(groups.room)
    chosen: list[int] = []
    for job_id, grp in candidates:
        if grp is not None and grp in room:
            if room[grp] <= 0:
                continue
            room[grp] -= 1
        chosen.append(job_id)
        if len(chosen) == n:
            break
    if not chosen:
        return []
    rows = conn.execute(with_marks("job_claim", len(chosen)), (token, node, at, *chosen)).fetchall()
    # Jobs of one batch mostly share their spec's text: each text is decoded once, and its
    # jobs share the (never changed) CommandSpec.
    specs: dict[str, CommandSpec] = {}

    def spec_of(text: str) -> CommandSpec:
        spec = specs.get(text)
        if spec is None:
            # Defaults are filled in when the job runs, not stored in every row.
            spec = specs[text] = CommandSpec.from_dict(orjson.loads(text)).with_defaults()
        return spec

    out = [
        ClaimedJob(
            id=r["id"],
            run_id=r["run_id"],
            spec=spec_of(r["spec"]),
            group=r["grp"],
            attempt=r["attempt"],
            max_attempts=r["max_attempts"],
            token=r["claim_token"],
            last_seq=r["last_seq"] or 0,
        )
        for r in rows
    ]
    order = {job_id: i for i, job_id in enumerate(chosen)}
    out.sort(key=lambda c: order[c.id])
    runs = {c.run_id for c in out if c.run_id is not None}
    if runs:
        refresh_status(conn, runs)
    return out


def recover(
    conn: Conn, rows: Sequence[sqlite3.Row], cause: str = "the daemon stopped"
) -> tuple[Settled, int]:
    """Settle jobs a previous daemon (or a dead node) left running (a unit); (settled, lost)."""
    at = now()
    finished: list[tuple[int, str, int | None]] = []
    lost = 0
    for r in rows:
        state = conn.execute(Q["job_end_state"], (r["id"],)).fetchone()
        if state is None or state["status"] != JobStatus.RUNNING:
            continue
        if state["cancel_requested"]:
            status, error, delta = JobStatus.CANCELLED, f"cancelled ({cause})", 0
        elif state["attempt"] < state["max_attempts"]:
            status, error, delta = JobStatus.QUEUED, f"lost when {cause}; retrying", 0
        else:
            status, error, delta = JobStatus.LOST, f"lost when {cause}", 0
        key = state["dedup_key"]
        if status == JobStatus.QUEUED and key is not None and _key_taken(conn, key, r["id"]):
            status, error = JobStatus.CANCELLED, _SUPERSEDED
        check_transition(JobStatus.RUNNING, status)
        conn.execute(
            Q["job_recover"],
            {
                "status": str(status),
                "error": error,
                "finished_at": at,
                "not_before": 0.0,
                "attempt_delta": delta,
                "id": r["id"],
            },
        )
        if status == JobStatus.LOST:
            lost += 1
        finished.append((r["id"], str(status), state["run_id"]))
    return settle(conn, finished, at), lost


def supersede(conn: Conn, old_ids: Sequence[int], reason: str) -> Settled:
    """Cancel queued jobs replaced by newer ones (a dedup `replace`), through the cancel path."""
    at = now()
    finished: list[tuple[int, str, int | None]] = []
    for old in old_ids:
        check_transition(JobStatus.QUEUED, JobStatus.CANCELLED)
        for row in conn.execute(Q["job_supersede"], (at, reason, old)).fetchall():
            finished.append((row[0], JobStatus.CANCELLED, row[1]))
    return settle(conn, finished, at)


def job_statuses(conn: Conn, ids: Sequence[int]) -> dict[int, str]:
    """The current status of some jobs, read on `conn`."""
    out: dict[int, str] = {}
    for chunk in chunks(ids):
        for row in conn.execute(with_marks("job_status_of", len(chunk)), chunk).fetchall():
            out[row["id"]] = row["status"]
    return out


def delete_many(conn: Conn, ids: Sequence[int]) -> int:
    """Delete jobs by id, one statement per chunk of at most 999 (in a unit); rows deleted."""
    deleted = 0
    for chunk in chunks(ids):
        n = len(chunk)
        for name in ("job_tag_delete_ids", "job_dep_delete_ids", "job_dep_delete_targets"):
            conn.execute(with_marks(name, n), chunk)
        deleted += conn.execute(with_marks("job_delete_ids", n), chunk).rowcount
    return deleted


def select_tagged(conn: Conn, tag: str) -> TaggedSelection:
    """Split the jobs with `tag` into deletable ones and active ones."""
    deletable: list[int] = []
    runs: set[int] = set()
    active = 0
    for job_id, run_id, status in conn.execute(Q["job_tagged_for_clean"], (tag,)).fetchall():
        if status in ACTIVE_JOB_STATES:
            active += 1
            continue
        deletable.append(job_id)
        if run_id is not None:
            runs.add(run_id)
    return TaggedSelection(deletable, sorted(runs), active)


def write_run(
    conn: Conn, name: str | None, tags: list[str], jobs: list[JobRequest]
) -> tuple[int, dict[str, int]]:
    """Write a run, its jobs and edges inside a unit (graph already checked)."""
    resolved = resolve(conn, jobs)
    run_id = insert_run(conn, name, tags)
    ids = insert_many(conn, resolved, run_id)
    by_key = {job.key: job_id for job, job_id in zip(jobs, ids, strict=True) if job.key}
    edges = [(by_key[j.key], by_key[d]) for j in jobs if j.key for d in j.depends_on]
    insert_edges(conn, edges)
    return run_id, by_key


def _finalised(req: JobRequest) -> JobRequest:
    if req.spec.command is None and req.spec.script is None:
        raise InvalidParams("command", "one of command or script is required")
    return req


class JobsApi:
    """The engine's and the RPC's door to jobs: reads on readers, writes as units."""

    def __init__(self, pool: DbPool, actions: ActionsApi, node: str = "local") -> None:
        self.pool = pool
        self.actions = actions
        self.node = node

    async def submit(self, request: JobRequest) -> int:
        """Queue one job (group-committed with concurrent submits); its id."""

        def unit(conn: Conn) -> int:
            (job_id,) = insert_many(conn, resolve(conn, [request], field=""))
            return job_id

        return await self.pool.write(unit)

    async def claim(
        self, n: int, token: str, groups: GroupRoom, at: float | None = None
    ) -> list[ClaimedJob]:
        """Claim up to n ready jobs, as of `at` (default: when the unit runs, so a job
        committed just before in the same group is never started before it was created)."""
        return await self.pool.write(
            lambda conn: claim(conn, n, token, groups, now() if at is None else at, self.node)
        )

    async def set_pid(self, job_id: int, token: str, pid: int, start_time: float | None) -> bool:
        """Record the process of a claimed attempt; False if the claim no longer holds."""
        params = (pid, start_time, job_id, token)
        return await self.pool.write(lambda c: c.execute(Q["job_set_pid"], params).rowcount == 1)

    async def set_pids(self, pids: Sequence[tuple[int, str, int, float | None]]) -> None:
        """`set_pid` of several attempts, (job id, token, pid, start time) each, in one unit."""
        await self.pool.write(lambda c: set_pids(c, pids))

    async def finish(self, job_id: int, token: str, end: AttemptEnd) -> Finished | None:
        """End an attempt; None if another outcome won."""
        return await self.pool.write(lambda c: finish_attempt(c, job_id, token, end))

    async def finish_many(
        self,
        ends: Sequence[tuple[int, str, AttemptEnd]],
        pids: Sequence[tuple[int, str, int, float | None]] = (),
    ) -> builtins.list[Finished | None]:
        """End several attempts (job id, token, end) as one unit, each as `finish` would;
        `pids` (see `set_pids`) recorded first in that unit."""
        return await self.pool.write(lambda c: finish_many(c, ends, pids))

    async def cancel(self, job_id: int) -> CancelOutcome:
        """Cancel a job: committed before this returns."""
        return await self.pool.write(lambda c: request_cancel(c, job_id))

    async def cancel_run(self, run_id: int) -> tuple[Settled, list[int]]:
        """Cancel a run's queued jobs now and record the intent on its running ones."""

        def unit(conn: Conn) -> tuple[Settled, list[int]]:
            at = now()
            rows = conn.execute(
                Q["job_cancel_queued_of_run"], (at, "run cancelled", run_id)
            ).fetchall()
            running = [r[0] for r in conn.execute(Q["job_running_ids_of_run"], (run_id,))]
            for job_id in running:
                conn.execute(Q["job_request_cancel"], (job_id,))
            if running:
                notify(conn, "cancel", running)
            finished = [(r[0], str(JobStatus.CANCELLED), r[1]) for r in rows]
            settled = settle(conn, finished, at)
            if not finished:
                refresh_status(conn, [run_id])
            return settled, running

        return await self.pool.write(unit)

    async def recover(self, rows: Sequence[sqlite3.Row]) -> tuple[Settled, int]:
        """Settle jobs a previous daemon left running."""
        return await self.pool.write(lambda c: recover(c, rows))

    async def running_rows(self, mine: bool = False) -> list[sqlite3.Row]:
        """Jobs the database says are running (`mine`: those of this node, or of no node)."""
        if mine:
            return await self.pool.fetch_all(Q["job_running_mine"], (self.node,))
        return await self.pool.fetch_all(Q["job_running_all"])

    async def cancel_requested_mine(self) -> list[int]:
        """This node's running attempts whose cancel was asked (through any node)."""
        rows = await self.pool.fetch_all(Q["job_cancel_requested_of_node"], (self.node,))
        return [int(r[0]) for r in rows]

    async def next_ready_at(self, at: float) -> float | None:
        """When the earliest job in backoff becomes ready, if any."""
        row = await self.pool.fetch_one(Q["job_next_ready_at"], (at,))
        return None if row is None or row[0] is None else float(row[0])

    async def get(self, job_id: int) -> Job:
        """The job `job_id`, or NotFound."""
        row = await self.pool.fetch_one(Q["job_get"], (job_id,))
        if row is None:
            raise NotFound("job not found", {"id": job_id})
        return Job.from_row(row)

    async def depends_on(self, job_id: int) -> list[int]:
        """The ids a job waits for."""
        rows = await self.pool.fetch_all(Q["job_deps_of"], (job_id,))
        return [r[0] for r in rows]

    async def list(
        self,
        *,
        status: str | None = None,
        tag: str | None = None,
        run_id: int | None = None,
        limit: int = 100,
        after_id: int = 0,
    ) -> list[Job]:
        """A page of jobs in id order."""
        params = {
            "status": status,
            "tag": tag,
            "run_id": run_id,
            "limit": limit,
            "after_id": after_id,
        }
        sql = Q["job_list"] if tag is None else Q["job_list_by_tag"]
        rows = await self.pool.fetch_all(sql, params)
        if len(rows) > 500:  # decoding thousands of specs: off the event loop
            return await offload(lambda: [Job.from_row(r) for r in rows])
        return [Job.from_row(r) for r in rows]

    async def list_wire(self, **filters: Any) -> builtins.list[dict[str, Any]]:
        """A page of jobs as the RPC shows them (built off the event loop when large)."""
        rows = await self._list_rows(filters)
        if len(rows) > 500:
            return await offload(lambda: [job_wire(r) for r in rows])
        return [job_wire(r) for r in rows]

    async def list_json(self, **filters: Any) -> tuple[bytes, int, int | None]:
        """A page of jobs serialised as a JSON array; (json, count, last id).

        SQLite builds the whole page (job_page_of) in one step with the GIL
        released: Python gets one string, not 10,000 rows or dicts to build and
        serialise while the event loop waits for the GIL.
        """
        if self.pool.backend != "sqlite":
            # PostgreSQL: the rows, built into the page off the event loop.
            rows = await self._list_rows(filters)

            def build() -> bytes:
                return orjson.dumps([job_wire(r) for r in rows])

            blob = await offload(build) if len(rows) > 500 else build()
            # The page's last row: the highest id, or the lowest one when newest first.
            return blob, len(rows), int(rows[-1]["id"]) if rows else None
        name, params = _page_query(filters)
        row = await self.pool.fetch_one(Q["job_page_of"].replace("{rows}", Q[name]), params)
        assert row is not None  # an aggregate always gives one row
        last_id = row["low_id"] if name.endswith("_desc") else row["high_id"]
        return str(row["page"]).encode(), int(row["n"]), int(last_id) if last_id else None

    async def _list_rows(self, filters: dict[str, Any]) -> builtins.list[sqlite3.Row]:
        """Rows of a page: oldest first after `after_id`, or with `newest_first` below
        `before_id`."""
        name, params = _page_query(filters)
        return await self.pool.fetch_all(Q[name], params)

    async def statuses(self, ids: Sequence[int]) -> dict[int, str]:
        """The status of each of `ids` that exists, read in chunks on one connection."""
        out: dict[int, str] = {}
        async with self.pool.reader() as conn:
            for chunk in chunks(ids):
                async with conn.execute(with_marks("job_statuses", len(chunk)), chunk) as cur:
                    out.update((int(r[0]), str(r[1])) for r in await cur.fetchall())
        return out

    async def delete_many(self, ids: Sequence[int]) -> int:
        """Delete jobs by id in one transaction; the rows deleted."""
        return await self.pool.write(lambda c: delete_many(c, ids))
