"""The dashboard's parts on their own: change feed, auth, run graph, metrics on a real store."""

from __future__ import annotations

import asyncio
import json
import os
import random
import re
import stat
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from hero_procd.app import App
from hero_procd.config import Config
from hero_procd.errors import NotFound
from hero_procd.model import CommandSpec, JobRequest
from hero_procd.store import Store
from hero_procd.store.dashboard import DashboardApi
from hero_procd.web import graph
from hero_procd.web.app import LOG_EVENT_BYTES, log_events
from hero_procd.web.auth import (
    AuthError,
    Guard,
    host_names,
    is_loopback,
    load_or_create_token,
    token_path,
)
from hero_procd.web.feed import MAX_PENDING_BYTES, MAX_PENDING_LINES, Feed
from hero_procd.web.listen import parse_address
from tests.conftest import StoreRunner

# -- the change feed ---------------------------------------------------------------------


def test_publish_without_subscribers_schedules_nothing() -> None:
    async def body() -> None:
        feed = Feed(coalesce_s=0.01)
        for _ in range(1000):
            feed.publish("jobs")
            feed.published_by("job.submit")
        feed.log_rows([("job", "1", 1, "stdout", 0.0, "x")])
        assert feed._timer is None and feed._pending == set()

    asyncio.run(body())


def test_many_changes_reach_a_subscriber_as_one_event_per_topic() -> None:
    async def body() -> None:
        feed = Feed(coalesce_s=0.02)
        jobs = feed.subscribe(["jobs"])
        both = feed.subscribe(["jobs", "services"])
        for _ in range(random.randint(1, 500)):
            feed.publish(random.choice(["jobs", "services"]))
        feed.publish("jobs")
        await asyncio.wait_for(jobs.wakeup.wait(), 5)
        assert feed.published == 1
        assert jobs.take()[0] == {"jobs"}
        assert both.take()[0] <= {"jobs", "services"}
        assert not jobs.wakeup.is_set()
        feed.publish("services")  # not a topic of `jobs`
        await asyncio.wait_for(both.wakeup.wait(), 5)
        assert not jobs.wakeup.is_set()
        feed.unsubscribe(jobs)
        feed.unsubscribe(both)
        assert feed.subscribers == 0

    asyncio.run(body())


def test_read_only_rpc_methods_publish_nothing() -> None:
    async def body() -> None:
        feed = Feed(coalesce_s=0.01)
        sub = feed.subscribe(["jobs", "services", "schedules", "secrets"])
        for method in ("job.list", "job.get", "service.status_all", "system.info", "job.wait"):
            feed.published_by(method)
        assert feed._timer is None
        feed.published_by("schedule.pause")
        await asyncio.wait_for(sub.wakeup.wait(), 5)
        assert sub.take()[0] == {"schedules"}

    asyncio.run(body())


def test_log_lines_go_only_to_their_owners_tail() -> None:
    async def body() -> None:
        feed = Feed()
        one = feed.subscribe([], ("job", "1"))
        two = feed.subscribe([], ("job", "2"))
        svc = feed.subscribe([], ("service", "1"))
        rows = [("job", str(1 + i % 2), i, "stdout", 0.0, f"l{i}") for i in range(10)]
        feed.log_rows(rows)
        assert [r[5] for r in one.take()[1]] == ["l0", "l2", "l4", "l6", "l8"]
        assert [r[5] for r in two.take()[1]] == ["l1", "l3", "l5", "l7", "l9"]
        assert svc.take()[1] == []
        feed.unsubscribe(one)
        feed.log_rows(rows)
        assert ("job", "1") not in feed._tails
        assert len(two.take()[1]) == 5

    asyncio.run(body())


def test_a_slow_tail_is_told_it_missed_lines_and_memory_stays_bounded() -> None:
    async def body() -> None:
        feed = Feed()
        sub = feed.subscribe([], ("job", "7"))
        feed.log_rows([("job", "7", i, "stdout", 0.0, "x") for i in range(MAX_PENDING_LINES * 3)])
        _, lines, missed = sub.take()
        assert missed and len(lines) <= MAX_PENDING_LINES
        _, lines, missed = sub.take()
        assert not missed and lines == []

    asyncio.run(body())


