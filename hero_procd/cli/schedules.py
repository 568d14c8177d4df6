"""hero-proc schedule and secret: cron-fired jobs and runs, and the secrets they may use.

Import-light on purpose: click, orjson and hero_procd.client/errors/config only.
"""

from __future__ import annotations

import sys
from typing import IO, Any

import click

from hero_procd.cli import output
from hero_procd.cli.options import (
    argv_argument,
    cwd_option,
    env_option,
    group_option,
    interpreter_option,
    json_option,
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
from hero_procd.cli.session import CliError, Session

# -- schedule -------------------------------------------------------------------------


@click.group()
def schedule() -> None:
    """Cron expressions that submit a job or a run when they fire."""


@schedule.command("set")
@click.argument("name")
@click.argument("cron")
@argv_argument
@click.option("--action", "action_name", metavar="NAME", help="Submit a job of this action.")
@script_option
@click.option(
    "--run-file",
    type=click.File("rb"),
    help='Submit the run in this JSON file {"name"?, "tags"?, "jobs": [...]}; - reads stdin.',
)
@interpreter_option
@env_option
@secret_option
@cwd_option
@timeout_option
@retries_option
@priority_option
@group_option
@tag_option
@click.option("--timezone", metavar="TZ", help="Evaluate CRON in this zone (default: local).")
@click.option(
    "--overlap",
    type=click.Choice(["skip", "queue", "allow"]),
    help="When the last fire is still active: skip this one (default), queue it, or allow it.",
)
@click.option("--paused", is_flag=True, default=None, help="Create it paused.")
@json_option
@click.pass_obj
def schedule_set(
    s: Session,
    name: str,
    cron: str,
    argv: tuple[str, ...],
    action_name: str | None,
    script: str | None,
    run_file: IO[bytes] | None,
    interpreter: str | None,
    env: dict[str, str],
    secrets: dict[str, str],
    cwd: str | None,
    timeout_s: float | None,
    retries: int | None,
    priority: int | None,
    group: str | None,
    tags: tuple[str, ...],
    timezone: str | None,
    overlap: str | None,
    paused: bool | None,
) -> None:
    """Create or replace the schedule NAME firing at CRON (e.g. '0 3 * * *').

    It submits a job (`-- ARGV...`, `--action A` or `--script S`) or a run (`--run-file F`).
    """
    params: dict[str, Any] = {"name": name, "cron": cron}
    if run_file is not None:
        others = [
            option
            for option, value in (
                ("ARGV", argv),
                ("--action", action_name),
                ("--script", script),
                ("--interpreter", interpreter),
                ("--env", env),
                ("--secret", secrets),
                ("--cwd", cwd),
                ("--timeout", timeout_s),
                ("--retries", retries),
                ("--priority", priority),
                ("--group", group),
            )
            if value
        ]
        if others:
            raise click.UsageError(f"--run-file takes the jobs from the file, not {others[0]}")
        run = load_json_object(run_file, '{"jobs": [...]}')
        if tags:
            run["tags"] = [*(run.get("tags") or []), *tags]
        params["run"] = run
    else:
        if not (argv or action_name is not None or script is not None):
            raise click.UsageError("give one of -- ARGV..., --action, --script or --run-file")
        command = spec_params(
            argv,
            script,
            interpreter,
            env,
            cwd,
            action_name,
            allow_action=True,
            secrets=secrets,
        )
        params["job"] = {
            **command,
            **present(
                timeout_s=timeout_s, retries=retries, priority=priority, group=group, tags=tags
            ),
        }
    params.update(present(timezone=timezone, overlap=overlap, paused=paused))
    s.show(s.call("schedule.set", params), _schedule_line)


def _schedule_line(sc: dict[str, Any]) -> str:
    """`schedule nightly: next fire 2024-05-01 03:00:00` (or paused)."""
    if sc["paused"]:
        return f"schedule {sc['name']}: paused"
    return (
        f"schedule {sc['name']}: next fire {output.value_text('next_fire_at', sc['next_fire_at'])}"
    )


@schedule.command("get")
@click.argument("name")
@json_option
@click.pass_obj
def schedule_get(s: Session, name: str) -> None:
    """Show the schedule NAME."""
    s.show(s.call("schedule.get", {"name": name}), output.details)


@schedule.command("list")
@json_option
@click.pass_obj
def schedule_list(s: Session) -> None:
    """List schedules: cron, next and last fire (local time), fires, skipped, paused."""

    def human(r: dict[str, Any]) -> str:
        rows = [
            [
                x["name"],
                x["cron"],
                output.value_text("next_fire_at", x.get("next_fire_at")),
                output.value_text("last_fire_at", x.get("last_fire_at")),
                str(x["fires"]),
                str(x["skipped"]),
                output.value_text("paused", x["paused"]),
            ]
            for x in r["schedules"]
        ]
        headers = ["NAME", "CRON", "NEXT", "LAST", "FIRES", "SKIPPED", "PAUSED"]
        return output.table(headers, rows, right=frozenset({4, 5}))

    s.show(s.call("schedule.list"), human)


@schedule.command("delete")
@click.argument("name")
@json_option
@click.pass_obj
def schedule_delete(s: Session, name: str) -> None:
    """Delete the schedule NAME (what it submitted stays)."""
    result = s.call("schedule.delete", {"name": name})
    s.show(
        result,
        lambda r: f"schedule {name} deleted" if r["deleted"] else f"no schedule named {name}",
    )


@schedule.command("pause")
@click.argument("name")
@json_option
@click.pass_obj
def schedule_pause(s: Session, name: str) -> None:
    """Stop firing the schedule NAME until it is resumed."""
    s.show(s.call("schedule.pause", {"name": name}), _schedule_line)


@schedule.command("resume")
@click.argument("name")
@json_option
@click.pass_obj
def schedule_resume(s: Session, name: str) -> None:
    """Fire the schedule NAME again, from its next slot after now."""
    s.show(s.call("schedule.resume", {"name": name}), _schedule_line)


@schedule.command("trigger")
@click.argument("name")
@json_option
@click.pass_obj
def schedule_trigger(s: Session, name: str) -> None:
    """Fire the schedule NAME now, once; its next scheduled fire stays."""
    result = s.call("schedule.trigger", {"name": name})
    if result.get("error"):
        raise CliError(f"schedule {name} did not fire: {result['error']}")

    def human(r: dict[str, Any]) -> str:
        if r.get("skipped"):
            return f"schedule {name} skipped: what it last submitted is still active"
        if not r.get("fired"):
            return f"schedule {name} did not fire: another fire of it won"
        if r.get("run_id") is not None:
            return f"schedule {name} fired: run {r['run_id']}"
        return f"schedule {name} fired: job {r['job_id']}"

    s.show(result, human)


# -- secret ---------------------------------------------------------------------------


@click.group()
def secret() -> None:
    """Named values given to processes as environment variables (--secret VAR=NAME)."""


@secret.command("set")
@click.argument("name")
@click.argument("value", required=False)
@click.option(
    "--from-stdin",
    is_flag=True,
    help="Read the value from stdin (one trailing newline dropped).",
)
@json_option
@click.pass_obj
def secret_set(s: Session, name: str, value: str | None, from_stdin: bool) -> None:
    """Create or replace the secret NAME; prints only its name.

    Without VALUE, the value is read from stdin (asked for, hidden, on a terminal),
    which keeps it out of `ps` and shell history.
    """
    if value is not None and from_stdin:
        raise click.UsageError("give VALUE or --from-stdin, not both")
    if value is None:
        if from_stdin or not sys.stdin.isatty():
            value = sys.stdin.read()
            value = (
                value.removesuffix("\r\n") if value.endswith("\r\n") else value.removesuffix("\n")
            )
        else:
            value = click.prompt("Value", hide_input=True, err=True)
    result = s.call("secret.set", {"name": name, "value": value})
    s.show(result, lambda r: f"secret {r['name']} saved")


@secret.command("get")
@click.argument("name")
@json_option
@click.pass_obj
def secret_get(s: Session, name: str) -> None:
    """Print the value of the secret NAME."""
    result = s.call("secret.get", {"name": name})
    if s.as_json:
        s.show(result, str)
    else:
        sys.stdout.write(str(result["value"]) + "\n")  # even an empty value is a line


@secret.command("list")
@json_option
@click.pass_obj
def secret_list(s: Session) -> None:
    """List secret names (never values)."""

    def human(r: dict[str, Any]) -> str:
        rows = [[x["name"], output.timestamp(x["updated_at"])] for x in r["secrets"]]
        return output.table(["NAME", "UPDATED"], rows)

    s.show(s.call("secret.list"), human)


@secret.command("delete")
@click.argument("name")
@json_option
@click.pass_obj
def secret_delete(s: Session, name: str) -> None:
    """Delete the secret NAME."""
    result = s.call("secret.delete", {"name": name})
    s.show(
        result, lambda r: f"secret {name} deleted" if r["deleted"] else f"no secret named {name}"
    )
