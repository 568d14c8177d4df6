"""Services: 100 running `sleep 1000` under hero-procd beside the same 100 under supervisord.

Both supervisors run their programs in the same benchmark (alive at the same
time where the figures are compared, and measured turn about), with the same
start time: hero-procd's `start_secs` and supervisord's `startsecs` (an integer
there) are both START_SECS.

- service_start: from the first `service.start` to all `running` (status_all
  polled), against `startAllProcesses` to all RUNNING (getAllProcessInfo polled);
- status_all: P parallel calls, each on its own connection opened beforehand,
  and p50/p99 of sequential calls, against getAllProcessInfo;
- idle: CPU over the same idle window, and memory_bytes against /proc.
"""

from __future__ import annotations

import contextlib
import functools
import sys
import threading
import time
import xmlrpc.client
from collections.abc import Callable, Iterator, Sequence
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
    group_rss_bytes,
    median,
    percentile,
)
from integration.bench.supervisord import Supervisord, server_proxy
from integration.daemon_proc import DaemonProcess

MS = 1000.0
KIB = 1024.0
START_SECS = 1  # hero-procd's start_secs and supervisord's startsecs
START_CONNECTIONS = 10  # service.start in parallel: one thread per connection
POLL_S = 0.02  # how often status_all / getAllProcessInfo is polled while starting
START_TIMEOUT_S = 120.0


def service_names(count: int) -> list[str]:
    """svc000, svc001, ..."""
    return [f"svc{i:03d}" for i in range(count)]


def define_services(c: Client, count: int, start_secs: float = START_SECS) -> None:
    """Define `count` services running `sleep 1000` (defined only, not started)."""
    for name in service_names(count):
        c.call(
            "service.define",
            {"name": name, "command": ["sleep", "1000"], "start_secs": start_secs},
        )


def run_threads(fns: Sequence[Callable[[], Any]]) -> None:
    """Run each function on its own thread; wait for all; raise the first failure."""
    errors: list[BaseException] = []

    def worker(fn: Callable[[], Any]) -> None:
        try:
            fn()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(fn,)) for fn in fns]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise RuntimeError(f"{len(errors)} of {len(fns)} threads failed") from errors[0]


def deal(items: Sequence[str], hands: int) -> list[list[str]]:
    """Items dealt round-robin into `hands` lists."""
    return [list(items[i::hands]) for i in range(hands)]


def call_each(client: Client, method: str, names: list[str]) -> None:
    """`method` for each name, one by one on one connection."""
    for name in names:
        client.call(method, name=name)


def poll_until(count: Callable[[], int], want: int, timeout_s: float = START_TIMEOUT_S) -> float:
    """perf_counter() at the first poll (every POLL_S) where count() == want."""
    deadline = time.monotonic() + timeout_s
    while True:
        if count() == want:
            return time.perf_counter()
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {count()} of {want} reached the state in {timeout_s}s")
        time.sleep(POLL_S)


def ours_running(c: Client) -> int:
    """How many services status_all shows running."""
    return sum(1 for s in c.call("service.status_all")["services"] if s["state"] == "running")


def ours_stopped(c: Client) -> int:
    """How many services status_all shows stopped."""
    return sum(1 for s in c.call("service.status_all")["services"] if s["state"] == "stopped")


def start_ours(names: list[str], clients: list[Client], poller: Client) -> dict[str, float]:
    """Start every service, on len(clients) connections in parallel (one by one on each).

    `issue_s`: until the last service.start answered; `all_running_s`: until
    status_all (polled on `poller`) shows them all running.
    """
    t0 = time.perf_counter()
    if len(clients) == 1:
        for name in names:
            clients[0].call("service.start", name=name)
    else:
        run_threads(
            [
                functools.partial(call_each, cl, "service.start", share)
                for cl, share in zip(clients, deal(names, len(clients)), strict=True)
            ]
        )
    issued = time.perf_counter()
    done = poll_until(lambda: ours_running(poller), len(names))
    return {"issue_s": issued - t0, "all_running_s": done - t0}


def stop_ours(names: list[str], clients: list[Client], poller: Client) -> None:
    """Stop every service (in parallel on the clients) and wait until all are stopped."""
    run_threads(
        [
            functools.partial(call_each, cl, "service.stop", share)
            for cl, share in zip(clients, deal(names, len(clients)), strict=True)
        ]
    )
    poll_until(lambda: ours_stopped(poller), len(names))


def sv_count(proxy: xmlrpc.client.ServerProxy, state: str) -> int:
    """How many of supervisord's programs are in `state` (RUNNING, STOPPED...)."""
    infos = proxy.supervisor.getAllProcessInfo()
    assert isinstance(infos, list)
    return sum(1 for p in infos if p["statename"] == state)


