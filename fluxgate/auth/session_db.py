"""The session store's file: ``state_dir/oauth2/sessions.db``, its schema and its sealing.

One ``SessionDatabase`` per process (a SQLite connection must not cross a fork). The
directory is 0700 and the database 0600 (created so before SQLite opens it: the -wal and
-shm files take the database file's permissions). WAL mode and a busy timeout let the
master, every worker and ``fluxctl`` share the file; every change is one ``BEGIN
IMMEDIATE`` transaction. The schema is versioned with ``PRAGMA user_version``:
``MIGRATIONS[i]`` takes version i to i+1, applied in order at open.

Secrets are sealed as JSON documents by the key ring (``auth/session_crypto.py``) with
associated data ``kind | 0 | row digest | provider``: a blob only opens in the row, and the
kind of row, it was written for.
"""

from __future__ import annotations

import base64
import hashlib
import os
import secrets
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson

from fluxgate.auth.session_crypto import KEYS_FILE, KeyRing, SessionStoreError

DB_FILE = "sessions.db"
BUSY_TIMEOUT_MS = 5000
MMAP_BYTES = 64 << 20
ID_BYTES = 32  # session and transaction ids: 256 random bits
ID_CHARS = 43  # their base64url length, unpadded

MIGRATIONS: tuple[str, ...] = (
    # 0 -> 1
    """
    CREATE TABLE sessions (                  -- a rowid table: rows of kilobytes
        id BLOB NOT NULL UNIQUE,             -- SHA-256 of the session id (never the id)
        provider TEXT NOT NULL,              -- the middleware's source
        sub TEXT NOT NULL,
        sid TEXT,                            -- OIDC session id, for back-channel logout
        created_at INTEGER NOT NULL,
        last_seen_at INTEGER NOT NULL,
        idle_seconds INTEGER NOT NULL,
        idle_expires_at INTEGER NOT NULL,
        absolute_expires_at INTEGER NOT NULL,
        access_expires_at INTEGER,
        version INTEGER NOT NULL DEFAULT 1,  -- +1 on each token update
        change_seq INTEGER NOT NULL,         -- meta.change_seq when last updated or ended
        key_number INTEGER NOT NULL,         -- the ring key that sealed the secrets
        ended_at INTEGER,
        end_reason TEXT,
        secrets BLOB                         -- AES-GCM, NULL once ended
    );
    CREATE INDEX sessions_by_sub ON sessions(provider, sub);
    CREATE INDEX sessions_by_sid ON sessions(provider, sid) WHERE sid IS NOT NULL;
    CREATE INDEX sessions_by_change ON sessions(change_seq);
    CREATE INDEX sessions_by_key ON sessions(key_number) WHERE ended_at IS NULL;
    CREATE TABLE login_transactions (
        id BLOB PRIMARY KEY,                 -- SHA-256 of the transaction id
        provider TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        expires_at INTEGER NOT NULL,
        secrets BLOB NOT NULL                -- state, nonce, verifier, return path
    ) WITHOUT ROWID;
    CREATE TABLE seen_jti (
        provider TEXT NOT NULL,
        jti BLOB NOT NULL,                   -- SHA-256 of the logout token's jti
        expires_at INTEGER NOT NULL,
        PRIMARY KEY (provider, jti)
    ) WITHOUT ROWID;
    CREATE TABLE meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
    INSERT INTO meta VALUES ('change_seq', 0)
    """,
)


def session_digest(session_id: str) -> bytes:
    """SHA-256 of a session (or transaction) id: the only form of it that is stored."""
    return hashlib.sha256(session_id.encode("ascii", "replace")).digest()


def new_id() -> str:
    """A fresh session or transaction id: 256 random bits, base64url without padding."""
    return base64.urlsafe_b64encode(secrets.token_bytes(ID_BYTES)).rstrip(b"=").decode()


@dataclass(frozen=True)
class NewSession:
    """The id and times of a session being created (``new_session``)."""

    session_id: str = field(repr=False)
    digest: bytes
    now: int
    idle_expires_at: int
    absolute_expires_at: int


def new_session(now: float, idle: float, absolute: float) -> NewSession:
    """A fresh id, its digest and the expiries of a session created at ``now``;
    SessionStoreError for lifetimes that are not positive."""
    if not (idle > 0 and absolute > 0):
        raise SessionStoreError("session lifetimes must be positive")
    session_id = new_id()
    start = int(now)
    absolute_at = start + int(absolute)
    return NewSession(session_id, session_digest(session_id), start,
                      min(start + int(idle), absolute_at), absolute_at)


def well_formed(value: object) -> bool:
    """Whether ``value`` could be an id ``new_id`` made (junk cookies stop here)."""
    return (isinstance(value, str) and len(value) == ID_CHARS and value.isascii()
            and all(c.isalnum() or c in "-_" for c in value))


