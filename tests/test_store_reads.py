"""Reads for the CLI: the end of a log (tail, since) and lists newest first, real SQLite."""

from __future__ import annotations

import orjson

from hero_procd.model import CommandSpec, JobRequest
from hero_procd.store import Store
from hero_procd.store.logs import LogLine
from tests.conftest import StoreRunner


def line(seq: int, owner: str = "1", kind: str = "job") -> LogLine:
    """Line `seq` of an owner, stamped 1000 + seq."""
    return LogLine(kind, owner, seq, "stdout", 1000.0 + seq, f"line {seq}")


def seqs(lines: list[LogLine]) -> list[int]:
    return [ln.seq for ln in lines]


def test_log_tail_and_since(run_store: StoreRunner) -> None:
    """`tail` starts at the last N lines (then pages on), `since` filters by time, together."""

    async def body(store: Store) -> None:
        await store.logs.insert_many([line(s) for s in range(1, 51)])
        await store.logs.insert_many([line(s, "2") for s in range(1, 4)])
        page = store.logs.page
        assert await page("job", "1", tail=5) == ([line(s) for s in range(46, 51)], 45)
        # The tail is where the page starts; the page is still bounded by `limit`.
        lines, start = await page("job", "1", limit=3, tail=10)
        assert (seqs(lines), start) == ([41, 42, 43], 40)
        lines, start = await page("job", "1", after_seq=43, limit=100)
        assert seqs(lines) == list(range(44, 51))
        # More than there is: everything; 0: nothing, and the next read starts after the end.
        assert seqs((await page("job", "1", tail=500))[0]) == list(range(1, 51))
        assert await page("job", "1", tail=0) == ([], 50)
        assert await page("job", "404", tail=0) == ([], 0)
        # after_seq bounds the tail from below.
        assert seqs((await page("job", "1", after_seq=48, tail=5))[0]) == [49, 50]
        # since: stamped at or after; with tail, the last N of those.
        assert seqs((await page("job", "1", since=1040.0))[0]) == list(range(40, 51))
        assert seqs((await page("job", "1", since=1040.5, limit=2))[0]) == [41, 42]
        assert seqs((await page("job", "1", since=1048.0, tail=5))[0]) == [48, 49, 50]
        assert seqs((await page("job", "1", since=1030.0, tail=2))[0]) == [49, 50]
        assert await page("job", "1", since=2000.0) == ([], 0)
        # Other owners are never mixed in.
        assert seqs((await page("job", "2", tail=2))[0]) == [2, 3]

    run_store(body)


def request(n: int, tags: list[str] | None = None, key: str | None = None) -> JobRequest:
    return JobRequest(spec=CommandSpec(command=["echo", str(n)]), tags=tags or [], key=key)


def test_lists_newest_first(run_store: StoreRunner) -> None:
    """Jobs and runs newest first, paged down with before_id, with and without a tag."""

    async def body(store: Store) -> None:
        ids = [
            await store.jobs.submit(request(n, ["even"] if n % 2 == 0 else [])) for n in range(10)
        ]

        async def page(**filters: object) -> list[int]:
            blob, _, _ = await store.jobs.list_json(**filters)
            return [j["id"] for j in orjson.loads(blob)]

        assert await page(limit=3, newest_first=True) == ids[::-1][:3]
        assert await page(limit=3, newest_first=True, before_id=ids[7]) == ids[4:7][::-1]
        assert await page(limit=100, newest_first=True, before_id=ids[0]) == []
        assert await page(limit=3) == ids[:3]  # the default is unchanged: oldest first
        even = [i for n, i in enumerate(ids) if n % 2 == 0]
        assert await page(tag="even", limit=2, newest_first=True) == even[::-1][:2]
        assert await page(tag="even", newest_first=True, before_id=even[2]) == even[:2][::-1]

        runs = [(await store.submit_run(f"r{n}", [], [request(n, key="k")]))[0] for n in range(4)]
        newest = await store.runs.list(limit=2, newest_first=True)
        assert [r.id for r in newest] == runs[::-1][:2]
        older = await store.runs.list(newest_first=True, before_id=runs[2])
        assert [r.id for r in older] == runs[:2][::-1]
        assert [r.id for r in await store.runs.list()] == runs

    run_store(body)
