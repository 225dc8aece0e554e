"""oauth2: opaque bearer tokens validated by RFC 7662 introspection (resource server).

    - oauth2: {issuer: https://as.example.com, client_id: gateway, client_secret: ${SECRET},
               audience: inventory-api, scopes: [read:inventory]}

Per request: take the ``Authorization: Bearer`` token and look it up, by its SHA-256, in
the provider's shared result table (one call into ``_core.IntrospectionCache``). A hit is
checked here on every request — ``active``, ``exp`` (the gateway's clock), ``nbf`` (with
``clockSkewTolerance``), ``iss`` when the server sent it, ``aud`` when an audience is
configured, ``token_type`` when sent, the route's ``scopes`` and the ``scope_map`` — and
sets the principal (method oauth2, subject = ``sub``, else ``username``, else
``client_id``; scopes from ``scope``; ``X-FluxGate-Client-Id``). A miss asks the master's
side pool and suspends the request (``proxy/suspend.py``) without blocking the worker.

Answers: 401 missing_credentials (no token); 401 invalid_token (inactive, expired, not
yet valid, wrong issuer, audience or token type, two Authorization headers; the reason
goes to ``fluxgate_auth_failures_total``, never to the client); 403 insufficient_scope;
503 auth_server_unavailable with ``Retry-After`` when the authorization server cannot be
asked or answers something that cannot be trusted (fail closed); 429 when the optional
``miss_rate`` limit of a client is spent.
"""

from __future__ import annotations

import logging
import mmap
import time
from operator import attrgetter
from typing import TYPE_CHECKING, Any

from fluxgate._core import Counters, IntrospectionCache, bearer_token
from fluxgate.auth.failures import AuthFailures
from fluxgate.auth.introspection import (
    ACCESS_TOKEN_TYPES,
    CTL_MAGIC,
    CTL_SLOTS,
    SLOT_HITS,
    SLOT_MAGIC,
    SLOT_MISSES,
    SLOT_RATE_LIMITED,
    IntrospectedToken,
    cache_path,
    ctl_path,
    decode_record,
    provider_source,
)
from fluxgate.auth.runtime import worker_shared
from fluxgate.auth.scopes import ScopePolicy
from fluxgate.auth.sidepool_client import SidePoolClient
from fluxgate.config.parsers import Path, check_scope, parse_key_url, parse_redirect_uri
from fluxgate.config.schema import OAuth2
from fluxgate.config.units import parse_rate
from fluxgate.errors import (
    AuthServerUnavailable,
    ClientError,
    InvalidToken,
    MissingCredentials,
    QuotaExceeded,
)
from fluxgate.middleware.kind import ConfigChecker, MiddlewareKind, lazy
from fluxgate.proxy.suspend import Suspended
from fluxgate.shm import open_mapping

if TYPE_CHECKING:
    from fluxgate._core import RequestState

log = logging.getLogger("fluxgate.auth")
_now = time.time

MAX_TOKEN_BYTES = 8192
KNOWN_LIMIT = 65536  # decoded records a worker keeps per provider
RETRY_AFTER = b"5"
_UNSET: Any = object()


class ProviderView:
    """A worker's mapping of one provider's shared table and counters, shared by every
    oauth2 middleware of the worker that uses the provider."""

    __slots__ = ("source", "cache", "known", "ctl", "_maps")

    def __init__(self, state_dir: str, source: str) -> None:
        self.source = source
        cache_map = open_mapping(cache_path(state_dir, source))
        ctl_map = open_mapping(ctl_path(state_dir, source), _check_ctl_size)
        self._maps: tuple[mmap.mmap, ...] = (cache_map, ctl_map)
        self.cache = IntrospectionCache(cache_map, writable=False)
        self.ctl = Counters(ctl_map)
        if self.ctl.load(SLOT_MAGIC) != CTL_MAGIC:
            raise ValueError(f"{ctl_path(state_dir, source)}: not an oauth2 counter file")
        # Decoded records by their table stamp: a hit on a known stamp decodes nothing.
        self.known: dict[int, IntrospectedToken] = {}

    def remember(self, found: tuple[int, bool, float, bytes]) -> IntrospectedToken:
        """Decode a record the table returned, and keep it for the next hits."""
        stamp, _active, _expires, payload = found
        entry = IntrospectedToken(decode_record(payload))
        known = self.known
        if len(known) >= KNOWN_LIMIT:
            known.clear()  # stamps of overwritten slots are never seen again
        known[stamp] = entry
        return entry


