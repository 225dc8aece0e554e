"""Shadow mode: a middleware entry (``shadow: true``) or a whole route evaluated on every
request, its decision logged and counted, never enforced (docs/shadow.md).

Compiled once per worker boot: a route without a shadowed entry gets exactly the chain it
always had. Consecutive shadowed entries become one step (``ShadowGroup``), so a shadowed
quota by subject sees the principal a shadowed jwt before it found. The step always lets
the request go on, and puts back what its entries changed on the request: the principal
(nothing upstream or in an enforced quota sees a shadow identity) and the query string (a
token taken from it stays where the upstream would have seen it). It counts each entry's
decision in ``fluxgate_shadow_decisions_total{route,method,decision,reason}`` and not in
``fluxgate_auth_failures_total`` (which counts refusals that happened).

Budgets: a shadowed quota counts in a bucket of its own (never an enforced rule's), so it
reports when the rule would refuse without spending anyone's real budget; a shadowed
api_key checks the key without stamping its use or consulting the key's own quota.

An oauth2 token not yet in the introspection cache does not hold the request: the answer is
counted when it arrives, and the shadowed entries after that one are not evaluated for that
request. An answer that never comes (or a middleware that fails) counts ``unknown``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from fluxgate.auth.keytable import SharedKeys
from fluxgate.auth.runtime import worker_shared
from fluxgate.auth.shadow_counts import ALLOW, DECISIONS, DENY, UNKNOWN, ShadowCounts
from fluxgate.errors import ClientError, MissingCredentials, QuotaExceeded
from fluxgate.middleware import compile_middleware, kind_of
from fluxgate.middleware.any import AnyMiddleware
from fluxgate.middleware.api_key import ApiKeyMiddleware
from fluxgate.middleware.kind import ConfigChecker
from fluxgate.middleware.quota import _TAG_CACHE_LIMIT, QuotaMiddleware
from fluxgate.proxy.suspend import Suspended

if TYPE_CHECKING:
    from fluxgate.config import schema
    from fluxgate.proxy.protocol import RequestState

log = logging.getLogger("fluxgate.shadow")
_now = time.time

# The prefix of a shadowed quota's bucket identities: never the enforced rule's buckets.
SHADOW_BUCKET_PREFIX = b"shadow\0"


def is_shadowed(route: schema.Route, entry: Any) -> bool:
    """Is this entry of ``route`` in shadow mode (its own key or the route's)?"""
    return route.shadow or getattr(entry, "shadow", False)


def compile_chain(route: schema.Route, gateway: Any, route_slot: int) -> tuple[Any, ...]:
    """The route's compiled chain: each enforced entry as ``compile_middleware`` builds it,
    each run of consecutive shadowed entries as one ``ShadowGroup``."""
    chain: list[Any] = []
    group: list[tuple[str, Callable[[Any], ClientError | None]]] = []
    for entry in route.middleware:
        if not is_shadowed(route, entry):
            if group:
                chain.append(ShadowGroup(route.route, route_slot, group, gateway))
                group = []
            chain.append(compile_middleware(entry, gateway, route))
            continue
        group.append((kind_of(entry).name, _shadow_step(compile_middleware(entry, gateway, route),
                                                         gateway)))
    if group:
        chain.append(ShadowGroup(route.route, route_slot, group, gateway))
    return tuple(chain)


def _shadow_step(middleware: Any, gateway: Any) -> Callable[[Any], ClientError | None]:
    """The compiled entry with its side effects on shared state turned off: no auth-failure
    counts, no key usage stamps or key quota, a quota bucket of its own."""
    if isinstance(middleware, QuotaMiddleware):
        return ShadowQuota(middleware)
    _unmeter(middleware, gateway)
    return middleware.__call__


class ReasonTap:
    """Stands for the auth-failure table in a shadowed middleware: keeps the reason code it
    would have counted (the precise one: ``jwks_unavailable`` behind a 503,
    ``miss_rate_limited`` behind a 429), counts nothing. A worker runs one step at a time,
    so one tap serves every shadowed entry: reset before a step, read after it."""

    __slots__ = ("reason",)

    def __init__(self) -> None:
        self.reason: str | None = None

    def count(self, method: str, reason: str) -> None:
        """What the middleware would have counted."""
        self.reason = reason


_TAP = ReasonTap()


def _unmeter(middleware: Any, gateway: Any) -> None:
    if hasattr(middleware, "failures"):
        middleware.failures = _TAP
    if isinstance(middleware, ApiKeyMiddleware):
        middleware.shared = unmetered_keys(gateway)
    if isinstance(middleware, AnyMiddleware):
        for member in middleware.members:
            _unmeter(member, gateway)


class _NoUsage:
    """Stands for the usage file in a key table view that stamps nothing."""

    mapping = None

    def refresh(self) -> None:
        """Nothing to map."""

    def count(self, word: int) -> None:
        """Nothing counted."""


def unmetered_keys(gateway: Any) -> SharedKeys:
    """The worker's second view of the key table, without usage slots or quota buckets: a
    shadowed api_key proves and authorizes a key without marking it used or spending its
    quota (so it never reports quota_exceeded)."""

    def create() -> SharedKeys:
        shared = SharedKeys(gateway.state_dir, None)
        shared.usage = _NoUsage()  # type: ignore[assignment]
        shared.quotas = None
        gateway.periodic.append(shared.on_sweep)
        return shared

    shared = worker_shared(gateway, "shadow_keys", create)
    if shared.signing_key is None:
        shared.signing_key = SharedKeys.for_gateway(gateway, with_keys=True).signing_key
        shared.refresh()
    return shared


class ShadowQuota:
    """A quota rule's decision without its side effects on the request (no RateLimit-*
    headers), counted in buckets of its own."""

    __slots__ = ("rule", "prefix", "_tags")

    def __init__(self, rule: QuotaMiddleware) -> None:
        self.rule = rule
        self.prefix = SHADOW_BUCKET_PREFIX + rule.prefix
        self._tags: dict[str, int] = {}  # identity -> bucket tag (an HMAC: worth caching)

    def __call__(self, req: RequestState) -> ClientError | None:
        rule = self.rule
        who = rule.identity(req)
        if who is None:
            return MissingCredentials()
        quotas = rule.shared.quotas
        tag = self._tags.get(who)
        if tag is None:
            if len(self._tags) >= _TAG_CACHE_LIMIT:
                self._tags.clear()
            tag = self._tags[who] = quotas.tag(self.prefix + who.encode("utf-8", "surrogatepass"))
        code = quotas.consume(tag, rule.limit, rule.window, _now())[0]
        if code == 0:
            return None
        refusal = QuotaExceeded()
        refusal.reason = "quota_table_full" if code == 2 else "quota_exceeded"  # type: ignore[attr-defined]
        return refusal


def reason_of(refusal: ClientError) -> str:
    """The reason code of a refusal, as the auth-failure counters spell it (what the
    middleware counted, else the refusal's own reason or code)."""
    return _TAP.reason or getattr(refusal, "reason", None) or refusal.code


class _Detached:
    """What an introspection answer is decided against once the request has gone on."""

    __slots__ = ("method", "path", "query", "headers", "client_ip", "principal",
                 "response_headers")

    def __init__(self, req: Any) -> None:
        self.method = req.method
        self.path = req.path
        self.query = req.query
        self.headers = list(req.headers)
        self.client_ip = req.client_ip
        self.principal = req.principal
        self.response_headers: list[tuple[bytes, bytes]] = []


class ShadowGroup:
    """Consecutive shadowed entries of one route, evaluated as one step that never refuses."""

    __slots__ = ("route", "slot", "entries", "counts", "seen")

    def __init__(self, route: str, slot: int,
                 entries: list[tuple[str, Callable[[Any], ClientError | None]]],
                 gateway: Any) -> None:
        self.route = route
        self.slot = slot
        self.entries = tuple(entries)
        self.counts = ShadowCounts.for_gateway(gateway) if gateway is not None else None
        self.seen: set[tuple[str, int, str]] = set()

    def __call__(self, req: RequestState) -> None:
        principal, query = req.principal, req.query
        added = len(req.response_headers)
        try:
            self._evaluate(req)
        finally:
            req.principal = principal
            req.query = query
            del req.response_headers[added:]
        return None

    def _evaluate(self, req: Any) -> None:
        tap = _TAP
        for method, step in self.entries:
            tap.reason = None
            try:
                refusal = step(req)
            except Suspended as wait:
                self._later(req, method, wait)
                return
            except Exception:  # a shadow never costs the request anything
                log.exception("route %s: shadowed %s failed", self.route, method)
                self._record(method, UNKNOWN, "unknown")
                return
            if refusal is not None:
                self._record(method, DENY, reason_of(refusal))
                return
            self._record(method, ALLOW, "ok")

    def _later(self, req: Any, method: str, wait: Suspended) -> None:
        detached = _Detached(req)

        def answered(future: Any) -> None:
            _TAP.reason = None
            try:
                refusal = wait.resume(detached)
            except BaseException:  # cancelled, failed, or asking to wait again
                self._record(method, UNKNOWN, "unknown")
                return
            if refusal is None:
                self._record(method, ALLOW, "ok")
            else:
                self._record(method, DENY, reason_of(refusal))

        wait.future.add_done_callback(answered)

    def _record(self, method: str, decision: int, reason: str) -> None:
        if self.counts is not None:
            self.counts.count(self.slot, method, decision, reason)
        key = (method, decision, reason)
        if key not in self.seen and len(self.seen) < 256:
            self.seen.add(key)
            log.info("shadow: route %s: %s would %s (%s); counted in "
                     "fluxgate_shadow_decisions_total", self.route, method,
                     DECISIONS[decision], reason)
        else:
            log.debug("shadow: route %s: %s %s (%s)", self.route, method,
                      DECISIONS[decision], reason)


# ---- configuration --------------------------------------------------------------------------


def check_route(checker: ConfigChecker, route: schema.Route, path: tuple[Any, ...]) -> None:
    """Where shadow mode may be used: a whole entry (not an ``any`` member), not a browser
    login (a redirect cannot be observed without being made), and a route whose only
    authentication is shadowed says ``public: true`` (it is public until enforced)."""
    for j, entry in enumerate(route.middleware):
        record = kind_of(entry)
        for k, member in enumerate(record.members(entry)):
            checker.check(not getattr(member, "shadow", False),
                          (*path, "middleware", j, record.shorthand, k, "shadow"),
                          "shadow applies to the whole any entry, not to one of its methods")
        if is_shadowed(route, entry):
            checker.check(not getattr(entry, "login", False), (*path, "middleware", j),
                          "a browser login cannot run in shadow mode (its redirect would be "
                          "made); shadow an oauth2 entry without login")
    # Checks that depend on an authentication before (a quota by subject): only an
    # enforced one counts for an enforced entry (the chain checks counted every one).
    seen_any = seen_enforced = False
    for j, entry in enumerate(route.middleware):
        record = kind_of(entry)
        shadowed = is_shadowed(route, entry)
        if record.check_in_chain is not None and not shadowed and seen_any != seen_enforced:
            record.check_in_chain(checker, entry, (*path, "middleware", j), seen_enforced)
        seen_any = seen_any or record.authenticates
        seen_enforced = seen_enforced or (record.authenticates and not shadowed)
    checker.check(
        route.public or not any(kind_of(m).authenticates for m in route.middleware)
        or enforced_authentication(route),
        (*path, "public") if route.shadow else (*path, "middleware"),
        f"route {route.route}: every authentication middleware is in shadow mode, so the "
        "route is public until one is enforced; say so with public: true",
    )


def enforced_authentication(route: schema.Route) -> bool:
    """Does an authentication entry of ``route`` run for real (not in shadow mode)?"""
    return any(kind_of(m).authenticates and not is_shadowed(route, m) for m in route.middleware)
