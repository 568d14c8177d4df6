"""Cheap, precise validation of request params.

Each reader names the field and the problem in its error
(`InvalidParams(field="jobs[3].timeout_s", problem="must be a number > 0")`),
and `finish()` rejects fields nobody asked for, so typos do not pass silently.
"""

from __future__ import annotations

import functools
import re
import sys
from collections.abc import Mapping
from typing import Any

from hero_procd.errors import InvalidParams

NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@:-]{0,127}")  # used with fullmatch
MAX_TEXT = 1 << 20
# Every integer the daemon accepts fits SQLite's INTEGER (a signed 64-bit value): a
# larger one raised OverflowError deep in the store and answered -32603.
INT64_MIN = -(1 << 63)
INT64_MAX = (1 << 63) - 1
# The largest finite float. rpc_schema/openrpc.json documents no maximum for durations
# (tests/test_schema.py holds the daemon to accepting what it documents), so the bound
# is finiteness: NaN, infinities and integers past float range (float() would raise
# OverflowError) are refused. The wire cannot carry them (orjson refuses), in-process
# callers can.
MAX_SECONDS = sys.float_info.max
NUL = "\0"


def check_text(value: str, field: str) -> str:
    """`value` if it has no NUL byte; a NUL would be cut silently on its way to a process.

    execve, chdir and the environment are C strings: `"a\\0b"` would run as `"a"`.
    """
    if NUL in value:
        raise InvalidParams(field, "must not contain a NUL character")
    return value


# The kernel takes one environment string ("NAME=value" and its NUL) of at most
# MAX_ARG_STRLEN = 32 pages; a longer one could never be given to a child (E2BIG).
MAX_ENV_STRING = 32 * 4096


def env_string_size(name: str, value: str) -> int:
    """Bytes of NAME=value with its NUL, as the kernel counts it against MAX_ENV_STRING."""
    return len(name.encode()) + 1 + len(value.encode()) + 1


def check_env_name(name: Any, field: str) -> str:
    """An environment variable name: a non-empty string without `=` or NUL.

    `{"C=D": "y"}` would otherwise set C to "D=y"; an empty name is not a variable.
    """
    if not isinstance(name, str) or not name:
        raise InvalidParams(field, "an environment variable name must be a non-empty string")
    if "=" in name or NUL in name:
        raise InvalidParams(field, "an environment variable name must not contain '=' or NUL")
    return name


# An IANA zone name: segments of letters, digits, _ + - joined by "/". No dot, so no
# "..", no absolute path, nothing that steers zoneinfo's file lookup elsewhere; the
# longest real name is 32 characters.
TZ_NAME_RE = re.compile(r"[A-Za-z0-9_+-]+(?:/[A-Za-z0-9_+-]+)*")
MAX_TZ_NAME = 64


@functools.cache
def _known_timezones() -> frozenset[str]:
    """Every zone name the host knows, read once (about 30 ms) and kept."""
    import zoneinfo  # lazily: the CLI imports this module's neighbours and must stay light

    return frozenset(zoneinfo.available_timezones())


def check_timezone_name(tz: Any, field: str = "timezone") -> str:
    """`tz` if it is a known IANA timezone name; else InvalidParams naming `field`.

    Checked by shape and against the host's list of zones before `ZoneInfo` ever
    opens a file, so a hostile name gets a short answer, never an OSError whose
    text shows where the zone files are installed.
    """
    if not isinstance(tz, str):
        raise InvalidParams(field, "must be a string")
    if len(tz) > MAX_TZ_NAME or not TZ_NAME_RE.fullmatch(tz):
        raise InvalidParams(
            field, f"must be an IANA timezone name like Europe/Brussels (<= {MAX_TZ_NAME} chars)"
        )
    known = _known_timezones()
    # A host without any zone list (no tzdata) falls back to ZoneInfo itself; the name
    # has the safe shape above, and the error text below never carries the exception's.
    if known and tz not in known:
        raise InvalidParams(field, f"unknown timezone {tz!r}")
    import zoneinfo

    try:
        zoneinfo.ZoneInfo(tz)
    except Exception as exc:  # ZoneInfoNotFoundError, ValueError, OSError: all "unknown"
        raise InvalidParams(field, f"unknown timezone {tz!r}") from exc
    return tz


