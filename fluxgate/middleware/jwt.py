"""jwt: bearer JWTs verified in the Cython core against keys the master fetched
(docs/jwt.md).

Per request: take the token (``Authorization: Bearer``; the configured cookie or query
parameter only when named), verify it (``_core.JwtVerifier``, cached), check the route's
``scopes`` and the ``scope_map``, set ``req.principal``. Refusals:

* no token: 401 missing_credentials (``WWW-Authenticate: Bearer realm="fluxgate"``);
* an invalid token, or two Authorization headers: 401 invalid_token with the RFC 6750
  challenge; the stable reason (``expired``, ``bad_signature``, ...) goes to the metrics
  (``fluxgate_auth_failures_total``) and the debug log, never to the client;
* no key set at all (the provider was never reachable, or its keys outlived
  ``jwks_max_stale``): 503 auth_server_unavailable (fail closed);
* a valid token without the scopes: 403 insufficient_scope.

An unknown ``kid`` also asks the master for a JWKS refresh (``auth/jwks.py``). Nothing the
token says can make this middleware raise: an unexpected error is logged and answered 401.

Upstream, the request carries the principal's ``X-FluxGate-*`` headers and the
``forward_claims`` headers; client-sent headers with those names are dropped. The
``Authorization`` header itself is forwarded unchanged (services behind a JWT gateway
commonly read the token again); a token taken from the query string is removed from it.
"""

from __future__ import annotations

import logging
import time
from operator import attrgetter
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote_to_bytes

import orjson

from fluxgate._core import JwtPrincipals, JwtStep, JwtVerifier, TokenError, bearer_token
from fluxgate.auth.failures import AuthFailures
from fluxgate.auth.jwks import KeySource, provider_source
from fluxgate.auth.scopes import ScopePolicy, token_scopes
from fluxgate.config.parsers import (
    JWKS_MIN_REFRESH,
    JWT_ALGORITHMS,
    Path,
    did_you_mean,
    is_header_name,
    is_query_name,
    is_reserved_header,
    parse_key_url,
)
from fluxgate.config.schema import Jwt
from fluxgate.errors import (
    AuthServerUnavailable,
    ClientError,
    InvalidToken,
    MissingCredentials,
)
from fluxgate.middleware.kind import ConfigChecker, MiddlewareKind, lazy

if TYPE_CHECKING:
    from fluxgate.proxy.protocol import RequestState

log = logging.getLogger("fluxgate.auth")

MAX_CLAIM_HEADER = 4096  # a forwarded claim longer than this (encoded) is left out
_AMBIGUOUS: Any = object()  # sentinel: several Authorization headers
_now = time.time
PRINCIPAL_CACHE_SIZE = 4096  # distinct callers whose principal is kept across their tokens


def claim_header_value(value: Any) -> bytes | None:
    """A claim as an HTTP field value: strings as UTF-8, numbers and booleans as JSON,
    arrays of those comma-joined, objects as compact JSON; control characters removed, so
    a claim can never split the request head. None when it cannot be (null, too long)."""
    if value is None:  # a null claim is an absent one
        return None
    try:
        if isinstance(value, str):
            raw = value.encode("utf-8", "replace")
        elif isinstance(value, list) and all(
            isinstance(v, str | bool | int | float) for v in value
        ):
            raw = b", ".join(
                v.encode("utf-8", "replace") if isinstance(v, str) else orjson.dumps(v)
                for v in value
            )
        else:
            raw = orjson.dumps(value)
    except (TypeError, ValueError):  # orjson.JSONEncodeError: nothing a header could hold
        return None
    raw = bytes(b for b in raw if b >= 0x20 and b != 0x7F).strip()
    if not raw or len(raw) > MAX_CLAIM_HEADER:
        return None
    return raw


