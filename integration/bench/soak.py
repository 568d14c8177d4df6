"""Soak: a chatty service and a per-second schedule under tight retention; does it level off?

A daemon runs a service printing as fast as it can and a schedule firing a
`true` job every second, with the janitor every 2 s, a 20,000-line cap per
owner and a retention of 8.6 s for finished jobs. Every few seconds we sample
the database size (db + WAL), the daemon's RSS and its counters. A series has
levelled off when the max of its last third is within +25% of the max of its
middle third.

    python -m integration.bench.soak [--seconds N] [--quick]
"""

from __future__ import annotations

import argparse
import contextlib
import math
import sqlite3
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from hero_procd.client import Client
from integration.daemon_proc import DaemonProcess, cleanup, short_tmpdir

FULL_S = 120.0
QUICK_S = 30.0
SAMPLE_EVERY_S = 5.0
LEVEL_TOLERANCE = 0.25
SOAK_ENV = {
    "HERO_PROC_JANITOR_INTERVAL_S": "2",
    "HERO_PROC_MAX_LOG_LINES": "20000",
    "HERO_PROC_JOB_RETENTION_DAYS": "0.0001",  # 8.64 s
}
# Prints as fast as the pipe takes it (block-buffered: the daemon's backpressure sets the pace).
PRINTER = "import time\nwhile True:\n    print('line', time.time_ns())"


@dataclass(frozen=True)
class Sample:
    """The daemon's state at one moment of the soak."""

    t_s: float
    db_bytes: int
    wal_bytes: int
    free_pages: int
    rss_kib: int
    logs: int
    jobs: int
    dropped_log_lines: int
    log_lines_trimmed: int
    fires: int
    skipped: int
    job_latency_s: float | None
    ping_ms: float


def file_bytes(path: Path) -> int:
    """Bytes of a file (0 if there is none)."""
    with contextlib.suppress(FileNotFoundError):
        return path.stat().st_size
    return 0


def free_pages(db_path: Path) -> int:
    """PRAGMA freelist_count, read on a short-lived read-only connection."""
    conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=5.0)
    try:
        return int(conn.execute("PRAGMA freelist_count").fetchone()[0])
    finally:
        conn.close()


