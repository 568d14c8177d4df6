"""Fixtures: the real daemon started as a subprocess on a socket in a short temp dir."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from integration.daemon_proc import DaemonProcess, cleanup, short_tmpdir


@pytest.fixture
def workdir() -> Iterator[Path]:
    """A short directory under /tmp for a socket and a database."""
    path = short_tmpdir()
    yield path
    cleanup(path)


@pytest.fixture
def daemon(workdir: Path) -> Iterator[DaemonProcess]:
    """A running hero-procd; stopped (SIGTERM) after the test."""
    proc = DaemonProcess(workdir).start()
    try:
        yield proc
    finally:
        code = proc.stop()
        assert code in (0, -9), f"daemon exited {code}:\n{proc.log()}"
