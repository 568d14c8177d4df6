"""job.*: one-shot commands."""

from __future__ import annotations

from collections import Counter
from typing import Any

import orjson

from hero_procd import gcpause
from hero_procd.app import App
from hero_procd.errors import HeroError, InvalidParams
from hero_procd.model import (
    TERMINAL_JOB_STATES,
    JobRequest,
    JobStatus,
    bare_job_request,
    bare_job_requests,
    job_request_from,
    parse_job_request,
)
from hero_procd.offload import discard, offload
from hero_procd.params import INT64_MAX, Params
from hero_procd.rpc.registry import rpc
from hero_procd.store import MAX_BATCH_ITEMS, BatchResult
from hero_procd.store.logs import to_wire

MAX_PAGE = 10_000
# Above this many items, building or checking them runs on a thread, not the event loop.
_OFF_LOOP_ITEMS = 500


@rpc("job.submit")
async def job_submit(app: App, p: Params) -> dict[str, Any]:
    """Queue one job: an action, a command (argv) or a script with an interpreter."""
    request = parse_job_request(p)
    app.check_limits(request.spec.limits())
    job_id = await app.store.jobs.submit(request)
    app.wake_jobs()
    return {"id": job_id, "status": JobStatus.QUEUED.value}


@rpc("job.get")
async def job_get(app: App, p: Params) -> dict[str, Any]:
    """One job by id, with the ids it depends on."""
    job_id = p.req_integer("id", minimum=1)
    p.finish()
    job = (await app.store.jobs.get(job_id)).to_dict()
    job["depends_on"] = await app.store.jobs.depends_on(job_id)
    return job


@rpc("job.list")
async def job_list(app: App, p: Params) -> dict[str, Any]:
    """A page of jobs in id order; pass `next_after_id` back as `after_id` for the next page.

    `order: "desc"` gives the newest first; its next page is `before_id: next_before_id`.
    """
    status = p.choice("status", tuple(s.value for s in JobStatus))
    tag = p.text("tag")
    run_id = p.integer("run_id", minimum=1)
    limit = p.integer("limit", default=100, minimum=1, maximum=MAX_PAGE) or 100
    order, after_id, before_id = page_order(p)
    p.finish()
    # Built and serialised off the loop in one go, handed to the answer as it is.
    # A big page lives and dies with the collector paused (gcpause).
    with gcpause.paused(limit > _OFF_LOOP_ITEMS):
        blob, count, last_id = await app.store.jobs.list_json(
            status=status,
            tag=tag,
            run_id=run_id,
            limit=limit,
            after_id=after_id,
            before_id=before_id,
            newest_first=order == "desc",
        )
    return {"jobs": orjson.Fragment(blob), **next_page(order, last_id if count == limit else None)}


def page_order(p: Params) -> tuple[str, int, int]:
    """(order, after_id, before_id) of a list call: `after_id` pages up, `before_id` down."""
    order = p.choice("order", ("asc", "desc"), default="asc") or "asc"
    after_id = p.integer("after_id", minimum=0)
    before_id = p.integer("before_id", minimum=1)
    if order == "asc" and before_id is not None:
        raise InvalidParams("before_id", 'goes with order "desc" (use after_id)')
    if order == "desc" and after_id is not None:
        raise InvalidParams("after_id", 'goes with order "asc" (use before_id)')
    return order, after_id or 0, before_id if before_id is not None else INT64_MAX


def next_page(order: str, last_id: int | None) -> dict[str, int | None]:
    """Where the next page starts: `next_after_id` (and `next_before_id` when newest first)."""
    if order == "desc":
        return {"next_after_id": None, "next_before_id": last_id}
    return {"next_after_id": last_id}


@rpc("job.clean_by_tag")
async def job_clean_by_tag(app: App, p: Params) -> dict[str, Any]:
    """Delete the tag's finished jobs, their logs and emptied runs; active jobs are skipped."""
    tag = p.req_text("tag")
    p.finish()
    result = await app.store.clean_by_tag(tag)
    return {
        "deleted": {"jobs": result.jobs, "runs": result.runs, "logs": result.logs},
        "skipped_active": result.skipped_active,
    }


@rpc("job.submit_batch")
async def job_submit_batch(app: App, p: Params) -> dict[str, Any]:
    """Queue many jobs at once; invalid items are reported in `failed`, the others go on."""
    items = p.obj_list("jobs", required=True, non_empty=True)
    defaults = p.obj("defaults")
    on_duplicate = p.choice("on_duplicate", ("skip", "replace"), default="skip") or "skip"
    p.finish()
    base: dict[str, Any] = {}
    if defaults is not None:
        raw = p.raw("defaults")
        # Checks the defaults (and their limits, against the controllers usable here).
        app.check_limits(job_request_from(raw, "defaults", partial=True).spec.limits(), "defaults")
        base = dict(raw)
    if len(items) > MAX_BATCH_ITEMS:
        raise InvalidParams("jobs", f"at most {MAX_BATCH_ITEMS} items per batch")
    result = BatchResult()
    if len(items) > _OFF_LOOP_ITEMS:
        # Validating 50,000 items takes a while: off the loop, so other calls go on.
        requests = await offload(lambda: _parse_items(items, base, result, app))
    else:
        requests = _parse_items(items, base, result, app)
    if requests:
        await app.store.submit_batch(requests, on_duplicate, result)
        if result.settled is not None and app.executor is not None:
            app.executor.notify(result.settled.done)  # waiters of the replaced jobs
        app.wake_jobs()
    if len(items) > _OFF_LOOP_ITEMS:
        # Freed on the offload thread in slices, while the answer goes out, rather than
        # on the loop in one go when this call returns (tens of ms for 50,000 jobs).
        discard(requests, items)
    return {
        "submitted": result.submitted,
        "deduplicated": result.deduplicated,
        "superseded": [list(pair) for pair in result.superseded],
        "failed": [[i, err] for i, err in sorted(result.failed, key=lambda f: f[0])],
    }


