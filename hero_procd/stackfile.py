"""Stack files as text: read one (stdlib tomllib) and say where in it a field is.

Import-light on purpose (tomllib and re only): the CLI reads the file and sends
its tables to `stack.apply`; when the daemon answers "invalid params:
services.web.restart: …", the CLI finds that table's line in the text here.
tomllib gives line numbers for syntax errors only; a semantic error (a wrong
value) is placed by finding the table header (`[services.web]`) and, below
it, the key (`restart = …`).
"""

from __future__ import annotations

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


def parse(text: str, file: str) -> dict[str, Any]:
    """The TOML document of a stack file, or StackFileError with the line tomllib names."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        message = str(exc)
        found = _SYNTAX_AT.search(message)
        line = int(found.group(1)) if found else None
        raise StackFileError(file, line, None, _SYNTAX_AT.sub("", message).strip()) from exc
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


def _key_pattern(key: str) -> str:
    """A TOML key as written bare or quoted."""
    return rf"(?:{re.escape(key)}|\"{re.escape(key)}\"|'{re.escape(key)}')"


def locate(text: str, field: str | None) -> int | None:
    """The 1-based line of `field` ("services.web.restart") in a stack file's text.

    The key's own line under its table header when found; else the header's
    line; else the first line naming the object; None if nothing matches.
    """
    if not field:
        return None
    parts = re.split(r"\.|\[", field.replace("]", ""))
    parts = [p.strip("'\"") for p in parts if p]
    lines = text.splitlines()
    if len(parts) == 1:
        key = re.compile(rf"^\s*{_key_pattern(parts[0])}\s*[=.\[]")
        header = re.compile(rf"^\s*\[\s*{_key_pattern(parts[0])}\s*[\].]")
        for i, line in enumerate(lines, 1):
            if key.match(line) or header.match(line):
                return i
        return None
    # The deepest table header that is a prefix of the field: [services.web] or
    # [services.web.health]; then the key of the rest below it.
    for depth in range(len(parts), 1, -1):
        path = r"\s*\.\s*".join(_key_pattern(p) for p in parts[:depth])
        header = re.compile(rf"^\s*\[\s*{path}\s*\]")
        for i, line in enumerate(lines, 1):
            if not header.match(line):
                continue
            if depth == len(parts):
                return i
            key = re.compile(rf"^\s*{_key_pattern(parts[depth])}\s*[=.]")
            for j in range(i, len(lines)):
                if lines[j].lstrip().startswith("["):
                    break
                if key.match(lines[j]):
                    return j + 1
            return i
    # Dotted keys or an inline table: the first line naming the object.
    name = re.compile(rf"(?:^|[\s.\[]){_key_pattern(parts[1])}\s*[=.\]]")
    for i, line in enumerate(lines, 1):
        if name.search(line):
            return i
    return None
