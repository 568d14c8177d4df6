"""The click command tree of hero-proc.

Import-light on purpose: click, orjson and hero_procd.client/errors/config
only (never asyncio, uvloop, aiosqlite, jsonrpcserver or h11); a test holds
this line. `hero_procd.cli.main` is the entry point.
"""

from __future__ import annotations

import os
import shlex
import sys
from typing import IO, Any

import click
import orjson

from hero_procd import __version__
from hero_procd.cli import output
from hero_procd.cli.session import DEFAULT_TIMEOUT_S, CliError, Session

# -- options shared by several commands ------------------------------------------------


def _set_json(ctx: click.Context, param: click.Parameter, value: bool) -> None:
    session = ctx.find_object(Session)
    if value and session is not None:
        session.as_json = True


def _parse_env(
    ctx: click.Context, param: click.Parameter, values: tuple[str, ...]
) -> dict[str, str]:
    env: dict[str, str] = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{item!r} is not KEY=VALUE", ctx=ctx, param=param)
        env[key] = value
    return env


json_option = click.option(
    "--json",
    is_flag=True,
    expose_value=False,
    callback=_set_json,
    help="Print the raw result as JSON (same as the global --json).",
)
argv_argument = click.argument("argv", nargs=-1, metavar="[-- ARGV...]")
script_option = click.option("--script", help="A script to run instead of ARGV.")
interpreter_option = click.option(
    "--interpreter",
    help="The interpreter of --script, split like a shell line (default /bin/sh).",
)
env_option = click.option(
    "--env",
    multiple=True,
    callback=_parse_env,
    metavar="KEY=VALUE",
    help="An environment variable (repeatable).",
)
cwd_option = click.option(
    "--cwd", type=click.Path(file_okay=False), help="Working directory (made absolute)."
)
timeout_option = click.option(
    "--timeout",
    "timeout_s",
    type=click.FloatRange(min=0, min_open=True),
    help="Seconds before the command is killed.",
)
retries_option = click.option(
    "--retries", type=click.IntRange(min=0), help="How many times to retry a failure."
)
tag_option = click.option("--tag", "tags", multiple=True, help="A tag (repeatable).")


def _spec_params(
    argv: tuple[str, ...],
    script: str | None,
    interpreter: str | None,
    env: dict[str, str],
    cwd: str | None,
    action: str | None = None,
    *,
    allow_action: bool = False,
) -> dict[str, Any]:
    """The command fields of a request; exactly one of ARGV, --script (or --action) is given."""
    given = [
        name
        for name, present in (
            ("ARGV", bool(argv)),
            ("--action", action is not None),
            ("--script", script is not None),
        )
        if present
    ]
    choices = "-- ARGV..., --action or --script" if allow_action else "-- ARGV... or --script"
    if len(given) != 1:
        problem = f", not {' and '.join(given)}" if given else ""
        raise click.UsageError(f"give one of {choices}{problem}")
    params: dict[str, Any] = {}
    if argv:
        params["command"] = list(argv)
    if action is not None:
        params["action"] = action
    if script is not None:
        params["script"] = script
    if interpreter is not None:
        if script is None:
            raise click.UsageError("--interpreter goes with --script")
        try:
            params["interpreter"] = shlex.split(interpreter)
        except ValueError as exc:
            raise click.UsageError(f"--interpreter: {exc}") from exc
        if not params["interpreter"]:
            raise click.UsageError("--interpreter is empty")
    if env:
        params["env"] = env
    if cwd is not None:
        params["cwd"] = os.path.abspath(cwd)
    return params


def _present(**fields: Any) -> dict[str, Any]:
    """The fields that were given: no None, no empty tuple/list/dict."""
    out: dict[str, Any] = {}
    for key, value in fields.items():
        if value is None or (isinstance(value, tuple | list | dict) and not value):
            continue
        out[key] = list(value) if isinstance(value, tuple) else value
    return out


# -- the command tree -----------------------------------------------------------------


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--socket",
    "socket_path",
    envvar="HERO_PROC_SOCKET",
    metavar="PATH",
    help="The daemon's socket (default: $HERO_PROC_SOCKET, else $XDG_RUNTIME_DIR/hero_proc.sock, "
    "else ~/hero/var/sockets/hero_proc.sock).",
)
@click.option("--json", "as_json", is_flag=True, help="Print raw results as JSON, for programs.")
@click.option(
    "--timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=DEFAULT_TIMEOUT_S,
    show_default=True,
    help="Seconds to wait for the daemon's answer.",
)
@click.version_option(__version__, prog_name="hero-proc")
@click.pass_context
def cli(ctx: click.Context, socket_path: str | None, as_json: bool, timeout: float) -> None:
    """Drive hero-procd: actions, jobs, runs and services."""
    session = Session(socket_path, as_json, timeout)
    ctx.obj = session
    ctx.call_on_close(session.close)


