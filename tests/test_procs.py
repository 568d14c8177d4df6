"""The spawner: every implementation (the _spawn extension, glibc posix_spawn by ctypes, and
the Popen fallback), and spawning straight into a cgroup."""

from __future__ import annotations

import errno
import os
import select
import shutil
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from hero_procd.engine import procs
from hero_procd.engine.contain import cgroup2_mount, own_cgroup

Spawner = Callable[[list[str], dict[str, str], str | None], tuple[int, int, int]]


def _spawners() -> list[tuple[str, Spawner]]:
    out: list[tuple[str, Spawner]] = [("popen", procs._popen)]
    if procs._POSIX_SPAWN is not None:
        out.append(("posix_spawn", procs._POSIX_SPAWN.spawn))
    if procs._EXT is not None:

        def ext(argv: list[str], env: dict[str, str], cwd: str | None) -> tuple[int, int, int]:
            return procs._ext_spawn(argv, env, cwd, None, True)

        out.append(("extension", ext))
    return out


SPAWNERS = _spawners()


def _read_all(fd: int) -> bytes:
    chunks: list[bytes] = []
    while True:
        ready, _, _ = select.select([fd], [], [], 10.0)
        assert ready, "no output within 10 s"
        data = os.read(fd, 65536)
        if not data:
            os.close(fd)
            return b"".join(chunks)
        chunks.append(data)


def test_glibc_spawner_is_in_use_here() -> None:
    """This machine is glibc: the ctypes posix_spawn path is the one the daemon uses."""
    assert procs._POSIX_SPAWN is not None


@pytest.mark.parametrize(("name", "spawn"), SPAWNERS)
def test_spawn_runs_argv_with_env_cwd_and_pipes(name: str, spawn: Spawner, tmp_path: Path) -> None:
    """argv arrives intact, env and cwd apply, stdout/stderr are separate pipes, stdin is empty."""
    script = 'printf "%s|" "$1"; printf "$GREETING"; pwd; cat; echo oops >&2; exit 3'
    argv = ["sh", "-c", script, "sh", "a b 'c' $d"]
    env = {"PATH": os.environ["PATH"], "GREETING": "hi "}
    pid, out_fd, err_fd = spawn(argv, env, str(tmp_path))
    out, err = _read_all(out_fd), _read_all(err_fd)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 3
    assert out.decode() == f"a b 'c' $d|hi {tmp_path}\n"
    assert err == b"oops\n"


@pytest.mark.parametrize(("name", "spawn"), SPAWNERS)
def test_child_leads_a_new_session_with_default_sigpipe(name: str, spawn: Spawner) -> None:
    """The child is its own process group and session leader; SIGPIPE is not ignored in it."""
    script = "cat /proc/$$/stat; grep SigIgn /proc/self/status"
    pid, out_fd, err_fd = spawn(["sh", "-c", script], dict(os.environ), None)
    out = _read_all(out_fd).decode()
    _read_all(err_fd)
    os.waitpid(pid, 0)
    stat, sigign = out.split("SigIgn:")
    fields = stat[stat.rfind(")") + 2 :].split()
    assert (int(fields[2]), int(fields[3])) == (pid, pid)  # pgrp and session
    assert not int(sigign.split()[0], 16) & (1 << (signal.SIGPIPE - 1)), out


@pytest.mark.parametrize(("name", "spawn"), SPAWNERS)
def test_missing_program_and_bad_cwd_name_the_culprit(
    name: str, spawn: Spawner, tmp_path: Path
) -> None:
    """A missing binary, a non-executable file and a missing cwd raise OSError naming them."""
    env = dict(os.environ)
    with pytest.raises(FileNotFoundError) as missing:
        spawn(["no-such-program-hp"], env, None)
    assert missing.value.filename == "no-such-program-hp"
    plain = tmp_path / "plain.txt"
    plain.write_text("not a program")
    with pytest.raises(PermissionError) as denied:
        spawn([str(plain)], env, None)
    assert denied.value.filename == str(plain)
    gone = str(tmp_path / "gone")
    with pytest.raises(OSError) as bad_cwd:
        spawn(["true"], env, gone)
    assert bad_cwd.value.filename == gone


