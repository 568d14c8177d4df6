"""Start-up of the real daemon: refused starts leave no child behind and say why in one line.

A refused start must end before any engine runs: the jobs queued in the
database stay queued, none of them is spawned, and stderr holds one line
naming the cause (never a traceback). Also: SIGHUP does not stop the daemon,
a damaged or foreign database is refused within 5 s, and the shipped systemd
unit agrees with the client about where the socket is.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from functools import partial
from pathlib import Path

import pytest

from hero_procd.config import SYSTEM_SOCKET_PATH, client_socket_candidates
from hero_procd.engine.executor import instance_id
from hero_procd.engine.procs import find_marked
from integration.daemon_proc import DaemonProcess
from integration.helpers import (
    finish,
    gate_script,
    refused,
    sh,
    submit,
    wait_for,
    wait_running,
)

REPO = Path(__file__).resolve().parents[1]
UNIT = REPO / "systemd" / "hero-procd.service"
# The bound: a database the daemon cannot use ends the start within 5 s.
REFUSE_WITHIN_S = 5.0


def job_rows(db: Path) -> dict[int, str]:
    """Job id -> status, read straight from the database file (no daemon involved)."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return dict(conn.execute("SELECT id, status FROM jobs ORDER BY id").fetchall())
    finally:
        conn.close()


def queue_jobs_behind_a_stop(workdir: Path, started: list[DaemonProcess]) -> tuple[int, Path]:
    """Leave a database holding a queued job that touches a file when it runs.

    A first daemon running one job at a time holds the queue with a job that
    waits for a gate file, the probe job queues behind it, and the daemon is
    stopped: the blocker goes back to the queue, the probe never ran.
    The probe records whether the daemon's socket existed when it ran.
    Returns (the probe's id, the file it touches).
    """
    d = DaemonProcess(workdir, extra_args=["--max-parallel", "1"])
    started.append(d)
    d.start()
    ran = workdir / "probe-ran"
    sock = d.socket_path
    probe = f'if [ -S "{sock}" ]; then echo reachable > "{ran}"; else echo alone > "{ran}"; fi'
    with d.client() as c:
        blocker = submit(c, command=sh(gate_script()), cwd=str(workdir))
        wait_running(c, blocker)
        probe_id = submit(c, command=sh(probe))
    assert d.stop() == 0, d.log()
    assert job_rows(d.db_path)[probe_id] == "queued"
    assert not ran.exists()
    return probe_id, ran


def assert_nothing_spawned(db: Path, probe_id: int, ran: Path) -> None:
    """The refused daemon has exited: no process of its jobs exists, the probe is still queued.

    The daemon is gone, so nothing can spawn after this point: checking once is enough.
    """
    assert find_marked(instance_id(str(db))) == [], "a child of the refused daemon survives"
    assert not ran.exists(), "the queued job ran during a refused start"
    assert job_rows(db)[probe_id] == "queued"


# -- refused starts spawn nothing -----------------------------------------------------------


def _bad_group(workdir: Path, d: DaemonProcess) -> list[str]:
    return [*d.argv, "--socket-group", "no-such-group-hp"]


def _dangling_socket(workdir: Path, d: DaemonProcess) -> list[str]:
    link = workdir / "link.sock"
    link.symlink_to(workdir / "nowhere" / "hp.sock")
    return [*d.argv, "--socket", str(link)]


def _long_socket(workdir: Path, d: DaemonProcess) -> list[str]:
    return [*d.argv, "--socket", str(workdir / ("s" * 110 + ".sock"))]


def _file_at_socket(workdir: Path, d: DaemonProcess) -> list[str]:
    plain = workdir / "plain.sock"
    plain.write_text("not a socket")
    return [*d.argv, "--socket", str(plain)]


def _open_socket_folder(workdir: Path, d: DaemonProcess) -> list[str]:
    folder = workdir / "open"
    folder.mkdir()
    os.chmod(folder, 0o777)
    return [*d.argv, "--socket", str(folder / "hp.sock")]


BAD_STARTS = {
    "unknown-socket-group": (_bad_group, "unknown socket group 'no-such-group-hp'"),
    "dangling-symlink-socket": (_dangling_socket, "is a symlink"),
    "socket-path-too-long": (_long_socket, "at most 107"),
    "file-at-socket": (_file_at_socket, "is not a socket"),
    "world-writable-socket-folder": (_open_socket_folder, "writable by others"),
}


