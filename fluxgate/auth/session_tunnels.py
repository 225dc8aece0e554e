"""WebSockets opened with a browser session stay bound to it (``login: true`` routes).

A session's WebSocket carries the deadline of the session's access token (never past its
absolute expiry). At every sweep of the worker (``proxy/tunnels.py``, every 250 ms) the
watcher here:

* asks the session store which of the sessions with open WebSockets changed or ended
  since the last sweep (one cheap query; none when nothing was written): a logout, a
  revocation or a back-channel logout anywhere closes their WebSockets with 4403, a
  refresh that failed for good (``invalid_grant``) or an expiry with 4401, and a refresh
  done by any worker moves the deadline;
* asks the master to refresh a session whose access token is within ``refresh_leeway`` of
  expiry, since a WebSocket alone makes no requests that would trigger it: the connection
  then lives through as many refreshes as the session allows.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Hashable
from typing import TYPE_CHECKING, Any

import orjson

from fluxgate.auth.runtime import worker_shared
from fluxgate.auth.sessions import Session, SessionStore
from fluxgate.proxy import tunnels

if TYPE_CHECKING:
    from fluxgate.middleware.oauth2_login import LoginMiddleware

log = logging.getLogger("fluxgate.auth")

# End reasons that mean "sign in again" (4401) rather than "you were signed out" (4403).
EXPIRED_REASONS = frozenset({"invalid_grant", "expired", "undecryptable"})
REFRESH_TIMEOUT = 15.0
RETRY_INTERVAL = 2.0


def session_key(digest: bytes) -> tuple[str, bytes]:
    """The credential key of a session's tunnels in the worker's registry."""
    return ("session", digest)


def session_deadline(session: Session) -> float:
    """When a session's WebSocket must close without a refresh (monotonic seconds)."""
    ends = session.absolute_expires_at
    if session.access_expires_at is not None:
        ends = min(ends, session.access_expires_at)
    return tunnels.monotonic_deadline(ends)


class _Bound:
    __slots__ = ("owner", "session_id", "access_expires_at", "absolute_expires_at",
                 "refreshing", "next_try")

    def __init__(self, owner: LoginMiddleware, session_id: str, session: Session) -> None:
        self.owner = owner
        self.session_id = session_id
        self.access_expires_at = session.access_expires_at
        self.absolute_expires_at = session.absolute_expires_at
        self.refreshing = False
        self.next_try = 0.0  # after an unanswered refresh, not before this (wall clock)


class SessionTunnels:
    """The worker's watcher of sessions that have WebSockets."""

    def __init__(self, store: SessionStore, registry: tunnels.TunnelRegistry) -> None:
        self.store = store
        self.registry = registry
        self.bound: dict[bytes, _Bound] = {}
        self.marker = store.change_marker()

    def bind(self, owner: LoginMiddleware, session_id: str,
             session: Session) -> tuple[float, Hashable]:
        """Remember a session that now has a WebSocket: its deadline and registry key."""
        self.bound.setdefault(session.digest, _Bound(owner, session_id, session))
        return session_deadline(session), session_key(session.digest)

    def __call__(self, now: float) -> None:
        bound = self.bound
        for digest in [d for d in bound if not self.registry.bound(session_key(d))]:
            del bound[digest]  # its last WebSocket closed
        if not bound:
            self.marker = self.store.change_marker()
            return
        self.marker, changes = self.store.changes_since(self.marker, bound.keys())
        for change in changes:
            entry = bound.get(change.digest)
            if entry is None:
                continue
            if change.ended_at is not None:
                code = (tunnels.CLOSE_EXPIRED if change.end_reason in EXPIRED_REASONS
                        else tunnels.CLOSE_REVOKED)
                self.registry.close_credential(session_key(change.digest), code)
                del bound[change.digest]
            elif change.access_expires_at != entry.access_expires_at:
                self._reload(change.digest, entry)
        wall = time.time()
        for digest, entry in list(bound.items()):
            expires = entry.access_expires_at
            if (expires is not None and not entry.refreshing and wall >= entry.next_try
                    and expires - wall <= entry.owner.leeway
                    and expires < entry.absolute_expires_at):
                self._refresh(digest, entry)

    def _reload(self, digest: bytes, entry: _Bound) -> None:
        session = self.store.load(entry.session_id, time.time())
        if session is None:
            self.registry.close_credential(session_key(digest), tunnels.CLOSE_EXPIRED)
            self.bound.pop(digest, None)
            return
        entry.access_expires_at = session.access_expires_at
        self.registry.move_deadline(session_key(digest), session_deadline(session))

    def _refresh(self, digest: bytes, entry: _Bound) -> None:
        entry.refreshing = True
        owner = entry.owner
        future = owner.client.call("refresh", owner.source,
                                   orjson.dumps({"session_id": entry.session_id}),
                                   REFRESH_TIMEOUT)

        def done(_future: Any) -> None:
            entry.refreshing = False
            outcome, _payload = future.result()
            if digest not in self.bound:
                return
            if outcome == "ok":
                self._reload(digest, entry)
            elif outcome == "ended":
                self.registry.close_credential(session_key(digest), tunnels.CLOSE_EXPIRED)
                self.bound.pop(digest, None)
            else:  # unavailable: the deadline stands; ask again in a moment
                entry.next_try = time.time() + RETRY_INTERVAL

        future.add_done_callback(done)


def for_gateway(gateway: Any, store: SessionStore) -> SessionTunnels:
    """The worker's SessionTunnels, watching from the first WebSocket on."""

    def create() -> SessionTunnels:
        registry = tunnels.for_gateway(gateway)
        watcher = SessionTunnels(store, registry)
        registry.add_watcher(watcher)
        return watcher

    return worker_shared(gateway, "tunnels-sessions", create)
