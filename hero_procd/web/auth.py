"""Who may use the browser listener: the token, the session cookie, CSRF and Host checks.

A browser cannot reach the Unix socket (whose peers are checked by uid), so
the TCP listener carries its own authority:

- a random token, created 0600 beside the database at first start and kept
  across restarts (delete the file to change it); `hero-proc ui` prints the
  URL that logs in with it;
- `GET /login?token=…` sets a session cookie (HttpOnly, SameSite=Strict),
  an HMAC of the token: it works across restarts, and leaking it does not
  leak the token;
- a request is authenticated by `Authorization: Bearer <token>` or by the
  cookie; a state-changing request (any POST) authenticated by the cookie
  must also carry the anti-CSRF header (`X-Hero-CSRF`, an HMAC of the token
  the pages embed), which a cross-site form or image cannot send;
- the `Host` header must name the listener itself (DNS rebinding: a hostile
  name that resolves to 127.0.0.1 still carries its own name).
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import os
import secrets
import socket
import stat
from pathlib import Path

TOKEN_FILE_SUFFIX = ".http-token"
COOKIE_NAME = "hero_session"
CSRF_HEADER = b"x-hero-csrf"


class AuthError(Exception):
    """The token file cannot be used (wrong owner, readable by others, malformed)."""


def token_path(db_path: Path) -> Path:
    """Where the listener's token lives: beside the database, named after it."""
    return db_path.with_name(db_path.name + TOKEN_FILE_SUFFIX)


def load_or_create_token(db_path: Path) -> str:
    """The listener's token: read from its file, or created there (mode 0600) at first start."""
    path = token_path(db_path)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    except FileExistsError:
        pass
    else:
        token = secrets.token_urlsafe(32)
        with os.fdopen(fd, "w", encoding="ascii") as fh:
            fh.write(token + "\n")
        return token
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    with os.fdopen(fd, encoding="ascii") as fh:
        info = os.fstat(fh.fileno())
        if not stat.S_ISREG(info.st_mode) or info.st_uid != os.getuid():
            raise AuthError(f"{path}: not a regular file of ours")
        if info.st_mode & 0o077:
            raise AuthError(f"{path}: readable by others (mode {info.st_mode & 0o777:o}; want 600)")
        token = fh.read().strip()
    if len(token) < 32:
        raise AuthError(f"{path}: too short to be a token (delete it to make a new one)")
    return token


def is_loopback(host: str) -> bool:
    """True for localhost and loopback addresses (127.0.0.0/8, ::1)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def host_names(host: str, port: int, extra: tuple[str, ...] = ()) -> frozenset[bytes]:
    """The `Host` values the listener on host:port answers to (lower-case, with the port)."""
    bare = host.strip("[]")
    literal = f"[{bare}]" if ":" in bare else bare
    names = {literal, *extra}
    if is_loopback(bare) or bare in ("0.0.0.0", "::"):
        names |= {"localhost", "127.0.0.1", "[::1]"}
    if bare in ("0.0.0.0", "::"):
        names |= {socket.gethostname(), socket.getfqdn()}
    out = set()
    for name in names:
        out.add(f"{name.lower()}:{port}".encode())
        if port == 80:
            out.add(name.lower().encode())
    return frozenset(out)


class Guard:
    """Checks the requests of one listener against its token and its names."""

    def __init__(self, token: str, names: frozenset[bytes]) -> None:
        self._token = token.encode()
        self.names = names
        self.cookie_value = self._mac(b"session/v1")
        self.csrf_value = self._mac(b"csrf/v1")

    def _mac(self, what: bytes) -> str:
        return hmac.new(self._token, what, hashlib.sha256).hexdigest()

    def host_ok(self, host: bytes | None) -> bool:
        """True if the Host header names this listener."""
        return host is not None and host.lower() in self.names

    def token_ok(self, token: str | None) -> bool:
        """True if `token` is the listener's token (compared in constant time)."""
        return token is not None and hmac.compare_digest(token.encode(), self._token)

    def authenticate(self, headers: dict[bytes, bytes]) -> str | None:
        """ "bearer" or "cookie" for an authenticated request, else None."""
        auth = headers.get(b"authorization")
        if auth is not None:
            scheme, _, value = auth.partition(b" ")
            if scheme.lower() == b"bearer" and hmac.compare_digest(value.strip(), self._token):
                return "bearer"
            return None
        cookie = _cookie(headers.get(b"cookie"), COOKIE_NAME)
        if cookie is not None and hmac.compare_digest(cookie.encode(), self.cookie_value.encode()):
            return "cookie"
        return None

    def csrf_ok(self, headers: dict[bytes, bytes]) -> bool:
        """True if the anti-CSRF header carries this listener's value."""
        value = headers.get(CSRF_HEADER)
        return value is not None and hmac.compare_digest(value, self.csrf_value.encode())

    def set_cookie(self, secure: bool = False) -> bytes:
        """The Set-Cookie header value of a session."""
        flags = "; Secure" if secure else ""
        return (
            f"{COOKIE_NAME}={self.cookie_value}; Path=/; HttpOnly; SameSite=Strict{flags}"
        ).encode()


def _cookie(header: bytes | None, name: str) -> str | None:
    if not header:
        return None
    for part in header.decode("latin-1").split(";"):
        key, _, value = part.strip().partition("=")
        if key == name:
            return value
    return None
