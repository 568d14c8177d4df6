"""The spawner: both implementations (glibc posix_spawn by ctypes, and the Popen fallback)."""

from __future__ import annotations

import os
import select
import signal
from collections.abc import Callable
from pathlib import Path

import pytest

from hero_procd.engine import procs

Spawner = Callable[[list[str], dict[str, str], str | None], tuple[int, int, int]]


def _spawners() -> list[tuple[str, Spawner]]:
    out: list[tuple[str, Spawner]] = [("popen", procs._popen)]
    if procs._POSIX_SPAWN is not None:
        out.append(("posix_spawn", procs._POSIX_SPAWN.spawn))
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
