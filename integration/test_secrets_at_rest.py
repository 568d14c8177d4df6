"""Secrets at rest over the real daemon: sealed in the file and the WAL, the key outside.

Covers the key file beside the database (created 0600 at first start), a key
from the flag, the environment or a systemd credential, refusals (wrong key,
missing key, loose permissions, wrong size) that change nothing, and the
upgrade of a database whose secrets an older hero-procd stored in clear.
"""

from __future__ import annotations

import os
import sqlite3
import stat
import uuid
from pathlib import Path

import pytest

from hero_procd.secretbox import CREDENTIAL_NAME, KEY_BYTES
from hero_procd.store.schema import MIGRATIONS
from integration.daemon_proc import DaemonProcess
from integration.helpers import daemon_running, finish, refused

WRITE_TOKEN = 'printf %s "$TOKEN" > "$1"'


def _db_files(db: Path) -> dict[str, bytes]:
    """The bytes of the database and of its WAL (and shared memory), by name."""
    out = {}
    for path in (db, db.with_name(db.name + "-wal"), db.with_name(db.name + "-shm")):
        if path.exists():
            out[path.name] = path.read_bytes()
    return out


def _assert_absent(db: Path, *values: str) -> None:
    files = _db_files(db)
    assert db.name in files
    for name, data in files.items():
        for value in values:
            assert value.encode() not in data, f"{name} holds a secret value in clear"


def _rows(db: Path) -> list[tuple[str, str, int]]:
    conn = sqlite3.connect(db)
    try:
        return conn.execute("SELECT name, value, sealed FROM secrets ORDER BY name").fetchall()
    finally:
        conn.close()


def _value() -> str:
    return f"pw-{uuid.uuid4().hex}"


def test_values_sealed_in_db_and_wal_key_beside_db(workdir: Path) -> None:
    """Set values are absent from the db file and the live WAL; children still get them."""
    values = [_value() for _ in range(3)]
    out = workdir / "out"
    with daemon_running(workdir) as d, d.client() as c:
        for i, value in enumerate(values):
            c.call("secret.set", name=f"s{i}", value=value)
        c.call("secret.set", name="s0", value=values[0])  # a replaced value too
        _assert_absent(d.db_path, *values)  # the WAL of a running daemon included
        assert d.db_path.with_name(d.db_path.name + "-wal").exists()
        job = c.call(
            "job.submit",
            command=["sh", "-c", WRITE_TOKEN, "sh", str(out)],
            env_from_secrets={"TOKEN": "s2"},
        )["id"]
        assert finish(c, job)["status"] == "succeeded"
        assert out.read_text() == values[2]
        assert c.call("secret.get", name="s1")["value"] == values[1]
        key = d.db_path.with_name(d.db_path.name + ".secrets-key")
    _assert_absent(d.db_path, *values)
    assert stat.S_IMODE(key.stat().st_mode) == 0o600 and key.stat().st_size == KEY_BYTES
    assert [r[2] for r in _rows(d.db_path)] == [1, 1, 1]
    with daemon_running(workdir) as d2, d2.client() as c:  # the same key at the next start
        assert c.call("secret.get", name="s0")["value"] == values[0]
    assert key.stat().st_size == KEY_BYTES


def _sealed_db(workdir: Path, value: str) -> tuple[DaemonProcess, Path, list[tuple[str, str, int]]]:
    with daemon_running(workdir) as d, d.client() as c:
        c.call("secret.set", name="db_password", value=value)
    key = d.db_path.with_name(d.db_path.name + ".secrets-key")
    return d, key, _rows(d.db_path)


def _other_key(key: Path) -> None:
    key.write_bytes(os.urandom(KEY_BYTES))
    key.chmod(0o600)


def _missing_key(key: Path) -> None:
    key.unlink()


def _loose_key(key: Path) -> None:
    key.chmod(0o644)


def _short_key(key: Path) -> None:
    key.write_bytes(key.read_bytes()[:16])


@pytest.mark.parametrize(
    ("spoil", "says"),
    [
        (_other_key, "is not the key this database's secrets were sealed with"),
        (_missing_key, "does not exist"),
        (_loose_key, "mode 0644"),
        (_short_key, "16 bytes"),
    ],
    ids=["wrong-key", "missing", "mode-0644", "16-bytes"],
)
def test_unusable_key_refused_and_nothing_changed(
    workdir: Path, started: list[DaemonProcess], spoil: object, says: str
) -> None:
    """Start-up stops with one line naming the key file; the secrets stay as they were."""
    value = _value()
    d, key, rows = _sealed_db(workdir, value)
    good = key.read_bytes()
    assert callable(spoil)
    spoil(key)
    reason, _ = refused(d.argv)
    assert str(key) in reason and says in reason, reason
    assert _rows(d.db_path) == rows, "a refused start changed the secrets"
    if spoil is _missing_key:
        assert not key.exists(), "a new key was made for secrets sealed with another"
    key.unlink(missing_ok=True)
    key.write_bytes(good)
    key.chmod(0o600)
    with daemon_running(workdir) as d2, d2.client() as c:
        assert c.call("secret.get", name="db_password")["value"] == value


