"""hero-proc service: define, start, stop, watch and delete supervised processes.

Import-light on purpose: click, orjson and hero_procd.client/errors/config only.
"""

from __future__ import annotations

import os
import signal as signal_module
import sys
import time
from typing import Any

import click
import orjson

from hero_procd.cli import output
from hero_procd.cli.logs import first_page_params, log_options
from hero_procd.cli.options import (
    argv_argument,
    cwd_option,
    env_option,
    interpreter_option,
    json_option,
    present,
    script_option,
    secret_option,
    shell_words,
    spec_params,
    tag_option,
)
from hero_procd.cli.session import CliError, Session

SECONDS = click.FloatRange(min=0)
POSITIVE_SECONDS = click.FloatRange(min=0, min_open=True)
SIGNALS = ("TERM", "INT", "QUIT", "HUP", "KILL", "USR1", "USR2")
# A follower of a service's output asks for new lines this often.
FOLLOW_POLL_S = 0.5
LOG_PAGE = 2000
# How long a bulk verb (service start|stop|restart --all/--tag) may take, beyond --timeout.
BULK_WAIT_S = 600.0


def state_paint(column: int) -> dict[int, output.Painter] | None:
    """Colour the state column, only when stdout is a terminal and NO_COLOR is unset."""
    if not output.use_colour():
        return None
    return {column: output.STATE_COLOURS.get}


def _health(
    exec_line: str | None,
    tcp: str | None,
    http: str | None,
    unix: str | None,
    interval_s: float | None,
    timeout_s: float | None,
    retries: int | None,
) -> dict[str, Any] | None:
    """The `health` param from the --health-* options, or None without a check."""
    kinds = {
        "--health-exec": exec_line,
        "--health-tcp": tcp,
        "--health-http": http,
        "--health-unix": unix,
    }
    given = [name for name, value in kinds.items() if value is not None]
    tuning = present(interval_s=interval_s, timeout_s=timeout_s, retries=retries)
    if not given:
        if tuning:
            raise click.UsageError(
                "--health-interval, --health-timeout and --health-retries go with a check: "
                "--health-exec, --health-tcp, --health-http or --health-unix"
            )
        return None
    if len(given) > 1:
        raise click.UsageError(f"give one health check, not {' and '.join(given)}")
    check: dict[str, Any] = {}
    if exec_line is not None:
        check["exec"] = shell_words("--health-exec", exec_line)
    elif tcp is not None:
        _, sep, port = tcp.rpartition(":")
        if not sep or not port.isdigit():
            raise click.UsageError(f"--health-tcp: {tcp!r} is not HOST:PORT")
        check["tcp"] = tcp
    elif http is not None:
        if not http.startswith("http://"):
            raise click.UsageError(f"--health-http: {http!r} is not an http:// URL")
        check["http"] = http
    else:
        check["unix"] = unix
    return {**check, **tuning}


@click.group()
def service() -> None:
    """Long-running supervised processes."""