def test_extension_is_built_where_a_compiler_is() -> None:
    """`make install` builds the _spawn extension wherever a C compiler is installed."""
    if shutil.which("cc") is None and shutil.which("gcc") is None:
        pytest.skip("no C compiler here: the daemon spawns with posix_spawn")
    assert procs._EXT is not None
    assert procs.spawner_name() in ("clone3", "clone")


@pytest.fixture
def cgroup_dir() -> Iterator[str]:
    """A fresh cgroup v2 directory under this process's own cgroup (skip where none)."""
    mount, own = cgroup2_mount(), own_cgroup()
    if mount is None or own is None:
        pytest.skip("no cgroup v2 hierarchy here")
    path = os.path.join(mount, own.lstrip("/"), f"hp-test-{os.getpid()}")
    try:
        os.mkdir(path)
    except OSError as exc:
        pytest.skip(f"cannot create a cgroup here: {exc}")
    try:
        yield path
    finally:
        with open(os.path.join(path, "cgroup.kill"), "w") as fh:
            fh.write("1")
        for _ in range(200):
            try:
                os.rmdir(path)
                break
            except OSError:
                time.sleep(0.01)


def _cgroup_lines(out: bytes) -> list[str]:
    return [ln for ln in out.decode().splitlines() if ln.startswith("0::")]


