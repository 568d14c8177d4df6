"""Log options shared by `job logs`, `service logs` and `hero-proc logs`, and the merged view.

`hero-proc logs [-f] [-n N] [--since S] [-t] OWNER...` shows the output of
several services and jobs together, each line prefixed with its owner, like
`docker compose logs`. An OWNER is `svc:NAME` (or `service:NAME`), `job:ID`,
a plain number (a job id) or any other word (a service name).

Import-light on purpose: click, orjson and hero_procd.client/errors/config only.
"""

from __future__ import annotations

import re
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import click
import orjson

from hero_procd.cli import output
from hero_procd.cli.options import json_option
from hero_procd.cli.session import CliError, Session

F = TypeVar("F", bound=Callable[..., Any])

LOG_PAGE = 2000
# A follower asks for new lines this often after a quiet round, and sooner after a busy one.
FOLLOW_IDLE_S = 0.5
FOLLOW_BUSY_S = 0.2
# The colours of owners' labels on a terminal, in turn (those docker compose uses).
OWNER_COLOURS = ("cyan", "yellow", "green", "magenta", "blue", "red")
_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_DURATIONS = re.compile(r"(?:\d+(?:\.\d+)?(?:ms|s|m|h|d))+")
_UNIT_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_since(text: str, now: float | None = None) -> float:
    """`--since` as a Unix time: a duration back from now (`90s`, `10m`, `1h30m`, `2d`)
    or an RFC 3339 / ISO 8601 time (`2026-11-30T08:00:00Z`; without an offset, local time).
    """
    word = text.strip()
    compact = word.replace(" ", "")
    if compact and _DURATIONS.fullmatch(compact):
        seconds = sum(float(n) * _UNIT_S[u] for n, u in _DURATION.findall(compact))
        return max(0.0, (time.time() if now is None else now) - seconds)
    from datetime import datetime

    try:
        moment = datetime.fromisoformat(word)
    except ValueError:
        raise click.BadParameter(
            f"{text!r} is neither a duration (10m, 2h, 1h30m, 45s, 2d) nor a time like "
            "2026-11-30T08:00:00+01:00"
        ) from None
    return max(0.0, moment.timestamp())  # a time without an offset is taken as local time


def _since(ctx: click.Context, param: click.Parameter, value: str | None) -> float | None:
    return None if value is None else parse_since(value)


def log_options(fn: F) -> F:
    """-n/--tail, --since and -t/--timestamps, as `docker logs` spells them."""
    fn = click.option(
        "-t",
        "--timestamps",
        is_flag=True,
        help="Show each line's time (RFC 3339, local time, milliseconds).",
    )(fn)
    fn = click.option(
        "--since",
        callback=_since,
        metavar="WHEN",
        help="Only lines since a duration ago (10m, 2h, 1h30m) or a time (2026-11-30T08:00:00).",
    )(fn)
    fn = click.option(
        "-n",
        "--tail",
        type=click.IntRange(min=0),
        metavar="N",
        help="Only the last N lines (then new ones with -f).",
    )(fn)
    return fn


def first_page_params(tail: int | None, since: float | None) -> dict[str, Any]:
    """The params that shape a log's first page: where it starts (`tail`) and `since`."""
    params: dict[str, Any] = {}
    if tail is not None:
        params["tail"] = tail
    if since is not None:
        params["since"] = since
    return params


@dataclass
class Owner:
    """One job or service whose lines are shown, with where its reading stands."""

    kind: str  # "job" or "service"
    key: int | str  # a job id or a service name
    label: str
    after_seq: int = 0
    started: bool = False  # the first page (with tail/since) was read
    done: bool = False  # a job that has ended and whose lines are all read

    def params(self, tail: int | None, since: float | None) -> dict[str, Any]:
        """The next page's params."""
        who = {"id": self.key} if self.kind == "job" else {"name": self.key}
        params = {**who, "after_seq": self.after_seq, "limit": LOG_PAGE}
        if not self.started:
            params.update(first_page_params(tail, since))
        return params


def parse_owner(word: str) -> Owner:
    """`svc:NAME`/`service:NAME`, `job:ID`, a number (a job) or a name (a service)."""
    kind, sep, rest = word.partition(":")
    if sep and kind in ("svc", "service"):
        if not rest:
            raise click.BadParameter(f"{word!r}: give a service name after {kind}:")
        return Owner("service", rest, rest)
    if sep and kind == "job":
        if not rest.isdigit() or int(rest) < 1:
            raise click.BadParameter(f"{word!r}: give a job id after job:")
        return Owner("job", int(rest), f"job:{int(rest)}")
    if word.isdigit() and int(word) >= 1:
        return Owner("job", int(word), f"job:{int(word)}")
    return Owner("service", word, word)


