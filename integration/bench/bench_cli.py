"""`hero-proc status` as a whole process against `supervisorctl status`, over S services."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import time
from pathlib import Path

from integration.bench.bench_services import define_services
from integration.bench.common import BenchResult, Row, Sizes, Skipped, bench_daemon, median
from integration.bench.supervisord import Supervisord, supervisor_bin

MS = 1000.0


def cli_argv(socket_path: Path) -> list[str]:
    """`hero-proc --socket S status`: the console script if installed, else `python -m`."""
    script = Path(sys.executable).parent / "hero-proc"
    head = [str(script)] if script.exists() else [sys.executable, "-m", "hero_procd.cli.main"]
    return [*head, "--socket", str(socket_path), "status"]


def run_times(argv: list[str], runs: int, *, warmup: int = 1) -> list[float]:
    """Wall seconds of each of `runs` runs of argv (output discarded), after `warmup` runs."""
    out: list[float] = []
    for i in range(warmup + runs):
        t0 = time.perf_counter()
        proc = subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        seconds = time.perf_counter() - t0
        if proc.returncode not in (0, 3):  # supervisorctl status: 3 if a program is not running
            err = proc.stderr.decode(errors="replace").strip().splitlines()
            raise RuntimeError(f"{argv[0]} exited {proc.returncode}: {err[-1] if err else ''}")
        if i >= warmup:
            out.append(seconds)
    return out


def bench_cli(sizes: Sizes) -> BenchResult:
    """7. Median wall time of `hero-proc status` vs `supervisorctl status`; `python -c pass`."""
    try:
        found = importlib.util.find_spec("hero_procd.cli.main") is not None
    except ModuleNotFoundError:
        found = False
    if not found:
        raise Skipped("CLI missing")
    result = BenchResult("cli")
    runs = sizes.cli_runs
    floor = run_times([sys.executable, "-c", "pass"], runs)
    with bench_daemon() as daemon:
        with daemon.client() as c:
            define_services(c, sizes.services)
        argv = cli_argv(daemon.socket_path)
        ours = run_times(argv, runs)
    ctl = supervisor_bin("supervisorctl")
    if ctl is None:
        raise RuntimeError("supervisorctl is not installed")
    with Supervisord(sizes.services) as sv:
        base = run_times([str(ctl), "-c", str(sv.conf_path), "status"], runs)
    result.figures = {
        "argv": [Path(argv[0]).name, *argv[1:]],
        "runs": runs,
        "services": sizes.services,
        "ours_s": ours,
        "supervisorctl_s": base,
        "python_pass_s": floor,
    }
    name = f"hero-proc status, {sizes.services} services"
    result.rows += [
        Row(
            name,
            median(ours) * MS,
            "ms",
            median(base) * MS,
            "supervisorctl status",
            note=f"median of {runs} runs",
        ),
        Row("  same", median(ours) * MS, "ms", median(floor) * MS, "python -c pass (floor)"),
    ]
    return result
