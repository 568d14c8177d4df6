"""Spawn cost of containment: /bin/true jobs through the daemon, cgroups against process groups.

Four daemons of this tree, interleaved and repeated (the host is shared, so
the figures wander): process groups spawned with posix_spawn (what the daemon
did before cgroups), process groups spawned by the `_spawn` extension (clone3),
cgroups with the extension (the child is born in its cgroup: clone3
CLONE_INTO_CGROUP) and cgroups without it (posix_spawn, then the pid written
to cgroup.procs). Run: python -m integration.bench.bench_containment [N] [ROUNDS].
"""

from __future__ import annotations

import json
import sys
import time

from integration.bench.common import (
    TRUE,
    bench_daemon,
    cpu_seconds,
    daemon_pid,
    wait_all_finished,
)

VARIANTS = {
    "process-group, posix_spawn (before)": {
        "HERO_PROC_CONTAINMENT": "process-group",
        "HERO_PROC_NO_SPAWN_EXT": "1",
    },
    "process-group, clone3": {"HERO_PROC_CONTAINMENT": "process-group"},
    "cgroup2, clone3 into the cgroup": {"HERO_PROC_CONTAINMENT": "cgroup2"},
    "cgroup2, posix_spawn + cgroup.procs": {
        "HERO_PROC_CONTAINMENT": "cgroup2",
        "HERO_PROC_NO_SPAWN_EXT": "1",
    },
}


def run_once(n: int, env: dict[str, str]) -> tuple[float, float]:
    """(jobs/s, daemon CPU ms per job) for n /bin/true jobs at the default max-parallel."""
    with bench_daemon([], env=env) as daemon:
        pid = daemon_pid(daemon)
        with daemon.client(timeout=600) as c:
            info = c.call("system.info")
            assert info["containment"] == env["HERO_PROC_CONTAINMENT"], info
            cpu0 = cpu_seconds(pid)
            t0 = time.perf_counter()
            submitted = c.call("job.submit_batch", {"jobs": [{"command": [TRUE]}] * n})
            wait_all_finished(c, max(submitted["submitted"]))
            wall = time.perf_counter() - t0
            cpu = cpu_seconds(pid) - cpu0
    return n / wall, cpu * 1000 / n


def main() -> None:
    """Print a table (median of the rounds) and the raw figures as JSON."""
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    raw: dict[str, list[tuple[float, float]]] = {k: [] for k in VARIANTS}
    for _ in range(rounds):
        for name, env in VARIANTS.items():
            raw[name].append(run_once(n, env))
    base = sorted(r[0] for r in raw[next(iter(VARIANTS))])[rounds // 2]
    print(f"{n:,} /bin/true jobs, median of {rounds} interleaved rounds")
    for name, runs in raw.items():
        rate = sorted(r[0] for r in runs)[rounds // 2]
        cpu = sorted(r[1] for r in runs)[rounds // 2]
        print(f"  {name:40s} {rate:8,.0f} jobs/s  x{rate / base:4.2f}  {cpu:5.2f} ms CPU/job")
    print(json.dumps(raw))


if __name__ == "__main__":
    main()
