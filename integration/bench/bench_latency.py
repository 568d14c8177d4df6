"""Latency under load: 1,000 clients submitting at once, and system.ping while big requests run.

- clients: N connections opened beforehand, each sending one `job.submit` at the
  same moment (the answer's latency is measured per client, from its send to its
  answer); the baseline is the same N connections sending `system.ping` at once
  (no database): what the socket, the framing and this client cost.
- ping: `system.ping` sampled every PING_INTERVAL_S on its own connection by
  another process (so the bench's own JSON work never delays a sample), while
  one `job.submit_batch` of 50,000 jobs runs, then while 5 `job.list` of 10,000
  rows run in parallel; the baseline is the same sampler on the idle daemon.

Both run a --max-parallel 1 daemon whose only slot is held by one `sleep` job,
so the jobs they queue wait: what is measured is the request, not the executor.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import threading
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.synchronize import Event
from pathlib import Path
from typing import Any

import orjson

from hero_procd.client import Client
from integration.bench.common import (
    TRUE,
    BenchResult,
    Row,
    Sizes,
    Target,
    bench_daemon,
    count_jobs,
    hold_slot,
    percentile,
)

CONNECT_AT_ONCE = 100  # connections opened concurrently while setting up the N clients
PING_INTERVAL_S = 0.002  # one sample every 2 ms (back to back when a ping takes longer)
IDLE_S = 3.0
SETTLE_S = 0.5
MS = 1000.0


@dataclass(frozen=True)
class Stats:
    """p50 / p99 / max of a sample of latencies, in milliseconds."""

    n: int
    p50: float
    p99: float
    max: float

    @classmethod
    def of(cls, seconds: list[float]) -> Stats:
        """The stats of latencies given in seconds."""
        if not seconds:
            raise RuntimeError("no samples")
        ms = [s * MS for s in seconds]
        return cls(len(ms), percentile(ms, 50), percentile(ms, 99), max(ms))

    def to_dict(self) -> dict[str, float]:
        """For latest.json."""
        return {"n": self.n, "p50_ms": self.p50, "p99_ms": self.p99, "max_ms": self.max}


def stat_rows(
    name: str,
    ours: Stats,
    base: Stats,
    label: str,
    p99: Target | None,
    top: Target | None,
    note: str = "",
) -> list[Row]:
    """Three rows: p50, p99 and max of `ours` against the same of `base`."""
    return [
        Row(f"{name}: p50", ours.p50, "ms", base.p50, label, note=note),
        Row("  p99", ours.p99, "ms", base.p99, label, p99),
        Row("  max", ours.max, "ms", base.max, label, top),
    ]


# -- 1,000 clients at once -----------------------------------------------------------


Stream = tuple[asyncio.StreamReader, asyncio.StreamWriter]


async def _open(path: Path, n: int) -> list[Stream]:
    streams: list[Stream] = []
    for first in range(0, n, CONNECT_AT_ONCE):
        count = min(CONNECT_AT_ONCE, n - first)
        streams += await asyncio.gather(
            *(asyncio.open_unix_connection(str(path)) for _ in range(count))
        )
    return streams


async def _one(stream: Stream, frame: bytes) -> float:
    reader, writer = stream
    t0 = time.perf_counter()
    writer.write(frame)
    line = await reader.readline()
    seconds = time.perf_counter() - t0
    answer = orjson.loads(line)
    if "result" not in answer:
        raise RuntimeError(f"call failed: {answer.get('error')}")
    return seconds


async def _round(streams: list[Stream], method: str, params: dict[str, Any] | None) -> list[float]:
    """Every stream sends one call at once; each one's seconds from its send to its answer."""
    frames = []
    for i in range(len(streams)):
        req: dict[str, Any] = {"jsonrpc": "2.0", "id": i, "method": method}
        if params is not None:
            req["params"] = params
        frames.append(orjson.dumps(req) + b"\n")
    return list(await asyncio.gather(*(_one(s, f) for s, f in zip(streams, frames, strict=True))))


