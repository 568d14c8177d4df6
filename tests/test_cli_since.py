"""`--since` of the log commands: durations and RFC 3339 times, and the owners of `logs`."""

from __future__ import annotations

import random
import time
from datetime import UTC, datetime

import click
import pytest

from hero_procd.cli.logs import owners_of, parse_owner, parse_since, show_merged
from hero_procd.cli.output import rfc3339
from hero_procd.cli.session import Session

NOW = 1_800_000_000.0


@pytest.mark.parametrize(
    ("text", "ago"),
    [("10m", 600), ("2h", 7200), ("1h30m", 5400), ("45s", 45), ("1.5s", 1.5), ("2d", 172800),
     ("250ms", 0.25), ("1m 30s", 90), ("0s", 0)],
)  # fmt: skip
def test_durations(text: str, ago: float) -> None:
    """A duration counts back from now."""
    assert parse_since(text, now=NOW) == pytest.approx(NOW - ago)


def test_times() -> None:
    """RFC 3339 with an offset or Z is exact; without an offset it is local time."""
    assert parse_since("2027-01-15T08:00:00Z") == datetime(2027, 1, 15, 8, tzinfo=UTC).timestamp()
    assert parse_since("2027-01-15T09:00:00.500+01:00") == pytest.approx(
        datetime(2027, 1, 15, 8, 0, 0, 500000, tzinfo=UTC).timestamp()
    )
    assert parse_since("2027-01-15T08:00:00") == datetime(2027, 1, 15, 8).timestamp()
    assert parse_since("100000d", now=NOW) == 0.0  # before the epoch: from the start


@pytest.mark.parametrize("text", ["", "10", "10x", "m", "yesterday", "1h-30m", "2027-13-01"])
def test_refused(text: str) -> None:
    """Anything else is a usage error that says what is expected."""
    with pytest.raises(click.BadParameter, match="duration"):
        parse_since(text, now=NOW)


@pytest.mark.parametrize("text", ["0001-01-01", "0001-01-01T00:00:00", "9999-12-31T23:59:59"])
@pytest.mark.parametrize("zone", ["UTC", "America/New_York", "Asia/Tokyo", "Pacific/Kiritimati"])
def test_local_times_at_the_ends_of_the_calendar(
    text: str, zone: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A local time with no Unix time in this zone is a usage error, never a traceback."""
    monkeypatch.setenv("TZ", zone)
    time.tzset()
    try:
        try:
            since = parse_since(text, now=NOW)
        except click.BadParameter as exc:
            assert "out of the range" in exc.message
        else:
            assert since >= 0.0
    finally:
        monkeypatch.undo()
        time.tzset()


@pytest.mark.parametrize(
    ("word", "kind", "key", "label"),
    [("web", "service", "web", "web"), ("svc:web", "service", "web", "web"),
     ("service:42", "service", "42", "42"), ("42", "job", 42, "job:42"),
     ("job:7", "job", 7, "job:7"), ("0", "service", "0", "0")],
)  # fmt: skip
def test_owners(word: str, kind: str, key: object, label: str) -> None:
    """svc:/service: name services, job: and plain numbers name jobs, other words services."""
    owner = parse_owner(word)
    assert (owner.kind, owner.key, owner.label) == (kind, key, label)


def test_merged_lines_keep_each_owners_order_when_the_clock_steps_back(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Lines are merged by time, but an owner whose clock stepped back (later lines stamped
    earlier) keeps its own order; equal times keep the owners' order."""
    web, db = parse_owner("web"), parse_owner("db")
    lines = [
        (web, {"seq": 1, "ts": 100.0, "stream": "stdout", "text": "w1"}),
        (web, {"seq": 2, "ts": 40.0, "stream": "stdout", "text": "w2"}),  # clock stepped back
        (web, {"seq": 3, "ts": 41.0, "stream": "stdout", "text": "w3"}),
        (db, {"seq": 1, "ts": 40.0, "stream": "stdout", "text": "d1"}),
        (db, {"seq": 2, "ts": 150.0, "stream": "stdout", "text": "d2"}),
    ]
    random.shuffle(lines)  # pages of several owners arrive in any order
    lines.sort(key=lambda pair: (pair[0].label, pair[1]["seq"]))  # each owner's in seq order
    show_merged(Session("unused.sock"), [web, db], lines, timestamps=False)
    shown = [ln.split(" | ")[1] for ln in capsys.readouterr().out.splitlines()]
    assert [t for t in shown if t[0] == "w"] == ["w1", "w2", "w3"]
    assert shown == ["d1", "w1", "w2", "w3", "d2"]


def test_timestamps_round_trip_through_since_across_dst(monkeypatch: pytest.MonkeyPatch) -> None:
    """The time `-t` shows, given back to `--since`, is the line's own time, in both hours of
    a fall-back (02:30 happens twice) and after a spring-forward; a naive ambiguous time
    is its first occurrence (more lines rather than fewer)."""
    monkeypatch.setenv("TZ", "Europe/Brussels")
    time.tzset()
    try:
        for moment in (
            datetime(2026, 10, 25, 0, 30, tzinfo=UTC),  # 02:30+02:00
            datetime(2026, 10, 25, 1, 30, tzinfo=UTC),  # 02:30+01:00, an hour later
            datetime(2026, 3, 29, 1, 30, tzinfo=UTC),  # 03:30+02:00
        ):
            ts = moment.timestamp() + random.randrange(1000) / 1000
            assert parse_since(rfc3339(ts)) == ts
        first = datetime(2026, 10, 25, 0, 30, tzinfo=UTC).timestamp()
        assert parse_since("2026-10-25T02:30:00") == first
    finally:
        monkeypatch.undo()
        time.tzset()


def test_owners_are_told_apart() -> None:
    """Each owner once; a service named like a job's label is labelled svc:NAME."""
    readers = owners_of(["svc:job:5", "5", "job:5", "web", "svc:web", "svc:42"])
    assert [(o.kind, o.key, o.label) for o in readers] == [
        ("service", "job:5", "svc:job:5"),
        ("job", 5, "job:5"),
        ("service", "web", "web"),
        ("service", "42", "42"),
    ]
    assert len({o.label for o in readers}) == len(readers)
