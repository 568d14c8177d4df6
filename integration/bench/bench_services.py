"""Services: service.status_all in parallel and in sequence, and idle CPU, against supervisord."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from hero_procd.client import Client
from integration.bench.common import (
    BenchResult,
    Row,
    Sizes,
    Target,
    bench_daemon,
    cpu_seconds,
    daemon_pid,
    median,
    percentile,
)
from integration.bench.supervisord import Supervisord, server_proxy

MS = 1000.0


def define_services(c: Client, count: int) -> None:
    """Define `count` services running `sleep 1000` (defined only, not started)."""
    for i in range(count):
        c.call("service.define", {"name": f"svc{i:03d}", "command": ["sleep", "1000"]})


def parallel_wall(calls: Sequence[Callable[[], Any]]) -> float:
    """Seconds from releasing one thread per call to the last answer."""
    go = threading.Event()
    ends: list[float] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def worker(call: Callable[[], Any]) -> None:
        go.wait()
        try:
            call()
        except BaseException as exc:
            with lock:
                errors.append(exc)
        end = time.perf_counter()
        with lock:
            ends.append(end)

    threads = [threading.Thread(target=worker, args=(call,)) for call in calls]
    for t in threads:
        t.start()
    time.sleep(0.2)  # every thread is parked on the event
    t0 = time.perf_counter()
    go.set()
    for t in threads:
        t.join()
    if errors:
        raise RuntimeError(f"{len(errors)} parallel calls failed") from errors[0]
    return max(ends) - t0


def sequential_latencies(call: Callable[[], Any], count: int, warmup: int = 10) -> list[float]:
    """Seconds of each of `count` calls in a row, after `warmup` untimed ones."""
    for _ in range(warmup):
        call()
    out: list[float] = []
    for _ in range(count):
        t0 = time.perf_counter()
        call()
        out.append(time.perf_counter() - t0)
    return out


def _ours_status_all(sizes: Sizes) -> dict[str, Any]:
    with bench_daemon() as daemon:
        with daemon.client() as c:
            define_services(c, sizes.services)
            seen = len(c.call("service.status_all")["services"])
        clients = [daemon.client() for _ in range(sizes.parallel_calls)]
        try:
            for cl in clients:
                cl.call("system.ping")  # connected and served once before timing
            calls = [(lambda cl=cl: cl.call("service.status_all")) for cl in clients]
            walls = [parallel_wall(calls) for _ in range(sizes.parallel_rounds)]
            lat = sequential_latencies(
                lambda: clients[0].call("service.status_all"), sizes.sequential_calls
            )
        finally:
            for cl in clients:
                cl.close()
    return {"services_seen": seen, "parallel_wall_s": walls, "sequential_s": lat}


def _supervisord_status_all(sizes: Sizes) -> dict[str, Any]:
    with Supervisord(sizes.services) as sv:
        proxies = [server_proxy(sv.socket_path) for _ in range(sizes.parallel_calls)]
        try:
            for proxy, transport in proxies:
                transport.connect()
                proxy.supervisor.getPID()
            seen = len(proxies[0][0].supervisor.getAllProcessInfo())  # type: ignore[arg-type]
            calls = [
                (lambda proxy=proxy: proxy.supervisor.getAllProcessInfo()) for proxy, _ in proxies
            ]
            walls = [parallel_wall(calls) for _ in range(sizes.parallel_rounds)]
            one = proxies[0][0]
            lat = sequential_latencies(
                lambda: one.supervisor.getAllProcessInfo(), sizes.sequential_calls
            )
        finally:
            for _, transport in proxies:
                transport.close()
    return {"programs_seen": seen, "parallel_wall_s": walls, "sequential_s": lat}


def bench_status_all(sizes: Sizes) -> BenchResult:
    """6. P parallel service.status_all over S services vs supervisord's getAllProcessInfo."""
    result = BenchResult("status_all")
    ours = _ours_status_all(sizes)
    base = _supervisord_status_all(sizes)
    result.figures = {
        "services": sizes.services,
        "parallel_calls": sizes.parallel_calls,
        "ours": ours,
        "supervisord": base,
    }
    p = sizes.parallel_calls
    s = sizes.services
    result.rows += [
        Row(
            f"{p} parallel status_all, {s} services",
            median(ours["parallel_wall_s"]) * MS,
            "ms",
            median(base["parallel_wall_s"]) * MS,
            "supervisord getAllProcessInfo",
            Target("<=", 150),
            f"median of {sizes.parallel_rounds} rounds; {ours['services_seen']} services seen",
        ),
        Row(
            f"status_all p50 of {sizes.sequential_calls}",
            percentile(ours["sequential_s"], 50) * MS,
            "ms",
            percentile(base["sequential_s"], 50) * MS,
            "supervisord p50",
            Target("<=", 2),
        ),
        Row(
            "  p99",
            percentile(ours["sequential_s"], 99) * MS,
            "ms",
            percentile(base["sequential_s"], 99) * MS,
            "supervisord p99",
        ),
    ]
    return result


def bench_idle(sizes: Sizes) -> BenchResult:
    """8. The daemon's CPU while idle with S defined services, vs supervisord with S programs."""
    result = BenchResult("idle")
    settle_s = 1.0
    with bench_daemon() as daemon:
        with daemon.client() as c:
            define_services(c, sizes.services)
        pid = daemon_pid(daemon)
        time.sleep(settle_s)
        cpu0 = cpu_seconds(pid)
        time.sleep(sizes.idle_s)
        ours = cpu_seconds(pid) - cpu0
    with Supervisord(sizes.services) as sv:
        time.sleep(settle_s)
        cpu0 = cpu_seconds(sv.pid)
        time.sleep(sizes.idle_s)
        base = cpu_seconds(sv.pid) - cpu0
    result.figures = {"idle_s": sizes.idle_s, "ours_cpu_s": ours, "supervisord_cpu_s": base}
    result.rows.append(
        Row(
            f"idle CPU over {sizes.idle_s:g} s, {sizes.services} services",
            ours * MS,
            "ms",
            base * MS,
            "supervisord, programs running",
            Target("<=", 4 * sizes.idle_s),
            "clock ticks of 10 ms; target ~0 (<= 0.4% of a core)",
        )
    )
    return result
