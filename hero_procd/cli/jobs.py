"""hero-proc job, run and group: one-shot commands, runs of them, concurrency groups.

Import-light on purpose: click, orjson and hero_procd.client/errors/config only.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import IO, Any, TypeVar

import click
import orjson

from hero_procd.cli import output
from hero_procd.cli.logs import first_page_params, log_options
from hero_procd.cli.options import (
    argv_argument,
    cwd_option,
    env_option,
    group_option,
    interpreter_option,
    json_option,
    load_json,
    load_json_object,
    present,
    priority_option,
    retries_option,
    script_option,
    secret_option,
    spec_params,
    tag_option,
    timeout_option,
)
from hero_procd.cli.session import EXIT_ERROR, CliError, Session, WaitTimeout

# One job.wait call waits at most this long; a longer wait is a loop of them.
WAIT_STEP_S = 30.0
# ...and this long when a progress line on a terminal is redrawn after each.
PROGRESS_STEP_S = 0.5
# A progress line over one long call is redrawn this often.
PROGRESS_REDRAW_S = 0.2
# A follower waits this long for the job's end when no new line has come...
FOLLOW_IDLE_S = 1.0
# ...and this long after a short page, so a chatty job costs a few calls a second.
FOLLOW_BUSY_S = 0.25
LOG_PAGE = 2000
POSITIVE_SECONDS = click.FloatRange(min=0, min_open=True)
F = TypeVar("F", bound=Callable[..., Any])


def job_exit_code(job: dict[str, Any]) -> int:
    """What hero-proc exits with for a finished job: its exit code, else 0 or 1."""
    if job["status"] == "succeeded":
        return 0
    code = job.get("exit_code")
    if isinstance(code, int) and 0 < code < 256:
        return code
    return 1


def wait_for_job(
    s: Session, job_id: int, timeout_s: float | None, *, live: bool = False
) -> dict[str, Any]:
    """The job once it is done (`job.wait` in bounded steps); WaitTimeout past `timeout_s`.

    With `live`, a progress line on stderr while waiting, when stderr is a terminal.
    """
    progress = output.Progress(f"job {job_id}") if live else None
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    try:
        while True:
            step = PROGRESS_STEP_S if progress is not None and progress.enabled else WAIT_STEP_S
            if deadline is not None:
                step = min(step, max(0.0, deadline - time.monotonic()))
            job: dict[str, Any] = s.call("job.wait", {"id": job_id, "timeout_s": step}, wait_s=step)
            if job["done"]:
                return job
            if progress is not None:
                progress.update(0, 1, job["status"])
            if deadline is not None and time.monotonic() >= deadline:
                # Exit 124 (like timeout(1)), never 1: a job that failed with 1 must stay
                # distinguishable from a wait that merely gave up.
                raise WaitTimeout(f"job {job_id} is still {job['status']} after {timeout_s:g}s")
    finally:
        if progress is not None:
            progress.clear()


def wait_for_run(s: Session, run_id: int, timeout_s: float | None) -> dict[str, Any]:
    """The run once all its jobs ended (`run.wait` in steps), a progress line on a terminal."""
    progress = output.Progress(f"run {run_id}")
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    try:
        while True:
            step = PROGRESS_STEP_S if progress.enabled else WAIT_STEP_S
            if deadline is not None:
                step = min(step, max(0.0, deadline - time.monotonic()))
            run: dict[str, Any] = s.call("run.wait", {"id": run_id, "timeout_s": step}, wait_s=step)
            if run["done"]:
                return run
            counts = run["counts"]
            done = sum(n for k, n in counts.items() if k not in ("queued", "running"))
            progress.update(done, len(run["jobs"]), output.counts_text(counts))
            if deadline is not None and time.monotonic() >= deadline:
                raise WaitTimeout(f"run {run_id} is still {run['status']} after {timeout_s:g}s")
    finally:
        progress.clear()


def run_status_line(run: dict[str, Any]) -> str:
    """`run 3 failed: 2 succeeded, 1 failed, 1 skipped`, a finished run in one line."""
    return f"run {run['id']} {run['status']}: {output.counts_text(run['counts']) or 'no jobs'}"


def print_job_logs(
    s: Session,
    job_id: int,
    after_seq: int = 0,
    *,
    follow: bool = False,
    timeout_s: float | None = None,
    tail: int | None = None,
    since: float | None = None,
    timestamps: bool = False,
) -> dict[str, Any]:
    """Print the job's lines after `after_seq` (all of them, or until it is done); the last page.

    Lines go to stdout or stderr as they were written; with --json each page is one
    line of JSON. `tail` and `since` shape the first page (the daemon skips what comes
    before). A follower polls with `job.wait`, so it returns as soon as the job ends.
    """
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    first = first_page_params(tail, since)
    while True:
        params = {"id": job_id, "after_seq": after_seq, "limit": LOG_PAGE, **first}
        first = {}
        page: dict[str, Any] = s.call("job.logs", params)
        if s.as_json:
            sys.stdout.write(orjson.dumps(page).decode() + "\n")
            sys.stdout.flush()
        else:
            output.write_log_lines(page["lines"], timestamps=timestamps)
        after_seq = page["next_seq"]
        full = len(page["lines"]) >= LOG_PAGE
        if page["done"] or (not follow and not full):
            return page
        if full:
            continue
        if deadline is not None and time.monotonic() >= deadline:
            raise WaitTimeout(f"job {job_id} is still {page['status']} after {timeout_s:g}s")
        pause = FOLLOW_BUSY_S if page["lines"] else FOLLOW_IDLE_S
        if deadline is not None:
            pause = min(pause, max(0.0, deadline - time.monotonic()))
        s.call("job.wait", {"id": job_id, "timeout_s": pause}, wait_s=pause)


# -- job ------------------------------------------------------------------------------


@click.group()
def job() -> None:
    """One-shot commands."""


@job.command("submit")
@argv_argument
@click.option("--action", "action_name", metavar="NAME", help="Run this action.")
@script_option
@interpreter_option
@env_option
@secret_option
@cwd_option
@timeout_option
@retries_option
@tag_option
@priority_option
@group_option
@click.option(
    "--wait", is_flag=True, help="Wait for the job to finish and exit with its exit code."
)
@click.option(
    "--wait-timeout",
    type=POSITIVE_SECONDS,
    metavar="S",
    help="With --wait: give up (exit 124) after S seconds; the job goes on.",
)
@click.option(
    "--logs",
    is_flag=True,
    help="With --wait: print the job's output as it comes (the status line then goes to stderr).",
)
@json_option
@click.pass_obj
def job_submit(
    s: Session,
    argv: tuple[str, ...],
    action_name: str | None,
    script: str | None,
    interpreter: str | None,
    env: dict[str, str],
    secrets: dict[str, str],
    cwd: str | None,
    timeout_s: float | None,
    retries: int | None,
    tags: tuple[str, ...],
    priority: int | None,
    group: str | None,
    wait: bool,
    wait_timeout: float | None,
    logs: bool,
) -> None:
    """Queue a job: `-- ARGV...`, `--action NAME` or `--script S`; prints its id.

    With --wait, prints its final status line (the job with --json) instead and
    exits with the job's exit code: 0 if it succeeded, else its exit code, else 1.
    """
    if not wait and (logs or wait_timeout is not None):
        raise click.UsageError("--logs and --wait-timeout go with --wait")
    if logs and s.as_json:
        raise click.UsageError("--logs prints text; use `job logs --json` for JSON")
    params = {
        **spec_params(
            argv,
            script,
            interpreter,
            env,
            cwd,
            action_name,
            allow_action=True,
            secrets=secrets,
        ),
        **present(timeout_s=timeout_s, retries=retries, tags=tags, priority=priority, group=group),
    }
    submitted = s.call("job.submit", params)
    if not wait:
        s.show(submitted, lambda r: str(r["id"]))
        return
    job_id = int(submitted["id"])
    if logs:
        print_job_logs(s, job_id, follow=True, timeout_s=wait_timeout)
        final = wait_for_job(s, job_id, WAIT_STEP_S)  # the logs say done: it has finished
        click.echo(output.job_status_line(final), err=True)
    else:
        final = wait_for_job(s, job_id, wait_timeout, live=True)
        s.show(final, output.job_status_line)
    sys.exit(job_exit_code(final))


@job.command("get")
@click.argument("job_id", metavar="ID", type=click.IntRange(min=1))
@json_option
@click.pass_obj
def job_get(s: Session, job_id: int) -> None:
    """Show the job ID."""
    s.show(s.call("job.get", {"id": job_id}), output.details)


def _exit_text(j: dict[str, Any]) -> str:
    if j.get("signal") is not None:
        return f"sig {j['signal']}"
    return "-" if j.get("exit_code") is None else str(j["exit_code"])


def list_order_options(fn: F) -> F:
    """--last, --limit, --after-id, --before-id and --oldest-first of `job list` and `run list`."""
    for option in reversed(
        (
            click.option(
                "--last",
                type=click.IntRange(min=1),
                metavar="N",
                help="The newest N, newest first (the default order; N defaults to 100).",
            ),
            click.option(
                "--limit", type=click.IntRange(min=1), help="At most this many (default 100)."
            ),
            click.option(
                "--oldest-first", is_flag=True, help="Oldest first (paged with --after-id)."
            ),
            click.option(
                "--after-id",
                type=click.IntRange(min=0),
                help="Oldest first, ids above this (paging).",
            ),
            click.option(
                "--before-id",
                type=click.IntRange(min=1),
                help="Newest first, ids below this (paging).",
            ),
        )
    ):
        fn = option(fn)
    return fn


def list_order_params(
    last: int | None,
    limit: int | None,
    oldest_first: bool,
    after_id: int | None,
    before_id: int | None,
) -> dict[str, Any]:
    """The paging params of a list: newest first unless --oldest-first or --after-id."""
    ascending = oldest_first or after_id is not None
    if ascending and (last is not None or before_id is not None):
        raise click.UsageError(
            "--last and --before-id list newest first; --oldest-first and "
            "--after-id oldest first: give one order"
        )
    if last is not None and limit is not None and last != limit:
        raise click.UsageError("give --last N or --limit N, not both")
    count = last if last is not None else limit
    if ascending:
        return present(limit=count, after_id=after_id)
    return {"order": "desc", **present(limit=count, before_id=before_id)}


def more_hint(result: dict[str, Any]) -> None:
    """On stderr, how to get the next page, if there is one (not with --json)."""
    if result.get("next_before_id") is not None:
        click.echo(f"(more: --before-id {result['next_before_id']})", err=True)
    elif result.get("next_after_id") is not None:
        click.echo(f"(more: --after-id {result['next_after_id']})", err=True)


@job.command("list")
@click.option("--status", help="Only jobs in this status (queued, running, succeeded, ...).")
@click.option("--tag", help="Only jobs with this tag.")
@click.option("--run-id", type=click.IntRange(min=1), help="Only the jobs of this run.")
@list_order_options
@json_option
@click.pass_obj
def job_list(
    s: Session,
    status: str | None,
    tag: str | None,
    run_id: int | None,
    last: int | None,
    limit: int | None,
    oldest_first: bool,
    after_id: int | None,
    before_id: int | None,
) -> None:
    """List jobs, newest first (--oldest-first or --after-id: oldest first), a page at a time."""
    params = {
        **present(status=status, tag=tag, run_id=run_id),
        **list_order_params(last, limit, oldest_first, after_id, before_id),
    }
    result = s.call("job.list", params)

    def human(r: dict[str, Any]) -> str:
        rows = [
            [
                str(j["id"]),
                j["status"],
                _exit_text(j),
                f"{j['attempt']}/{j['max_attempts']}",
                "-" if j.get("run_id") is None else str(j["run_id"]),
                output.timestamp(j["created_at"]),
                output.value_text("tags", j.get("tags")),
                output.command_text(j),
            ]
            for j in r["jobs"]
        ]
        headers = ["ID", "STATUS", "EXIT", "ATTEMPT", "RUN", "CREATED", "TAGS", "COMMAND"]
        return output.table(headers, rows, right=frozenset({0, 2, 3, 4}))

    s.show(result, human)
    if not s.as_json:
        more_hint(result)


@job.command("logs")
@click.argument("job_id", metavar="ID", type=click.IntRange(min=1))
@click.option("-f", "--follow", is_flag=True, help="Keep printing until the job is done.")
@click.option(
    "--after-seq",
    type=click.IntRange(min=0),
    default=0,
    metavar="N",
    help="Only the lines after line N.",
)
@log_options
@json_option
@click.pass_obj
def job_logs(
    s: Session,
    job_id: int,
    follow: bool,
    after_seq: int,
    tail: int | None,
    since: float | None,
    timestamps: bool,
) -> None:
    """Print the job's output: stdout lines to stdout, stderr lines to stderr.

    With --json, each page of `job.logs` is one line of JSON.
    """
    print_job_logs(
        s, job_id, after_seq, follow=follow, tail=tail, since=since, timestamps=timestamps
    )


@job.command("cancel")
@click.argument("job_id", metavar="ID", type=click.IntRange(min=1))
@json_option
@click.pass_obj
def job_cancel(s: Session, job_id: int) -> None:
    """Cancel the job ID: a queued one at once, a running one by signal."""
    s.show(s.call("job.cancel", {"id": job_id}), lambda r: f"job {r['id']} {r['result']}")


@job.command("wait")
@click.argument("job_id", metavar="ID", type=click.IntRange(min=1))
@click.option(
    "--timeout",
    "timeout_s",
    type=POSITIVE_SECONDS,
    metavar="S",
    help="Give up (exit 124) after S seconds; the job goes on (default: wait as long as it takes).",
)
@json_option
@click.pass_obj
def job_wait(s: Session, job_id: int, timeout_s: float | None) -> None:
    """Wait for the job ID to finish; print its status line, exit with its exit code.

    On a terminal, a live line on stderr shows its status and the time waited.
    """
    final = wait_for_job(s, job_id, timeout_s, live=True)
    s.show(final, output.job_status_line)
    sys.exit(job_exit_code(final))


@job.command("batch")
@click.option(
    "-f",
    "--file",
    "source",
    type=click.File("rb"),
    required=True,
    help='A JSON file {"jobs": [...], "defaults"?, "on_duplicate"?} (or just the list of '
    "jobs); - reads stdin.",
)
@click.option(
    "--wait",
    is_flag=True,
    help="Then wait until every job of the batch has ended (a live line on a terminal).",
)
@click.option(
    "--wait-timeout",
    type=POSITIVE_SECONDS,
    metavar="S",
    help="With --wait: give up (exit 124) after S seconds; the jobs go on.",
)
@json_option
@click.pass_obj
def job_batch(s: Session, source: IO[bytes], wait: bool, wait_timeout: float | None) -> None:
    """Queue many jobs in one call; prints how many were submitted, deduplicated, failed.

    Each job that failed is a line on stderr; the others are queued anyway, and
    hero-proc exits 1 if any failed (0 only when every job was accepted). On a
    terminal, a live line shows the submission going on. With
    --wait, it then waits for the jobs it submitted (done/total and elapsed on a
    terminal), prints their outcome, and exits 1 unless every one succeeded.
    """
    if wait_timeout is not None and not wait:
        raise click.UsageError("--wait-timeout goes with --wait")
    params = load_json(source)
    if isinstance(params, list):
        params = {"jobs": params}
    if not isinstance(params, dict):
        name = getattr(source, "name", "-")
        raise CliError(f'{name}: must be a JSON object like {{"jobs": [...]}} or a list of jobs')
    items = params.get("jobs")
    total = len(items) if isinstance(items, list) else 0
    result = call_with_progress(s, "job.submit_batch", params, f"{total} jobs", total)

    def human(r: dict[str, Any]) -> str:
        return (
            f"submitted {len(r['submitted'])}, deduplicated {len(r['deduplicated'])}, "
            f"superseded {len(r['superseded'])}, failed {len(r['failed'])}"
        )

    ids: list[int] = result["submitted"]  # (deduplicated items name their dedup_key only)
    finished = wait_for_jobs(s, ids, wait_timeout) if wait and ids else None
    if finished is not None:
        result = {**result, "finished": finished}
    s.show(result, human)
    if not s.as_json:
        for index, error in result["failed"]:
            click.echo(f"jobs[{index}]: {' '.join(str(error['message']).split())}", err=True)
        if finished is not None:
            click.echo(f"finished: {output.counts_text(finished['counts']) or 'none'}")
    if result["failed"]:
        # A script must notice a partial batch; the summary (or --json result) says which.
        sys.exit(EXIT_ERROR)
    if finished is not None and finished["counts"].get("succeeded", 0) != finished["total"]:
        sys.exit(EXIT_ERROR)


def call_with_progress(
    s: Session, method: str, params: dict[str, Any], label: str, total: int
) -> Any:
    """`s.call`, with a live line (`label: 0/total done, submitting, 1.2s`) while the daemon
    works on a terminal: a 100,000-job batch is one call of a few seconds."""
    progress = output.Progress(label)
    if not progress.enabled:
        return s.call(method, params)
    import threading

    outcome: dict[str, Any] = {}

    def call() -> None:
        try:
            outcome["result"] = s.call(method, params)
        except BaseException as exc:  # handed to the main thread, raised there
            outcome["error"] = exc

    worker = threading.Thread(target=call, name="call", daemon=True)
    worker.start()
    try:
        while worker.is_alive():
            progress.update(0, total, "submitting")
            worker.join(PROGRESS_REDRAW_S)
    finally:
        progress.clear()
    if "error" in outcome:
        raise outcome["error"]
    return outcome["result"]


def wait_for_jobs(s: Session, ids: list[int], timeout_s: float | None) -> dict[str, Any]:
    """Until every one of `ids` has ended (`job.wait_all` in steps), a live line on a terminal."""
    progress = output.Progress(f"{len(ids)} jobs")
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    try:
        while True:
            step = PROGRESS_STEP_S if progress.enabled else WAIT_STEP_S
            if deadline is not None:
                step = min(step, max(0.0, deadline - time.monotonic()))
            state: dict[str, Any] = s.call(
                "job.wait_all", {"ids": ids, "timeout_s": step}, wait_s=step
            )
            if state["done"]:
                return state
            ended = state["ended"] + state["missing"]
            progress.update(ended, state["total"], output.counts_text(state["counts"]))
            if deadline is not None and time.monotonic() >= deadline:
                raise WaitTimeout(
                    f"{state['total'] - ended} of {state['total']} jobs still going "
                    f"after {timeout_s:g}s"
                )
    finally:
        progress.clear()


# -- run ------------------------------------------------------------------------------


@click.group()
def run() -> None:
    """Groups of jobs submitted together, with dependencies."""


@run.command("submit")
@click.option(
    "-f",
    "--file",
    "source",
    type=click.File("rb"),
    required=True,
    help='A JSON file {"name"?, "tags"?, "jobs": [...]}; - reads stdin.',
)
@json_option
@click.pass_obj
def run_submit(s: Session, source: IO[bytes]) -> None:
    """Submit a run from a JSON file; prints the run's id."""
    params = load_json_object(source, '{"jobs": [...]}')
    s.show(s.call("run.submit", params), lambda r: str(r["id"]))


