"""hero-procd: start-up, single-instance guard, signals, graceful shutdown, sd_notify.

Start-up is ordered so that a failure never leaves a child behind: the files
are checked and the single-instance lock and the socket taken first, then the
store is opened, then the socket bound, and only then do the engines start
(the first of which may spawn). Whatever fails stops what was started, in
reverse, and the daemon exits 1 with one line naming the cause.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import sqlite3
import sys
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from importlib import resources
from pathlib import Path
from typing import Any, NoReturn

import click
import orjson

from hero_procd import __version__, gcpause
from hero_procd.app import App
from hero_procd.config import Config
from hero_procd.engine.cluster import Node, refuse_if_live
from hero_procd.engine.contain import make_containment
from hero_procd.engine.executor import Executor, instance_id, instance_key
from hero_procd.engine.janitor import Janitor
from hero_procd.engine.scheduler import Scheduler
from hero_procd.engine.supervisor import Supervisor
from hero_procd.engine.watchdog import start_for as start_watchdog
from hero_procd.errors import HeroError
from hero_procd.logs_setup import setup_logging
from hero_procd.offload import offload
from hero_procd.paths import DatabaseLock, StartupError, claim_socket
from hero_procd.paths import resolve as resolve_paths
from hero_procd.paths import resolve_socket_only as resolve_socket_paths
from hero_procd.rpc.dispatch import Dispatcher
from hero_procd.rpc.registry import Handler, load_methods
from hero_procd.rpc.server import RpcServer
from hero_procd.secretbox import KeyFileError, SecretBox, key_file_path, load_key_file
from hero_procd.store import Store
from hero_procd.web.listen import start_web

log = logging.getLogger("hero_procd")

__all__ = ["StartupError", "main", "serve"]


def load_openrpc() -> dict[str, Any]:
    """The OpenRPC document shipped with the package (rpc_schema/openrpc.json)."""
    doc: dict[str, Any] = orjson.loads(
        resources.files("hero_procd").joinpath("openrpc.json").read_bytes()
    )
    return doc


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


def describe(exc: BaseException) -> str:
    """One line saying what went wrong, for an operator (no traceback, no class path)."""
    if isinstance(exc, StartupError | HeroError):
        return str(exc)
    if isinstance(exc, sqlite3.Error):
        return " ".join(str(exc).split())  # SQLite's own words say it ("file is not a database")
    if isinstance(exc, OSError) and exc.strerror:
        where = f": {exc.filename}" if exc.filename else ""
        return f"{exc.strerror}{where}"
    text = " ".join(str(exc).split())  # one line, whatever the exception put in it
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class GatedDispatcher(Dispatcher):
    """A dispatcher that holds requests until the engines have started.

    The socket is bound before the engines start, so that no child runs while
    the daemon cannot be reached; a request arriving in between waits here
    (rather than meeting an executor that is not there yet) and is answered
    as soon as the daemon is ready.
    """

    def __init__(self, app: App, handlers: dict[str, Handler], ready: asyncio.Event) -> None:
        super().__init__(app, handlers)
        self._ready = ready

    async def stream(self, payload: bytes | str) -> AsyncIterator[bytes]:
        """Answer one frame once the daemon is ready (the server calls `stream`, not `handle`)."""
        if not self._ready.is_set():
            await self._ready.wait()
        async for piece in super().stream(payload):
            yield piece


class Teardown:
    """What the daemon has started, stopped in reverse order.

    Each step is stopped even if an earlier one failed: a failed stop is
    logged and must not leave the rest (children, the store, the lock) behind.
    """

    def __init__(self) -> None:
        self._steps: list[tuple[str, Callable[[], Awaitable[None]]]] = []

    def push(self, name: str, stop: Callable[[], Awaitable[None]]) -> None:
        """Remember how to stop what was just started."""
        self._steps.append((name, stop))

    async def run(self, first: tuple[str, ...] = ()) -> None:
        """Stop everything, newest first; the steps named in `first` before all the others."""
        steps = list(reversed(self._steps))
        self._steps.clear()
        if first:
            # Stable: the named steps in the order given, the rest keep their order.
            steps.sort(key=lambda step: first.index(step[0]) if step[0] in first else len(first))
        for name, stop in steps:
            try:
                await stop()
            except Exception as exc:
                log.error(f"stopping the {name} failed: {describe(exc)}")
                log.debug("stop failure", exc_info=exc)  # the traceback only when asked for


def _lock_release(lock: DatabaseLock) -> Callable[[], Awaitable[None]]:
    async def release() -> None:
        lock.release()

    return release


async def _start(config: Config, teardown: Teardown, ready: asyncio.Event) -> tuple[Config, App]:
    """Take the lock and the socket, open the store, start the engines: in that order.

    Every stage that succeeds pushes its stop onto `teardown`; an exception
    leaves the caller to unwind them. Stages are named in the error so that
    one line says where start-up stopped. Returns the config with its paths
    resolved.
    """
    stage = "checking the files"
    try:
        if config.db_url is None:
            paths = await asyncio.to_thread(
                resolve_paths, config.db_path, config.socket_path, config.socket_group
            )
        else:
            # PostgreSQL: no database file to check or lock (several nodes share the database).
            paths = await asyncio.to_thread(
                resolve_socket_paths, config.db_path, config.socket_path, config.socket_group
            )
        # Resolved once: every later use (store, socket, recovery marks, system.info)
        # sees the same real paths, whatever symlinks the flags went through.
        config = replace(config, db_path=paths.db, socket_path=paths.socket)
        if config.db_url is None:
            stage = "locking the database"
            lock = await asyncio.to_thread(DatabaseLock.acquire, paths.db)
            teardown.push("lock", _lock_release(lock))
        stage = f"claiming the socket {paths.socket}"
        await asyncio.to_thread(claim_socket, paths.socket, paths.socket_gid)

        stage = f"opening the database {config.db_shown}"
        store = await Store.open(
            config.db_url or paths.db,
            config.readers,
            node=config.node,
            node_timeout_s=config.node_timeout_s,
        )
        teardown.push("store", store.close)
        # Before anything is written as this node (its row, stack files, recovery).
        stage = f"checking that no other daemon is node {config.node}"
        heartbeat_s = min(config.heartbeat_s, config.node_timeout_s / 4)  # as Node beats
        seen = await refuse_if_live(store, config.node, config.node_timeout_s, heartbeat_s)
        stage = "unlocking the secrets"
        # Before the claim: a start refused for its key writes nothing (not even the
        # node's row). Unlocking only seals clear rows with the key the database holds.
        await _unlock_secrets(store, paths.db, config.secrets_key_file)
        stage = f"claiming node {config.node}"
        # Atomic: of two daemons started at once as one node (both pass the check above),
        # the one whose claim comes second changes nothing and is refused here.
        if not await store.nodes.claim(__version__, os.getpid(), seen):
            raise StartupError(
                f"another daemon took node {config.node!r} while this one started: "
                "start this one with another --node"
            )
        # Marked stopped again if start-up fails from here (a later start need not wait).
        teardown.push("node row", store.nodes.stopped)
        stage = "loading the OpenRPC document"
        app = App(config=config, store=store, openrpc=await asyncio.to_thread(load_openrpc))

        stage = f"binding the socket {paths.socket}"
        server = RpcServer(
            GatedDispatcher(app, load_methods(), ready),
            paths.socket,
            config.max_frame,
            config.socket_group,
        )
        await server.start()
        # Pushed once bound: closing also unlinks the path, which, had the bind
        # failed, could be another program's socket.
        teardown.push("server", lambda: server.close(config.shutdown_grace_s))

        # Before the stack files: their limits are checked against the usable controllers.
        stage = "setting up containment"
        app.containment = await asyncio.to_thread(
            make_containment, config.containment, config.cgroup, instance_id(instance_key(config))
        )
        teardown.push("containment", app.containment.close)
        # Before any child runs: if this process dies without a stop (kill -9, a crash),
        # the watchdog kills every cell (cgroups only; engine/watchdog.py). Stopped after
        # the executor and the supervisor have ended their processes, before the subtree goes.
        stage = "starting the watchdog"
        app.watchdog = await asyncio.to_thread(start_watchdog, app.containment)
        if app.watchdog is not None:
            teardown.push("watchdog", app.watchdog.stop)
            app.watchdog.watch()

        if config.config_dir is not None:
            # Before the engines: the supervisor then starts what the files mark autostart.
            # A bad file is logged and leaves the stored state as it was; start-up goes on.
            stage = f"applying the config dir {config.config_dir}"
            await apply_config_dir(app, config.config_dir, "start")

        # Only now may children run: the daemon can be reached to see and stop them.
        stage = "starting the executor"
        app.executor = Executor(app)
        app.executor.flusher.on_stored = app.logs_stored  # metrics, live log tails
        # The node stops after the executor: it heartbeats while the attempts are ended.
        app.node = Node(app)
        teardown.push("node", app.node.stop)
        teardown.push("executor", app.executor.stop)
        teardown.push("waits", app.executor.answer_waits)
        await app.executor.start()  # recovery first: no process of a previous daemon survives
        stage = f"joining the nodes as {config.node}"
        await app.node.start()
        stage = "starting the supervisor"
        app.supervisor = Supervisor(
            app, app.executor.flusher, app.executor.spawner, app.executor.instance
        )
        teardown.push("supervisor", app.supervisor.stop)
        teardown.push("service waits", app.supervisor.answer_waits)
        await app.supervisor.start()
        stage = "starting the scheduler"
        app.scheduler = Scheduler(app)
        teardown.push("scheduler", app.scheduler.stop)
        app.scheduler.start()
        stage = "starting the janitor"
        app.janitor = Janitor(app)
        teardown.push("janitor", app.janitor.stop)
        app.janitor.start()
        if config.http is not None:
            stage = f"starting the browser listener on {config.http}"
            listener = await start_web(app, server.dispatcher, config)
            teardown.push("http", listener.close)
    except StartupError:
        raise
    except KeyFileError as exc:
        raise StartupError(str(exc)) from exc
    except Exception as exc:
        log.debug("start-up failed", exc_info=exc)
        raise StartupError(f"{stage}: {describe(exc)}") from exc
    return config, app


async def apply_config_dir(app: App, folder: Path, why: str) -> bool:
    """Apply every stack file of `folder` as one plan, with prune; False (logged) if refused.

    All files are read and checked before anything is applied, and the plan is
    one transaction: a bad file leaves every object as it was.
    """
    from hero_procd.stack import apply, describe_error, load_dir, log_plan
    from hero_procd.stackfile import StackFileError

    log.info("applying the config dir", extra={"config_dir": str(folder), "why": why})
    try:
        docs = await offload(lambda: load_dir(folder))
    except StackFileError as exc:
        log.error(f"config dir not applied, nothing changed: {exc}")
        return False
    except (OSError, UnicodeDecodeError) as exc:
        log.error(f"config dir not applied, nothing changed: {describe(exc)}")
        return False
    try:
        plan = await apply(app, docs, prune=True, dry_run=False)
    except HeroError as exc:
        log.error(f"config dir not applied, nothing changed: {describe_error(docs, exc)}")
        return False
    log_plan(plan, str(folder))
    return True


class Reloader:
    """SIGHUP: apply the config dir again, one reload at a time (signals meanwhile coalesce)."""

    def __init__(self) -> None:
        self.wanted = asyncio.Event()
        self.done = 0
        self._task: asyncio.Task[None] | None = None

    def request(self) -> None:
        """The signal handler: ask for a reload (or log that there is nothing to reload)."""
        self.wanted.set()

    def start(self, app: App) -> None:
        """Serve reload requests from now on."""
        self._task = asyncio.get_running_loop().create_task(self._serve(app), name="reload")

    async def _serve(self, app: App) -> None:
        while True:
            await self.wanted.wait()
            self.wanted.clear()
            folder = app.config.config_dir
            if folder is None:
                _on_sighup()
                continue
            try:
                await apply_config_dir(app, folder, "SIGHUP")
            except Exception:
                log.exception("reload failed")

    async def stop(self) -> None:
        """Stop serving reloads (a reload in progress is cancelled between its steps)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


