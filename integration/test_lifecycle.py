"""The daemon as a process: shutdown, crash and restart, single instance, sd_notify, paths."""

from __future__ import annotations

import os
import signal
import socket
import sqlite3
import stat
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from integration.daemon_proc import DaemonProcess

START_TIMEOUT_S = 30.0


def file_mode(path: Path) -> int:
    """The permission bits of `path`."""
    return stat.S_IMODE(os.stat(path).st_mode)


def wal_path(db: Path) -> Path:
    """The write-ahead log beside a SQLite database."""
    return db.with_name(db.name + "-wal")


def run_daemon_to_exit(
    argv: list[str], env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run a daemon command line expected to exit on its own (a refused start)."""
    full_env = dict(os.environ)
    full_env.update(env or {})
    return subprocess.run(
        argv, capture_output=True, text=True, timeout=START_TIMEOUT_S, env=full_env, check=False
    )


class EnvDaemon(DaemonProcess):
    """A daemon started without --socket/--db: it must find its paths in the environment."""

    def __init__(self, workdir: Path, socket_path: Path, db_path: Path, env: dict[str, str]):
        super().__init__(workdir, env=env)
        self.socket_path = socket_path
        self.db_path = db_path

    @property
    def argv(self) -> list[str]:
        """The command line, with no path flags."""
        return [sys.executable, "-m", "hero_procd.daemon"]


# -- shutdown --------------------------------------------------------------------------


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_stops_cleanly(workdir: Path, started: list[DaemonProcess], sig: int) -> None:
    """SIGTERM/SIGINT: exit 0, socket removed, WAL checkpointed into the database file."""
    d = DaemonProcess(workdir).start()
    started.append(d)
    with d.client() as c:
        run = c.call(
            "run.submit", jobs=[{"key": f"k{i}", "command": ["/bin/true"]} for i in range(500)]
        )
        c.call("action.set", name="kept", command=["/bin/true"])
    wal = wal_path(d.db_path)
    assert wal.exists() and wal.stat().st_size > 0, "the test needs writes sitting in the WAL"

    assert d.stop(sig) == 0, d.log()
    assert not d.socket_path.exists(), "the socket file was left behind"
    assert not wal.exists() or wal.stat().st_size == 0, f"WAL not checkpointed: {wal.stat()}"
    assert "stopped" in d.log()
    # Everything is in the main database file now.
    conn = sqlite3.connect(f"file:{d.db_path}?mode=ro", uri=True)
    try:
        kept = conn.execute("SELECT count(*) FROM jobs WHERE run_id = ?", (run["id"],))
        assert kept.fetchone() == (500,)
        assert conn.execute("SELECT name FROM actions").fetchall() == [("kept",)]
    finally:
        conn.close()


def test_data_committed_before_kill_9_survives_restart(
    workdir: Path, started: list[DaemonProcess]
) -> None:
    """What the daemon answered before a kill -9 is there after a restart on the same files."""
    d = DaemonProcess(workdir).start()
    started.append(d)
    with d.client() as c:
        jobs = [
            {"key": "a", "command": ["/bin/true"]},
            {"key": "b", "command": ["/bin/true"], "depends_on": ["a"]},
        ]
        run = c.call("run.submit", name="before-crash", jobs=jobs)
        job = c.call("job.submit", command=["/bin/echo", "persist"], tags=["crash"])
        c.call("action.set", name="survivor", command=["/bin/true"])
        c.call("service.define", name="svc", command=["/bin/sleep", "60"])
    d.kill()
    assert d.proc is not None and d.proc.returncode == -signal.SIGKILL
    assert d.socket_path.exists(), "kill -9 leaves the socket file behind"

    again = DaemonProcess(workdir).start()
    started.append(again)
    with again.client() as c:
        got = c.call("job.get", id=job["id"])
        assert got["command"] == ["/bin/echo", "persist"] and got["tags"] == ["crash"]
        after = c.call("run.get", id=run["id"])
        assert after["name"] == "before-crash"
        deps = {j["key"]: j["depends_on"] for j in after["jobs"]}
        assert deps == {"a": [], "b": ["a"]}
        assert c.call("action.get", name="survivor")["command"] == ["/bin/true"]
        assert c.call("service.get", name="svc")["command"] == ["/bin/sleep", "60"]
        counts = c.call("system.info")["counts"]
        assert counts | {"logs": 0, "schedules": 0} == {
            "jobs": 3, "runs": 1, "actions": 1, "services": 1, "logs": 0, "schedules": 0
        }  # fmt: skip
        # New ids continue after the old ones.
        assert c.call("job.submit", command=["/bin/true"])["id"] > job["id"]
    assert again.stop() == 0


# -- one daemon per socket and per database ------------------------------------------------


def test_second_daemon_on_same_socket_refuses(workdir: Path, started: list[DaemonProcess]) -> None:
    """A second daemon on a live socket exits non-zero saying why; the first keeps answering."""
    first = DaemonProcess(workdir).start()
    started.append(first)
    second = DaemonProcess(workdir)
    second.db_path = workdir / "other.db"  # only the socket is shared
    out = run_daemon_to_exit(second.argv)
    assert out.returncode != 0
    assert "already answers" in out.stderr and str(first.socket_path) in out.stderr, out.stderr
    assert "Traceback" not in out.stderr
    assert first.socket_path.exists(), "the refused daemon removed the live socket"
    assert first.proc is not None
    with first.client() as c:
        assert c.call("system.ping")["pong"] is True
        assert c.call("system.info")["pid"] == first.proc.pid
    assert first.stop() == 0


def test_second_daemon_on_same_database_refuses(
    workdir: Path, started: list[DaemonProcess]
) -> None:
    """Two daemons never share a database: the flock beside it turns the second away."""
    first = DaemonProcess(workdir).start()
    started.append(first)
    second = DaemonProcess(workdir)
    second.socket_path = workdir / "second.sock"  # only the database is shared
    out = run_daemon_to_exit(second.argv)
    assert out.returncode != 0
    assert "holds the database" in out.stderr and str(first.db_path) in out.stderr, out.stderr
    assert "Traceback" not in out.stderr
    assert not second.socket_path.exists(), "the refused daemon bound a socket"
    lock = first.db_path.with_name(first.db_path.name + ".lock")
    assert first.proc is not None
    assert lock.read_text().strip() == str(first.proc.pid)
    with first.client() as c:
        assert c.call("system.ping")["pong"] is True
    assert first.stop() == 0


def test_stale_socket_file_is_replaced(workdir: Path, started: list[DaemonProcess]) -> None:
    """A socket file nobody listens on (a dead daemon's) is removed and the daemon starts."""
    d = DaemonProcess(workdir)
    leftover = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    leftover.bind(str(d.socket_path))
    leftover.close()  # the file stays, nothing listens: connect() is refused
    assert stat.S_ISSOCK(os.stat(d.socket_path).st_mode)
    old_inode = os.stat(d.socket_path).st_ino

    d.start()
    started.append(d)
    assert os.stat(d.socket_path).st_ino != old_inode
    assert file_mode(d.socket_path) == 0o600
    with d.client() as c:
        assert c.call("system.ping")["pong"] is True
    assert "stale" in d.log()
    assert d.stop() == 0


# -- sd_notify -------------------------------------------------------------------------


def _recv_states(sock: socket.socket, want: str, timeout_s: float = START_TIMEOUT_S) -> list[str]:
    """Datagrams received until one equals `want` (all of them, in order)."""
    got: list[str] = []
    deadline = time.monotonic() + timeout_s
    while want not in got:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            got.extend(sock.recv(4096).decode().split("\n"))
        except TimeoutError:
            raise AssertionError(f"no {want} within {timeout_s}s; got {got}") from None
    return got


def test_notify_socket_gets_ready_and_stopping(workdir: Path, started: list[DaemonProcess]) -> None:
    """With NOTIFY_SOCKET set, the daemon sends READY=1 when serving and STOPPING=1 when leaving."""
    notify_path = workdir / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(notify_path))
        d = DaemonProcess(workdir, env={"NOTIFY_SOCKET": str(notify_path)})
        started.append(d)
        d.start()
        assert "READY=1" in _recv_states(sock, "READY=1")
        with d.client() as c:
            assert c.call("system.ping")["pong"] is True
        assert d.stop() == 0
        assert "STOPPING=1" in _recv_states(sock, "STOPPING=1")


def test_notify_socket_in_abstract_namespace(workdir: Path, started: list[DaemonProcess]) -> None:
    """A NOTIFY_SOCKET starting with '@' names an abstract socket, as systemd may pass it."""
    name = f"hero-procd-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        d = DaemonProcess(workdir, env={"NOTIFY_SOCKET": "@" + name})
        started.append(d)
        d.start()
        assert "READY=1" in _recv_states(sock, "READY=1")
        assert d.stop() == 0


# -- files and paths -----------------------------------------------------------------------


def test_new_db_and_folders_are_private(workdir: Path, started: list[DaemonProcess]) -> None:
    """A database created from nothing is 0600 in a 0700 folder, whatever the umask."""
    d = DaemonProcess(workdir)
    d.db_path = workdir / "state" / "deep" / "hp.db"
    d.socket_path = workdir / "run" / "hp.sock"
    old = os.umask(0)  # the daemon inherits it: its modes must not rely on a kind umask
    try:
        d.start()
    finally:
        os.umask(old)
    started.append(d)
    assert file_mode(d.db_path) == 0o600
    assert file_mode(d.db_path.parent) == 0o700
    assert file_mode(d.db_path.with_name("hp.db.lock")) == 0o600
    assert file_mode(d.socket_path) == 0o600
    assert file_mode(d.socket_path.parent) == 0o700
    with d.client() as c:
        c.call("job.submit", command=["/bin/true"])
    wal = wal_path(d.db_path)
    assert wal.exists() and file_mode(wal) == 0o600
    assert d.stop() == 0


def test_existing_db_mode_is_left_alone(workdir: Path, started: list[DaemonProcess]) -> None:
    """An existing database keeps its mode and its data (the daemon only creates, never chmods)."""
    d = DaemonProcess(workdir).start()
    started.append(d)
    with d.client() as c:
        job = c.call("job.submit", command=["/bin/true"])
    assert d.stop() == 0
    os.chmod(d.db_path, 0o640)
    d.start()
    with d.client() as c:
        assert c.call("job.get", id=job["id"])["command"] == ["/bin/true"]
    assert file_mode(d.db_path) == 0o640
    assert d.stop() == 0


def test_flags_set_socket_and_db(workdir: Path, started: list[DaemonProcess]) -> None:
    """--socket and --db win over HERO_PROC_SOCKET/HERO_PROC_DB."""
    env_sock, env_db = workdir / "env.sock", workdir / "env.db"
    d = DaemonProcess(workdir, env={"HERO_PROC_SOCKET": str(env_sock), "HERO_PROC_DB": str(env_db)})
    d.start()
    started.append(d)
    with d.client() as c:
        info = c.call("system.info")
    assert info["socket"] == str(d.socket_path) and info["db"] == str(d.db_path)
    assert d.db_path.exists() and d.socket_path.exists()
    assert not env_sock.exists() and not env_db.exists()
    assert d.stop() == 0


def test_environment_sets_socket_and_db(workdir: Path, started: list[DaemonProcess]) -> None:
    """Without flags, HERO_PROC_SOCKET and HERO_PROC_DB choose the paths."""
    sock, db = workdir / "from-env.sock", workdir / "data" / "from-env.db"
    d = EnvDaemon(workdir, sock, db, {"HERO_PROC_SOCKET": str(sock), "HERO_PROC_DB": str(db)})
    d.start()
    started.append(d)
    with d.client() as c:
        info = c.call("system.info")
        c.call("job.submit", command=["/bin/true"])
    assert info["socket"] == str(sock) and info["db"] == str(db)
    assert info["counts"]["jobs"] == 0
    assert d.stop() == 0
    assert db.exists() and not sock.exists()
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        assert conn.execute("SELECT count(*) FROM jobs").fetchone() == (1,)
    finally:
        conn.close()


def test_xdg_runtime_dir_is_the_socket_fallback(
    workdir: Path, started: list[DaemonProcess]
) -> None:
    """Without HERO_PROC_SOCKET, the socket is $XDG_RUNTIME_DIR/hero_proc.sock."""
    runtime = workdir / "xdg"
    runtime.mkdir(mode=0o700)
    sock, db = runtime / "hero_proc.sock", workdir / "x.db"
    env = {"HERO_PROC_SOCKET": "", "XDG_RUNTIME_DIR": str(runtime), "HERO_PROC_DB": str(db)}
    d = EnvDaemon(workdir, sock, db, env)
    d.start()
    started.append(d)
    with d.client() as c:
        assert c.call("system.info")["socket"] == str(sock)
    assert d.stop() == 0


def test_bad_max_frame_setting_is_refused(workdir: Path) -> None:
    """A malformed HERO_PROC_MAX_FRAME stops the daemon at once with a message, not a traceback."""
    d = DaemonProcess(workdir)
    out = run_daemon_to_exit(d.argv, env={"HERO_PROC_MAX_FRAME": "lots"})
    assert out.returncode != 0
    assert "HERO_PROC_MAX_FRAME" in out.stderr and "Traceback" not in out.stderr, out.stderr
    assert not d.socket_path.exists()