@run.command("get")
@click.argument("run_id", metavar="ID", type=click.IntRange(min=1))
@json_option
@click.pass_obj
def run_get(s: Session, run_id: int) -> None:
    """Show the run ID and the status of each of its jobs."""

    def human(r: dict[str, Any]) -> str:
        rows = [
            [
                output.value_text("key", j.get("key")),
                str(j["id"]),
                j["status"],
                output.value_text("depends_on", j.get("depends_on")),
            ]
            for j in r["jobs"]
        ]
        jobs = output.table(["KEY", "ID", "STATUS", "DEPENDS_ON"], rows, right=frozenset({1}))
        return output.details(r, skip=frozenset({"jobs"})) + "\n\n" + jobs

    s.show(s.call("run.get", {"id": run_id}), human)


@run.command("list")
@click.option("--status", help="Only runs in this status.")
@click.option("--tag", help="Only runs with this tag.")
@list_order_options
@json_option
@click.pass_obj
def run_list(
    s: Session,
    status: str | None,
    tag: str | None,
    last: int | None,
    limit: int | None,
    oldest_first: bool,
    after_id: int | None,
    before_id: int | None,
) -> None:
    """List runs, newest first (--oldest-first or --after-id: oldest first), a page at a time."""
    params = {
        **present(status=status, tag=tag),
        **list_order_params(last, limit, oldest_first, after_id, before_id),
    }
    result = s.call("run.list", params)

    def human(r: dict[str, Any]) -> str:
        rows = [
            [
                str(x["id"]),
                output.value_text("name", x.get("name")),
                x["status"],
                output.timestamp(x["created_at"]),
                output.value_text("finished_at", x.get("finished_at")),
                output.value_text("tags", x.get("tags")),
            ]
            for x in r["runs"]
        ]
        headers = ["ID", "NAME", "STATUS", "CREATED", "FINISHED", "TAGS"]
        return output.table(headers, rows, right=frozenset({0}))

    s.show(result, human)
    if not s.as_json:
        more_hint(result)


