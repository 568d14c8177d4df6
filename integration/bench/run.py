"""`make bench`: run the benchmarks, print the table, write results/latest.json.

    python -m integration.bench.run [--quick] [--only NAME ...] [--soak] [--readme] [--daemon PATH]

Every figure stands beside a baseline measured in the same run (the machine
is shared and noisy), and the ratio is ours / baseline. Benchmarks print and
record; they never fail on speed.

The soak (integration/bench/soak.py: 120 s, 30 s with --quick) runs only when
asked for, with --soak or --only soak. --readme rewrites README.md between
`<!-- bench:begin -->` and `<!-- bench:end -->` with the table.

--daemon PATH (or $HERO_PROC_BENCH_DAEMON) measures another hero-procd with
these same benchmark scripts: a hero-procd executable, or a checkout whose
.venv/bin/hero-procd is used (`git worktree add ../wt-before c7554d1`,
`make install` there, then `--daemon ../wt-before`). The client, the baselines
and this table stay this checkout's.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import importlib
import importlib.util
import os
import platform
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from integration.bench.bench_cli import bench_cli
from integration.bench.bench_cluster import bench_cluster
from integration.bench.bench_jobs import bench_logs, bench_throughput
from integration.bench.bench_latency import bench_clients, bench_ping
from integration.bench.bench_services import bench_idle, bench_service_start, bench_status_all
from integration.bench.bench_stack import bench_stack_apply
from integration.bench.bench_store import bench_batch, bench_clean, bench_submit
from integration.bench.bench_web import bench_web_idle, bench_web_pages
from integration.bench.common import (
    DAEMON_ENV,
    FULL,
    QUICK,
    BenchResult,
    Row,
    Sizes,
    Skipped,
    Target,
    daemon_command,
    daemon_identity,
    fmt,
)

MIB = 1024.0 * 1024.0
SOAK_S = {False: 120.0, True: 30.0}  # by `quick`
SOAK_MODULE = "integration.bench.soak"
SOAK_HOW = (
    "soak: not run (120 s; 30 s with --quick); run it with "
    "`python -m integration.bench.run --soak` (everything and the soak), "
    "`python -m integration.bench.run --only soak` or `python -m integration.bench.soak`"
)

SoakFn = Callable[[float, bool], dict[str, Any]]


def load_soak() -> tuple[SoakFn | None, str]:
    """soak.run_soak, or None and why not (missing, does not import, no run_soak)."""
    try:
        if importlib.util.find_spec(SOAK_MODULE) is None:
            return None, "integration/bench/soak.py not found"
        module = importlib.import_module(SOAK_MODULE)
    except Exception as exc:
        return None, f"integration/bench/soak.py does not import: {type(exc).__name__}: {exc}"
    fn = getattr(module, "run_soak", None)
    if not callable(fn):
        return None, "integration/bench/soak.py has no run_soak()"
    return fn, ""


def _number(figures: dict[str, Any], key: str) -> float | None:
    value = figures.get(key)
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def bench_soak(sizes: Sizes) -> BenchResult:
    """The soak of integration/bench/soak.py: does the daemon level off under load?"""
    fn, why = load_soak()
    if fn is None:
        raise Skipped(why)
    seconds = SOAK_S[sizes.quick]
    with contextlib.redirect_stdout(sys.stderr):  # its series table; stdout keeps the results
        figures = fn(seconds, sizes.quick)
    result = BenchResult("soak", figures=figures)
    level = Target("<=", 1.25)
    db_max, rss_kib = _number(figures, "db_bytes_max"), _number(figures, "rss_kib_max")
    result.rows += [
        Row(
            f"soak {seconds:g} s: db+wal size, last/middle third",
            _number(figures, "db_ratio"),
            "x",
            target=level,
            note="levelled off if the last third's max is within +25% of the middle third's; "
            + ("" if db_max is None else f"db+wal max {db_max / MIB:.1f} MiB"),
        ),
        Row(
            "  daemon RSS, last/middle third",
            _number(figures, "rss_ratio"),
            "x",
            target=level,
            note="" if rss_kib is None else f"RSS max {rss_kib / 1024:.1f} MiB",
        ),
        Row(
            "  schedule fires (every second)",
            _number(figures, "fires"),
            "fires",
            _number(figures, "fires_expected"),
            "seconds elapsed",
            note=f"{figures.get('fires_skipped')} fires skipped "
            "(overlap skip: the previous fire's job still active)",
        ),
        Row("  log lines stored", _number(figures, "lines_per_s"), "lines/s"),
        Row("  slowest system.ping", _number(figures, "ping_ms_max"), "ms"),
    ]
    return result


BENCHMARKS: dict[str, Callable[[Sizes], BenchResult]] = {
    "submit": bench_submit,
    "clean": bench_clean,
    "batch": bench_batch,
    "clients": bench_clients,
    "ping": bench_ping,
    "throughput": bench_throughput,
    "logs": bench_logs,
    "service_start": bench_service_start,
    "status_all": bench_status_all,
    "stack_apply": bench_stack_apply,
    "cli": bench_cli,
    "idle": bench_idle,
    "cluster": bench_cluster,
    "web_pages": bench_web_pages,
    "web_idle": bench_web_idle,
    "soak": bench_soak,
}
ON_REQUEST = {"soak"}  # not in the default run: --soak or --only soak

RESULTS = Path(__file__).parent / "results" / "latest.json"
README = Path(__file__).resolve().parents[2] / "README.md"
README_BEGIN = "<!-- bench:begin -->"
README_END = "<!-- bench:end -->"
HEADER = ("benchmark", "ours", "baseline", "ratio", "target", "met?")


def machine() -> dict[str, Any]:
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
        "daemon": daemon_identity(),
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
    if row.target is not None and row.target.op == "±":
        target = f"± {row.target.value * 100:g}% of baseline"
    elif row.target is not None and row.target.op in ("x<=", "x>="):
        sign = "≤" if row.target.op == "x<=" else "≥"
        target = f"ratio {sign} {row.target.value:.2f}x"
    elif row.target is not None:
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


def table(
    results: list[BenchResult], footer: list[str] | None = None, *, markdown: bool = False
) -> str:
    """The results as a pipe table, one line per row, then the notes and the footer lines.

    With `markdown`, a `|` inside a cell is escaped (the pipe table is Markdown as it is).
    """
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
    if markdown:  # `|` escaped; a sub-row's indent would be lost, so it is marked instead
        lines = [
            tuple(
                ("↳ " + c.lstrip() if c.startswith("  ") else c).replace("|", "\\|") for c in line
            )
            for line in lines
        ]
    widths = [max(len(line[i]) for line in lines) for i in range(len(HEADER))]
    out = []
    for n, line in enumerate(lines):
        out.append("| " + " | ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)) + " |")
        if n == 0:
            out.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    out.append("")
    out.append("ratio = ours / baseline (for times below 1 is faster; for jobs/s above 1 is)")
    if markdown:
        out.append("")
    out.extend(notes)
    out.extend(f"- {line}" for line in footer or [])
    return "\n".join(out)


def readme_section(
    results: list[BenchResult], footer: list[str], info: dict[str, Any], record: dict[str, Any]
) -> str:
    """What goes between the README's bench markers: when, where, the note, the table."""
    load = " / ".join(f"{x:.2f}" for x in info["loadavg_at_start"])
    when = datetime.datetime.fromisoformat(record["timestamp"]).strftime("%Y-%m-%d %H:%M UTC")
    command = " ".join(["python -m integration.bench.run", *record["argv"]])
    cpu = f" ({info['cpu']})" if info.get("cpu") else ""
    commit = info["daemon"]["commit"]
    return "\n".join(
        [
            f"Last run {when}: `{command}`, "
            f"{record['total_s']:.0f} s, daemon at {commit or 'this checkout'}. "
            f"Machine: nproc {info['nproc']}{cpu}, "
            f"{info['implementation']} {info['python']}, load average at start {load}.",
            "",
            f"Figures are from a shared, noisy {info['nproc']}-core machine: the absolute "
            "numbers move from run to run; the ratio column (against a baseline measured "
            "in the same run) is what to read.",
            "",
            table(results, footer, markdown=True),
        ]
    )