def _check_ctl_size(size: int) -> None:
    if size != CTL_SLOTS * 8:
        raise ValueError(f"unexpected counter file size {size}")


class MissRateLimit:
    """Cache misses per client address in fixed windows, per worker (so a gateway with N
    workers admits up to N times ``limit`` per client): a flood of random tokens from one
    client costs the authorization server at most that much."""

    __slots__ = ("limit", "window", "counts", "current")

    def __init__(self, rate: str) -> None:
        self.limit, self.window = parse_rate(rate)
        self.counts: dict[str, int] = {}
        self.current = 0

    def allow(self, client: str, now: float) -> bool:
        window = int(now) // self.window
        if window != self.current:
            self.current, self.counts = window, {}
        count = self.counts.get(client, 0) + 1
        if len(self.counts) < 1_000_000:  # bounded whatever the number of addresses
            self.counts[client] = count
        return count <= self.limit

    def retry_after(self, now: float) -> int:
        return max(1, self.window - int(now) % self.window)


class OAuth2Middleware:
    """One route's oauth2 entry, compiled once per worker."""

    __slots__ = ("view", "client", "scopes", "issuer", "audiences", "leeway", "timeout",
                 "failures", "limiter", "key", "source")  # fmt: skip

    method = "oauth2"

    def __init__(self, view: ProviderView, client: SidePoolClient, config: OAuth2,
                 scopes: ScopePolicy, failures: AuthFailures | None = None) -> None:
        self.view = view
        self.source = view.source
        self.client = client
        self.scopes = scopes
        self.issuer = config.issuer
        audience = config.audience
        self.audiences = frozenset([audience] if isinstance(audience, str) else audience or ())
        self.leeway = config.clockSkewTolerance
        self.timeout = config.timeout
        self.failures = failures
        self.limiter = MissRateLimit(config.miss_rate) if config.miss_rate else None
        self.key = id(self)

    @classmethod
    def from_config(cls, config: OAuth2, gateway: Any, route: Any = None) -> Any:
        """Map the provider's table (the master created it) and bind the side-pool line;
        with ``login: true``, the browser login instead (``middleware/oauth2_login.py``)."""
        if config.login:
            from fluxgate.middleware.oauth2_login import LoginMiddleware

            return LoginMiddleware.from_config(config, gateway, route)
        source = provider_source(config)
        view = worker_shared(gateway, ("oauth2", source),
                             lambda: ProviderView(gateway.state_dir, source))
        client = worker_shared(gateway, "oauth2-sidepool",
                               lambda: SidePoolClient(gateway.loop, gateway.state_dir))
        return cls(view, client, config, ScopePolicy(config.scopes, gateway.config.scope_map),
                   AuthFailures.for_gateway(gateway))

    def carries(self, req: RequestState) -> bool:
        """Does the request present a bearer token at all? (for ``any``)"""
        return bearer_token(req.headers) is not None

    def __call__(self, req: RequestState) -> ClientError | None:
        token = bearer_token(req.headers)
        if token is None:
            self._count("missing_credentials")
            return MissingCredentials()
        if token is False:
            self._count("ambiguous_credentials")
            return InvalidToken(reason="ambiguous_credentials")
        if not token or len(token) > MAX_TOKEN_BYTES:
            self._count("malformed" if not token else "token_too_large")
            return InvalidToken(reason="malformed")
        now = _now()
        view = self.view
        found = view.cache.lookup(token, now, view.known)
        if found is None:
            return self._miss(req, token, now)
        if type(found) is tuple:
            found = view.remember(found)
        view.ctl.add(SLOT_HITS)
        return self.decide(req, found, now)

    # ---- a miss: ask the side pool --------------------------------------------------------

    def _miss(self, req: RequestState, token: bytes, now: float) -> ClientError | None:
        limiter = self.limiter
        if limiter is not None and not limiter.allow(req.client_ip, now):
            self.view.ctl.add(SLOT_RATE_LIMITED)
            self._count("miss_rate_limited")
            retry = limiter.retry_after(now)
            return QuotaExceeded("Too many unknown tokens from this client; try again later.",
                                 headers=((b"Retry-After", b"%d" % retry),))
        self.view.ctl.add(SLOT_MISSES)
        future = self.client.ask(self.source, token, self.timeout)
        raise Suspended(future, lambda r: self._answered(r, future.result()))

    def _answered(self, req: RequestState, answer: tuple[str, bytes]) -> ClientError | None:
        outcome, payload = answer
        if outcome == "active" or outcome == "inactive":
            try:
                entry = IntrospectedToken(decode_record(payload))
            except ValueError:
                log.error("side pool answered an undecodable record")
                return self._unavailable("introspection_invalid")
            return self.decide(req, entry, _now())
        if outcome == "invalid":
            return self._unavailable("introspection_invalid")
        return self._unavailable("auth_server_unavailable")

    def _unavailable(self, reason: str) -> ClientError:
        self._count(reason)
        return AuthServerUnavailable(
            "The authorization server could not confirm this token; try again later.",
            headers=((b"Retry-After", RETRY_AFTER),),
        )

    # ---- what the answer allows -------------------------------------------------------------

    def decide(self, req: RequestState, entry: IntrospectedToken,
               now: float) -> ClientError | None:
        """What an introspection answer allows for ``req`` (sets its principal when it
        does); None to go on, else the refusal."""
        if not entry.active:
            return self._refuse("inactive")
        if entry.exp is not None and entry.exp <= now:
            return self._refuse("expired")
        if entry.nbf is not None and entry.nbf > now + self.leeway:
            return self._refuse("not_yet_valid")
        verdict = entry.verdicts.get(self.key, _UNSET)
        if verdict is _UNSET:
            verdict = entry.verdicts[self.key] = self._verdict(entry)
        if verdict is not None:
            return self._refuse(verdict)
        principal = entry.principal
        if self.scopes.active:
            refusal = self.scopes.check(principal.scopes, req.method, req.path)
            if refusal is not None:
                self._count("insufficient_scope")
                return refusal
        req.principal = principal
        return None

    def _verdict(self, entry: IntrospectedToken) -> str | None:
        """The checks that depend on neither the time nor the request (once per record)."""
        record = entry.record
        if self.issuer is not None and record.iss is not None and record.iss != self.issuer:
            return "wrong_issuer"
        if self.audiences and not self.audiences.intersection(record.aud):
            return "wrong_audience"
        if record.token_type is not None and record.token_type.lower() not in ACCESS_TOKEN_TYPES:
            return "wrong_token_type"
        return None

    def _refuse(self, reason: str) -> ClientError:
        self._count(reason)
        return InvalidToken(reason=reason)

    def _count(self, reason: str) -> None:
        if self.failures is not None:
            self.failures.count("oauth2", reason)