def test_a_slow_tail_of_long_lines_is_bounded_by_bytes_too() -> None:
    """Fewer lines than the line bound, but long ones: the bytes held stay bounded."""

    async def body() -> None:
        feed = Feed()
        sub = feed.subscribe([], ("job", "7"))
        line = "x" * 16_000
        feed.log_rows([("job", "7", i, "stdout", 0.0, line) for i in range(1, 1001)])
        _, lines, missed = sub.take()
        assert missed and 0 < sum(len(r[5]) for r in lines) <= MAX_PENDING_BYTES
        assert lines[-1][2] == 1000  # the newest lines are the ones kept
        feed.log_rows([("job", "7", 1001, "stdout", 0.0, line)])
        _, lines, missed = sub.take()
        assert not missed and [r[2] for r in lines] == [1001]

    asyncio.run(body())


def test_log_events_are_cut_into_pieces_that_keep_every_line_once() -> None:
    rng = random.Random(7)
    rows = [("job", "1", seq, "stdout", 0.0, "<&>" * rng.randint(0, 6000)) for seq in range(1, 301)]
    events = list(log_events(rows))
    assert len(events) > 10
    seen: list[int] = []
    for event in events:
        head, _, data = event.decode().partition("data: ")
        assert data.endswith("\n\n") and "\n" not in data[:-2]
        seqs = [int(m) for m in re.findall(r'data-seq="(\d+)"', data)]
        assert head.startswith(f"id: {seqs[-1]}\n")
        assert sum(len(r[5]) for r in rows if r[2] in seqs[:-1]) < LOG_EVENT_BYTES
        seen += seqs
    assert seen == list(range(1, 301))
    assert list(log_events([])) == []


# -- auth --------------------------------------------------------------------------------


def test_token_file_is_created_private_and_read_back(tmp_path: Path) -> None:
    db = tmp_path / "hp.db"
    token = load_or_create_token(db)
    path = token_path(db)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert len(token) >= 40
    assert load_or_create_token(db) == token
    os.chmod(path, 0o640)
    with pytest.raises(AuthError, match="readable by others"):
        load_or_create_token(db)
    os.chmod(path, 0o600)
    path.write_text("short\n")
    with pytest.raises(AuthError, match="too short"):
        load_or_create_token(db)


def test_a_symlinked_token_file_is_refused(tmp_path: Path) -> None:
    db = tmp_path / "hp.db"
    target = tmp_path / "elsewhere"
    target.write_text("x" * 64)
    os.chmod(target, 0o600)
    token_path(db).symlink_to(target)
    with pytest.raises(OSError):
        load_or_create_token(db)


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.9.9.9", True),
        ("::1", True),
        ("[::1]", True),
        ("localhost", True),
        ("0.0.0.0", False),
        ("10.0.0.1", False),
        ("example.com", False),
        ("localhost.evil.example", False),
    ],
)
def test_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_host_names_and_checks() -> None:
    names = host_names("127.0.0.1", 8080)
    guard = Guard("t" * 43, names)
    for ok in (b"127.0.0.1:8080", b"localhost:8080", b"LocalHost:8080", b"[::1]:8080"):
        assert guard.host_ok(ok), ok
    for bad in (None, b"", b"127.0.0.1", b"evil:8080", b"127.0.0.1:8081", b"localhost"):
        assert not guard.host_ok(bad), bad
    assert b"[::1]:9" in host_names("::1", 9)
    assert host_names("10.1.2.3", 80, ("box.lan",)) >= {b"10.1.2.3:80", b"box.lan", b"box.lan:80"}