@service.command("define")
@click.argument("name")
@argv_argument
@script_option
@interpreter_option
@env_option
@secret_option
@cwd_option
@click.option(
    "--restart",
    type=click.Choice(["always", "on-failure", "never"]),
    help="When to restart it (default on-failure).",
)
@click.option("--autostart", is_flag=True, default=None, help="Start it with the daemon.")
@click.option("--requires", multiple=True, metavar="NAME", help="A service it needs (repeatable).")
@click.option(
    "--after",
    multiple=True,
    metavar="NAME",
    help="Start it after this service when both start (repeatable).",
)
@click.option(
    "--oneshot", is_flag=True, default=None, help="It runs once; a clean exit is success."
)
@click.option(
    "--start-secs",
    type=SECONDS,
    metavar="S",
    help="Up this long counts as started (default 1).",
)
@click.option(
    "--restart-delay",
    type=SECONDS,
    metavar="S",
    help="First delay before a restart, doubled each time (default 1).",
)
@click.option(
    "--start-limit",
    type=click.IntRange(min=0),
    metavar="N",
    help="Restarts within a minute before it is fatal (default 5).",
)
@click.option(
    "--stop-signal", type=click.Choice(SIGNALS), help="The signal that stops it (default TERM)."
)
@click.option(
    "--stop-timeout",
    type=SECONDS,
    metavar="S",
    help="Seconds after the stop signal before SIGKILL (default 10).",
)
@click.option(
    "--health-exec", metavar="'ARGV'", help="Healthy while this command (shell words) exits 0."
)
@click.option("--health-tcp", metavar="HOST:PORT", help="Healthy while this port accepts.")
@click.option("--health-http", metavar="URL", help="Healthy while GET URL answers 2xx/3xx.")
@click.option("--health-unix", metavar="PATH", help="Healthy while this Unix socket accepts.")
@click.option(
    "--health-interval",
    type=POSITIVE_SECONDS,
    metavar="S",
    help="Seconds between health checks (default 10).",
)
@click.option(
    "--health-timeout",
    type=POSITIVE_SECONDS,
    metavar="S",
    help="Seconds a health check may take (default 5).",
)
@click.option(
    "--health-retries",
    type=click.IntRange(min=1),
    metavar="N",
    help="Failed checks in a row before it is degraded (default 3).",
)
@click.option(
    "--restart-on-unhealthy",
    is_flag=True,
    default=None,
    help="Restart it when it is degraded.",
)
@tag_option
@json_option
@click.pass_obj
def service_define(
    s: Session,
    name: str,
    argv: tuple[str, ...],
    script: str | None,
    interpreter: str | None,
    env: dict[str, str],
    secrets: dict[str, str],
    cwd: str | None,
    restart: str | None,
    autostart: bool | None,
    requires: tuple[str, ...],
    after: tuple[str, ...],
    oneshot: bool | None,
    start_secs: float | None,
    restart_delay: float | None,
    start_limit: int | None,
    stop_signal: str | None,
    stop_timeout: float | None,
    health_exec: str | None,
    health_tcp: str | None,
    health_http: str | None,
    health_unix: str | None,
    health_interval: float | None,
    health_timeout: float | None,
    health_retries: int | None,
    restart_on_unhealthy: bool | None,
    tags: tuple[str, ...],
) -> None:
    """Create or redefine the service NAME: `-- ARGV...` or `--script S`.

    A redefinition replaces the whole definition: options not given take their defaults.
    """
    health = _health(
        health_exec,
        health_tcp,
        health_http,
        health_unix,
        health_interval,
        health_timeout,
        health_retries,
    )
    if restart_on_unhealthy and health is None:
        raise click.UsageError("--restart-on-unhealthy needs a --health-* check")
    params = {
        "name": name,
        **spec_params(argv, script, interpreter, env, cwd, secrets=secrets),
        **present(
            restart=restart,
            autostart=autostart,
            requires=requires,
            after=after,
            oneshot=oneshot,
            start_secs=start_secs,
            restart_delay_s=restart_delay,
            start_limit=start_limit,
            stop_signal=stop_signal,
            stop_timeout_s=stop_timeout,
            health=health,
            restart_on_unhealthy=restart_on_unhealthy,
            tags=tags,
        ),
    }
    s.show(s.call("service.define", params), lambda r: f"service {r['name']} defined")


@service.command("get")
@click.argument("name")
@json_option
@click.pass_obj
def service_get(s: Session, name: str) -> None:
    """Show the service NAME: its definition and live state."""
    s.show(s.call("service.get", {"name": name}), output.details)


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
        return output.table(headers, rows, paint=state_paint(2))

    s.show(s.call("service.list"), human)


@service.command("status")
@click.argument("name")
@json_option
@click.pass_obj
def service_status(s: Session, name: str) -> None:
    """The live status of the service NAME."""
    s.show(s.call("service.status", {"name": name}), output.details)


def _started(s: Session, method: str, name: str, wait_s: float | None) -> None:
    """Start or restart; with a wait, a service not up by then is an error."""
    params: dict[str, Any] = {"name": name}
    if wait_s is not None:
        params["wait_s"] = wait_s
    st = s.call(method, params, wait_s=wait_s or 0.0)
    up = st["state"] == "running" or (st["state"] == "exited" and st.get("exit_code") == 0)
    if wait_s is not None and not up:
        raise CliError(f"{output.service_status_line(st)}, not running after {wait_s:g}s")
    s.show(st, output.service_status_line)


wait_option = click.option(
    "--wait",
    "wait_s",
    type=SECONDS,
    metavar="S",
    help="Wait up to S seconds until it runs; exit 1 if it does not.",
)