@run.command("wait")
@click.argument("run_id", metavar="ID", type=click.IntRange(min=1))
@click.option(
    "--timeout",
    "timeout_s",
    type=POSITIVE_SECONDS,
    metavar="S",
    help="Give up (exit 124) after S seconds; the run goes on (default: as long as it takes).",
)
@json_option
@click.pass_obj
def run_wait(s: Session, run_id: int, timeout_s: float | None) -> None:
    """Wait until every job of the run ID has ended; exit 0 if the run succeeded, else 1.

    On a terminal, a live line on stderr shows done/total, the jobs by status and the
    time waited. Prints the run's status line (the run with --json).
    """
    final = wait_for_run(s, run_id, timeout_s)
    s.show(final, run_status_line)
    sys.exit(0 if final["status"] == "succeeded" else EXIT_ERROR)


@run.command("cancel")
@click.argument("run_id", metavar="ID", type=click.IntRange(min=1))
@json_option
@click.pass_obj
def run_cancel(s: Session, run_id: int) -> None:
    """Cancel the run ID: its queued jobs at once (dependents skipped), running ones by signal."""

    def human(r: dict[str, Any]) -> str:
        return f"run {r['id']}: cancelled {r['cancelled']} jobs, signalled {r['signalled']}"

    s.show(s.call("run.cancel", {"id": run_id}), human)


