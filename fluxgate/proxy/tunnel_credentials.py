"""Which credential opened a WebSocket, and until when it is good: binding at the upgrade.

When a 101 turns a request into a tunnel, the middleware that authenticated it already
decided; this module asks that same middleware about the credential it accepted (a rare
path, once per WebSocket) and binds the tunnel in the worker's registry
(fluxgate/proxy/tunnels.py):

* jwt: deadline = the token's ``exp`` (the verified-token cache answers, no new signature
  check); credential key = the principal's id (``jwt:<iss>|<sub>``);
* oauth2: deadline = the introspected ``exp`` from the shared table; key = the principal's
  id (``oauth2:<iss>|<subject>``);
* api_key: deadline = the key's expiry (its rotation grace included); key =
  ``api_key:<key id>``. A watcher reads the worker's key table at every sweep: a revoked
  or deleted key closes its WebSockets with 4403, a renewed one moves their deadline.

A middleware with a ``websocket_binding(req, principal)`` method answers for itself: the
``(deadline, credential key)`` of the WebSocket it admitted, or None (a login session's
tunnels, fluxgate/auth/session_tunnels.py). A tunnel on a public route, or whose
credential cannot be found again, is not bound.
"""

from __future__ import annotations

import logging
import time
from typing import Any
from urllib.parse import unquote_to_bytes

from fluxgate._core import TokenError, bearer_token
from fluxgate.auth.runtime import worker_shared
from fluxgate.middleware.any import AnyMiddleware
from fluxgate.middleware.api_key import ApiKeyMiddleware
from fluxgate.middleware.jwt import JwtMiddleware
from fluxgate.middleware.oauth2 import OAuth2Middleware
from fluxgate.proxy import tunnels

log = logging.getLogger("fluxgate.proxy")

_MISSING: Any = object()


def bind_upgrade(gateway: Any, tunnel: Any, req: Any) -> tunnels.Binding | None:
    """Bind a new WebSocket ``tunnel`` to the credential ``req`` was authorized with."""
    principal = req.principal
    route = req.route
    if principal is None or route is None:
        return None
    try:
        found = _credential(gateway, route.chain, req, principal)
    except Exception:  # never fail the upgrade over this; the tunnel stays unbound
        log.exception("request %s: the WebSocket's credential could not be read",
                      req.request_id.decode())
        return None
    if found is None:
        return None
    deadline, key = found
    binding = tunnels.for_gateway(gateway).bind(tunnel, deadline, key)
    tunnel.ws.binding = binding
    return binding


def unbind(gateway: Any, tunnel: Any) -> None:
    """The tunnel ended: forget it."""
    ws = tunnel.ws
    if ws is not None and ws.binding is not None:
        ws.binding = None
        tunnels.for_gateway(gateway).unbind(tunnel)


def _members(chain: tuple[Any, ...]) -> list[Any]:
    out = []
    for middleware in chain:
        if isinstance(middleware, AnyMiddleware):
            out.extend(_members(middleware.members))
        else:
            out.append(middleware)
    return out


def _credential(gateway: Any, chain: tuple[Any, ...], req: Any,
                principal: Any) -> tuple[float, Any] | None:
    for middleware in _members(chain):
        own = getattr(middleware, "websocket_binding", None)
        if own is not None:
            found = own(req, principal)
            if found is not None:
                return found
            continue
        if principal.method == "jwt" and isinstance(middleware, JwtMiddleware):
            exp = _jwt_exp(middleware, req, principal)
        elif principal.method == "oauth2" and isinstance(middleware, OAuth2Middleware):
            exp = _oauth2_exp(middleware, req, principal)
        elif principal.method == "api_key" and isinstance(middleware, ApiKeyMiddleware):
            return _api_key(gateway, middleware, req)
        else:
            continue
        if exp is not _MISSING:
            return tunnels.monotonic_deadline(exp), principal.id
    return None


def _jwt_exp(middleware: JwtMiddleware, req: Any, principal: Any) -> Any:
    token = middleware.token(req, take=False)
    if token is None and middleware.query is not None:
        # The middleware took a query-string token out of req.query (the upstream never
        # sees it); the request target still has it.
        token = _query_value(req.url.partition(b"?")[2], middleware.query)
    if not isinstance(token, bytes) or not token:
        return _MISSING
    now = time.time()
    try:
        if middleware.verifier.authenticate(token, now) != principal:
            return _MISSING  # another member of `any` accepted the request
        claims = middleware.verifier.verify(token, now)
    except TokenError:
        return _MISSING
    exp = claims.get("exp")
    return exp if isinstance(exp, int | float) and not isinstance(exp, bool) else None


def _query_value(query: bytes, name: bytes) -> bytes | None:
    for pair in query.split(b"&"):
        key, sep, value = pair.partition(b"=")
        if sep and unquote_to_bytes(key) == name:
            return unquote_to_bytes(value)
    return None


def _oauth2_exp(middleware: OAuth2Middleware, req: Any, principal: Any) -> Any:
    token = bearer_token(req.headers)
    if not isinstance(token, bytes) or not token:
        return _MISSING
    view = middleware.view
    found = view.cache.lookup(token, time.time(), view.known)
    if found is None:
        return _MISSING
    if type(found) is tuple:
        found = view.remember(found)
    if found.principal != principal:
        return _MISSING
    return found.exp


def _api_key(gateway: Any, middleware: ApiKeyMiddleware, req: Any) -> tuple[float, str] | None:
    key = middleware.presented_key(req)  # also a key sent as Authorization: Bearer fg_…
    table = middleware.shared.table
    if key is None or table is None:
        return None
    code, index = table.verify(key, time.time())
    if code != 0:
        return None
    entry = table.entry(index)
    watcher = worker_watcher(gateway, middleware.shared)
    return tunnels.monotonic_deadline(entry["expires_at"]), watcher.key_of(entry["key_id"])


class KeyWatcher:
    """Rechecks the API keys that have WebSockets against the worker's current key table
    at each new generation (the master writes most changes into the mapped table in place
    and bumps its generation; a rebuilt table the worker maps at its sweep): revoked or
    gone → 4403, a new expiry (renewal) → the deadline moves."""

    PREFIX = "api_key:"

    def __init__(self, shared: Any, registry: tunnels.TunnelRegistry) -> None:
        self.shared = shared
        self.registry = registry
        self.table: Any = None  # the table last checked, and its generation then
        self.generation: int | None = None

    def key_of(self, key_id: str) -> str:
        return self.PREFIX + key_id

    def __call__(self, now: float) -> None:
        table = self.shared.table
        generation = getattr(table, "generation", None)
        if table is None or (table is self.table and generation == self.generation):
            return
        self.table, self.generation = table, generation
        for credential in self.registry.credential_keys():
            if not isinstance(credential, str) or not credential.startswith(self.PREFIX):
                continue
            index = table.find(credential[len(self.PREFIX):])
            entry = table.entry(index) if index >= 0 else None
            if entry is None or entry["revoked"]:
                self.registry.close_credential(credential, tunnels.CLOSE_REVOKED)
            else:
                self.registry.move_deadline(credential,
                                            tunnels.monotonic_deadline(entry["expires_at"]))


def worker_watcher(gateway: Any, shared: Any) -> KeyWatcher:
    """The worker's KeyWatcher, added to its registry's watchers once."""

    def create() -> KeyWatcher:
        registry = tunnels.for_gateway(gateway)
        watcher = KeyWatcher(shared, registry)
        watcher.table = shared.table
        watcher.generation = getattr(shared.table, "generation", None)
        registry.add_watcher(watcher)
        return watcher

    return worker_shared(gateway, "tunnels-keys", create)
