"""A TCP proxy that a test can cut: a node's only way to PostgreSQL, put out of reach.

`cut()` is a network cut as the node sees it: bytes already on their way and
new ones are dropped, new connections are accepted and then hear nothing (no
refusal, no reset: the node's timeouts must notice). `restore()` forwards new
connections again and closes the ones of the cut (the node's driver sees them
break, as a real cut ends with their timeouts).
"""

from __future__ import annotations

import contextlib
import selectors
import socket
import threading


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
                    try:
                        other.setblocking(True)
                        other.sendall(data)
                        other.setblocking(False)
                    except OSError:
                        self._close(sock)
