"""A TCP proxy that a test can cut: a node's only way to PostgreSQL, put out of reach.

`cut()` is a network cut as the node sees it: bytes already on their way and
new ones are dropped, new connections are accepted and then hear nothing (no
refusal, no reset: the node's timeouts must notice). `cut_holding(marker)` cuts in
the middle of a statement stream: the statement that carries `marker` reaches the
server and runs, its Sync does not — the server's session stays *active* inside its
transaction, with that statement's locks, waiting for the rest (no idle timeout ends
it). `restore()` forwards new connections again and closes the ones of the cut (the
node's driver sees them break, as a real cut ends with their timeouts).
"""

from __future__ import annotations

import contextlib
import selectors
import socket
import threading
import time

# The extended query protocol's Sync message: the end of a statement stream (frontend).
SYNC = b"S\x00\x00\x00\x04"


class CuttableProxy:
    """Forwards <host>:<port> to `target` until cut; in a thread of its own.

    `host` is the address it listens on (127.0.0.1 by default; the root-namespace end of
    a veth pair for a node in a network namespace of its own), `port` is picked free."""

    def __init__(self, target: tuple[str, int], host: str = "127.0.0.1") -> None:
        self.target = target
        self.host = host
        self._listener = socket.create_server((host, 0))
        self._listener.setblocking(False)
        self.port: int = self._listener.getsockname()[1]
        self._sel = selectors.DefaultSelector()
        self._sel.register(self._listener, selectors.EVENT_READ, None)
        self._peers: dict[socket.socket, socket.socket | None] = {}
        self._cut = False
        self.cut_at: float | None = None  # time.time() of the cut
        self._marker: bytes | None = None
        self._marked: socket.socket | None = None
        self._clients: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._stop = False
        self._thread = threading.Thread(target=self._run, name="tcp-proxy", daemon=True)

    def start(self) -> CuttableProxy:
        """Start forwarding."""
        self._thread.start()
        return self

    def cut(self) -> None:
        """Drop everything from now on, silently."""
        with self._lock:
            self._cut = True
            self.cut_at = time.time()

    def cut_holding(self, marker: bytes) -> None:
        """Cut once a client sends `marker` (in a statement's text): forward its stream up
        to the next Sync, drop that Sync and everything after, on every connection."""
        with self._lock:
            self._marker = marker
            self._marked = None

    def server_ports(self) -> list[int]:
        """The local ports of the connections to the target (the server's client_port)."""
        with self._lock:
            return [s.getsockname()[1] for s in self._peers if s not in self._clients]

    def _hold(self, sock: socket.socket, data: bytes) -> bytes:
        """What of a client's `data` to forward while a `cut_holding` is armed (cuts)."""
        if self._marker is None or sock not in self._clients:
            return data
        at = 0 if self._marked is sock else data.find(self._marker)
        if at < 0:
            return data
        self._marked = sock
        sync = data.find(SYNC, at)
        if sync < 0:
            return data
        self._marker = None
        self._cut = True
        self.cut_at = time.time()
        return data[:sync]

    def restore(self) -> None:
        """Forward new connections again; close those that lived through the cut."""
        with self._lock:
            self._cut = False
            for sock in list(self._peers):
                self._close(sock)

    def close(self) -> None:
        """Stop the thread and close every socket."""
        self._stop = True
        self._thread.join(5)
        with self._lock:
            for sock in list(self._peers):
                self._close(sock)
        self._listener.close()
        self._sel.close()

    def _close(self, sock: socket.socket) -> None:
        other = self._peers.pop(sock, None)
        for s in (sock, other):
            if s is None:
                continue
            with contextlib.suppress(KeyError, ValueError):
                self._sel.unregister(s)
            self._peers.pop(s, None)
            self._clients.discard(s)
            s.close()

    def _accept(self) -> None:
        try:
            client, _ = self._listener.accept()
        except BlockingIOError:
            return
        server: socket.socket | None = None
        if not self._cut:
            try:
                server = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                return
            server.setblocking(False)
            self._peers[server] = client
            self._sel.register(server, selectors.EVENT_READ, None)
        client.setblocking(False)
        self._clients.add(client)
        self._peers[client] = server
        self._sel.register(client, selectors.EVENT_READ, None)

    def _run(self) -> None:
        while not self._stop:
            for key, _ in self._sel.select(timeout=0.1):
                with self._lock:
                    sock = key.fileobj
                    assert isinstance(sock, socket.socket)
                    if sock is self._listener:
                        self._accept()
                        continue
                    if sock not in self._peers:
                        continue
                    try:
                        data = sock.recv(65536)
                    except (BlockingIOError, InterruptedError):
                        continue
                    except OSError:
                        data = b""
                    if not data:
                        self._close(sock)
                        continue
                    other = self._peers.get(sock)
                    if self._cut or other is None:
                        continue  # dropped on the floor
                    data = self._hold(sock, data)
                    try:
                        other.setblocking(True)
                        other.sendall(data)
                        other.setblocking(False)
                    except OSError:
                        self._close(sock)
