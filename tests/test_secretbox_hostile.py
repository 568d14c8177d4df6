"""Hostile review of the secrets key file: races to create it, links planted at its path."""

from __future__ import annotations

import os
import random
import threading
from pathlib import Path

import pytest

from hero_procd.secretbox import KEY_BYTES, KeyFileError, SecretBox, load_key_file
from hero_procd.store import Store
from hero_procd.store.pool import Conn
from tests.conftest import StoreRunner


def test_racing_creators_all_get_the_key_on_disk(tmp_path: Path) -> None:
    """Eight threads create one key file at once, 30 times: every one ends with the file's key."""
    rng = random.Random()
    for round_ in range(30):
        path = tmp_path / f"k{round_}" / "secrets.key"
        barrier = threading.Barrier(8)
        keys: list[bytes] = []
        errors: list[BaseException] = []

        def create(
            path: Path = path,
            barrier: threading.Barrier = barrier,
            keys: list[bytes] = keys,
            errors: list[BaseException] = errors,
        ) -> None:
            try:
                barrier.wait()
                if rng.random() < 0.5:
                    os.sched_yield()
                keys.append(load_key_file(path, create=True)[0])
            except BaseException as exc:  # reported below
                errors.append(exc)

        threads = [threading.Thread(target=create) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert not errors, errors
        on_disk = path.read_bytes()
        assert len(on_disk) == KEY_BYTES and keys == [on_disk] * 8
        assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary left


@pytest.mark.parametrize("target", ["attacker-file", "dangling"])
def test_symlink_planted_at_key_path_refused(tmp_path: Path, target: str) -> None:
    """A symlink at the key's path is never followed: not read, and no key written through it."""
    planted = tmp_path / "elsewhere"
    if target == "attacker-file":
        planted.write_bytes(b"k" * KEY_BYTES)
        planted.chmod(0o600)
    path = tmp_path / "hp.db.secrets-key"
    path.symlink_to(planted)
    with pytest.raises(KeyFileError) as err:
        load_key_file(path, create=True)
    assert str(path) in str(err.value)
    if target == "dangling":
        assert not planted.exists(), "a key was written through the planted link"
    assert path.is_symlink()


def test_each_seal_takes_a_fresh_nonce() -> None:
    """10,000 seals of one value under one name: no nonce twice."""
    box = SecretBox(os.urandom(KEY_BYTES), Path("k"))
    sealed = {box.seal("n", "same value") for _ in range(10_000)}
    assert len(sealed) == 10_000
    assert len({s[3:19] for s in sealed}) == 10_000  # the nonce leads the base64 text


def test_upgrade_leaves_the_writers_secure_delete_as_it_was(
    db_path: Path, run_store: StoreRunner, backend: str
) -> None:
    """Sealing clear rows turns secure_delete on for itself only: afterwards the writer has
    the setting it had before (a SQLite built with SECURE_DELETE keeps it on). PostgreSQL
    has no such setting: there the clear rows are sealed, and that is all."""

    async def make(store: Store) -> None:
        await store.pool.write(
            lambda c: c.execute(
                "INSERT INTO secrets (name, value, updated_at) VALUES ('a', 'x', 0)"
            )
        )

    run_store(make)

    def secure_delete(conn: Conn) -> int:
        if backend != "sqlite":
            return 0
        return int(conn.execute("PRAGMA secure_delete").fetchone()[0])

    async def upgrade(store: Store) -> tuple[int, int, int]:
        before = await store.pool.maintenance(secure_delete)
        unlocked = await store.secrets.unlock(SecretBox(os.urandom(KEY_BYTES), Path("k")))
        return before, await store.pool.maintenance(secure_delete), unlocked.sealed_rows

    before, after, sealed = run_store(upgrade)
    assert sealed == 1
    assert after == before


def test_a_key_that_sealed_nothing_is_forgotten_only_on_sqlite(
    run_store: StoreRunner, backend: str
) -> None:
    """Node A starts with key KA and no secret; node B starts on the same database with KB.
    On SQLite (one daemon per file) B's key replaces a key that guards nothing. On
    PostgreSQL the database is shared by live nodes: B forgetting KA would let A, still
    running, seal secrets B cannot read (and A would be refused at its next start), so B
    is refused and the database keeps KA."""
    ka = SecretBox(os.urandom(KEY_BYTES), Path("ka"))
    kb = SecretBox(os.urandom(KEY_BYTES), Path("kb"))

    async def first(store: Store) -> bool:
        had = await store.secrets.has_key()
        await store.secrets.unlock(ka)
        return had

    assert run_store(first) is False

    async def second(store: Store) -> str:
        had = await store.secrets.has_key()
        try:
            await store.secrets.unlock(kb)
        except KeyFileError as exc:
            return f"refused {had} {exc}"
        return f"unlocked {had}"

    outcome = run_store(second)
    if backend == "sqlite":
        assert outcome == "unlocked False", outcome
    else:
        assert outcome.startswith("refused True") and "kb" in outcome, outcome

    async def third(store: Store) -> str:  # A again, with its own key
        try:
            await store.secrets.unlock(ka)
        except KeyFileError:
            return "refused"
        return "unlocked"

    assert run_store(third) == ("refused" if backend == "sqlite" else "unlocked")
