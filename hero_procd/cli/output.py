"""Plain text for people: aligned tables, key/value details, durations and sizes.

The status table and its pieces live in `hero_procd.cli.text` (the fast path's
import) and are re-exported here. No click, typing or orjson at import.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import IO, Any

from hero_procd.cli.text import (
    _SGR,
    STATE_COLOURS,
    _styled,
    duration,
    percent,
    size,
    status_table,
    table,
    use_colour,
)

# A cell's colour (a click colour name, or "dim"), or None: see `table`.
Painter = Callable[[str], str | None]

__all__ = [
    "STATE_COLOURS",
    "_SGR",
    "_styled",
    "duration",
    "percent",
    "size",
    "status_table",
    "table",
    "use_colour",
]


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
