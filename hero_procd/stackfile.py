"""Stack files as text: read one (stdlib tomllib) and say where in it a field is.

Import-light on purpose (tomllib, re and math only): the CLI reads the file and
sends its tables to `stack.apply`; when the daemon answers "invalid params:
services.web.restart: …", the CLI finds that field's line in the text here.
tomllib gives line numbers for syntax errors only; a semantic error (a wrong
value) is placed by a line scanner that follows headers and keys (`key_lines`).
"""

from __future__ import annotations

import datetime
import math
import re
import tomllib
from typing import Any

# The top-level keys of a stack file; the four tables map to *.define/*.set params.
KINDS = ("services", "actions", "schedules", "groups")
TOP_KEYS = frozenset({"stack", *KINDS})


class StackFileError(Exception):
    """A stack file that cannot be applied, with where: `file:line: field: problem`."""

    def __init__(self, file: str, line: int | None, field: str | None, problem: str) -> None:
        self.file, self.line, self.field, self.problem = file, line, field, problem
        where = f"{file}:{line}" if line is not None else file
        what = f"{field}: " if field else ""
        super().__init__(f"{where}: {what}{problem}")


_SYNTAX_AT = re.compile(r"\(at line (\d+), column \d+\)")
_AT_END = re.compile(r"\(at end of document\)")


# Arrays and inline tables nested deeper than this are refused before tomllib reads
# them: it recurses per level (RecursionError past ~1000), and JSON encoders stop at
# 255. No field of any stack file needs more than a handful.
MAX_NESTING = 32


def too_deep(text: str, limit: int = MAX_NESTING) -> int | None:
    """The line where arrays or inline tables first nest deeper than `limit`, if any."""
    depth, line, i, n = 0, 1, 0, len(text)
    while i < n:
        ch = text[i]
        if ch == "\n":
            line += 1
        elif ch == "#":
            end = text.find("\n", i)
            i = n if end == -1 else end
            continue
        elif ch in "\"'":
            delim = ch * 3 if text.startswith(ch * 3, i) else ch
            j = i + len(delim)
            while j < n and not text.startswith(delim, j):
                if text[j] == "\\" and ch == '"':
                    j += 1
                elif text[j] == "\n" and len(delim) == 1:
                    break  # an unterminated string: tomllib will say so
                j += 1
            line += text.count("\n", i, min(j, n))
            i = j + len(delim) if j < n and text[j] != "\n" else j
            continue
        elif ch in "[{":
            depth += 1
            if depth > limit:
                return line
        elif ch in "]}":
            depth = max(0, depth - 1)
        i += 1
    return None


def parse(text: str, file: str) -> dict[str, Any]:
    """The TOML document of a stack file, or StackFileError with the line tomllib names."""
    deep = too_deep(text)
    if deep is not None:
        raise StackFileError(
            file, deep, None, f"arrays or tables nested too deeply (more than {MAX_NESTING})"
        )
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        message = str(exc)
        found = _SYNTAX_AT.search(message)
        line = int(found.group(1)) if found else None
        if found is None and _AT_END.search(message):
            # A file cut short (still being written, say): the error is on its last line.
            line = max(1, len(text.splitlines()))
        message = _AT_END.sub("", _SYNTAX_AT.sub("", message)).strip()
        raise StackFileError(file, line, None, message) from exc
    unknown = sorted(set(doc) - TOP_KEYS)
    if unknown:
        raise StackFileError(
            file,
            locate(text, unknown[0]),
            unknown[0],
            "unknown top-level key (a stack file has stack, services, actions, schedules, groups)",
        )
    if not isinstance(doc.get("stack"), str):
        raise StackFileError(file, locate(text, "stack"), "stack", 'is required: stack = "NAME"')
    return doc


def not_json(value: Any, path: str = "") -> tuple[str, str] | None:
    """(path, problem) of the first value of a parsed stack file that JSON cannot carry.

    TOML has NaN, infinities and dates; JSON does not: sent over the wire a NaN
    would become null, which reads as "the default" (`start_secs = nan` would
    pass as 1.0), and a date a string (a tag `1979-05-27` would pass, where the
    daemon reading the file itself refuses it).
    """
    if isinstance(value, float) and not math.isfinite(value):
        return path, "must be a finite number"
    if isinstance(value, datetime.date | datetime.time):
        return path, "a TOML date or time is not a value of any field (quote it)"
    if isinstance(value, dict):
        for key, item in value.items():
            found = not_json(item, f"{path}.{key}" if path else str(key))
            if found is not None:
                return found
    elif isinstance(value, list):
        for i, item in enumerate(value):
            found = not_json(item, f"{path}[{i}]")
            if found is not None:
                return found
    return None


