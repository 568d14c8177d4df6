"""Hostile tests of job.submit_batch's fast paths over the real socket: the errors of bad
items, concurrent clients, the item bound, kill -9 mid-batch. Random inputs; each test's
seed is in its failure messages."""

from __future__ import annotations

import json
import random
import socket
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import orjson

from hero_procd.client import Client
from hero_procd.errors import INVALID_PARAMS, HeroError
from integration.daemon_proc import DaemonProcess
from integration.helpers import call_error, gate_script, wait_running

# Bad items, each with the field path its error names (relative to the item).
BAD: list[tuple[Any, str]] = [
    ({"command": []}, "command"),
    ({"command": "ls"}, "command"),
    ({"command": ["ls", 1]}, "command[1]"),
    ({"command": ["ls", "-l", "a\0b"]}, "command[2]"),
    ({"command": ["ls", None]}, "command[1]"),
    ({"command": ["ls"], "extra": 1}, "extra"),
    ({"command": ["ls"], "script": "ls"}, "script"),
    ({}, "command"),
    ({"command": None}, "command"),
    ({"command": ["ls"], "env": {"A": 1}}, "env.A"),
    ({"command": ["ls"], "cwd": "rel"}, "cwd"),
    ({"command": ["ls"], "retries": 1001}, "retries"),
    ({"command": ["ls"], "priority": 2**31}, "priority"),
    ({"command": ["ls"], "timeout_s": -1}, "timeout_s"),  # (2**70: the client cannot send it)
    ({"command": ["ls"], "tags": ["a", 2]}, "tags"),
]


def blocked(c: Client, tmp_path: Path) -> int:
    """Occupy the daemon's only slot (--max-parallel 1): what is submitted stays queued."""
    blocker = int(c.call("job.submit", script=gate_script(), cwd=str(tmp_path))["id"])
    wait_running(c, blocker)
    return blocker


def stored(db_path: Path, ids: list[int]) -> list[list[str]]:
    """The commands of these jobs, read from the daemon's SQLite file (WAL: a reader)."""
    with sqlite3.connect(f"file:{db_path}?mode=ro", uri=True) as db:
        by_id = {
            int(r[0]): orjson.loads(r[1]).get("command")
            for r in db.execute("SELECT id, spec FROM jobs").fetchall()
        }
    return [by_id[i] for i in ids]


def test_a_bad_item_anywhere_fails_alone_with_job_submits_error(
    serial: DaemonProcess, tmp_path: Path
) -> None:
    """One bad item at a random position of a batch of bare commands: the same error (code,
    field path `jobs[i]...`) whether the batch is bare (whole-batch pass, then item by
    item) or has defaults (item by item), the one job.submit gives for it alone; it alone
    is left out, every other item is stored in order."""
    seed = random.randrange(2**32)
    rng = random.Random(seed)
    with serial.client(timeout=120) as c:
        blocked(c, tmp_path)
        for _ in range(4):
            n = rng.choice([2, 17, 5000, 9000])
            at = rng.randrange(n)
            bad, field = rng.choice(BAD)
            items: list[Any] = [{"command": ["/bin/true", f"{i}ü"]} for i in range(n)]
            items[at] = bad
            alone = call_error(c, "job.submit", **bad)
            assert alone.code == INVALID_PARAMS and (alone.data or {}).get("field") == field, (
                seed,
                alone,
            )
            fast = c.call("job.submit_batch", jobs=items)
            slow = c.call("job.submit_batch", jobs=items, defaults={"priority": 0})
            for out in (fast, slow):
                assert [i for i, _ in out["failed"]] == [at], (seed, out["failed"])
                err = out["failed"][0][1]
                assert err["code"] == INVALID_PARAMS, (seed, err)
                assert err["message"] == str(alone).replace(field, f"jobs[{at}].{field}", 1), (
                    seed,
                    err,
                    str(alone),
                )
                assert len(out["submitted"]) == n - 1
                want = [it["command"] for i, it in enumerate(items) if i != at]
                assert stored(serial.db_path, out["submitted"]) == want, seed


def test_a_batch_past_the_item_bound_is_refused_whole(
    serial: DaemonProcess, tmp_path: Path
) -> None:
    """100,001 bare items: refused as a whole (-32602 on `jobs`), nothing stored."""
    with serial.client(timeout=120) as c:
        blocked(c, tmp_path)
        before = c.call("system.info")["counts"]["jobs"]
        err = call_error(c, "job.submit_batch", jobs=[{"command": ["true"]}] * 100_001)
        assert err.code == INVALID_PARAMS and (err.data or {}).get("field") == "jobs", err
        assert c.call("system.info")["counts"]["jobs"] == before


