"""The keys that encrypt login sessions in Redis, derived from ``cluster.session_secret``.

Every node must open a session any other node sealed, so the key ring cannot be a file of
one node. Rather than keep random keys in Redis (wrapped by yet another secret, and lost
with a Redis restarted empty), each key is derived: key *n* is HKDF-SHA256 (RFC 5869) of
the shared secret with the key number in its ``info``. The number is the rotation period
the key was made for (``unix time // key_rotation + 1``), so every node encrypts under the
same current key without talking to the others, and the blob carries the number that
opens it. A key is refused once it has been retired (its successor's period began) for
``retention`` seconds, as the file ring drops it: a blob older than the longest session
cannot be opened even by a node that still has the secret.

Blobs have the file ring's format (``auth/session_crypto.py``): ``format | key number |
nonce | ciphertext+tag``, with the caller's associated data naming the record. Changing
the secret ends every session (none opens any more): users sign in again.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from fluxgate.auth.session_crypto import KEY_BYTES, SessionStoreError, open_blob, seal_blob

_SALT = b"fluxgate cluster session keys v1"
MAX_CIPHERS = 64


class DerivedKeyRing:
    """Seal and open session blobs under keys derived from one shared secret."""

    def __init__(self, secret: str, *, rotation: float, retention: float,
                 clock: Callable[[], float] = time.time) -> None:
        if len(secret.strip()) < 32:
            raise SessionStoreError("cluster.session_secret must be at least 32 characters")
        if not (rotation > 0 and retention >= 0):
            raise SessionStoreError("key_rotation must be positive, retention not negative")
        self._secret = secret.encode("utf-8", "surrogatepass")
        self.rotation = rotation
        self.retention = retention
        self.clock = clock
        self._ciphers: dict[int, AESGCM] = {}

    def __repr__(self) -> str:
        return f"DerivedKeyRing(rotation={self.rotation}, retention={self.retention})"

    def current_number(self, now: float | None = None) -> int:
        """The number of the key that encrypts now."""
        now = self.clock() if now is None else now
        return int(now // self.rotation) + 1

    def usable(self, number: int, now: float | None = None) -> bool:
        """Whether key ``number`` may open a blob now: not retired for longer than the
        retention, and not from a period more than one ahead (another node's clock)."""
        now = self.clock() if now is None else now
        current = self.current_number(now)
        retired_at = number * self.rotation  # when key number + 1 took over
        return 1 <= number <= current + 1 and (number >= current
                                               or retired_at + self.retention > now)

    def seal(self, plaintext: bytes, aad: bytes) -> tuple[int, bytes]:
        """Encrypt under the current key. Returns (key number, blob)."""
        number = self.current_number()
        return number, seal_blob(self._cipher(number), number, plaintext, aad)

    def open(self, blob: bytes, aad: bytes) -> bytes | None:
        """The plaintext of ``blob``, or None: too short, another format, a key retired
        past the retention, or it does not authenticate (tampered, moved, other secret)."""
        if not isinstance(blob, bytes):
            return None
        return open_blob(blob, aad, self._usable_cipher)

    def _usable_cipher(self, number: int) -> AESGCM | None:
        return self._cipher(number) if self.usable(number) else None

    def _cipher(self, number: int) -> AESGCM:
        cipher = self._ciphers.get(number)
        if cipher is None:
            if len(self._ciphers) >= MAX_CIPHERS:
                self._ciphers.clear()
            key = HKDF(algorithm=hashes.SHA256(), length=KEY_BYTES, salt=_SALT,
                       info=b"fluxgate session key %d" % number).derive(self._secret)
            cipher = self._ciphers[number] = AESGCM(key)
        return cipher
