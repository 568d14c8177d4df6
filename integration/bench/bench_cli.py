"""`hero-proc status` and `hero-proc ping` as whole processes, over S running services.

Against `python -c pass` of the same interpreter (the floor: the target is at
most twice it) and `supervisorctl status`, taken turn about in the same run.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import time
from pathlib import Path

from integration.bench.bench_services import running_daemon, running_supervisord
from integration.bench.common import BenchResult, Row, Sizes, Skipped, Target, median
from integration.bench.supervisord import supervisor_bin

MS = 1000.0


def cli_argv(socket_path: Path, command: str = "status") -> list[str]:
    """`hero-proc --socket S COMMAND`: the console script if installed, else `python -m`."""
    script = Path(sys.executable).parent / "hero-proc"
    head = [str(script)] if script.exists() else [sys.executable, "-m", "hero_procd.cli.main"]
    return [*head, "--socket", str(socket_path), command]


def run_once(argv: list[str]) -> float:
    """Wall seconds of one run of argv (output discarded); raises if it failed."""
    t0 = time.perf_counter()
    proc = subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    seconds = time.perf_counter() - t0
    if proc.returncode not in (0, 3):  # supervisorctl status: 3 if a program is not running
        err = proc.stderr.decode(errors="replace").strip().splitlines()
        raise RuntimeError(f"{argv[0]} exited {proc.returncode}: {err[-1] if err else ''}")
    return seconds


def run_times(argvs: list[list[str]], runs: int, *, warmup: int = 1) -> list[list[float]]:
    """Wall seconds of `runs` runs of each argv, taken turn about, after `warmup` rounds."""
    out: list[list[float]] = [[] for _ in argvs]
    for i in range(warmup + runs):
        for argv, times in zip(argvs, out, strict=True):
            seconds = run_once(argv)
            if i >= warmup:
                times.append(seconds)
    return out


def bench_cli(sizes: Sizes) -> BenchResult:
    """Median wall time of `hero-proc status` vs `supervisorctl status`; `python -c pass`."""
    try:
        found = importlib.util.find_spec("hero_procd.cli.main") is not None
    except ModuleNotFoundError:
        found = False
    if not found:
        raise Skipped("CLI missing")
    ctl = supervisor_bin("supervisorctl")
    if ctl is None:
        raise RuntimeError("supervisorctl is not installed")
    result = BenchResult("cli")
    runs = sizes.cli_runs
    s = sizes.services
    with running_daemon(s) as (daemon, _), running_supervisord(s) as (sv, _):
        argv = cli_argv(daemon.socket_path)
        ping_argv = cli_argv(daemon.socket_path, "ping")
        ctl_argv = [str(ctl), "-c", str(sv.conf_path), "status"]
        floor_argv = [sys.executable, "-c", "pass"]
        ours, ping, base, floor = run_times([argv, ping_argv, ctl_argv, floor_argv], runs)
    result.figures = {
        "argv": [Path(argv[0]).name, *argv[1:]],
        "runs": runs,
        "services": s,
        "ours_s": ours,
        "ping_s": ping,
        "supervisorctl_s": base,
        "python_pass_s": floor,
    }
    at_most_twice = Target("x<=", 2.0)
    result.rows += [
        Row(
            f"hero-proc status, {s} running",
            median(ours) * MS,
            "ms",
            median(base) * MS,
            "supervisorctl status",
            note=f"median of {runs} runs each, turn about, both supervisors up",
        ),
        Row(
            "  same",
            median(ours) * MS,
            "ms",
            median(floor) * MS,
            "python -c pass (floor)",
            target=at_most_twice,
        ),
        Row(
            "hero-proc ping",
            median(ping) * MS,
            "ms",
            median(floor) * MS,
            "python -c pass (floor)",
            target=at_most_twice,
            note="status and ping take the fast path (hero_procd/cli/fast.py); "
            "python -c pass is the same interpreter, taken turn about with them",
        ),
    ]
    return result
