"""The dashboard: page load times with 100 services and 10,000 jobs; CPU with 10 dashboards open.

Page loads are timed from the request to the last byte of the HTML (a fresh
connection each, what a browser's navigation costs the daemon), each beside
the RPC call(s) over the Unix socket that read the same data, measured in the
same run: the ratio is what the rendering costs on top of the reads.

Idle: 10 dashboards (headless Chromium pages on /services, each with its SSE
stream; raw SSE streams if Chromium is missing) held open on an idle daemon,
its CPU over a window, beside an identical daemon without listeners over the
same window.
"""

from __future__ import annotations

import contextlib
import http.client
import time
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import urlsplit

from hero_procd.client import Client
from integration.bench.bench_services import define_services, service_names
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
from integration.web_helpers import CHROMIUM, CHROMIUM_ARGS

MS = 1000.0
DASHBOARDS = 10


def _ui(c: Client) -> tuple[str, str]:
    ui = c.call("system.ui")
    login = str(ui["login_url"])
    return str(ui["url"]), login.split("token=", 1)[1]


def _get(url: str, path: str, token: str) -> float:
    """Seconds to fetch `path` (status 200) on a fresh connection."""
    parts = urlsplit(url)
    start = time.perf_counter()
    conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=60)
    try:
        conn.request(
            "GET", path, headers={"Host": parts.netloc, "Authorization": f"Bearer {token}"}
        )
        resp = conn.getresponse()
        resp.read()
        assert resp.status == 200, (path, resp.status)
    finally:
        conn.close()
    return time.perf_counter() - start


def _times(fn: Callable[[], Any], rounds: int) -> list[float]:
    fn()  # warm: templates compiled, pages of the store in the cache
    out = []
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return out


def _fill(c: Client, services: int, jobs: int) -> tuple[int, int]:
    """Define and start `services`, run `jobs` (one run of 100 with edges among them)."""
    define_services(c, services)
    for name in service_names(services):
        c.call("service.start", name=name)
    last = 0
    for start in range(0, jobs - 100, 1000):
        n = min(1000, jobs - 100 - start)
        batch = c.call(
            "job.submit_batch",
            jobs=[{"command": ["true"], "tags": [f"t{i % 10}"]} for i in range(n)],
        )
        last = max(last, *batch["submitted"]) if batch["submitted"] else last
    run = c.call(
        "run.submit",
        jobs=[
            {"key": f"k{i}", "command": ["true"], "depends_on": [f"k{i // 2}"] if i else []}
            for i in range(100)
        ],
    )
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        counts = c.call("system.info")["counts"]
        left = c.call("job.list", status="queued", limit=1)["jobs"]
        running = c.call("job.list", status="running", limit=1)["jobs"]
        if counts["jobs"] >= jobs and not left and not running:
            break
        time.sleep(0.5)
    return int(run["id"]), max(last, 1)


