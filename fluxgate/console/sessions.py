"""Console sign-in sessions, kept in the master's memory only.

A session is opened by typing the admin token into the sign-in form. The browser holds a random
session id in an HttpOnly cookie; the master keeps, per session, the CSRF token the page sends
back on every state-changing call, and the admin token it was opened with, so a reload that
changes ``admin.token`` ends every session opened with the old one. Nothing is written to disk:
a restart of the master signs everyone out.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass

IDLE_TIMEOUT = 30 * 60.0  # s without a request before a session ends
ABSOLUTE_TIMEOUT = 8 * 3600.0  # s after sign-in, whatever the activity
MAX_SESSIONS = 64  # the oldest is ended when one more signs in
SESSION_ID_CHARS = 43  # secrets.token_urlsafe(32)


@dataclass
class ConsoleSession:
    """One signed-in browser."""

    csrf: str
    token: str  # the admin token it was opened with (never logged, never sent back)
    created: float
    last_seen: float


def _key(session_id: str) -> bytes:
    # Looked up by digest, so the dict's own comparisons never run on the secret itself.
    return hashlib.sha256(session_id.encode("ascii", "replace")).digest()


class ConsoleSessions:
    """The live sessions of one master: open, find (checking expiry), end."""

    def __init__(self, *, clock: Callable[[], float] = time.monotonic,
                 idle_timeout: float = IDLE_TIMEOUT, absolute_timeout: float = ABSOLUTE_TIMEOUT,
                 limit: int = MAX_SESSIONS) -> None:
        self.clock = clock
        self.idle_timeout = idle_timeout
        self.absolute_timeout = absolute_timeout
        self.limit = limit
        self._sessions: dict[bytes, ConsoleSession] = {}

    def __len__(self) -> int:
        self._expire()
        return len(self._sessions)

    def open(self, token: str) -> tuple[str, ConsoleSession]:
        """A new session for a browser that typed ``token`` (already checked); returns its
        id (the cookie value) and the session."""
        self._expire()
        while len(self._sessions) >= self.limit:
            del self._sessions[next(iter(self._sessions))]  # dicts keep insertion order
        now = self.clock()
        session_id = secrets.token_urlsafe(32)
        session = ConsoleSession(secrets.token_urlsafe(32), token, now, now)
        self._sessions[_key(session_id)] = session
        return session_id, session

    def find(self, session_id: str) -> ConsoleSession | None:
        """The live session with this id (its idle clock restarted), or None."""
        if len(session_id) != SESSION_ID_CHARS:
            return None
        key = _key(session_id)
        session = self._sessions.get(key)
        if session is None:
            return None
        now = self.clock()
        if self._expired(session, now):
            del self._sessions[key]
            return None
        session.last_seen = now
        return session

    def end(self, session_id: str) -> bool:
        """End a session (sign-out); True when it existed."""
        return self._sessions.pop(_key(session_id), None) is not None

    def end_all(self) -> None:
        """End every session."""
        self._sessions.clear()

    def expires_in(self, session: ConsoleSession) -> float:
        """Seconds until ``session`` ends unless it is used again."""
        now = self.clock()
        return max(0.0, min(session.last_seen + self.idle_timeout,
                            session.created + self.absolute_timeout) - now)

    def _expired(self, session: ConsoleSession, now: float) -> bool:
        return (now - session.last_seen >= self.idle_timeout
                or now - session.created >= self.absolute_timeout)

    def _expire(self) -> None:
        now = self.clock()
        for key in [k for k, s in self._sessions.items() if self._expired(s, now)]:
            del self._sessions[key]
