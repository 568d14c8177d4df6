"""The daemon's files: resolved once, created private, locked on the real database.

Everything here runs before the store opens and before any child can be spawned,
so a mistake in a path ends the start-up with one line instead of half a daemon.
All functions block (stat, mkdir, bind): call them through `asyncio.to_thread`.

Rules, and why:

- A symlink that points nowhere is refused, wherever it sits on the database's or
  the socket's path. Following it would create the database (secrets included)
  wherever it points: an unmounted volume, a typo, another user's folder.
- The database is used by its real path (symlinks resolved), so its -wal, -shm
  and lock files sit beside the real file whatever name the daemon was given.
- The single-instance lock is an flock on the database file itself (its inode),
  so a second daemon reaching the same database through a symlink or a hard link
  is refused like one given the very same path. The `<db>.lock` file beside the
  real database is locked too and holds the pid, for operators to read.
- Folders the daemon creates are 0700; those on the socket's path are 0750 and
  given to the socket group when there is one, so its members can reach the socket.
- The socket's folder and its parents must not be writable by others unless
  sticky (like /tmp): otherwise another user could replace the socket and receive
  what clients send (`secret set`).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import grp
import logging
import os
import socket
import stat
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

# sun_path is 108 bytes on Linux, one of which is the terminating NUL.
SOCKET_PATH_MAX = 107


class StartupError(Exception):
    """The daemon cannot start; the message says why, in one line."""


@dataclass(frozen=True)
class DaemonPaths:
    """The daemon's paths, resolved once at start-up."""

    db: Path
    socket: Path
    socket_gid: int | None


def _check_no_dangling(path: Path, what: str) -> None:
    """Refuse `path` if it or one of its parents is a symlink that resolves to nothing."""
    for part in [*reversed(path.parents), path]:  # from the root down
        if not os.path.lexists(part):
            return  # this level and those below are missing: created later, not followed
        if os.path.islink(part) and not os.path.exists(part):
            where = f"{what} {path}" if part == path else f"{what} {path}: {part}"
            raise StartupError(
                f"{where} is a symlink to {os.readlink(part)}, which does not exist "
                "(or loops); create the target or give the real path"
            )


def resolve_db(path: Path) -> Path:
    """The real path of the database: symlinks resolved, dangling ones refused."""
    path = Path(os.path.abspath(path))
    _check_no_dangling(path, "database")
    real = Path(os.path.realpath(path))
    try:
        st = os.stat(real)
    except FileNotFoundError:
        return real
    except OSError as exc:
        raise StartupError(f"database {path}: {exc.strerror}") from None
    if not stat.S_ISREG(st.st_mode):
        raise StartupError(f"database {path} is not a regular file")
    return real


def resolve_socket(path: Path) -> Path:
    """The socket's path with its folder resolved; refused if it cannot be bound safely."""
    path = Path(os.path.abspath(path))
    _check_no_dangling(path.parent, "socket folder")
    if os.path.islink(path):
        # bind() never follows a symlink, and unlinking a stale socket through one
        # would delete whatever it points to: the socket path must be the real one.
        raise StartupError(f"socket {path} is a symlink; give the path of the socket itself")
    real = Path(os.path.realpath(path.parent)) / path.name
    size = len(os.fsencode(real))
    if size > SOCKET_PATH_MAX:
        raise StartupError(
            f"socket path {real} is {size} bytes; a Unix socket path holds at most "
            f"{SOCKET_PATH_MAX}"
        )
    try:
        st = os.lstat(real)
    except FileNotFoundError:
        return real
    if not stat.S_ISSOCK(st.st_mode):
        raise StartupError(f"socket {real} exists and is not a socket; not replacing it")
    return real