def bench_web_pages(sizes: Sizes) -> BenchResult:
    """Time each page against the RPC reads it shows."""
    result = BenchResult("web_pages")
    services = sizes.services
    jobs = 10_000 if not sizes.quick else 2_000
    rounds = 20 if not sizes.quick else 5
    with bench_daemon(["--http", "127.0.0.1:0"]) as daemon, daemon.client() as c:
        run_id, job_id = _fill(c, services, jobs)
        url, token = _ui(c)
        pages: list[tuple[str, str, Callable[[], Any]]] = [
            (
                "overview",
                "/",
                lambda: (c.call("service.status_all"), c.call("job.list", status="failed")),
            ),
            ("services", "/services", lambda: c.call("service.status_all")),
            ("jobs", "/jobs", lambda: c.call("job.list", limit=50)),
            (
                "jobs by status",
                "/jobs?status=succeeded",
                lambda: c.call("job.list", status="succeeded", limit=50),
            ),
            ("jobs by tag", "/jobs?tag=t3", lambda: c.call("job.list", tag="t3", limit=50)),
            (
                "job",
                f"/jobs/{job_id}",
                lambda: (c.call("job.get", id=job_id), c.call("job.logs", id=job_id)),
            ),
            ("runs", "/runs", lambda: c.call("run.list", limit=50)),
            ("run graph (100 jobs)", f"/runs/{run_id}", lambda: c.call("run.get", id=run_id)),
            ("schedules", "/schedules", lambda: c.call("schedule.list")),
            ("metrics", "/metrics", lambda: c.call("system.info")),
        ]
        figures: dict[str, Any] = {"services": services, "jobs": jobs, "rounds": rounds}
        for name, path, rpc in pages:
            ours = _times(lambda path=path: _get(url, path, token), rounds)  # type: ignore[misc]
            base = _times(rpc, rounds)
            figures[name] = {
                "page_ms_median": median(ours) * MS,
                "page_ms_p95": percentile(ours, 95) * MS,
                "rpc_ms_median": median(base) * MS,
            }
            result.rows.append(
                Row(
                    f"page {name}, p95 of {rounds}",
                    percentile(ours, 95) * MS,
                    "ms",
                    median(base) * MS,
                    "the same reads over RPC (median)",
                    Target("<=", 200.0),
                    f"{services} services, {jobs} jobs; fresh TCP connection per load",
                )
            )
    result.figures = figures
    return result


@contextlib.contextmanager
def _dashboards(url: str, login_url: str, count: int) -> Iterator[str]:
    """`count` dashboards open on /services; how they were opened."""
    if CHROMIUM.exists():
        from playwright.sync_api import sync_playwright

        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
            try:
                # One context each (as 10 browsers): within one, Chromium holds at most 6
                # HTTP/1.1 connections per host, and each open page keeps one for its stream.
                for _ in range(count):
                    page = browser.new_context().new_page()
                    page.goto(login_url)
                    page.wait_for_url(url)
                    page.goto(url + "services")
                    page.wait_for_selector("#services")
                yield f"{count} Chromium pages on /services"
            finally:
                browser.close()
        return
    parts = urlsplit(url)
    token = login_url.split("token=", 1)[1]
    conns = []
    try:
        for _ in range(count):
            conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=60)
            conn.request(
                "GET",
                "/events?topics=jobs,services",
                headers={"Host": parts.netloc, "Authorization": f"Bearer {token}"},
            )
            conn.getresponse()
            conns.append(conn)
        yield f"{count} raw SSE streams (no Chromium)"
    finally:
        for conn in conns:
            conn.close()


def bench_web_idle(sizes: Sizes) -> BenchResult:
    """CPU of an idle daemon with 10 dashboards open, beside one with none, same window."""
    result = BenchResult("web_idle")
    window = sizes.idle_s
    services = min(sizes.services, 20)
    with (
        bench_daemon(["--http", "127.0.0.1:0"]) as ours,
        bench_daemon() as base,
        ours.client() as c,
        base.client() as b,
    ):
        for client in (c, b):
            define_services(client, services)
            for name in service_names(services):
                client.call("service.start", name=name)
        url, _ = _ui(c)
        login = str(c.call("system.ui")["login_url"])
        with _dashboards(url, login, DASHBOARDS) as how:
            time.sleep(1.0)  # settle: pages loaded, streams open
            pid, base_pid = daemon_pid(ours), daemon_pid(base)
            ours0, base0 = cpu_seconds(pid), cpu_seconds(base_pid)
            time.sleep(window)
            ours_cpu = cpu_seconds(pid) - ours0
            base_cpu = cpu_seconds(base_pid) - base0
    percent = ours_cpu / window * 100
    result.figures = {
        "window_s": window,
        "dashboards": how,
        "services_running": services,
        "ours_cpu_s": ours_cpu,
        "baseline_cpu_s": base_cpu,
        "ours_percent_of_a_core": percent,
    }
    result.rows.append(
        Row(
            f"idle CPU, {how}, {window:g} s",
            percent,
            "% core",
            base_cpu / window * 100,
            "same daemon, no dashboard",
            Target("<=", 1.0),
            "utime+stime of the daemon from /proc in 10 ms ticks",
        )
    )
    return result
