"""Bounds of the input: 64-bit integers, finite durations, NUL, env names, timezone names.

Each case is an InvalidParams naming the field, never an OverflowError, an OSError
or a string cut short at spawn.
"""

from __future__ import annotations

from typing import Any

import pytest

from hero_procd.engine.scheduler import check_timezone
from hero_procd.errors import InvalidParams
from hero_procd.model import job_request_from, parse_service_spec
from hero_procd.params import INT64_MAX, INT64_MIN, MAX_SECONDS, Params, check_timezone_name


def invalid(fn: Any, *args: Any, **kwargs: Any) -> InvalidParams:
    """The InvalidParams that `fn(*args, **kwargs)` raises."""
    with pytest.raises(InvalidParams) as info:
        fn(*args, **kwargs)
    return info.value


@pytest.mark.parametrize("value", [2**63, 2**64 - 1, 2**200])
def test_integer_over_64_bits_is_refused(value: int) -> None:
    """Every integer field tops out at 2^63-1, with or without its own maximum."""
    err = invalid(Params({"id": value}).integer, "id", minimum=1)
    assert (err.field, err.problem) == ("id", f"must be <= {INT64_MAX}")
    err = invalid(Params({"n": value}).integer, "n", maximum=2**70)
    assert err.problem == f"must be <= {INT64_MAX}"


def test_integer_under_64_bits_is_refused() -> None:
    """Below -2^63 is refused even where no minimum is given."""
    err = invalid(Params({"n": INT64_MIN - 1}).integer, "n")
    assert err.problem == f"must be >= {INT64_MIN}"
    assert Params({"n": INT64_MIN}).integer("n") == INT64_MIN
    assert Params({"n": INT64_MAX}).req_integer("n", minimum=1) == INT64_MAX


def test_negative_ids_are_refused() -> None:
    """A minimum still applies, and is what the message names."""
    err = invalid(Params({"after_seq": -1}).integer, "after_seq", minimum=0)
    assert (err.field, err.problem) == ("after_seq", "must be >= 0")


@pytest.mark.parametrize(
    "value", [MAX_SECONDS * 2, 10**400, -(10**400), float("nan"), float("inf")]
)
def test_number_must_be_finite_and_bounded(value: float) -> None:
    """Durations are finite; a huge int never reaches float() (OverflowError)."""
    err = invalid(Params({"t": value}).number, "t", minimum=0)
    assert (err.field, err.problem) == ("t", "must be a finite number")
    err = invalid(job_request_from, {"command": ["x"], "timeout_s": value}, "jobs[0]")
    assert err.field == "jobs[0].timeout_s"


def test_number_negative_infinity() -> None:
    """-inf and ints below float range are refused with or without a minimum."""
    assert invalid(Params({"t": float("-inf")}).number, "t").problem == "must be a finite number"
    assert invalid(Params({"t": -(10**400)}).number, "t").problem == "must be a finite number"
    assert Params({"t": 2**31}).number("t", minimum=0) == 2.0**31  # as the schema allows


@pytest.mark.parametrize(
    ("job", "field"),
    [
        ({"command": ["/bin/echo", "a\0b", "c"]}, "command[1]"),
        ({"script": "echo a\0b"}, "script"),
        ({"script": "x", "interpreter": ["/bin/sh\0"]}, "interpreter[0]"),
        ({"script": "x", "interpreter": "/bin/\0sh"}, "interpreter[0]"),
        ({"command": ["x"], "cwd": "/tmp\0/nope"}, "cwd"),
        ({"command": ["x"], "env": {"A": "b\0c"}}, "env.A"),
        ({"command": ["x"], "env": {"A\0B": "c"}}, "env.'A\\x00B'"),
        ({"command": ["x"], "env": {"C=D": "y"}}, "env.'C=D'"),
        ({"command": ["x"], "env": {"": "y"}}, "env.''"),
        ({"command": ["x"], "env_from_secrets": {"A=B": "s"}}, "env_from_secrets.'A=B'"),
        ({"command": ["x"], "env_from_secrets": {"": "s"}}, "env_from_secrets.''"),
    ],
)
def test_what_reaches_a_process_has_no_nul(job: dict[str, Any], field: str) -> None:
    """NUL in argv, script, interpreter, cwd or env, and bad env names, are -32602."""
    err = invalid(job_request_from, job, "jobs[2]")
    assert err.field == f"jobs[2].{field}"


def test_env_names_that_are_fine() -> None:
    """Ordinary names pass, and so do values with '=' (only names may not have it)."""
    req = job_request_from({"command": ["x"], "env": {"A_1": "b=c", "lower": ""}})
    assert req.spec.env == {"A_1": "b=c", "lower": ""}


def test_health_exec_and_text_fields_refuse_nul() -> None:
    """A health check's argv, and any text read through Params, refuse NUL."""
    p = Params({"command": ["x"], "health": {"exec": ["/bin/true", "a\0"]}})
    assert invalid(parse_service_spec, p).field == "health.exec[1]"
    assert invalid(Params({"value": "s\0"}).req_text, "value").field == "value"
    assert invalid(Params({"tags": ["a", "\0"]}).text_list, "tags").field == "tags[1]"


@pytest.mark.parametrize(
    "tz",
    [
        "a" * 300,
        "Europe/" + "x" * 250,
        "../../../../etc/passwd",
        "/etc/localtime",
        "Europe/../Europe/Paris",
        "Europe\0/Paris",
        "",
        "Not/AZone",
        "UTC ",
    ],
)
def test_bad_timezones_never_show_a_path(tz: str) -> None:
    """Any odd name is InvalidParams on `timezone`, and its text names no install path."""
    err = invalid(check_timezone, tz)
    assert err.field == "timezone"
    assert "/usr" not in str(err) and "site-packages" not in str(err)
    assert "zoneinfo" not in str(err).lower()


@pytest.mark.parametrize("tz", ["UTC", "Europe/Brussels", "America/Argentina/Buenos_Aires"])
def test_good_timezones(tz: str) -> None:
    """Real zone names, nested ones included, pass."""
    check_timezone(tz)
    assert check_timezone_name(tz) == tz
