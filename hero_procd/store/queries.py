"""Every SQL statement of the store, loaded by name from queries.sql.

A block starts with `-- name --`, then a one-line description comment, then
the statement. `{marks}` in a statement stands for an `IN (…)` list of `?`
placeholders, filled by `with_marks`: the values themselves are always bound.
"""

from __future__ import annotations

import re
from importlib import resources

_HEADER = re.compile(r"^-- ([a-z_0-9]+) --$", re.MULTILINE)


def load(filename: str = "queries.sql") -> dict[str, str]:
    """The named blocks of one .sql file of this package."""
    text = resources.files("hero_procd.store").joinpath(filename).read_text("utf-8")
    parts = _HEADER.split(text)
    out: dict[str, str] = {}
    for name, body in zip(parts[1::2], parts[2::2], strict=True):
        lines = [ln for ln in body.strip().splitlines() if not ln.startswith("--")]
        out[name] = "\n".join(lines).strip()
    return out


Q: dict[str, str] = load()


def with_marks(name: str, n: int) -> str:
    """The named statement with its `{marks}` replaced by n `?` placeholders."""
    return Q[name].replace("{marks}", ",".join("?" * n))
