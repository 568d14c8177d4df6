"""Hostile review of secrets at rest over the real daemon: tampered rows, the key's reach.

A row whose sealed value was moved onto another name must never hand out the
other value, and a job or service that needs it must end with an error that
says so (not hang); the key file's path never reaches a child's environment.
"""

from __future__ import annotations

import os
import random
import shutil
import sqlite3
import subprocess
import sys
import time
import uuid
from functools import partial
from pathlib import Path

import pytest

from hero_procd.errors import HeroError
from integration.daemon_proc import DaemonProcess
from integration.helpers import (
    daemon_running,
    finish,
    kill_leftovers,
    refused,
    wait_for,
    wait_running,
)
from integration.test_secrets_at_rest import _v3_database


def _swap(db: Path, a: str, b: str) -> None:
    conn = sqlite3.connect(db, isolation_level=None)
    try:
        va = conn.execute("SELECT value FROM secrets WHERE name = ?", (a,)).fetchone()[0]
        vb = conn.execute("SELECT value FROM secrets WHERE name = ?", (b,)).fetchone()[0]
        conn.execute("UPDATE secrets SET value = ? WHERE name = ?", (vb, a))
        conn.execute("UPDATE secrets SET value = ? WHERE name = ?", (va, b))
    finally:
        conn.close()


def test_swapped_rows_refused_job_and_service_fail(workdir: Path) -> None:
    """Two rows' sealed values swapped in the file: no value handed out, the job fails."""
    va, vb = f"a-{uuid.uuid4().hex}", f"b-{uuid.uuid4().hex}"
    out = workdir / "out"
    with daemon_running(workdir) as d, d.client() as c:
        c.call("secret.set", name="a", value=va)
        c.call("secret.set", name="b", value=vb)
        _swap(d.db_path, "a", "b")
        with pytest.raises(HeroError) as err:
            c.call("secret.get", name="a")
        assert "does not open" in str(err.value) and vb not in str(err.value)
        job = c.call(
            "job.submit",
            command=["sh", "-c", 'printf %s "$T" > "$1"', "sh", str(out)],
            env_from_secrets={"T": "a"},
            timeout_s=30,
        )["id"]
        done = finish(c, job)
        assert done["status"] == "failed", done
        assert "does not open" in (done["error"] or ""), done
        assert not out.exists()
        c.call(
            "service.define",
            name="svc",
            command=["sh", "-c", 'printf %s "$T" > "$1"; sleep 30', "sh", str(out)],
            env_from_secrets={"T": "b"},
            restart="never",
        )
        c.call("service.start", name="svc")

        def ended() -> dict[str, object] | None:
            st: dict[str, object] = c.call("service.status", name="svc")
            return st if st["state"] not in ("starting", "running", "stopped") else None

        st = wait_for(ended, "the service to give up")
        assert not out.exists(), st
        assert "Traceback" not in d.log()
        # The daemon keeps serving, and a value set again opens.
        c.call("secret.set", name="a", value=va)
        assert c.call("secret.get", name="a")["value"] == va


def test_key_file_never_named_to_children(workdir: Path) -> None:
    """Jobs and services see neither the key nor where it is (flag's env var, credential dir)."""
    key = workdir / "k" / "secrets.key"
    creds = workdir / "creds"
    creds.mkdir(mode=0o700)
    env = {"HERO_PROC_SECRETS_KEY_FILE": str(key), "CREDENTIALS_DIRECTORY": str(creds)}
    job_env, svc_env = workdir / "job.env", workdir / "svc.env"
    dump = 'env -0 > "$1"; [ "$2" = svc ] && exec sleep 30; true'
    with daemon_running(workdir, env=env) as d, d.client() as c:
        assert c.call("system.info")["secrets_key_file"] == str(key)
        job = c.call("job.submit", command=["sh", "-c", dump, "sh", str(job_env), "job"])["id"]
        assert finish(c, job)["status"] == "succeeded"
        c.call("service.define", name="dump", command=["sh", "-c", dump, "sh", str(svc_env), "svc"])
        c.call("service.start", name="dump")
        wait_for(lambda: svc_env.stat().st_size or None if svc_env.exists() else None, "dump")
        c.call("service.stop", name="dump")
    secret_key = key.read_bytes()
    for path in (job_env, svc_env):
        data = path.read_bytes()
        names = {item.split(b"=", 1)[0] for item in data.split(b"\0") if item}
        assert b"HERO_PROC_SECRETS_KEY_FILE" not in names, path
        assert b"CREDENTIALS_DIRECTORY" not in names, path
        assert str(key).encode() not in data and secret_key not in data, path
        assert b"HERO_PROC_INSTANCE" in names  # the dump is real