class SessionDatabase:
    """The connection, the write discipline, the change counter and the key ring."""

    def __init__(self, path: str, *, clock: Callable[[], float] = time.time,
                 busy_timeout_ms: int = BUSY_TIMEOUT_MS) -> None:
        self.path = path
        self.clock = clock
        directory = os.path.dirname(path) or "."
        os.makedirs(directory, mode=0o700, exist_ok=True)
        if os.stat(directory).st_mode & 0o077:
            os.chmod(directory, 0o700)
        try:
            os.close(os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600))
        except FileExistsError:
            if os.stat(path).st_mode & 0o077:
                os.chmod(path, 0o600)
        self.keys = KeyRing(os.path.join(directory, KEYS_FILE), clock=clock)
        self.conn = sqlite3.connect(path, timeout=busy_timeout_ms / 1000, isolation_level=None)
        self.writes = 0  # commits by this connection (PRAGMA data_version does not see them)
        try:
            self.conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
            mode = self.conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if mode.lower() != "wal":
                raise SessionStoreError(f"{path}: cannot switch to WAL mode (got {mode})")
            self.conn.execute("PRAGMA synchronous = NORMAL")  # durable at checkpoints
            # Workers read a row per request: mapped pages spare a read() per page.
            self.conn.execute(f"PRAGMA mmap_size = {MMAP_BYTES}")
            self._migrate()
        except BaseException:
            self.conn.close()
            raise

    def close(self) -> None:
        self.conn.close()

    def _migrate(self) -> None:
        version = self.conn.execute("PRAGMA user_version").fetchone()[0]
        if version > len(MIGRATIONS):
            raise SessionStoreError(
                f"{self.path} has schema version {version}, newer than this FluxGate "
                f"({len(MIGRATIONS)}); upgrade FluxGate"
            )
        if version == len(MIGRATIONS):
            return

        def migrate() -> None:
            current = self.conn.execute("PRAGMA user_version").fetchone()[0]  # under the lock
            for number in range(current, len(MIGRATIONS)):
                for statement in MIGRATIONS[number].split(";"):
                    if statement.strip():
                        self.conn.execute(statement)
                self.conn.execute(f"PRAGMA user_version = {number + 1}")

        self.write(migrate)

    @property
    def schema_version(self) -> int:
        return self.conn.execute("PRAGMA user_version").fetchone()[0]

    def write(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run ``fn(*args)`` in one ``BEGIN IMMEDIATE`` transaction; returns its result."""
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            result = fn(*args)
            self.conn.execute("COMMIT")
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        self.writes += 1
        return result

    def next_change(self) -> int:
        """The next change number (call inside ``write``)."""
        self.conn.execute("UPDATE meta SET value = value + 1 WHERE key = 'change_seq'")
        return self.change_marker()

    def change_marker(self) -> int:
        """The last change number handed out."""
        return self.conn.execute("SELECT value FROM meta WHERE key = 'change_seq'").fetchone()[0]

    # ---- sealing ----------------------------------------------------------------------------

    def seal(self, kind: bytes, digest: bytes, provider: str,
             doc: dict[str, Any]) -> tuple[int, bytes]:
        """Encrypt ``doc`` for the row (kind, digest, provider). Returns (key number, blob)."""
        return seal_document(self.keys, kind, digest, provider, doc)

    def unseal(self, kind: bytes, digest: bytes, provider: str,
               blob: bytes | None) -> dict[str, Any] | None:
        """The document sealed in ``blob`` for that row, or None when it does not open."""
        return unseal_document(self.keys, kind, digest, provider, blob)


class _Ring(Protocol):
    def seal(self, plaintext: bytes, aad: bytes) -> tuple[int, bytes]: ...

    def open(self, blob: bytes, aad: bytes) -> bytes | None: ...


def _aad(kind: bytes, digest: bytes, provider: str) -> bytes:
    return kind + b"\0" + digest + provider.encode("utf-8", "surrogatepass")


def seal_document(ring: _Ring, kind: bytes, digest: bytes, provider: str,
                  doc: dict[str, Any]) -> tuple[int, bytes]:
    """Encrypt ``doc`` under ``ring`` (a file or derived key ring) for the record (kind,
    digest, provider). Returns (key number, blob)."""
    return ring.seal(orjson.dumps(doc), _aad(kind, digest, provider))


def unseal_document(ring: _Ring, kind: bytes, digest: bytes, provider: str,
                    blob: bytes | None) -> dict[str, Any] | None:
    """The document sealed in ``blob`` for that record, or None when it does not open."""
    if not isinstance(blob, bytes):  # NULL once ended, or a row written by hand
        return None
    plain = ring.open(blob, _aad(kind, digest, provider))
    if plain is None:
        return None
    try:
        doc = orjson.loads(plain)
    except orjson.JSONDecodeError:
        return None
    return doc if isinstance(doc, dict) else None
