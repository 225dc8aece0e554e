"""The worker's compiled view of the config: routes, chains, upstream pools, counters.

Everything expensive happens here, once per worker boot: route table, middleware chains,
allowed-method sets, pools. The per-request code in `protocol.py` only reads it.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from fluxgate._core import RequestIds
from fluxgate._proxy import Accounting, RouteBase
from fluxgate.config import schema
from fluxgate.config.resolve import resolve_upstream
from fluxgate.middleware.shadow import compile_chain
from fluxgate.proxy import headers as hdr
from fluxgate.proxy.access_log import AccessLog
from fluxgate.proxy.forwarded import ClientAddressResolver
from fluxgate.proxy.router import Router
from fluxgate.proxy.upstream import UpstreamGroup

if TYPE_CHECKING:
    from fluxgate.proxy.protocol import ClientConnection, RequestState

# How often deadlines (header, idle, upstream read) are checked. Deadlines are plain
# floats on the connection, so a request costs no timer handle of its own.
SWEEP_INTERVAL = 0.25
# During a drain, an idle keep-alive connection is closed after this long without a request.
DRAIN_IDLE_GRACE = 1.0


def route_methods(route: schema.Route) -> frozenset[bytes] | None:
    """The methods a route accepts (None: any)."""
    if not route.methods:
        return None
    methods = frozenset(m.upper().encode() for m in route.methods)
    if b"GET" in methods:
        methods |= {b"HEAD"}  # RFC 9110 §9.3.2: HEAD goes with GET
    return methods


class CompiledRoute(RouteBase):
    """One route, ready for the hot path: what it reads is the compiled base's (typed
    fields, read in C by fluxgate/_proxy.pyx)."""

    __slots__ = ("index", "prefix", "chain", "label", "body_step")

    def __init__(
        self, index: int, route: schema.Route, group: UpstreamGroup, slot: int, gateway: Gateway
    ) -> None:
        self.index = index
        self.body_step: Callable[[RequestState], Any] | None = None
        self.label = route.route
        prefix = route.route.encode()
        self.prefix = prefix.rstrip(b"/") if len(prefix) > 1 else b""
        self.methods = route_methods(route)
        self.allow_header = b", ".join(sorted(self.methods)) if self.methods else b""
        # Shadowed entries become steps that count and never refuse (middleware/shadow.py).
        self.chain = compile_chain(route, gateway, slot)
        # What the request path calls: each middleware's bound __call__. Calling the instance
        # itself goes through its type's tp_call slot (a method lookup and an argument
        # re-pack on every request); a bound method is a call CPython 3.11 specializes.
        self.steps = tuple(m.__call__ for m in self.chain)
        self.group = group
        self.slot = slot
        # Bytes of the path the upstream does not see (strip_prefix), or -1 (upstream_head).
        self.strip_length = len(self.prefix) if route.strip_prefix else -1
        self.websocket = route.websocket
        self.buffer_body = route.buffer_request_body
        # Request headers (lower-case names) the upstream must never see from the client on
        # this route: those a middleware owns (forward_claims targets, ...) and the route's
        # own strip_request_headers (the top-level list is dropped as headers are parsed).
        # Spelled with "-" for "_", as upstream_head compares them.
        self.drop_headers: frozenset[bytes] = frozenset(
            name.replace(b"_", b"-")
            for name in frozenset().union(
                *(getattr(m, "drop_headers", ()) for m in self.chain),
                (name.lower().encode() for name in route.strip_request_headers),
            )
        )


class Gateway:
    """Per-worker runtime shared by every connection of the worker."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        config: schema.Config,
        *,
        metrics: Any = None,
        route_slots: tuple[int, ...] = (),
        worker_id: int = 0,
    ) -> None:
        self.loop = loop
        self.config = config
        self.limits = config.limits
        self.state_dir = config.state_dir
        self.metrics = metrics
        self.worker_id = worker_id
        self.resolver = ClientAddressResolver(config.trusted_proxies)
        # An API key never reaches an upstream, on any route and whichever method decided
        # (docs/api-keys.md): its header is dropped as the parser reports it, its query parameter
        # when the upstream request is built.
        self.header_kinds: dict[bytes, int] = {}  # filled by ClientConnection.on_header
        self.request_special = {
            **{name.lower().encode(): hdr.H_DROP for name in config.strip_request_headers},
            **hdr.REQUEST_SPECIAL, config.api_keys.header.lower().encode(): hdr.H_DROP,
        }
        # Stripped from every upstream request; with query keys off, the conventional name
        # still is, so a key put there by mistake does not reach the upstream either.
        self.api_key_query = (config.api_keys.query or "api_key").encode()
        # Callbacks run by the sweep a few times a second, e.g. to pick up a new generation
        # of a shared table; middleware registers them in from_config().
        self.periodic: list[Callable[[float], None]] = []
        self.groups: dict[str, UpstreamGroup] = {}
        routes = []
        for index, route in enumerate(config.routes):
            spec = resolve_upstream(config, route)
            group = self.groups.get(spec.name)
            if group is None:
                group = self.groups[spec.name] = UpstreamGroup(loop, spec)
            slot = route_slots[index] if index < len(route_slots) else index + 1
            routes.append(CompiledRoute(index, route, group, slot, self))
        routes += self._endpoint_routes(routes)
        self.routes = routes
        self.router: Router[CompiledRoute] = Router((r.label, r) for r in routes)
        self.connections: set[ClientConnection] = set()
        self.draining = False
        self.drain_deadline = float("inf")
        self.drain_idle_grace = DRAIN_IDLE_GRACE
        self.access_log = AccessLog(config.access_log)
        # A finished request is counted in the shared metrics and the access log by one C
        # call (fluxgate/_proxy.pyx, Accounting); record(req) is that call.
        self.accounting = Accounting(
            metrics.recorder if metrics is not None else None,
            self.access_log if self.access_log.stream is not None else None,
        )
        self.record: Callable[[RequestState], None] = self.accounting.record
        # A client's X-Request-Id is kept when short and plainly spelled, else one is minted.
        self.request_ids = RequestIds(os.urandom(6).hex().encode() + b"-")
        self._sweeper: asyncio.TimerHandle | None = None

    def _endpoint_routes(self, routes: list[CompiledRoute]) -> list[CompiledRoute]:
        """Routes for the paths middleware answers itself (the browser login's callback and
        logout): one step that always replies, so nothing there reaches an upstream. They
        count in the metrics of the route that declares them."""
        taken = {r.label for r in routes}
        found = []
        for parent in routes:
            for middleware in parent.chain:
                endpoints = getattr(middleware, "endpoints", None)
                if endpoints is None:
                    continue
                for path, methods, step in endpoints():
                    if path in taken:
                        continue  # the first declaration wins (the checker reports clashes)
                    taken.add(path)
                    spec = schema.Route(route=path, upstream=parent.group.name,
                                        methods=list(methods), websocket=False,
                                        buffer_request_body=True)
                    route = CompiledRoute(len(routes) + len(found), spec, parent.group,
                                          parent.slot, self)
                    route.chain = ()
                    route.steps = (step,)
                    # A step that needs the whole body returns None until it is in; the
                    # client connection then calls body_step (buffer_request_body holds it).
                    route.body_step = step
                    found.append(route)
        return found

    def start(self) -> None:
        """Begin the periodic deadline sweep."""
        self._sweeper = self.loop.call_later(SWEEP_INTERVAL, self._sweep)

    def request_id(self, client_value: bytes | None) -> bytes:
        """Keep a well-formed client X-Request-Id, else mint a unique one."""
        return self.request_ids.take(client_value)

    def _sweep(self) -> None:
        now = self.loop.time()
        for conn in list(self.connections):
            conn.check_timeouts(now)
        for callback in self.periodic:
            callback(now)
        self.access_log.flush()
        self._sweeper = self.loop.call_later(SWEEP_INTERVAL, self._sweep)

    def begin_drain(self, timeout: float) -> None:
        """Stop keep-alive; idle connections close after a short grace."""
        self.draining = True
        self.drain_deadline = self.loop.time() + timeout
        for conn in list(self.connections):
            conn.begin_drain()

    def close(self) -> None:
        """Release pools and timers (worker exit)."""
        if self._sweeper is not None:
            self._sweeper.cancel()
        for group in self.groups.values():
            group.close()
        self.access_log.close()
