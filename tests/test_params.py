"""Params: every reader's acceptance, rejection, and the field path of its errors."""

from __future__ import annotations

from typing import Any

import pytest

from hero_procd.errors import InvalidParams
from hero_procd.params import MAX_TEXT, Params


def rejects(raw: Any, read: str, *args: Any, **kwargs: Any) -> InvalidParams:
    """The InvalidParams that `Params(raw).<read>(*args, **kwargs)` raises."""
    with pytest.raises(InvalidParams) as info:
        getattr(Params(raw), read)(*args, **kwargs)
    return info.value


def test_params_must_be_an_object() -> None:
    """A non-object is rejected (with its prefix as field); None reads as an empty object."""
    with pytest.raises(InvalidParams) as info:
        Params([1, 2])
    assert (info.value.field, info.value.problem) == (None, "must be an object")
    with pytest.raises(InvalidParams) as info:
        Params("x", "jobs[2]")
    assert info.value.field == "jobs[2]"
    empty = Params(None)
    assert empty.text("a") is None
    empty.finish()


def test_error_carries_field_and_problem() -> None:
    """InvalidParams exposes field and problem, as attributes, in data and in its text."""
    err = rejects({"n": "x"}, "integer", "n")
    assert err.field == "n"
    assert err.problem == "must be an integer"
    assert err.data == {"field": "n", "problem": "must be an integer"}
    assert str(err) == "invalid params: n: must be an integer"


def test_text() -> None:
    """text reads strings, applies defaults, rejects non-strings and over-long text."""
    p = Params({"s": "hello", "empty": ""})
    assert p.text("s") == "hello"
    assert p.text("empty") == ""
    assert p.text("absent") is None
    assert p.text("absent", default="d") == "d"
    assert p.req_text("s") == "hello"
    assert rejects({}, "text", "s", required=True).problem == "is required"
    assert rejects({"s": None}, "req_text", "s").field == "s"
    assert rejects({"s": 5}, "text", "s").problem == "must be a string"
    assert rejects({"s": ["a"]}, "text", "s").problem == "must be a string"
    assert rejects({"s": "x" * (MAX_TEXT + 1)}, "text", "s").problem == "is too long"
    assert Params({"s": "x" * MAX_TEXT}).text("s") == "x" * MAX_TEXT


@pytest.mark.parametrize("name", ["a", "web-1", "A_b.c@d:e", "9lives", "x" * 128])
def test_text_name_like_accepts(name: str) -> None:
    """Names of letters, digits and _.@:- (not leading), up to 128 characters, pass."""
    assert Params({"n": name}).text("n", name_like=True) == name


@pytest.mark.parametrize("name", ["", "-lead", ".hidden", "has space", "a/b", "x" * 129, "é"])
def test_text_name_like_rejects(name: str) -> None:
    """Empty, leading punctuation, spaces, slashes, too long or non-ASCII names fail."""
    err = rejects({"n": name}, "text", "n", name_like=True)
    assert err.field == "n"
    assert "1-128 characters" in err.problem


def test_integer_bounds_and_bool_rejection() -> None:
    """integer checks type (booleans and floats are not integers) and inclusive bounds."""
    p = Params({"i": 5, "zero": 0})
    assert p.integer("i", minimum=5, maximum=5) == 5
    assert p.integer("zero") == 0
    assert p.integer("absent", default=7) == 7
    assert p.req_integer("i", minimum=1) == 5
    assert rejects({"i": True}, "integer", "i").problem == "must be an integer"
    assert rejects({"i": False}, "integer", "i").problem == "must be an integer"
    assert rejects({"i": 1.0}, "integer", "i").problem == "must be an integer"
    assert rejects({"i": "1"}, "integer", "i").problem == "must be an integer"
    assert rejects({"i": 4}, "integer", "i", minimum=5).problem == "must be >= 5"
    assert rejects({"i": 6}, "integer", "i", maximum=5).problem == "must be <= 5"
    assert rejects({}, "req_integer", "i").problem == "is required"
    assert rejects({"i": -1}, "req_integer", "i", minimum=0).problem == "must be >= 0"


def test_number_positive_and_minimum() -> None:
    """number accepts ints and floats as float; positive excludes 0; minimum is inclusive."""
    p = Params({"f": 1.5, "i": 2, "z": 0})
    assert p.number("f") == 1.5
    got = p.number("i")
    assert got == 2.0 and isinstance(got, float)
    assert p.number("z", minimum=0) == 0.0
    assert p.number("absent", default=3.0) == 3.0
    assert rejects({"n": 0}, "number", "n", positive=True).problem == "must be a number > 0"
    assert rejects({"n": -0.5}, "number", "n", positive=True).problem == "must be a number > 0"
    assert rejects({"n": -1}, "number", "n", minimum=0).problem == "must be >= 0"
    assert rejects({"n": True}, "number", "n").problem == "must be a number"
    assert rejects({"n": "1.5"}, "number", "n").problem == "must be a number"