def read_round(
    s: Session, owners: list[Owner], tail: int | None, since: float | None
) -> tuple[list[tuple[Owner, dict[str, Any]]], bool]:
    """One page of new lines from each owner still read; (lines with owners, any page full)."""
    fetched: list[tuple[Owner, dict[str, Any]]] = []
    more = False
    for owner in owners:
        if owner.done:
            continue
        method = "job.logs" if owner.kind == "job" else "service.logs"
        page = s.call(method, owner.params(tail, since))
        owner.started = True
        owner.after_seq = page["next_seq"]
        fetched.extend((owner, line) for line in page["lines"])
        if len(page["lines"]) >= LOG_PAGE:
            more = True
        elif owner.kind == "job" and page.get("done"):
            owner.done = True
    return fetched, more


def show_merged(
    s: Session,
    owners: list[Owner],
    fetched: list[tuple[Owner, dict[str, Any]]],
    timestamps: bool,
) -> None:
    """Print lines of several owners in time order, each prefixed with its owner's label."""
    if not fetched:
        return
    order = {id(o): i for i, o in enumerate(owners)}
    fetched.sort(key=lambda pair: (pair[1]["ts"], order[id(pair[0])], pair[1]["seq"]))
    if s.as_json:
        for owner, line in fetched:
            record = {"owner": owner.label, "kind": owner.kind, **line}
            sys.stdout.write(orjson.dumps(record).decode() + "\n")
        sys.stdout.flush()
        return
    width = max(len(o.label) for o in owners)
    colour = output.use_colour()
    labels: dict[int, str] = {}
    for i, o in enumerate(owners):
        text = o.label.ljust(width) + " | "
        labels[id(o)] = (
            output.paint(text, OWNER_COLOURS[i % len(OWNER_COLOURS)]) if colour else text
        )
    by_line = {id(line): labels[id(owner)] for owner, line in fetched}
    lines: list[Mapping[str, Any]] = [line for _, line in fetched]
    output.write_log_lines(lines, timestamps=timestamps, prefix=lambda ln: by_line[id(ln)])


@click.command("logs")
@click.argument("owners", nargs=-1, metavar="[OWNER...]")
@click.option("-f", "--follow", is_flag=True, help="Keep printing new lines (Ctrl-C ends).")
@log_options
@click.option(
    "--max-wait", type=click.FloatRange(min=0), hidden=True, help="Stop following after S."
)
@json_option
@click.pass_obj
def logs(
    s: Session,
    owners: tuple[str, ...],
    follow: bool,
    tail: int | None,
    since: float | None,
    timestamps: bool,
    max_wait: float | None,
) -> None:
    """Show the output of services and jobs together, each line prefixed with its owner.

    OWNER is svc:NAME (or service:NAME), job:ID, a number (a job id) or a name (a
    service); without any, every service. Lines are merged in time order; -n is per
    owner. With -f, new lines
    follow until Ctrl-C, or until every owner is a job that has ended. With --json,
    each line is one JSON object with its owner.
    """
    if not owners:  # every service, as `docker compose logs` shows every container
        services = [x["name"] for x in s.call("service.list")["services"]]
        if not services:
            raise CliError("no services to show; name jobs as job:ID")
        owners = tuple(f"svc:{name}" for name in services)
    readers: list[Owner] = []
    seen: set[tuple[str, int | str]] = set()
    for word in owners:
        owner = parse_owner(word)
        if (owner.kind, owner.key) not in seen:
            seen.add((owner.kind, owner.key))
            readers.append(owner)
    deadline = None if max_wait is None else time.monotonic() + max_wait
    if not follow:
        # All of it first, then one merge: pages of one owner never pass another's lines.
        everything: list[tuple[Owner, dict[str, Any]]] = []
        more = True
        while more:
            fetched, more = read_round(s, readers, tail, since)
            everything += fetched
        show_merged(s, readers, everything, timestamps)
        return
    while True:
        fetched, more = read_round(s, readers, tail, since)
        show_merged(s, readers, fetched, timestamps)
        if more:
            continue
        if all(o.done for o in readers):
            return  # every owner is a job that has ended
        if deadline is not None and time.monotonic() >= deadline:
            return
        pause = FOLLOW_BUSY_S if fetched else FOLLOW_IDLE_S
        if deadline is not None:
            pause = min(pause, max(0.0, deadline - time.monotonic()))
        time.sleep(pause)
