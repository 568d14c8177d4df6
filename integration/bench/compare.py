"""Before / after: the issue-8 figures of several `make bench` records side by side.

    python -m integration.bench.compare before=b1.json,b2.json after=a1.json,a2.json

Each argument is a label and the records (results/latest.json files, one per
run) measured under it, e.g. `--daemon ../wt-before` runs and this checkout's
runs. Prints a Markdown table: one line per figure, one column per run, each
cell the figure and its ratio to the baseline measured in that same run.
"""

from __future__ import annotations

import datetime
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from integration.bench.common import fmt


@dataclass(frozen=True)
class Figure:
    """One row of a benchmark's table, picked by benchmark name and row index."""

    label: str
    bench: str
    row: int
    show_ratio: bool = True


FIGURES = [
    Figure("1,000 concurrent `job.submit`: p50", "clients", 0),
    Figure("↳ p99 (target ≤ 300 ms)", "clients", 1),
    Figure("↳ max", "clients", 2),
    Figure("`system.ping` during `submit_batch` 50,000: p50", "ping", 0),
    Figure("↳ p99 (target ≤ 20 ms)", "ping", 1),
    Figure("↳ max (target ≤ 100 ms)", "ping", 2),
    Figure("`system.ping` during 5 `job.list` 10,000: p50", "ping", 3),
    Figure("↳ p99 (target ≤ 20 ms)", "ping", 4),
    Figure("↳ max (target ≤ 100 ms)", "ping", 5),
    Figure("10,000 `/bin/true`, max-parallel 16 (target ratio ≥ 0.75)", "throughput", 0),
    Figure("`job.submit_batch` 50,000 vs executemany (target ratio ≤ 2.0)", "batch", 1),
]
BASELINES = {
    "clients": "same 1,000 connections calling `system.ping` at once",
    "ping": "the same sampler on the idle daemon",
    "throughput": "posix_spawn+waitpid keeping 16 in flight, same run",
    "batch": "sqlite3 executemany of the same rows, one transaction, same run",
}


def cell(record: dict[str, Any], fig: Figure) -> str:
    """`figure (ratio)` of one row of one record, or why there is none."""
    bench = record["benchmarks"].get(fig.bench)
    if bench is None:
        return "not run"
    if bench["status"] != "ok":
        return str(bench["status"])
    row = bench["rows"][fig.row]
    text = fmt(row["ours"], row["unit"])
    if fig.show_ratio and row["ratio"] is not None:
        text += f" ({row['ratio']:.2f}x)"
    if row["met"] is False:
        text = f"**{text}**"
    return text


def table(columns: list[tuple[str, dict[str, Any]]]) -> str:
    """The Markdown table: a line per figure, a column per record."""
    head = ["figure", *(label for label, _ in columns)]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    for fig in FIGURES:
        cells = [fig.label, *(cell(record, fig) for _, record in columns)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def load(spec: str) -> list[tuple[str, dict[str, Any]]]:
    """`label=a.json,b.json` as [(label run 1, record), ...]."""
    label, _, paths = spec.partition("=")
    files = [Path(p) for p in paths.split(",") if p]
    if not label or not files:
        raise SystemExit(f"expected label=file.json[,file.json...], got {spec!r}")
    out = []
    for n, path in enumerate(files, 1):
        record = orjson.loads(path.read_bytes())
        when = datetime.datetime.fromisoformat(record["timestamp"]).strftime("%H:%M")
        load1 = record["machine"]["loadavg_at_start"][0]
        name = f"{label} #{n}" if len(files) > 1 else label
        out.append((f"{name} ({when}, load {load1:.1f})", record))
    return out


def main(argv: list[str] | None = None) -> int:
    """Print the before / after table of the records named on the command line."""
    args = sys.argv[1:] if argv is None else argv
    if not args:
        print(__doc__, file=sys.stderr)
        return 2
    columns = [col for spec in args for col in load(spec)]
    print(table(columns))
    print()
    print("Each cell: the figure (its ratio to the baseline measured in the same run).")
    for name, text in BASELINES.items():
        print(f"- {name}: baseline = {text}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