def _bulk(
    s: Session, verb: str, name: str | None, every: bool, tag: str | None, wait_s: float | None
) -> None:
    """One service by NAME, or many (--all, --tag) in dependency order with one call."""
    chosen = [w for w, given in (("NAME", name), ("--all", every or None), ("--tag", tag)) if given]
    if len(chosen) != 1:
        problem = f", not {' and '.join(chosen)}" if chosen else ""
        raise click.UsageError(f"give one of NAME, --all or --tag{problem}")
    if name is not None:
        if verb == "stop":
            s.show(s.call("service.stop", {"name": name}), output.service_status_line)
        else:
            _started(s, f"service.{verb}", name, wait_s)
        return
    params: dict[str, Any] = {"all": True} if every else {"tag": tag}
    if wait_s is not None and verb != "stop":
        params["wait_s"] = wait_s
    # One call does every service, each within its own stop and start times: allow long.
    result = s.call(f"service.{verb}_many", params, wait_s=BULK_WAIT_S)

    def human(r: dict[str, Any]) -> str:
        if not r["services"]:
            return f"no service {'defined' if every else f'tagged {tag}'}"
        rows = [
            [
                x["name"],
                "ok" if x["ok"] else "FAILED",
                x.get("state") or "-",
                "-" if x.get("pid") is None else str(x["pid"]),
                x["error"]["message"] if not x["ok"] else "",
            ]
            for x in r["services"]
        ]
        return output.table(["NAME", "RESULT", "STATE", "PID", "ERROR"], rows)

    s.show(result, human)
    failed = [x["name"] for x in result["services"] if not x["ok"]]
    if failed:
        raise CliError(f"{verb} failed for {', '.join(failed)}")


all_option = click.option(
    "--all", "every", is_flag=True, help="Every service, in dependency order (one call)."
)
tag_select_option = click.option(
    "--tag", metavar="TAG", help="The services carrying TAG, in dependency order (one call)."
)


@service.command("start")
@click.argument("name", required=False)
@all_option
@tag_select_option
@wait_option
@json_option
@click.pass_obj
def service_start(
    s: Session, name: str | None, every: bool, tag: str | None, wait_s: float | None
) -> None:
    """Start the service NAME (and what it requires), or --all / --tag T, requirements first."""
    _bulk(s, "start", name, every, tag, wait_s)


@service.command("restart")
@click.argument("name", required=False)
@all_option
@tag_select_option
@wait_option
@json_option
@click.pass_obj
def service_restart(
    s: Session, name: str | None, every: bool, tag: str | None, wait_s: float | None
) -> None:
    """Stop the service NAME's process and start it again, or --all / --tag T."""
    _bulk(s, "restart", name, every, tag, wait_s)


@service.command("stop")
@click.argument("name", required=False)
@all_option
@tag_select_option
@json_option
@click.pass_obj
def service_stop(s: Session, name: str | None, every: bool, tag: str | None) -> None:
    """Stop the service NAME (and what requires it), or --all / --tag T, dependents first."""
    _bulk(s, "stop", name, every, tag, None)


@service.command("set")
@click.argument("name")
@argv_argument
@script_option
@interpreter_option
@env_option
@secret_option
@cwd_option
@click.option("--restart", type=click.Choice(["always", "on-failure", "never"]))
@click.option("--autostart/--no-autostart", default=None, help="Start it with the daemon.")
@click.option("--requires", multiple=True, metavar="NAME", help="A service it needs (repeatable).")
@click.option("--after", multiple=True, metavar="NAME", help="Start after it (repeatable).")
@click.option("--start-secs", type=SECONDS, metavar="S")
@click.option("--restart-delay", type=SECONDS, metavar="S")
@click.option("--start-limit", type=click.IntRange(min=0), metavar="N")
@click.option("--stop-signal", type=click.Choice(SIGNALS))
@click.option("--stop-timeout", type=SECONDS, metavar="S")
@tag_option
@json_option
@click.pass_obj
def service_set(
    s: Session,
    name: str,
    argv: tuple[str, ...],
    script: str | None,
    interpreter: str | None,
    env: dict[str, str],
    secrets: dict[str, str],
    cwd: str | None,
    restart: str | None,
    autostart: bool | None,
    requires: tuple[str, ...],
    after: tuple[str, ...],
    start_secs: float | None,
    restart_delay: float | None,
    start_limit: int | None,
    stop_signal: str | None,
    stop_timeout: float | None,
    tags: tuple[str, ...],
) -> None:
    """Change some fields of the service NAME; the others keep their values.

    Each option given replaces that field (--env: the whole environment, --tag:
    all tags). A running service is restarted only if its command, script,
    interpreter, environment, secrets or cwd changed.
    """
    params: dict[str, Any] = {"name": name}
    if argv or script is not None:
        params.update(spec_params(argv, script, interpreter, {}, None))
    elif interpreter is not None:
        raise click.UsageError("--interpreter goes with --script")
    params.update(
        present(
            env=env,
            env_from_secrets=secrets,
            cwd=None if cwd is None else os.path.abspath(cwd),
            restart=restart,
            autostart=autostart,
            requires=requires,
            after=after,
            start_secs=start_secs,
            restart_delay_s=restart_delay,
            start_limit=start_limit,
            stop_signal=stop_signal,
            stop_timeout_s=stop_timeout,
            tags=tags,
        )
    )
    if len(params) == 1:
        raise click.UsageError("give at least one field to change (see --help)")

    def human(r: dict[str, Any]) -> str:
        if not r["changed"]:
            return f"service {name}: no change"
        fields = ", ".join(f["field"] for f in r["changed"])
        return f"service {name} updated: {fields}" + ("; restarted" if r["restarted"] else "")

    s.show(s.call("service.update", params, wait_s=60.0), human)


