"""Plain text for people: aligned tables, key/value details, durations and sizes.

Imported by the fast path of `hero-proc status` (`hero_procd.cli.fast`), so it
loads only what the interpreter has already loaded (os, sys, time): no click
(colours are written as ANSI codes here), no typing, no orjson at import.
"""

from __future__ import annotations

import os
import sys
import time

# Not `from typing import TYPE_CHECKING`: importing typing costs the fast path ~3 ms.
TYPE_CHECKING = False
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


def details(obj: Mapping[str, Any], *, skip: frozenset[str] = frozenset()) -> str:
    """One `key  value` line per field, keys aligned; multi-line values indented."""
    keys = [k for k in obj if k not in skip]
    if not keys:
        return ""
    width = max(len(k) for k in keys)
    lines = []
    for key in keys:
        text = value_text(key, obj[key])
        first, *rest = text.split("\n")
        lines.append(f"{key.ljust(width)}  {first}".rstrip())
        lines.extend(f"{' ' * width}  {line}".rstrip() for line in rest)
    return "\n".join(lines)


def value_text(key: str, value: Any) -> str:
    """A field's value as people read it; the field name decides timestamps and argv."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int | float):
        if key.endswith("_at") or key == "not_before":
            return timestamp(value) if value else "-"
        if key == "uptime_s":
            return duration(value)
        if key == "memory_bytes":
            return size(int(value))
        if key == "cpu_percent":
            return percent(value)
        return str(value)
    if isinstance(value, list):
        if any(isinstance(v, dict | list) for v in value):
            import orjson

            return orjson.dumps(value).decode()  # a run's jobs, say: JSON reads best
        if key in ("command", "interpreter", "exec"):
            import shlex

            return shlex.join(str(v) for v in value)
        return ", ".join(str(v) for v in value) if value else "-"
    if isinstance(value, dict):
        if not value:
            return "-"
        return ", ".join(f"{k}={value_text(str(k), v)}" for k, v in value.items())
    return str(value)


def timestamp(ts: float) -> str:
    """A Unix time as local `YYYY-MM-DD HH:MM:SS`."""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


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


def command_text(obj: Mapping[str, Any], limit: int = 60) -> str:
    """What a job, action or service runs, in one short line."""
    import shlex

    if obj.get("action"):
        text = f"action {obj['action']}"
    elif obj.get("command"):
        text = shlex.join(str(v) for v in obj["command"])
    elif obj.get("script") is not None:
        first = str(obj["script"]).strip().split("\n", 1)[0]
        text = f"script: {first}"
    else:
        text = "-"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def status_table(result: Mapping[str, Any], *, colour: bool) -> str:
    """The `service.status_all` result as the `hero-proc status` table."""
    rows = [
        [
            x["name"],
            x["state"],
            x.get("health") or "-",
            "-" if x.get("pid") is None else str(x["pid"]),
            duration(x.get("uptime_s")),
            str(x.get("restarts", 0)),
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


def rfc3339(ts: float) -> str:
    """A Unix time as RFC 3339 local time with milliseconds: `2026-11-30T08:15:02.123+01:00`."""
    from datetime import datetime

    return datetime.fromtimestamp(ts).astimezone().isoformat(timespec="milliseconds")


def paint(text: str, colour: str) -> str:
    """`text` in a terminal colour (a key of the SGR table: green, dim, ...)."""
    return _styled(text, colour)


def write_log_lines(
    lines: Sequence[Mapping[str, Any]],
    *,
    timestamps: bool = False,
    prefix: Callable[[Mapping[str, Any]], str] | None = None,
) -> None:
    """Each line's text: stdout lines to stdout, stderr lines to stderr, in order.

    `timestamps` puts the line's time first (`rfc3339`); `prefix(line)` goes before
    all of it (the owner's label in a merged view).
    """
    if not lines:
        return
    current = None
    for line in lines:
        out = sys.stderr if line["stream"] == "stderr" else sys.stdout
        if out is not current:
            if current is not None:
                current.flush()  # keep the order where both streams reach one terminal
            current = out
        text = line["text"]
        if timestamps:
            text = f"{rfc3339(line['ts'])} {text}"
        if prefix is not None:
            text = prefix(line) + text
        out.write(text + "\n")
    assert current is not None
    current.flush()


def job_status_line(job: Mapping[str, Any]) -> str:
    """`job 12 failed in 1.2s: exited with code 3`, the outcome of a job in one line."""
    text = f"job {job['id']} {job['status']}"
    if job.get("started_at") and job.get("finished_at"):
        text += f" in {job['finished_at'] - job['started_at']:.1f}s"
    if job.get("error"):  # the daemon's words: exit code, signal, timeout, spawn failure
        text += ": " + " ".join(str(job["error"]).split())
    elif job.get("exit_code") is not None:
        text += f" (exit {job['exit_code']})"
    return text


def service_status_line(st: Mapping[str, Any]) -> str:
    """`service web running (pid 12, degraded)`, a service's live status in one line."""
    facts = []
    if st.get("pid") is not None:
        facts.append(f"pid {st['pid']}")
    if st.get("state") not in ("running", "starting", "stopping"):
        if st.get("signal") is not None:
            facts.append(f"signal {st['signal']}")
        elif st.get("exit_code") is not None:
            facts.append(f"exit {st['exit_code']}")
    if st.get("health"):
        facts.append(str(st["health"]))
    return f"service {st['name']} {st['state']}" + (f" ({', '.join(facts)})" if facts else "")


class Progress:
    """A live line on stderr (`job 12: 0/1 done, running, 3.4s`), only when stderr is a terminal.

    Redrawn in place with a carriage return; `clear()` removes it before the final
    output, so a pipe or a log file never sees it.
    """

    def __init__(self, label: str, stream: IO[str] | None = None) -> None:
        self.label = label
        self.stream = stream or sys.stderr
        self.enabled = self.stream.isatty()
        self.started = time.monotonic()
        self.shown = False

    def update(self, done: int, total: int, detail: str = "") -> None:
        """Redraw the line: done/total, a detail (states), the time since the start."""
        if not self.enabled:
            return
        elapsed = time.monotonic() - self.started
        text = f"{self.label}: {done}/{total} done"
        if detail:
            text += f", {detail}"
        text += f", {elapsed:.1f}s"
        self.stream.write("\r\x1b[K" + text)
        self.stream.flush()
        self.shown = True

    def clear(self) -> None:
        """Remove the line (the cursor goes back to the start of an empty line)."""
        if self.shown:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
            self.shown = False


def counts_text(counts: Mapping[str, int]) -> str:
    """`3 running, 1 failed`: counts by status, in a stable order, zeros left out."""
    order = (
        "running",
        "queued",
        "succeeded",
        "failed",
        "timed_out",
        "cancelled",
        "lost",
        "skipped",
    )
    known = [f"{counts[k]} {k}" for k in order if counts.get(k)]
    others = [f"{n} {k}" for k, n in sorted(counts.items()) if k not in order and n]
    return ", ".join(known + others)
