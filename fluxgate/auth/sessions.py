"""The OIDC login session store: SQLite in ``state_dir/oauth2/sessions.db``.

Shared by the master (which creates sessions after the code exchange, rotates their tokens,
ends them at logout and runs ``maintain``), by every worker (which loads a session per
request, touches it, and watches the sessions behind open WebSockets) and by ``fluxctl``.
Each process opens its own ``SessionStore``, after fork. Ending a row ends the session in
every worker at once: workers read the row on every request.

What is stored in clear is what finding and expiring a row needs: the provider (the
middleware's source), ``sub``, the OIDC ``sid``, times, a version and how the session ended.
A row is keyed by the SHA-256 of the session id, never the id. The access, refresh and ID
tokens and the principal's claims are one AES-GCM blob (``auth/session_crypto.py``) bound to
the row's digest and provider, so a blob moved to another row is refused. A blob that does
not open (its key dropped, the row altered) makes the session absent: it is ended with
reason ``undecryptable``, never raised to the caller.

The file, schema and sealing are ``auth/session_db.py``; login transactions and the
back-channel logout replay cache are ``auth/login_state.py``, reached through this store.
Times are unix seconds.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import sqlite3
import time
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, field
from typing import Any

from fluxgate.auth.introspection import oauth2_dir
from fluxgate.auth.login_state import MAX_TRANSACTION_TTL, LoginState, Transaction
from fluxgate.auth.session_crypto import SessionStoreError
from fluxgate.auth.session_db import (
    BUSY_TIMEOUT_MS,
    DB_FILE,
    SessionDatabase,
    new_session,
    session_digest,
    well_formed,
)

__all__ = [
    "END_REASONS", "Session", "SessionChange", "SessionInfo", "SessionStore",
    "SessionStoreError", "Transaction", "session_digest",
]

log = logging.getLogger("fluxgate.sessions")

TOUCH_INTERVAL = 60.0  # last_seen_at is written at most this often per session and process
END_REASONS = frozenset(
    {"logout", "revoked", "invalid_grant", "backchannel", "expired", "undecryptable"}
)
# Rows ended or expired longer ago than this are deleted by ``purge``: kept a while so that
# operators can still see why a session ended.
PURGE_AFTER = 86400.0
MAX_TOUCH_MEMO = 65536

_SESSION_COLUMNS = (
    "id, provider, sub, sid, created_at, last_seen_at, idle_expires_at, absolute_expires_at, "
    "access_expires_at, version, ended_at, end_reason"
)


# ---- what callers get --------------------------------------------------------------------------


@dataclass(frozen=True)
class Session:
    """A live session as ``load`` returns it; tokens and claims never appear in a repr."""

    digest: bytes
    provider: str
    sub: str
    sid: str | None
    version: int
    created_at: int
    last_seen_at: int
    idle_expires_at: int
    absolute_expires_at: int
    access_expires_at: int | None
    tokens: dict[str, Any] = field(repr=False)
    claims: dict[str, Any] = field(repr=False)


@dataclass(frozen=True)
class SessionChange:
    """What a watcher learns about one session from ``changes_since``."""

    digest: bytes
    version: int
    access_expires_at: int | None
    ended_at: int | None
    end_reason: str | None


@dataclass(frozen=True)
class SessionInfo:
    """A session as operators see it: no token, no claim, only a prefix of the digest."""

    digest_prefix: str
    provider: str
    sub: str
    created_at: int
    last_seen_at: int
    idle_expires_at: int
    absolute_expires_at: int
    access_expires_at: int | None
    ended_at: int | None
    end_reason: str | None
    state: str  # active, idle_expired, expired, or the end reason

    def public(self) -> dict[str, object]:
        """The JSON document ``fluxctl oauth2 sessions list --json`` prints."""
        return dataclasses.asdict(self)


# ---- the store ---------------------------------------------------------------------------------


class SessionStore:
    """sessions.db and its key ring. Not thread-safe: one connection, used by one thread."""

    def __init__(self, path: str, *, clock: Callable[[], float] = time.time,
                 busy_timeout_ms: int = BUSY_TIMEOUT_MS,
                 touch_interval: float = TOUCH_INTERVAL) -> None:
        self.path = path
        self.clock = clock
        self.touch_interval = touch_interval
        self._db = SessionDatabase(path, clock=clock, busy_timeout_ms=busy_timeout_ms)
        self.keys = self._db.keys
        self._logins = LoginState(self._db)
        self._touched: dict[bytes, float] = {}  # digest -> when this process last wrote it
        self._watch_state: tuple[int, int] | None = None  # (data_version, own writes)
        self._watch_marker = -1  # the marker changes_since last returned

    @classmethod
    def open(cls, state_dir: str, **kwargs: Any) -> SessionStore:
        """The store of ``state_dir`` (created when missing)."""
        return cls(os.path.join(oauth2_dir(state_dir), DB_FILE), **kwargs)

    @staticmethod
    def exists(state_dir: str) -> bool:
        """Whether ``state_dir`` has a session store (``fluxctl`` does not create one)."""
        return os.path.exists(os.path.join(oauth2_dir(state_dir), DB_FILE))

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> SessionStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- sessions ---------------------------------------------------------------------------

    def create(self, provider: str, sub: str, sid: str | None, tokens: dict[str, Any],
               claims: dict[str, Any], access_expires_at: float | None, idle: float,
               absolute: float) -> str:
        """Store a new session; returns its id (256 random bits, base64url). The id is for
        the caller's cookie only: the store keeps its SHA-256."""
        made = new_session(self.clock(), idle, absolute)
        key_number, blob = self._db.seal(b"session", made.digest, provider,
                                         {"tokens": tokens, "claims": claims})

        def insert() -> None:
            self._db.conn.execute(
                "INSERT INTO sessions (id, provider, sub, sid, created_at, last_seen_at, "
                "idle_expires_at, absolute_expires_at, access_expires_at, idle_seconds, "
                "change_seq, key_number, secrets) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (made.digest, provider, sub, sid, made.now, made.now, made.idle_expires_at,
                 made.absolute_expires_at, _opt_int(access_expires_at), int(idle),
                 self._db.next_change(), key_number, blob),
            )

        self._db.write(insert)
        return made.session_id

    def load(self, session_id: str, now: float | None = None) -> Session | None:
        """The live session with this id, or None: unknown, malformed, ended, idle- or
        absolute-expired, or its secrets do not open (it is then ended, ``undecryptable``)."""
        if not well_formed(session_id):
            return None
        return self.load_digest(session_digest(session_id), now)

    def load_digest(self, digest: bytes, now: float | None = None) -> Session | None:
        """``load`` by the id's SHA-256 (what the master is told by a worker)."""
        now = self.clock() if now is None else now
        row = self._db.conn.execute(
            f"SELECT {_SESSION_COLUMNS}, secrets FROM sessions WHERE id = ?", (digest,)
        ).fetchone()
        if row is None:
            return None
        (_, provider, sub, sid, created, seen, idle_at, absolute_at, access_at, version,
         ended_at, _, blob) = row
        if ended_at is not None or idle_at <= now or absolute_at <= now:
            return None
        try:
            doc = self._db.unseal(b"session", digest, provider, blob)
        except (SessionStoreError, OSError) as exc:  # the ring, not the row: end nothing
            log.error("session %s not loaded: %s", digest.hex()[:12], exc)
            return None
        if doc is None or not isinstance(doc.get("tokens"), dict):
            log.warning("session %s cannot be decrypted (its key was dropped or the row was "
                        "altered): ending it", digest.hex()[:12])
            try:
                self.end(digest, "undecryptable")
            except sqlite3.OperationalError as exc:  # locked: the next load ends it
                log.warning("could not end session %s: %s", digest.hex()[:12], exc)
            return None
        return Session(digest, provider, sub, sid, version, created, seen, idle_at,
                       absolute_at, access_at, doc["tokens"], doc.get("claims") or {})

    def touch(self, digest: bytes, now: float | None = None,
              last_seen_at: float | None = None) -> bool:
        """Record activity: last_seen_at = now and the idle expiry moved (never past the
        absolute one), at most once per ``touch_interval`` per session. Pass the loaded
        session's ``last_seen_at`` to skip a recent one without touching the database; this
        process also remembers its own attempts. Best effort: True when the row was
        written; a database locked past the busy timeout is skipped, not raised."""
        now = self.clock() if now is None else now
        if last_seen_at is not None and 0 <= now - last_seen_at < self.touch_interval:
            return False
        last = self._touched.get(digest)
        if last is not None and 0 <= now - last < self.touch_interval:
            return False
        if len(self._touched) >= MAX_TOUCH_MEMO:
            self._touched.clear()
        self._touched[digest] = now
        try:
            cursor = self._db.conn.execute(
                "UPDATE sessions SET last_seen_at = ?1, "
                "idle_expires_at = MIN(?1 + idle_seconds, absolute_expires_at) "
                "WHERE id = ?2 AND ended_at IS NULL AND last_seen_at <= ?3 "
                "AND idle_expires_at > ?1 AND absolute_expires_at > ?1",
                (int(now), digest, int(now - self.touch_interval)),
            )
        except sqlite3.OperationalError as exc:  # locked past the busy timeout
            log.warning("session touch skipped: %s", exc)
            return False
        self._db.writes += 1
        return cursor.rowcount == 1

    def update_tokens(self, digest: bytes, expected_version: int, tokens: dict[str, Any],
                      access_expires_at: float | None,
                      claims: dict[str, Any] | None = None) -> bool:
        """Compare-and-set the session's tokens: only when its version is still
        ``expected_version`` and it is live. ``tokens`` members replace the stored ones (a
        member set to None is removed; members not given are kept, e.g. a refresh token the
        server did not rotate); ``claims``, when given, replace the claims. The version goes
        up by one. Returns False when another writer won, or the session ended or expired."""
        now = self.clock()

        def swap() -> bool:
            row = self._db.conn.execute(
                "SELECT provider, version, ended_at, idle_expires_at, absolute_expires_at, "
                "secrets FROM sessions WHERE id = ?", (digest,)
            ).fetchone()
            if row is None:
                return False
            provider, version, ended_at, idle_at, absolute_at, blob = row
            live = ended_at is None and idle_at > now and absolute_at > now
            if version != expected_version or not live:
                return False
            doc = self._db.unseal(b"session", digest, provider, blob)
            if doc is None:
                self._end_rows("id = ?", (digest,), "undecryptable", now)
                return False
            merged = {**doc.get("tokens", {}), **tokens}
            new_doc = {"tokens": {k: v for k, v in merged.items() if v is not None},
                       "claims": doc.get("claims", {}) if claims is None else claims}
            key_number, sealed = self._db.seal(b"session", digest, provider, new_doc)
            cursor = self._db.conn.execute(
                "UPDATE sessions SET secrets = ?, key_number = ?, access_expires_at = ?, "
                "version = version + 1, change_seq = ? WHERE id = ? AND version = ?",
                (sealed, key_number, _opt_int(access_expires_at), self._db.next_change(),
                 digest, expected_version),
            )
            return cursor.rowcount == 1

        return self._db.write(swap)

    def end(self, digest: bytes, reason: str) -> bool:
        """End one session (its secrets are erased). False when it had already ended or
        does not exist."""
        _check_reason(reason)
        return self._db.write(self._end_rows, "id = ?", (digest,), reason, self.clock()) == 1

    def end_matching(self, provider: str | None, *, sub: str | None = None,
                     sid: str | None = None, reason: str = "backchannel") -> int:
        """End the live sessions of ``provider`` (of any provider when None) with this
        ``sub`` and/or ``sid``. For OIDC Back-Channel Logout 1.0 §2.7 pass what the logout
        token names: its sid ends that session, its sub alone every session of the subject.
        Returns how many ended."""
        _check_reason(reason)
        if sub is None and sid is None:
            raise SessionStoreError("ending sessions by match needs a sub or a sid")
        where, params = ["1"], []
        for column, value in (("provider", provider), ("sub", sub), ("sid", sid)):
            if value is not None:
                where.append(f"{column} = ?")
                params.append(value)
        return self._db.write(self._end_rows, " AND ".join(where), params, reason, self.clock())

    def end_all(self, reason: str = "revoked", provider: str | None = None) -> int:
        """End every live session (of ``provider`` when given). Returns how many ended."""
        _check_reason(reason)
        where, params = ("provider = ?", (provider,)) if provider is not None else ("1", ())
        return self._db.write(self._end_rows, where, params, reason, self.clock())

    def _end_rows(self, where: str, params: Iterable[object], reason: str, now: float) -> int:
        cursor = self._db.conn.execute(
            "UPDATE sessions SET ended_at = ?, end_reason = ?, secrets = NULL, change_seq = ? "
            f"WHERE ended_at IS NULL AND ({where})",
            (int(now), reason, self._db.next_change(), *params),
        )
        return cursor.rowcount

    # ---- watching ---------------------------------------------------------------------------

    def change_marker(self) -> int:
        """The current change number: pass it to the first ``changes_since``."""
        return self._db.change_marker()

    def changes_since(self, marker: int,
                      digests: Collection[bytes]) -> tuple[int, list[SessionChange]]:
        """Which of ``digests`` changed version or ended after ``marker``. Returns (the new
        marker, the changes). Cheap enough to call every 250 ms: when no connection has
        committed anything since the last call (``PRAGMA data_version``), no table is read."""
        if not digests:
            return marker, []
        state = (self._db.conn.execute("PRAGMA data_version").fetchone()[0], self._db.writes)
        if state == self._watch_state and marker == self._watch_marker:
            return marker, []
        rows = self._db.conn.execute(
            "SELECT id, version, access_expires_at, ended_at, end_reason, change_seq "
            "FROM sessions WHERE change_seq > ? ORDER BY change_seq", (marker,)
        ).fetchall()
        newest = max([marker] + [row[5] for row in rows])
        wanted = digests if isinstance(digests, (set, frozenset, dict)) else set(digests)
        changes = [SessionChange(bytes(r[0]), r[1], r[2], r[3], r[4])
                   for r in rows if bytes(r[0]) in wanted]
        self._watch_state, self._watch_marker = state, newest
        return newest, changes

    # ---- the node's copy of a shared store (cluster mode) -----------------------------------

    def put_copy(self, session: Session, idle_seconds: int) -> bool:
        """Insert or refresh this node's copy of a session whose authoritative record is
        elsewhere (Redis), resealed under this node's ring. A copy that ended here stays
        ended (an end is final; ``ended_since`` carries it to the record). Returns False
        then."""
        key_number, blob = self._db.seal(b"session", session.digest, session.provider,
                                         {"tokens": session.tokens, "claims": session.claims})

        def upsert() -> bool:
            row = self._db.conn.execute(
                "SELECT version, ended_at, access_expires_at FROM sessions WHERE id = ?",
                (session.digest,)).fetchone()
            values = (session.last_seen_at, session.idle_expires_at,
                      session.absolute_expires_at, session.access_expires_at, session.version,
                      key_number, blob)
            if row is None:
                self._db.conn.execute(
                    "INSERT INTO sessions (id, provider, sub, sid, created_at, idle_seconds, "
                    "last_seen_at, idle_expires_at, absolute_expires_at, access_expires_at, "
                    "version, key_number, secrets, change_seq) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (session.digest, session.provider, session.sub, session.sid,
                     session.created_at, idle_seconds, *values, self._db.next_change()))
                return True
            if row[1] is not None:
                return False
            changed = (row[0], row[2]) != (session.version, session.access_expires_at)
            self._db.conn.execute(
                "UPDATE sessions SET last_seen_at = MAX(last_seen_at, ?), "
                "idle_expires_at = MAX(idle_expires_at, ?), absolute_expires_at = ?, "
                "access_expires_at = ?, version = ?, key_number = ?, secrets = ?, "
                "change_seq = CASE WHEN ? THEN ? ELSE change_seq END WHERE id = ?",
                (*values, changed, self._db.next_change() if changed else 0, session.digest))
            return True

        return self._db.write(upsert)

    def ended_since(self, marker: int) -> tuple[int, list[tuple[bytes, str]]]:
        """Sessions ended here after ``marker`` (a logout, ``fluxctl``): (the new marker,
        [(digest, reason)]), for the shared store to learn them."""
        rows = self._db.conn.execute(
            "SELECT id, end_reason, change_seq FROM sessions WHERE change_seq > ? "
            "AND ended_at IS NOT NULL ORDER BY change_seq", (marker,)).fetchall()
        newest = max([marker, self.change_marker()])
        return newest, [(bytes(r[0]), r[1] or "revoked") for r in rows]

    def seen_since(self, since: float) -> list[tuple[bytes, int]]:
        """Live sessions used here after ``since``: [(digest, last_seen_at)]."""
        rows = self._db.conn.execute(
            "SELECT id, last_seen_at FROM sessions WHERE last_seen_at > ? "
            "AND ended_at IS NULL", (int(since),))
        return [(bytes(r[0]), r[1]) for r in rows]

    def live_copies(self, now: float | None = None) -> list[tuple[bytes, int, int]]:
        """The live sessions here: [(digest, version, idle_expires_at)]."""
        now = self.clock() if now is None else now
        rows = self._db.conn.execute(
            "SELECT id, version, idle_expires_at FROM sessions WHERE ended_at IS NULL "
            "AND absolute_expires_at > ?", (now,))
        return [(bytes(r[0]), r[1], r[2]) for r in rows]

    def extend_idle(self, digest: bytes, idle_expires_at: int, last_seen_at: int) -> None:
        """Activity seen on another node: the idle expiry moves here too."""
        self._db.write(lambda: self._db.conn.execute(
            "UPDATE sessions SET idle_expires_at = MAX(idle_expires_at, ?), "
            "last_seen_at = MAX(last_seen_at, ?) WHERE id = ? AND ended_at IS NULL",
            (idle_expires_at, last_seen_at, digest)))

    def has_copy(self, digest: bytes) -> bool:
        """Whether this node holds a row for the session, live, ended or expired."""
        return self._db.conn.execute("SELECT 1 FROM sessions WHERE id = ?",
                                     (digest,)).fetchone() is not None

    def mark_synced(self, when: float, ends_marker: int) -> None:
        """Record a complete comparison of the copies here with the shared store at
        ``when``, which carried the ends made here up to ``ends_marker`` there."""
        self._db.write(lambda: self._db.conn.executemany(
            "INSERT INTO meta VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = "
            "excluded.value", (("synced_at", int(when)), ("ends_pushed", ends_marker))))

    def synced_at(self) -> int:
        """When the copies here were last compared with the shared store (0: never)."""
        return self._meta("synced_at", 0)

    def ends_pushed(self) -> int:
        """The change marker up to which ends made here reached the shared store (the
        current marker when they never had to: a node new to the cluster)."""
        return self._meta("ends_pushed", self.change_marker())

    def _meta(self, key: str, default: int) -> int:
        row = self._db.conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return default if row is None else row[0]

    # ---- operators --------------------------------------------------------------------------

    def list(self, provider: str | None = None, sub: str | None = None, *,
             include_ended: bool = False, now: float | None = None) -> list[SessionInfo]:
        """Sessions for operators, oldest first; by default only live ones."""
        now = self.clock() if now is None else now
        where, params = ["1"], []
        if provider is not None:
            where.append("provider = ?")
            params.append(provider)
        if sub is not None:
            where.append("sub = ?")
            params.append(sub)
        if not include_ended:
            where.append("ended_at IS NULL AND idle_expires_at > ? AND absolute_expires_at > ?")
            params += [now, now]
        rows = self._db.conn.execute(
            f"SELECT {_SESSION_COLUMNS} FROM sessions WHERE {' AND '.join(where)} "
            "ORDER BY created_at, rowid", params,
        )
        return [_info(row, now) for row in rows]

    def digests_with_prefix(self, hex_prefix: str, provider: str | None = None, *,
                            now: float | None = None) -> list[bytes]:
        """The live sessions (of ``provider`` when given) whose digest starts with
        ``hex_prefix``, the form ``list`` shows them in."""
        now = self.clock() if now is None else now
        prefix = hex_prefix.lower()
        if not prefix or len(prefix) > 64 or any(c not in "0123456789abcdef" for c in prefix):
            raise SessionStoreError("a session id prefix is hex digits")
        rows = self._db.conn.execute(
            "SELECT id FROM sessions WHERE substr(lower(hex(id)), 1, ?1) = ?2 "
            "AND (?3 IS NULL OR provider = ?3) "
            "AND ended_at IS NULL AND idle_expires_at > ?4 AND absolute_expires_at > ?4",
            (len(prefix), prefix, provider, now),
        )
        return [bytes(r[0]) for r in rows]

    def purge(self, now: float | None = None, *, keep: float = PURGE_AFTER) -> int:
        """Delete sessions ended or expired more than ``keep`` seconds ago, expired login
        transactions and expired jti records. Returns how many sessions went."""
        now = self.clock() if now is None else now
        cutoff = int(now - keep)

        def delete() -> int:
            n = self._db.conn.execute(
                "DELETE FROM sessions WHERE ended_at < ?1 "
                "OR MIN(idle_expires_at, absolute_expires_at) < ?1", (cutoff,)
            ).rowcount
            self._logins.purge(now)
            return n

        return self._db.write(delete)

    def maintain(self, *, key_rotation: float, retention: float,
                 now: float | None = None) -> dict[str, int]:
        """The master's periodic work: rotate the key ring when due, drop keys retired more
        than ``retention`` (the longest absolute lifetime) ago, end the sessions they still
        sealed, and purge. Returns counts for the log."""
        if not (key_rotation > 0 and retention >= 0):
            raise SessionStoreError("key_rotation must be positive, retention not negative")
        now = self.clock() if now is None else now
        # A login transaction is sealed too and may live MAX_TRANSACTION_TTL.
        retention = max(retention, MAX_TRANSACTION_TTL)
        current, dropped = self.keys.rotate_if_due(now, key_rotation, retention)
        orphaned = 0
        if dropped:
            marks = ",".join("?" * len(dropped))
            orphaned = self._db.write(self._end_rows, f"key_number IN ({marks})", dropped,
                                      "undecryptable", now)
        return {"key": current, "keys_dropped": len(dropped), "sessions_orphaned": orphaned,
                "purged": self.purge(now)}

    # ---- login transactions and the logout replay cache --------------------------------------

    def begin_transaction(self, provider: str, state: str, nonce: str, code_verifier: str,
                          return_to: str, ttl: float = 600.0) -> str:
        """Store a login transaction; returns its id (for the transaction cookie)."""
        return self._logins.begin(provider, state, nonce, code_verifier, return_to, ttl)

    def take_transaction(self, transaction_id: str,
                         now: float | None = None) -> Transaction | None:
        """The transaction, deleted as it is read: single use across every process; None
        when unknown, malformed, already taken, expired or undecryptable."""
        return self._logins.take(transaction_id, now)

    def remember_jti(self, provider: str, jti: str, expires_at: float) -> bool:
        """Record a back-channel logout token's ``jti`` until ``expires_at`` (in the future);
        False when already recorded: a replay."""
        return self._logins.remember_jti(provider, jti, expires_at)


def _check_reason(reason: str) -> None:
    if reason not in END_REASONS:
        raise SessionStoreError(f"unknown end reason {reason!r}")


def _opt_int(value: float | None) -> int | None:
    return None if value is None else int(value)


def _info(row: tuple, now: float) -> SessionInfo:
    (digest, provider, sub, _sid, created, seen, idle_at, absolute_at, access_at, _version,
     ended_at, end_reason) = row
    if ended_at is not None:
        state = end_reason or "ended"
    elif absolute_at <= now:
        state = "expired"
    elif idle_at <= now:
        state = "idle_expired"
    else:
        state = "active"
    return SessionInfo(bytes(digest).hex()[:12], provider, sub, created, seen, idle_at,
                       absolute_at, access_at, ended_at, end_reason, state)