@pytest.mark.parametrize("case", list(BAD_STARTS))
def test_refused_start_spawns_no_child(
    workdir: Path, started: list[DaemonProcess], case: str
) -> None:
    """A start refused for its socket exits 1 with one line, before any queued job is spawned."""
    probe_id, ran = queue_jobs_behind_a_stop(workdir, started)
    make_argv, expected = BAD_STARTS[case]
    d = DaemonProcess(workdir)
    # Later flags win with click: the bad --socket given last overrides DaemonProcess's.
    reason, _ = refused(make_argv(workdir, d))
    assert expected in reason, reason
    assert_nothing_spawned(d.db_path, probe_id, ran)
    assert not d.socket_path.exists(), "a refused daemon left a socket behind"

    # Control: the same database under a good configuration runs the probe, and
    # by then the daemon can be reached (the socket exists before any child runs).
    (workdir / "gate").touch()
    good = DaemonProcess(workdir, extra_args=["--max-parallel", "1"])
    started.append(good)
    good.start()
    with good.client() as c:
        assert finish(c, probe_id)["status"] == "succeeded"
    assert ran.read_text().strip() == "reachable"
    assert good.stop() == 0, good.log()


def test_second_daemon_refused_on_lock_spawns_nothing(
    workdir: Path, started: list[DaemonProcess]
) -> None:
    """A second daemon on a database in use never runs recovery: the first one's job lives on."""
    first = DaemonProcess(workdir).start()
    started.append(first)
    with first.client() as c:
        job = submit(c, command=sh(gate_script()), cwd=str(workdir))
        pid = wait_running(c, job)["pid"]
    second = DaemonProcess(workdir)
    second.socket_path = workdir / "second.sock"
    reason, _ = refused(second.argv)
    assert "holds the database" in reason, reason
    os.kill(pid, 0)  # still there: the refused daemon did not "recover" it
    with first.client() as c:
        assert c.call("job.get", id=job)["status"] == "running"
        (workdir / "gate").touch()
        assert finish(c, job)["status"] == "succeeded"
    assert first.stop() == 0, first.log()


# -- SIGHUP ----------------------------------------------------------------------------------


def _sighup_ignored_by(pid: int) -> bool:
    """True if SIGHUP is in the process's ignored set (SigIgn of /proc/PID/status)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigIgn:"):
            return bool(int(line.split()[1], 16) & (1 << (signal.SIGHUP - 1)))
    raise AssertionError(f"no SigIgn line for pid {pid}")


def _logged_times(d: DaemonProcess, text: str, n: int) -> bool | None:
    """True once the daemon's log holds `text` at least `n` times."""
    return True if d.log().count(text) >= n else None


def test_sighup_does_not_stop_the_daemon(workdir: Path, started: list[DaemonProcess]) -> None:
    """SIGHUP is logged and ignored: the daemon and its running job carry on."""
    d = DaemonProcess(workdir).start()
    started.append(d)
    assert d.proc is not None
    with d.client() as c:
        job = submit(c, command=sh(gate_script()), cwd=str(workdir))
        pid = wait_running(c, job)["pid"]
        for n in range(1, 4):  # one at a time: pending signals of one kind coalesce
            d.proc.send_signal(signal.SIGHUP)
            wait_for(partial(_logged_times, d, "SIGHUP", n), f"SIGHUP {n} to be logged")
        assert d.proc.poll() is None, d.log()
        assert c.call("system.ping")["pong"] is True
        assert c.call("job.get", id=job)["status"] == "running"
        # Ignored by the daemon's handler, not by SIG_IGN, which children would inherit.
        assert not _sighup_ignored_by(pid)
        (workdir / "gate").touch()
        assert finish(c, job)["status"] == "succeeded"
    assert d.stop() == 0, d.log()


# -- databases the daemon cannot use ---------------------------------------------------------


def _newer_schema(db: Path, workdir: Path, started: list[DaemonProcess]) -> None:
    d = DaemonProcess(workdir)
    d.db_path = db
    started.append(d)
    d.start()
    assert d.stop() == 0, d.log()
    conn = sqlite3.connect(db)
    try:
        conn.execute("PRAGMA user_version = 99")
        conn.commit()
    finally:
        conn.close()


def _foreign_sqlite(db: Path, workdir: Path, started: list[DaemonProcess]) -> None:
    conn = sqlite3.connect(db)
    try:
        conn.execute("CREATE TABLE invoices (id INTEGER PRIMARY KEY, total REAL)")
        conn.execute("INSERT INTO invoices (total) VALUES (12.5)")
        conn.commit()
    finally:
        conn.close()