def start_sv(proxy: xmlrpc.client.ServerProxy, programs: int) -> dict[str, float]:
    """startAllProcesses(wait=False), then getAllProcessInfo polled until all are RUNNING."""
    t0 = time.perf_counter()
    proxy.supervisor.startAllProcesses(False)
    issued = time.perf_counter()
    done = poll_until(lambda: sv_count(proxy, "RUNNING"), programs)
    return {"issue_s": issued - t0, "all_running_s": done - t0}


def stop_sv(proxy: xmlrpc.client.ServerProxy, programs: int) -> None:
    """stopAllProcesses and wait until all are STOPPED."""
    proxy.supervisor.stopAllProcesses(True)
    poll_until(lambda: sv_count(proxy, "STOPPED"), programs)


@contextlib.contextmanager
def running_daemon(count: int) -> Iterator[tuple[DaemonProcess, dict[str, float]]]:
    """A daemon with `count` services defined and started (in parallel); how long it took."""
    with bench_daemon() as daemon:
        with daemon.client() as c:
            define_services(c, count)
        clients = [daemon.client() for _ in range(START_CONNECTIONS)]
        try:
            with daemon.client() as poller:
                took = start_ours(service_names(count), clients, poller)
        finally:
            for cl in clients:
                cl.close()
        yield daemon, took


@contextlib.contextmanager
def running_supervisord(count: int) -> Iterator[tuple[Supervisord, dict[str, float]]]:
    """supervisord with `count` programs, started by startAllProcesses; how long it took."""
    with Supervisord(count, startsecs=START_SECS, autostart=False) as sv:
        proxy, transport = server_proxy(sv.socket_path)
        try:
            took = start_sv(proxy, count)
        finally:
            transport.close()
        yield sv, took


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


def bench_service_start(sizes: Sizes) -> BenchResult:
    """Start S services until all run: in parallel and one by one, vs supervisord's startAll."""
    result = BenchResult("service_start")
    s = sizes.services
    names = service_names(s)
    parallel: list[dict[str, float]] = []
    one_by_one: list[dict[str, float]] = []
    base: list[dict[str, float]] = []
    with bench_daemon() as daemon:
        with daemon.client() as c:
            define_services(c, s)
        clients = [daemon.client() for _ in range(START_CONNECTIONS)]
        try:
            with daemon.client() as poller:
                for _ in range(sizes.repeats):
                    parallel.append(start_ours(names, clients, poller))
                    stop_ours(names, clients, poller)
                    one_by_one.append(start_ours(names, clients[:1], poller))
                    stop_ours(names, clients, poller)
                entries = poller.call("service.status_all")["services"]
                restarts = sum(int(x["restarts"]) for x in entries)
        finally:
            for cl in clients:
                cl.close()
    with Supervisord(s, startsecs=START_SECS, autostart=False) as sv:
        proxy, transport = server_proxy(sv.socket_path)
        try:
            for _ in range(sizes.repeats):
                base.append(start_sv(proxy, s))
                stop_sv(proxy, s)
        finally:
            transport.close()
    result.figures = {
        "services": s,
        "start_secs": START_SECS,
        "connections": START_CONNECTIONS,
        "poll_s": POLL_S,
        "ours_parallel": parallel,
        "ours_one_by_one": one_by_one,
        "ours_restarts": restarts,
        "supervisord": base,
    }

    def med(runs: list[dict[str, float]], key: str = "all_running_s") -> float:
        return median([r[key] for r in runs]) * MS

    base_ms = med(base)
    result.rows += [
        Row(
            f"start {s} services to all running",
            med(parallel),
            "ms",
            base_ms,
            "supervisord startAllProcesses",
            note=(
                f"service.start on {START_CONNECTIONS} connections in parallel (one by one on "
                f"each; all answered in {med(parallel, 'issue_s'):.0f} ms), then status_all "
                f"polled every {POLL_S * MS:.0f} ms; start_secs = startsecs = {START_SECS}; "
                f"median of {sizes.repeats}; the floor is {START_SECS * MS:.0f} ms"
            ),
        ),
        Row(
            "  same, one by one on 1 connection",
            med(one_by_one),
            "ms",
            base_ms,
            "supervisord startAllProcesses",
            note=f"{s} service.start back to back answered in {med(one_by_one, 'issue_s'):.0f} ms",
        ),
    ]
    return result


