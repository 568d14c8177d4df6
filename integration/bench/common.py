"""What every benchmark shares: sizes, result rows, a daemon per benchmark, timers, probes."""

from __future__ import annotations

import contextlib
import math
import os
import sqlite3
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from hero_procd.client import Client
from hero_procd.model import CommandSpec
from hero_procd.store.queries import Q
from hero_procd.store.schema import MIGRATIONS
from integration.daemon_proc import DaemonProcess, cleanup, short_tmpdir

TRUE = "/bin/true"
SLEEPER = ["sleep", "3600"]  # a job that holds the only slot of a --max-parallel 1 daemon
DAEMON_ENV = "HERO_PROC_BENCH_DAEMON"


@dataclass(frozen=True)
class Sizes:
    """How big each benchmark is: the full run, or `--quick` for a smoke run."""

    quick: bool
    submit_jobs: int
    clean_jobs: int
    batch_jobs: int
    single_submits: int
    throughput_jobs: int
    log_lines: int
    services: int
    parallel_calls: int
    parallel_rounds: int
    sequential_calls: int
    cli_runs: int
    idle_s: float
    repeats: int
    concurrent_clients: int
    ping_batch_jobs: int
    list_seed_jobs: int
    list_rows: int
    list_parallel: int


FULL = Sizes(
    quick=False,
    submit_jobs=10_000,
    clean_jobs=10_000,
    batch_jobs=50_000,
    single_submits=5_000,
    throughput_jobs=10_000,
    log_lines=1_000_000,
    services=100,
    parallel_calls=50,
    parallel_rounds=5,
    sequential_calls=200,
    cli_runs=30,  # whole processes on a shared machine: the median of 30 holds still
    idle_s=10.0,
    repeats=3,
    concurrent_clients=1_000,
    ping_batch_jobs=50_000,
    list_seed_jobs=50_000,
    list_rows=10_000,
    list_parallel=5,
)

QUICK = Sizes(
    quick=True,
    submit_jobs=1_000,
    clean_jobs=1_000,
    batch_jobs=5_000,
    single_submits=500,
    throughput_jobs=1_000,
    log_lines=100_000,
    services=100,
    parallel_calls=50,
    parallel_rounds=2,
    sequential_calls=50,
    cli_runs=3,
    idle_s=4.0,
    repeats=1,
    concurrent_clients=200,
    ping_batch_jobs=5_000,
    list_seed_jobs=5_000,
    list_rows=1_000,
    list_parallel=5,
)


@dataclass(frozen=True)
class Target:
    """A goal for one figure: `<=` or `>=` a value in the row's unit, or `±` a fraction.

    `±` compares the figure with its baseline: met when ours / baseline is within
    1 ± value (`Target("±", 0.25)`: within 25% of the baseline). `x<=` and `x>=`
    bound the ratio ours / baseline itself (`Target("x<=", 2.0)`: at most twice
    the baseline).
    """

    op: str
    value: float
    scaled: bool = False

    def met(self, figure: float, baseline: float | None = None) -> bool | None:
        """True if the figure reaches the goal (None for `±` without a baseline)."""
        if self.op in ("±", "x<=", "x>="):
            if baseline is None or baseline == 0:
                return None
            ratio = figure / baseline
            if self.op == "±":
                return abs(ratio - 1.0) <= self.value
            return ratio <= self.value if self.op == "x<=" else ratio >= self.value
        return figure <= self.value if self.op == "<=" else figure >= self.value

    def scale(self, factor: float) -> Target:
        """The goal for a run `factor` times the size the goal was set for (time goals)."""
        if factor == 1.0:
            return self
        return Target(self.op, self.value * factor, scaled=True)


@dataclass
class Row:
    """One line of the table: our figure, a baseline's figure, their ratio and the goal."""

    name: str
    ours: float | None
    unit: str
    baseline: float | None = None
    baseline_label: str = ""
    target: Target | None = None
    note: str = ""

    def ratio(self) -> float | None:
        """ours / baseline (for times, below 1 means we are faster)."""
        if self.ours is None or self.baseline is None or self.baseline == 0:
            return None
        return self.ours / self.baseline

    def met(self) -> bool | None:
        """Whether the target is met; None without a target or a figure."""
        if self.target is None or self.ours is None:
            return None
        return self.target.met(self.ours, self.baseline)

    def to_dict(self) -> dict[str, Any]:
        """The row as recorded in latest.json."""
        return {
            "name": self.name,
            "ours": self.ours,
            "unit": self.unit,
            "baseline": self.baseline,
            "baseline_label": self.baseline_label,
            "ratio": self.ratio(),
            "target": None
            if self.target is None
            else {"op": self.target.op, "value": self.target.value, "scaled": self.target.scaled},
            "met": self.met(),
            "note": self.note,
        }


