"""job.*: one-shot commands."""

from __future__ import annotations

from typing import Any

from hero_procd.app import App
from hero_procd.model import JobStatus, parse_job_request
from hero_procd.params import Params
from hero_procd.rpc.registry import rpc

MAX_PAGE = 10_000


@rpc("job.submit")
async def job_submit(app: App, p: Params) -> dict[str, Any]:
    """Queue one job: an action, a command (argv) or a script with an interpreter."""
    request = parse_job_request(p)
    return {"id": await app.store.jobs.submit(request), "status": JobStatus.QUEUED.value}


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
    """A page of jobs in id order; pass `next_after_id` back as `after_id` for the next page."""
    status = p.choice("status", tuple(s.value for s in JobStatus))
    tag = p.text("tag")
    run_id = p.integer("run_id", minimum=1)
    limit = p.integer("limit", default=100, minimum=1, maximum=MAX_PAGE) or 100
    after_id = p.integer("after_id", default=0, minimum=0) or 0
    p.finish()
    jobs = await app.store.jobs.list(
        status=status, tag=tag, run_id=run_id, limit=limit, after_id=after_id
    )
    return {
        "jobs": [j.to_dict() for j in jobs],
        "next_after_id": jobs[-1].id if len(jobs) == limit else None,
    }


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
