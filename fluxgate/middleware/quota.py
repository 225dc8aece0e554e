"""quota: a request budget per fixed UTC window, after any authentication method.

    - quota: {limit: 1000/m, by: subject}   # by: subject (default) | key | ip

``subject`` counts per principal (``Principal.id``: a JWT's issuer and subject, an API key's
name, ...), ``key`` per API key name (the principal's id for other methods), ``ip`` per
resolved client address (usable on public routes). Each route's rule counts on its own, in
the shared quota file: exact across workers and kept across restarts. Accepted responses
carry RateLimit-Limit/Remaining/Reset; a spent budget is 429 quota_exceeded with Retry-After.
In cluster mode (a Redis ``store``) the budget is the cluster's, spent through leases
(``fluxgate/cluster/quotas.py``, docs/cluster.md).
A principal is required for ``subject`` and ``key`` (the config checker makes sure an
authentication middleware comes first); without one the request is refused, never counted
against someone else.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

from fluxgate._core import merge_ratelimit
from fluxgate.auth.keytable import STAT_RULE_FULL, STAT_RULE_REJECTED, SharedKeys
from fluxgate.auth.quotas import quota_exceeded, rule_identity
from fluxgate.cluster.quotas import ClusterQuotas
from fluxgate.config.parsers import Path
from fluxgate.config.schema import Quota
from fluxgate.config.units import parse_rate
from fluxgate.errors import ClientError, MissingCredentials
from fluxgate.middleware.kind import ConfigChecker, MiddlewareKind

if TYPE_CHECKING:
    from fluxgate.proxy.protocol import RequestState

log = logging.getLogger("fluxgate.quota")
_now = time.time  # bound once: the hot path does no module attribute lookup

_TAG_CACHE_LIMIT = 65536


class QuotaMiddleware:
    """One quota rule of one route."""

    __slots__ = ("shared", "limit", "window", "by", "prefix", "_tags", "cluster")

    def __init__(self, shared: SharedKeys, limit: int, window: int, by: str, route: str,
                 cluster: ClusterQuotas | None = None) -> None:
        self.shared = shared
        self.cluster = cluster  # cluster mode: the budget is shared through Redis
        self.limit = limit
        self.window = window
        self.by = by
        self.prefix = rule_identity(route, by, window)
        # identity -> (bucket tag, the bucket's name): the tag is an HMAC, worth caching,
        # and cluster mode names the bucket in Redis by its name.
        self._tags: dict[str, tuple[int, bytes]] = {}

    @classmethod
    def from_config(cls, config: Quota, gateway: Any, route: Any) -> QuotaMiddleware:
        limit, window = parse_rate(config.limit)
        shared = SharedKeys.for_gateway(gateway, with_keys=False)
        cluster = ClusterQuotas.for_gateway(gateway, shared.quotas)
        return cls(shared, limit, window, config.by, route.route, cluster)

    def identity(self, req: RequestState) -> str | None:
        """Whose budget this request spends, or None when it names nobody."""
        if self.by == "ip":
            return req.client_ip or None
        principal = req.principal
        if principal is None:
            return None
        if self.by == "key":
            return principal.key_name or principal.id
        return principal.id

    def __call__(self, req: RequestState) -> ClientError | None:
        who = self.identity(req)
        if who is None:
            return MissingCredentials("This route's quota needs an authenticated caller.")
        quotas = self.shared.quotas
        try:
            tag, bucket = self._tags[who]
        except KeyError:
            if len(self._tags) >= _TAG_CACHE_LIMIT:
                self._tags.clear()
            bucket = self.prefix + who.encode("utf-8", "surrogatepass")
            tag = quotas.tag(bucket)
            self._tags[who] = tag, bucket
        now = _now()
        if self.cluster is not None:
            return self.cluster.admit(req, tag, bucket, self.limit, self.window, self._refuse,
                                      now)
        code, remaining, end = quotas.consume(tag, self.limit, self.window, now)
        if code == 0:
            merge_ratelimit(req, self.limit, remaining, end - int(now))
            return None
        return self._refuse(req, code, max(end - int(now), 1))

    def _refuse(self, req: RequestState, code: int, retry: int) -> ClientError:
        """429: the budget is spent (code 1), or no quota bucket is free (code 2)."""
        if code == 2:
            self.shared.usage.count(STAT_RULE_FULL)
            log.warning("quota table full: a request on a %s rule was refused", self.by)
            retry = 1
        else:
            self.shared.usage.count(STAT_RULE_REJECTED)
        return quota_exceeded(
            req, self.limit, retry, "The quota for this window is used up."
        )


def check(checker: ConfigChecker, entry: Quota, path: Path) -> None:
    """The limit reads ``N/window``."""
    checker.parse(parse_rate, entry.limit, (*path, "limit"))


def check_in_chain(checker: ConfigChecker, entry: Quota, path: Path, authenticated: bool) -> None:
    """A quota by subject or key counts per principal: an authentication middleware must
    come before it in the chain (by: ip needs none)."""
    if entry.by != "ip":
        checker.check(
            authenticated,
            (*path, "by"),
            f"a quota by {entry.by} needs an authentication middleware before it "
            "in the chain (or use by: ip)",
        )


def describe(entry: Quota) -> str:
    """``quota 1000/m by subject``."""
    return f"quota {entry.limit} by {entry.by}"


KIND = MiddlewareKind(
    name="quota",
    struct=Quota,
    build=QuotaMiddleware.from_config,
    describe=describe,
    shorthand="limit",
    check=check,
    check_in_chain=check_in_chain,
)