@dataclass
class BenchResult:
    """What one benchmark measured: its table rows and every raw figure."""

    name: str
    rows: list[Row] = field(default_factory=list)
    figures: dict[str, Any] = field(default_factory=dict)
    status: str = "ok"  # ok | skipped | error
    message: str = ""
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """The benchmark as recorded in latest.json."""
        return {
            "status": self.status,
            "message": self.message,
            "seconds": round(self.seconds, 3),
            "rows": [r.to_dict() for r in self.rows],
            "figures": self.figures,
        }


class Skipped(Exception):
    """A benchmark cannot run here; the message says why."""


def fmt(value: float | None, unit: str) -> str:
    """A figure with three significant digits and its unit."""
    if value is None:
        return "-"
    if value == 0:
        return f"0 {unit}"
    if abs(value) >= 1000:
        return f"{value:,.0f} {unit}"
    digits = max(0, 2 - math.floor(math.log10(abs(value))))
    return f"{value:.{digits}f} {unit}"


def median(values: Sequence[float]) -> float:
    """The median of a non-empty sample."""
    return float(statistics.median(values))


def percentile(values: Sequence[float], pct: float) -> float:
    """The pct-th percentile (nearest rank) of a non-empty sample."""
    ordered = sorted(values)
    rank = max(1, math.ceil(pct / 100.0 * len(ordered)))
    return ordered[rank - 1]


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    """(seconds, result) of one call."""
    t0 = time.perf_counter()
    result = fn()
    return time.perf_counter() - t0, result


def daemon_command() -> list[str]:
    """The command that starts hero-procd: this checkout's, or $HERO_PROC_BENCH_DAEMON.

    $HERO_PROC_BENCH_DAEMON is a hero-procd executable, or a checkout whose
    `.venv/bin/hero-procd` is used (e.g. a worktree of an older commit, to measure
    before and after with the same benchmark scripts).
    """
    chosen = os.environ.get(DAEMON_ENV, "").strip()
    if not chosen:
        return [sys.executable, "-m", "hero_procd.daemon"]
    path = Path(chosen).expanduser().resolve()
    if path.is_dir():
        path = path / ".venv" / "bin" / "hero-procd"
    if not (path.is_file() and os.access(path, os.X_OK)):
        raise RuntimeError(f"${DAEMON_ENV}={chosen}: {path} is not an executable hero-procd")
    return [str(path)]


def daemon_identity() -> dict[str, str]:
    """Which daemon the run measured: its command and, from its checkout, the git commit."""
    command = daemon_command()
    exe = Path(command[0]) if len(command) == 1 else Path(__file__)
    commit = ""
    for folder in exe.resolve().parents:
        if (folder / ".git").exists():
            with contextlib.suppress(OSError, subprocess.SubprocessError):
                commit = subprocess.run(
                    ["git", "-C", str(folder), "rev-parse", "--short", "HEAD"],
                    capture_output=True, text=True, timeout=10, check=True,
                ).stdout.strip()  # fmt: skip
            break
    return {"command": " ".join(command), "commit": commit}


class BenchDaemon(DaemonProcess):
    """A DaemonProcess started by `daemon_command()`."""

    @property
    def argv(self) -> list[str]:
        """The command line that starts this daemon."""
        return [
            *daemon_command(),
            "--socket", str(self.socket_path), "--db", str(self.db_path),
            *self.extra_args,
        ]  # fmt: skip


@contextlib.contextmanager
def bench_daemon(
    extra_args: Sequence[str] = (), env: dict[str, str] | None = None
) -> Iterator[DaemonProcess]:
    """A fresh daemon on its own socket and database, stopped and removed afterwards."""
    workdir = short_tmpdir("hpb")
    daemon = BenchDaemon(workdir, extra_args=["--log-level", "warning", *extra_args], env=env)
    try:
        daemon.start()
        yield daemon
    finally:
        if daemon.proc is not None:
            daemon.stop(timeout_s=60.0)
        cleanup(workdir)


def daemon_pid(daemon: DaemonProcess) -> int:
    """The daemon's process id."""
    assert daemon.proc is not None
    return daemon.proc.pid


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (all its threads), from /proc/PID/stat."""
    raw = Path(f"/proc/{pid}/stat").read_text()
    fields = raw[raw.rindex(")") + 2 :].split()
    ticks = int(fields[11]) + int(fields[12])  # utime, stime: fields 14 and 15 of stat
    return ticks / os.sysconf("SC_CLK_TCK")


def main_thread_cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process's main thread (the daemon's event loop) so far."""
    raw = Path(f"/proc/{pid}/task/{pid}/stat").read_text()
    fields = raw[raw.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def group_rss_bytes(pgid: int) -> tuple[int, int]:
    """(sum of VmRSS, number of processes) over the processes of a process group, from /proc."""
    total = count = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            raw = (entry / "stat").read_text()
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
        if int(raw[raw.rindex(")") + 2 :].split()[2]) != pgid:  # pgrp: field 5 of stat
            continue
        total += rss_bytes(int(entry.name))
        count += 1
    return total, count


def rss_bytes(pid: int) -> int:
    """The resident set size of a process now, from /proc/PID/status (0 if it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except (FileNotFoundError, ProcessLookupError):
        pass
    return 0


class RssSampler:
    """Samples a process's RSS every `interval_s` on a thread; `peak` is the largest seen."""

    def __init__(self, pid: int, interval_s: float = 0.05) -> None:
        self.pid = pid
        self.interval_s = interval_s
        self.peak = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_bytes(self.pid))
            self.samples += 1
            self._stop.wait(self.interval_s)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_bytes(self.pid))


