"""PostgreSQL for the tests: a schema of its own per test, on HERO_PROC_TEST_PG.

Without a reachable PostgreSQL the PostgreSQL side of the tests is skipped (one
line in the summary says so), unless HERO_PROC_REQUIRE_PG=1 (CI), which fails them.
"""

from __future__ import annotations

import contextlib
import functools
import os
import uuid
from collections.abc import Iterator
from urllib.parse import urlsplit, urlunsplit

import pytest

DEFAULT_DSN = "postgresql://postgres@127.0.0.1:5432/test"
SKIPPED: list[str] = []


def pg_test_dsn() -> str:
    """The database the tests use."""
    return os.environ.get("HERO_PROC_TEST_PG", DEFAULT_DSN)


@functools.lru_cache(maxsize=1)
def unreachable() -> str | None:
    """Why PostgreSQL cannot be used (None when it can), asked once per test session."""
    try:
        import psycopg
    except ImportError as exc:
        return f"psycopg is not installed ({exc})"
    try:
        with psycopg.connect(pg_test_dsn(), connect_timeout=3) as conn:
            conn.execute("SELECT 1")
    except psycopg.Error as exc:
        return f"PostgreSQL not reachable at {pg_test_dsn()}: {str(exc).strip().splitlines()[0]}"
    return None


def require_pg() -> None:
    """Skip (or fail under HERO_PROC_REQUIRE_PG=1) when PostgreSQL cannot be used."""
    why = unreachable()
    if why is None:
        return
    if os.environ.get("HERO_PROC_REQUIRE_PG") == "1":
        pytest.fail(f"{why} (HERO_PROC_REQUIRE_PG=1)")
    SKIPPED.append(why)
    pytest.skip(why)


def with_schema(dsn: str, schema: str) -> str:
    """The DSN naming hero-procd's schema."""
    parts = urlsplit(dsn)
    query = f"{parts.query}&schema={schema}" if parts.query else f"schema={schema}"
    return urlunsplit(parts._replace(query=query))


@contextlib.contextmanager
def pg_schema(prefix: str = "t") -> Iterator[str]:
    """A DSN with a fresh schema of its own (so parallel tests never meet); dropped after."""
    import psycopg

    require_pg()
    schema = f"{prefix}_{uuid.uuid4().hex[:12]}"
    try:
        yield with_schema(pg_test_dsn(), schema)
    finally:
        with psycopg.connect(pg_test_dsn(), autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


_SAID: list[bool] = []


def summary_line() -> str | None:
    """The one line saying the PostgreSQL tests were skipped, and why (once per session,
    whichever conftest asks)."""
    if not SKIPPED or _SAID:
        return None
    _SAID.append(True)
    return (
        f"{len(SKIPPED)} PostgreSQL tests skipped: {SKIPPED[0]} "
        "(set HERO_PROC_TEST_PG, or HERO_PROC_REQUIRE_PG=1 to fail instead)"
    )