def build_verifier(config: Jwt) -> JwtVerifier:
    """The ``JwtVerifier`` of one jwt config, without keys: the middleware attaches it to its
    provider's key set; ``fluxctl auth verify`` to the key set of the published snapshot."""
    forward = tuple((claim, header.encode()) for claim, header in config.forward_claims.items())
    forwarded_claims = tuple(claim for claim, _ in forward)
    # Once per newly verified token, at C level: the caller's principal, shared by the
    # tokens naming the same caller, and the scope sets shared by the callers holding them.
    principals = JwtPrincipals(forward, token_scopes, claim_header_value, PRINCIPAL_CACHE_SIZE)
    audiences = config.audience
    if isinstance(audiences, str):
        audiences = [audiences]
    return JwtVerifier(
        algorithms=config.algorithms,
        issuer=config.issuer,
        audiences=audiences,
        leeway=config.clockSkewTolerance,
        require_exp=config.require_exp,
        max_token_bytes=config.max_token_bytes,
        cache_size=config.cache_size,
        secret=config.secret.encode() if config.secret is not None else None,
        prepare=principals,
        # What prepare reads besides the claims the verifier checks: only these are parsed
        # out of a token (identity providers add many a route never forwards).
        claims=("scope", "scp", *forwarded_claims),
    )


class JwtMiddleware(JwtStep):
    """One route's jwt entry, compiled once per worker.

    A request is called with ``middleware(req)``: the compiled JwtStep (``_core``) answers
    the common case, a bearer token in the Authorization header, and calls back here for
    the rest (``_slow_call``, ``_refuse``, ``_failed``, ``_check_scopes``). ``verifier``
    and ``scopes`` are JwtStep's fields."""

    __slots__ = ("keys", "cookie", "query", "drop_headers", "failures")

    method = "jwt"

    def __init__(
        self,
        verifier: JwtVerifier,
        keys: KeySource | None,
        scopes: ScopePolicy,
        *,
        cookie: bytes | None = None,
        query: bytes | None = None,
        drop_headers: frozenset[bytes] = frozenset(),
        failures: AuthFailures | None = None,
    ) -> None:
        self.verifier = verifier
        self.keys = keys
        self.scopes = scopes
        self.cookie = cookie
        self.query = query
        self.drop_headers = drop_headers
        self.failures = failures

    @classmethod
    def from_config(cls, config: Jwt, gateway: Any, route: Any = None) -> JwtMiddleware:
        """Build the verifier, attach it to its provider's keys, compile the scope rules."""
        verifier = build_verifier(config)
        source = provider_source(config)
        keys = None
        if source is not None:
            keys = KeySource.for_gateway(gateway, source)
            keys.attach(verifier)
        scope_map = gateway.config.scope_map if gateway is not None else {}
        return cls(
            verifier,
            keys,
            ScopePolicy(config.scopes, scope_map),
            cookie=config.cookie.encode() if config.cookie else None,
            query=config.query.encode() if config.query else None,
            drop_headers=frozenset(h.lower().encode() for h in config.forward_claims.values()),
            failures=AuthFailures.for_gateway(gateway) if gateway is not None else None,
        )

    # -- the credential ------------------------------------------------------------------

    def token(self, req: RequestState, *, take: bool = True) -> bytes | None:
        """The bearer token the request carries (``b""`` for an empty one, ``_AMBIGUOUS``
        for two Authorization headers), or None. ``take=False`` only looks: a query-string
        token stays in the query."""
        found = bearer_token(req.headers)  # RFC 6750 §2.1, in _core
        if found is None:
            return self._other_token(req, take)
        return _AMBIGUOUS if found is False else found

    def carries(self, req: RequestState) -> bool:
        """Does the request present this method's credential at all? (for ``any``)"""
        return self.token(req, take=False) is not None

    def _other_token(self, req: RequestState, take: bool = True) -> bytes | None:
        # The configured cookie, then the configured query parameter.
        if self.cookie is not None:
            token = self._from_cookie(req)
            if token is not None:
                return token
        if self.query is not None and req.query:
            return self._from_query(req, take)
        return None

    def _from_cookie(self, req: RequestState) -> bytes | None:
        for name, value in req.headers:
            if len(name) == 6 and name.lower() == b"cookie":
                for pair in value.split(b";"):
                    key, sep, token = pair.strip().partition(b"=")
                    if sep and key == self.cookie:
                        return token.strip(b'"')
        return None

    def _from_query(self, req: RequestState, take: bool) -> bytes | None:
        kept, token = [], None
        for pair in req.query.split(b"&"):
            key, sep, value = pair.partition(b"=")
            if sep and token is None and unquote_to_bytes(key) == self.query:
                token = unquote_to_bytes(value)
                if not take:
                    return token
            else:
                kept.append(pair)
        if token is not None:
            req.query = b"&".join(kept)  # the upstream never sees the token in its URL
        return token

    # -- per request ---------------------------------------------------------------------

    def _slow_call(self, req: RequestState) -> ClientError | None:
        # The whole policy, for any request; JwtStep.__call__ takes the common case itself.
        try:
            # The common case in one call: the Authorization header's bearer token, looked
            # up in the verified-token cache where it lies (ambiguous or empty: TokenError).
            principal = self.verifier.authenticate_bearer(req.headers, _now())
            if principal is None:  # no bearer token: the configured cookie or parameter
                token = self._other_token(req)
                if token is None:
                    self._count("missing_credentials")
                    return MissingCredentials()
                if not token:
                    raise TokenError("malformed")
                principal = self.verifier.authenticate(token, _now())
        except TokenError as err:
            return self._refuse(err)
        except Exception:  # never a 500 for what a client sent
            return self._failed()
        if self.scopes.active:
            return self._check_scopes(req, principal)
        req.principal = principal
        return None

    def _check_scopes(self, req: RequestState, principal: Any) -> ClientError | None:
        """The route's scope rules for a verified principal: its refusal, or None with
        ``req.principal`` set."""
        refusal = self.scopes.check(principal.scopes, req.method, req.path)
        if refusal is not None:
            self._count("insufficient_scope")
            return refusal
        req.principal = principal
        return None

    def _failed(self) -> ClientError:
        # Called in the handler of an unexpected error: log.exception has its traceback.
        log.exception("jwt verification failed unexpectedly; answered 401")
        self._count("other")
        return InvalidToken(reason="other")

    def _refuse(self, err: TokenError) -> ClientError:
        reason = err.reason
        self._count(reason)
        if reason == "unknown_kid" and self.keys is not None:
            asked = self.keys.request_refresh(err.kid)
            log.debug("jwt refused: unknown kid %r (refresh %s)", err.kid,
                      "requested" if asked else "already requested")
        else:
            log.debug("jwt refused: %s", reason)
        if reason == "jwks_unavailable":
            return AuthServerUnavailable("the signing keys of this route's identity provider "
                                         "are unavailable")
        return InvalidToken(reason=reason)

    def _count(self, reason: str) -> None:
        if self.failures is not None:
            self.failures.count("jwt", reason)