def _v3_with_history(db: Path, live: dict[str, str], gone: list[str]) -> None:
    """A schema-3 database (secrets in clear) whose `gone` values were overwritten or deleted."""
    _v3_database(db, {**live, **{f"tmp{i}": v for i, v in enumerate(gone)}})
    conn = sqlite3.connect(db, isolation_level=None)
    try:
        # As SQLite builds without SECURE_DELETE by default do (Debian's has it on).
        conn.execute("PRAGMA secure_delete=OFF")
        for i in range(len(gone)):
            if i % 2:
                conn.execute("DELETE FROM secrets WHERE name = ?", (f"tmp{i}",))
            else:  # rotated: a value of another length replaces it
                conn.execute(
                    "UPDATE secrets SET value = ? WHERE name = ?", ("r" * (i + 3), f"tmp{i}")
                )
    finally:
        conn.close()


def test_upgrade_leaves_no_overwritten_or_deleted_value(workdir: Path) -> None:
    """Values an older version overwrote or deleted are gone from the file after the upgrade."""
    db = workdir / "hp.db"
    live = {f"live{i}": f"live-{uuid.uuid4().hex}" for i in range(20)}
    gone = [f"gone-{uuid.uuid4().hex}" for _ in range(20)]
    gone.append("G" * 6000 + uuid.uuid4().hex)  # on overflow pages
    _v3_with_history(db, live, gone)
    raw = db.read_bytes()
    assert any(v.encode() in raw for v in gone[:-1])  # the old version left them there
    with daemon_running(workdir) as d, d.client() as c:
        for name, value in live.items():
            assert c.call("secret.get", name=name)["value"] == value
    data = b"".join(p.read_bytes() for p in (db, db.with_name(db.name + "-wal")) if p.exists())
    for value in [*live.values(), *gone[:-1], gone[-1][-32:]]:
        assert value.encode() not in data, value


def test_clear_row_planted_after_start_is_not_handed_out(workdir: Path) -> None:
    """A row written in clear into the file of a running daemon is refused, not used as is."""
    out = workdir / "out"
    with daemon_running(workdir) as d, d.client() as c:
        c.call("secret.set", name="tok", value=f"real-{uuid.uuid4().hex}")
        conn = sqlite3.connect(d.db_path, isolation_level=None)
        try:
            conn.execute("UPDATE secrets SET value = 'planted', sealed = 0 WHERE name = 'tok'")
        finally:
            conn.close()
        with pytest.raises(HeroError) as err:
            c.call("secret.get", name="tok")
        assert "planted" not in str(err.value) and "tok" in str(err.value)
        job = c.call(
            "job.submit",
            command=["sh", "-c", 'printf %s "$T" > "$1"', "sh", str(out)],
            env_from_secrets={"T": "tok"},
        )["id"]
        assert finish(c, job)["status"] == "failed"
        assert not out.exists()
    # At the next start an unsealed row is what an older version left: it is sealed.
    with daemon_running(workdir) as d, d.client() as c:
        assert c.call("secret.get", name="tok")["value"] == "planted"


