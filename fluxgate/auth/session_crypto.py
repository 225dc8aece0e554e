"""Encryption at rest for the session store: a key ring file and AES-GCM sealed blobs.

``state_dir/oauth2/session-keys`` (mode 0600) holds numbered 256-bit keys as JSON. The
newest key encrypts; older keys only decrypt. ``KeyRing.rotate_if_due`` (called by the
master's store maintenance) adds a key every ``key_rotation`` seconds and drops a key once
it has been retired for ``retention`` seconds (the longest absolute session lifetime: no
session sealed under it can still be alive). The file is replaced atomically under a
``flock`` on ``session-keys.lock``, so any number of processes can read it while one
rotates; readers notice a new file by its inode, size and mtime.

A sealed blob is ``format (1 byte) | key number (4 bytes, big-endian) | nonce (12 bytes) |
ciphertext+tag``. The caller passes associated data that names the row the blob belongs
to, so a blob copied into another row does not authenticate (NIST SP 800-38D §5.2.1.1
on AAD; the nonce is random, 96 bits, and a key encrypts far fewer than 2^32 blobs in a
rotation period).
"""

from __future__ import annotations

import base64
import binascii
import fcntl
import logging
import os
import secrets
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import orjson
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from fluxgate.errors import FluxGateError
from fluxgate.files import replace_file

log = logging.getLogger("fluxgate.sessions")

KEYS_FILE = "session-keys"
LOCK_FILE = "session-keys.lock"
RING_FORMAT = 1
BLOB_FORMAT = 1
KEY_BYTES = 32
NONCE_BYTES = 12
_HEADER = struct.Struct(">BI")  # blob format, key number
MAX_KEYS = 1024  # a ring this long is a broken rotation schedule, not a real one


class SessionStoreError(FluxGateError):
    """The session store cannot do what was asked (its files are unusable, a bad argument);
    the message is meant for the operator."""


@dataclass(frozen=True)
class SessionKey:
    """One key of the ring; ``secret`` never appears in a repr."""

    number: int
    created_at: float
    secret: bytes = field(repr=False)


class KeyRing:
    """The key ring file, cached in memory and re-read when it changes on disk."""

    def __init__(self, path: str, *, clock: Callable[[], float] = time.time) -> None:
        self.path = path
        self.clock = clock
        self._keys: dict[int, SessionKey] = {}
        self._ciphers: dict[int, AESGCM] = {}
        self._seen: tuple[int, int, int] | None = None  # inode, size, mtime_ns

    # ---- reading ----------------------------------------------------------------------------

    def _refresh(self) -> None:
        """Re-read the file when it is not the one read last."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            self._keys, self._ciphers, self._seen = {}, {}, None
            return
        seen = (st.st_ino, st.st_size, st.st_mtime_ns)
        if seen == self._seen:
            return
        keys = self._read()
        self._keys = {k.number: k for k in keys}
        self._ciphers = {}
        self._seen = seen

    def _read(self) -> list[SessionKey]:
        fd = os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        with os.fdopen(fd, "rb") as f:
            if os.fstat(f.fileno()).st_mode & 0o077:
                os.fchmod(f.fileno(), 0o600)
                log.warning("%s was readable by others; its mode is now 0600", self.path)
            data = f.read(1 << 20)
        try:
            doc = orjson.loads(data)
            if doc.get("format") != RING_FORMAT:
                raise ValueError("unknown format")
            keys = []
            for item in doc["keys"]:
                secret = base64.urlsafe_b64decode(item["key"] + "=")
                number = item["number"]
                if len(secret) != KEY_BYTES or type(number) is not int or number < 1:
                    raise ValueError("bad key")
                keys.append(SessionKey(number, float(item["created_at"]), secret))
        except (ValueError, KeyError, TypeError, AttributeError, binascii.Error):
            raise SessionStoreError(
                f"{self.path} is not a usable session key ring; sessions sealed under it "
                "cannot be read. Restore it from a backup, or remove it (every session ends)"
            ) from None
        return keys

    def numbers(self) -> list[int]:
        """The key numbers in the ring, oldest first."""
        self._refresh()
        return sorted(self._keys)

    def get(self, number: int) -> SessionKey | None:
        """The key ``number``, or None when the ring does not (or no longer) hold it."""
        if number not in self._keys:
            self._refresh()
        return self._keys.get(number)

    def current(self) -> SessionKey:
        """The newest key, which encrypts; the ring is created with its first key if
        missing."""
        self._refresh()
        if not self._keys:
            self._update(lambda keys, now: keys or [_new_key(1, now)])
        return self._keys[max(self._keys)]

    # ---- changing ---------------------------------------------------------------------------

    def rotate_if_due(self, now: float, every: float, retention: float) -> tuple[int, list[int]]:
        """Add a key when the newest is ``every`` seconds old; drop every key retired (its
        successor created) at least ``retention`` seconds ago. Returns (the current key's
        number, the dropped numbers)."""
        dropped: list[int] = []

        def rotate(keys: list[SessionKey], now: float) -> list[SessionKey]:
            if not keys:
                return [_new_key(1, now)]
            keys = sorted(keys, key=lambda k: k.number)
            if keys[-1].created_at + every <= now:
                keys.append(_new_key(keys[-1].number + 1, now))
            kept = []
            for key, successor in zip(keys, keys[1:], strict=False):
                if successor.created_at + retention <= now:
                    dropped.append(key.number)
                else:
                    kept.append(key)
            return kept + [keys[-1]]

        self._update(rotate, now)
        return max(self._keys), dropped

    def _update(self, change: Callable[[list[SessionKey], float], list[SessionKey]],
                now: float | None = None) -> None:
        """Apply ``change`` to the ring under the lock and write the result atomically."""
        directory = os.path.dirname(self.path) or "."
        lock = os.open(os.path.join(directory, LOCK_FILE),
                       os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX)
            self._seen = None  # another process may have written it while we waited
            self._refresh()
            before = sorted(self._keys.values(), key=lambda k: k.number)
            after = change(list(before), self.clock() if now is None else now)
            if len(after) > MAX_KEYS:
                raise SessionStoreError(f"{self.path}: more than {MAX_KEYS} keys; "
                                        "key_rotation is shorter than it should be")
            if after != before:
                _write_ring(self.path, after)
                self._seen = None
                self._refresh()
        finally:
            os.close(lock)

    # ---- sealing ----------------------------------------------------------------------------

    def seal(self, plaintext: bytes, aad: bytes) -> tuple[int, bytes]:
        """Encrypt under the current key. Returns (key number, blob)."""
        key = self.current()
        return key.number, seal_blob(self._cipher(key), key.number, plaintext, aad)

    def open(self, blob: bytes, aad: bytes) -> bytes | None:
        """The plaintext of ``blob``, or None when its key is gone or it does not
        authenticate (tampered, or moved from another row). An unreadable ring raises
        (SessionStoreError, OSError): that is not the blob's fault."""
        return open_blob(blob, aad, self._cipher_of)

    def _cipher_of(self, number: int) -> AESGCM | None:
        key = self.get(number)
        return None if key is None else self._cipher(key)

    def _cipher(self, key: SessionKey) -> AESGCM:
        cipher = self._ciphers.get(key.number)
        if cipher is None:
            cipher = self._ciphers[key.number] = AESGCM(key.secret)
        return cipher


