"""Fixtures: the real daemon started as a subprocess on a socket in a short temp dir."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from hero_procd.client import Client
from integration.daemon_proc import DaemonProcess, cleanup, short_tmpdir
from integration.helpers import daemon_running, kill_leftovers
from tests.pg import summary_line


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """One visible line when the PostgreSQL tests were skipped (integration/ run alone)."""
    line = summary_line()
    if line is not None:
        terminalreporter.write_line(line, yellow=True)


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


@pytest.fixture(scope="module")
def shared() -> Iterator[DaemonProcess]:
    """One daemon for the tests of a module that do not need a daemon of their own."""
    with daemon_running() as proc:
        yield proc


@pytest.fixture
def c(shared: DaemonProcess) -> Iterator[Client]:
    """A client of the module's shared daemon."""
    with shared.client() as client:
        yield client


@pytest.fixture
def serial(workdir: Path) -> Iterator[DaemonProcess]:
    """A daemon of its own that runs one job at a time."""
    with daemon_running(workdir, extra_args=["--max-parallel", "1"]) as proc:
        yield proc


@pytest.fixture
def started() -> Iterator[list[DaemonProcess]]:
    """Daemons a test starts itself; any still running at the end are killed, with their jobs."""
    procs: list[DaemonProcess] = []
    yield procs
    for proc in procs:
        if proc.proc is not None and proc.proc.poll() is None:
            proc.kill()
        kill_leftovers(proc.instance_key)
