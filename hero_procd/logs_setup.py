"""Structured logs to stderr: one line per record, extra fields as key=value (journald-friendly)."""

from __future__ import annotations

import logging
import os
import sys

_STANDARD = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime"}


class KeyValueFormatter(logging.Formatter):
    """`LEVEL logger: message key=value …`; under journald no timestamp (it adds its own)."""

    def __init__(self, with_time: bool) -> None:
        fmt = (
            "%(asctime)s %(levelname)s %(name)s: %(message)s"
            if with_time
            else "%(levelname)s %(name)s: %(message)s"
        )
        super().__init__(fmt)

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        extras = {k: v for k, v in record.__dict__.items() if k not in _STANDARD}
        if extras:
            line += " " + " ".join(
                f"{k}={v!r}" if isinstance(v, str) else f"{k}={v}" for k, v in extras.items()
            )
        return line


def setup_logging(level: str) -> None:
    """Send the daemon's logs to stderr at `level`."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(KeyValueFormatter(with_time="JOURNAL_STREAM" not in os.environ))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # aiosqlite logs every statement with its parameters at DEBUG: secret values
    # among them. Never below INFO, whatever the daemon's level.
    logging.getLogger("aiosqlite").setLevel(max(logging.INFO, root.level))