def _not_sqlite(db: Path, workdir: Path, started: list[DaemonProcess]) -> None:
    db.write_bytes(b"just some text, certainly no SQLite header\n" * 200)


BAD_DATABASES = {
    "newer-schema": _newer_schema,
    "foreign-sqlite": _foreign_sqlite,
    "not-sqlite": _not_sqlite,
}


@pytest.mark.parametrize("case", list(BAD_DATABASES))
def test_unusable_database_is_refused_in_one_line(
    workdir: Path, started: list[DaemonProcess], case: str
) -> None:
    """Newer schema, another program's SQLite file, not SQLite: exit 1, one line, within 5 s.

    The file is left exactly as it was: the daemon neither migrates nor repairs it.
    """
    db = workdir / "data.db"
    BAD_DATABASES[case](db, workdir, started)
    before = db.read_bytes()
    d = DaemonProcess(workdir)
    d.db_path = db
    # The bound is on the daemon's own work, not on starting Python on a loaded machine:
    # the same interpreter importing the daemon (`--help`), timed just before, is added.
    began = time.monotonic()
    subprocess.run([*d.argv[:3], "--help"], capture_output=True, check=True, timeout=60)
    start_up = time.monotonic() - began
    reason, took = refused(d.argv, timeout_s=3 * REFUSE_WITHIN_S + start_up)
    assert str(db) in reason, reason
    assert took < REFUSE_WITHIN_S + start_up, (
        f"refused after {took:.1f}s (Python and imports: {start_up:.1f}s): {reason}"
    )
    assert db.read_bytes() == before, "the daemon changed a database it refused"
    assert not d.socket_path.exists()


# -- systemd ---------------------------------------------------------------------------------


def _unit_values(key: str) -> list[str]:
    """Every value of `key=` in the shipped unit (comments skipped)."""
    values = []
    for line in UNIT.read_text().splitlines():
        if line.startswith(f"{key}="):
            values.append(line.split("=", 1)[1])
    return values


def test_unit_socket_is_where_clients_look(monkeypatch: pytest.MonkeyPatch) -> None:
    """The unit's --socket is SYSTEM_SOCKET_PATH, a place clients try when given none."""
    (exec_start,) = _unit_values("ExecStart")
    match = re.search(r"--socket\s+(\S+)", exec_start)
    assert match is not None, exec_start
    assert Path(match.group(1)) == SYSTEM_SOCKET_PATH
    assert _unit_values("RuntimeDirectory") == [SYSTEM_SOCKET_PATH.parent.name]
    monkeypatch.delenv("HERO_PROC_SOCKET", raising=False)
    assert client_socket_candidates()[-1] == SYSTEM_SOCKET_PATH
    monkeypatch.setenv("HERO_PROC_SOCKET", "/somewhere/else.sock")
    assert client_socket_candidates() == [Path("/somewhere/else.sock")]


def test_unit_does_not_sandbox_supervised_programs() -> None:
    """No setting that would confine every job and service (they are in the unit's cgroup)."""
    text = "\n".join(ln for ln in UNIT.read_text().splitlines() if not ln.startswith("#"))
    for key in (
        "ProtectSystem", "ProtectHome", "PrivateTmp", "NoNewPrivileges", "UMask",
        "RestrictSUIDSGID", "SystemCallArchitectures", "ProtectKernelTunables",
        "ProtectControlGroups", "PrivateDevices", "ReadOnlyPaths", "CapabilityBoundingSet",
    ):  # fmt: skip
        assert f"\n{key}=" not in f"\n{text}", f"{key} would apply to every supervised program"
    # The socket group must be able to pass through the runtime folder.
    assert _unit_values("RuntimeDirectoryMode") == ["0755"]


def test_systemd_analyze_verify(tmp_path: Path) -> None:
    """`systemd-analyze verify` accepts the unit (ExecStart pointed at this venv's daemon)."""
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.skip("systemd-analyze is not installed on this machine")
    daemon = Path(sys.executable).with_name("hero-procd")
    assert daemon.exists(), f"{daemon} missing: `make install` first"
    unit = tmp_path / UNIT.name
    unit.write_text(UNIT.read_text().replace("/usr/local/bin/hero-procd", str(daemon)))
    out = subprocess.run(
        [tool, "verify", str(unit)], capture_output=True, text=True, timeout=60, check=False
    )
    assert out.returncode == 0 and UNIT.name not in out.stderr, out.stdout + out.stderr
