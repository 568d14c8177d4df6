"""Paths and limits of the daemon, from defaults, the environment and flags."""

from __future__ import annotations

import os
import socket
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlsplit, urlunsplit

DEFAULT_MAX_FRAME = 16 * 1024 * 1024
DEFAULT_READERS = 4
# Front-door bounds (README "Limits"); each has a HERO_PROC_* environment override.
DEFAULT_MAX_BATCH = 1000
DEFAULT_MAX_INFLIGHT = 64
DEFAULT_MAX_CONNECTIONS = 1024
DEFAULT_IDLE_TIMEOUT_S = 300.0
DEFAULT_FRAME_TIMEOUT_S = 30.0


def default_socket_path() -> Path:
    """`$HERO_PROC_SOCKET`, else `$XDG_RUNTIME_DIR/hero_proc.sock`, else under ~/hero."""
    env = os.environ.get("HERO_PROC_SOCKET")
    if env:
        return Path(env)
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime:
        return Path(runtime) / "hero_proc.sock"
    return Path.home() / "hero" / "var" / "sockets" / "hero_proc.sock"


# Where the shipped systemd unit (systemd/hero-procd.service) puts the socket of
# the system-wide daemon. Clients look there last, so `hero-proc` finds a daemon
# installed as a service without any flag.
SYSTEM_SOCKET_PATH = Path("/run/hero-procd/hero_proc.sock")


def client_socket_candidates() -> list[Path]:
    """Where a client looks for the daemon, in order, when no socket is given.

    `$HERO_PROC_SOCKET` alone when set (an explicit choice is never second-guessed);
    else the user's own daemon (`$XDG_RUNTIME_DIR/hero_proc.sock`, then
    `~/hero/var/sockets/hero_proc.sock`), then the system daemon's socket.
    """
    env = os.environ.get("HERO_PROC_SOCKET")
    if env:
        return [Path(env)]
    candidates: list[Path] = []
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime:
        candidates.append(Path(runtime) / "hero_proc.sock")
    candidates.append(Path.home() / "hero" / "var" / "sockets" / "hero_proc.sock")
    candidates.append(SYSTEM_SOCKET_PATH)
    return candidates


def client_socket_path() -> Path:
    """The first candidate that is a socket; the daemon's own default if none is."""
    for path in client_socket_candidates():
        try:
            if stat.S_ISSOCK(os.stat(path).st_mode):
                return path
        except OSError:
            continue
    return default_socket_path()


def is_db_url(db: str | os.PathLike[str]) -> bool:
    """Whether a `--db` value names a PostgreSQL database rather than a SQLite file."""
    return str(db).startswith(("postgresql://", "postgres://"))


def default_db() -> str:
    """`$HERO_PROC_DB` (a SQLite path or a PostgreSQL URL), else the default SQLite path."""
    return os.environ.get("HERO_PROC_DB") or str(default_db_path())


def default_node() -> str:
    """`$HERO_PROC_NODE`, else the host's name."""
    return os.environ.get("HERO_PROC_NODE") or socket.gethostname()


def default_db_path() -> Path:
    """`$HERO_PROC_DB`, else `~/hero/var/hero_proc/hero_proc.db`."""
    env = os.environ.get("HERO_PROC_DB")
    if env:
        return Path(env)
    return Path.home() / "hero" / "var" / "hero_proc" / "hero_proc.db"


_Number = TypeVar("_Number", int, float)


def _env_number(name: str, default: _Number, kind: type[_Number]) -> _Number:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return kind(raw)
    except ValueError as exc:
        what = "an integer" if kind is int else "a number"
        raise ValueError(f"{name} must be {what}, got {raw!r}") from exc


def _env_positive(name: str, default: _Number, kind: type[_Number]) -> _Number:
    # A bound of 0 or less would refuse everything (or, for a timeout, close at once).
    value = _env_number(name, default, kind)
    if not value > 0:
        raise ValueError(f"{name} must be greater than 0, got {value!r}")
    return value


def _env_int(name: str, default: int) -> int:
    return _env_number(name, default, int)


def _env_float(name: str, default: float) -> float:
    return _env_number(name, default, float)