def wait_all_finished(client: Client, last_id: int, timeout_s: float = 600.0) -> None:
    """Block until no job is queued or running, starting with `job.wait` on the last one."""
    deadline = time.monotonic() + timeout_s
    client.call("job.wait", id=last_id, timeout_s=timeout_s)
    while True:
        pending: list[int] = []
        for status in ("running", "queued"):
            page = client.call("job.list", status=status, limit=100)
            pending.extend(j["id"] for j in page["jobs"])
        if not pending:
            return
        for job_id in pending:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"jobs still pending after {timeout_s}s")
            client.call("job.wait", id=job_id, timeout_s=left)


def count_jobs(client: Client, status: str | None = None) -> int:
    """How many jobs there are (in `status`), by paging `job.list`."""
    total = 0
    after = 0
    while True:
        params: dict[str, Any] = {"limit": 10_000, "after_id": after}
        if status is not None:
            params["status"] = status
        page = client.call("job.list", params)
        total += len(page["jobs"])
        if page["next_after_id"] is None:
            return total
        after = page["next_after_id"]


# -- the raw sqlite3 baselines ------------------------------------------------------


def baseline_db(path: Path) -> sqlite3.Connection:
    """A fresh database with the daemon's schema and pragmas (WAL), in autocommit mode."""
    conn = sqlite3.connect(str(path), isolation_level=None)
    conn.execute("PRAGMA auto_vacuum=INCREMENTAL")
    mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()
    assert mode is not None and str(mode[0]).lower() == "wal"
    for pragma in (
        "busy_timeout=5000",
        "foreign_keys=ON",
        "synchronous=NORMAL",
        "temp_store=MEMORY",
    ):
        conn.execute(f"PRAGMA {pragma}")
    for version, script in MIGRATIONS:
        conn.executescript(f"BEGIN IMMEDIATE;\n{script}\nPRAGMA user_version={version};\nCOMMIT;")
    return conn


def job_rows(
    first_id: int,
    n: int,
    *,
    run_id: int | None = None,
    keyed: bool = False,
    tags: Sequence[str] = (),
) -> tuple[list[tuple[Any, ...]], list[tuple[str, int]]]:
    """Rows for `job_insert` and `job_tag_insert`, shaped as JobsApi.insert_many shapes them."""
    spec = orjson.dumps(CommandSpec(command=[TRUE]).with_defaults().to_dict()).decode()
    tags_json = orjson.dumps(list(tags)).decode()
    ts = time.time()
    rows: list[tuple[Any, ...]] = []
    tag_rows: list[tuple[str, int]] = []
    for job_id in range(first_id, first_id + n):
        key = f"j{job_id - first_id}" if keyed else None
        rows.append((job_id, run_id, key, None, spec, tags_json, 0, None, None, 1, 0, ts, None))
        tag_rows.extend((tag, job_id) for tag in tags)
    return rows, tag_rows


def hold_slot(client: Client) -> int:
    """Submit SLEEPER: on a --max-parallel 1 daemon it takes the only slot, so later jobs wait."""
    job_id = int(client.call("job.submit", {"command": SLEEPER})["id"])
    deadline = time.monotonic() + 10.0
    while client.call("job.get", id=job_id)["status"] != "running":
        if time.monotonic() > deadline:
            raise TimeoutError("the slot-holding job did not start within 10 s")
        time.sleep(0.01)
    return job_id


def insert_jobs(
    conn: sqlite3.Connection,
    rows: list[tuple[Any, ...]],
    tag_rows: list[tuple[str, int]],
    run: bool = False,
) -> None:
    """One transaction: (a run row and) the jobs and their tags, one executemany per table."""
    conn.execute("BEGIN IMMEDIATE")
    if run:
        conn.execute(Q["run_insert"], (None, "[]", time.time())).fetchall()
    conn.executemany(Q["job_insert"], rows)
    if tag_rows:
        conn.executemany(Q["job_tag_insert"], tag_rows)
    conn.execute("COMMIT")


@contextlib.contextmanager
def scratch_dir(prefix: str = "hpbs") -> Iterator[Path]:
    """A temporary directory under /tmp, removed afterwards."""
    path = short_tmpdir(prefix)
    try:
        yield path
    finally:
        cleanup(path)