def test_kill_during_upgrade_loses_nothing(workdir: Path) -> None:
    """kill -9 at random points of the first start on a clear database: the next start seals
    every row exactly once; each value reads back as it was."""
    template = workdir / "template.db"
    secrets = {f"s{i:05d}": f"v{i}-{uuid.uuid4().hex}" for i in range(2000)}
    secrets["wide"] = "ü€😀" * 3000  # non-ASCII, over a page
    _v3_database(template, secrets)
    rng = random.Random()
    for round_ in range(4):
        run = workdir / f"r{round_}"
        run.mkdir()
        shutil.copy(template, run / "hp.db")
        d = DaemonProcess(run)
        with open(d.log_path, "wb") as log:
            proc = subprocess.Popen(d.argv, stderr=log, start_new_session=True)
        # Killed from just before the sealing transaction (~50 ms here) to just after.
        wait_for(partial(_logged, d, "migrating database"), "the migration")
        time.sleep(rng.uniform(0.0, 0.12))
        proc.kill()
        proc.wait()
        kill_leftovers(d.db_path)
        with daemon_running(run) as d2, d2.client() as c:
            for name in ("s00000", "s01999", "wide", rng.choice(list(secrets))):
                assert c.call("secret.get", name=name)["value"] == secrets[name]
        rows = _rows_of(run / "hp.db")
        assert len(rows) == len(secrets) and {r[2] for r in rows} == {1}
        # Sealed once: base64url has no ".", so a twice-sealed value would hold two "v1.".
        assert all(r[1].startswith("v1.") and r[1].count("v1.") == 1 for r in rows)
        data = (run / "hp.db").read_bytes()
        assert secrets["s00000"].encode() not in data and secrets["s01999"].encode() not in data


def _logged(d: DaemonProcess, text: str) -> bool | None:
    return text in d.log() or None


def _rows_of(db: Path) -> list[tuple[str, str, int]]:
    conn = sqlite3.connect(db)
    try:
        return conn.execute("SELECT name, value, sealed FROM secrets ORDER BY name").fetchall()
    finally:
        conn.close()


def test_values_nowhere_in_clear_at_debug_level(workdir: Path) -> None:
    """ASCII, non-ASCII and 128 KiB values: absent from the db, WAL, the daemon's debug log and
    every answer but secret.get (records, export, info, errors); children get them exact."""
    values = {
        "ascii": f"pw-{uuid.uuid4().hex}",
        "uni": f"пароль-€-😀-{uuid.uuid4().hex}",
        # The largest value secret.set takes: "big=" + value + NUL is 128 KiB.
        "big": "B" * ((1 << 17) - len("big=") - 1 - 32) + uuid.uuid4().hex,
    }
    marks = [values["ascii"], values["uni"], values["big"][-32:]]
    out = workdir / "out"
    answers: list[object] = []
    with daemon_running(workdir, extra_args=["--log-level", "debug"]) as d, d.client() as c:
        for name, value in values.items():
            c.call("secret.set", name=name, value=value)
        for name, value in values.items():
            assert c.call("secret.get", name=name)["value"] == value
        for bad in (values["ascii"] + "\0", values["big"] + "x" * 100):
            with pytest.raises(HeroError) as err:
                c.call("secret.set", name="ascii", value=bad)
            answers.append((str(err.value), err.value.data))
        job = c.call(
            "job.submit",
            command=["sh", "-c", 'printf %s "$U" > "$1"', "sh", str(out)],
            env_from_secrets={"U": "uni", "A": "ascii"},
        )["id"]
        answers.append(finish(c, job))
        # Named by a longer variable, the largest value is over the kernel's 128 KiB per
        # environment string: refused at spawn, the value not repeated.
        too_big = c.call(
            "job.submit", command=["true"], env_from_secrets={"BIG_SECRET_VALUE": "big"}
        )["id"]
        failed = finish(c, too_big)
        assert failed["status"] == "failed" and "too long" in failed["error"], failed
        answers.append(failed)
        # Under its own name it fits.
        fits = c.call("job.submit", command=["true"], env_from_secrets={"B": "big"})["id"]
        assert finish(c, fits)["status"] == "succeeded"
        assert out.read_text() == values["uni"]
        c.call(
            "service.define",
            name="svc",
            command=["sleep", "30"],
            env_from_secrets={"A": "ascii"},
        )
        c.call("service.start", name="svc")
        answers += [
            c.call("job.get", id=job),
            c.call("job.list"),
            c.call("service.get", name="svc"),
            c.call("service.status_all"),
            c.call("stack.export"),
            c.call("system.info"),
            c.call("secret.list"),
        ]
        c.call("service.stop", name="svc")
        db_bytes = b"".join(
            p.read_bytes() for p in (d.db_path, d.db_path.with_name(d.db_path.name + "-wal"))
        )
    log = d.log()
    for mark in marks:
        assert mark.encode() not in db_bytes, mark
        assert mark not in log, mark
        assert mark not in repr(answers), mark


