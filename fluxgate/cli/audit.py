"""What ``fluxctl routes explain`` and ``fluxctl auth verify`` compute.

* ``explain``: route a request the way a worker does (``_core.normalize_path``, the worker's
  ``Router`` and method sets) and say which route, which middleware, which scope rules and,
  for given scopes, whether they would be authorized and by which rule.
* ``findings``: what an operator should know about a route's security (stable codes, a
  severity, one line each).
* ``check_token`` / ``check_api_key``: the real decision of the route's jwt or api_key
  middleware for one credential, offline. A token is verified by the middleware's own code
  against the key set the running gateway's master published in ``state_dir/jwks/`` (nothing
  is fetched here: without a snapshot the gateway must have fetched the keys once). A key is
  checked by ``ApiKeyMiddleware`` against a table built from keys.db as the master builds it,
  mapped without usage slots or quota counters, so the check stamps nothing and spends no quota.

Every result is a JSON-ready dict; nothing here prints, and no token or key is ever put in
one (a key id at most).
"""

from __future__ import annotations

import ipaddress
import time
from typing import Any
from urllib.parse import urlsplit

from fluxgate._core import KeyTable, PathError, RequestState, normalize_path
from fluxgate.auth.introspection import provider_source as oauth2_source
from fluxgate.auth.jwks import provider_source, read_snapshot, snapshot_keys, snapshot_path
from fluxgate.auth.keyops import KeyOps
from fluxgate.auth.keys import key_id_of, load_signing_key
from fluxgate.auth.keytable import SharedKeys, build_table, usage_slot
from fluxgate.auth.scopes import ScopePolicy
from fluxgate.cli.audit_login import login_findings, login_route_findings
from fluxgate.cli.findings import SEVERITIES, Finding, worst  # noqa: F401 - audit.worst
from fluxgate.config import schema
from fluxgate.config.resolve import is_loopback, listen_address, listen_tls, parse_listen
from fluxgate.errors import ClientError, FluxGateError
from fluxgate.middleware import auth_methods, kind_of
from fluxgate.middleware.any import is_jws_shaped
from fluxgate.middleware.api_key import ApiKeyMiddleware
from fluxgate.middleware.jwt import JwtMiddleware, build_verifier
from fluxgate.middleware.oauth2 import OAuth2Middleware, ProviderView
from fluxgate.proxy.app import route_methods
from fluxgate.proxy.router import Router
from fluxgate.tls import EXPIRING_SOON, TlsConfigError, listener_certificates, read_certificate

# Revoked and expired keys stay in the master's table this long (master/keys.py KEEP_DEAD),
# so a refusal can say "revoked" rather than "unknown".
KEEP_DEAD = 7 * 86400.0


class AuditError(FluxGateError):
    """The question cannot be answered (no route, no key snapshot, no signing secret)."""


# ---- routing --------------------------------------------------------------------------------


def route_request(config: schema.Config, method: str, path: str) -> dict[str, Any]:
    """Route ``method path`` as a worker's ``ClientConnection._route`` does.

    ``refusal`` is the local reply the gateway would send before any middleware runs (400
    for an ambiguous path, 404, 405), else None. ``route`` is None only for 400 and 404."""
    method = method.upper()
    raw, _, _query = path.partition("?")
    doc: dict[str, Any] = {
        "request": {"method": method, "path": raw, "normalized": None},
        "refusal": None, "route": None,
    }
    if not raw.startswith("/"):
        doc["refusal"] = _refusal(400, "bad_request", "request target must be origin-form")
        return doc
    try:
        normalized = normalize_path(raw.encode("utf-8"))
    except PathError as exc:
        doc["refusal"] = _refusal(400, "bad_request", f"ambiguous or malformed path: {exc}")
        return doc
    doc["request"]["normalized"] = normalized.decode("latin-1")
    router: Router[int] = Router((r.route, i) for i, r in enumerate(config.routes))
    index = router.match(normalized)
    if index is None:
        doc["refusal"] = _refusal(404, "no_route", "no route matches this path")
        return doc
    route = config.routes[index]
    methods = route_methods(route)
    doc["route"] = {
        "index": index,
        "prefix": route.route,
        "upstream": route.upstream,
        "methods": sorted(m.decode() for m in methods) if methods is not None else None,
        "public": route.public,
        "websocket": route.websocket,
        "strip_prefix": route.strip_prefix,
    }
    doc["method_allowed"] = methods is None or method.encode() in methods
    if not doc["method_allowed"]:
        allow = ", ".join(sorted(m.decode() for m in methods or ()))
        doc["refusal"] = _refusal(405, "method_not_allowed", f"Allow: {allow}")
    doc["chain"] = [describe_middleware(m) for m in route.middleware]
    return doc


