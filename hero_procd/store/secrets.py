"""SecretsApi: named values resolved into child environments at spawn time.

Values are sealed (AES-GCM, hero_procd/secretbox.py) before they reach the
database and opened after they leave it: the database never holds one in
clear. Until `unlock` has been given the key, the API reads and writes no value.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from typing import Any

from hero_procd.errors import HeroError, NotFound, StorageError
from hero_procd.model import now
from hero_procd.secretbox import KeyFileError, SecretBox, WrongKey
from hero_procd.store.pool import Conn, DbPool, chunks, is_postgres
from hero_procd.store.queries import Q, with_marks

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Unlocked:
    """What `SecretsApi.unlock` did: clear rows it sealed, and whether the key was new here."""

    sealed_rows: int
    first_key: bool


class SecretsApi:
    """Reads and writes of the `secrets` table. Values never leave through logs or errors."""

    def __init__(self, pool: DbPool) -> None:
        self.pool = pool
        self.box: SecretBox | None = None

    async def has_key(self) -> bool:
        """Whether this database holds values sealed with some key (which it then needs).

        A key recorded at an earlier start that sealed nothing (no secret stored)
        is forgotten here, so that a database moved without its key file, or
        whose key file was lost before any secret was set, starts with a new key
        rather than being locked out for nothing. On SQLite only: a PostgreSQL
        database is shared by nodes that must all hold the one key.
        """

        def check(conn: Conn) -> bool:
            if conn.execute(Q["secret_key_check"]).fetchone() is None:
                return False
            if conn.execute(Q["secret_any_sealed"]).fetchone() is not None:
                return True
            if is_postgres(conn):
                # Shared by live nodes: one started with the recorded key may seal a
                # secret at any moment, so its key is the cluster's, never forgotten.
                return True
            conn.execute(Q["secret_key_check_forget"])
            return False

        return await self.pool.write(check)

    async def unlock(self, box: SecretBox) -> Unlocked:
        """Check `box`'s key against the database's, then seal the rows stored in clear.

        A database whose secrets were sealed with another key is refused
        (KeyFileError naming the key file) and left exactly as it was. Clear
        rows (written by a hero-procd before encryption) are sealed in one
        transaction with SQLite's secure_delete on, and the WAL is then
        truncated, so their old bytes are left neither in the file's free
        space nor in the WAL.
        """
        first = box.check_token()

        def check(conn: Conn) -> bool:
            row = conn.execute(Q["secret_key_check"]).fetchone()
            if row is None:
                if conn.execute(Q["secret_key_check_set"], (first, now())).rowcount == 1:
                    return True
                # Another node's first start on the same fresh database recorded its key
                # between the read and the insert (PostgreSQL: the insert waited for its
                # commit): that key is the cluster's; check ours against it.
                row = conn.execute(Q["secret_key_check"]).fetchone()
                if row is None:
                    raise StorageError("the secrets key record changed while it was written")
            if not box.matches(str(row[0])):
                raise KeyFileError(
                    f"secrets key file {box.source} is not the key this database's secrets "
                    "were sealed with; restore the right key file (nothing was changed)"
                )
            return False

        first_key = await self.pool.write(check)

        def seal_clear_rows(conn: Conn) -> int:
            rows = conn.execute(Q["secret_clear_rows"]).fetchall()
            if not rows:
                return 0
            if is_postgres(conn):  # no PRAGMA, no WAL file: one transaction seals them
                conn.execute("BEGIN")
                try:
                    conn.executemany(
                        Q["secret_seal_row"], [(box.seal(r[0], r[1]), r[0]) for r in rows]
                    )
                    conn.execute("COMMIT")
                except BaseException:
                    conn.execute("ROLLBACK")
                    raise
                return len(rows)
            was = int(conn.execute("PRAGMA secure_delete").fetchone()[0])
            conn.execute("PRAGMA secure_delete=ON")
            try:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    conn.executemany(
                        Q["secret_seal_row"], [(box.seal(r[0], r[1]), r[0]) for r in rows]
                    )
                    conn.execute("COMMIT")
                except BaseException:
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                    raise
                # The clear bytes may sit in WAL frames of earlier transactions.
                conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
            finally:
                with contextlib.suppress(Exception):  # as it was (a build's default may be on)
                    conn.execute(f"PRAGMA secure_delete={was}")
            return len(rows)

        sealed = await self.pool.maintenance(seal_clear_rows)
        if sealed:
            log.info("secrets stored in clear are now sealed", extra={"secrets": sealed})
        self.box = box
        return Unlocked(sealed_rows=sealed, first_key=first_key)

    def _box(self) -> SecretBox:
        if self.box is None:
            raise StorageError("secrets are locked: the daemon has no secrets key")
        return self.box

    def _open(self, name: str, stored: str, sealed: int) -> str:
        if not sealed:
            # unlock sealed every clear row before any read: one now was written into the
            # file behind the daemon's back. Never handed out (it could be anyone's value).
            raise HeroError(
                f"secret {name!r} is stored in clear, not sealed: it was written into the "
                "database by something other than this daemon; set it again",
                {"name": name},
            )
        try:
            return self._box().open(name, stored)
        except WrongKey as exc:
            raise HeroError(str(exc), {"name": name}) from None

    async def set(self, name: str, value: str) -> None:
        """Create or replace a secret (stored sealed)."""
        params = (name, self._box().seal(name, value), now())
        await self.pool.write(lambda c: c.execute(Q["secret_set"], params))

    async def get(self, name: str) -> str:
        """A secret's value, or NotFound (naming the secret, never a value)."""
        self._box()
        row = await self.pool.fetch_one(Q["secret_get"], (name,))
        if row is None:
            raise NotFound("secret not found", {"name": name})
        return self._open(name, str(row[0]), int(row[1]))

    async def resolve(self, wanted: dict[str, str]) -> dict[str, str]:
        """{VAR: secret name} → {VAR: value}; NotFound names the first missing secret."""
        self._box()
        names = sorted(set(wanted.values()))
        values: dict[str, str] = {}
        for chunk in chunks(names):
            for row in await self.pool.fetch_all(with_marks("secret_get_many", len(chunk)), chunk):
                values[row[0]] = self._open(row[0], str(row[1]), int(row[2]))
        missing = [n for n in names if n not in values]
        if missing:
            raise NotFound("secret not found", {"name": missing[0]})
        return {var: values[name] for var, name in wanted.items()}

    async def list(self) -> list[dict[str, Any]]:
        """Names and update times, never values."""
        rows = await self.pool.fetch_all(Q["secret_list"])
        return [{"name": r["name"], "updated_at": r["updated_at"]} for r in rows]

    async def delete(self, name: str) -> int:
        """Delete a secret; the rows deleted."""
        return await self.pool.write(lambda c: c.execute(Q["secret_delete"], (name,)).rowcount)