def socket_group_id(name: str | None) -> int | None:
    """The gid of `--socket-group`, refused if unknown or not ours to give."""
    if not name:
        return None
    try:
        gid = grp.getgrnam(name).gr_gid
    except KeyError:
        raise StartupError(f"unknown socket group {name!r}") from None
    # Without CAP_CHOWN a process may only give a file to a group it belongs to.
    if os.geteuid() != 0 and gid != os.getegid() and gid not in os.getgroups():
        raise StartupError(
            f"cannot give the socket to group {name!r}: this user is not a member of it"
        )
    return gid


def make_folders(folder: Path, gid: int | None = None) -> list[Path]:
    """Create `folder` and missing parents: 0700, or 0750 and chgrp'd when `gid` is given.

    Existing folders are left as they are. The mode is set with chmod after
    mkdir so the umask cannot widen or narrow it; mkdir's own mode is never
    wider than the target, so there is no moment where a folder is too open.
    """
    missing: list[Path] = []
    for part in [folder, *folder.parents]:
        if os.path.lexists(part):
            break
        missing.append(part)
    created: list[Path] = []
    for part in reversed(missing):
        try:
            os.mkdir(part, 0o700)
        except FileExistsError:
            continue  # made by someone else meanwhile: not ours to chmod
        if gid is not None:
            os.chown(part, -1, gid)
        os.chmod(part, 0o750 if gid is not None else 0o700)
        created.append(part)
    if not os.path.isdir(folder):
        raise StartupError(f"{folder} is not a folder")
    return created


def check_socket_folder(folder: Path) -> None:
    """Refuse a socket folder that another user could rename or fill (o+w without sticky)."""
    for part in [folder, *folder.parents]:
        st = os.stat(part)
        if st.st_mode & stat.S_IWOTH and not st.st_mode & stat.S_ISVTX:
            raise StartupError(
                f"socket folder {part} is writable by others without the sticky bit "
                "(another user could replace the socket); chmod o-w or +t it"
            )


def warn_if_group_cannot_reach(folder: Path, gid: int) -> None:
    """Log when members of the socket group cannot traverse an existing folder to the socket."""
    for part in [folder, *folder.parents]:
        st = os.stat(part)
        mode = st.st_mode
        reachable = bool(mode & stat.S_IXOTH) or (st.st_gid == gid and bool(mode & stat.S_IXGRP))
        if not reachable:
            log.warning(
                "members of the socket group cannot reach the socket: a folder on its path "
                "lets them not through",
                extra={"folder": str(part), "mode": oct(stat.S_IMODE(mode))},
            )
            return


def resolve(db: Path, sock: Path, socket_group: str | None) -> DaemonPaths:
    """Resolve and check both paths and the group, creating the folders they need."""
    gid = socket_group_id(socket_group)
    db_real = resolve_db(db)
    sock_real = resolve_socket(sock)
    # The socket's folders first: when it shares parents with the database's,
    # they must let the socket group through.
    created = make_folders(sock_real.parent, gid)
    check_socket_folder(sock_real.parent)
    if gid is not None and not created:
        warn_if_group_cannot_reach(sock_real.parent, gid)
    make_folders(db_real.parent)
    return DaemonPaths(db=db_real, socket=sock_real, socket_gid=gid)


def resolve_socket_only(db: Path, sock: Path, socket_group: str | None) -> DaemonPaths:
    """`resolve` for a daemon whose database is not a file (PostgreSQL): the socket only."""
    gid = socket_group_id(socket_group)
    sock_real = resolve_socket(sock)
    created = make_folders(sock_real.parent, gid)
    check_socket_folder(sock_real.parent)
    if gid is not None and not created:
        warn_if_group_cannot_reach(sock_real.parent, gid)
    return DaemonPaths(db=db, socket=sock_real, socket_gid=gid)