# ---- configuration ----------------------------------------------------------------------------


def check(checker: ConfigChecker, entry: OAuth2, path: Path) -> None:
    """Where tokens are introspected, how the gateway authenticates there, what is cached."""
    checker.check(bool(entry.client_id.strip()), (*path, "client_id"), "must not be empty")
    checker.check(
        entry.introspection_endpoint is not None or entry.issuer is not None,
        path,
        "needs introspection_endpoint, or issuer for RFC 8414 / OIDC discovery",
    )
    if entry.login:
        check_login(checker, entry, path)
    for field in ("issuer", "introspection_endpoint"):
        value = getattr(entry, field)
        if value is not None:
            # https, or plain http on loopback only: a token sent in clear text is stolen.
            checker.parse(parse_key_url, value, (*path, field))
    if entry.auth_method == "private_key_jwt":
        checker.check(entry.private_key is not None, (*path, "private_key"),
                      "private_key_jwt needs private_key: the PEM file that signs assertions")
        checker.check(entry.client_secret is None, (*path, "client_secret"),
                      "not used with private_key_jwt; remove it")
    else:
        checker.check(
            bool(entry.client_secret), (*path, "client_secret"),
            f"{entry.auth_method} needs client_secret (client_secret: ${{OAUTH_CLIENT_SECRET}})",
        )
        checker.check(entry.private_key is None, (*path, "private_key"),
                      "only used with auth_method: private_key_jwt")
    audiences = [entry.audience] if isinstance(entry.audience, str) else entry.audience
    if audiences is not None:
        checker.check(bool(audiences), (*path, "audience"), "must not be empty")
        for k, aud in enumerate(audiences):
            checker.check(bool(aud), (*path, "audience", k), "must not be empty")
    for k, scope in enumerate(entry.scopes):
        checker.parse(check_scope, scope, (*path, "scopes", k))
    if entry.miss_rate is not None:
        checker.parse(parse_rate, entry.miss_rate, (*path, "miss_rate"))
    checker.check(
        entry.codeChallengeMethod == "S256", (*path, "codeChallengeMethod"),
        "PKCE must use S256 (RFC 7636 §4.2: plain protects nothing against a code thief)",
    )