def test_guard_bearer_cookie_and_csrf() -> None:
    token = "k" * 43
    guard = Guard(token, host_names("127.0.0.1", 1))
    assert guard.authenticate({b"authorization": f"Bearer {token}".encode()}) == "bearer"
    assert guard.authenticate({b"authorization": f"bearer {token}".encode()}) == "bearer"
    assert guard.authenticate({b"authorization": b"Bearer nope"}) is None
    cookie = guard.set_cookie()
    assert b"HttpOnly" in cookie and b"SameSite=Strict" in cookie and token.encode() not in cookie
    pair = cookie.split(b";", 1)[0]
    assert guard.authenticate({b"cookie": b"a=b; " + pair}) == "cookie"
    assert guard.authenticate({b"cookie": pair + b"0"}) is None
    # A bad Authorization header is not rescued by a good cookie.
    assert guard.authenticate({b"authorization": b"Bearer x", b"cookie": pair}) is None
    assert guard.csrf_ok({b"x-hero-csrf": guard.csrf_value.encode()})
    assert not guard.csrf_ok({b"x-hero-csrf": guard.cookie_value.encode()})
    assert not guard.csrf_ok({})
    other = Guard("z" * 43, guard.names)
    assert other.cookie_value != guard.cookie_value and other.csrf_value != guard.csrf_value


@pytest.mark.parametrize(
    ("text", "want"),
    [("127.0.0.1:8080", ("127.0.0.1", 8080)), ("[::1]:0", ("[::1]", 0)), ("h:1", ("h", 1))],
)
def test_parse_address(text: str, want: tuple[str, int]) -> None:
    assert parse_address(text) == want


@pytest.mark.parametrize("text", ["8080", ":8080", "host:", "host:99999", "[::1:80", "h:x"])
def test_parse_address_refuses(text: str) -> None:
    with pytest.raises(ValueError):
        parse_address(text)


# -- run graph ---------------------------------------------------------------------------


def _job(i: int, key: str, deps: list[str], status: str = "queued") -> dict[str, object]:
    return {"id": i, "key": key, "status": status, "depends_on": deps}


def test_layers_follow_the_longest_dependency_chain() -> None:
    jobs = [
        _job(1, "a", []),
        _job(2, "b", ["a"]),
        _job(3, "c", ["b"]),
        _job(4, "d", ["a", "c"]),
        _job(5, "e", []),
    ]
    nodes, edges = graph.layout(jobs)
    layer = {n.key: n.layer for n in nodes}
    assert layer == {"a": 0, "b": 1, "c": 2, "d": 3, "e": 0}
    assert sorted((s.key, d.key) for s, d in edges) == [
        ("a", "b"),
        ("a", "d"),
        ("b", "c"),
        ("c", "d"),
    ]
    assert all(s.layer < d.layer for s, d in edges)
    assert len({(n.layer, n.row) for n in nodes}) == len(nodes)  # no two nodes overlap


def test_a_long_chain_and_a_wide_fan_are_drawn() -> None:
    chain = [_job(i, f"k{i}", [f"k{i - 1}"] if i else []) for i in range(5000)]
    nodes, edges = graph.layout(chain)
    assert max(n.layer for n in nodes) == 4999 and len(edges) == 4999
    fan = [_job(0, "root", [])] + [_job(i, f"k{i}", ["root"]) for i in range(1, 2000)]
    assert graph.svg(fan).count('class="edge"') == 1999


def test_keys_and_statuses_are_escaped_in_the_svg() -> None:
    drawing = graph.svg([_job(1, '<script>alert("x")</script>', [], "failed")])
    assert "<script>" not in drawing and "&lt;script&gt;" in drawing


# -- metrics and dashboard reads on a real store ------------------------------------------