@dataclass(frozen=True)
class Config:
    """Everything the daemon needs to know to start."""

    socket_path: Path = field(default_factory=default_socket_path)
    db_path: Path = field(default_factory=default_db_path)
    # A PostgreSQL URL (`--db postgresql://…`): then db_path is not used.
    db_url: str | None = None
    # This daemon's name among the nodes sharing a PostgreSQL queue.
    node: str = field(default_factory=default_node)
    # A node whose heartbeat is older than this is dead; its own lease is half of it.
    node_timeout_s: float = 15.0
    heartbeat_s: float = 2.0
    readers: int = DEFAULT_READERS
    max_frame: int = DEFAULT_MAX_FRAME
    socket_group: str | None = None
    shutdown_grace_s: float = 10.0
    max_parallel: int = 16
    retry_base_s: float = 1.0
    retry_cap_s: float = 300.0
    flush_interval_s: float = 0.02
    flush_batch: int = 2000
    log_buffer_lines: int = 200_000
    max_line_bytes: int = 16 * 1024
    job_retention_days: float = 7.0
    max_log_lines_per_owner: int = 100_000
    janitor_interval_s: float = 300.0
    vacuum_step_pages: int = 1000
    max_batch: int = DEFAULT_MAX_BATCH
    max_inflight: int = DEFAULT_MAX_INFLIGHT
    max_connections: int = DEFAULT_MAX_CONNECTIONS
    idle_timeout_s: float = DEFAULT_IDLE_TIMEOUT_S
    frame_timeout_s: float = DEFAULT_FRAME_TIMEOUT_S
    # auto | cgroup2 | process-group (engine/contain.py), and the cgroup subtree of the
    # daemon's cells (None: <own cgroup>/hero-procd-<instance>).
    containment: str = "auto"
    cgroup: str | None = None
    # The browser listener (hero_procd/web): "HOST:PORT", off when None.
    http: str | None = None
    http_allow_remote: bool = False
    http_hosts: tuple[str, ...] = ()
    # Stack files applied at start and on SIGHUP (--config-dir, $HERO_PROC_CONFIG_DIR).
    config_dir: Path | None = None
    # None: $HERO_PROC_SECRETS_KEY_FILE, a systemd credential, or beside the database
    # (hero_procd/secretbox.py: key_file_path).
    secrets_key_file: Path | None = None

    @property
    def db_shown(self) -> str:
        """The database as system.info and the logs show it (a URL without its password)."""
        if self.db_url is None:
            return str(self.db_path)
        parts = urlsplit(self.db_url)
        if parts.password is not None:
            host = parts.hostname or ""
            netloc = f"{parts.username}:***@{host}" + (f":{parts.port}" if parts.port else "")
            return urlunsplit(parts._replace(netloc=netloc))
        return self.db_url

    @classmethod
    def from_env(
        cls,
        socket_path: str | os.PathLike[str] | None = None,
        db_path: str | os.PathLike[str] | None = None,
        readers: int | None = None,
        max_frame: int | None = None,
        socket_group: str | None = None,
        max_parallel: int | None = None,
        node: str | None = None,
        node_timeout_s: float | None = None,
        containment: str | None = None,
        cgroup: str | None = None,
        http: str | None = None,
        http_allow_remote: bool | None = None,
        secrets_key_file: str | os.PathLike[str] | None = None,
    ) -> Config:
        """Build a config: explicit arguments win over the environment, which wins over defaults."""
        db = str(db_path) if db_path else default_db()
        if node is not None and not node.strip():
            raise ValueError("--node must not be empty")
        return cls(
            socket_path=Path(socket_path) if socket_path else default_socket_path(),
            db_path=default_db_path() if is_db_url(db) else Path(db),
            db_url=db if is_db_url(db) else None,
            node=node or default_node(),
            node_timeout_s=(
                node_timeout_s
                if node_timeout_s is not None
                else _env_positive("HERO_PROC_NODE_TIMEOUT_S", 15.0, float)
            ),
            readers=readers
            if readers is not None
            else _env_int("HERO_PROC_READERS", DEFAULT_READERS),
            max_frame=(
                max_frame
                if max_frame is not None
                else _env_int("HERO_PROC_MAX_FRAME", DEFAULT_MAX_FRAME)
            ),
            socket_group=socket_group or os.environ.get("HERO_PROC_SOCKET_GROUP") or None,
            max_parallel=(
                max_parallel if max_parallel is not None else _env_int("HERO_PROC_MAX_PARALLEL", 16)
            ),
            log_buffer_lines=_env_int("HERO_PROC_LOG_BUFFER_LINES", 200_000),
            job_retention_days=_env_float("HERO_PROC_JOB_RETENTION_DAYS", 7.0),
            max_log_lines_per_owner=_env_int("HERO_PROC_MAX_LOG_LINES", 100_000),
            janitor_interval_s=_env_float("HERO_PROC_JANITOR_INTERVAL_S", 300.0),
            max_batch=_env_positive("HERO_PROC_MAX_BATCH", DEFAULT_MAX_BATCH, int),
            max_inflight=_env_positive("HERO_PROC_MAX_INFLIGHT", DEFAULT_MAX_INFLIGHT, int),
            max_connections=_env_positive(
                "HERO_PROC_MAX_CONNECTIONS", DEFAULT_MAX_CONNECTIONS, int
            ),
            idle_timeout_s=_env_positive("HERO_PROC_IDLE_TIMEOUT_S", DEFAULT_IDLE_TIMEOUT_S, float),
            frame_timeout_s=_env_positive(
                "HERO_PROC_FRAME_TIMEOUT_S", DEFAULT_FRAME_TIMEOUT_S, float
            ),
            containment=_containment_mode(containment),
            cgroup=cgroup or os.environ.get("HERO_PROC_CGROUP") or None,
            http=http or os.environ.get("HERO_PROC_HTTP") or None,
            http_allow_remote=(
                http_allow_remote
                if http_allow_remote is not None
                else os.environ.get("HERO_PROC_HTTP_ALLOW_REMOTE", "") in ("1", "true", "yes")
            ),
            http_hosts=tuple(
                h.strip()
                for h in os.environ.get("HERO_PROC_HTTP_HOSTS", "").split(",")
                if h.strip()
            ),
            secrets_key_file=Path(secrets_key_file) if secrets_key_file else None,
        )


CONTAINMENT_MODES = ("auto", "cgroup2", "process-group")


def _containment_mode(flag: str | None) -> str:
    value = flag or os.environ.get("HERO_PROC_CONTAINMENT") or "auto"
    if value not in CONTAINMENT_MODES:
        raise ValueError(
            f"HERO_PROC_CONTAINMENT must be one of {', '.join(CONTAINMENT_MODES)}, got {value!r}"
        )
    return value