class DatabaseLock:
    """The single-instance lock: flocks on the database file and on `<db>.lock` beside it."""

    def __init__(self, db: Path, db_fd: int, lock_fd: int) -> None:
        self.db = db
        self._db_fd = db_fd
        self._lock_fd = lock_fd

    @property
    def lock_path(self) -> Path:
        """The lock file beside the database (it holds the owner's pid)."""
        return lock_path(self.db)

    @classmethod
    def acquire(cls, db: Path) -> DatabaseLock:
        """Create the database file if missing (0600) and lock it, or refuse to start."""
        _create_private(db)
        lock_fd = _open_private(lock_path(db))
        try:
            _flock(lock_fd, db)
            db_fd = os.open(db, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
        except BaseException:
            os.close(lock_fd)
            raise
        try:
            if not stat.S_ISREG(os.fstat(db_fd).st_mode):
                raise StartupError(f"database {db} is not a regular file")
            # The inode's lock is what catches a hard link under another name.
            # SQLite locks with fcntl(), which flock() does not touch on Linux; the
            # fd stays open until the store is closed, so closing it cannot drop
            # SQLite's own locks while they matter.
            _flock(db_fd, db)
        except BaseException:
            os.close(db_fd)
            os.close(lock_fd)
            raise
        os.ftruncate(lock_fd, 0)
        os.write(lock_fd, f"{os.getpid()}\n".encode())
        return cls(db, db_fd, lock_fd)

    def release(self) -> None:
        """Drop both locks (the lock file stays: removing it would race a starting daemon)."""
        os.close(self._db_fd)
        os.close(self._lock_fd)


def lock_path(db: Path) -> Path:
    """`<db>.lock`, beside the database."""
    return db.with_name(db.name + ".lock")


def _flock(fd: int, db: Path) -> None:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise StartupError(
            f"another hero-procd holds the database {db} (lock {lock_path(db)})"
        ) from None


def _create_private(path: Path) -> None:
    """Create `path` as an empty 0600 file unless it exists (never through a symlink)."""
    try:
        fd = os.open(
            path, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600
        )
    except FileExistsError:
        return
    try:
        os.fchmod(fd, 0o600)  # whatever the umask took away (0600 & ~0277 = 0400)
    finally:
        os.close(fd)


def _open_private(path: Path) -> int:
    """Open (creating 0600 if missing) a file for read/write, never through a symlink."""
    flags = os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(path, flags | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        try:
            return os.open(path, flags)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise StartupError(f"lock file {path} is a symlink; remove it") from None
            raise
    os.fchmod(fd, 0o600)
    return fd


def probe_socket(path: Path, timeout_s: float = 2.0) -> str:
    """'absent', 'stale' (a socket file nobody listens on) or 'live' (something answers)."""
    if not os.path.lexists(path):
        return "absent"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout_s)
    try:
        sock.connect(str(path))
    except OSError as exc:
        if exc.errno in (errno.ECONNREFUSED, errno.ENOENT):
            return "stale"
        return "live"  # refused for another reason (permission, say): do not remove it
    finally:
        sock.close()
    return "live"


def claim_socket(path: Path, gid: int | None) -> None:
    """Make sure the daemon can bind its socket at `path`, before anything else starts.

    A live socket means another daemon: refused. A stale one (a crashed daemon's)
    is removed. Then the socket is bound once, given its mode and group, and
    removed again: whatever would make the real bind fail (permissions, a group
    we may not use, a full disk) fails here, while nothing has been started.
    """
    state = probe_socket(path)
    if state == "live":
        raise StartupError(f"a daemon already answers on {path}; not starting a second one")
    if state == "stale":
        log.info("removing stale socket", extra={"socket": str(path)})
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)
    try:
        probe.bind(str(path))
    except OSError as exc:
        raise StartupError(f"cannot bind the socket {path}: {exc.strerror}") from None
    finally:
        os.umask(old)
        probe.close()
    try:
        if gid is not None:
            os.chown(path, -1, gid)
            os.chmod(path, 0o660)
    except OSError as exc:
        raise StartupError(f"cannot give the socket {path} to its group: {exc.strerror}") from None
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