class Params:
    """Typed access to one JSON object of params, with field paths for errors."""

    __slots__ = ("_prefix", "_raw", "_seen")

    def __init__(self, raw: Any, prefix: str = "") -> None:
        if raw is None:
            raw = {}
        if not isinstance(raw, Mapping):
            raise InvalidParams(prefix or None, "must be an object")
        self._raw: Mapping[str, Any] = raw
        self._prefix = prefix
        self._seen: set[str] = set()

    def path(self, name: str) -> str:
        """The full path of a field, for error messages ("" names the object itself)."""
        if not name:
            return self._prefix
        return f"{self._prefix}.{name}" if self._prefix else name

    def take(self, names: frozenset[str]) -> Mapping[str, Any]:
        """The raw object, with `names` marked as read (for a specialised reader)."""
        self._seen.update(names)
        return self._raw

    def take_all(self) -> Mapping[str, Any]:
        """The raw object, every field marked as read (the reader checks them itself)."""
        self._seen.update(self._raw)
        return self._raw

    def has(self, name: str) -> bool:
        """True if the field is present and not null."""
        return self._raw.get(name) is not None

    def _get(self, name: str, required: bool) -> Any:
        self._seen.add(name)
        value = self._raw.get(name)
        if value is None and required:
            raise InvalidParams(self.path(name), "is required")
        return value

    def raw(self, name: str) -> Any:
        """The field's value as sent, unchecked (None if absent)."""
        return self._get(name, False)

    def text(
        self,
        name: str,
        *,
        required: bool = False,
        default: str | None = None,
        name_like: bool = False,
    ) -> str | None:
        """A string field; `name_like` restricts it to an identifier-ish name."""
        value = self._get(name, required)
        if value is None:
            return default
        if not isinstance(value, str):
            raise InvalidParams(self.path(name), "must be a string")
        if name_like and not NAME_RE.fullmatch(value):
            raise InvalidParams(
                self.path(name), "must be 1-128 characters of letters, digits and _.@:- (not first)"
            )
        if len(value) > MAX_TEXT:
            raise InvalidParams(self.path(name), "is too long")
        # No field of any method needs a NUL, and several reach a process or a C API.
        return check_text(value, self.path(name))

    def req_text(self, name: str, *, name_like: bool = False) -> str:
        """A required string field."""
        value = self.text(name, required=True, name_like=name_like)
        assert value is not None
        return value

    def integer(
        self,
        name: str,
        *,
        required: bool = False,
        default: int | None = None,
        minimum: int | None = None,
        maximum: int | None = None,
    ) -> int | None:
        """An integer field (booleans are not integers here), always within 64 signed bits."""
        value = self._get(name, required)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int):
            raise InvalidParams(self.path(name), "must be an integer")
        low = INT64_MIN if minimum is None else max(minimum, INT64_MIN)
        high = INT64_MAX if maximum is None else min(maximum, INT64_MAX)
        if value < low:
            raise InvalidParams(self.path(name), f"must be >= {low}")
        if value > high:
            raise InvalidParams(self.path(name), f"must be <= {high}")
        return value

    def req_integer(self, name: str, *, minimum: int | None = None) -> int:
        """A required integer field (64-bit signed, like every integer)."""
        value = self.integer(name, required=True, minimum=minimum)
        assert value is not None
        return value

    def number(
        self,
        name: str,
        *,
        default: float | None = None,
        positive: bool = False,
        minimum: float | None = None,
        maximum: float = MAX_SECONDS,
    ) -> float | None:
        """A number field (int or float), finite (and at most `maximum` if given)."""
        value = self._get(name, False)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise InvalidParams(self.path(name), "must be a number")
        # `value != value` is NaN; compare before float(): a huge int would overflow it.
        if value != value or not -MAX_SECONDS <= value <= MAX_SECONDS:
            raise InvalidParams(self.path(name), "must be a finite number")
        if value > maximum:
            raise InvalidParams(self.path(name), f"must be <= {maximum:g}")
        if positive and not value > 0:
            raise InvalidParams(self.path(name), "must be a number > 0")
        if minimum is not None and value < minimum:
            raise InvalidParams(self.path(name), f"must be >= {minimum:g}")
        return float(value)

    def boolean(self, name: str, *, default: bool | None = None) -> bool | None:
        """A boolean field."""
        value = self._get(name, False)
        if value is None:
            return default
        if not isinstance(value, bool):
            raise InvalidParams(self.path(name), "must be a boolean")
        return value

    def choice(
        self, name: str, options: tuple[str, ...], *, default: str | None = None
    ) -> str | None:
        """A string field that must be one of `options`."""
        value = self.text(name, default=default)
        if value is not None and value not in options:
            raise InvalidParams(self.path(name), f"must be one of {', '.join(options)}")
        return value

    def text_list(
        self, name: str, *, non_empty: bool = False, name_like: bool = False
    ) -> list[str] | None:
        """A list of strings."""
        value = self._get(name, False)
        if value is None:
            return None
        if not isinstance(value, list):
            raise InvalidParams(self.path(name), "must be a list of strings")
        if non_empty and not value:
            raise InvalidParams(self.path(name), "must not be empty")
        for i, item in enumerate(value):
            if not isinstance(item, str):
                raise InvalidParams(f"{self.path(name)}[{i}]", "must be a string")
            if name_like and not NAME_RE.fullmatch(item):
                raise InvalidParams(f"{self.path(name)}[{i}]", "is not a valid name")
            check_text(item, f"{self.path(name)}[{i}]")
        return list(value)

    def text_map(self, name: str) -> dict[str, str] | None:
        """An object of string values (an environment, say)."""
        value = self._get(name, False)
        if value is None:
            return None
        if not isinstance(value, Mapping):
            raise InvalidParams(self.path(name), "must be an object of strings")
        for key, item in value.items():
            if not isinstance(item, str):
                raise InvalidParams(f"{self.path(name)}.{key}", "must be a string")
            check_text(key, f"{self.path(name)}.{key!r}")
            check_text(item, f"{self.path(name)}.{key}")
        return dict(value)

    def obj(self, name: str, *, required: bool = False) -> Params | None:
        """A nested object, itself read with Params."""
        value = self._get(name, required)
        if value is None:
            return None
        return Params(value, self.path(name))

    def obj_list(self, name: str, *, required: bool = False, non_empty: bool = False) -> list[Any]:
        """A list of objects, returned raw; read each with `Params(item, f"{path}[i]")`."""
        value = self._get(name, required)
        if value is None:
            return []
        if not isinstance(value, list):
            raise InvalidParams(self.path(name), "must be a list")
        if non_empty and not value:
            raise InvalidParams(self.path(name), "must not be empty")
        return value

    def finish(self) -> None:
        """Reject any field that no reader asked for."""
        unknown = [k for k in self._raw if k not in self._seen]
        if unknown:
            raise InvalidParams(self.path(sorted(unknown)[0]), "unknown field")