def _dump(db: Path) -> list[str]:
    conn = sqlite3.connect(db)
    try:
        return list(conn.iterdump())
    finally:
        conn.close()


def test_wrong_key_start_changes_nothing_at_all(workdir: Path) -> None:
    """After a crash with a job running, a start with another key changes no row of any table
    (the job is not recovered, no mark is written) and the right key then recovers it."""
    d = DaemonProcess(workdir).start()
    try:
        with d.client() as c:
            c.call("secret.set", name="s", value="v")
            job = c.call("job.submit", command=["sleep", "60"])["id"]
            wait_running(c, job)
    finally:
        d.kill()
        kill_leftovers(d.db_path)
    key = d.db_path.with_name(d.db_path.name + ".secrets-key")
    good = key.read_bytes()
    before = _dump(d.db_path)
    key.write_bytes(os.urandom(len(good)))
    reason, _ = refused(d.argv)
    assert "is not the key" in reason, reason
    assert _dump(d.db_path) == before, "a refused start changed the database"
    key.write_bytes(good)
    with daemon_running(workdir) as d2, d2.client() as c:
        assert c.call("job.get", id=job)["status"] in ("lost", "queued", "failed")
        assert c.call("secret.get", name="s")["value"] == "v"


_CRASHED_OLD_DAEMON = """
import os, sqlite3, sys
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("PRAGMA journal_mode=WAL")
conn.execute("PRAGMA wal_autocheckpoint=0")
conn.execute("PRAGMA secure_delete=OFF")
for i, value in enumerate(sys.argv[2:]):
    conn.execute("UPDATE secrets SET value = ? WHERE name = ?", (value, f"s{i}"))
os._exit(0)  # killed: no checkpoint, the WAL stays with the values in it
"""


def test_upgrade_after_a_crash_leaves_no_value_in_the_wal(workdir: Path) -> None:
    """An older version killed with secrets written only to its WAL: after the upgrade neither
    the WAL nor the file holds them."""
    db = workdir / "hp.db"
    first = {f"s{i}": f"first-{uuid.uuid4().hex}" for i in range(10)}
    _v3_database(db, first)
    later = [f"later-{uuid.uuid4().hex}" for _ in range(10)]
    subprocess.run(
        [sys.executable, "-c", _CRASHED_OLD_DAEMON, str(db), *later], check=True, timeout=60
    )
    wal = db.with_name(db.name + "-wal")
    assert later[0].encode() in wal.read_bytes()
    with daemon_running(workdir) as d, d.client() as c:
        assert c.call("secret.get", name="s3")["value"] == later[3]
        data = db.read_bytes() + (wal.read_bytes() if wal.exists() else b"")
        for value in [*first.values(), *later]:
            assert value.encode() not in data, value
