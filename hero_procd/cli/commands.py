"""The click command tree of hero-proc.

Import-light on purpose: click, orjson and hero_procd.client/errors/config
only (never asyncio, uvloop, aiosqlite, jsonrpcserver or h11); a test holds
this line. `hero_procd.cli.main` is the entry point.
"""

from __future__ import annotations

from typing import Any

import click

from hero_procd import __version__
from hero_procd.cli import output
from hero_procd.cli.jobs import group, job, run
from hero_procd.cli.logs import logs
from hero_procd.cli.options import (
    argv_argument,
    cwd_option,
    env_option,
    interpreter_option,
    json_option,
    present,
    retries_option,
    script_option,
    secret_option,
    spec_params,
    tag_option,
    timeout_option,
)
from hero_procd.cli.schedules import schedule, secret
from hero_procd.cli.services import service
from hero_procd.cli.session import DEFAULT_TIMEOUT_S, CliError, Session
from hero_procd.cli.stack import apply, export

# -- the command tree -----------------------------------------------------------------


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--socket",
    "socket_path",
    envvar="HERO_PROC_SOCKET",
    metavar="PATH",
    help="The daemon's socket (default: $HERO_PROC_SOCKET, else the first that exists of "
    "$XDG_RUNTIME_DIR/hero_proc.sock, ~/hero/var/sockets/hero_proc.sock and the systemd "
    "unit's /run/hero-procd/hero_proc.sock).",
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
    """Drive hero-procd: actions, jobs, runs, services, schedules and secrets."""
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
def ui(s: Session) -> None:
    """Print the URL that logs a browser in to the dashboard (hero-procd --http)."""
    result = s.call("system.ui")
    if not result.get("enabled"):
        raise CliError("the dashboard is off: start hero-procd with --http 127.0.0.1:PORT")
    s.show(result, lambda r: str(r["login_url"]))


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
@secret_option
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
    secrets: dict[str, str],
    cwd: str | None,
    timeout_s: float | None,
    retries: int | None,
    tags: tuple[str, ...],
) -> None:
    """Create or replace the action NAME: `action set NAME -- ARGV...` or `--script S`."""
    params = {
        "name": name,
        **spec_params(argv, script, interpreter, env, cwd, secrets=secrets),
        **present(timeout_s=timeout_s, retries=retries, tags=tags),
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
    result = s.call("action.list", present(tag=tags[0] if tags else None))

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


@cli.command("status")
@json_option
@click.pass_obj
def status(s: Session) -> None:
    """All services: state, health, pid, uptime, restarts, memory, cpu."""
    colour = output.use_colour()
    s.show(s.call("service.status_all"), lambda r: output.status_table(r, colour=colour))


@cli.group()
def node() -> None:
    """The daemons sharing this daemon's database (on SQLite, this one)."""


@node.command("list")
@json_option
@click.pass_obj
def node_list(s: Session) -> None:
    """Every node: name, version, heartbeat age, alive, jobs running."""

    def human(r: dict[str, Any]) -> str:
        rows = [
            [
                n["name"] + (" *" if n["name"] == r["self"] else ""),
                n["version"],
                f"{n['heartbeat_age_s']:.1f}s",
                n["state"],
                str(n["jobs_running"]),
            ]
            for n in r["nodes"]
        ]
        return output.table(
            ["NODE", "VERSION", "HEARTBEAT", "STATE", "RUNNING"], rows, right=frozenset({2, 4})
        )

    s.show(s.call("node.list"), human)


for subgroup in (job, run, group, service, schedule, secret, logs, node):
    cli.add_command(subgroup)
for stack_command in (apply, export):
    cli.add_command(stack_command)


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


@cli.group()
def retention() -> None:
    """Retention of finished jobs and log lines (the daemon also runs it on its own)."""


@retention.command("run")
@json_option
@click.pass_obj
def retention_run(s: Session) -> None:
    """Run one retention pass now; prints what it deleted and freed."""

    def human(r: dict[str, Any]) -> str:
        return (
            f"deleted {r['jobs']} jobs, {r['runs']} runs, {r['logs']} log lines; "
            f"trimmed {r['log_lines_trimmed']} log lines; "
            f"freed {r['pages_freed']} pages ({output.size(r['bytes_freed'])})"
        )

    s.show(s.call("system.retention_run"), human)