async def _clients(path: Path, n: int, rounds: int) -> dict[str, list[float]]:
    streams = await _open(path, n)
    try:
        await _round(streams, "system.ping", None)  # every connection is up and answered
        out: dict[str, list[float]] = {"ping": [], "submit": [], "round_p99_ms": []}
        for _ in range(rounds):
            await asyncio.sleep(SETTLE_S)
            out["ping"] += await _round(streams, "system.ping", None)
            await asyncio.sleep(SETTLE_S)
            submit = await _round(streams, "job.submit", {"command": [TRUE]})
            out["submit"] += submit
            out["round_p99_ms"].append(percentile(submit, 99) * MS)
        return out
    finally:
        for _, writer in streams:
            writer.close()
        await asyncio.gather(*(w.wait_closed() for _, w in streams), return_exceptions=True)


def bench_clients(sizes: Sizes) -> BenchResult:
    """N clients, each on its own connection, calling `job.submit` once at the same moment."""
    n = sizes.concurrent_clients
    rounds = sizes.repeats
    result = BenchResult("clients")
    with bench_daemon(["--max-parallel", "1"]) as daemon, daemon.client() as c:
        hold_slot(c)
        t0 = time.perf_counter()
        lat = asyncio.run(_clients(daemon.socket_path, n, rounds))
        total_s = time.perf_counter() - t0
        queued = count_jobs(c, "queued")
    ours, base = Stats.of(lat["submit"]), Stats.of(lat["ping"])
    expected = n * rounds
    result.figures = {
        "clients": n,
        "rounds": rounds,
        "submit": ours.to_dict(),
        "ping": base.to_dict(),
        "submit_p99_ms_by_round": lat["round_p99_ms"],
        "jobs_queued": queued,
        "total_s": total_s,
    }
    note = (
        f"{n:,} connections open at once, {rounds} round(s) of one call each, latencies pooled"
        f" (p99 by round: {', '.join(f'{x:.0f}' for x in lat['round_p99_ms'])} ms);"
        " jobs wait behind a held slot (--max-parallel 1)"
    )
    if queued != expected:
        note += f"; {queued:,} jobs queued, not {expected:,}"
    result.rows += stat_rows(
        f"{n:,} concurrent job.submit",
        ours,
        base,
        f"same {n:,} clients, system.ping",
        Target("<=", 300.0),
        None,
        note,
    )
    return result


# -- system.ping while big requests run ----------------------------------------------


def ping_sampler(socket_path: str, interval_s: float, stop: Event, out: Connection) -> None:
    """(In its own process.) Ping every `interval_s` until `stop`; send [(start, seconds)]."""
    samples: list[tuple[float, float]] = []
    with Client(socket_path, timeout=60) as c:
        c.call("system.ping")
        out.send("ready")
        while not stop.is_set():
            t0 = time.monotonic()
            c.call("system.ping")
            t1 = time.monotonic()
            samples.append((t0, t1 - t0))
            left = t0 + interval_s - time.monotonic()
            if left > 0:
                time.sleep(left)
    out.send(samples)
    out.close()


def _during(samples: list[tuple[float, float]], windows: list[tuple[float, float]]) -> list[float]:
    """The latencies of the samples in flight at some moment of one of the windows."""
    return [lat for t, lat in samples if any(t < b and t + lat > a for a, b in windows)]


def _parallel_lists(clients: list[Client], rows: int) -> tuple[float, float, int]:
    """One `job.list` of `rows` per client, all at once, on pages apart; (start, end, rows read)."""
    barrier = threading.Barrier(len(clients) + 1)
    got = [0] * len(clients)

    def read(k: int) -> None:
        barrier.wait()
        page = clients[k].call("job.list", limit=rows, after_id=k * rows)
        got[k] = len(page["jobs"])

    pool = [threading.Thread(target=read, args=(k,)) for k in range(len(clients))]
    for t in pool:
        t.start()
    start = time.monotonic()
    barrier.wait()
    for t in pool:
        t.join()
    return start, time.monotonic(), sum(got)


