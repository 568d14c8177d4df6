"""Start and stop the real hero-procd as a subprocess, for tests and benchmarks."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType

from hero_procd.client import Client


def short_tmpdir(prefix: str = "hp") -> Path:
    """A fresh directory under /tmp: Unix socket paths must stay under 107 bytes."""
    return Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))


class DaemonProcess:
    """One hero-procd process on its own socket and database."""

    def __init__(
        self,
        workdir: Path,
        extra_args: list[str] | None = None,
        env: dict[str, str] | None = None,
        db: str | None = None,
        node: str | None = None,
        wrap: list[str] | None = None,
    ):
        self.workdir = workdir
        self.socket_path = workdir / (f"{node}.sock" if node else "hp.sock")
        self.db_path = workdir / "hp.db"
        # A PostgreSQL URL instead of the SQLite file, and this daemon's node name.
        self.db = db
        self.node = node
        self.log_path = workdir / (f"{node}.log" if node else "daemon.log")
        self.extra_args = extra_args or []
        self.env = env
        # A command the daemon runs under (`ip netns exec NS`, which execs it: same pid).
        self.wrap = wrap or []
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def argv(self) -> list[str]:
        """The command line that starts this daemon."""
        return [
            *self.wrap,
            sys.executable, "-m", "hero_procd.daemon",
            "--socket", str(self.socket_path), "--db", self.db or str(self.db_path),
            *(["--node", self.node] if self.node else []),
            *self.extra_args,
        ]  # fmt: skip

    @property
    def instance_key(self) -> str:
        """What the daemon's instance id (the mark on its children) is made from."""
        if self.db is None:
            return str(self.db_path)
        return f"{self.db}#{self.node}"

    def start(self, timeout_s: float = 20.0) -> DaemonProcess:
        """Start the daemon and wait until it answers `system.ping`."""
        env = dict(os.environ)
        env.update(self.env or {})
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                self.argv, stdout=log, stderr=log, env=env, start_new_session=True
            )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"hero-procd exited with {self.proc.returncode}:\n{self.log()}")
            if self.socket_path.exists():
                try:
                    with Client(self.socket_path, timeout=5) as c:
                        c.call("system.ping")
                    return self
                except Exception:
                    pass
            time.sleep(0.02)
        # Not left running (nor reported later, against another test, by Popen.__del__).
        self.proc.kill()
        self.proc.wait()
        raise RuntimeError(f"hero-procd did not answer within {timeout_s}s:\n{self.log()}")

    def client(self, timeout: float | None = 60.0) -> Client:
        """A new blocking client on this daemon's socket."""
        return Client(self.socket_path, timeout=timeout)

    def log(self) -> str:
        """What the daemon wrote to stdout/stderr so far."""
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 20.0) -> int:
        """Signal the daemon and wait for it; its exit code."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def kill(self) -> None:
        """kill -9 the daemon (a crash)."""
        self.stop(signal.SIGKILL)

    def __enter__(self) -> DaemonProcess:
        return self.start()

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def cleanup(path: Path) -> None:
    """Remove a test's work dir."""
    shutil.rmtree(path, ignore_errors=True)