# ---- the kind -------------------------------------------------------------------------------


def check(checker: ConfigChecker, jwt: Jwt, path: Path) -> None:
    """Algorithms, where keys come from, claims forwarded, token sources."""
    _check_algorithms(checker, jwt, path)
    hmac_algs = [a for a in jwt.algorithms if a.startswith("HS")]
    if len(hmac_algs) < len(jwt.algorithms):
        checker.check(
            jwt.jwks_uri is not None or jwt.issuer is not None,
            path,
            "needs jwks_uri, or issuer for OIDC discovery, to find the signing keys",
        )
    if jwt.jwks_uri is not None:
        checker.parse(parse_key_url, jwt.jwks_uri, (*path, "jwks_uri"))
    elif jwt.issuer is not None and len(hmac_algs) < len(jwt.algorithms):
        checker.parse(parse_key_url, jwt.issuer, (*path, "issuer"))
    checker.check(
        jwt.issuer is None or bool(jwt.issuer.strip()), (*path, "issuer"), "must not be empty"
    )
    audiences = [jwt.audience] if isinstance(jwt.audience, str) else jwt.audience
    if audiences is not None:
        checker.check(bool(audiences), (*path, "audience"), "must not be empty")
        for k, aud in enumerate(audiences):
            checker.check(bool(aud), (*path, "audience", k), "must not be empty")
    checker.check(
        jwt.jwks_max_stale >= jwt.jwks_refresh,
        (*path, "jwks_max_stale"),
        "must be at least jwks_refresh (keys would expire between two polls)",
    )
    checker.check(
        jwt.jwks_refresh >= JWKS_MIN_REFRESH,
        (*path, "jwks_refresh"),
        f"must be at least {JWKS_MIN_REFRESH:g}s (do not hammer the identity provider)",
    )
    _check_forwarded_claims(checker, jwt, path)
    for k, scope in enumerate(jwt.scopes):
        checker.check(
            bool(scope) and not any(c.isspace() for c in scope),
            (*path, "scopes", k),
            "a scope is a non-empty word without spaces",
        )
    if jwt.cookie is not None:
        checker.check(is_header_name(jwt.cookie), (*path, "cookie"), "invalid cookie name")
    if jwt.query is not None:
        checker.check(
            is_query_name(jwt.query),
            (*path, "query"),
            f"invalid query parameter name {jwt.query!r}",
        )


