"""The secrets key file and AES-GCM sealing (hero_procd/secretbox.py), on real files."""

from __future__ import annotations

import os
import stat
import threading
from pathlib import Path

import pytest

from hero_procd.secretbox import (
    CREDENTIAL_NAME,
    KEY_BYTES,
    KeyFileError,
    SecretBox,
    WrongKey,
    key_file_path,
    load_key_file,
)


def _box(tmp_path: Path) -> SecretBox:
    return SecretBox(os.urandom(KEY_BYTES), tmp_path / "k")


def test_seal_opens_only_under_its_name_and_key(tmp_path: Path) -> None:
    """Round trip; a fresh nonce each time; another name, another key or one flipped bit fail."""
    box = _box(tmp_path)
    value = "pässwörd with spaces"
    sealed = box.seal("db", value)
    assert value not in sealed and box.open("db", sealed) == value
    assert box.seal("db", value) != sealed, "the nonce must be new for every value"
    with pytest.raises(WrongKey, match="'other'"):
        box.open("other", sealed)  # the name is associated data: a value cannot move
    with pytest.raises(WrongKey, match=str(tmp_path / "k2")):
        SecretBox(os.urandom(KEY_BYTES), tmp_path / "k2").open("db", sealed)
    flipped = sealed[:-3] + ("A" if sealed[-3] != "A" else "B") + sealed[-2:]
    for bad in (flipped, "v1.", "v1.!!!", value, ""):
        with pytest.raises(WrongKey):
            box.open("db", bad)
    assert "key" not in repr(box).replace("SecretBox", "").lower().replace(str(tmp_path), "")


def test_key_check_tells_keys_apart(tmp_path: Path) -> None:
    """The check token of one key matches that key only."""
    one, two = _box(tmp_path), _box(tmp_path)
    assert one.matches(one.check_token()) and not two.matches(one.check_token())


def test_key_file_created_0600_once_and_read_back(tmp_path: Path) -> None:
    """A missing key file is created 0600 with 32 bytes; the next load reads the same key."""
    path = tmp_path / "sub" / "hp.db.secrets-key"
    old = os.umask(0)
    try:
        key, created = load_key_file(path, create=True)
    finally:
        os.umask(old)
    assert created and len(key) == KEY_BYTES
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_key_file(path, create=True) == (key, False)
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name], "temp file left"


def test_racing_creators_agree_on_one_key(tmp_path: Path) -> None:
    """Several starts creating the key at once all end with the one key on disk."""
    for round_ in range(20):
        path = tmp_path / f"k{round_}"
        keys: list[bytes] = []
        barrier = threading.Barrier(4)

        def create(
            path: Path = path, keys: list[bytes] = keys, barrier: threading.Barrier = barrier
        ) -> None:
            barrier.wait()
            keys.append(load_key_file(path, create=True)[0])

        threads = [threading.Thread(target=create) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(keys) == 4 and set(keys) == {path.read_bytes()}


@pytest.mark.parametrize(
    ("setup", "expect"),
    [
        (lambda p: (p.write_bytes(os.urandom(32)), p.chmod(0o640)), "mode 0640"),
        (lambda p: (p.write_bytes(os.urandom(32)), p.chmod(0o604)), "mode 0604"),
        (lambda p: (p.write_bytes(os.urandom(31)), p.chmod(0o600)), "31 bytes"),
        (lambda p: (p.write_bytes(os.urandom(44)), p.chmod(0o600)), "44 bytes"),
        (lambda p: p.mkdir(), "not a regular file"),
        (lambda p: p.symlink_to(p.with_name("elsewhere")), "symbolic links"),
    ],
    ids=["group-read", "other-read", "short", "long", "folder", "symlink"],
)
def test_unusable_key_file_refused_naming_it(tmp_path: Path, setup: object, expect: str) -> None:
    """Group/other bits, a wrong size, a folder, a symlink: refused, file named, not replaced."""
    path = tmp_path / "hp.key"
    assert callable(setup)
    setup(path)
    before = path.read_bytes() if path.is_file() and not path.is_symlink() else None
    with pytest.raises(KeyFileError) as err:
        load_key_file(path, create=True)
    assert str(path) in str(err.value) and expect in str(err.value), err.value
    if before is not None:
        assert path.read_bytes() == before


def test_missing_key_not_created_when_not_allowed(tmp_path: Path) -> None:
    """A credential (create=False) that is missing is an error, and nothing is written."""
    path = tmp_path / "cred"
    with pytest.raises(KeyFileError, match="does not exist"):
        load_key_file(path, create=False)
    assert not path.exists()


def test_where_the_key_is(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Flag, then $HERO_PROC_SECRETS_KEY_FILE, then a systemd credential, then beside the db."""
    db = tmp_path / "hp.db"
    monkeypatch.delenv("HERO_PROC_SECRETS_KEY_FILE", raising=False)
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    assert key_file_path(db) == (tmp_path / "hp.db.secrets-key", True)
    creds = tmp_path / "creds"
    creds.mkdir()
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    assert key_file_path(db) == (tmp_path / "hp.db.secrets-key", True), "no such credential"
    (creds / CREDENTIAL_NAME).write_bytes(os.urandom(32))
    assert key_file_path(db) == (creds / CREDENTIAL_NAME, False)
    monkeypatch.setenv("HERO_PROC_SECRETS_KEY_FILE", str(tmp_path / "env.key"))
    assert key_file_path(db) == (tmp_path / "env.key", True)
    assert key_file_path(db, tmp_path / "flag.key") == (tmp_path / "flag.key", True)
