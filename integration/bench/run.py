"""`make bench`: run the benchmarks, print the table, write results/latest.json.

    python -m integration.bench.run [--quick] [--only NAME ...]

Every figure stands beside a baseline measured in the same run (the machine
is shared and noisy), and the ratio is ours / baseline. Benchmarks print and
record; they never fail on speed.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import os
import platform
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import orjson

from integration.bench.bench_cli import bench_cli
from integration.bench.bench_jobs import bench_logs, bench_throughput
from integration.bench.bench_services import bench_idle, bench_status_all
from integration.bench.bench_store import bench_batch, bench_clean, bench_submit
from integration.bench.common import FULL, QUICK, BenchResult, Row, Sizes, Skipped, fmt

BENCHMARKS: dict[str, Callable[[Sizes], BenchResult]] = {
    "submit": bench_submit,
    "clean": bench_clean,
    "batch": bench_batch,
    "throughput": bench_throughput,
    "logs": bench_logs,
    "status_all": bench_status_all,
    "cli": bench_cli,
    "idle": bench_idle,
}

RESULTS = Path(__file__).parent / "results" / "latest.json"
HEADER = ("benchmark", "ours", "baseline", "ratio", "target", "met?")


def machine() -> dict[str, object]:
    """What the figures were measured on."""
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "loadavg_at_start": list(os.getloadavg()),
    }


def run_one(name: str, sizes: Sizes) -> BenchResult:
    """Run one benchmark; a skip or a failure becomes its result instead of an exception."""
    print(f"[bench] {name} ...", file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    try:
        result = BENCHMARKS[name](sizes)
    except Skipped as exc:
        result = BenchResult(name, status="skipped", message=str(exc))
    except Exception as exc:
        traceback.print_exc()
        result = BenchResult(name, status="error", message=f"{type(exc).__name__}: {exc}")
    result.seconds = time.perf_counter() - t0
    print(f"[bench] {name}: {result.status} in {result.seconds:.1f} s", file=sys.stderr)
    return result


def _cells(row: Row) -> tuple[str, ...]:
    ratio = row.ratio()
    target = ""
    if row.target is not None:
        sign = "≤" if row.target.op == "<=" else "≥"
        target = f"{sign} {fmt(row.target.value, row.unit)}"
        if row.target.scaled:
            target += " (scaled)"
    met = {None: "", True: "yes", False: "NO"}[row.met()]
    baseline = f"{fmt(row.baseline, row.unit)} {row.baseline_label}".strip()
    return (
        row.name,
        fmt(row.ours, row.unit),
        baseline if row.baseline is not None else row.baseline_label,
        "" if ratio is None else f"{ratio:.2f}x",
        target,
        met,
    )


def _one_line(message: str, width: int = 100) -> str:
    """A message's first and last lines (a traceback's cause), cut to `width`."""
    lines = [ln.strip() for ln in message.splitlines() if ln.strip()]
    if not lines:
        return ""
    text = lines[0] if len(lines) == 1 else f"{lines[0]} ... {lines[-1]}"
    return text if len(text) <= width else text[: width - 3] + "..."


def table(results: list[BenchResult]) -> str:
    """The results as a pipe table, one line per row, then the notes."""
    lines: list[tuple[str, ...]] = [HEADER]
    notes: list[str] = []
    for res in results:
        if res.status != "ok":
            lines.append((res.name, f"{res.status}: {_one_line(res.message)}", "", "", "", ""))
            continue
        for row in res.rows:
            lines.append(_cells(row))
            if row.note:
                name = row.name.strip() if row.name.strip() != "same" else res.name
                notes.append(f"- {name}: {row.note}")
    widths = [max(len(line[i]) for line in lines) for i in range(len(HEADER))]
    out = []
    for n, line in enumerate(lines):
        out.append("| " + " | ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)) + " |")
        if n == 0:
            out.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    out.append("")
    out.append("ratio = ours / baseline (for times below 1 is faster; for jobs/s above 1 is)")
    out.extend(notes)
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    """Run the chosen benchmarks, print the table and write the JSON record."""
    parser = argparse.ArgumentParser(
        prog="python -m integration.bench.run",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    parser.add_argument(
        "--only", action="append", choices=sorted(BENCHMARKS), metavar="NAME",
        help=f"run only this benchmark (repeatable): {', '.join(BENCHMARKS)}",
    )  # fmt: skip
    parser.add_argument("--out", type=Path, default=RESULTS, help="where to write the JSON")
    args = parser.parse_args(argv)
    sizes = QUICK if args.quick else FULL
    names = [n for n in BENCHMARKS if not args.only or n in args.only]
    started = datetime.datetime.now(datetime.UTC)
    t0 = time.perf_counter()
    info = machine()
    results = [run_one(name, sizes) for name in names]
    total = time.perf_counter() - t0
    print(table(results))
    print(f"\n{len(results)} benchmarks in {total:.1f} s ({'quick' if sizes.quick else 'full'})")
    record = {
        "timestamp": started.isoformat(timespec="seconds"),
        "quick": sizes.quick,
        "total_s": round(total, 3),
        "machine": info,
        "sizes": dataclasses.asdict(sizes),
        "benchmarks": {r.name: r.to_dict() for r in results},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_bytes(orjson.dumps(record, option=orjson.OPT_INDENT_2) + b"\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