@service.command("delete")
@click.argument("name")
@json_option
@click.pass_obj
def service_delete(s: Session, name: str) -> None:
    """Stop the service NAME (and what requires it), then delete it."""
    result = s.call("service.delete", {"name": name})
    s.show(
        result,
        lambda r: f"service {name} deleted" if r["deleted"] else f"no service named {name}",
    )


def _exit_text(event: dict[str, Any]) -> str:
    """`exit 7` or `SIGKILL` (or `-` for neither)."""
    if event.get("signal") is not None:
        sig = int(event["signal"])
        names = {getattr(signal_module, f"SIG{n}"): f"SIG{n}" for n in (*SIGNALS, "SEGV", "ABRT")}
        return names.get(sig, f"signal {sig}")
    if event.get("exit_code") is not None:
        return f"exit {event['exit_code']}"
    return "-"


@service.command("events")
@click.argument("name")
@click.option(
    "--limit", type=click.IntRange(1, 100), default=100, show_default=True, help="At most N exits."
)
@json_option
@click.pass_obj
def service_events(s: Session, name: str, limit: int) -> None:
    """The exit history of the service NAME, newest first (the last 100 are kept)."""

    def human(r: dict[str, Any]) -> str:
        rows = [
            [
                output.timestamp(e["at"]),
                _exit_text(e),
                output.duration(e["ran_s"]),
                "yes" if e["expected"] else "NO",
                "yes" if e["restarted"] else "no",
                e.get("reason") or "",
            ]
            for e in r["events"]
        ]
        headers = ["AT", "EXIT", "RAN", "EXPECTED", "RESTARTED", "REASON"]
        return output.table(headers, rows)

    s.show(s.call("service.events", {"name": name, "limit": limit}), human)


@service.command("logs")
@click.argument("name")
@click.option("-f", "--follow", is_flag=True, help="Keep printing new lines until Ctrl-C.")
@click.option(
    "--after-seq",
    type=click.IntRange(min=0),
    default=0,
    metavar="N",
    help="Only the lines after line N.",
)
@log_options
@click.option("--max-wait", type=POSITIVE_SECONDS, hidden=True, help="Stop following after S.")
@json_option
@click.pass_obj
def service_logs(
    s: Session,
    name: str,
    follow: bool,
    after_seq: int,
    tail: int | None,
    since: float | None,
    timestamps: bool,
    max_wait: float | None,
) -> None:
    """Print the service's output: stdout lines to stdout, stderr lines to stderr.

    With --json, each page of `service.logs` is one line of JSON.
    """
    deadline = None if max_wait is None else time.monotonic() + max_wait
    first = first_page_params(tail, since)
    while True:
        params = {"name": name, "after_seq": after_seq, "limit": LOG_PAGE, **first}
        first = {}
        page = s.call("service.logs", params)
        if s.as_json:
            sys.stdout.write(orjson.dumps(page).decode() + "\n")
            sys.stdout.flush()
        else:
            output.write_log_lines(page["lines"], timestamps=timestamps)
        after_seq = page["next_seq"]
        if len(page["lines"]) >= LOG_PAGE:
            continue
        if not follow or (deadline is not None and time.monotonic() >= deadline):
            return
        pause = FOLLOW_POLL_S
        if deadline is not None:
            pause = min(pause, max(0.0, deadline - time.monotonic()))
        time.sleep(pause)
