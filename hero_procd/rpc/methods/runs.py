"""run.*: groups of jobs submitted in one transaction."""

from __future__ import annotations

from collections import Counter
from typing import Any

from hero_procd import gcpause
from hero_procd.app import App
from hero_procd.model import TERMINAL_JOB_STATES, RunStatus, job_request_from
from hero_procd.params import Params
from hero_procd.rpc.methods.jobs import next_page, page_order
from hero_procd.rpc.registry import rpc

MAX_PAGE = 10_000


@rpc("run.submit")
async def run_submit(app: App, p: Params) -> dict[str, Any]:
    """Create a run and all its jobs atomically; any invalid job rejects the whole run."""
    name = p.text("name")
    tags = p.text_list("tags") or []
    items = p.obj_list("jobs", required=True, non_empty=True)
    p.finish()
    jobs = [job_request_from(item, f"jobs[{i}]", in_run=True) for i, item in enumerate(items)]
    for i, job in enumerate(jobs):
        app.check_limits(job.spec.limits(), f"jobs[{i}]")
    run_id, by_key = await app.store.submit_run(name, tags, jobs)
    app.wake_jobs()
    return {"id": run_id, "jobs": by_key}


@rpc("run.get")
async def run_get(app: App, p: Params) -> dict[str, Any]:
    """One run with its jobs (each with the keys it depends on) and counts by status."""
    run_id = p.req_integer("id", minimum=1)
    p.finish()
    return await run_detail(app, run_id)


async def run_detail(app: App, run_id: int) -> dict[str, Any]:
    """A run with its jobs (each with the keys it depends on) and counts by status."""
    run, jobs, edges = await app.store.runs.get(run_id)
    key_of = {j.id: j.key for j in jobs}
    deps: dict[int, list[str | None]] = {}
    for job_id, dep in edges:
        deps.setdefault(job_id, []).append(key_of.get(dep))
    out_jobs = []
    for job in jobs:
        d = job.to_dict()
        d["depends_on"] = sorted(k for k in deps.get(job.id, []) if k is not None)
        out_jobs.append(d)
    out = run.to_dict()
    out["jobs"] = out_jobs
    out["counts"] = dict(Counter(j.status for j in jobs))
    return out


@rpc("run.wait")
async def run_wait(app: App, p: Params) -> dict[str, Any]:
    """The run once all its jobs have ended, or as it is when `timeout_s` (default 30) passed."""
    run_id = p.req_integer("id", minimum=1)
    timeout_s = p.number("timeout_s", default=30.0, minimum=0) or 0.0
    p.finish()
    with gcpause.lifted():  # a wait of up to an hour: not with the collector paused
        await app.jobs.wait_run(run_id, min(timeout_s, 3600.0))
    out = await run_detail(app, run_id)
    out["done"] = all(j["status"] in TERMINAL_JOB_STATES for j in out["jobs"])
    return out


@rpc("run.list")
async def run_list(app: App, p: Params) -> dict[str, Any]:
    """A page of runs in id order (`order: "desc"`: newest first)."""
    status = p.choice("status", tuple(s.value for s in RunStatus))
    tag = p.text("tag")
    limit = p.integer("limit", default=100, minimum=1, maximum=MAX_PAGE) or 100
    order, after_id, before_id = page_order(p)
    p.finish()
    runs = await app.store.runs.list(
        status=status,
        tag=tag,
        limit=limit,
        after_id=after_id,
        before_id=before_id,
        newest_first=order == "desc",
    )
    last_id = runs[-1].id if len(runs) == limit else None
    return {"runs": [r.to_dict() for r in runs], **next_page(order, last_id)}


@rpc("run.cancel")
async def run_cancel(app: App, p: Params) -> dict[str, Any]:
    """Cancel a run: its queued jobs at once (dependents skipped), its running jobs by signal."""
    run_id = p.req_integer("id", minimum=1)
    p.finish()
    await app.store.runs.get(run_id)  # NotFound for an unknown run
    return {"id": run_id, **await app.jobs.cancel_run(run_id)}