def rss_kib(pid: int) -> int:
    """VmRSS of a process, in KiB (0 if it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except FileNotFoundError:
        pass
    return 0


def take_sample(c: Client, daemon: DaemonProcess, pid: int, t0: float) -> Sample:
    """One sample of sizes and counters."""
    t_ping = time.perf_counter()
    c.call("system.ping")
    ping_ms = (time.perf_counter() - t_ping) * 1000.0
    info = c.call("system.info")
    tick = c.call("schedule.get", name="tick")
    wal = file_bytes(daemon.db_path.with_name(daemon.db_path.name + "-wal"))
    done = [j for j in c.call("job.list", tag="tick")["jobs"] if j["finished_at"] is not None]
    return Sample(
        t_s=time.monotonic() - t0,
        db_bytes=file_bytes(daemon.db_path) + wal,
        wal_bytes=wal,
        free_pages=free_pages(daemon.db_path),
        rss_kib=rss_kib(pid),
        logs=int(info["counts"]["logs"]),
        jobs=int(info["counts"]["jobs"]),
        dropped_log_lines=int(info["dropped_log_lines"]),
        log_lines_trimmed=int(info["log_lines_trimmed"]),
        fires=int(tick["fires"]),
        skipped=int(tick["skipped"]),
        job_latency_s=done[-1]["finished_at"] - done[-1]["created_at"] if done else None,
        ping_ms=ping_ms,
    )


def levelled(series: list[float]) -> tuple[bool | None, float | None]:
    """(last third's max within +25% of the middle third's, their ratio); None if too short."""
    third = len(series) // 3
    if third == 0:
        return None, None
    middle = max(series[third : 2 * third])
    last = max(series[2 * third :])
    if middle <= 0:
        return None, None
    ratio = last / middle
    return ratio <= 1.0 + LEVEL_TOLERANCE, ratio


def table(samples: list[Sample]) -> str:
    """The series as a fixed-width table."""
    head = (
        f"{'t s':>6} {'db MiB':>8} {'wal MiB':>8} {'free pg':>8} {'RSS MiB':>8} "
        f"{'logs':>8} {'jobs':>5} "
        f"{'dropped':>8} {'trimmed':>10} {'fires':>6} {'skips':>6} {'job s':>6} {'ping ms':>8}"
    )
    lines = [head, "-" * len(head)]
    for s in samples:
        latency = "-" if s.job_latency_s is None else f"{s.job_latency_s:.2f}"
        lines.append(
            f"{s.t_s:6.1f} {s.db_bytes / 2**20:8.1f} {s.wal_bytes / 2**20:8.1f} {s.free_pages:8d} "
            f"{s.rss_kib / 1024:8.1f} {s.logs:8d} "
            f"{s.jobs:5d} {s.dropped_log_lines:8d} {s.log_lines_trimmed:10d} {s.fires:6d} "
            f"{s.skipped:6d} {latency:>6} {s.ping_ms:8.1f}"
        )
    return "\n".join(lines)


def _verdict(name: str, ok: bool | None, ratio: float | None) -> str:
    if ok is None or ratio is None:
        return f"{name}: too few samples to tell"
    word = "levelled off" if ok else "still growing"
    return f"{name}: {word} (last third max / middle third max = {ratio:.2f})"


def run_soak(duration_s: float, quick: bool) -> dict[str, Any]:
    """Soak a daemon for `duration_s` (120 s if <= 0; at most 30 s if `quick`); print; figures."""
    duration_s = duration_s if duration_s > 0 else FULL_S
    if quick:
        duration_s = min(duration_s, QUICK_S)
    every = min(SAMPLE_EVERY_S, max(1.0, duration_s / 9))  # at least ~9 samples: 3 per third
    workdir = short_tmpdir("hpsoak")
    daemon = DaemonProcess(workdir, env=SOAK_ENV)
    samples: list[Sample] = []
    try:
        daemon.start()
        assert daemon.proc is not None
        pid = daemon.proc.pid
        with daemon.client() as c:
            c.call(
                "service.define",
                name="printer",
                command=[sys.executable, "-c", PRINTER],
                restart="always",
            )
            c.call("service.start", name="printer")
            c.call(
                "schedule.set",
                name="tick",
                cron="* * * * * *",
                job={"command": ["true"], "tags": ["tick"]},
            )
            t0 = time.monotonic()
            samples.append(take_sample(c, daemon, pid, t0))
            n = 1
            while time.monotonic() - t0 < duration_s:
                time.sleep(max(0.0, t0 + n * every - time.monotonic()))
                samples.append(take_sample(c, daemon, pid, t0))
                n += 1
            service = c.call("service.status", name="printer")
            last_retention = c.call("system.info")["last_retention"]
            c.call("schedule.delete", name="tick")
            c.call("service.stop", name="printer")
    finally:
        code = daemon.stop() if daemon.proc is not None else None
        cleanup(workdir)
    elapsed = samples[-1].t_s - samples[0].t_s if len(samples) > 1 else 0.0
    db_ok, db_ratio = levelled([float(s.db_bytes) for s in samples])
    rss_ok, rss_ratio = levelled([float(s.rss_kib) for s in samples])
    stored = [s.logs + s.log_lines_trimmed for s in samples]
    lines_per_s = (stored[-1] - stored[0]) / elapsed if elapsed > 0 else 0.0
    fires = samples[-1].fires - samples[0].fires
    skipped = samples[-1].skipped - samples[0].skipped
    latencies = [s.job_latency_s for s in samples if s.job_latency_s is not None]
    print(f"soak: {duration_s:.0f} s, a sample every {every:.0f} s, env {SOAK_ENV}")
    print(table(samples))
    print(_verdict("db size (db + wal)", db_ok, db_ratio))
    print(_verdict("daemon RSS", rss_ok, rss_ratio))
    print(
        f"lines stored {lines_per_s:,.0f}/s; schedule fires {fires} (+{skipped} skipped) "
        f"in {elapsed:.0f} s; max job latency {max(latencies, default=0.0):.2f} s; "
        f"max ping {max(s.ping_ms for s in samples):.1f} ms; "
        f"service restarts {service.get('restarts')}; daemon exit {code}"
    )
    return {
        "duration_s": duration_s,
        "sample_every_s": every,
        "samples": [asdict(s) for s in samples],
        "db_levelled": db_ok,
        "db_ratio": db_ratio,
        "rss_levelled": rss_ok,
        "rss_ratio": rss_ratio,
        "db_bytes_max": max(s.db_bytes for s in samples),
        "rss_kib_max": max(s.rss_kib for s in samples),
        "lines_per_s": lines_per_s,
        "fires": fires,
        "fires_skipped": skipped,
        "fires_expected": math.floor(elapsed),
        "job_latency_s_max": max(latencies, default=None),
        "dropped_log_lines": samples[-1].dropped_log_lines,
        "log_lines_trimmed": samples[-1].log_lines_trimmed,
        "ping_ms_max": max(s.ping_ms for s in samples),
        "service_restarts": service.get("restarts"),
        "last_retention": last_retention,
        "daemon_exit": code,
    }


def main(argv: list[str] | None = None) -> int:
    """Command line: `--seconds N` (default 120) or `--quick` (30 s)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--seconds", type=float, default=0.0, help="how long to soak [120]")
    parser.add_argument("--quick", action="store_true", help="a 30 s soak")
    args = parser.parse_args(argv)
    figures = run_soak(args.seconds, args.quick)
    return 0 if figures["db_levelled"] is not False and figures["rss_levelled"] is not False else 1


if __name__ == "__main__":
    sys.exit(main())
