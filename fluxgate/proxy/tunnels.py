"""WebSockets bound to a credential: the worker's registry of tunnels and their deadlines.

A WebSocket tunnel opened with a credential is bound here with a deadline, the
credential's expiry. The worker's sweep (``Gateway.periodic``, every 250 ms) closes a
tunnel whose deadline passed with close code 4401, and runs the watchers: callbacks that
recheck credentials and move a deadline (a refresh) or close a credential's tunnels
(4403, revoked or logged out). Closing sends a Close frame to both sides
(``Exchange.close_tunnel`` in fluxgate/_proxy.pyx). docs/websockets.md has the behaviour.

Deadlines are on the monotonic clock: ``time.monotonic()``, the clock of the worker's
event loop (``loop.time()``) and of the sweep's ``now``. ``monotonic_deadline(exp)``
turns a credential's ``exp`` (Unix seconds) into one.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Hashable
from typing import Any

from fluxgate.auth.runtime import worker_shared

log = logging.getLogger("fluxgate.proxy")

# Close codes (RFC 6455 §7.4.2: 4000-4999 are for applications).
CLOSE_EXPIRED = 4401  # the credential expired: authenticate again
CLOSE_REVOKED = 4403  # the credential was revoked, or its session logged out
REASONS = {CLOSE_EXPIRED: "credential expired", CLOSE_REVOKED: "credential revoked"}

NO_DEADLINE = float("inf")

Watcher = Callable[[float], None]


def monotonic_deadline(exp: float | None) -> float:
    """The monotonic-clock moment of ``exp`` (Unix seconds); inf for None."""
    if exp is None:
        return NO_DEADLINE
    return time.monotonic() + (float(exp) - time.time())


class Binding:
    """One bound tunnel: its deadline and the credential it belongs to."""

    __slots__ = ("tunnel", "deadline", "credential_key")

    def __init__(self, tunnel: Any, deadline: float, credential_key: Hashable | None) -> None:
        self.tunnel = tunnel
        self.deadline = deadline
        self.credential_key = credential_key


class TunnelRegistry:
    """The bound tunnels of one worker (``for_gateway``)."""

    def __init__(self) -> None:
        self._bindings: dict[Any, Binding] = {}
        self._by_key: dict[Hashable, set[Any]] = {}
        self._watchers: list[Watcher] = []

    def __len__(self) -> int:
        return len(self._bindings)

    def bind(self, tunnel: Any, deadline: float, credential_key: Hashable | None = None) -> Binding:
        """Bind ``tunnel`` (an Exchange carrying a WebSocket, or anything with
        ``close_tunnel(code, reason)``) to ``credential_key`` until ``deadline``
        (monotonic seconds; inf: none). Binding again replaces the previous binding."""
        self.unbind(tunnel)
        binding = self._bindings[tunnel] = Binding(tunnel, deadline, credential_key)
        if credential_key is not None:
            self._by_key.setdefault(credential_key, set()).add(tunnel)
        return binding

    def unbind(self, tunnel: Any) -> None:
        """Forget ``tunnel`` (it ended); nothing when it is not bound."""
        binding = self._bindings.pop(tunnel, None)
        if binding is None or binding.credential_key is None:
            return
        tunnels = self._by_key.get(binding.credential_key)
        if tunnels is not None:
            tunnels.discard(tunnel)
            if not tunnels:
                del self._by_key[binding.credential_key]

    def bound(self, credential_key: Hashable) -> int:
        """How many open tunnels ``credential_key`` has."""
        return len(self._by_key.get(credential_key, ()))

    def credential_keys(self) -> list[Hashable]:
        """The credentials that have open tunnels (for a watcher to recheck)."""
        return list(self._by_key)

    def move_deadline(self, credential_key: Hashable, new_deadline: float) -> int:
        """A refresh: every tunnel of ``credential_key`` gets ``new_deadline`` (monotonic
        seconds). Returns how many tunnels it moved."""
        tunnels = self._by_key.get(credential_key, ())
        for tunnel in tunnels:
            self._bindings[tunnel].deadline = new_deadline
        return len(tunnels)

    def close_credential(self, credential_key: Hashable, code: int = CLOSE_REVOKED,
                         reason: str | None = None) -> int:
        """Close every tunnel of ``credential_key`` with ``code`` (4403 revoked or logged
        out, 4401 expired). Returns how many tunnels it began closing."""
        closed = 0
        for tunnel in list(self._by_key.get(credential_key, ())):
            closed += self._close(tunnel, code, reason)
        return closed

    def add_watcher(self, watcher: Watcher) -> None:
        """Call ``watcher(now)`` at every sweep (now: monotonic seconds) until removed;
        it may call move_deadline and close_credential. An exception it raises is logged
        and does not stop the sweep."""
        if watcher not in self._watchers:
            self._watchers.append(watcher)

    def remove_watcher(self, watcher: Watcher) -> None:
        if watcher in self._watchers:
            self._watchers.remove(watcher)

    def sweep(self, now: float) -> None:
        """The worker's periodic check: watchers first, then deadlines."""
        for watcher in list(self._watchers):
            try:
                watcher(now)
            except Exception:  # a watcher's bug must not keep expired tunnels open
                log.exception("tunnel watcher %r failed", watcher)
        if not self._bindings:
            return
        for binding in [b for b in self._bindings.values() if now >= b.deadline]:
            try:
                self._close(binding.tunnel, CLOSE_EXPIRED, None)
            except Exception:  # the next tunnels still close; the timer keeps running
                log.exception("closing an expired tunnel failed")

    def _close(self, tunnel: Any, code: int, reason: str | None) -> int:
        self.unbind(tunnel)
        return 1 if tunnel.close_tunnel(code, reason if reason is not None else REASONS.get(code, "")) else 0


def for_gateway(gateway: Any) -> TunnelRegistry:
    """The worker's registry; the first call adds its sweep to the worker's timer."""

    def create() -> TunnelRegistry:
        registry = TunnelRegistry()
        gateway.periodic.append(registry.sweep)
        return registry

    return worker_shared(gateway, "tunnels", create)