def rewrite_readme(path: Path, section: str) -> bool:
    """Replace what lies between the bench markers of `path` with `section`; False if unmarked."""
    text = path.read_text()
    begin, end = text.find(README_BEGIN), text.find(README_END)
    if begin == -1 or end == -1 or end < begin or text.count(README_BEGIN) != 1:
        return False
    head = text[: begin + len(README_BEGIN)]
    path.write_text(f"{head}\n{section}\n{text[end:]}")
    return True


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
    parser.add_argument(
        "--soak", action="store_true",
        help=f"also run the soak ({SOAK_S[False]:g} s; {SOAK_S[True]:g} s with --quick)",
    )  # fmt: skip
    parser.add_argument(
        "--readme", action="store_true",
        help=f"rewrite README.md between {README_BEGIN} and {README_END} with the table",
    )  # fmt: skip
    parser.add_argument("--out", type=Path, default=RESULTS, help="where to write the JSON")
    parser.add_argument(
        "--daemon", metavar="PATH",
        help=f"the hero-procd to measure: an executable or a checkout with .venv [${DAEMON_ENV}]",
    )  # fmt: skip
    args = parser.parse_args(argv)
    if args.daemon:
        os.environ[DAEMON_ENV] = args.daemon
    daemon_command()  # a bad --daemon fails here, before any benchmark
    sizes = QUICK if args.quick else FULL
    if args.only:
        names = [n for n in BENCHMARKS if n in args.only]
    else:
        names = [n for n in BENCHMARKS if n not in ON_REQUEST or (n == "soak" and args.soak)]
    started = datetime.datetime.now(datetime.UTC)
    t0 = time.perf_counter()
    info = machine()
    results = [run_one(name, sizes) for name in names]
    total = time.perf_counter() - t0
    footer: list[str] = []
    if "soak" not in names:
        _, why = load_soak()
        footer.append(SOAK_HOW if not why else f"soak: not run ({why})")
    print(table(results, footer))
    print(f"\n{len(results)} benchmarks in {total:.1f} s ({'quick' if sizes.quick else 'full'})")
    print(f"daemon: {info['daemon']['command']} (commit {info['daemon']['commit'] or '?'})")
    record: dict[str, Any] = {
        "timestamp": started.isoformat(timespec="seconds"),
        "quick": sizes.quick,
        "argv": list(sys.argv[1:] if argv is None else argv),
        "total_s": round(total, 3),
        "machine": info,
        "sizes": dataclasses.asdict(sizes),
        "benchmarks": {r.name: r.to_dict() for r in results},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_bytes(orjson.dumps(record, option=orjson.OPT_INDENT_2) + b"\n")
    print(f"wrote {args.out}")
    if args.readme:
        if not rewrite_readme(README, readme_section(results, footer, info, record)):
            print(f"{README}: no {README_BEGIN} ... {README_END} to rewrite", file=sys.stderr)
            return 1
        print(f"rewrote the benchmark section of {README}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