def _refusal(status: int, code: str, message: str) -> dict[str, Any]:
    return {"status": status, "code": code, "message": message}


def describe_middleware(m: Any) -> dict[str, Any]:
    """One chain entry as ``{"kind", "summary"}``, the summary its kind's ``describe``."""
    try:
        kind = kind_of(m)
    except ValueError:  # a hand-built config may hold anything
        return {"kind": type(m).__name__, "summary": type(m).__name__}
    return {"kind": kind.name, "summary": kind.describe(m)}


# ---- scopes ---------------------------------------------------------------------------------


def scope_decisions(
    config: schema.Config, route: schema.Route, method: str, path: str,
    held: frozenset[str] | None,
) -> list[dict[str, Any]]:
    """Per auth method of the route: the scopes it requires, the scope_map rules covering
    ``method path`` (normalized), and with ``held`` whether those scopes are authorized."""
    out = []
    m, p = method.encode(), path.encode("latin-1")
    for auth in auth_methods(route):
        kind = kind_of(auth)
        policy = ScopePolicy(kind.scopes(auth), config.scope_map)
        covering = [
            {"scope": scope, "rule": rule}
            for scope, rules in config.scope_map.items()
            for rule in rules
            if ScopePolicy((), {scope: [rule]}).covering(m, p)
        ]
        doc: dict[str, Any] = {
            "method": kind.name,
            "required": sorted(policy.required),
            "covering": covering,
        }
        if held is not None:
            doc["decision"] = _scope_verdict(policy, held, m, p, covering)
        out.append(doc)
    return out


def _scope_verdict(policy: ScopePolicy, held: frozenset[str], method: bytes, path: bytes,
                   covering: list[dict[str, str]]) -> dict[str, Any]:
    refusal = policy.check(held, method, path)
    missing = sorted(policy.required - held)
    if refusal is not None:
        if missing:
            why = f"lacks the route's required scope(s) {' '.join(missing)}"
        else:
            rules = "; ".join(f"{c['scope']}: {c['rule']}" for c in covering)
            why = f"holds none of the scopes whose scope_map rules cover it ({rules})"
        return {"authorized": False, "status": 403, "why": why}
    reasons = []
    if policy.required:
        reasons.append(f"holds every required scope ({' '.join(sorted(policy.required))})")
    granting = [c for c in covering if c["scope"] in held]
    if granting:
        reasons.append(f"scope {granting[0]['scope']} by rule \"{granting[0]['rule']}\"")
    if not reasons:
        reasons.append("no required scope and no scope_map rule covers this request")
    return {"authorized": True, "why": "; ".join(reasons)}


def explain(config: schema.Config, method: str, path: str,
            scopes: list[str] | None = None) -> dict[str, Any]:
    """``fluxctl routes explain``: the routing decision and the scope decision."""
    doc = route_request(config, method, path)
    if doc["route"] is not None:
        route = config.routes[doc["route"]["index"]]
        held = frozenset(scopes) if scopes is not None else None
        doc["scopes"] = scope_decisions(config, route, doc["request"]["method"],
                                        doc["request"]["normalized"], held)
    return doc


# ---- findings -------------------------------------------------------------------------------


def config_findings(config: schema.Config) -> list[Finding]:
    """Findings about the gateway as a whole."""
    found = []
    if not config.admin.token:
        found.append(Finding(
            "admin_token_generated", "info",
            "admin.token is not set: the gateway uses the token it generated in "
            "state_dir/admin.token (fine; set admin.token to manage it yourself)"))
    for cidr in config.trusted_proxies:
        if ipaddress.ip_network(cidr, strict=False).prefixlen == 0:
            found.append(Finding(
                "trusted_proxies_wide", "error",
                f"trusted_proxies has {cidr}: any peer can set X-Forwarded-For, so ip_allow, "
                "key IP allowlists and per-IP quotas can be bypassed"))
    return found + listener_findings(config)