@cli.command()
@json_option
@click.pass_obj
def ping(s: Session) -> None:
    """Check that hero-procd answers."""
    s.show(
        s.call("system.ping"), lambda r: f"pong: hero-procd {r.get('version')} on {s.socket_path}"
    )


@cli.command()
@json_option
@click.pass_obj
def info(s: Session) -> None:
    """Version, pid, uptime, paths and table counts of the daemon."""
    s.show(s.call("system.info"), output.details)


# -- action ---------------------------------------------------------------------------


@cli.group()
def action() -> None:
    """Named, reusable command definitions."""


@action.command("set")
@click.argument("name")
@argv_argument
@script_option
@interpreter_option
@env_option
@cwd_option
@timeout_option
@retries_option
@tag_option
@json_option
@click.pass_obj
def action_set(
    s: Session,
    name: str,
    argv: tuple[str, ...],
    script: str | None,
    interpreter: str | None,
    env: dict[str, str],
    cwd: str | None,
    timeout_s: float | None,
    retries: int | None,
    tags: tuple[str, ...],
) -> None:
    """Create or replace the action NAME: `action set NAME -- ARGV...` or `--script S`."""
    params = {
        "name": name,
        **_spec_params(argv, script, interpreter, env, cwd),
        **_present(timeout_s=timeout_s, retries=retries, tags=tags),
    }
    s.show(s.call("action.set", params), lambda r: f"action {r['name']} saved")


@action.command("get")
@click.argument("name")
@json_option
@click.pass_obj
def action_get(s: Session, name: str) -> None:
    """Show the action NAME."""
    s.show(s.call("action.get", {"name": name}), output.details)


@action.command("list")
@tag_option
@json_option
@click.pass_obj
def action_list(s: Session, tags: tuple[str, ...]) -> None:
    """List actions, or those with a tag."""
    if len(tags) > 1:
        raise click.UsageError("action list takes at most one --tag")
    result = s.call("action.list", _present(tag=tags[0] if tags else None))

    def human(r: dict[str, Any]) -> str:
        rows = [
            [
                a["name"],
                output.command_text(a),
                output.value_text("tags", a.get("tags")),
                output.timestamp(a["updated_at"]),
            ]
            for a in r["actions"]
        ]
        return output.table(["NAME", "COMMAND", "TAGS", "UPDATED"], rows)

    s.show(result, human)


@action.command("delete")
@click.argument("name")
@json_option
@click.pass_obj
def action_delete(s: Session, name: str) -> None:
    """Delete the action NAME (nothing happens if there is none)."""
    result = s.call("action.delete", {"name": name})
    s.show(
        result,
        lambda r: f"action {name} deleted" if r["deleted"] else f"no action named {name}",
    )


# -- job ------------------------------------------------------------------------------


@cli.group()
def job() -> None:
    """One-shot commands."""


@job.command("submit")
@argv_argument
@click.option("--action", "action_name", metavar="NAME", help="Run this action.")
@script_option
@interpreter_option
@env_option
@cwd_option
@timeout_option
@retries_option
@tag_option
@click.option("--priority", type=int, help="Higher runs first (default 0).")
@click.option("--group", help="A concurrency group.")
@json_option
@click.pass_obj
def job_submit(
    s: Session,
    argv: tuple[str, ...],
    action_name: str | None,
    script: str | None,
    interpreter: str | None,
    env: dict[str, str],
    cwd: str | None,
    timeout_s: float | None,
    retries: int | None,
    tags: tuple[str, ...],
    priority: int | None,
    group: str | None,
) -> None:
    """Queue a job: `-- ARGV...`, `--action NAME` or `--script S`; prints its id."""
    params = {
        **_spec_params(argv, script, interpreter, env, cwd, action_name, allow_action=True),
        **_present(timeout_s=timeout_s, retries=retries, tags=tags, priority=priority, group=group),
    }
    s.show(s.call("job.submit", params), lambda r: str(r["id"]))


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


@job.command("list")
@click.option("--status", help="Only jobs in this status (queued, running, succeeded, ...).")
@click.option("--tag", help="Only jobs with this tag.")
@click.option("--run-id", type=click.IntRange(min=1), help="Only the jobs of this run.")
@click.option("--limit", type=click.IntRange(min=1), help="At most this many (default 100).")
@click.option("--after-id", type=click.IntRange(min=0), help="Only ids above this (paging).")
@json_option
@click.pass_obj
def job_list(
    s: Session,
    status: str | None,
    tag: str | None,
    run_id: int | None,
    limit: int | None,
    after_id: int | None,
) -> None:
    """List jobs in id order, a page at a time."""
    params = _present(status=status, tag=tag, run_id=run_id, limit=limit, after_id=after_id)
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
    if not s.as_json and result.get("next_after_id") is not None:
        click.echo(f"(more: --after-id {result['next_after_id']})", err=True)


# -- run ------------------------------------------------------------------------------


