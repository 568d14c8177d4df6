"""hero-procd: start-up, single-instance guard, signals, graceful shutdown, sd_notify."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import logging
import os
import signal
import socket
import sys
from importlib import resources
from pathlib import Path
from typing import Any

import click
import orjson

from hero_procd import __version__
from hero_procd.app import App
from hero_procd.config import Config
from hero_procd.engine.executor import Executor
from hero_procd.engine.janitor import Janitor
from hero_procd.engine.scheduler import Scheduler
from hero_procd.engine.supervisor import Supervisor
from hero_procd.logs_setup import setup_logging
from hero_procd.rpc.dispatch import Dispatcher
from hero_procd.rpc.registry import load_methods
from hero_procd.rpc.server import RpcServer
from hero_procd.store import Store

log = logging.getLogger("hero_procd")


class StartupError(Exception):
    """The daemon cannot start; the message says why."""


def load_openrpc() -> dict[str, Any]:
    """The OpenRPC document shipped with the package (rpc_schema/openrpc.json)."""
    doc: dict[str, Any] = orjson.loads(
        resources.files("hero_procd").joinpath("openrpc.json").read_bytes()
    )
    return doc


def probe_socket(path: Path, timeout_s: float = 2.0) -> str:
    """'absent', 'stale' (a file nobody listens on) or 'live' (something answers)."""
    if not path.exists():
        return "absent"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout_s)
    try:
        sock.connect(str(path))
    except OSError as exc:
        if exc.errno in (errno.ECONNREFUSED, errno.ENOENT, errno.ENOTSOCK):
            return "stale"
        return "live"  # refused for another reason (permission, say): do not remove it
    finally:
        sock.close()
    return "live"


def notify(state: str) -> None:
    """Tell systemd our state (`READY=1`, `STOPPING=1`) when started with Type=notify."""
    addr = os.environ.get("NOTIFY_SOCKET")
    if not addr:
        return
    if addr.startswith("@"):
        addr = "\0" + addr[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        try:
            sock.sendto(state.encode(), addr)
        except OSError:
            log.warning("sd_notify failed", extra={"notify_socket": addr})


def take_lock(db_path: Path) -> int:
    """Hold an exclusive flock beside the database, so two daemons never share one."""
    db_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    lock_path = db_path.with_name(db_path.name + ".lock")
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise StartupError(
            f"another hero-procd holds the database {db_path} (lock {lock_path})"
        ) from None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd


async def serve(config: Config) -> None:
    """Run the daemon until SIGTERM or SIGINT, then shut down cleanly."""
    state = await asyncio.to_thread(probe_socket, config.socket_path)
    if state == "live":
        raise StartupError(
            f"a daemon already answers on {config.socket_path}; not starting a second one"
        )
    lock_fd = await asyncio.to_thread(take_lock, config.db_path)
    try:
        if state == "stale":
            log.info("removing stale socket", extra={"socket": str(config.socket_path)})
            with contextlib.suppress(FileNotFoundError):
                config.socket_path.unlink()
        store = await Store.open(config.db_path, config.readers)
        try:
            app = App(config=config, store=store, openrpc=await asyncio.to_thread(load_openrpc))
            app.executor = Executor(app)
            await app.executor.start()  # recovery first: no process of a previous daemon survives
            app.supervisor = Supervisor(
                app, app.executor.flusher, app.executor.spawner, app.executor.instance
            )
            await app.supervisor.start()
            app.scheduler = Scheduler(app)
            app.scheduler.start()
            app.janitor = Janitor(app)
            app.janitor.start()
            server = RpcServer(
                Dispatcher(app, load_methods()),
                config.socket_path,
                config.max_frame,
                config.socket_group,
            )
            await server.start()
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, stop.set)
            log.info(
                "hero-procd ready",
                extra={
                    "version": __version__,
                    "socket": str(config.socket_path),
                    "db": str(config.db_path),
                },
            )
            notify("READY=1")
            await stop.wait()
            log.info("shutting down")
            notify("STOPPING=1")
            await server.close(config.shutdown_grace_s)
            await app.scheduler.stop()
            await app.janitor.stop()
            await app.supervisor.stop()
            await app.executor.stop()
        finally:
            await store.close()
    finally:
        os.close(lock_fd)
    log.info("stopped")


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--socket",
    "socket_path",
    type=click.Path(path_type=Path),
    help="Unix socket [$HERO_PROC_SOCKET]",
)
@click.option(
    "--db", "db_path", type=click.Path(path_type=Path), help="SQLite database [$HERO_PROC_DB]"
)
@click.option("--readers", type=click.IntRange(1, 64), help="Reader connections [4]")
@click.option(
    "--max-parallel",
    type=click.IntRange(1, 100_000),
    help="Jobs running at once [16, $HERO_PROC_MAX_PARALLEL]",
)
@click.option(
    "--socket-group", help="Group allowed on the socket (mode 0660) [$HERO_PROC_SOCKET_GROUP]"
)
@click.option(
    "--log-level",
    default=lambda: os.environ.get("HERO_PROC_LOG_LEVEL", "info"),
    type=click.Choice(["debug", "info", "warning", "error"], case_sensitive=False),
)
@click.version_option(__version__, prog_name="hero-procd")
def main(
    socket_path: Path | None,
    db_path: Path | None,
    readers: int | None,
    max_parallel: int | None,
    socket_group: str | None,
    log_level: str,
) -> None:
    """hero-procd: the process supervisor and job queue daemon."""
    setup_logging(log_level)
    try:
        config = Config.from_env(
            socket_path,
            db_path,
            readers=readers,
            socket_group=socket_group,
            max_parallel=max_parallel,
        )
    except ValueError as exc:
        click.echo(f"hero-procd: {exc}", err=True)
        sys.exit(2)
    import uvloop

    try:
        uvloop.run(serve(config))
    except StartupError as exc:
        click.echo(f"hero-procd: {exc}", err=True)
        sys.exit(1)
    except KeyError as exc:  # an unknown --socket-group
        click.echo(f"hero-procd: unknown group {exc}", err=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