def bench_status_all(sizes: Sizes) -> BenchResult:
    """P parallel service.status_all over S running services vs supervisord's getAllProcessInfo."""
    result = BenchResult("status_all")
    s, p = sizes.services, sizes.parallel_calls
    with running_daemon(s) as (daemon, ours_start), running_supervisord(s) as (sv, sv_start):
        clients = [daemon.client() for _ in range(p)]
        proxies = [server_proxy(sv.socket_path) for _ in range(p)]
        try:
            for cl in clients:
                cl.call("system.ping")  # connected and served once before timing
            for proxy, transport in proxies:
                transport.connect()
                proxy.supervisor.getPID()
            ours_seen = ours_running(clients[0])
            sv_seen = sv_count(proxies[0][0], "RUNNING")
            ours_calls = [(lambda cl=cl: cl.call("service.status_all")) for cl in clients]
            sv_calls = [
                (lambda proxy=proxy: proxy.supervisor.getAllProcessInfo()) for proxy, _ in proxies
            ]
            ours_walls: list[float] = []
            sv_walls: list[float] = []
            for _ in range(sizes.parallel_rounds):  # turn about
                ours_walls.append(parallel_wall(ours_calls))
                sv_walls.append(parallel_wall(sv_calls))
            ours_lat = sequential_latencies(ours_calls[0], sizes.sequential_calls)
            sv_lat = sequential_latencies(sv_calls[0], sizes.sequential_calls)
        finally:
            for cl in clients:
                cl.close()
            for _, transport in proxies:
                transport.close()
    result.figures = {
        "services": s,
        "parallel_calls": p,
        "ours": {
            "running_seen": ours_seen,
            "start": ours_start,
            "parallel_wall_s": ours_walls,
            "sequential_s": ours_lat,
        },
        "supervisord": {
            "running_seen": sv_seen,
            "start": sv_start,
            "parallel_wall_s": sv_walls,
            "sequential_s": sv_lat,
        },
    }
    result.rows += [
        Row(
            f"{p} parallel status_all, {s} running",
            median(ours_walls) * MS,
            "ms",
            median(sv_walls) * MS,
            "supervisord getAllProcessInfo",
            Target("<=", 150),
            f"each call on its own connection opened beforehand; median of "
            f"{sizes.parallel_rounds} rounds, turn about with supervisord; running seen: "
            f"{ours_seen} ours, {sv_seen} supervisord's",
        ),
        Row(
            f"status_all p50 of {sizes.sequential_calls}, {s} running",
            percentile(ours_lat, 50) * MS,
            "ms",
            percentile(sv_lat, 50) * MS,
            "supervisord p50",
            Target("<=", 2),
            "back to back on one connection (then supervisord's, both up)",
        ),
        Row(
            "  p99",
            percentile(ours_lat, 99) * MS,
            "ms",
            percentile(sv_lat, 99) * MS,
            "supervisord p99",
        ),
    ]
    return result


def wait_memory(c: Client, name: str, timeout_s: float = 15.0) -> dict[str, Any]:
    """The status_all entry of `name` once the sampler has given it a memory_bytes."""
    deadline = time.monotonic() + timeout_s
    while True:
        entry = next(x for x in c.call("service.status_all")["services"] if x["name"] == name)
        if entry["memory_bytes"] is not None or time.monotonic() > deadline:
            return dict(entry)
        time.sleep(0.5)


def bench_idle(sizes: Sizes) -> BenchResult:
    """CPU over the same idle window: the daemon with S running services vs supervisord."""
    result = BenchResult("idle")
    settle_s = 1.0
    s = sizes.services
    with running_daemon(s) as (daemon, _), running_supervisord(s) as (sv, _):
        pid = daemon_pid(daemon)
        time.sleep(settle_s)
        ours0, sv0 = cpu_seconds(pid), cpu_seconds(sv.pid)
        time.sleep(sizes.idle_s)
        ours, base = cpu_seconds(pid) - ours0, cpu_seconds(sv.pid) - sv0
        with daemon.client() as c:
            running = ours_running(c)
            entry = wait_memory(c, "svc000")
        group_rss, members = group_rss_bytes(int(entry["pid"]))
    reported = entry["memory_bytes"]
    result.figures = {
        "idle_s": sizes.idle_s,
        "services_running": running,
        "ours_cpu_s": ours,
        "supervisord_cpu_s": base,
        "memory_check": {
            "service": entry["name"],
            "pid": entry["pid"],
            "memory_bytes": reported,
            "group_vmrss_bytes": group_rss,
            "group_processes": members,
        },
    }
    within = (
        "n/a" if not reported or not group_rss else f"{abs(reported / group_rss - 1) * 100:.0f}%"
    )
    print(
        f"[bench] memory check: status_all says svc000 uses {reported} bytes; VmRSS of its "
        f"process group ({members} process(es)) sums to {group_rss} bytes: off by {within}",
        file=sys.stderr,
        flush=True,
    )
    result.rows += [
        Row(
            f"idle CPU over {sizes.idle_s:g} s, {s} running",
            ours * MS,
            "ms",
            base * MS,
            "supervisord, same window",
            Target("<=", 4 * sizes.idle_s),
            "utime+stime from /proc/PID/stat in 10 ms ticks, both over the same window; "
            "target ~0 (<= 0.4% of a core); our stats are sampled on demand "
            "(when a status read finds them older than 3 s)",
        ),
        Row(
            "memory_bytes of one service",
            None if reported is None else reported / KIB,
            "KiB",
            group_rss / KIB,
            "VmRSS sum of its group",
            Target("±", 0.25),
            f"service.status_all's memory_bytes for svc000 against /proc VmRSS of the "
            f"{members} process(es) in its group (pgid {entry['pid']}): off by {within}",
        ),
    ]
    return result