# -- group ----------------------------------------------------------------------------


@click.group()
def group() -> None:
    """Concurrency groups: how many of a group's jobs may run at once."""


@group.command("set")
@click.argument("name")
@click.argument("max_parallel", metavar="N", type=click.IntRange(min=1))
@json_option
@click.pass_obj
def group_set(s: Session, name: str, max_parallel: int) -> None:
    """Let at most N jobs of the group NAME run at once."""
    result = s.call("group.set", {"name": name, "max_parallel": max_parallel})
    s.show(result, lambda r: f"group {r['name']}: at most {r['max_parallel']} at once")


@group.command("list")
@json_option
@click.pass_obj
def group_list(s: Session) -> None:
    """List groups with their limit and how many of their jobs run now."""

    def human(r: dict[str, Any]) -> str:
        rows = [[g["name"], str(g["max_parallel"]), str(g["running"])] for g in r["groups"]]
        return output.table(["NAME", "MAX_PARALLEL", "RUNNING"], rows, right=frozenset({1, 2}))

    s.show(s.call("group.list"), human)


@group.command("delete")
@click.argument("name")
@json_option
@click.pass_obj
def group_delete(s: Session, name: str) -> None:
    """Remove the limit of the group NAME (its jobs then run under the global limit)."""
    result = s.call("group.delete", {"name": name})
    s.show(result, lambda r: f"group {name} deleted" if r["deleted"] else f"no group named {name}")
