"""Secrets at rest: AES-256-GCM sealing and the key file, independent of any database.

A stored secret is `v1.` + base64url(nonce ‖ ciphertext ‖ tag): a random 96-bit
nonce per value, and the secret's name as associated data, so a sealed value
copied onto another name does not open. The key (32 random bytes) lives outside
the database, in a file the daemon reads at start-up:

1. `--secrets-key-file` / `$HERO_PROC_SECRETS_KEY_FILE`, created if missing;
2. else the systemd credential `$CREDENTIALS_DIRECTORY/hero-proc-secrets-key`
   (`LoadCredential=`), when it exists (never created: systemd provides it);
3. else `<database>.secrets-key` beside the database, created at first start.

A key file must be a regular file of exactly 32 bytes, owned by the daemon's
user (or root), with no group or other permission bits: anything else is a
start-up error naming the file. A new key file is written 0600 to a temporary
name and linked into place (link(2) fails if the name exists), so no reader
ever sees a half-written key and two starting daemons keep one key.

Every function here blocks (file I/O): call them through `asyncio.to_thread`.
Sealing and opening take microseconds and may run anywhere.
"""

from __future__ import annotations

import base64
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

__all__ = [
    "CREDENTIAL_NAME",
    "KEY_BYTES",
    "KeyFileError",
    "SecretBox",
    "WrongKey",
    "key_file_path",
    "load_key_file",
]

KEY_BYTES = 32
NONCE_BYTES = 12
PREFIX = "v1."
CREDENTIAL_NAME = "hero-proc-secrets-key"
# The plaintext of the key check a database keeps: it tells a wrong key at start-up.
CHECK_NAME = "\0hero-procd key check"
CHECK_TEXT = "hero-procd secrets key check v1"


class KeyFileError(Exception):
    """The secrets key file cannot be used; the message names it and says why, in one line."""


class WrongKey(Exception):
    """A sealed value does not open with this key (another key, or a value moved or altered)."""


def key_file_path(db_path: Path | None, explicit: Path | None = None) -> tuple[Path, bool]:
    """Where the key is, and whether the daemon may create it there (see the module doc)."""
    if explicit is not None:
        return explicit, True
    env = os.environ.get("HERO_PROC_SECRETS_KEY_FILE")
    if env:
        return Path(env), True
    creds = os.environ.get("CREDENTIALS_DIRECTORY")
    if creds:
        credential = Path(creds) / CREDENTIAL_NAME
        if os.path.lexists(credential):
            return credential, False
    if db_path is None:
        raise KeyFileError("no secrets key file given (--secrets-key-file)")
    return db_path.with_name(db_path.name + ".secrets-key"), True


def _check_key_fd(fd: int, path: Path) -> bytes:
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        raise KeyFileError(f"secrets key file {path} is not a regular file")
    if st.st_uid not in (os.geteuid(), 0):
        raise KeyFileError(
            f"secrets key file {path} belongs to uid {st.st_uid}, not to this daemon's user"
        )
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o077:
        raise KeyFileError(
            f"secrets key file {path} has mode {mode:04o}; it must not be readable or "
            f"writable by group or others (chmod 600 {path})"
        )
    data = os.read(fd, KEY_BYTES + 1)
    if len(data) != KEY_BYTES or st.st_size != KEY_BYTES:
        raise KeyFileError(
            f"secrets key file {path} holds {st.st_size} bytes; a key is exactly {KEY_BYTES} "
            f"random bytes (head -c {KEY_BYTES} /dev/urandom)"
        )
    return data


def _read_key(path: Path) -> bytes:
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        return _check_key_fd(fd, path)
    finally:
        os.close(fd)


def _create_key(path: Path) -> bytes:
    """Write a new random key to `path` atomically (0600); the key at `path` afterwards."""
    key = AESGCM.generate_key(bit_length=KEY_BYTES * 8)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.{os.urandom(6).hex()}.tmp")
    fd = os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        os.fchmod(fd, 0o600)  # whatever the umask
        os.write(fd, key)
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        # Fails if the name exists: never replaces a key. The temporary name is linked as
        # it is (a symlink swapped in for it is not followed to another file).
        os.link(tmp, path, follow_symlinks=False)
    except FileExistsError:
        return _read_key(path)  # another daemon made it first: use theirs
    finally:
        os.unlink(tmp)
    dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return key


def load_key_file(path: Path, *, create: bool) -> tuple[bytes, bool]:
    """The key in `path` (checked), creating it when allowed and missing; (key, created)."""
    try:
        return _read_key(path), False
    except FileNotFoundError:
        if not create:
            raise KeyFileError(f"secrets key file {path} does not exist") from None
    except KeyFileError:
        raise
    except OSError as exc:
        raise KeyFileError(f"secrets key file {path}: {exc.strerror}") from None
    try:
        return _create_key(path), True
    except KeyFileError:
        raise
    except OSError as exc:
        raise KeyFileError(f"cannot create the secrets key file {path}: {exc.strerror}") from None


@dataclass(frozen=True)
class SecretBox:
    """Seals and opens secret values with one key; `source` names the key file in errors."""

    key: bytes
    source: Path

    def __post_init__(self) -> None:
        if len(self.key) != KEY_BYTES:
            raise KeyFileError(f"secrets key from {self.source} is not {KEY_BYTES} bytes")

    def __repr__(self) -> str:  # never the key
        return f"SecretBox(source={str(self.source)!r})"

    def seal(self, name: str, value: str) -> str:
        """The stored form of `value` under `name`: a fresh nonce, the name as associated data."""
        nonce = os.urandom(NONCE_BYTES)
        sealed = AESGCM(self.key).encrypt(nonce, value.encode("utf-8"), name.encode("utf-8"))
        return PREFIX + base64.urlsafe_b64encode(nonce + sealed).decode("ascii")

    def open(self, name: str, stored: str) -> str:
        """The value sealed under `name`, or WrongKey (never a partial or a guessed value)."""
        if not stored.startswith(PREFIX):
            raise WrongKey(f"secret {name!r} is not a sealed value")
        try:
            raw = base64.urlsafe_b64decode(stored[len(PREFIX) :])
            if len(raw) < NONCE_BYTES + 16:
                raise ValueError("too short")
            plain = AESGCM(self.key).decrypt(
                raw[:NONCE_BYTES], raw[NONCE_BYTES:], name.encode("utf-8")
            )
        except (InvalidTag, ValueError):
            raise WrongKey(
                f"secret {name!r} does not open with the key in {self.source} "
                "(another key, or the stored value was altered or moved)"
            ) from None
        return plain.decode("utf-8")

    def check_token(self) -> str:
        """A sealed known text the database keeps, to tell at start-up that a key is its key."""
        return self.seal(CHECK_NAME, CHECK_TEXT)

    def matches(self, token: str) -> bool:
        """Whether `token` (from `check_token` of some key) was sealed with this key."""
        try:
            return self.open(CHECK_NAME, token) == CHECK_TEXT
        except WrongKey:
            return False