async def _unlock_secrets(store: Store, db: Path, explicit: Path | None) -> None:
    """Load (or create, at first start) the secrets key and check it against the database.

    A database whose secrets were sealed with a key never gets a new one made
    for it: a missing key file then stops the start, as does another key.
    """
    path, may_create = key_file_path(db, explicit)
    had_key = await store.secrets.has_key()
    try:
        key, created = await asyncio.to_thread(
            load_key_file, path, create=may_create and not had_key
        )
    except KeyFileError as exc:
        if had_key and not path.exists():
            raise KeyFileError(
                f"{exc}; this database's secrets were sealed with a key kept there: "
                "restore that file (nothing was changed)"
            ) from exc
        raise
    if created:
        log.info("created the secrets key file", extra={"key_file": str(path)})
    unlocked = await store.secrets.unlock(SecretBox(key, path))
    if unlocked.sealed_rows:
        log.info(
            "sealed the secrets stored in clear by an older version",
            extra={"secrets": unlocked.sealed_rows, "key_file": str(path)},
        )


def _on_sighup() -> None:
    # A closed terminal or a dropped SSH session must not take every supervised
    # child down with the daemon; without --config-dir there is nothing to reload.
    log.warning("SIGHUP received and ignored (nothing to reload; the daemon keeps running)")


