"""The `hero-proc status` table and the plain-text pieces it is made of.

Its own small module because the fast path (`hero_procd.cli.fast`) imports it
on every `hero-proc status`: it loads nothing the interpreter has not already
loaded (os, sys), no click (colours are click's ANSI codes, written here), no
typing. `hero_procd.cli.output` re-exports all of it.
"""

from __future__ import annotations

import os
import sys

TYPE_CHECKING = False  # not typing's: importing typing costs the fast path ~3 ms
if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence
    from typing import IO, Any

    Painter = Callable[[str], str | None]

# Colour of a service state (or health) in a terminal: a click colour, or "dim".
STATE_COLOURS: dict[str, str] = {
    "running": "green",
    "starting": "yellow",
    "backoff": "yellow",
    "stopping": "yellow",
    "fatal": "red",
    "stopped": "dim",
    "exited": "dim",
    "healthy": "green",
    "degraded": "red",
}

# The SGR codes click.style writes for these colours (a test holds them equal), so
# that a terminal's table needs no click.
_SGR = {"dim": 2, "red": 31, "green": 32, "yellow": 33, "blue": 34, "magenta": 35, "cyan": 36}


def use_colour(stream: IO[str] | None = None) -> bool:
    """Colour only a terminal, and never when NO_COLOR is set to anything (no-color.org)."""
    if os.environ.get("NO_COLOR"):
        return False
    return (stream or sys.stdout).isatty()


def table(
    headers: Sequence[str],
    rows: Sequence[Sequence[str]],
    *,
    right: frozenset[int] = frozenset(),
    paint: Mapping[int, Painter] | None = None,
) -> str:
    """Rows under headers in aligned columns; `right` columns are right-aligned.

    `paint[col](cell)` names a click colour for a cell (or None); widths are
    measured on the plain text, so colour never breaks the alignment.
    """
    widths = [len(h) for h in headers]
    for row in rows:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))
    last = len(headers) - 1
    lines = []
    for n, row in enumerate([list(headers), *[list(r) for r in rows]]):
        cells = []
        for i, cell in enumerate(row):
            pad = " " * (widths[i] - len(cell))
            colour = paint[i](cell) if paint and n > 0 and i in paint else None
            text = _styled(cell, colour) if colour else cell
            if i in right:
                cells.append(pad + text)
            else:
                cells.append(text if i == last else text + pad)
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def _styled(text: str, colour: str) -> str:
    """`text` in a colour of `_SGR` (or `dim`), as click.style would write it."""
    return f"\x1b[{_SGR[colour]}m{text}\x1b[0m"


def duration(seconds: float | None) -> str:
    """Seconds as `H:MM:SS`, with a `Nd ` prefix past a day; `-` for None."""
    if seconds is None:
        return "-"
    total = int(seconds)
    days, rest = divmod(total, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    clock = f"{hours}:{minutes:02d}:{secs:02d}"
    return f"{days}d {clock}" if days else clock


def size(n: int | None) -> str:
    """Bytes in binary units (`512B`, `12.3M`); `-` for None."""
    if n is None:
        return "-"
    value = float(n)
    for unit in ("B", "K", "M", "G", "T"):
        if value < 1024 or unit == "T":
            return f"{int(value)}{unit}" if unit == "B" else f"{value:.1f}{unit}"
        value /= 1024
    raise AssertionError("unreachable")


def percent(p: float | None) -> str:
    """A CPU share as `12.5%`; `-` for None."""
    return "-" if p is None else f"{p:.1f}%"


def restarts(service: Mapping[str, Any]) -> str:
    """Automatic restarts, then those asked for by service.restart: `3`, `3 (+1)`."""
    auto = int(service.get("restarts") or 0)
    manual = int(service.get("manual_restarts") or 0)
    return f"{auto} (+{manual})" if manual else str(auto)


def status_table(result: Mapping[str, Any], *, colour: bool) -> str:
    """The `service.status_all` result as the `hero-proc status` table."""
    rows = [
        [
            x["name"],
            x["state"],
            x.get("health") or "-",
            "-" if x.get("pid") is None else str(x["pid"]),
            duration(x.get("uptime_s")),
            restarts(x),
            size(x.get("memory_bytes")),
            percent(x.get("cpu_percent")),
        ]
        for x in result["services"]
    ]
    return table(
        ["NAME", "STATE", "HEALTH", "PID", "UPTIME", "RESTARTS", "MEMORY", "CPU"],
        rows,
        right=frozenset({3, 4, 5, 6, 7}),
        paint={1: STATE_COLOURS.get, 2: STATE_COLOURS.get} if colour else None,
    )