@rpc("job.cancel")
async def job_cancel(app: App, p: Params) -> dict[str, Any]:
    """Cancel a job: a queued one at once, a running one by SIGTERM then SIGKILL to its group."""
    job_id = p.req_integer("id", minimum=1)
    p.finish()
    outcome = await app.jobs.cancel(job_id)
    return {"id": job_id, "result": outcome}


@rpc("job.wait")
async def job_wait(app: App, p: Params) -> dict[str, Any]:
    """The job once it has finished, or as it is when `timeout_s` (default 30) has passed."""
    job_id = p.req_integer("id", minimum=1)
    timeout_s = p.number("timeout_s", default=30.0, minimum=0) or 0.0
    p.finish()
    with gcpause.lifted():  # a wait of up to an hour: not with the collector paused
        job = await app.jobs.wait(job_id, min(timeout_s, 3600.0))
    out = job.to_dict()
    out["done"] = job.status in TERMINAL_JOB_STATES
    return out


@rpc("job.wait_all")
async def job_wait_all(app: App, p: Params) -> dict[str, Any]:
    """Until each job has ended (or `timeout_s`, default 30, passed): counts by status."""
    ids = _id_list(p, "ids")
    timeout_s = p.number("timeout_s", default=30.0, minimum=0) or 0.0
    p.finish()
    unique = list(dict.fromkeys(ids))
    with gcpause.lifted():
        statuses = await app.jobs.wait_jobs(unique, min(timeout_s, 3600.0))
    counts = Counter(statuses.values())  # C-speed: 100,000 ids hold the loop ~3 ms
    ended = sum(n for status, n in counts.items() if status in TERMINAL_JOB_STATES)
    missing = len(unique) - len(statuses)
    return {
        "total": len(unique),
        "ended": ended,
        "missing": missing,
        "counts": dict(counts),
        "done": ended + missing == len(unique),
    }


def _id_list(p: Params, name: str) -> list[int]:
    """A required, non-empty list of job ids (at most MAX_BATCH_ITEMS)."""
    value = p.raw(name)
    if value is None:
        raise InvalidParams(name, "is required")
    if not isinstance(value, list):
        raise InvalidParams(name, "must be a list of ids")
    if not value:
        raise InvalidParams(name, "must not be empty")
    if len(value) > MAX_BATCH_ITEMS:
        raise InvalidParams(name, f"at most {MAX_BATCH_ITEMS} ids")
    for i, item in enumerate(value):
        if isinstance(item, bool) or not isinstance(item, int) or not 1 <= item <= INT64_MAX:
            raise InvalidParams(f"{name}[{i}]", f"must be an integer from 1 to {INT64_MAX}")
    return value


@rpc("job.logs")
async def job_logs(app: App, p: Params) -> dict[str, Any]:
    """A page of a job's output after `after_seq`; `done` once it ended and all is read."""
    job_id = p.req_integer("id", minimum=1)
    after_seq = p.integer("after_seq", default=0, minimum=0) or 0
    limit = p.integer("limit", default=1000, minimum=1, maximum=MAX_PAGE) or 1000
    since = p.number("since", minimum=0)
    tail = p.integer("tail", minimum=0)
    p.finish()
    job = await app.store.jobs.get(job_id)  # status first: a finished job's lines are all written
    lines, next_seq = await app.store.logs.page(
        "job", str(job_id), after_seq, limit, since=since, tail=tail
    )
    return {
        "lines": to_wire(lines),
        "next_seq": next_seq,
        "done": job.status in TERMINAL_JOB_STATES and len(lines) < limit,
        "status": job.status,
    }


def _parse_items(
    items: list[Any], base: dict[str, Any], result: BatchResult, app: App
) -> list[tuple[int, JobRequest]]:
    """Each item as a request (over the defaults); invalid ones go to `result.failed`."""
    if not base:
        all_bare = bare_job_requests(items)
        if all_bare is not None:  # the usual big batch: bare commands, no limits to check
            return [(i, request) for i, request in enumerate(all_bare)]  # not one C loop
    requests: list[tuple[int, JobRequest]] = []
    for i, item in enumerate(items):
        if not base:
            bare = bare_job_request(item)
            if bare is not None:  # a bare command has no limits to check
                requests.append((i, bare))
                continue
        try:
            merged = _with_defaults(base, item) if base and isinstance(item, dict) else item
            request = job_request_from(merged, f"jobs[{i}]")
            app.check_limits(request.spec.limits(), f"jobs[{i}]")
            requests.append((i, request))
        except HeroError as exc:
            result.failed.append((i, {"code": exc.code, "message": str(exc)}))
    return requests


def _with_defaults(base: dict[str, Any], item: dict[str, Any]) -> dict[str, Any]:
    """An item over the batch defaults: its fields win; env maps merge key by key, tags add up."""
    merged = {**base, **item}
    for key in ("env", "env_from_secrets"):
        if isinstance(base.get(key), dict) and isinstance(item.get(key), dict):
            merged[key] = {**base[key], **item[key]}
    if isinstance(base.get("tags"), list) and isinstance(item.get("tags"), list):
        merged["tags"] = list(dict.fromkeys([*base["tags"], *item["tags"]]))
    return merged