async def serve(config: Config) -> None:
    """Run the daemon until SIGTERM or SIGINT, then shut down cleanly."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    # Installed before anything starts: a SIGTERM during a long recovery stops
    # the daemon cleanly once it is up, instead of killing it mid-way.
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    reloader = Reloader()
    loop.add_signal_handler(signal.SIGHUP, reloader.request)
    ready = asyncio.Event()
    teardown = Teardown()
    try:
        config, app = await _start(config, teardown, ready)
    except BaseException:
        await teardown.run()
        raise
    # A SIGHUP that came during start-up is served now: the start-up apply may have read
    # the files before they changed (one more apply of unchanged files changes nothing).
    reloader.start(app)
    teardown.push("reloader", reloader.stop)
    # Everything built at start-up lives as long as the daemon: out of the collector's walks.
    gcpause.freeze_startup()
    ready.set()
    log.info(
        "hero-procd ready",
        extra={
            "version": __version__,
            "socket": str(config.socket_path),
            "db": config.db_shown,
            "node": config.node,
        },
    )
    notify("READY=1")
    asked = asyncio.ensure_future(app.stop_requested.wait())
    signalled = asyncio.ensure_future(stop.wait())
    await asyncio.wait((asked, signalled), return_when=asyncio.FIRST_COMPLETED)
    for waiter in (asked, signalled):
        waiter.cancel()
    log.info("shutting down")
    notify("STOPPING=1")
    # Pending job.wait calls and service waits (wait_s) are answered with the state as it
    # is now; then the server goes:
    # no new request may start work the engines are stopping.
    await teardown.run(first=("reloader", "waits", "service waits", "http", "server"))
    log.info("stopped")
    if app.exit_reason is not None:
        raise StartupError(app.exit_reason)  # main: one line, exit 1


def _exit_after_startup_failure(message: str) -> NoReturn:
    """Print the one line and exit 1, even if a library left a thread behind."""
    click.echo(f"hero-procd: {message}", err=True)
    lingering = [
        t for t in threading.enumerate() if t is not threading.main_thread() and not t.daemon
    ]
    if lingering:
        # A non-daemon thread (an aiosqlite connection a failed open did not close,
        # say) would keep the interpreter from exiting: a daemon that hangs instead
        # of failing is worse. Everything of ours has been stopped already.
        log.debug("exiting past lingering threads", extra={"threads": len(lingering)})
        for handler in logging.getLogger().handlers:
            handler.flush()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(1)
    sys.exit(1)


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--socket",
    "socket_path",
    type=click.Path(path_type=Path),
    help="Unix socket [$HERO_PROC_SOCKET]",
)
@click.option(
    "--db",
    "db_path",
    help="SQLite database file, or postgresql://… URL (?schema=… [hero_proc]) [$HERO_PROC_DB]",
)
@click.option("--node", help="This daemon's node name [$HERO_PROC_NODE, else the host name]")
@click.option(
    "--node-timeout",
    "node_timeout_s",
    type=click.FloatRange(1.0, 3600.0),
    help="Seconds without heartbeat before a node is dead [15, $HERO_PROC_NODE_TIMEOUT_S]",
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
    "--containment",
    type=click.Choice(["auto", "cgroup2", "process-group"]),
    help="Cells of jobs and services: cgroup v2 or process groups [auto, $HERO_PROC_CONTAINMENT]",
)
@click.option(
    "--cgroup",
    help="cgroup v2 subtree for the cells [<own cgroup>/hero-procd-<id>, $HERO_PROC_CGROUP]",
)
@click.option(
    "--secrets-key-file",
    type=click.Path(path_type=Path),
    help="Key that seals secrets at rest, created 0600 if missing "
    "[$HERO_PROC_SECRETS_KEY_FILE, else $CREDENTIALS_DIRECTORY/hero-proc-secrets-key, "
    "else <db>.secrets-key]",
)
@click.option(
    "--log-level",
    default=lambda: os.environ.get("HERO_PROC_LOG_LEVEL", "info"),
    type=click.Choice(["debug", "info", "warning", "error"], case_sensitive=False),
)
@click.option(
    "--http",
    "http",
    metavar="HOST:PORT",
    help="Serve the dashboard, /rpc, /metrics, /events on TCP (off by default) [$HERO_PROC_HTTP]",
)
@click.option(
    "--http-allow-remote",
    is_flag=True,
    default=None,
    help="Allow --http on a non-loopback address [$HERO_PROC_HTTP_ALLOW_REMOTE=1]",
)
@click.option(
    "--config-dir",
    type=click.Path(path_type=Path, file_okay=False, exists=True),
    envvar="HERO_PROC_CONFIG_DIR",
    help="Apply the stack files DIR/*.toml at start and on SIGHUP, with prune "
    "[$HERO_PROC_CONFIG_DIR]",
)
@click.version_option(__version__, prog_name="hero-procd")
def main(
    socket_path: Path | None,
    db_path: str | None,
    node: str | None,
    node_timeout_s: float | None,
    readers: int | None,
    max_parallel: int | None,
    socket_group: str | None,
    containment: str | None,
    cgroup: str | None,
    secrets_key_file: Path | None,
    log_level: str,
    http: str | None,
    http_allow_remote: bool | None,
    config_dir: Path | None,
) -> None:
    """hero-procd: the process supervisor and job queue daemon."""
    setup_logging(log_level)
    # Until the event loop takes SIGHUP over, a hang-up must not kill the daemon
    # either. A handler rather than SIG_IGN: an ignored signal stays ignored in
    # every child across exec, a handled one is reset to the default.
    signal.signal(signal.SIGHUP, lambda signum, frame: _on_sighup())
    try:
        config = Config.from_env(
            socket_path,
            db_path,
            readers=readers,
            socket_group=socket_group,
            max_parallel=max_parallel,
            containment=containment,
            cgroup=cgroup,
            http=http,
            http_allow_remote=http_allow_remote,
            node=node,
            node_timeout_s=node_timeout_s,
            secrets_key_file=secrets_key_file,
        )
    except ValueError as exc:
        click.echo(f"hero-procd: {exc}", err=True)
        sys.exit(2)
    if config_dir is not None:
        config = replace(config, config_dir=config_dir.resolve())
    import uvloop

    # The event loop shares the GIL with the threads that build big pages and batches
    # and run the database units: a shorter switch interval (5 ms by default) lets the
    # loop in sooner, so a ping is not held behind a 50,000-job batch.
    sys.setswitchinterval(float(os.environ.get("HERO_PROC_SWITCH_INTERVAL_S", "0.001")))
    try:
        uvloop.run(serve(config))
    except StartupError as exc:
        _exit_after_startup_failure(str(exc))


if __name__ == "__main__":
    main()