def listener_findings(config: schema.Config, now: float | None = None) -> list[Finding]:
    """The listener: plain HTTP with nothing in front, or certificates near their end."""
    tls = listen_tls(config)
    if tls is None:
        address = listen_address(config)
        if config.trusted_proxies or is_loopback(parse_listen(address)[0]):
            # A proxy in front is declared (TLS presumably ends there), or nothing but this
            # host can connect: no credential crosses a network in clear text.
            return []
        return [Finding(
            "plain_http_listener", "info",
            f"the listener ({address}) is plain HTTP and trusted_proxies is "
            "empty: tokens and keys cross the network in clear text unless something in "
            "front terminates TLS (add listen.tls, or list that proxy in trusted_proxies)")]
    now = time.time() if now is None else now
    found = []
    for cert, _key in listener_certificates(tls):
        try:
            info = read_certificate(cert)
        except TlsConfigError:
            continue  # the config loaded, so the file was readable a moment ago
        left = info.not_after - now
        when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(info.not_after))
        if left <= 0:
            found.append(Finding(
                "tls_certificate_expired", "error",
                f"the listener's certificate {cert} ({info.subject}) expired on "
                f"{when}: clients refuse it"))
        elif left < EXPIRING_SOON:
            found.append(Finding(
                "tls_certificate_expiring", "warning",
                f"the listener's certificate {cert} ({info.subject}) expires on "
                f"{when}, in {left / 86400:.1f} days: renew it and send SIGHUP"))
    return found


def route_findings(config: schema.Config, route: schema.Route) -> list[Finding]:
    """Findings about one route."""
    found = []
    auths = list(auth_methods(route))
    kinds = {kind_of(m).name for m in route.middleware}
    if not auths:
        if "ip_allow" in kinds:
            found.append(Finding(
                "ip_allow_only", "warning",
                "only ip_allow guards this route: callers are never identified"))
        else:
            found.append(Finding(
                "public_route", "warning",
                "public: true and no authentication: anyone who reaches the gateway gets in"))
    elif route.public and enforcing_auth(route):
        names = ", ".join(dict.fromkeys(kind_of(m).name for m in enforcing_auth(route)))
        found.append(Finding(
            "public_with_auth", "warning",
            f"public: true, yet {names} authenticates every request here: callers without "
            "a credential are refused all the same. Drop public: true (it only says a route "
            "without authentication is open on purpose, so it would hide the middleware's "
            "removal), or drop the middleware if the route is meant to be open"))
    for auth in auths:
        found += kind_of(auth).findings(config, auth)
        if isinstance(auth, schema.OAuth2) and auth.login:
            found += login_route_findings(route, auth)
    if "quota" not in kinds:
        found.append(Finding(
            "no_quota", "warning",
            "no quota middleware on this route (API keys may still carry their own quota)"))
    if auths and route.websocket:
        found.append(Finding(
            "websocket_authenticated", "info",
            "WebSocket upgrades are accepted: an open connection is closed when its credential "
            "expires (4401) or is revoked (4403); set websocket: false if unused"))
    return found


def jwt_findings(config: schema.Config, jwt: schema.Jwt) -> list[Finding]:
    """A jwt entry's findings: no audience, a shared secret, keys fetched in clear text."""
    found = []
    if jwt.audience is None:
        found.append(Finding(
            "jwt_no_audience", "warning",
            "jwt without audience: a token the issuer minted for any other API is accepted"))
    shared = [a for a in jwt.algorithms if a.startswith("HS")]
    if shared:
        found.append(Finding(
            "jwt_shared_secret", "warning",
            f"jwt algorithms include {', '.join(shared)}: whoever can verify tokens (holds "
            "the shared secret) can also mint them"))
    for field in ("jwks_uri", "issuer"):
        url = getattr(jwt, field)
        if url is None or not url.startswith("http://"):
            continue
        host = urlsplit(url).hostname or ""
        if is_loopback(host):
            found.append(Finding(
                "jwt_plain_http_loopback", "info",
                f"jwt {field} is plain http on loopback ({host}): acceptable only for an "
                "identity provider on this machine"))
        else:
            found.append(Finding(
                "jwt_plain_http", "error",
                f"jwt {field} is plain http to {host}: signing keys fetched in clear text can "
                "be swapped on the way"))
    return found