@cli.group()
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
    name = getattr(source, "name", "-")
    try:
        params = orjson.loads(source.read())
    except orjson.JSONDecodeError as exc:
        raise CliError(f"{name}: not valid JSON: {exc}") from exc
    if not isinstance(params, dict):
        raise CliError(f'{name}: must be a JSON object like {{"jobs": [...]}}')
    s.show(s.call("run.submit", params), lambda r: str(r["id"]))


@run.command("get")
@click.argument("run_id", metavar="ID", type=click.IntRange(min=1))
@json_option
@click.pass_obj
def run_get(s: Session, run_id: int) -> None:
    """Show the run ID and its jobs."""

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
@click.option("--limit", type=click.IntRange(min=1), help="At most this many (default 100).")
@click.option("--after-id", type=click.IntRange(min=0), help="Only ids above this (paging).")
@json_option
@click.pass_obj
def run_list(
    s: Session, status: str | None, tag: str | None, limit: int | None, after_id: int | None
) -> None:
    """List runs in id order, a page at a time."""
    result = s.call("run.list", _present(status=status, tag=tag, limit=limit, after_id=after_id))

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
    if not s.as_json and result.get("next_after_id") is not None:
        click.echo(f"(more: --after-id {result['next_after_id']})", err=True)


# -- service --------------------------------------------------------------------------


@cli.group()
def service() -> None:
    """Long-running supervised processes."""


@service.command("define")
@click.argument("name")
@argv_argument
@script_option
@interpreter_option
@env_option
@cwd_option
@click.option(
    "--restart",
    type=click.Choice(["always", "on-failure", "never"]),
    help="When to restart it (default on-failure).",
)
@click.option("--autostart", is_flag=True, default=None, help="Start it with the daemon.")
@click.option("--requires", multiple=True, metavar="NAME", help="A service it needs (repeatable).")
@json_option
@click.pass_obj
def service_define(
    s: Session,
    name: str,
    argv: tuple[str, ...],
    script: str | None,
    interpreter: str | None,
    env: dict[str, str],
    cwd: str | None,
    restart: str | None,
    autostart: bool | None,
    requires: tuple[str, ...],
) -> None:
    """Create or redefine the service NAME: `-- ARGV...` or `--script S`."""
    params = {
        "name": name,
        **_spec_params(argv, script, interpreter, env, cwd),
        **_present(restart=restart, autostart=autostart, requires=requires),
    }
    s.show(s.call("service.define", params), lambda r: f"service {r['name']} defined")


@service.command("list")
@json_option
@click.pass_obj
def service_list(s: Session) -> None:
    """List services with their definitions."""

    def human(r: dict[str, Any]) -> str:
        rows = [
            [
                x["name"],
                x["desired"],
                x["state"],
                output.value_text("restart", x.get("restart")),
                output.value_text("autostart", x.get("autostart")),
                output.command_text(x),
            ]
            for x in r["services"]
        ]
        headers = ["NAME", "DESIRED", "STATE", "RESTART", "AUTOSTART", "COMMAND"]
        return output.table(headers, rows, paint=_state_paint(2))

    s.show(s.call("service.list"), human)


@service.command("status")
@click.argument("name")
@json_option
@click.pass_obj
def service_status(s: Session, name: str) -> None:
    """The live status of the service NAME."""
    s.show(s.call("service.status", {"name": name}), output.details)


def _state_paint(column: int) -> dict[int, output.Painter] | None:
    """Colour the state column, only when stdout is a terminal."""
    if not sys.stdout.isatty():
        return None
    return {column: output.STATE_COLOURS.get}


@cli.command("status")
@json_option
@click.pass_obj
def status(s: Session) -> None:
    """All services: state, pid, uptime, restarts, memory, cpu."""
    colour = sys.stdout.isatty()
    s.show(s.call("service.status_all"), lambda r: output.status_table(r, colour=colour))


# -- cleaning -------------------------------------------------------------------------


@cli.command()
@click.option("--tag", required=True, help="Delete the finished jobs with this tag.")
@json_option
@click.pass_obj
def clean(s: Session, tag: str) -> None:
    """Delete a tag's finished jobs, their logs and emptied runs (active jobs stay)."""

    def human(r: dict[str, Any]) -> str:
        d = r["deleted"]
        return (
            f"deleted {d['jobs']} jobs, {d['runs']} runs, {d['logs']} log lines; "
            f"skipped {r['skipped_active']} active jobs"
        )

    s.show(s.call("job.clean_by_tag", {"tag": tag}), human)


@cli.command()
@click.option("--yes", is_flag=True, help="Yes, delete everything.")
@json_option
@click.pass_obj
def wipe(s: Session, yes: bool) -> None:
    """Delete every action, job, run, service, log line and schedule."""
    if not yes:
        raise CliError("wipe deletes everything the daemon holds; pass --yes to confirm")

    def human(r: dict[str, Any]) -> str:
        counts = ", ".join(f"{n} {table}" for table, n in r["deleted"].items())
        return f"deleted {counts}"

    s.show(s.call("system.wipe_all", {"confirm": True}), human)