def _check_algorithms(checker: ConfigChecker, jwt: Jwt, path: Path) -> None:
    """Known algorithms, never ``none``; an HS* one needs a long enough shared secret."""
    for k, alg in enumerate(jwt.algorithms):
        checker.check(
            alg.lower() != "none",
            (*path, "algorithms", k),
            "alg 'none' is never accepted (an unsigned token proves nothing)",
        )
        checker.check(
            alg in JWT_ALGORITHMS,
            (*path, "algorithms", k),
            f"unsupported algorithm {alg!r}{did_you_mean(alg, JWT_ALGORITHMS)}; "
            f"supported: {', '.join(JWT_ALGORITHMS)}",
        )
    checker.check(bool(jwt.algorithms), (*path, "algorithms"), "must not be empty")
    hmac_algs = [a for a in jwt.algorithms if a.startswith("HS")]
    if not hmac_algs:
        checker.check(
            jwt.secret is None,
            (*path, "secret"),
            "a shared secret is only used with HS256/HS384/HS512 in algorithms",
        )
        return
    checker.check(
        jwt.secret is not None,
        (*path, "secret"),
        f"{', '.join(hmac_algs)} needs a shared secret (secret: ${{JWT_SECRET}})",
    )
    need = max(int(a[2:]) // 8 for a in hmac_algs)
    # RFC 7518 §3.2: a key at least as long as the hash output. The value is not echoed: it
    # is a secret.
    checker.check(
        jwt.secret is None or len(jwt.secret.encode()) >= need,
        (*path, "secret"),
        f"must be at least {need} bytes for {', '.join(hmac_algs)} (RFC 7518 §3.2)",
    )


def _check_forwarded_claims(checker: ConfigChecker, jwt: Jwt, path: Path) -> None:
    """Each claim goes to its own header, one the gateway and HTTP leave alone."""
    seen: dict[str, str] = {}
    for claim, header in jwt.forward_claims.items():
        where = (*path, "forward_claims", claim)
        checker.check(bool(claim), where, "a claim name must not be empty")
        checker.check(is_header_name(header), where, f"invalid header name {header!r}")
        checker.check(
            not is_reserved_header(header),
            where,
            f"{header} is set by the gateway or by HTTP itself; choose another name",
        )
        lower = header.lower()
        checker.check(
            lower not in seen, where, f"{header} is already the target of {seen.get(lower)!r}"
        )
        seen[lower] = claim


def describe(jwt: Jwt) -> str:
    """``jwt algorithms=RS256 issuer=... audience=...``; a shared secret is said to be set."""
    parts = [f"algorithms={','.join(jwt.algorithms)}"]
    if jwt.issuer:
        parts.append(f"issuer={jwt.issuer}")
    if jwt.audience:
        aud = jwt.audience if isinstance(jwt.audience, str) else ",".join(jwt.audience)
        parts.append(f"audience={aud}")
    if jwt.jwks_uri:
        parts.append(f"jwks_uri={jwt.jwks_uri}")
    if jwt.secret is not None:
        parts.append("secret=(set)")
    if jwt.scopes:
        parts.append(f"scopes={','.join(jwt.scopes)}")
    return "jwt " + " ".join(parts)


KIND = MiddlewareKind(
    name="jwt",
    struct=Jwt,
    build=JwtMiddleware.from_config,
    describe=describe,
    authenticates=True,
    check=check,
    scopes=attrgetter("scopes"),  # every one is required
    findings=lazy("fluxgate.cli.audit:jwt_findings"),
    probes=lazy("fluxgate.cli.probe:jwt_probes"),
)
