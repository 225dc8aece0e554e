"""Single-use login state in the session store: code-flow transactions and logout ``jti``s.

A login transaction (``state``, OIDC ``nonce``, PKCE ``code_verifier``, the return path)
is sealed like session tokens and keyed by the SHA-256 of its id (the transaction
cookie's value). ``take`` deletes and returns it in one statement (``DELETE … RETURNING``,
SQLite 3.35+; older SQLite does a select and a delete under the write lock), so of any
number of workers presenting the same callback, exactly one gets it.

Back-channel logout tokens carry a ``jti`` (OIDC Back-Channel Logout 1.0 §2.4); a token
seen twice is a replay. ``remember_jti`` keeps its SHA-256 per provider until it expires.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import sqlite3
from dataclasses import dataclass, field

from fluxgate.auth.session_crypto import SessionStoreError
from fluxgate.auth.session_db import SessionDatabase, new_id, session_digest, well_formed

MAX_TRANSACTION_TTL = 3600.0
_RETURNING = sqlite3.sqlite_version_info >= (3, 35, 0)


@dataclass(frozen=True)
class Transaction:
    """A login transaction as ``take`` returns it (once); secrets never appear in a repr."""

    provider: str
    created_at: int
    expires_at: int
    state: str = field(repr=False)
    nonce: str = field(repr=False)
    code_verifier: str = field(repr=False)
    return_to: str

    def state_matches(self, state: str) -> bool:
        """Constant-time comparison with the ``state`` the callback carries."""
        return hmac.compare_digest(self.state.encode("utf-8", "surrogatepass"),
                                   state.encode("utf-8", "surrogatepass"))


class LoginState:
    """Transactions and the jti replay cache, on a ``SessionDatabase``."""

    def __init__(self, db: SessionDatabase) -> None:
        self.db = db

    def begin(self, provider: str, state: str, nonce: str, code_verifier: str,
              return_to: str, ttl: float = 600.0) -> str:
        """Store a login transaction; returns its id (for the transaction cookie)."""
        if not 0 < ttl <= MAX_TRANSACTION_TTL:
            raise SessionStoreError(
                f"a login transaction lives at most {MAX_TRANSACTION_TTL:.0f} s")
        transaction_id = new_id()
        digest = session_digest(transaction_id)
        now = int(self.db.clock())
        _, blob = self.db.seal(b"transaction", digest, provider, {
            "state": state, "nonce": nonce, "code_verifier": code_verifier,
            "return_to": return_to,
        })
        self.db.write(lambda: self.db.conn.execute(
            "INSERT INTO login_transactions VALUES (?, ?, ?, ?, ?)",
            (digest, provider, now, now + math.ceil(ttl), blob),
        ))
        return transaction_id

    def take(self, transaction_id: str, now: float | None = None) -> Transaction | None:
        """The transaction, deleted in the same statement: a second take (by any process)
        gets None, as does an unknown, malformed, expired or undecryptable one."""
        if not well_formed(transaction_id):
            return None
        now = self.db.clock() if now is None else now
        digest = session_digest(transaction_id)
        conn = self.db.conn
        if _RETURNING:
            row = self.db.write(lambda: conn.execute(
                "DELETE FROM login_transactions WHERE id = ? "
                "RETURNING provider, created_at, expires_at, secrets", (digest,)
            ).fetchone())
        else:
            def select_and_delete() -> tuple | None:
                found = conn.execute(
                    "SELECT provider, created_at, expires_at, secrets "
                    "FROM login_transactions WHERE id = ?", (digest,)
                ).fetchone()
                conn.execute("DELETE FROM login_transactions WHERE id = ?", (digest,))
                return found

            row = self.db.write(select_and_delete)
        if row is None:
            return None
        provider, created, expires, blob = row
        if expires <= now:
            return None
        try:
            doc = self.db.unseal(b"transaction", digest, provider, blob)
        except (SessionStoreError, OSError):  # an unreadable key ring: the login starts over
            return None
        members = ("state", "nonce", "code_verifier", "return_to")
        if doc is None or not all(isinstance(doc.get(m), str) for m in members):
            return None
        return Transaction(provider, created, expires, *(doc[m] for m in members))

    def remember_jti(self, provider: str, jti: str, expires_at: float) -> bool:
        """Record a logout token's ``jti`` until ``expires_at``. False when it is already
        recorded and not yet expired: a replay."""
        now = self.db.clock()
        digest = hashlib.sha256(jti.encode("utf-8", "surrogatepass")).digest()
        cursor = self.db.write(lambda: self.db.conn.execute(
            "INSERT INTO seen_jti VALUES (?, ?, ?) ON CONFLICT (provider, jti) DO UPDATE "
            "SET expires_at = excluded.expires_at WHERE seen_jti.expires_at <= ?",
            (provider, digest, math.ceil(expires_at), now),
        ))
        return cursor.rowcount == 1

    def purge(self, now: float) -> None:
        """Delete expired transactions and jti records (call inside ``write``)."""
        self.db.conn.execute("DELETE FROM login_transactions WHERE expires_at <= ?", (now,))
        self.db.conn.execute("DELETE FROM seen_jti WHERE expires_at <= ?", (now,))