def _v3_database(db: Path, secrets: dict[str, str]) -> None:
    """A database as hero-procd wrote it before encryption (schema 3), secrets in clear."""
    conn = sqlite3.connect(db, isolation_level=None)
    try:
        conn.execute("PRAGMA auto_vacuum=INCREMENTAL")
        for version, script in MIGRATIONS:
            if version <= 3:
                conn.executescript(script)
        conn.execute("PRAGMA user_version=3")
        for name, value in secrets.items():
            conn.execute(
                "INSERT INTO secrets (name, value, updated_at) VALUES (?, ?, 0)", (name, value)
            )
    finally:
        conn.close()
    db.chmod(0o600)


def test_upgrade_seals_clear_rows(workdir: Path) -> None:
    """Secrets stored in clear by an older version are sealed at the first start with a key."""
    db = workdir / "hp.db"
    secrets = {f"old{i}": _value() for i in range(50)}
    secrets["long"] = "L" * 5000 + _value()  # overflow pages
    _v3_database(db, secrets)
    assert next(iter(secrets.values())).encode() in db.read_bytes()
    out = workdir / "out"
    with daemon_running(workdir) as d, d.client() as c:
        assert "sealed the secrets stored in clear" in d.log()
        _assert_absent(db, *[v for k, v in secrets.items() if k != "long"], secrets["long"][-36:])
        for name in ("old0", "old49", "long"):
            assert c.call("secret.get", name=name)["value"] == secrets[name]
        job = c.call(
            "job.submit",
            command=["sh", "-c", WRITE_TOKEN, "sh", str(out)],
            env_from_secrets={"TOKEN": "old7"},
        )["id"]
        assert finish(c, job)["status"] == "succeeded"
        assert out.read_text() == secrets["old7"]
    assert {r[2] for r in _rows(db)} == {1}
    _assert_absent(db, *[v for k, v in secrets.items() if k != "long"])


def test_key_from_flag_env_and_systemd_credential(workdir: Path) -> None:
    """--secrets-key-file and $HERO_PROC_SECRETS_KEY_FILE are created; a credential is used."""
    flag_key = workdir / "keys" / "flag.key"
    args = ["--secrets-key-file", str(flag_key)]
    with daemon_running(workdir, extra_args=args) as d, d.client() as c:
        c.call("secret.set", name="a", value="va")
        assert c.call("system.info")["secrets_key_file"] == str(flag_key)
    assert stat.S_IMODE(flag_key.stat().st_mode) == 0o600
    assert not d.db_path.with_name(d.db_path.name + ".secrets-key").exists()

    env = {"HERO_PROC_SECRETS_KEY_FILE": str(flag_key)}
    with daemon_running(workdir, env=env) as d, d.client() as c:
        assert c.call("secret.get", name="a")["value"] == "va"

    creds = workdir / "creds"
    creds.mkdir(mode=0o700)
    (creds / CREDENTIAL_NAME).write_bytes(flag_key.read_bytes())
    (creds / CREDENTIAL_NAME).chmod(0o400)  # as systemd's LoadCredential= gives it
    env = {"CREDENTIALS_DIRECTORY": str(creds)}
    with daemon_running(workdir, env=env) as d, d.client() as c:
        assert c.call("secret.get", name="a")["value"] == "va"
        assert c.call("system.info")["secrets_key_file"] == str(creds / CREDENTIAL_NAME)
    assert not d.db_path.with_name(d.db_path.name + ".secrets-key").exists()


def test_a_lost_key_that_sealed_nothing_is_replaced(workdir: Path) -> None:
    """No secret was ever stored: a lost (or other) key file locks nothing out; a new key is
    made. Once a secret is stored, the key it was sealed with is required again."""
    key = workdir / "hp.db.secrets-key"
    with daemon_running(workdir) as d, d.client() as c:
        assert c.call("secret.list")["secrets"] == []
    first = key.read_bytes()
    key.unlink()
    with daemon_running(workdir) as d, d.client() as c:  # a new key, not a refusal
        value = _value()
        c.call("secret.set", name="db_password", value=value)
    second = key.read_bytes()
    assert second != first and len(second) == KEY_BYTES
    key.unlink()
    reason, _ = refused(d.argv)
    assert str(key) in reason and "restore" in reason, reason
    assert not key.exists(), "a new key was made for secrets sealed with another"
    key.write_bytes(second)
    key.chmod(0o600)
    with daemon_running(workdir) as d, d.client() as c:
        assert c.call("secret.get", name="db_password")["value"] == value
        c.call("secret.delete", name="db_password")
    key.unlink()  # nothing sealed any more: a new key again
    with daemon_running(workdir) as d, d.client() as c:
        assert c.call("secret.list")["secrets"] == []
