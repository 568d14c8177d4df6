"""The daemon's files on disk: symlinks, hard links, folder modes, the socket group.

The database holds secrets: no file of it may ever be created other than 0600,
a symlink pointing nowhere is refused rather than followed, and one database
is served by one daemon whatever path leads to it.
"""

from __future__ import annotations

import grp
import os
import stat
from pathlib import Path

import pytest

from integration.daemon_proc import DaemonProcess
from integration.helpers import refused


def mode(path: Path) -> int:
    """The permission bits of `path` (sticky and setgid included), not following a symlink."""
    return stat.S_IMODE(os.lstat(path).st_mode) & 0o7777


def files_under(folder: Path) -> list[str]:
    """Every path under `folder`, relative, sorted (to show nothing was created)."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def other_group() -> grp.struct_group:
    """A group this process may give files to, other than its own if it can be.

    Root may use any group; another user a supplementary one. Falls back to our
    own group, which still checks modes, only not the chgrp.
    """
    mine = os.getegid()
    if os.geteuid() == 0:
        for group in grp.getgrall():
            if group.gr_gid != mine:
                return group
    for gid in os.getgroups():
        if gid != mine:
            return grp.getgrgid(gid)
    return grp.getgrgid(mine)


def with_umask(mask: int, d: DaemonProcess) -> DaemonProcess:
    """Start `d` under `mask` (the daemon inherits it; its modes must not depend on it)."""
    old = os.umask(mask)
    try:
        return d.start()
    finally:
        os.umask(old)


# -- symlinks --------------------------------------------------------------------------------


def test_dangling_symlink_at_db_is_refused_and_nothing_created(workdir: Path) -> None:
    """A --db symlink to nowhere is refused: no database appears where it points."""
    target_dir = workdir / "unmounted"
    link = workdir / "hp.db"
    link.symlink_to(target_dir / "hero.db")
    d = DaemonProcess(workdir)
    reason, _ = refused(d.argv)
    assert "is a symlink to" in reason and "does not exist" in reason, reason
    assert files_under(workdir) == ["hp.db"], files_under(workdir)


def test_dangling_symlink_folder_on_db_path_is_refused(workdir: Path) -> None:
    """A symlinked folder pointing nowhere (an unmounted volume) is refused, not created."""
    (workdir / "vol").symlink_to(workdir / "mnt" / "data")
    d = DaemonProcess(workdir)
    d.db_path = workdir / "vol" / "state" / "hp.db"
    reason, _ = refused(d.argv)
    assert f"{workdir / 'vol'} is a symlink" in reason, reason
    assert files_under(workdir) == ["vol"], files_under(workdir)


def test_db_that_is_a_folder_is_refused(workdir: Path) -> None:
    """--db naming a folder is refused in one line."""
    d = DaemonProcess(workdir)
    d.db_path.mkdir()
    reason, _ = refused(d.argv)
    assert "is not a regular file" in reason, reason


def test_symlinked_db_is_used_by_its_real_path(workdir: Path, started: list[DaemonProcess]) -> None:
    """Through a symlink, the daemon serves the real file; WAL and lock sit beside it."""
    real_dir = workdir / "real"
    real_dir.mkdir(mode=0o700)
    real = real_dir / "hero.db"
    d = DaemonProcess(workdir)
    real.touch(mode=0o600)  # an empty file is a new database to SQLite
    d.db_path.symlink_to(real)
    with_umask(0, d)
    started.append(d)
    with d.client() as c:
        assert c.call("system.info")["db"] == str(real)
        c.call("job.submit", command=["/bin/true"])
    assert os.path.islink(d.db_path), "the symlink was replaced"
    assert mode(real) == 0o600
    assert mode(real.with_name("hero.db.lock")) == 0o600
    wal = real.with_name("hero.db-wal")
    assert wal.exists() and mode(wal) == 0o600
    assert (
        not workdir.joinpath("hp.db-wal").exists() and not workdir.joinpath("hp.db.lock").exists()
    )
    assert d.stop() == 0, d.log()


@pytest.mark.parametrize("how", ["symlink", "hardlink", "real-path"])
def test_second_daemon_on_another_path_to_the_db_is_refused(
    workdir: Path, started: list[DaemonProcess], how: str
) -> None:
    """A second daemon reaching the same database by a symlink, a hard link or its real path."""
    first = DaemonProcess(workdir).start()
    started.append(first)
    other = workdir / "other.db"
    if how == "symlink":
        other.symlink_to(first.db_path)
    elif how == "hardlink":
        os.link(first.db_path, other)
    else:
        other = first.db_path
    second = DaemonProcess(workdir)
    second.db_path = other
    second.socket_path = workdir / "second.sock"
    reason, _ = refused(second.argv)
    assert "another hero-procd holds the database" in reason, reason
    assert not second.socket_path.exists()
    with first.client() as c:
        assert c.call("system.ping")["pong"] is True
    assert first.stop() == 0, first.log()


# -- folders ---------------------------------------------------------------------------------


@pytest.mark.parametrize("umask", [0o000, 0o022, 0o277], ids=["umask0", "umask022", "umask277"])
def test_every_created_folder_is_0700_and_files_0600(
    workdir: Path, started: list[DaemonProcess], umask: int
) -> None:
    """Each level the daemon creates is 0700, the database's files 0600, whatever the umask."""
    d = DaemonProcess(workdir)
    d.db_path = workdir / "var" / "lib" / "hp" / "hp.db"
    d.socket_path = workdir / "run" / "user" / "hp.sock"
    with_umask(umask, d)
    started.append(d)
    with d.client() as c:
        c.call("job.submit", command=["/bin/true"])
    for folder in ("var", "var/lib", "var/lib/hp", "run", "run/user"):
        assert mode(workdir / folder) == 0o700, folder
    for name in ("hp.db", "hp.db.lock", "hp.db-wal", "hp.db-shm"):
        assert mode(d.db_path.with_name(name)) == 0o600, name
    assert mode(d.socket_path) == 0o600
    assert d.stop() == 0, d.log()