def bench_ping(sizes: Sizes) -> BenchResult:
    """`system.ping` on another connection during a big submit_batch, then big job.list calls."""
    n = sizes.ping_batch_jobs
    rows, parallel = sizes.list_rows, sizes.list_parallel
    result = BenchResult("ping")
    items = [{"command": [TRUE]} for _ in range(n)]
    ctx = multiprocessing.get_context("spawn")
    stop = ctx.Event()
    receive, send = ctx.Pipe(duplex=False)
    idle: list[tuple[float, float]] = []
    batch: list[tuple[float, float]] = []
    lists: list[tuple[float, float]] = []
    batch_s: list[float] = []
    list_s: list[float] = []
    read_rows: list[int] = []
    with bench_daemon(["--max-parallel", "1"]) as daemon, daemon.client(timeout=600) as c:
        hold_slot(c)
        sampler = ctx.Process(
            target=ping_sampler,
            args=(str(daemon.socket_path), PING_INTERVAL_S, stop, send),
            name="ping-sampler",
        )
        sampler.start()
        try:
            if receive.recv() != "ready":
                raise RuntimeError("the ping sampler did not start")
            t0 = time.monotonic()
            time.sleep(IDLE_S)
            idle.append((t0, time.monotonic()))
            for _ in range(sizes.repeats):
                time.sleep(SETTLE_S)
                t0 = time.monotonic()
                submitted = c.call("job.submit_batch", {"jobs": items})["submitted"]
                t1 = time.monotonic()
                if len(submitted) != n:
                    raise RuntimeError(f"submit_batch queued {len(submitted)}, not {n}")
                batch.append((t0, t1))
                batch_s.append(t1 - t0)
            have = sizes.repeats * n
            while have < max(sizes.list_seed_jobs, rows * parallel):  # seed for the lists
                c.call("job.submit_batch", {"jobs": items})
                have += n
            clients = [daemon.client(timeout=600) for _ in range(parallel)]
            try:
                for cl in clients:
                    cl.call("system.ping")
                for _ in range(sizes.repeats):
                    time.sleep(SETTLE_S)
                    a, b, got = _parallel_lists(clients, rows)
                    lists.append((a, b))
                    list_s.append(b - a)
                    read_rows.append(got)
            finally:
                for cl in clients:
                    cl.close()
            time.sleep(SETTLE_S)
        finally:
            stop.set()
            samples: list[tuple[float, float]] = receive.recv() if receive.poll(30) else []
            sampler.join(30)
        jobs = count_jobs(c)
    if not samples:
        raise RuntimeError("the ping sampler sent no samples")
    base = Stats.of(_during(samples, idle))
    during_batch = Stats.of(_during(samples, batch))
    during_list = Stats.of(_during(samples, lists))
    result.figures = {
        "ping_interval_s": PING_INTERVAL_S,
        "samples": len(samples),
        "idle": base.to_dict(),
        "batch_jobs": n,
        "batch_s": batch_s,
        "during_batch": during_batch.to_dict(),
        "list_rows": rows,
        "list_parallel": parallel,
        "list_s": list_s,
        "list_rows_read": read_rows,
        "jobs_in_db": jobs,
        "during_list": during_list.to_dict(),
    }
    label = "same sampler, daemon idle"
    p99, top = Target("<=", 20.0), Target("<=", 100.0)
    batch_note = (
        f"a ping every {PING_INTERVAL_S * MS:g} ms on its own connection from another process;"
        f" {sizes.repeats} submit_batch of {n:,} ({', '.join(f'{s:.2f}' for s in batch_s)} s),"
        f" {during_batch.n} samples in flight during them, {base.n} idle ones"
    )
    list_note = (
        f"{sizes.repeats} round(s) of {parallel} job.list of {rows:,} rows at once"
        f" ({', '.join(f'{s:.2f}' for s in list_s)} s; {jobs:,} jobs in the database),"
        f" {during_list.n} samples in flight during them"
    )
    if any(got != rows * parallel for got in read_rows):
        list_note += f"; rows read per round {read_rows}, not {rows * parallel:,}"
    result.rows += stat_rows(
        f"system.ping during submit_batch {n:,}", during_batch, base, label, p99, top, batch_note
    )
    result.rows += stat_rows(
        f"system.ping during {parallel} job.list {rows:,}",
        during_list,
        base,
        label,
        p99,
        top,
        list_note,
    )
    return result