def test_metrics_scrape_a_real_store(run_store: StoreRunner, db_path: Path, backend: str) -> None:
    async def body(store: Store) -> None:
        ids = [
            await store.jobs.submit(
                JobRequest(spec=CommandSpec(command=["true"]), tags=["t"] if i % 2 else [])
            )
            for i in range(30)
        ]
        submitted = ids
        app = App(config=Config(db_path=db_path), store=store, openrpc={})

        async def ok(app: App, p: object) -> int:
            return 1

        async def missing(app: App, p: object) -> int:
            raise NotFound("nope")

        timed_ok = app.observed("job.get", ok)
        timed_missing = app.observed("job.get", missing)
        for _ in range(3):
            await timed_ok(app, None)
        with pytest.raises(NotFound):
            await timed_missing(app, None)
        text = (await app.metrics.render(app)).decode()
        samples = {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for f in text_string_to_metric_families(text)
            for s in f.samples
        }
        assert samples[("hero_proc_jobs", (("status", "queued"),))] == 30
        assert samples[("hero_proc_jobs", (("status", "running"),))] == 0
        assert (
            samples[("hero_proc_rpc_calls_total", (("method", "job.get"), ("outcome", "ok")))] == 3
        )
        assert (
            samples[("hero_proc_rpc_calls_total", (("method", "job.get"), ("outcome", "-32001")))]
            == 1
        )
        assert samples[("hero_proc_rpc_duration_seconds_count", (("method", "job.get"),))] == 4
        # PostgreSQL has no database file of ours to measure.
        size = os.stat(db_path).st_size if backend == "sqlite" else 0
        assert samples[("hero_proc_db_bytes", ())] == size
        # Methods never called add no series.
        assert not any(name == "hero_proc_rpc_calls_total" and ("method", "job.list") in labels
                       for name, labels in samples)  # fmt: skip

        reads = DashboardApi(store.pool)
        newest = await reads.jobs_newest(limit=5)
        assert [j["id"] for j in newest] == sorted(submitted, reverse=True)[:5]
        older = await reads.jobs_newest(limit=5, before_id=newest[-1]["id"])
        assert older[0]["id"] == newest[-1]["id"] - 1
        tagged = await reads.jobs_newest(tag="t", limit=100)
        assert len(tagged) == 15
        assert await reads.jobs_by_status() == {"queued": 30}

    run_store(body)


def test_the_grafana_dashboard_names_only_metrics_we_export(
    run_store: StoreRunner, db_path: Path
) -> None:
    doc = json.loads((Path(__file__).parents[1] / "docs" / "grafana-dashboard.json").read_text())
    used = {
        name
        for panel in doc["panels"]
        for target in panel["targets"]
        for name in re.findall(r"hero_proc_[a-z_]+", target["expr"])
    }

    async def body(store: Store) -> set[str]:
        app = App(config=Config(db_path=db_path), store=store, openrpc={})

        async def ok(app: App, p: object) -> int:
            return 1

        await app.observed("system.ping", ok)(app, None)
        from hero_procd.engine.executor import RunningJob
        from hero_procd.store.jobs import ClaimedJob

        claim = ClaimedJob(1, None, CommandSpec(command=["true"]), None, 1, 1, "t")
        app.metrics.attempt_ended(RunningJob(claim))
        text = (await app.metrics.render(app)).decode()
        names: set[str] = set()
        for family in text_string_to_metric_families(text):
            # A family without samples yet (no service has a health check) is still declared.
            names |= {family.name, f"{family.name}_total"} | {s.name for s in family.samples}
        return names

    exported = run_store(body)
    assert used and used <= exported, used - exported


def test_rpc_latency_lands_in_the_right_buckets() -> None:
    from hero_procd.metrics import Metrics

    metrics = Metrics()

    async def slow(app: object, p: object) -> int:
        await asyncio.sleep(0.03)
        return 1

    async def body() -> None:
        await metrics.timed("job.wait", slow)(None, None)

    asyncio.run(body())
    from prometheus_client import generate_latest

    text = generate_latest(metrics.registry).decode()
    buckets = {
        s.labels["le"]: s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
        if s.name == "hero_proc_rpc_duration_seconds_bucket"
    }
    assert buckets["0.025"] == 0 and buckets["0.05"] == 1 and buckets["+Inf"] == 1