LONG_CACHE_TTL = 300.0  # beyond this, a revoked token keeps working for minutes


def oauth2_findings(config: schema.Config, entry: schema.OAuth2) -> list[Finding]:
    """An oauth2 entry's findings: no audience, plain http, a long cache, no miss limit;
    a browser login's are ``audit_login.py``'s."""
    if entry.login:
        return login_findings(config, entry)
    found = []
    if entry.audience is None:
        found.append(Finding(
            "oauth2_no_audience", "warning",
            "oauth2 without audience: a token the server issued for any other resource "
            "server is accepted (set audience where the server reports aud)"))
    for field in ("introspection_endpoint", "issuer"):
        url = getattr(entry, field)
        if url is not None and url.startswith("http://"):
            host = urlsplit(url).hostname or ""
            found.append(Finding(
                "oauth2_plain_http_loopback", "info",
                f"oauth2 {field} is plain http on loopback ({host}): tokens and the client "
                "secret cross in clear text; acceptable only for a server on this machine"))
    if entry.cache_ttl > LONG_CACHE_TTL:
        found.append(Finding(
            "oauth2_long_cache", "warning",
            f"oauth2 cache_ttl is {entry.cache_ttl:g}s: a token revoked at the server keeps "
            "working that long (purge one with fluxctl oauth2 purge)"))
    if entry.miss_rate is None:
        found.append(Finding(
            "oauth2_no_miss_rate", "info",
            "oauth2 without miss_rate: each distinct unknown token costs one introspection "
            "call (repeats are answered from the negative cache); set miss_rate to bound "
            "what one client can make the server do"))
    return found


def api_key_findings(config: schema.Config, entry: schema.ApiKey) -> list[Finding]:
    """An api_key entry's findings: keys taken from the query string."""
    if not entry.query or config.api_keys.query is None:  # query keys are off
        return []
    return [Finding(
        "api_key_in_query", "warning",
        f"API keys are accepted in the query string (?{config.api_keys.query}=): they "
        "end up in browser history and intermediary logs; set query: false on the "
        "route's api_key")]


def enforcing_auth(route: schema.Route) -> list[Any]:
    """The route's authentication entries that are enforced (not in shadow mode)."""
    if getattr(route, "shadow", False):
        return []
    return [
        entry for entry in route.middleware
        if not getattr(entry, "shadow", False)
        and (kind_of(entry).authenticates or any(
            kind_of(m).authenticates and not getattr(m, "shadow", False)
            for m in kind_of(entry).members(entry)))
    ]


def scope_map_findings(config: schema.Config) -> list[Finding]:
    """``scope_map`` rules that only cover routes without enforced authentication: no
    caller is identified there, so the scope they ask for is never checked."""
    router: Router[int] = Router((r.route, i) for i, r in enumerate(config.routes))
    found = []
    for scope, rules in config.scope_map.items():
        for rule in rules:
            covered = [config.routes[i] for i in _rule_routes(config, router, rule)]
            if covered and not any(enforcing_auth(r) for r in covered):
                prefixes = ", ".join(r.route for r in covered)
                found.append(Finding(
                    "scope_rule_public_only", "warning",
                    f"scope_map {scope}: '{rule}' only covers routes without authentication "
                    f"({prefixes}): nobody is identified there, so {scope} is never "
                    "required. Add authentication to the route, or remove the rule"))
    return found