def _split_key(text: str) -> tuple[list[str], int] | None:
    """A TOML key at the start of `text` (bare, quoted or dotted): its parts and the index
    where it ends; None if `text` does not start with a key."""
    parts: list[str] = []
    i, n = 0, len(text)
    while True:
        while i < n and text[i] in " \t":
            i += 1
        if i < n and text[i] in "\"'":
            quote = text[i]
            end = i + 1
            while end < n and text[end] != quote:
                end += 2 if quote == '"' and text[end] == "\\" else 1
            if end >= n:
                return None
            parts.append(text[i + 1 : end])
            i = end + 1
        else:
            found = _BARE_KEY.match(text, i)
            if found is None:
                return None
            parts.append(found.group())
            i = found.end()
        while i < n and text[i] in " \t":
            i += 1
        if i < n and text[i] == ".":
            i += 1
            continue
        return parts, i


_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


def _opens_multiline(rest: str) -> str | None:
    """The delimiter of a multi-line string left open at the end of `rest`, if any."""
    for delim in ('"""', "'''"):
        at = rest.find(delim)
        if at != -1 and rest.count(delim, at) % 2 == 1:
            return delim
    return None


def _balance(text: str) -> int:
    """Brackets and braces opened minus closed in `text`, outside strings and comments."""
    depth = 0
    quote: str | None = None
    i = 0
    while i < len(text):
        ch = text[i]
        if quote is not None:
            if ch == "\\" and quote == '"':
                i += 1
            elif ch == quote:
                quote = None
        elif ch in "\"'":
            quote = ch
        elif ch == "#":
            break
        elif ch in "[{":
            depth += 1
        elif ch in "]}":
            depth -= 1
        i += 1
    return depth


def key_lines(text: str) -> list[tuple[list[str], int]]:
    """Each table header and key of a stack file as (full key path, 1-based line).

    A line scanner, not a TOML parser (tomllib gives no positions): it follows
    headers (`[a.b]`; `[[a.b]]` numbers its elements a.b.0, a.b.1, ...), dotted
    and quoted keys, and skips the inside of multi-line strings. Good enough to
    place an error in a file tomllib has accepted.
    """
    out: list[tuple[list[str], int]] = []
    table: list[str] = []
    elements: dict[tuple[str, ...], int] = {}
    closing: str | None = None
    depth = 0  # inside a value spread over lines (an array, say): no header or key there
    for number, line in enumerate(text.splitlines(), 1):
        if closing is not None:
            if line.count(closing) % 2 == 1:
                closing = None
            continue
        if depth > 0:
            depth = max(0, depth + _balance(line))
            continue
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.startswith("["):
            double = stripped.startswith("[[")
            key = _split_key(stripped[2 if double else 1 :])
            if key is None:
                continue
            path = key[0]
            if double:
                index = elements.get(tuple(path), 0)
                elements[tuple(path)] = index + 1
                path = [*path, f"[{index}]"]
            table = path
            out.append((table, number))
            continue
        key = _split_key(stripped)
        if key is None:
            continue
        out.append(([*table, *key[0]], number))
        closing = _opens_multiline(stripped[key[1] :])
        if closing is None:
            depth = max(0, _balance(stripped[key[1] :]))
    return out


def _dotted(parts: list[str]) -> str:
    """Key parts as a field path: `services.web.env.K`, `run.jobs[1].command`."""
    out = ""
    for part in parts:
        out += part if part.startswith("[") or not out else f".{part}"
    return out


def _within(inner: str, outer: str) -> bool:
    return inner == outer or inner.startswith((f"{outer}.", f"{outer}["))


_QUOTED = re.compile(r"'([^']*)'|\"([^\"]*)\"")


def locate(text: str, field: str | None) -> int | None:
    """The 1-based line of `field` ("services.web.restart") in a stack file's text.

    The line of the deepest header or key on the field's path (its own key when it
    is written, else its table's header); else the first line of something inside
    it (a dotted key under an object never headed); None if nothing matches.
    Compared as paths, not parts: a name may hold dots (`[services."web.1"]`).
    """
    if not field:
        return None
    want = _QUOTED.sub(lambda m: m.group(1) or m.group(2) or "", field)
    best: tuple[int, int] | None = None  # (score, line): a deeper match wins, then earlier
    for parts, number in key_lines(text):
        path = _dotted(parts)
        if _within(want, path):
            score = 2 * len(path)
        elif _within(path, want):
            score = 2 * len(want) - 1  # inside the field: just below an exact match
        else:
            continue
        if best is None or score > best[0]:
            best = (score, number)
    return None if best is None else best[1]
