"""`--since` of the log commands: durations and RFC 3339 times, and the owners of `logs`."""

from __future__ import annotations

from datetime import UTC, datetime

import click
import pytest

from hero_procd.cli.logs import parse_owner, parse_since

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