def _rule_routes(config: schema.Config, router: Router[int], rule: str) -> list[int]:
    """The indices of the routes a request matching ``rule`` may reach, in config order.

    The route of the pattern's literal part (its segments before the first with ``*``),
    and with a wildcard every route under that part too: more than the rule can reach at
    times (``/a/*/b`` and a route ``/a/x/c``), never fewer, so no route is missed."""
    _method, _, pattern = rule.partition(" ")
    literal: list[str] = []
    segments = [s for s in pattern.split("/") if s]
    for segment in segments:
        if "*" in segment:
            break
        literal.append(segment)
    base = "/" + "/".join(literal)
    try:
        normalized = normalize_path(base.encode("utf-8"))
    except PathError:
        return []
    reached = set()
    home = router.match(normalized)
    if home is not None:
        reached.add(home)
    if len(literal) < len(segments):  # a wildcard: the routes below the literal part too
        under = base.rstrip("/") + "/"
        reached.update(i for i, r in enumerate(config.routes)
                       if (r.route.rstrip("/") + "/").startswith(under))
    return sorted(reached)


def findings(config: schema.Config, route: schema.Route) -> list[Finding]:
    """Everything ``auth verify`` reports for ``route``, the most severe first."""
    found = route_findings(config, route) + config_findings(config) + scope_map_findings(config)
    return sorted(found, key=lambda f: -SEVERITIES.index(f.severity))


# ---- credentials ----------------------------------------------------------------------------


def _request(method: str, path: str, headers: list[tuple[bytes, bytes]],
             client_ip: str) -> RequestState:
    """A request as a worker's parser would hand it to the auth middleware."""
    req = RequestState()
    req.method, req.path, req.headers = method.encode(), path.encode("latin-1"), headers
    req.client_ip = client_ip
    return req


def _denied(refusal: ClientError, method: str) -> dict[str, Any]:
    return {
        "method": method, "decision": "deny", "status": refusal.status, "code": refusal.code,
        "reason": getattr(refusal, "reason", refusal.code),
    }


def check_token(config: schema.Config, route: schema.Route, method: str, path: str,
                token: str) -> dict[str, Any]:
    """Verify ``token`` with the route's jwt middleware (``any`` members included), or its
    oauth2 middleware's cached introspection answer (an opaque token, or no jwt entry)."""
    jwts = list(auth_methods(route, "jwt"))
    oauth2 = list(auth_methods(route, "oauth2"))
    if oauth2 and not (jwts and is_jws_shaped(token.encode())):
        return check_oauth2_token(config, route, method, path, token, oauth2)
    if not jwts:
        return {"method": "jwt", "decision": "deny", "status": 401, "code": "invalid_token",
                "reason": "route_takes_no_jwt"}
    result: dict[str, Any] = {}
    for jwt in jwts:  # several jwt entries in a chain all run; the first refusal answers
        middleware = JwtMiddleware(build_verifier(jwt), None,
                                   ScopePolicy(jwt.scopes, config.scope_map))
        result = {"keys": _attach_keys(config, jwt, middleware)}
        req = _request(method, path, [(b"authorization", b"Bearer " + token.encode())],
                       "127.0.0.1")
        refusal = middleware(req)
        if refusal is not None:
            return {**_denied(refusal, "jwt"), **result}
        principal = req.principal
    result.update(_allowed(config, route, method, path, principal))
    return {"method": "jwt", **result}


def check_oauth2_token(config: schema.Config, route: schema.Route, method: str, path: str,
                       token: str, entries: list[schema.OAuth2]) -> dict[str, Any]:
    """Decide on an opaque token as the route's oauth2 middleware would from the gateway's
    shared introspection cache (nothing is asked of the authorization server here)."""
    principal = None
    result: dict[str, Any] = {}
    now = time.time()
    for entry in entries:  # several oauth2 entries all run; the first refusal answers
        source = oauth2_source(entry)
        try:
            view = ProviderView(config.state_dir, source)
        except (OSError, ValueError):
            raise AuditError(
                f"no introspection cache of {source} in {config.state_dir}/oauth2: the "
                "gateway must be running with this route") from None
        found = view.cache.lookup(token.encode(), now, view.known)
        if found is None:
            raise AuditError(
                "the token is not in the gateway's introspection cache (never seen, or its "
                "answer expired); fluxctl asks no authorization server itself: send one "
                "request with it, or use --probe")
        cached = view.remember(found) if type(found) is tuple else found
        middleware = OAuth2Middleware(view, None, entry,  # type: ignore[arg-type]
                                      ScopePolicy(entry.scopes, config.scope_map))
        req = _request(method, path, [(b"authorization", b"Bearer " + token.encode())],
                       "127.0.0.1")
        result = {"cache": f"introspection answer cached by the gateway ({source})"}
        refusal = middleware.decide(req, cached, now)
        if refusal is not None:
            return {**_denied(refusal, "oauth2"), **result}
        principal = req.principal
    result.update(_allowed(config, route, method, path, principal))
    return {"method": "oauth2", **result}


