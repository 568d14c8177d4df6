"""Capture a child's stdout and stderr line by line into the flusher.

Shared by the job executor and the service supervisor: the pipes are read
when the loop says they are readable (no thread, no blocking read), split
into lines (long lines cut at `max_line`), and queued as log lines of the
capture's owner, whose sequence counter they share with every other
capture of that owner. A capture paused by backpressure is drained —
everything the pipes still hold is read — before it is closed.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

from hero_procd.engine.fdwatch import FdWatcher, watcher
from hero_procd.engine.flusher import Flusher, OwnerLog


class OutputCapture:
    """Reads both output pipes of one process until EOF; calls `on_closed` when both are."""

    def __init__(
        self,
        flusher: Flusher,
        owner: OwnerLog,
        *,
        max_line: int,
        on_closed: Callable[[], None],
    ) -> None:
        self.flusher = flusher
        self.owner = owner
        self.max_line = max_line
        self.on_closed = on_closed
        self._partial: dict[int, bytes] = {}
        self._streams: dict[int, str] = {}
        self._paused = False
        self._released = False
        self._watcher: FdWatcher | None = None

    @property
    def open(self) -> int:
        """How many pipes are still open."""
        return len(self._streams)

    def attach(self, stdout_fd: int, stderr_fd: int, fdw: FdWatcher | None = None) -> None:
        """Start reading both pipes on the running loop (`fdw`, its fdwatch.watcher); they
        are non-blocking already (procs.spawn makes them so, on its thread)."""
        self._watcher = fdw if fdw is not None else watcher()
        for fd, stream in ((stdout_fd, "stdout"), (stderr_fd, "stderr")):
            self._streams[fd] = stream
            self._partial[fd] = b""
            self._watcher.add(fd, self._on_readable, fd)

    def close_all(self) -> None:
        """Read what the pipes still hold, then stop (a process that left them open)."""
        for fd in list(self._streams):
            self._drain(fd)
            self._close(fd, time.time())

    def _drain(self, fd: int) -> None:
        while fd in self._streams and self._read_once(fd):
            pass

    def _read_once(self, fd: int) -> bool:
        """Read one chunk of a pipe into lines; False when nothing more is there now."""
        try:
            data = os.read(fd, 65536)
        except BlockingIOError:
            return False
        except OSError:
            data = b""
        ts = time.time()
        if not data:
            self._close(fd, ts)
            return False
        self._take(fd, data, ts)
        return True

    def _emit(self, stream: str, raw: bytes, ts: float) -> None:
        if raw.endswith(b"\r"):
            raw = raw[:-1]
        limit = self.max_line
        for start in range(0, max(len(raw), 1), limit):
            text = raw[start : start + limit].decode("utf-8", "replace")
            self.flusher.write_log(self.owner, stream, ts, text)

    def _take(self, fd: int, data: bytes, ts: float) -> None:
        stream = self._streams[fd]
        lines = (self._partial[fd] + data).split(b"\n")
        rest = lines.pop()
        for line in lines:
            self._emit(stream, line, ts)
        if len(rest) >= self.max_line:
            self._emit(stream, rest, ts)
            rest = b""
        self._partial[fd] = rest

    def _on_readable(self, fd: int) -> None:
        if not self._read_once(fd):
            return
        if not self._paused and self.flusher.log_pressure():
            self._paused = True
            assert self._watcher is not None
            for open_fd in self._streams:
                self._watcher.remove(open_fd)
            self.flusher.when_relieved(self._resume)

    def _resume(self) -> None:
        self._paused = False
        assert self._watcher is not None
        for fd in self._streams:
            self._watcher.add(fd, self._on_readable, fd)

    def _close(self, fd: int, ts: float) -> None:
        stream = self._streams.pop(fd, None)
        if stream is None:
            return
        if not self._paused:
            assert self._watcher is not None
            self._watcher.remove(fd)
        os.close(fd)
        rest = self._partial.pop(fd, b"")
        if rest:
            self._emit(stream, rest, ts)
        if not self._streams:
            if not self._released:
                self._released = True
                self.flusher.release_owner(self.owner)
            self.on_closed()
