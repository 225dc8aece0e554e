"""api_key: authenticate with an API key from the shared key table
(docs/api-keys.md).

    - api_key: {scopes: [read:metrics]}      # every listed scope is required of the key

The key comes from the ``api_keys.header`` header (X-API-Key), or the ``api_keys.query``
parameter when the config names one (off by default; ``query: false`` on the route refuses
it there). Neither ever reaches an upstream, on any route: the gateway drops the header as
it parses it and strips the parameter from the upstream request (``proxy/app.py``).

A key sent as ``Authorization: Bearer fg_…`` is accepted too (what many HTTP clients send
for "a token"): the ``fg_`` prefix and the HMAC tag make it unambiguous, no JWT or opaque
token starts so. It is looked at only when the header and the parameter hold no key (the
common request pays nothing), and an accepted one's Authorization header is removed
from the upstream request. Refusals carry ``WWW-Authenticate: ApiKey realm="fluxgate",
header="X-API-Key"`` (with ``error=`` once a key was sent), not a bearer challenge.
One call into ``_core.KeyTable.authorize`` does the whole decision: find the key, parse,
HMAC tag, lookup, digest, revoked/expiry, the key's routes, scopes (and a covering
scope_map rule), the key's IP allowlist and its quota; it also sets the request's
principal once this worker has built it. The principal and the headers for the upstream
are built at a key's first request in each table generation.

Answers: 401 missing_credentials (no key), 401 invalid_key (malformed, forged, unknown,
revoked or expired: one answer, so a probe learns nothing about which ids exist), 403
insufficient_scope (a scope or a path the key lacks), 403 ip_not_allowed, 429
quota_exceeded with Retry-After. Accepted responses carry RateLimit-* when the key has a
quota, and Deprecation/Sunset while the key is in its rotation grace period.

In cluster mode (a Redis ``store``) the key table does not count quotas itself: the key's
quota is the cluster's, spent through leases (``fluxgate/cluster/quotas.py``), so every
accepted key with a quota takes that step after the table's decision.
"""

from __future__ import annotations

import logging
import time
from operator import attrgetter
from typing import TYPE_CHECKING, Any

from fluxgate._core import bearer_token, extract_api_key, merge_ratelimit
from fluxgate.auth.failures import AuthFailures
from fluxgate.auth.keys import PREFIX
from fluxgate.auth.keytable import REASONS, STAT_KEY_QUOTA, STAT_KEY_QUOTA_FULL, SharedKeys
from fluxgate.auth.quotas import key_identity, quota_exceeded
from fluxgate.auth.scopes import ScopePolicy
from fluxgate.cluster.quotas import TABLE_FULL, ClusterQuotas
from fluxgate.config.parsers import Path, check_scope
from fluxgate.config.schema import ApiKey
from fluxgate.errors import (
    ClientError,
    InsufficientScope,
    InvalidKey,
    IpNotAllowed,
    MissingCredentials,
    api_key_challenge,
)
from fluxgate.middleware.kind import ConfigChecker, MiddlewareKind, lazy

if TYPE_CHECKING:
    from fluxgate.proxy.protocol import RequestState

log = logging.getLogger("fluxgate.keys")
_now = time.time  # bound once: the hot path does no module attribute lookup

_OK, _MALFORMED, _BAD_TAG, _UNKNOWN, _BAD_SECRET, _REVOKED, _EXPIRED = range(7)
_ROUTE_DENIED, _SCOPE_DENIED, _IP_DENIED, _QUOTA_EXCEEDED, _QUOTA_FULL = range(7, 12)
_MISSING, _AMBIGUOUS = 12, 13
assert REASONS[_QUOTA_FULL] == "quota_table_full" and REASONS[_BAD_SECRET] == "bad_secret"
assert REASONS[_MISSING] == "missing_credentials" and REASONS[_AMBIGUOUS] == "ambiguous_credentials"

INVALID_DESCRIPTION = "The API key is invalid, expired or revoked."


