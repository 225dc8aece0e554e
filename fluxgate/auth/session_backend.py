"""What the master's login (``master/login.py``) needs of a session store, and the
embedded one.

Two stores implement ``SessionBackend``: ``LocalSessions`` here (SQLite in ``state_dir``,
one node) and ``ClusterSessions`` (``cluster/session_sync.py``: Redis holds the records,
each node keeps a copy its workers read). The master picks one by ``store``. Workers never
use this interface: they read the node's SQLite file (``auth/sessions.py``) and ask the
master for anything else, so no request waits on Redis on a worker's loop.

Every method may raise ``StoreUnavailable`` when the shared store cannot be asked; the
login answers that as "unavailable" (a 503 page, never a 500).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, Protocol

from fluxgate.auth.login_state import Transaction
from fluxgate.auth.sessions import Session, SessionStore


class StoreUnavailable(Exception):
    """The shared session store did not answer in time (down, slow, partitioned)."""


class SessionBackend(Protocol):
    """The session operations of the login, wherever the sessions live."""

    async def create(self, provider: str, sub: str, sid: str | None, tokens: dict[str, Any],
                     claims: dict[str, Any], access_expires_at: float | None, idle: float,
                     absolute: float) -> str:
        """Store a new session; returns its id (for the cookie only)."""
        ...

    async def load(self, session_id: str, now: float | None = None, *,
                   authoritative: bool = False) -> Session | None:
        """The live session with this id, as the authoritative record has it. A store that
        keeps copies may answer from its copy when the record cannot be read, unless
        ``authoritative`` (a refresh must never present a stale refresh token)."""
        ...

    def refresh_lock(self, digest: bytes, hold: float) -> Any:
        """An async context manager held while a session's tokens are refreshed: one
        refresh at a time per session across every process that refreshes."""
        ...

    async def update_tokens(self, digest: bytes, expected_version: int,
                            tokens: dict[str, Any], access_expires_at: float | None) -> bool:
        """Compare-and-set the session's tokens on its version."""
        ...

    async def end(self, digest: bytes, reason: str) -> bool:
        """End one session everywhere."""
        ...

    async def end_matching(self, provider: str, *, sub: str | None, sid: str | None,
                           reason: str) -> int:
        """End the sessions a back-channel logout names; returns how many ended."""
        ...

    async def fetch(self, session_id: str) -> bool:
        """Make this node's copy of the session current; whether it is live."""
        ...

    async def begin_transaction(self, provider: str, state: str, nonce: str,
                                code_verifier: str, return_to: str, ttl: float) -> str:
        """Store a login transaction; returns its id."""
        ...

    async def take_transaction(self, transaction_id: str) -> Transaction | None:
        """The transaction, deleted as it is read (single use)."""
        ...

    async def remember_jti(self, provider: str, jti: str, expires_at: float) -> bool:
        """Record a logout token's jti; False for a replay."""
        ...

    def maintain(self, *, key_rotation: float, retention: float) -> dict[str, int]:
        """Periodic upkeep of the node's files (key ring rotation, purge)."""
        ...

    async def close(self) -> None: ...


class LocalSessions:
    """``SessionBackend`` on the node's SQLite store: one master, so one loop already
    makes a refresh single-flight and the lock is nothing."""

    def __init__(self, store: SessionStore) -> None:
        self.store = store

    async def create(self, provider: str, sub: str, sid: str | None, tokens: dict[str, Any],
                     claims: dict[str, Any], access_expires_at: float | None, idle: float,
                     absolute: float) -> str:
        return self.store.create(provider, sub, sid, tokens, claims, access_expires_at,
                                 idle, absolute)

    async def load(self, session_id: str, now: float | None = None, *,
                   authoritative: bool = False) -> Session | None:
        return self.store.load(session_id, now)

    @asynccontextmanager
    async def refresh_lock(self, digest: bytes, hold: float) -> AsyncIterator[None]:
        yield

    async def update_tokens(self, digest: bytes, expected_version: int,
                            tokens: dict[str, Any], access_expires_at: float | None) -> bool:
        return self.store.update_tokens(digest, expected_version, tokens, access_expires_at)

    async def end(self, digest: bytes, reason: str) -> bool:
        return self.store.end(digest, reason)

    async def end_matching(self, provider: str, *, sub: str | None, sid: str | None,
                           reason: str) -> int:
        return self.store.end_matching(provider, sub=sub, sid=sid, reason=reason)

    async def fetch(self, session_id: str) -> bool:
        return self.store.load(session_id) is not None

    async def begin_transaction(self, provider: str, state: str, nonce: str,
                                code_verifier: str, return_to: str, ttl: float) -> str:
        return self.store.begin_transaction(provider, state, nonce, code_verifier, return_to,
                                            ttl)

    async def take_transaction(self, transaction_id: str) -> Transaction | None:
        return self.store.take_transaction(transaction_id)

    async def remember_jti(self, provider: str, jti: str, expires_at: float) -> bool:
        return self.store.remember_jti(provider, jti, expires_at)

    def maintain(self, *, key_rotation: float, retention: float) -> dict[str, int]:
        return self.store.maintain(key_rotation=key_rotation, retention=retention)

    async def close(self) -> None:
        self.store.close()