def _attach_keys(config: schema.Config, jwt: schema.Jwt, middleware: JwtMiddleware) -> str:
    """Give the verifier the key set a worker would have; returns where it came from."""
    source = provider_source(jwt)
    if source is None:
        return "the route's shared secret"
    path = snapshot_path(config.state_dir, source)
    try:
        snapshot = read_snapshot(path)
    except FileNotFoundError:
        raise AuditError(
            f"no JWKS snapshot of {source} in {config.state_dir}/jwks: the gateway must be "
            "running and have fetched the keys once (fluxctl fetches nothing itself)"
        ) from None
    except (OSError, ValueError) as exc:
        raise AuditError(f"JWKS snapshot {path}: {exc}") from None
    generation = int(snapshot.get("generation", 0))
    middleware.verifier.set_keys(snapshot_keys(snapshot, generation))
    state = "expired (older than jwks_max_stale)" if snapshot.get("expired") else "current"
    return f"JWKS snapshot of {source}, generation {generation}, {state}"


def _allowed(config: schema.Config, route: schema.Route, method: str, path: str,
             principal: Any) -> dict[str, Any]:
    return {
        "decision": "allow", "status": None, "code": None, "reason": None,
        "principal": {"subject": principal.subject, "scopes": sorted(principal.scopes)},
        "scopes": scope_decisions(config, route, method, path, principal.scopes),
    }


class _OfflineKeys(SharedKeys):
    """The part of ``SharedKeys`` an ``ApiKeyMiddleware`` reads: one table generation, no
    usage slots and no quota counters (so a check stamps nothing and spends nothing)."""

    def __init__(self, table: KeyTable) -> None:  # no shared files: nothing to map
        self.table = table
        self._forget_infos()


def check_api_key(config: schema.Config, route: schema.Route, method: str, path: str,
                  key: str, client_ip: str = "127.0.0.1") -> dict[str, Any]:
    """Check ``key`` with the route's api_key middleware (``any`` members included) against
    keys.db, compiled as the master compiles it for the workers."""
    entries = list(auth_methods(route, "api_key"))
    result: dict[str, Any] = {"method": "api_key", "key_id": key_id_of(key)}
    if not entries:
        return {**result, "decision": "deny", "status": 401, "code": "invalid_key",
                "reason": "route_takes_no_api_key"}
    now = time.time()
    try:
        signing_key = load_signing_key(config.api_keys.signing_secret, config.state_dir,
                                       create=False)
    except OSError as exc:
        raise AuditError(str(exc)) from None
    with KeyOps(config) as ops:
        records = ops.store.for_table(now, KEEP_DEAD)
        data = build_table(records, generation=1, quota_tag=None, usage_slots=max(
            (usage_slot(r) for r in records), default=0) + 1)
        shared = _OfflineKeys(KeyTable(data, signing_key))
        names = config.api_keys
        principal = None
        try:
            for entry in entries:
                middleware = ApiKeyMiddleware(
                    shared, ScopePolicy(entry.scopes, config.scope_map), names.header,
                    names.query, entry.query)
                req = _request(method, path, [(names.header.lower().encode(), key.encode())],
                               client_ip)
                refusal = middleware(req)
                if refusal is not None:
                    return {**result, **_denied(refusal, "api_key")}
                principal = req.principal
        finally:
            shared.table.release()
        result.update(_allowed(config, route, method, path, principal))
        # The quota is not spent by this check: say where the name's window stands.
        found = ops.store.by_id(result["key_id"]) if result["key_id"] else None
        quota = ops.describe(found)["quota"] if found is not None else None
        result["quota"] = quota
        if quota and quota["remaining"] == 0:
            result["note"] = "the quota of this window is used up: the gateway answers 429 now"
    return result