def seal_blob(cipher: AESGCM, number: int, plaintext: bytes, aad: bytes) -> bytes:
    """A blob ``format | key number | nonce | ciphertext+tag`` of ``plaintext`` under key
    ``number`` (its ``cipher``), the header bound with ``aad`` as associated data."""
    nonce = secrets.token_bytes(NONCE_BYTES)
    header = _HEADER.pack(BLOB_FORMAT, number)
    return header + nonce + cipher.encrypt(nonce, plaintext, header + aad)


def open_blob(blob: bytes, aad: bytes,
              cipher_of: Callable[[int], AESGCM | None]) -> bytes | None:
    """The plaintext of a ``seal_blob`` blob, or None: too short, another format, a key
    number ``cipher_of`` has no cipher for, or it does not authenticate."""
    if len(blob) < _HEADER.size + NONCE_BYTES + 16:
        return None
    fmt, number = _HEADER.unpack_from(blob)
    if fmt != BLOB_FORMAT:
        return None
    cipher = cipher_of(number)
    if cipher is None:
        return None
    nonce = blob[_HEADER.size:_HEADER.size + NONCE_BYTES]
    try:
        return cipher.decrypt(nonce, blob[_HEADER.size + NONCE_BYTES:],
                              blob[:_HEADER.size] + aad)
    except InvalidTag:
        return None


def blob_key_number(blob: bytes) -> int | None:
    """The key number a blob was sealed under (None for a blob too short to have one)."""
    if len(blob) < _HEADER.size:
        return None
    return _HEADER.unpack_from(blob)[1]


def _new_key(number: int, now: float) -> SessionKey:
    return SessionKey(number, now, secrets.token_bytes(KEY_BYTES))


def _write_ring(path: str, keys: list[SessionKey]) -> None:
    """Replace the ring atomically, synced before the rename: a ring lost or left empty by a
    crash would make every session unreadable."""
    doc = {
        "format": RING_FORMAT,
        "keys": [
            {"number": k.number, "created_at": k.created_at,
             "key": base64.urlsafe_b64encode(k.secret).rstrip(b"=").decode()}
            for k in keys
        ],
    }
    replace_file(path, orjson.dumps(doc), 0o600)