@pytest.mark.parametrize("how", ["clone3", "clone+write"])
def test_child_is_in_its_cgroup_from_its_first_instruction(
    how: str, cgroup_dir: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The program's first read of /proc/self/cgroup, and its child's, show the cell."""
    if how == "clone+write":
        monkeypatch.setattr(procs, "_clone3_works", False)
    script = "cat /proc/self/cgroup; sh -c 'cat /proc/self/cgroup'"
    child = procs.spawn(["sh", "-c", script], dict(os.environ), None, cgroup=cgroup_dir)
    out = _read_all(child.stdout_fd)
    _read_all(child.stderr_fd)
    assert procs.reap_blocking(child.pid) == 0
    os.close(child.pidfd)
    want = "0::/" + os.path.relpath(cgroup_dir, cgroup2_mount() or "/")
    assert _cgroup_lines(out) == [want, want], out


def test_a_cgroup_that_is_gone_fails_the_spawn_naming_it(cgroup_dir: str) -> None:
    """Nothing runs when the cell cannot be joined; the error names the cgroup."""
    gone = os.path.join(cgroup_dir, "gone")
    with pytest.raises(OSError) as info:
        procs.spawn(["true"], dict(os.environ), None, cgroup=gone)
    assert info.value.filename == gone


def test_without_the_extension_the_leader_is_moved_right_after_spawn(
    cgroup_dir: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The posix_spawn fallback writes the pid to cgroup.procs once spawned. (A child the
    program forks at once can be born before that: with `sh -c 'cat …; sh -c …'` here
    both read the daemon's cgroup, which is why the extension clones into the cell.)"""
    monkeypatch.setattr(procs, "_EXT", None)
    child = procs.spawn(["sleep", "30"], dict(os.environ), None, cgroup=cgroup_dir)
    try:
        text = Path(f"/proc/{child.pid}/cgroup").read_text()
        want = "0::/" + os.path.relpath(cgroup_dir, cgroup2_mount() or "/")
        assert want in text.splitlines(), text
    finally:
        os.kill(child.pid, signal.SIGKILL)
        procs.reap_blocking(child.pid)
        os.close(child.pidfd)
        os.close(child.stdout_fd)
        os.close(child.stderr_fd)


_CLOSED_STDIO_SCRIPT = r"""
import os, sys
from hero_procd.engine import procs
report = int(sys.argv[1])
for fd in map(int, sys.argv[2].split(",")):
    os.close(fd)
for capture in (True, False):
    child = procs.spawn(
        ["sh", "-c", "echo out && echo err >&2"], {"PATH": os.defpath}, None, capture=capture
    )
    got = []
    for fd in (child.stdout_fd, child.stderr_fd):
        if fd >= 0:
            os.set_blocking(fd, True)
            got.append(os.read(fd, 100).decode())
    code = procs.reap_blocking(child.pid)
    os.write(report, f"{capture} {procs.spawner_name()} {code} {got!r}\n".encode())
"""


@pytest.mark.parametrize("closed", ["0,1,2", "0,1", "0"])
@pytest.mark.parametrize("ext", [True, False])
def test_a_daemon_with_closed_stdio_still_gives_children_their_pipes(
    closed: str, ext: bool
) -> None:
    """Started with 0, 1 or 2 closed, the daemon's pipes land there: the child still gets
    stdin from /dev/null and its stdout/stderr on the pipes (the extension used to leave
    a pipe on fd 1 close-on-exec, or put /dev/null on top of it)."""
    import subprocess
    import sys

    r, w = os.pipe()
    env = dict(os.environ)
    env.pop("HERO_PROC_NO_SPAWN_EXT", None)
    if not ext:
        env["HERO_PROC_NO_SPAWN_EXT"] = "1"
    proc = subprocess.run(
        [sys.executable, "-c", _CLOSED_STDIO_SCRIPT, str(w), closed],
        pass_fds=(w,),
        env=env,
        timeout=60,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    os.close(w)
    lines = _read_all(r).decode().splitlines()
    assert proc.returncode == 0, lines
    assert len(lines) == 2, lines
    assert lines[0].startswith("True ") and lines[0].endswith(" 0 ['out\\n', 'err\\n']"), lines
    assert lines[1].startswith("False ") and lines[1].endswith(" 0 []"), lines
    if ext and procs._EXT is not None:
        assert lines[0].split()[1] in ("clone3", "clone")


@pytest.mark.parametrize(
    "argv, env, cwd",
    [
        (["echo", "a\0b"], {}, None),
        (["echo\0x"], {}, None),
        (["echo"], {"A": "x\0y"}, None),
        (["echo"], {"A\0B": "x"}, None),
        (["echo"], {"A=B": "x"}, None),
        (["echo"], {"": "x"}, None),
        (["echo"], {}, "/tmp\0/nope"),
        ([], {}, None),
    ],
)
@pytest.mark.parametrize("ext", [True, False])
def test_a_nul_or_a_bad_env_name_is_refused_by_every_spawner(
    argv: list[str],
    env: dict[str, str],
    cwd: str | None,
    ext: bool,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The extension and posix_spawn take C strings and would cut "a\\0b" to "a": the
    spawn is refused (EINVAL) whichever spawner runs, and nothing is started."""
    if not ext:
        monkeypatch.setattr(procs, "_EXT", None)
    before = set(os.listdir("/proc/self/fd"))
    with pytest.raises(OSError) as info:
        procs.spawn(argv, {"PATH": os.defpath, **env}, cwd)
    assert info.value.errno == errno.EINVAL
    assert set(os.listdir("/proc/self/fd")) == before


def _mask(status: str, key: str) -> int:
    line = next(ln for ln in status.splitlines() if ln.startswith(key + ":"))
    return int(line.split()[1], 16)


@pytest.mark.parametrize("how", ["clone3", "clone+write", "posix_spawn"])
def test_children_start_clean_while_the_spawning_process_is_hammered_by_signals(
    cgroup_dir: str, how: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Spawns from 4 threads while another process floods this one with SIGUSR1 (handled
    in Python) and SIGUSR2: every child starts with nothing blocked, no handler of the
    parent's (caught ones back to default), and is born in its cgroup. The vfork child
    shares the parent's memory: a parent handler running in it would corrupt the parent."""
    import subprocess
    import threading

    if how == "clone+write":
        monkeypatch.setattr(procs, "_clone3_works", False)
    elif how == "posix_spawn":
        monkeypatch.setattr(procs, "_EXT", None)
    got: list[int] = []
    old1 = signal.signal(signal.SIGUSR1, lambda *_: got.append(1))
    old2 = signal.signal(signal.SIGUSR2, lambda *_: got.append(2))
    flood = subprocess.Popen(
        ["sh", "-c", f"while kill -USR1 {os.getpid()} && kill -USR2 {os.getpid()}; do :; done"]
    )
    results: list[tuple[int, int, int, str]] = []
    errors: list[BaseException] = []

    def work() -> None:
        try:
            for _ in range(25):
                child = procs.spawn(
                    ["sh", "-c", "exec cat /proc/self/status /proc/self/cgroup"],
                    dict(os.environ),
                    None,
                    cgroup=cgroup_dir,
                )
                out = _read_all(child.stdout_fd).decode()
                _read_all(child.stderr_fd)
                assert procs.reap_blocking(child.pid) == 0
                os.close(child.pidfd)
                results.append(
                    (_mask(out, "SigBlk"), _mask(out, "SigCgt"), _mask(out, "SigIgn"), out)
                )
        except BaseException as exc:  # reported below
            errors.append(exc)

    try:
        threads = [threading.Thread(target=work) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
    finally:
        flood.kill()
        flood.wait()
        signal.signal(signal.SIGUSR1, old1)
        signal.signal(signal.SIGUSR2, old2)
    assert errors == []
    assert len(results) == 100
    want = "0::/" + os.path.relpath(cgroup_dir, cgroup2_mount() or "/")
    usr = (1 << (signal.SIGUSR1 - 1)) | (1 << (signal.SIGUSR2 - 1))
    for blocked, caught, ignored, out in results:
        assert blocked == 0 and caught == 0, out
        assert ignored & usr == 0, out
        # posix_spawn's leader is moved after it started: it may read the old cgroup
        assert how == "posix_spawn" or want in out.splitlines(), out
    assert got, "the flood reached this process"


@pytest.mark.parametrize("how", ["clone3", "clone+write", "posix_spawn"])
@pytest.mark.parametrize("failure", ["e2big", "eacces", "enoexec-dir", "bad-cwd"])
def test_exec_failures_are_reported_and_leak_nothing(
    cgroup_dir: str, how: str, failure: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An argv past ARG_MAX, a program that is not executable, a directory, a cwd that is
    a file: an OSError with the errno, no descriptor left open, no process left in the cell."""
    if how == "clone+write":
        monkeypatch.setattr(procs, "_clone3_works", False)
    elif how == "posix_spawn":
        monkeypatch.setattr(procs, "_EXT", None)
    plain = tmp_path / "plain"
    plain.write_text("not a program\n")
    plain.chmod(0o644)
    argv, cwd, want = {
        "e2big": (["true", "x" * (256 << 10)] * 16, None, errno.E2BIG),
        "eacces": ([str(plain)], None, errno.EACCES),
        "enoexec-dir": ([str(tmp_path)], None, errno.EACCES),
        "bad-cwd": (["true"], str(plain), errno.ENOTDIR),
    }[failure]
    before = sorted(os.listdir("/proc/self/fd"))
    for _ in range(20):
        with pytest.raises(OSError) as info:
            procs.spawn(argv, dict(os.environ), cwd, cgroup=cgroup_dir)
        assert info.value.errno == want, info.value
    assert sorted(os.listdir("/proc/self/fd")) == before
    wait = time.monotonic() + 10
    while Path(cgroup_dir, "cgroup.procs").read_text().split() and time.monotonic() < wait:
        time.sleep(0.01)
    assert Path(cgroup_dir, "cgroup.procs").read_text().split() == []


def test_only_the_daemons_own_variables_are_kept_encoded() -> None:
    """The encoded-environment cache holds the daemon's variables, never a job's: values of
    up to 128 KiB each (or a resolved secret) spawned once are not kept for the daemon's
    life; the child still gets every variable, the daemon's and its own."""
    base = procs.child_base_env()
    before = dict(procs._ENCODED_ENV)
    for i in range(20):
        env = dict(base)
        env["BIG"] = f"{i}-" + "x" * 100_000
        env["SECRET_TOKEN"] = f"hunter{i}"
        child = procs.spawn(["sh", "-c", 'echo "${#BIG} $SECRET_TOKEN $PATH"'], env, None)
        os.close(child.stderr_fd)
        out = _read_all(child.stdout_fd).decode().split()
        procs.reap(child.pid)
        os.close(child.pidfd)
        assert out == [str(len(env["BIG"])), f"hunter{i}", base["PATH"]]
    assert before == procs._ENCODED_ENV
    assert not any(b"hunter" in v or b"xxxx" in v for v in procs._ENCODED_ENV.values())
    for key, value in base.items():
        assert procs._ENCODED_ENV[(key, value)] == os.fsencode(f"{key}={value}")