def test_concurrent_clients_each_get_the_ids_of_their_own_items(
    serial: DaemonProcess, tmp_path: Path
) -> None:
    """job.submit, job.submit_batch (bare and not) and run.submit from several clients at
    once: each id returned is the job of that item."""
    seed = random.randrange(2**32)
    with serial.client() as c:
        blocked(c, tmp_path)
    got: list[tuple[int, str]] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def client(name: str, rng: random.Random) -> None:
        try:
            with serial.client(timeout=120) as c:
                for round_ in range(rng.randint(3, 6)):
                    time.sleep(rng.random() * 0.02)
                    marks = [f"{name}.{round_}.{i}" for i in range(rng.randint(1, 3000))]
                    kind = rng.choice(["bare", "tagged", "submit", "run"])
                    pairs: list[tuple[int, str]]
                    if kind == "bare":
                        out = c.call(
                            "job.submit_batch", jobs=[{"command": ["true", m]} for m in marks]
                        )
                        pairs = list(zip(out["submitted"], marks, strict=True))
                    elif kind == "tagged":
                        jobs: list[dict[str, Any]] = [
                            {"command": ["true", m], "tags": [name]} for m in marks
                        ]
                        out = c.call("job.submit_batch", jobs=jobs, defaults={"priority": 1})
                        pairs = list(zip(out["submitted"], marks, strict=True))
                    elif kind == "submit":
                        pairs = [(c.call("job.submit", command=["true", name])["id"], name)]
                    else:
                        jobs = [
                            {"key": f"k{i}", "command": ["true", m]}
                            for i, m in enumerate(marks[:200])
                        ]
                        by_key = c.call("run.submit", jobs=jobs)["jobs"]
                        pairs = [(by_key[f"k{i}"], m) for i, m in enumerate(marks[:200])]
                    with lock:
                        got.extend(pairs)
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    threads = [
        threading.Thread(target=client, args=(f"c{k}", random.Random(seed + k))) for k in range(5)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert not errors, (seed, errors)
    ids = [i for i, _ in got]
    assert len(set(ids)) == len(ids), seed
    assert [cmd[1] for cmd in stored(serial.db_path, ids)] == [m for _, m in got], seed


def test_kill_9_mid_batch_stores_all_or_nothing(
    started: list[DaemonProcess], tmp_path: Path
) -> None:
    """kill -9 of the daemon at a random moment of a 60,000-job batch (within the time one
    such batch takes, measured first): after a restart the batch is there whole or not at
    all, answered means stored, and the next ids are above any it was given."""
    from integration.daemon_proc import cleanup, short_tmpdir

    seed = random.randrange(2**32)
    rng = random.Random(seed)
    n = 60_000
    batch = [{"command": ["true", str(i)]} for i in range(n)]
    outcomes: list[str] = []
    for round_ in range(4):
        proc = DaemonProcess(short_tmpdir(), extra_args=["--max-parallel", "1"])
        started.append(proc.start())
        with proc.client(timeout=120) as c:
            blocked(c, tmp_path)
            took = time.monotonic()
            c.call("job.submit_batch", jobs=batch)  # how long one takes, on this machine now
            took = time.monotonic() - took
            before = c.call("system.info")["counts"]["jobs"]
            top = max(c.call("job.submit_batch", jobs=batch[:1])["submitted"])
            before += 1
        answer: list[Any] = []

        def submit(p: DaemonProcess, into: list[Any]) -> None:
            try:
                with p.client(timeout=120) as c2:
                    into.append(c2.call("job.submit_batch", jobs=batch))
            except (HeroError, OSError, ConnectionError, ValueError) as exc:
                into.append(exc)

        thread = threading.Thread(target=submit, args=(proc, answer))
        thread.start()
        time.sleep(rng.random() * took * 1.2)
        proc.kill()
        thread.join(120)
        proc.start()
        with proc.client() as c:
            count = c.call("system.info")["counts"]["jobs"]
            assert count in (before, before + n), f"seed {seed} round {round_}: {count - before}"
            if answer and isinstance(answer[0], dict):
                assert count == before + n, f"seed {seed}: answered but not stored"
            new = c.call("job.submit", command=["true"], node="elsewhere")["id"]
            assert new > top + (n if count > before else 0), f"seed {seed}"
        outcomes.append("stored" if count > before else "none")
        proc.kill()
        cleanup(proc.workdir)
    print(f"kill -9 mid-batch outcomes (seed {seed}): {outcomes}")


def _raw_call(socket_path: Path, frame: bytes) -> dict[str, Any]:
    """Send one frame as written (numbers a client's encoder would not write); the answer."""
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(30)
        s.connect(str(socket_path))
        s.sendall(frame + b"\n")
        buf = b""
        while not buf.endswith(b"\n"):
            chunk = s.recv(65536)
            assert chunk, buf
            buf += chunk
    answer: dict[str, Any] = json.loads(buf)  # the id 1E400 echoed: orjson refuses it
    return answer


def test_a_number_past_the_double_range_is_not_taken_for_a_string(
    serial: DaemonProcess, tmp_path: Path
) -> None:
    """1E400 is valid JSON the daemon reads apart (orjson refuses it): as a command argument,
    tag or env value it is refused as not a string, in job.submit and in both batch paths,
    as ["echo", 1] is; it was stored as the string "1E400"."""
    with serial.client() as c:
        blocked(c, tmp_path)
    cases = [
        (b'{"command":["echo",1E400]}', "command[1]"),
        (b'{"command":["echo"],"tags":[-1e999]}', "tags"),
        (b'{"command":["echo"],"env":{"A":1E400}}', "env.A"),
        (b'{"command":["echo"],"timeout_s":1E400}', "timeout_s"),
    ]
    for item, field in cases:
        one = _raw_call(
            serial.socket_path,
            b'{"jsonrpc":"2.0","id":1E400,"method":"job.submit","params":%s}' % item,
        )
        assert one["error"]["code"] == INVALID_PARAMS, one
        assert one["error"]["data"]["field"] == field, one
        for defaults in (b"", b',"defaults":{"priority":0}'):
            batch = _raw_call(
                serial.socket_path,
                b'{"jsonrpc":"2.0","id":2,"method":"job.submit_batch",'
                b'"params":{"jobs":[{"command":["true"]},%s]%s}}' % (item, defaults),
            )
            failed = batch["result"]["failed"]
            assert [i for i, _ in failed] == [1], batch
            assert f"jobs[1].{field}" in failed[0][1]["message"], batch


def test_a_db_error_mid_batch_is_answered_commits_nothing_and_the_daemon_serves_on(
    serial: DaemonProcess, tmp_path: Path
) -> None:
    """A row the database refuses in the middle of a big bare batch (a trigger put into the
    daemon's SQLite file): the call gets an error, nothing of the batch is stored, and the
    same batch goes in whole once the trigger is gone."""
    seed = random.randrange(2**32)
    rng = random.Random(seed)
    with serial.client(timeout=120) as c:
        top = blocked(c, tmp_path)
        n = rng.randint(100, 30_000)
        bad = top + rng.randint(1, n)
        with sqlite3.connect(serial.db_path, timeout=30) as db:
            db.execute(
                "CREATE TRIGGER boom BEFORE INSERT ON jobs WHEN NEW.id = ?"
                " BEGIN SELECT RAISE(ABORT, 'boom'); END".replace("?", str(bad))
            )
        db.close()
        items = [{"command": ["true", str(i)]} for i in range(n)]
        err = call_error(c, "job.submit_batch", jobs=items)
        assert "boom" in str(err.data), (seed, err)
        assert c.call("system.info")["counts"]["jobs"] == 1, seed
        with sqlite3.connect(serial.db_path, timeout=30) as db:
            db.execute("DROP TRIGGER boom")
        db.close()
        ids = c.call("job.submit_batch", jobs=items)["submitted"]
        assert ids == list(range(top + 1, top + 1 + n)), seed
        assert stored(serial.db_path, [ids[0], ids[-1]]) == [
            items[0]["command"],
            items[-1]["command"],
        ]


ODD = ["", "plain", 'q"uo\\te', "ü 漢字 🙂", "\t\n\x01\x7f", "\u2028", "\ufeff", "$HOME", "\\u0000"]
COLUMNS = (
    "run_id, key, action, spec, tags, status, priority, grp, dedup_key, attempt,"
    " max_attempts, not_before, deps_pending, pin_node"
)


def _odd(rng: random.Random) -> str:
    return "".join(rng.choice(ODD) for _ in range(rng.randint(0, 3)))


def _random_item(rng: random.Random, shared: dict[str, Any]) -> dict[str, Any]:
    """A random job.submit params object, over `shared` (the fields a stretch shares)."""
    item: dict[str, Any] = dict(shared)
    if "action" in item:
        return item
    if rng.random() < 0.15:
        item["script"] = "echo " + _odd(rng)
        if rng.random() < 0.5:
            item["interpreter"] = rng.choice(["/bin/sh", ["/bin/bash", "-e"]])
    else:
        item["command"] = ["echo", *(_odd(rng) for _ in range(rng.randint(0, 3)))]
    for name, values in (
        ("env", [{"A": "x" * (128 * 1024 - 3)}, {"B": _odd(rng), "C": ""}, {}]),
        ("cwd", ["/tmp", "/tmp/ü x"]),
        ("timeout_s", [1e-7, 1, 2.5, 10**9]),
        ("kill_timeout_s", [0, 0.25]),
        ("retries", [0, 3, 1000]),
        ("retry_delay_s", [0, 1.5]),
        ("memory_max", [4096, 2**63 - 1]),
        ("pids_max", [1, 4_194_304]),
    ):
        if rng.random() < 0.12:
            item[name] = rng.choice(values)
    return item


def _random_shared(rng: random.Random) -> dict[str, Any]:
    shared: dict[str, Any] = {}
    if rng.random() < 0.4:
        shared["tags"] = [rng.choice(["a", "ü", "", "t" * 200]) for _ in range(rng.randint(0, 3))]
    if rng.random() < 0.3:
        shared["priority"] = rng.choice([1, -1, 2**31 - 1, -(2**31)])
    if rng.random() < 0.3:
        shared["group"] = rng.choice(["g1", "g2"])
    if rng.random() < 0.4:
        shared["node"] = rng.choice(["n1", "ü" * 255])
    if rng.random() < 0.1:
        shared["action"] = rng.choice(["hp-act1", "hp-act2"])
    return shared


def test_random_items_are_stored_by_the_batch_as_job_submit_stores_them(
    serial: DaemonProcess, tmp_path: Path
) -> None:
    """Random items (every field, odd text, 128 KiB env values, int64 limits), in runs that
    share all but their spec: job.submit_batch stores each row and tag as job.submit of the
    same params does, and refuses the same items with the same error."""
    seed = random.randrange(2**32)
    rng = random.Random(seed)
    with serial.client(timeout=120) as c:
        blocked(c, tmp_path)
        c.call("action.set", name="hp-act1", command=["echo", "ü"], retries=2, tags=["at"])
        c.call("action.set", name="hp-act2", script="echo 2", env={"E": "v"}, node="n9")
        items: list[dict[str, Any]] = []
        n = rng.randint(100, 600)
        while len(items) < n:
            shared = _random_shared(rng)
            items += [_random_item(rng, shared) for _ in range(rng.choice([1, 3, 16, 20, 60]))]
        out = c.call("job.submit_batch", jobs=items)
        failed = dict((i, err) for i, err in out["failed"])
        singles: list[int] = []
        for i, item in enumerate(items):
            try:
                singles.append(c.call("job.submit", item)["id"])
                assert i not in failed, (seed, i, failed.get(i))
            except HeroError as exc:
                assert i in failed, (seed, i, str(exc))
                assert failed[i]["code"] == exc.code, seed
        assert len(singles) == len(out["submitted"]), seed
    with sqlite3.connect(f"file:{serial.db_path}?mode=ro", uri=True) as db:

        def rows(ids: list[int]) -> list[tuple[Any, ...]]:
            got = []
            for job_id in ids:
                row = db.execute(f"SELECT {COLUMNS} FROM jobs WHERE id = ?", (job_id,)).fetchone()
                tags = db.execute(
                    "SELECT tag FROM job_tags WHERE job_id = ? ORDER BY tag", (job_id,)
                ).fetchall()
                got.append((*row, [t[0] for t in tags]))
            return got

        batch, single = rows(out["submitted"]), rows(singles)
    db.close()
    for k, (b, s) in enumerate(zip(batch, single, strict=True)):
        assert b == s, f"seed {seed}: job {k} differs"
