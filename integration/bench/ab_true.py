"""Interleaved A/B of two source trees: daemon CPU per /bin/true job, and jobs/s.

    python -m integration.bench.ab_true N ROUNDS CONTAINMENT TREE_A TREE_B [TREE ...]

A tree is a source tree of hero-procd (`git archive COMMIT | tar -x -C DIR`, with
hero_procd/engine/_spawn*.so copied in from a built checkout). Each round runs a
fresh daemon of every tree in turn (its directory first on PYTHONPATH), submits N
`/bin/true` jobs in one `job.submit_batch` at the default max-parallel and waits
for all; it prints jobs/s and the daemon's CPU ms per job (all threads, the event
loop's apart), then the median of the rounds. On a shared machine the rate wanders
with the load; the CPU per job, compared round by round, is the figure to read.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys

_CHILD = r"""
import sys, time
from integration.bench.common import (
    TRUE, bench_daemon, cpu_seconds, daemon_pid, main_thread_cpu_seconds, wait_all_finished,
)
n, mode = int(sys.argv[1]), sys.argv[2]
with bench_daemon([], env={"HERO_PROC_CONTAINMENT": mode}) as d:
    pid = daemon_pid(d)
    with d.client(timeout=600) as c:
        assert c.call("system.info")["containment"] == mode
        cpu0, loop0 = cpu_seconds(pid), main_thread_cpu_seconds(pid)
        t0 = time.perf_counter()
        s = c.call("job.submit_batch", {"jobs": [{"command": [TRUE]}] * n})
        wait_all_finished(c, max(s["submitted"]))
        wall = time.perf_counter() - t0
        cpu, lp = cpu_seconds(pid) - cpu0, main_thread_cpu_seconds(pid) - loop0
print(n / wall, cpu * 1000 / n, lp * 1000 / n)
"""


def main() -> None:
    """Run the rounds and print each run and the medians."""
    n, rounds, mode, trees = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4:]
    results: dict[str, list[tuple[float, float, float]]] = {t: [] for t in trees}
    for r in range(rounds):
        for tree in trees:
            env = dict(os.environ, PYTHONPATH=tree)
            out = subprocess.run(
                [sys.executable, "-c", _CHILD, str(n), mode],
                env=env,
                cwd=tree,
                capture_output=True,
                text=True,
                check=True,
            ).stdout.split()
            rate, cpu, loop = (float(x) for x in out)
            results[tree].append((rate, cpu, loop))
            print(
                f"round {r} {tree:25s} {rate:6.0f} jobs/s  {cpu:.3f} ms/job (loop {loop:.3f})",
                flush=True,
            )
    for tree, runs in results.items():
        print(
            f"MEDIAN {tree:25s} {statistics.median(x[0] for x in runs):6.0f} jobs/s  "
            f"{statistics.median(x[1] for x in runs):.3f} ms/job "
            f"(loop {statistics.median(x[2] for x in runs):.3f})"
        )


if __name__ == "__main__":
    main()
