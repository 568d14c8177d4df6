"""The watchdog: when the daemon dies without a stop, its cells die with it.

A daemon killed with SIGKILL (or crashing) cannot end its children; without
this, they ran on until the next start of a daemon of the same database
(recovery kills them by cgroup), and on PostgreSQL another node would start
the dead node's attempts again while they still ran.

The watchdog is a small `/bin/sh` (dash: ~1 MB RSS, not a copy of the
daemon's memory) started once cgroup containment is set up. It holds the read
end of a pipe whose write end only the daemon holds (O_CLOEXEC: no child
inherits it). It blocks reading one line:

- `bye`: the daemon stops gracefully and has ended its processes itself; the
  watchdog exits without touching anything and is reaped by the daemon.
- end of file (the daemon died, however): it writes `1` to every cell's
  `cgroup.kill` (freeze, SIGKILL each process, thaw, before Linux 5.14),
  SIGKILLs what sits in the subtree's own `cgroup.procs` (strays that moved
  out of their cell), says so on stderr, and exits. It removes nothing: the
  next start's recovery removes the (now empty) cells.

It runs in a session of its own and ignores SIGHUP, SIGINT, SIGTERM and
SIGPIPE: a Ctrl-C of a foreground daemon (the terminal signals the daemon's
process group) must not make it kill everything while the daemon stops its
children gracefully. It is in no cell (it stays in the daemon's cgroup), so
no stop logic of the daemon's reaches it. The subtree's path is an argument
(`$1`), never part of the script's text.

Process-group containment has no watchdog: see the README (*Containment*).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import select
import signal
import subprocess
import time
from typing import Any

from hero_procd.engine.contain import CGROUP2, Containment

log = logging.getLogger(__name__)

NAME = "hero-proc-watchdog"
SHELL = "/bin/sh"
BYE = b"bye\n"
# How long a graceful stop waits for the watchdog to exit after `bye` (it exits at once).
_REAP_S = 10.0

# $0 is NAME, $1 the subtree. Anything read but `bye` (end of file: the daemon is
# gone) kills. The cells first (cgroup.kill takes escapees and nested cgroups too),
# then the strays in the subtree's own cgroup, a few passes (one may have forked).
# The message is written last: stderr may be a pipe nobody reads any more.
SCRIPT = r"""trap '' HUP INT TERM PIPE
IFS= read -r said
[ "$said" = bye ] && exit 0
root=$1
for cell in "$root"/*/; do
  [ -d "$cell" ] || continue
  { echo 1 >"${cell}cgroup.kill"; } 2>/dev/null && continue
  {
    echo 1 >"${cell}cgroup.freeze"
    while read -r pid; do kill -9 "$pid"; done <"${cell}cgroup.procs"
    echo 0 >"${cell}cgroup.freeze"
  } 2>/dev/null
done
for pass in 1 2 3; do
  {
    while read -r pid; do [ "$pid" = "$$" ] || kill -9 "$pid"; done <"$root/cgroup.procs"
  } 2>/dev/null
done
printf '%s: the daemon ended without a stop: killed its cells under %s\n' "$0" "$root" >&2
"""


class Watchdog:
    """The running watchdog process and the write end of its pipe."""

    def __init__(self, proc: subprocess.Popen[bytes], fd: int, root: str, start_s: float) -> None:
        self.proc = proc
        self._fd: int | None = fd
        self.root = root
        self.start_s = start_s
        self.restarts = 0
        self._pidfd: int | None = None

    @property
    def pid(self) -> int:
        """The watchdog's process id."""
        return self.proc.pid

    @classmethod
    def start(cls, root: str) -> Watchdog:
        """Start a watchdog over the cells under `root` (blocking: a fork and an exec)."""
        began = time.perf_counter()
        read_end, write_end = os.pipe2(os.O_CLOEXEC)
        try:
            proc = subprocess.Popen(
                [SHELL, "-c", SCRIPT, NAME, root],
                stdin=read_end,  # dup2'd to fd 0 (not close-on-exec there); nothing else passes
                stdout=subprocess.DEVNULL,
                close_fds=True,
                start_new_session=True,
                cwd="/",
                env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C"},
            )
        except BaseException:
            os.close(write_end)
            raise
        finally:
            os.close(read_end)
        return cls(proc, write_end, root, time.perf_counter() - began)

    def info(self) -> dict[str, Any]:
        """What system.info shows."""
        return {"pid": self.pid, "cgroup": self.root, "program": SHELL, "restarts": self.restarts}

    def watch(self) -> None:
        """Notice (a pidfd on the event loop) if the watchdog ends while the daemon runs
        (killed from outside): it is started again, and the daemon says so."""
        self._pidfd = os.pidfd_open(self.proc.pid)  # close-on-exec, always
        asyncio.get_running_loop().add_reader(self._pidfd, self._ended)

    def _unwatch(self) -> None:
        pidfd, self._pidfd = self._pidfd, None
        if pidfd is not None:
            asyncio.get_running_loop().remove_reader(pidfd)
            os.close(pidfd)

    def _ended(self) -> None:
        self._unwatch()
        self.proc.poll()  # reap it
        old_pid, code = self.proc.pid, self.proc.returncode
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)
        others = _watchdogs_of(self.root)  # ~2 ms, once
        if others:
            # Another daemon started over this subtree and ended this watchdog (a daemon
            # that took this one's node while it stood still): a new one would kill that
            # daemon's cells were this one killed now. This daemon learns at its next
            # heartbeat that its name was taken, and stops.
            log.error(
                "the watchdog was ended by another daemon of this cgroup subtree; not "
                "started again",
                extra={"pid": old_pid, "cgroup": self.root, "other_watchdogs": others},
            )
            return
        try:
            again = Watchdog.start(self.root)  # ~3 ms: a fork and an exec, like a job's
        except OSError as exc:
            log.error(
                "the watchdog ended and cannot be started again: a kill -9 of the daemon "
                "would now leave its processes running",
                extra={"pid": old_pid, "returncode": code, "error": str(exc)},
            )
            return
        self.proc, self._fd = again.proc, again._fd
        self.restarts += 1
        log.error(
            "the watchdog ended while the daemon runs; started it again",
            extra={"pid": old_pid, "returncode": code, "new_pid": self.proc.pid},
        )
        self.watch()

    async def stop(self) -> None:
        """Graceful stop: tell it `bye` (it exits without killing anything) and reap it.

        Called once the executor and the supervisor have ended their processes."""
        self._unwatch()
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            os.write(fd, BYE)
        except OSError as exc:  # it died (killed from outside): its end of file came first
            log.warning("the watchdog was gone before the stop", extra={"error": str(exc)})
        finally:
            os.close(fd)
        try:
            await asyncio.to_thread(self.proc.wait, _REAP_S)
        except subprocess.TimeoutExpired:
            log.error("the watchdog did not exit after bye; killing it", extra={"pid": self.pid})
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
            await asyncio.to_thread(self.proc.wait)
        if self.proc.returncode != 0:
            log.warning("the watchdog exited", extra={"returncode": self.proc.returncode})


def _watchdogs_of(root: str) -> list[int]:
    """The pids of the watchdogs over `root` running on this host (blocking: reads /proc).

    Matched by `/bin/sh -c <any script> hero-proc-watchdog <root>`: the script of
    another version of the daemon (an upgrade's restart) is matched too."""
    head, tail = [SHELL.encode(), b"-c"], [NAME.encode(), root.encode()]
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")[:-1]
        except OSError:
            continue
        if len(argv) == 5 and argv[:2] == head and argv[3:] == tail:
            found.append(int(entry.name))
    return found


def end_previous(root: str) -> int:
    """SIGKILL the watchdogs a previous daemon of this subtree left, and wait until they
    are gone (blocking); how many there were.

    A daemon killed by -9 leaves its watchdog killing its cells; one that runs late (a
    loaded machine, a stopped process) would kill the cells of the daemon started next on
    the same database, which are in the same subtree. Called before this daemon makes
    any cell: its recovery then kills and removes what the previous daemon left."""
    ended = 0
    for pid in _watchdogs_of(root):
        try:
            pidfd = os.pidfd_open(pid)
        except ProcessLookupError:
            continue
        try:
            os.kill(pid, signal.SIGKILL)  # works on a stopped process too
            select.select([pidfd], [], [], _REAP_S)  # readable once it has ended
            ended += 1
        except ProcessLookupError:
            pass
        finally:
            os.close(pidfd)
    return ended


def start_for(containment: Containment) -> Watchdog | None:
    """A watchdog over the containment's cells: cgroup containment only (blocking).

    The watchdogs a previous daemon of the same subtree left are ended first."""
    root = getattr(containment, "root", None)
    if containment.kind != CGROUP2 or not isinstance(root, str):
        return None
    previous = end_previous(root)
    if previous:
        log.warning(
            "ended the watchdog a previous daemon left (its recovery follows)",
            extra={"cgroup": root, "watchdogs": previous},
        )
    dog = Watchdog.start(root)
    log.debug("watchdog started", extra={"pid": dog.pid, "start_ms": round(dog.start_s * 1e3, 2)})
    return dog