def test_boolean() -> None:
    """boolean accepts only true/false, not 0/1 or strings."""
    p = Params({"t": True, "f": False})
    assert p.boolean("t") is True
    assert p.boolean("f") is False
    assert p.boolean("absent", default=True) is True
    assert p.boolean("absent") is None
    assert rejects({"b": 1}, "boolean", "b").problem == "must be a boolean"
    assert rejects({"b": "true"}, "boolean", "b").problem == "must be a boolean"


def test_choice() -> None:
    """choice accepts one of the options and names them when rejecting."""
    opts = ("always", "never")
    assert Params({"c": "never"}).choice("c", opts) == "never"
    assert Params({}).choice("c", opts, default="always") == "always"
    err = rejects({"c": "sometimes"}, "choice", "c", opts)
    assert (err.field, err.problem) == ("c", "must be one of always, never")
    assert rejects({"c": 1}, "choice", "c", opts).problem == "must be a string"


def test_text_list() -> None:
    """text_list checks the list and each item, naming the bad item's index."""
    assert Params({"l": ["a", "b"]}).text_list("l") == ["a", "b"]
    assert Params({"l": []}).text_list("l") == []
    assert Params({}).text_list("l") is None
    assert rejects({"l": "a"}, "text_list", "l").problem == "must be a list of strings"
    assert rejects({"l": []}, "text_list", "l", non_empty=True).problem == "must not be empty"
    err = rejects({"l": ["a", 2]}, "text_list", "l")
    assert (err.field, err.problem) == ("l[1]", "must be a string")
    err = rejects({"l": ["ok", "bad name"]}, "text_list", "l", name_like=True)
    assert (err.field, err.problem) == ("l[1]", "is not a valid name")


def test_text_map() -> None:
    """text_map reads an object of strings and names a bad value by its key."""
    assert Params({"env": {"A": "1", "B": ""}}).text_map("env") == {"A": "1", "B": ""}
    assert Params({}).text_map("env") is None
    assert rejects({"env": ["A=1"]}, "text_map", "env").problem == "must be an object of strings"
    err = rejects({"env": {"A": "1", "N": 2}}, "text_map", "env")
    assert (err.field, err.problem) == ("env.N", "must be a string")


def test_obj_nested_paths() -> None:
    """Nested objects carry their path into every error, at any depth."""
    p = Params({"health": {"check": {"port": "eighty"}}})
    health = p.obj("health")
    assert health is not None
    check = health.obj("check")
    assert check is not None
    assert check.path("port") == "health.check.port"
    with pytest.raises(InvalidParams) as info:
        check.integer("port")
    assert info.value.field == "health.check.port"
    assert Params({}).obj("health") is None
    assert rejects({}, "obj", "health", required=True).field == "health"
    err = rejects({"health": 3}, "obj", "health")
    assert (err.field, err.problem) == ("health", "must be an object")


def test_obj_list() -> None:
    """obj_list returns the raw list; items read with an indexed prefix report that path."""
    p = Params({"jobs": [{"a": 1}, {"a": "x"}]})
    items = p.obj_list("jobs")
    assert items == [{"a": 1}, {"a": "x"}]
    with pytest.raises(InvalidParams) as info:
        Params(items[1], f"{p.path('jobs')}[1]").integer("a")
    assert info.value.field == "jobs[1].a"
    assert Params({}).obj_list("jobs") == []
    assert rejects({}, "obj_list", "jobs", required=True).problem == "is required"
    assert rejects({"jobs": {"a": 1}}, "obj_list", "jobs").problem == "must be a list"
    assert rejects({"jobs": []}, "obj_list", "jobs", non_empty=True).problem == "must not be empty"


def test_finish_rejects_unknown_fields_with_their_path() -> None:
    """finish() names the first unknown field (sorted), with its full path."""
    p = Params({"name": "x", "zeta": 1, "alpha": 2})
    p.text("name")
    with pytest.raises(InvalidParams) as info:
        p.finish()
    assert (info.value.field, info.value.problem) == ("alpha", "unknown field")

    outer = Params({"health": {"interval_s": 1, "intervall_s": 2}})
    inner = outer.obj("health")
    assert inner is not None
    inner.number("interval_s")
    with pytest.raises(InvalidParams) as info:
        inner.finish()
    assert info.value.field == "health.intervall_s"
    outer.finish()  # "health" itself was read


def test_finish_counts_absent_reads_and_raw_as_seen() -> None:
    """A field read by any reader (including raw and an absent-then-present null) is known."""
    p = Params({"a": None, "b": {"x": 1}, "c": 1})
    assert p.text("a") is None
    assert p.raw("b") == {"x": 1}
    assert p.has("c")
    assert not p.has("a")
    with pytest.raises(InvalidParams) as info:
        p.finish()  # has() does not mark a field as read
    assert info.value.field == "c"
    p.integer("c")
    p.finish()


def test_text_name_like_rejects_trailing_newline() -> None:
    """A name with a trailing newline is not a name (`$` alone would let it through)."""
    err = rejects({"n": "web\n"}, "text", "n", name_like=True)
    assert err.field == "n"
    err = rejects({"l": ["web\n"]}, "text_list", "l", name_like=True)
    assert err.field == "l[0]"
