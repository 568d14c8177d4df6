"""Child processes: spawn in a new session, signal a whole process group, identify by start time.

One spawner and one way to signal, shared by the job executor and the
service supervisor. Spawning calls the `_spawn` extension (clone3 straight
into the child's cgroup, see _spawn.c) where it was built, else glibc's
posix_spawn through ctypes (the GIL is released during either call, so
spawns on the pool overlap each other and the event loop), with
subprocess.Popen as the last fallback. os.posix_spawn was measured and
rejected: it holds the GIL for the whole call (612-802 jobs/s against
807-869 with Popen) and cannot set a cwd. A missing binary or a bad cwd
is an OSError naming it. The exit is watched with a pidfd on the loop,
never with a blocking wait.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno
import fcntl
import os
import shutil
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Every child carries this variable; recovery finds orphans of a crashed daemon by it.
INSTANCE_ENV = "HERO_PROC_INSTANCE"
# Variables of the daemon's own environment that no child gets: systemd's hand-over
# (notify socket, watchdog, sockets) and where the secrets key is (the key file's
# path, the daemon's credentials): a child is given secrets by `env_from_secrets`.
PRIVATE_ENV = frozenset(
    {
        "NOTIFY_SOCKET",
        "WATCHDOG_PID",
        "WATCHDOG_USEC",
        "LISTEN_FDS",
        "LISTEN_PID",
        "LISTEN_FDNAMES",
        "HERO_PROC_SECRETS_KEY_FILE",
        "CREDENTIALS_DIRECTORY",
    }
)


def child_base_env() -> dict[str, str]:
    """The daemon's environment without its private variables: what every child starts
    from (each of its variables encoded once from now on: see `_encode_env`)."""
    base = {k: v for k, v in os.environ.items() if k not in PRIVATE_ENV}
    for item in base.items():
        key, value = item
        if key and "=" not in key and "\0" not in key and "\0" not in value:
            _ENCODED_ENV[item] = os.fsencode(f"{key}={value}")
    return base


_CLK_TCK = os.sysconf("SC_CLK_TCK")


@dataclass
class Child:
    """A spawned process: its pid (= its process group id), a pidfd, and its output pipes."""

    pid: int
    start_time: float | None
    pidfd: int
    stdout_fd: int
    stderr_fd: int


def _nonblocking(fd: int) -> None:
    """O_NONBLOCK on a pipe's read end (ours alone: the child's write end stays blocking).
    One F_SETFL: a read end made by pipe2(O_CLOEXEC) has no other status flag to keep."""
    fcntl.fcntl(fd, fcntl.F_SETFL, os.O_RDONLY | os.O_NONBLOCK)


def spawn(
    argv: list[str],
    env: dict[str, str],
    cwd: str | None,
    cgroup: str | None = None,
    *,
    capture: bool = True,
    read_start: bool = True,
) -> Child:
    """Start argv as the leader of a new session with stdin from /dev/null and piped output
    (the Child's read ends are non-blocking).

    With `cgroup` (a cgroup v2 directory), the child is in that cgroup before it
    execs: born there by clone3 (the `_spawn` extension), or, without the
    extension, moved there right after posix_spawn returns (a program that forks
    at once could leave a child behind in the daemon's cgroup in that instant).
    Raises OSError (FileNotFoundError, PermissionError, NotADirectoryError, …)
    when the program, the cwd or the cgroup cannot be used; nothing is left
    running then. Without `capture`, output goes to /dev/null (the Child's fds are -1).
    Without `read_start`, the Child's start_time is None: the caller reads it
    (`process_start_time`) before it reaps the child — later is cheaper: read while
    the child is still exec'ing, /proc/PID/stat spins (~50-150 us of CPU here).
    """
    _no_nul(argv, cwd)
    c_env = _encode_env(env)
    if _EXT is not None:
        pid, out_fd, err_fd = _ext_spawn(argv, env, cwd, cgroup, capture, c_env)
    else:
        if _POSIX_SPAWN is not None:
            pid, out_fd, err_fd = _POSIX_SPAWN.spawn(argv, env, cwd, capture, c_env)
        else:
            pid, out_fd, err_fd = _popen(argv, env, cwd, capture)
        if cgroup is not None:
            try:
                with open(os.path.join(cgroup, "cgroup.procs"), "w") as fh:
                    fh.write(str(pid))
            except OSError:
                with contextlib.suppress(OSError):
                    os.killpg(pid, signal.SIGKILL)
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(pid, 0)
                for fd in (out_fd, err_fd):
                    if fd >= 0:
                        os.close(fd)
                raise
    for fd in (out_fd, err_fd):
        if fd >= 0:
            _nonblocking(fd)
    pidfd = os.pidfd_open(pid)
    return Child(pid, process_start_time(pid) if read_start else None, pidfd, out_fd, err_fd)


_BAD_TEXT = "a NUL in argv, env or cwd, or a bad env name"


def _no_nul(argv: list[str], cwd: str | None) -> None:
    """execve, chdir and environ take C strings: "a\\0b" would run as "a" (the extension and
    posix_spawn would cut it silently; Popen refuses). Refused whichever spawns, as an
    OSError (EINVAL) like any other spawn failure (the env: `_encode_env`). The API
    checks these first."""
    texts = [*argv, *([] if cwd is None else [cwd])]
    bad = next((t for t in texts if "\0" in t), None)
    if bad is not None or not argv:
        raise OSError(errno.EINVAL, _BAD_TEXT, bad)


# `KEY=value` as bytes, by (key, value), of the daemon's own variables only (filled by
# `child_base_env`): a child's environment is mostly those, the same for every child, so
# each is checked and encoded once. Nothing of a job's own is kept: its values (up to
# 128 KiB each, per-job ids, resolved secrets) filled a cache by whatever came, up to
# gigabytes held until the daemon's end, and kept secrets' plain text in memory.
_ENCODED_ENV: dict[tuple[str, str], bytes] = {}


def _encode_env(env: dict[str, str]) -> list[bytes]:
    """The environment as execve takes it; OSError (EINVAL) for a NUL or a bad name."""
    cache = _ENCODED_ENV
    out: list[bytes] = []
    for item in env.items():
        encoded = cache.get(item)
        if encoded is None:
            key, value = item
            if not key or "=" in key or "\0" in key or "\0" in value:
                raise OSError(errno.EINVAL, _BAD_TEXT, key if "\0" not in value else value)
            encoded = os.fsencode(f"{key}={value}")
        out.append(encoded)
    return out


def _resolve(program: str, env: dict[str, str]) -> str:
    path = program if "/" in program else shutil.which(program, path=env.get("PATH", os.defpath))
    if path is None:
        raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), program)
    return path


# What the extension's child was doing when it failed (see _spawn.c).
_STAGE_CGROUP, _STAGE_CHDIR, _STAGE_EXEC, _STAGE_SETUP, _STAGE_CLONE = 1, 2, 3, 4, 5
# clone3 without CLONE_INTO_CGROUP (a kernel before 5.7): join by cgroup.procs instead.
_NO_CLONE3 = (errno.ENOSYS, errno.EINVAL, errno.E2BIG)
_clone3_works = True


def _output_pipes(capture: bool) -> tuple[int, int, int, int]:
    """(stdout read, stdout write, stderr read, stderr write); /dev/null twice, no reads, if not
    `capture` (the two write ends are then one descriptor: close it once)."""
    if not capture:
        null = os.open(os.devnull, os.O_WRONLY | os.O_CLOEXEC)
        return -1, null, -1, null
    out_r, out_w = os.pipe2(os.O_CLOEXEC)
    err_r, err_w = os.pipe2(os.O_CLOEXEC)
    return out_r, out_w, err_r, err_w


def _close_writes(out_w: int, err_w: int) -> None:
    os.close(out_w)
    if err_w != out_w:
        os.close(err_w)


def _close_reads(out_r: int, err_r: int) -> None:
    for fd in (out_r, err_r):
        if fd >= 0:
            os.close(fd)


def _ext_spawn(
    argv: list[str],
    env: dict[str, str],
    cwd: str | None,
    cgroup: str | None,
    capture: bool,
    c_env: list[bytes] | None = None,
) -> tuple[int, int, int]:
    assert _EXT is not None
    path = _resolve(argv[0], env)
    c_argv = [os.fsencode(a) for a in argv]
    if c_env is None:
        c_env = _encode_env(env)
    global _clone3_works
    cg_fd = procs_fd = -1
    if cgroup is not None:
        if _EXT.HAVE_CLONE3 and _clone3_works:
            cg_fd = os.open(cgroup, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        else:
            procs_fd = os.open(os.path.join(cgroup, "cgroup.procs"), os.O_WRONLY | os.O_CLOEXEC)
    out_r, out_w, err_r, err_w = _output_pipes(capture)
    try:
        pid, err, stage = _EXT.spawn(
            os.fsencode(path),
            c_argv,
            c_env,
            None if cwd is None else os.fsencode(cwd),
            out_w,
            err_w,
            cg_fd,
            procs_fd,
        )
    finally:
        _close_writes(out_w, err_w)
        for fd in (cg_fd, procs_fd):
            if fd >= 0:
                os.close(fd)
    if pid < 0:
        _close_reads(out_r, err_r)
        if stage == _STAGE_CLONE and cg_fd >= 0 and err in _NO_CLONE3:
            _clone3_works = False
            return _ext_spawn(argv, env, cwd, cgroup, capture, c_env)
        culprit: str | None = None
        if stage == _STAGE_CHDIR:
            culprit = cwd
        elif stage == _STAGE_EXEC:
            culprit = argv[0]
        elif stage in (_STAGE_CGROUP, _STAGE_CLONE):
            culprit = cgroup
        raise OSError(err, os.strerror(err), culprit)
    return pid, out_r, err_r


class _LibcPosixSpawn:
    """glibc's posix_spawn called through ctypes, which releases the GIL during the call.

    Measured on 4 threads here: ~2,000 spawns/s at ~330 us of CPU each, against
    ~1,300-1,600/s at ~500-600 us for subprocess.Popen; os.posix_spawn holds the
    GIL throughout and cannot set a cwd. The attributes (new session, SIGPIPE and
    SIGXFSZ back to default, nothing blocked) are built once and only read after.
    """

    _SETSIGDEF, _SETSIGMASK, _SETSID = 0x04, 0x08, 0x80

    def __init__(self) -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        self._init_fa = libc.posix_spawn_file_actions_init
        self._destroy_fa = libc.posix_spawn_file_actions_destroy
        self._dup2 = libc.posix_spawn_file_actions_adddup2
        self._dup2.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_int]
        self._open = libc.posix_spawn_file_actions_addopen
        self._open.argtypes = [
            ctypes.c_void_p,
            ctypes.c_int,
            ctypes.c_char_p,
            ctypes.c_int,
            ctypes.c_uint,
        ]
        self._chdir = libc.posix_spawn_file_actions_addchdir_np  # glibc >= 2.29
        self._chdir.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
        self._spawn = libc.posix_spawn
        self._spawn.argtypes = [
            ctypes.POINTER(ctypes.c_int),
            ctypes.c_char_p,
            ctypes.c_void_p,
            ctypes.c_void_p,
            ctypes.POINTER(ctypes.c_char_p),
            ctypes.POINTER(ctypes.c_char_p),
        ]
        # Opaque glibc types, given more room than they need (80, 336 and 128 bytes).
        self._attr = ctypes.create_string_buffer(1024)
        default = ctypes.create_string_buffer(256)
        nothing = ctypes.create_string_buffer(256)
        libc.sigemptyset(default)
        libc.sigemptyset(nothing)
        for sig in (signal.SIGPIPE, signal.SIGXFSZ):  # ignored by Python, not by children
            libc.sigaddset(default, int(sig))
        if libc.posix_spawnattr_init(self._attr) != 0:
            raise OSError("posix_spawnattr_init failed")
        libc.posix_spawnattr_setsigdefault(self._attr, default)
        libc.posix_spawnattr_setsigmask(self._attr, nothing)
        flags = ctypes.c_short(self._SETSIGDEF | self._SETSIGMASK | self._SETSID)
        if libc.posix_spawnattr_setflags(self._attr, flags) != 0:
            raise OSError("posix_spawnattr_setflags failed")

    def spawn(
        self,
        argv: list[str],
        env: dict[str, str],
        cwd: str | None,
        capture: bool = True,
        encoded_env: list[bytes] | None = None,
    ) -> tuple[int, int, int]:
        """(pid, stdout read end, stderr read end) of a new child, or OSError naming the culprit."""
        program = argv[0]
        path = _resolve(program, env)
        c_argv = (ctypes.c_char_p * (len(argv) + 1))(*[os.fsencode(a) for a in argv], None)
        if encoded_env is None:
            encoded_env = _encode_env(env)
        c_env = (ctypes.c_char_p * (len(encoded_env) + 1))(*encoded_env, None)
        out_r, out_w, err_r, err_w = _output_pipes(capture)
        actions = ctypes.create_string_buffer(512)
        self._init_fa(actions)
        pid = ctypes.c_int()
        try:
            self._open(actions, 0, os.fsencode(os.devnull), os.O_RDONLY, 0)
            self._dup2(actions, out_w, 1)
            self._dup2(actions, err_w, 2)
            if cwd is not None:
                self._chdir(actions, os.fsencode(cwd))
            err = self._spawn(
                ctypes.byref(pid), os.fsencode(path), actions, self._attr, c_argv, c_env
            )
        finally:
            self._destroy_fa(actions)
            _close_writes(out_w, err_w)
        if err != 0:
            _close_reads(out_r, err_r)
            culprit = cwd if cwd is not None and not os.path.isdir(cwd) else program
            raise OSError(err, os.strerror(err), culprit)
        return pid.value, out_r, err_r


async def wait_child(child: Child) -> tuple[int | None, int | None]:
    """Wait on the event loop for a child to end (its pidfd), reap it: (exit code, signal)."""
    loop = asyncio.get_running_loop()
    ended: asyncio.Future[None] = loop.create_future()

    def readable() -> None:
        if not ended.done():
            ended.set_result(None)

    loop.add_reader(child.pidfd, readable)
    try:
        await ended
    finally:
        loop.remove_reader(child.pidfd)
    result = reap(child.pid)
    os.close(child.pidfd)
    return result


def _libc_posix_spawn() -> _LibcPosixSpawn | None:
    try:
        return _LibcPosixSpawn()
    except (OSError, AttributeError):  # not glibc, or too old for addchdir_np
        return None


_POSIX_SPAWN = _libc_posix_spawn()


def _load_extension() -> Any:
    if os.environ.get("HERO_PROC_NO_SPAWN_EXT"):  # measure or test the fallback
        return None
    try:
        from hero_procd.engine import _spawn
    except ImportError:  # not built (no compiler at install): posix_spawn does
        return None
    return _spawn


_EXT = _load_extension()


def spawner_name() -> str:
    """Which spawner this daemon uses (shown by system.info)."""
    if _EXT is not None:
        return "clone3" if _EXT.HAVE_CLONE3 and _clone3_works else "clone"
    return "posix_spawn" if _POSIX_SPAWN is not None else "popen"


def _popen(
    argv: list[str], env: dict[str, str], cwd: str | None, capture: bool = True
) -> tuple[int, int, int]:
    out = subprocess.PIPE if capture else subprocess.DEVNULL
    proc = subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=out,
        stderr=out,
        env=env,
        cwd=cwd,
        start_new_session=True,
        close_fds=True,
    )
    # The Popen object is dropped: the pidfd does the waiting, and marking it
    # reaped keeps its finaliser from warning or waiting.
    proc.returncode = 0
    if not capture:
        return proc.pid, -1, -1
    assert proc.stdout is not None and proc.stderr is not None
    out_fd, err_fd = os.dup(proc.stdout.fileno()), os.dup(proc.stderr.fileno())
    proc.stdout.close()
    proc.stderr.close()
    return proc.pid, out_fd, err_fd


def reap(pid: int) -> tuple[int | None, int | None]:
    """Collect an exited child: (exit_code, None) or (None, signal number)."""
    try:
        _, status = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return None, None
    code = os.waitstatus_to_exitcode(status)
    return (code, None) if code >= 0 else (None, -code)


def peek_exit(pid: int) -> int | None:
    """An ended child's exit code (None if killed by a signal), leaving it unreaped.

    While unreaped, a process-group leader's id stays its group's: signal the group
    first, then `reap`.
    """
    try:
        info = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:
        return None
    if info is None or info.si_code != os.CLD_EXITED:
        return None
    return info.si_status


def reap_blocking(pid: int) -> int:
    """Wait for a child (blocking: for tests and threads, never the loop); its exit code."""
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def signal_group(pgid: int, sig: int) -> bool:
    """Send `sig` to the process group `pgid`; False if no process of it is left."""
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        return False
    except PermissionError:
        return False
    return True


def process_start_time(pid: int) -> float | None:
    """The process's start time in clock ticks since boot (/proc/PID/stat field 22), or None."""
    try:
        fd = os.open(f"/proc/{pid}/stat", os.O_RDONLY)
    except OSError:
        return None
    try:
        raw = os.read(fd, 4096)
    except OSError:
        return None
    finally:
        os.close(fd)
    # The command name (field 2) may hold spaces and parentheses: split after its last ')'.
    fields = raw[raw.rfind(b")") + 2 :].split()
    try:
        return int(fields[19]) / _CLK_TCK
    except (IndexError, ValueError):
        return None


def is_same_process(pid: int, start_time: float | None) -> bool:
    """True if `pid` is alive and is the process that started at `start_time` (not a reused pid)."""
    if start_time is None:
        return False
    current = process_start_time(pid)
    return current is not None and abs(current - start_time) < 0.02


def find_marked(instance: str) -> list[int]:
    """Pids of live processes whose environment carries `HERO_PROC_INSTANCE=instance`."""
    needle = f"{INSTANCE_ENV}={instance}".encode()
    me = os.getpid()
    found: list[int] = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        with contextlib.suppress(OSError):
            environ = Path(entry.path, "environ").read_bytes()
            if needle in environ.split(b"\0"):
                found.append(int(entry.name))
    return found


def group_alive(pgid: int) -> bool:
    """True if a process of group `pgid` is alive (zombies waiting to be reaped do not count)."""
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            fd = os.open(f"/proc/{entry.name}/stat", os.O_RDONLY)
            try:
                raw = os.read(fd, 4096)
            finally:
                os.close(fd)
        except OSError:
            continue
        fields = raw[raw.rfind(b")") + 2 :].split()
        if len(fields) > 2 and int(fields[2]) == pgid and fields[0] != b"Z":
            return True
    return False


def process_group(pid: int) -> int | None:
    """The process group of `pid`, or None if it is gone."""
    try:
        return os.getpgid(pid)
    except ProcessLookupError:
        return None


SIGNALS = {
    name: getattr(signal, f"SIG{name}")
    for name in ("TERM", "INT", "QUIT", "HUP", "KILL", "USR1", "USR2")
}
