"""supervisord as the baseline: a config of N programs, the process, and XML-RPC over its socket."""

from __future__ import annotations

import http.client
import shutil
import signal
import socket
import subprocess
import sys
import time
import xmlrpc.client
from pathlib import Path
from types import TracebackType
from typing import Any

from integration.daemon_proc import cleanup, short_tmpdir


def supervisor_bin(name: str) -> Path | None:
    """`supervisord` or `supervisorctl` beside this Python, else on PATH, else None."""
    beside = Path(sys.executable).parent / name
    if beside.exists():
        return beside
    found = shutil.which(name)
    return Path(found) if found else None


class UnixHTTPConnection(http.client.HTTPConnection):
    """An HTTP/1.1 connection over a Unix socket."""

    def __init__(self, socket_path: str, timeout: float = 60.0) -> None:
        super().__init__("localhost", timeout=timeout)
        self.socket_path = socket_path

    def connect(self) -> None:
        """Connect to the Unix socket instead of a TCP host."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self.socket_path)
        self.sock = sock


class UnixTransport(xmlrpc.client.Transport):
    """An xmlrpc.client transport that keeps one HTTP/1.1 connection to a Unix socket."""

    def __init__(self, socket_path: str) -> None:
        super().__init__()
        self.socket_path = socket_path
        self.unix_conn: UnixHTTPConnection | None = None

    def make_connection(self, host: Any) -> http.client.HTTPConnection:
        """The one connection, made on first use (or by `connect()` beforehand)."""
        if self.unix_conn is None:
            self.unix_conn = UnixHTTPConnection(self.socket_path)
        return self.unix_conn

    def connect(self) -> None:
        """Open the connection now, so a timed call does not pay for it."""
        conn = self.make_connection("localhost")
        if conn.sock is None:
            conn.connect()

    def close(self) -> None:
        """Close the connection."""
        if self.unix_conn is not None:
            self.unix_conn.close()
            self.unix_conn = None


def server_proxy(socket_path: Path) -> tuple[xmlrpc.client.ServerProxy, UnixTransport]:
    """An XML-RPC proxy to supervisord's unix_http_server, and its transport."""
    transport = UnixTransport(str(socket_path))
    return xmlrpc.client.ServerProxy("http://localhost", transport=transport), transport


class Supervisord:
    """One `supervisord -n` with `programs` copies of `command`, in a short tmp dir.

    With `autostart` the programs start with supervisord (and `start()` waits until
    all are RUNNING); without, they stay STOPPED until `startAllProcesses`.
    """

    def __init__(
        self,
        programs: int,
        command: str = "sleep 1000",
        *,
        startsecs: int = 1,
        autostart: bool = True,
    ) -> None:
        self.programs = programs
        self.command = command
        self.startsecs = startsecs
        self.autostart = autostart
        self.workdir = short_tmpdir("sv")
        self.socket_path = self.workdir / "s.sock"
        self.conf_path = self.workdir / "supervisord.conf"
        self.log_path = self.workdir / "supervisord.out"
        self.proc: subprocess.Popen[bytes] | None = None

    def write_config(self) -> None:
        """The config: a unix_http_server, the rpcinterface, supervisorctl and the programs."""
        w = self.workdir
        parts = [
            "[unix_http_server]",
            f"file={self.socket_path}",
            "chmod=0700",
            "",
            "[supervisord]",
            f"logfile={w / 'supervisord.log'}",
            f"pidfile={w / 'supervisord.pid'}",
            f"childlogdir={w}",
            "nodaemon=true",
            "loglevel=warn",
            "",
            "[rpcinterface:supervisor]",
            "supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface",
            "",
            "[supervisorctl]",
            f"serverurl=unix://{self.socket_path}",
            "",
        ]
        for i in range(self.programs):
            parts += [
                f"[program:p{i:03d}]",
                f"command={self.command}",
                f"autostart={'true' if self.autostart else 'false'}",
                "autorestart=true",
                f"startsecs={self.startsecs}",
                "stdout_logfile=NONE",
                "stderr_logfile=NONE",
                "",
            ]
        self.conf_path.write_text("\n".join(parts))

    def start(self, timeout_s: float = 60.0) -> Supervisord:
        """Start supervisord and wait until every program is RUNNING (STOPPED without autostart)."""
        exe = supervisor_bin("supervisord")
        if exe is None:
            raise RuntimeError("supervisord is not installed")
        self.write_config()
        with open(self.log_path, "ab") as out:
            self.proc = subprocess.Popen(
                [str(exe), "-n", "-c", str(self.conf_path)],
                stdout=out,
                stderr=out,
                start_new_session=True,
            )
        want = "RUNNING" if self.autostart else "STOPPED"
        deadline = time.monotonic() + timeout_s
        proxy, transport = server_proxy(self.socket_path)
        try:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"supervisord exited with {self.proc.returncode}")
                if self.socket_path.exists():
                    try:
                        infos = proxy.supervisor.getAllProcessInfo()
                    except (OSError, xmlrpc.client.Fault, http.client.HTTPException):
                        transport.close()
                    else:
                        assert isinstance(infos, list)
                        ready = sum(1 for p in infos if p["statename"] == want)
                        if ready == self.programs:
                            return self
                time.sleep(0.1)
        finally:
            transport.close()
        self.stop()
        raise RuntimeError(f"supervisord's programs were not all {want} within {timeout_s}s")

    @property
    def pid(self) -> int:
        """supervisord's process id."""
        assert self.proc is not None
        return self.proc.pid

    def stop(self, timeout_s: float = 30.0) -> None:
        """SIGTERM supervisord (it stops its programs), wait, and remove the tmp dir."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        cleanup(self.workdir)

    def __enter__(self) -> Supervisord:
        return self.start()

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
