"""Options shared by several hero-proc commands, and how they become request params.

Import-light on purpose: click, orjson and hero_procd.client/errors/config only.
"""

from __future__ import annotations

import os
import shlex
from typing import IO, Any

import click
import orjson

from hero_procd.cli.session import CliError, Session

# The daemon's integers are 64-bit signed (hero_procd.params.INT64_MAX), and a list page
# holds at most MAX_PAGE items (hero_procd.rpc.methods.jobs.MAX_PAGE).
INT64_MAX = 2**63 - 1
MAX_PAGE = 10_000


def _set_json(ctx: click.Context, param: click.Parameter, value: bool) -> None:
    session = ctx.find_object(Session)
    if value and session is not None:
        session.as_json = True


def _parse_pairs(
    ctx: click.Context, param: click.Parameter, values: tuple[str, ...]
) -> dict[str, str]:
    pairs: dict[str, str] = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{item!r} is not {param.metavar}", ctx=ctx, param=param)
        pairs[key] = value
    return pairs


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
    callback=_parse_pairs,
    metavar="KEY=VALUE",
    help="An environment variable (repeatable).",
)
secret_option = click.option(
    "--secret",
    "secrets",
    multiple=True,
    callback=_parse_pairs,
    metavar="VAR=NAME",
    help="Set the variable VAR to the secret NAME when the process starts (repeatable).",
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
priority_option = click.option("--priority", type=int, help="Higher runs first (default 0).")
group_option = click.option("--group", help="A concurrency group.")


def spec_params(
    argv: tuple[str, ...],
    script: str | None,
    interpreter: str | None,
    env: dict[str, str],
    cwd: str | None,
    action: str | None = None,
    *,
    allow_action: bool = False,
    secrets: dict[str, str] | None = None,
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
        params["interpreter"] = shell_words("--interpreter", interpreter)
    if env:
        params["env"] = env
    if secrets:
        params["env_from_secrets"] = secrets
    if cwd is not None:
        params["cwd"] = os.path.abspath(cwd)
    return params


def shell_words(option: str, line: str) -> list[str]:
    """`line` split like a shell would, for `option`; empty or unbalanced is a usage error."""
    try:
        words = shlex.split(line)
    except ValueError as exc:
        raise click.UsageError(f"{option}: {exc}") from exc
    if not words:
        raise click.UsageError(f"{option} is empty")
    return words


def present(**fields: Any) -> dict[str, Any]:
    """The fields that were given: no None, no empty tuple/list/dict."""
    out: dict[str, Any] = {}
    for key, value in fields.items():
        if value is None or (isinstance(value, tuple | list | dict) and not value):
            continue
        out[key] = list(value) if isinstance(value, tuple) else value
    return out


def load_json(source: IO[bytes]) -> Any:
    """The JSON document in a file opened by click (`-` is stdin); bad JSON is a CliError."""
    name = getattr(source, "name", "-")
    try:
        return orjson.loads(source.read())
    except orjson.JSONDecodeError as exc:
        raise CliError(f"{name}: not valid JSON: {exc}") from exc


def load_json_object(source: IO[bytes], example: str) -> dict[str, Any]:
    """The JSON object in a file; anything but an object is a CliError showing `example`."""
    value = load_json(source)
    if not isinstance(value, dict):
        name = getattr(source, "name", "-")
        raise CliError(f"{name}: must be a JSON object like {example}")
    return value
