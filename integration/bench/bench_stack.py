"""Stacks: one stack.apply of S services and S actions against S+S define/set calls.

- create: one `stack.apply` (one transaction) on a fresh daemon, against the
  same objects sent one call each (`service.define`, `action.set`) on another;
- unchanged: re-applying the same stack (a plan that writes nothing), and a
  dry run that changes one field of every service, against the same baseline.
"""

from __future__ import annotations

import time
from typing import Any

from integration.bench.common import BenchResult, Row, Sizes, bench_daemon, median

MS = 1000.0
ROUNDS = 3


def stack_doc(count: int, version: str = "1") -> dict[str, Any]:
    """A stack of `count` services and `count` actions."""
    return {
        "stack": "bench",
        "services": {
            f"svc{i:03d}": {"command": ["sleep", "1000"], "env": {"V": version}, "tags": ["b"]}
            for i in range(count)
        },
        "actions": {f"act{i:03d}": {"command": ["echo", str(i)]} for i in range(count)},
    }


def bench_stack_apply(sizes: Sizes) -> BenchResult:
    """stack.apply of S services + S actions vs 2S single define/set calls."""
    result = BenchResult("stack_apply")
    s = sizes.services
    doc = stack_doc(s)
    create: list[float] = []
    unchanged: list[float] = []
    dry: list[float] = []
    singles: list[float] = []
    for _ in range(ROUNDS):  # turn about, each on fresh daemons
        with bench_daemon() as daemon, daemon.client() as c:
            began = time.perf_counter()
            plan = c.call("stack.apply", doc)
            create.append(time.perf_counter() - began)
            assert plan["summary"]["create"] == 2 * s, plan["summary"]
            began = time.perf_counter()
            plan = c.call("stack.apply", doc)
            unchanged.append(time.perf_counter() - began)
            assert not plan["changed"]
            began = time.perf_counter()
            c.call("stack.apply", {**stack_doc(s, "2"), "dry_run": True})
            dry.append(time.perf_counter() - began)
        with bench_daemon() as daemon, daemon.client() as c:
            began = time.perf_counter()
            for name, fields in doc["services"].items():
                c.call("service.define", {"name": name, **fields})
            for name, fields in doc["actions"].items():
                c.call("action.set", {"name": name, **fields})
            singles.append(time.perf_counter() - began)
    base = median(singles) * MS
    label = f"{2 * s} define/set calls"
    result.figures = {
        "services": s,
        "actions": s,
        "create_s": create,
        "unchanged_s": unchanged,
        "dry_run_s": dry,
        "single_calls_s": singles,
    }
    result.rows = [
        Row(f"stack.apply: create {s} services + {s} actions", median(create) * MS, "ms",
            base, label),
        Row("  stack.apply: re-apply, no change", median(unchanged) * MS, "ms", base, label),
        Row(f"  stack.apply --dry-run: {s} services changed", median(dry) * MS, "ms", base, label),
    ]  # fmt: skip
    return result