def test_socket_group_makes_the_socket_reachable(
    workdir: Path, started: list[DaemonProcess]
) -> None:
    """With --socket-group, created socket folders are 0750 and the group's; the socket 0660."""
    group = other_group()
    d = DaemonProcess(workdir, extra_args=["--socket-group", group.gr_name])
    d.socket_path = workdir / "run" / "hero" / "hp.sock"
    d.db_path = workdir / "state" / "hp.db"
    with_umask(0o077, d)
    started.append(d)
    for folder in (workdir / "run", workdir / "run" / "hero"):
        st = os.stat(folder)
        assert (stat.S_IMODE(st.st_mode), st.st_gid) == (0o750, group.gr_gid), folder
    st = os.stat(d.socket_path)
    assert (stat.S_IMODE(st.st_mode), st.st_gid) == (0o660, group.gr_gid)
    assert mode(workdir / "state") == 0o700, "the database's folder stays private"
    assert d.stop() == 0, d.log()
    assert not d.socket_path.exists()


def test_existing_socket_folder_is_left_as_it_is(
    workdir: Path, started: list[DaemonProcess]
) -> None:
    """A folder the daemon did not create keeps its mode and group."""
    folder = workdir / "sockets"
    folder.mkdir()
    os.chmod(folder, 0o711)
    group = other_group()
    d = DaemonProcess(workdir, extra_args=["--socket-group", group.gr_name])
    d.socket_path = folder / "hp.sock"
    d.start()
    started.append(d)
    assert mode(folder) == 0o711 and os.stat(folder).st_gid == os.getegid()
    assert os.stat(d.socket_path).st_gid == group.gr_gid
    assert d.stop() == 0, d.log()


def test_open_parent_of_socket_folder_is_refused(workdir: Path) -> None:
    """A parent writable by others (no sticky bit) could swap the socket's folder: refused."""
    opened = workdir / "shared"
    opened.mkdir()
    os.chmod(opened, 0o777)
    inner = opened / "mine"
    inner.mkdir(mode=0o700)
    d = DaemonProcess(workdir)
    d.socket_path = inner / "hp.sock"
    reason, _ = refused(d.argv)
    assert f"socket folder {opened} is writable by others without the sticky bit" in reason
    assert not d.socket_path.exists() and not d.db_path.exists()


def test_sticky_open_socket_folder_is_accepted(workdir: Path, started: list[DaemonProcess]) -> None:
    """Writable by all but sticky, like /tmp: others cannot remove or rename our socket."""
    folder = workdir / "tmp"
    folder.mkdir()
    os.chmod(folder, 0o1777)
    d = DaemonProcess(workdir)
    d.socket_path = folder / "hp.sock"
    d.start()
    started.append(d)
    assert mode(d.socket_path) == 0o600
    assert d.stop() == 0, d.log()


def test_symlinked_lock_file_is_refused(workdir: Path) -> None:
    """The lock file is never opened through a symlink (it would be created or truncated there)."""
    d = DaemonProcess(workdir)
    victim = workdir / "victim"
    victim.write_text("precious\n")
    d.db_path.with_name("hp.db.lock").symlink_to(victim)
    reason, _ = refused(d.argv)
    assert "is a symlink" in reason, reason
    assert victim.read_text() == "precious\n"
