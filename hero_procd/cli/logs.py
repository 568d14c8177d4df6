"""Log options shared by `job logs`, `service logs` and `hero-proc logs`, and the merged view.

`hero-proc logs [-f] [-n N] [--since S] [-t] OWNER...` shows the output of
several services and jobs together, each line prefixed with its owner, like
`docker compose logs`. An OWNER is `svc:NAME` (or `service:NAME`), `job:ID`,
a plain number (a job id) or any other word (a service name).

Import-light on purpose: click, orjson and hero_procd.client/errors/config only.
"""

from __future__ import annotations

import heapq
import itertools
import re
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import click
import orjson

from hero_procd.cli import output
from hero_procd.cli.options import INT64_MAX, json_option
from hero_procd.cli.session import CliError, Session
from hero_procd.errors import NotFound

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
    try:
        return max(0.0, moment.timestamp())  # a time without an offset is taken as local time
    except (ValueError, OverflowError, OSError):
        # A local time at the ends of the calendar (0001-01-01 east of UTC: "year 0 is
        # out of range") has no Unix time the platform can compute.
        raise click.BadParameter(f"{text!r} is out of the range of times") from None


def _since(ctx: click.Context, param: click.Parameter, value: str | None) -> float | None:
    return None if value is None else parse_since(value)


def _at_most_int64(ctx: click.Context, param: click.Parameter, value: int | None) -> int | None:
    return None if value is None else min(value, INT64_MAX)


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
        callback=_at_most_int64,  # more lines than the daemon counts: all of them
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
    done: bool = False  # a job that has ended and whose lines are all read, or deleted

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


def owners_of(words: Sequence[str]) -> list[Owner]:
    """The owners named on the command line, each once, with labels that tell them apart.

    A service may be named like a job's label (`svc:job:5` beside job 5): it is then
    labelled `svc:NAME`, so no two owners' lines carry the same prefix.
    """
    readers: list[Owner] = []
    seen: set[tuple[str, int | str]] = set()
    for word in words:
        owner = parse_owner(word)
        if (owner.kind, owner.key) not in seen:
            seen.add((owner.kind, owner.key))
            readers.append(owner)
    labels = Counter(o.label for o in readers)
    for owner in readers:
        if labels[owner.label] > 1 and owner.kind == "service":
            owner.label = f"svc:{owner.key}"
    return readers


def read_page(
    s: Session, owner: Owner, tail: int | None, since: float | None
) -> tuple[list[dict[str, Any]], bool]:
    """The owner's next page of lines; (lines, the page was full: more may follow)."""
    method = "job.logs" if owner.kind == "job" else "service.logs"
    try:
        page = s.call(method, owner.params(tail, since))
    except NotFound:
        if not owner.started:
            raise  # a name that never was: the command line is wrong
        # Deleted while read (a job cleaned, a service deleted): the others go on.
        owner.done = True
        sys.stderr.write(f"hero-proc: {owner.label} was deleted; its lines end here\n")
        sys.stderr.flush()
        return [], False
    owner.started = True
    owner.after_seq = page["next_seq"]
    lines: list[dict[str, Any]] = page["lines"]
    full = len(lines) >= LOG_PAGE
    if not full and owner.kind == "job" and page.get("done"):
        owner.done = True
    return lines, full


def read_round(
    s: Session, owners: list[Owner], tail: int | None, since: float | None
) -> tuple[list[tuple[Owner, dict[str, Any]]], bool]:
    """One page of new lines from each owner still read; (lines with owners, any page full)."""
    fetched: list[tuple[Owner, dict[str, Any]]] = []
    more = False
    for owner in owners:
        if owner.done:
            continue
        lines, full = read_page(s, owner, tail, since)
        fetched.extend((owner, line) for line in lines)
        more = more or full
    return fetched, more


def owner_lines(
    s: Session, owner: Owner, tail: int | None, since: float | None
) -> Iterator[tuple[Owner, dict[str, Any]]]:
    """Every line the owner has now, a page at a time (read as they are consumed)."""
    while not owner.done:
        lines, full = read_page(s, owner, tail, since)
        yield from ((owner, line) for line in lines)
        if not full:
            return


def show_merged(
    s: Session,
    owners: list[Owner],
    fetched: list[tuple[Owner, dict[str, Any]]],
    timestamps: bool,
) -> None:
    """Print lines of several owners in time order, each prefixed with its owner's label."""
    if not fetched:
        return
    by_owner: dict[int, list[tuple[Owner, dict[str, Any]]]] = {id(o): [] for o in owners}
    for pair in fetched:
        by_owner[id(pair[0])].append(pair)
    show_pairs(s, owners, merge_by_time(by_owner.values()), timestamps)


def merge_by_time(
    streams: Iterable[Iterable[tuple[Owner, dict[str, Any]]]],
) -> Iterator[tuple[Owner, dict[str, Any]]]:
    """Several owners' lines merged by time, each owner's lines kept in their own (seq)
    order: a wall clock stepped back (NTP, an operator) stamps later lines earlier, and a
    sort on the time alone would show an owner's lines out of the order they were written.
    Lazy: each stream is read as far as the merge needs it."""
    return heapq.merge(*streams, key=lambda pair: pair[1]["ts"])


def show_pairs(
    s: Session,
    owners: list[Owner],
    pairs: Iterable[tuple[Owner, dict[str, Any]]],
    timestamps: bool,
) -> None:
    """Print (owner, line) pairs in the order given, a page at a time."""
    if s.as_json:
        for owner, line in pairs:
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
    label_of: dict[int, str] = {}  # the chunk's lines' labels
    chunk: list[tuple[Owner, dict[str, Any]]] = []
    for pair in itertools.chain(pairs, [None]):
        if pair is not None:
            chunk.append(pair)
            if len(chunk) < LOG_PAGE:
                continue
        label_of.clear()
        label_of.update((id(line), labels[id(owner)]) for owner, line in chunk)
        lines = [line for _, line in chunk]
        output.write_log_lines(lines, timestamps=timestamps, prefix=lambda ln: label_of[id(ln)])
        chunk = []


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
    follow until Ctrl-C, or until every owner is a job that has ended or was deleted
    (an owner deleted meanwhile is said on stderr; the others go on). With --json,
    each line is one JSON object with its owner.
    """
    if not owners:  # every service, as `docker compose logs` shows every container
        services = [x["name"] for x in s.call("service.list")["services"]]
        if not services:
            raise CliError("no services to show; name jobs as job:ID")
        owners = tuple(f"svc:{name}" for name in services)
    readers = owners_of(owners)
    deadline = None if max_wait is None else time.monotonic() + max_wait
    if not follow:
        # A merge of every owner's pages read as it goes: one page per owner in memory,
        # whatever the size of the logs, and pages of one owner never pass another's lines.
        streams = [owner_lines(s, o, tail, since) for o in readers]
        show_pairs(s, readers, merge_by_time(streams), timestamps)
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