def check_login(checker: ConfigChecker, entry: OAuth2, path: Path) -> None:
    """What the browser login needs: an issuer to discover, a fixed https callback, ..."""
    checker.check(entry.issuer is not None, (*path, "issuer"),
                  "login: true needs issuer (the login endpoints come from its discovery)")
    checker.check(entry.redirect_uri is not None, (*path, "redirect_uri"),
                  "login: true needs redirect_uri, the callback registered at the server "
                  "(e.g. https://app.example.com/oauth2/callback)")
    for field in ("redirect_uri", "post_logout_redirect_uri"):
        value = getattr(entry, field)
        if value is not None:
            checker.parse(parse_redirect_uri, value, (*path, field))
    for field in ("logout_path", "backchannel_logout_path"):
        value = getattr(entry, field)
        if value is not None:
            checker.check(value.startswith("/") and not value.startswith("//")
                          and "?" not in value and "#" not in value,
                          (*path, field), "must be a path such as /.fluxgate/logout")
    checker.check("openid" in entry.login_scopes, (*path, "login_scopes"),
                  "must include openid: the login verifies an OpenID Connect ID token")
    for k, scope in enumerate(entry.login_scopes):
        checker.parse(check_scope, scope, (*path, "login_scopes", k))
    for field in ("allowed_origins", "allowed_return_origins"):
        for k, origin in enumerate(getattr(entry, field)):
            checker.check(origin.startswith(("https://", "http://")) and origin.count("/") == 2,
                          (*path, field, k), "must be an origin such as https://app.example.com")
    for k, prefix in enumerate(entry.api_paths):
        checker.check(prefix.startswith("/"), (*path, "api_paths", k), "must start with /")
    name = entry.session.cookie
    checker.check(name.startswith("__Host-") and name.replace("-", "").replace("_", "").isalnum(),
                  (*path, "session", "cookie"),
                  "must start with __Host- (a Secure, host-only cookie) and be a plain token")
    checker.check(entry.session.idle <= entry.session.absolute, (*path, "session", "idle"),
                  "must not exceed session.absolute")


def describe(entry: OAuth2) -> str:
    """``oauth2 introspection=... client_id=... auth=client_secret_basic``; never a secret."""
    where = entry.introspection_endpoint or f"(discovered from {entry.issuer})"
    parts = [f"introspection={where}", f"client_id={entry.client_id}",
             f"auth={entry.auth_method}"]
    if entry.audience:
        aud = entry.audience if isinstance(entry.audience, str) else ",".join(entry.audience)
        parts.append(f"audience={aud}")
    if entry.scopes:
        parts.append(f"scopes={','.join(entry.scopes)}")
    parts.append(f"cache_ttl={entry.cache_ttl:g}s")
    return "oauth2 " + " ".join(parts)


KIND = MiddlewareKind(
    name="oauth2",
    struct=OAuth2,
    build=OAuth2Middleware.from_config,
    describe=describe,
    authenticates=True,
    check=check,
    scopes=attrgetter("scopes"),  # every one is required
    findings=lazy("fluxgate.cli.audit:oauth2_findings"),
    probes=lazy("fluxgate.cli.probe_oauth2:oauth2_probes"),
)