class ApiKeyMiddleware:
    """Per route: the required scopes and where the key may come from; the table is shared."""

    method = "api_key"

    __slots__ = ("shared", "required", "policy", "scoped", "lname", "qname", "failures",
                 "header", "missing", "invalid", "forbidden", "_covering_encoded",
                 "cluster", "spender", "_quota_table", "_key_quotas")  # fmt: skip

    def __init__(
        self, shared: SharedKeys, policy: ScopePolicy, header: str, query: str | None,
        accept_query: bool = True, failures: AuthFailures | None = None,
        cluster: ClusterQuotas | None = None,
    ) -> None:
        self.shared = shared
        # Cluster mode: the key table spends keys' quotas from the node's leases, in C; a
        # key with no unit in hand comes back quota_exceeded and waits here for a lease.
        self.cluster = cluster
        self.spender = cluster.spender if cluster is not None else None
        self._quota_table: Any = None  # the table generation _key_quotas is of
        self._key_quotas: dict[int, tuple[Any, ...]] = {}  # entry index -> its quota
        self.policy = policy
        self.scoped = bool(policy.rules)  # a scope_map rule may cover this route's paths
        self.required = tuple(s.encode() for s in sorted(policy.required))
        self.lname = header.lower().encode()
        self.qname = query.encode() if query and accept_query else b""  # b"": never
        self.failures = failures
        self.header = header
        self.missing = api_key_challenge(header)  # the challenges, built once
        self.invalid = api_key_challenge(header, "invalid_key")
        self.forbidden = api_key_challenge(header, "insufficient_scope")
        self._covering_encoded: dict[frozenset[str], tuple[bytes, ...]] = {}

    @classmethod
    def from_config(cls, config: ApiKey, gateway: Any, route: Any = None) -> ApiKeyMiddleware:
        """Map the shared table once per worker; bind the route's scope rules."""
        names = gateway.config.api_keys
        shared = SharedKeys.for_gateway(gateway, with_keys=True)
        cluster = ClusterQuotas.for_gateway(gateway, shared.quotas)
        if cluster is not None:
            shared.use_leases(cluster.spender)
        return cls(
            shared,
            ScopePolicy(config.scopes, gateway.config.scope_map),
            names.header,
            names.query,
            config.query,
            AuthFailures.for_gateway(gateway),
            cluster,
        )

    def carries(self, req: RequestState) -> bool:
        """Does the request carry an API key (for ``any``: the first method present decides)?"""
        return (extract_api_key(req.headers, self.lname, req.query, self.qname)[0] != 0
                or _bearer_key(req) is not None)

    def presented_key(self, req: RequestState) -> bytes | None:
        """The one API key the request presents (header, parameter, or a bearer fg_ key),
        or None (none, or more than one)."""
        count, key = extract_api_key(req.headers, self.lname, req.query, self.qname)
        if count == 0:
            return _bearer_key(req)
        return key if count == 1 else None

    def __call__(self, req: RequestState) -> ClientError | None:
        covering = self._covering(req) if self.scoped else None
        shared = self.shared
        answer = shared.table.authorize(
            req, self.lname, self.qname, self.required, covering, _now(), shared.principals
        )
        if answer is None:
            # Accepted (authorize set req.principal). A second key sent as Bearer beside
            # the header is not read, but it is a key: it never goes upstream either.
            if _bearer_key(req) is not None:
                _drop_authorization(req)
            if self.spender is not None and self.spender.ahead_tag:
                self.cluster.key_spent_ahead()
            return None
        code, index, limit, reset = answer
        if code == _MISSING:
            key = _bearer_key(req)
            if key is not None:
                return self._bearer(req, key, covering)
        if code == _OK:  # the key's first request of this table generation, or in its grace
            info = shared.info(index)
            req.principal = info.principal
            if info.response_headers:
                req.response_headers.extend(info.response_headers)
            if self.spender is not None and self.spender.ahead_tag:
                self.cluster.key_spent_ahead()
            return None
        return self._refuse(code, index, limit, reset, covering, req)

    def _bearer(
        self, req: RequestState, key: bytes, covering: tuple[bytes, ...] | None,
    ) -> ClientError | None:
        """The same decision for a key sent as ``Authorization: Bearer fg_…``; accepted,
        the Authorization header does not go upstream (a key never does)."""
        shared = self.shared
        now = _now()
        code, index, limit, remaining, end = shared.table.check(
            key, now, req.path, self.required, covering, req.client_ip)
        reset = max(int(end - now), 0) if limit else 0
        if code != _OK:  # a cluster quota's wait (_lease_wait) drops the key itself
            return self._refuse(code, index, limit, reset, covering, req)
        if limit:
            merge_ratelimit(req, limit, remaining, reset)
        _drop_authorization(req)
        info = shared.info(index)
        req.principal = info.principal
        if info.response_headers:
            req.response_headers.extend(info.response_headers)
        if self.spender is not None and self.spender.ahead_tag:
            self.cluster.key_spent_ahead()
        return None

    def _lease_wait(self, req: RequestState, index: int) -> ClientError | None:
        """Cluster mode: the key passed every check, but its node holds no unit of its
        quota: the key is accepted once a lease brings one (fluxgate/cluster/quotas.py)."""
        shared = self.shared
        info = shared.info(index)
        req.principal = info.principal
        if info.response_headers:
            req.response_headers.extend(info.response_headers)
        if _bearer_key(req) is not None:
            _drop_authorization(req)
        table = shared.table
        if table is not self._quota_table or len(self._key_quotas) >= 65536:
            self._quota_table, self._key_quotas = table, {}  # indexes of one generation
        quota = self._key_quotas.get(index)
        if quota is None:
            quota = self._key_quotas[index] = self._quota_of(table.entry(index))
        tag, identity, limit, window, refuse = quota
        return self.cluster.admit(req, tag, identity, limit, window, refuse, _now())

    def _quota_of(self, entry: dict[str, Any]) -> tuple[Any, ...]:
        """(tag, identity, limit, window, refuse) of an entry's quota (it has one: the key
        table refused it for its quota)."""
        limit, window, key_id = entry["quota_limit"], entry["quota_period"], entry["key_id"]

        def refuse(req: RequestState, code: int, retry: int) -> ClientError:
            return self._quota_refusal(req, limit, retry, key_id if code == TABLE_FULL else None)

        return (entry["quota_tag"], key_identity(entry["name"], window), limit, window, refuse)

    def _covering(self, req: RequestState) -> tuple[bytes, ...] | None:
        """The scopes of the scope_map rule covering this request, one of which the key
        must hold (None: no rule covers it)."""
        covering = self.policy.covering(req.method, req.path)
        if not covering:
            return None
        encoded = self._covering_encoded.get(covering)
        if encoded is None:
            encoded = self._covering_encoded[covering] = tuple(s.encode() for s in covering)
        return encoded

    def _refuse(
        self, code: int, index: int, limit: int, reset: int,
        covering: tuple[bytes, ...] | None, req: RequestState,
    ) -> ClientError | None:
        if code == _MISSING:
            self._fail("missing_credentials")
            return MissingCredentials(
                f"This route requires an API key in the {self.header} header.",
                challenge=self.missing)
        if code == _AMBIGUOUS:
            self._fail("ambiguous_credentials")
            return InvalidKey("More than one API key in the request.", reason="ambiguous",
                              challenge=self.invalid)
        if code <= _EXPIRED:
            self._fail(REASONS[code])
            return InvalidKey(INVALID_DESCRIPTION, reason=REASONS[code], challenge=self.invalid)
        if code == _SCOPE_DENIED:
            self._fail("insufficient_scope")
            scope = self.policy.challenge or " ".join(sorted(s.decode() for s in covering or ()))
            return InsufficientScope(
                "The API key lacks a scope this request needs.", scope=scope,
                challenge=api_key_challenge(self.header, "insufficient_scope", scope))
        if code == _ROUTE_DENIED:
            self._fail("wrong_route")
            return InsufficientScope("The API key is not valid for this path.",
                                     challenge=self.forbidden)
        if code == _IP_DENIED:
            self._fail("ip_not_allowed")
            return IpNotAllowed("The client address is not allowed for this API key.")
        if code == _QUOTA_EXCEEDED and self.cluster is not None:
            return self._lease_wait(req, index)
        if code == _QUOTA_FULL:
            return self._quota_refusal(req, limit, 1, self.shared.info(index).key_id)
        return self._quota_refusal(req, limit, max(reset, 1), None)

    def _quota_refusal(
        self, req: RequestState, limit: int, retry: int, full_key: str | None,
    ) -> ClientError:
        """quota_exceeded with Retry-After ``retry``, counted; ``full_key``: the id of a key
        refused because the quota table is full (counted apart, and logged)."""
        usage = self.shared.usage
        if full_key is not None:
            usage.count(STAT_KEY_QUOTA_FULL)
            log.warning("quota table full: key %s refused", full_key)
        else:
            usage.count(STAT_KEY_QUOTA)
        return quota_exceeded(
            req, limit, retry, "The API key's quota for this window is used up."
        )

    def _fail(self, reason: str) -> None:
        if self.failures is not None:
            self.failures.count("api_key", reason)


def _drop_authorization(req: RequestState) -> None:
    forward = req.forward_headers
    forward[:] = [pair for pair in forward if pair[0].lower() != b"authorization"]


def _bearer_key(req: RequestState) -> bytes | None:
    """A FluxGate key sent as ``Authorization: Bearer fg_…`` (one Authorization header),
    else None; the prefix tells it from a JWT or an opaque token."""
    token = bearer_token(req.headers)
    return token if token and token.startswith(PREFIX) else None


def check(checker: ConfigChecker, entry: ApiKey, path: Path) -> None:
    """Every required scope is a scope token (a key could never hold anything else)."""
    for k, scope in enumerate(entry.scopes):
        checker.parse(check_scope, scope, (*path, "scopes", k))


def describe(entry: ApiKey) -> str:
    """``api_key scopes=read:metrics query=off``."""
    scopes = ",".join(entry.scopes) or "-"
    return f"api_key scopes={scopes} query={'on' if entry.query else 'off'}"


KIND = MiddlewareKind(
    name="api_key",
    struct=ApiKey,
    build=ApiKeyMiddleware.from_config,
    describe=describe,
    shorthand="scopes",
    authenticates=True,
    check=check,
    scopes=attrgetter("scopes"),  # every one is required
    findings=lazy("fluxgate.cli.audit:api_key_findings"),
    probes=lazy("fluxgate.cli.probe_keys:api_key_probes"),
)
