"""What a typed Config means: value parsers, the checks types cannot express, and what a
process derives from it (listen addresses, upstream specs, worker counts).

The ``parse_*`` functions raise ``ValueError`` with a message meant for the user (like
``ipaddress`` does); ``check_config`` runs them over a Config and reports the key path;
the loader adds the user's spelling and the line. ``resolve_upstream`` and ``worker_count``
work on a Config the loader already accepted.
"""

from __future__ import annotations

import difflib
import ipaddress
import os
import re
from collections.abc import Callable, Iterable
from typing import TypeVar
from urllib.parse import urlsplit

import msgspec

from fluxgate.auth.keys import MIN_SECRET_CHARS, check_scope
from fluxgate.config import schema
from fluxgate.config.units import parse_rate
from fluxgate.errors import ConfigError

Path = tuple[str | int, ...]  # a key path: ("routes", 2, "middleware", 0)
Fail = Callable[[Path, str], Exception]
_T = TypeVar("_T")

# RFC 1123 §2.1 host names: dot-separated labels of letters, digits and hyphens.
_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")
_PORT = re.compile(r"[0-9]{1,5}")
# RFC 3986 §3.3 pchar and '/', minus '%' (routes are matched on decoded paths).
_PATH_CHAR = re.compile(r"[A-Za-z0-9\-._~!$&'()*+,;=:@/]")


class UpstreamSpec(msgspec.Struct, frozen=True):
    """Everything a worker needs to open connections for one route's upstream.

    ``name`` is the upstream's name in ``upstreams:``, or the URL itself when the route
    names a URL. ``targets`` are ``(host, port)`` pairs, IPv6 hosts without brackets.
    """

    name: str
    targets: tuple[tuple[str, int], ...]
    connect_timeout: float
    read_timeout: float
    pool_size: int
    pool_idle_timeout: float


def parse_listen(value: str) -> tuple[str, int]:
    """Split ``host:port`` or ``[v6]:port`` into ``(host, port)``; port 0 means "any".

    The host is an IPv4 address, a bracketed IPv6 address or a host name. Raises
    ``ValueError``.
    """
    return _split_host_port(value, default_port=None, min_port=0)


def parse_upstream_url(value: str) -> tuple[str, int]:
    """Split an upstream URL ``http://host[:port]`` into ``(host, port)``.

    Only plain ``http`` is spoken to upstreams for now; the port defaults to 80. A path,
    query, fragment or user info is refused: a target names a server, not a resource.
    Raises ``ValueError``.
    """
    if any(ch.isspace() or ord(ch) < 0x20 or ord(ch) == 0x7F for ch in value):
        # urlsplit silently deletes tabs and newlines (WHATWG behaviour); refuse instead.
        raise ValueError(f"invalid upstream URL {value!r}: contains whitespace")
    parts = urlsplit(value)
    if parts.scheme == "https":
        raise ValueError(
            f"upstream {value!r}: https upstreams are not supported yet; use http://host:port"
        )
    if parts.scheme != "http" or not parts.netloc:
        raise ValueError(f"invalid upstream URL {value!r}: expected http://host:port")
    if "@" in parts.netloc:
        raise ValueError(f"upstream {value!r}: user info (user@) is not allowed in a target")
    if parts.path not in ("", "/") or parts.query or parts.fragment or value.endswith(("?", "#")):
        raise ValueError(
            f"upstream {value!r}: a target is http://host:port without a path, query or fragment"
        )
    try:
        return _split_host_port(parts.netloc, default_port=80, min_port=1)
    except ValueError as exc:
        raise ValueError(f"upstream {value!r}: {exc}") from None


def parse_network(value: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    """Parse an address or CIDR, IPv4 or IPv6 (``"10.0.0.5"`` is ``10.0.0.5/32``).

    Host bits must be clear: ``"10.0.0.1/8"`` is refused, not widened to ``10.0.0.0/8``, because
    a wrong prefix in an allowlist is a typo to fix, never something to guess about.
    Raises ``ValueError``.
    """
    try:
        return ipaddress.ip_network(value, strict=True)
    except ValueError:
        try:
            network = ipaddress.ip_network(value, strict=False)
        except ValueError:
            raise ValueError(f"invalid CIDR {value!r}") from None
    raise ValueError(f"CIDR {value!r} has host bits set; did you mean {network}?")


def parse_route_path(value: str) -> str:
    """Check a route path and return the prefix the router matches on (``/api/`` → ``/api``).

    Requests are matched after percent-decoding, ``//`` collapse and dot-segment removal
    (DESIGN §4), so a route spelled with ``%``, ``//``, ``.`` or ``..`` could never match;
    ``?`` and ``#`` are not part of a path. Raises ``ValueError``.
    """
    if not value.startswith("/"):
        raise ValueError(f"a route must start with '/', got {value!r}")
    for char, why in (
        ("?", "a query string is not part of a route"),
        ("#", "a fragment is never sent to a server"),
        ("%", "routes match decoded paths; write the character itself"),
        ("\\", "backslash is not a path separator"),
    ):
        if char in value:
            raise ValueError(f"route {value!r} must not contain {char!r} ({why})")
    bad = next((c for c in value if not _PATH_CHAR.fullmatch(c)), None)
    if bad is not None:
        raise ValueError(f"route {value!r} contains {bad!r}, which is not allowed in a path")
    if "//" in value:
        raise ValueError(f"route {value!r} must not contain '//'")
    if any(segment in (".", "..") for segment in value.split("/")):
        raise ValueError(f"route {value!r} must not contain '.' or '..' segments")
    return value.rstrip("/") or "/"


def parse_method(value: str) -> str:
    """Return the HTTP method ``value`` in upper case (input is case-insensitive)."""
    method = value.upper()
    if method not in schema.HTTP_METHODS:
        raise ValueError(
            f"unknown HTTP method {value!r}; expected one of {', '.join(schema.HTTP_METHODS)}"
        )
    return method


def parse_scope_rule(value: str) -> tuple[str, str]:
    """Split a ``scope_map`` rule ``"METHOD /path/pattern"`` into (METHOD, pattern)."""
    method, _, pattern = value.strip().partition(" ")
    pattern = pattern.strip()
    if (
        method.upper() not in schema.HTTP_METHODS
        or not pattern.startswith("/")
        or any(c.isspace() for c in pattern)
    ):
        raise ValueError(f"expected 'METHOD /path' (e.g. 'GET /api/items/**'), got {value!r}")
    return method.upper(), pattern


def parse_key_url(value: str) -> str:
    """Check a URL keys are fetched from (jwks_uri, or an issuer for OIDC discovery).

    https, or plain http only to a loopback host (an identity provider on the same machine):
    keys fetched in clear text could be swapped by anyone on the path. No user info or
    fragment. Returns the URL; raises ``ValueError``.
    """
    if any(ch.isspace() or ord(ch) < 0x20 or ord(ch) == 0x7F for ch in value):
        raise ValueError(f"invalid URL {value!r}: contains whitespace")
    parts = urlsplit(value)
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise ValueError(f"invalid URL {value!r}: expected https://host/path")
    if "@" in parts.netloc or parts.fragment:
        raise ValueError(f"URL {value!r}: user info and fragments are not allowed")
    try:
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError:
        raise ValueError(f"invalid port in {value!r}") from None
    if parts.scheme == "http" and not is_loopback(parts.hostname):
        raise ValueError(
            f"URL {value!r}: keys must be fetched over https (plain http only on loopback)"
        )
    return value


def is_loopback(host: str) -> bool:
    """True for ``localhost``, 127.0.0.0/8, ``::1`` (and ``::ffff:127.x.x.x``)."""
    if host.lower() == "localhost":
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback


def resolve_upstream(config: schema.Config, route: schema.Route) -> UpstreamSpec:
    """Return the ``UpstreamSpec`` for ``route``: a named upstream, or a URL with defaults.

    A URL upstream takes its timeouts and pool settings from ``schema.Upstream``'s defaults.
    Raises ``ConfigError`` if the route names an upstream that is not defined (the loader
    has already refused such a config, so this only happens with a hand-built Config).
    """
    upstream = config.upstreams.get(route.upstream)
    if upstream is None:
        if "://" not in route.upstream:
            raise ConfigError(f"unknown upstream {route.upstream!r}", path="upstream")
        upstream = schema.Upstream(targets=[route.upstream])
    try:
        targets = tuple(parse_upstream_url(target) for target in upstream.targets)
    except ValueError as exc:
        raise ConfigError(str(exc), path="upstream") from None
    return UpstreamSpec(
        name=route.upstream,
        targets=targets,
        connect_timeout=upstream.connect_timeout,
        read_timeout=upstream.read_timeout,
        pool_size=upstream.pool_size,
        pool_idle_timeout=upstream.pool_idle_timeout,
    )


def worker_count(config: schema.Config, override: int | None = None) -> int:
    """The number of workers to fork: ``override`` (``--workers N``), else ``config.workers``.

    ``"auto"`` is the number of CPUs this process may run on (the affinity mask, so a
    container pinned to 2 CPUs gets 2 workers, not the host's 64), capped at 256.
    Raises ``ConfigError`` for an override outside 1..256.
    """
    if override is not None:
        if isinstance(override, bool) or not 1 <= override <= schema.MAX_WORKERS:
            raise ConfigError(
                f"must be between 1 and {schema.MAX_WORKERS}, got {override}", "--workers"
            )
        return override
    if config.workers != "auto":
        return config.workers
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        cpus = os.cpu_count() or 1
    return max(1, min(cpus, schema.MAX_WORKERS))


# RFC 9110 §5.6.2 token, for header names.
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_UPSTREAM_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
_STORE = re.compile(r"sqlite|rediss?://[^/?#\s]+(/[0-9]*)?")

JWT_ALGORITHMS = (
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA",
    "HS256", "HS384", "HS512",
)  # fmt: skip
JWKS_MIN_REFRESH = 30.0
# Upstream request headers a forward_claims entry may not write: framing, hop-by-hop, and
# those the gateway itself sets (X-Forwarded-*, X-Request-Id, X-FluxGate-*).
RESERVED_CLAIM_HEADERS = frozenset({
    "host", "content-length", "transfer-encoding", "connection", "keep-alive", "upgrade",
    "te", "trailer", "proxy-authorization", "proxy-connection", "authorization", "cookie",
    "expect", "x-forwarded-for", "x-forwarded-proto", "x-forwarded-host", "x-request-id",
})  # fmt: skip


def check_config(config: schema.Config, fail: Fail | None = None) -> schema.Config:
    """Check what the types cannot say; return ``config`` normalized (methods in upper case,
    an empty ``admin.token`` as ``None``).

    Listen addresses (admin on loopback only), store, CIDRs, upstream names and targets,
    route paths (no duplicates), route upstreams, methods, zero trust (an unauthenticated
    route must say ``public: true``), scope_map rules. ``fail(path, message)`` builds the
    exception to raise; ``path`` is the Struct field path (the loader maps it back to the
    user's spelling and line). By default a ``ConfigError`` without a line.
    """
    if fail is None:
        fail = _plain_error
    return _Checker(fail).config(config)


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """``" (did you mean 'x'?)"`` for a near miss among ``choices``, else ``""``."""
    close = difflib.get_close_matches(word, list(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def format_path(path: Path) -> str:
    """Spell a key path as a user reads it: ``routes[2].middleware[0].ip_allow[1]``."""
    out: list[str] = []
    for part in path:
        if isinstance(part, int):
            out.append(f"[{part}]")
        elif re.fullmatch(r"[A-Za-z_][A-Za-z0-9_-]*", part):
            out.append(f".{part}" if out else part)
        else:  # upstream names and scopes may hold ':' or '.'; quote them
            out.append(f"[{_quote(part)}]")
    return "".join(out)


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _plain_error(path: Path, message: str) -> ConfigError:
    return ConfigError(message, format_path(path))


class _Checker:
    def __init__(self, fail: Fail) -> None:
        self.fail = fail

    def check(self, ok: bool, path: Path, message: str) -> None:
        if not ok:
            raise self.fail(path, message)

    def parse(self, parser: Callable[[str], _T], value: str, path: Path) -> _T:
        try:
            return parser(value)
        except ValueError as exc:
            raise self.fail(path, str(exc)) from None

    def config(self, config: schema.Config) -> schema.Config:
        listen_addr = self.parse(parse_listen, config.listen, ("listen",))
        self.check(
            bool(_STORE.fullmatch(config.store)),
            ("store",),
            f"expected 'sqlite' or redis://host:port/db, got {config.store!r}",
        )
        self.check(bool(config.state_dir.strip()), ("state_dir",), "must not be empty")
        admin_addr = self.parse(parse_listen, config.admin.listen, ("admin", "listen"))
        self.check(
            is_loopback(admin_addr[0]),
            ("admin", "listen"),
            "the admin API must listen on a loopback address "
            f"(127.0.0.0/8, ::1 or localhost), got {config.admin.listen!r}",
        )
        self.check(
            admin_addr[1] == 0 or admin_addr != listen_addr,
            ("admin", "listen"),
            "must differ from listen",
        )
        token = config.admin.token
        if token is not None and not token.strip():
            # `${FLUXGATE_ADMIN_TOKEN:-}` with the variable unset: no token given, so the
            # admin API generates one into state_dir (master/admin.py), as when the key is absent.
            token = None
        self.check(
            token is None or not any(c.isspace() or not c.isprintable() for c in token),
            ("admin", "token"),
            "must not contain spaces or control characters (it is sent in an HTTP header)",
        )
        for i, cidr in enumerate(config.trusted_proxies):
            self.parse(parse_network, cidr, ("trusted_proxies", i))
        header, query = config.api_keys.header, config.api_keys.query
        self.check(
            bool(_TOKEN.fullmatch(header)),
            ("api_keys", "header"),
            f"invalid header name {header!r}",
        )
        # The key header is dropped from every request as it is parsed (DESIGN §4): it must
        # not be one that HTTP or the gateway itself relies on.
        self.check(
            header.lower() not in RESERVED_CLAIM_HEADERS
            and not header.lower().startswith("x-fluxgate-"),
            ("api_keys", "header"),
            f"{header} is used by HTTP or the gateway itself; choose another name",
        )
        self.check(
            bool(re.fullmatch(r"[A-Za-z0-9._~-]+", query)),
            ("api_keys", "query"),
            f"invalid query parameter name {query!r}",
        )
        secret = config.api_keys.signing_secret
        self.check(
            secret is None or not secret.strip() or len(secret) >= MIN_SECRET_CHARS,
            ("api_keys", "signing_secret"),
            f"must be at least {MIN_SECRET_CHARS} characters (e.g. `openssl rand -base64 32`)",
        )
        for name, upstream in config.upstreams.items():
            self.upstream(name, upstream)
        routes = self.routes(config)
        scope_map = {
            scope: self.scope_rules(scope, rules) for scope, rules in config.scope_map.items()
        }
        admin = msgspec.structs.replace(config.admin, token=token)
        return msgspec.structs.replace(config, admin=admin, routes=routes, scope_map=scope_map)

    def upstream(self, name: str, upstream: schema.Upstream) -> None:
        self.check(
            bool(_UPSTREAM_NAME.fullmatch(name)),
            ("upstreams", name),
            "an upstream name is letters, digits, '_', '.' and '-', "
            "starting with a letter or digit",
        )
        seen: dict[tuple[str, int], int] = {}
        for i, target in enumerate(upstream.targets):
            path = ("upstreams", name, "targets", i)
            host_port = self.parse(parse_upstream_url, target, path)
            self.check(
                host_port not in seen,
                path,
                f"duplicate target (same as targets[{seen.get(host_port)}])",
            )
            seen[host_port] = i

    def routes(self, config: schema.Config) -> list[schema.Route]:
        self.check(bool(config.routes), ("routes",), "no routes defined; add at least one route")
        seen: dict[str, int] = {}
        routes = []
        for i, route in enumerate(config.routes):
            prefix = self.parse(parse_route_path, route.route, ("routes", i, "route"))
            self.check(
                prefix not in seen,
                ("routes", i, "route"),
                f"duplicate route {route.route} (already routes[{seen.get(prefix)}])",
            )
            seen[prefix] = i
            self.route_upstream(config, route.upstream, ("routes", i, "upstream"))
            for j, middleware in enumerate(route.middleware):
                self.middleware(middleware, ("routes", i, "middleware", j))
            self.quota_order(route.middleware, ("routes", i, "middleware"))
            # Zero trust (DESIGN §3): no authentication only when said out loud. ip_allow is
            # not authentication: an address is not an identity.
            kinds = {type(m).__struct_config__.tag for m in route.middleware}
            self.check(
                route.public or bool(kinds & schema.AUTH_KINDS),
                ("routes", i),
                f"route {route.route} has no authentication middleware; "
                "add one or set public: true",
            )
            methods = route.methods
            if methods is not None:
                path = ("routes", i, "methods")
                self.check(bool(methods), path, "must not be empty; omit it to allow every method")
                parsed = [self.parse(parse_method, m, (*path, k)) for k, m in enumerate(methods)]
                methods = list(dict.fromkeys(parsed))  # "GET, get" is one method
            routes.append(msgspec.structs.replace(route, methods=methods))
        return routes

    def middleware(self, middleware: object, path: Path) -> None:
        """Per-kind checks of one middleware entry (``path`` is its Struct path)."""
        if isinstance(middleware, schema.IpAllow):
            for k, cidr in enumerate(middleware.cidrs):
                self.parse(parse_network, cidr, (*path, "cidrs", k))
        elif isinstance(middleware, schema.Jwt):
            self.jwt(middleware, path)
        elif isinstance(middleware, schema.ApiKey):
            for k, scope in enumerate(middleware.scopes):
                self.parse(check_scope, scope, (*path, "scopes", k))
        elif isinstance(middleware, schema.Quota):
            self.parse(parse_rate, middleware.limit, (*path, "limit"))
        elif isinstance(middleware, schema.AnyOf):
            for k, method in enumerate(middleware.methods):
                self.middleware(method, (*path, "methods", k))

    def jwt(self, jwt: schema.Jwt, path: Path) -> None:
        """DESIGN §5: algorithms, where keys come from, claims forwarded, token sources."""
        for k, alg in enumerate(jwt.algorithms):
            self.check(
                alg.lower() != "none",
                (*path, "algorithms", k),
                "alg 'none' is never accepted (an unsigned token proves nothing)",
            )
            self.check(
                alg in JWT_ALGORITHMS,
                (*path, "algorithms", k),
                f"unsupported algorithm {alg!r}{did_you_mean(alg, JWT_ALGORITHMS)}; "
                f"supported: {', '.join(JWT_ALGORITHMS)}",
            )
        self.check(bool(jwt.algorithms), (*path, "algorithms"), "must not be empty")
        hmac_algs = [a for a in jwt.algorithms if a.startswith("HS")]
        if hmac_algs:
            self.check(
                jwt.secret is not None,
                (*path, "secret"),
                f"{', '.join(hmac_algs)} needs a shared secret (secret: ${{JWT_SECRET}})",
            )
            need = max(int(a[2:]) // 8 for a in hmac_algs)
            # RFC 7518 §3.2: a key at least as long as the hash output. The value is not
            # echoed: it is a secret.
            self.check(
                jwt.secret is None or len(jwt.secret.encode()) >= need,
                (*path, "secret"),
                f"must be at least {need} bytes for {', '.join(hmac_algs)} (RFC 7518 §3.2)",
            )
        else:
            self.check(
                jwt.secret is None,
                (*path, "secret"),
                "a shared secret is only used with HS256/HS384/HS512 in algorithms",
            )
        if len(hmac_algs) < len(jwt.algorithms):
            self.check(
                jwt.jwks_uri is not None or jwt.issuer is not None,
                path,
                "needs jwks_uri, or issuer for OIDC discovery, to find the signing keys",
            )
        if jwt.jwks_uri is not None:
            self.parse(parse_key_url, jwt.jwks_uri, (*path, "jwks_uri"))
        elif jwt.issuer is not None and len(hmac_algs) < len(jwt.algorithms):
            self.parse(parse_key_url, jwt.issuer, (*path, "issuer"))
        self.check(
            jwt.issuer is None or bool(jwt.issuer.strip()), (*path, "issuer"), "must not be empty"
        )
        audiences = [jwt.audience] if isinstance(jwt.audience, str) else jwt.audience
        if audiences is not None:
            self.check(bool(audiences), (*path, "audience"), "must not be empty")
            for k, aud in enumerate(audiences):
                self.check(bool(aud), (*path, "audience", k), "must not be empty")
        self.check(
            jwt.jwks_max_stale >= jwt.jwks_refresh,
            (*path, "jwks_max_stale"),
            "must be at least jwks_refresh (keys would expire between two polls)",
        )
        self.check(
            jwt.jwks_refresh >= JWKS_MIN_REFRESH,
            (*path, "jwks_refresh"),
            f"must be at least {JWKS_MIN_REFRESH:g}s (do not hammer the identity provider)",
        )
        seen: dict[str, str] = {}
        for claim, header in jwt.forward_claims.items():
            where = (*path, "forward_claims", claim)
            self.check(bool(claim), where, "a claim name must not be empty")
            self.check(bool(_TOKEN.fullmatch(header)), where, f"invalid header name {header!r}")
            lower = header.lower()
            self.check(
                lower not in RESERVED_CLAIM_HEADERS and not lower.startswith("x-fluxgate-"),
                where,
                f"{header} is set by the gateway or by HTTP itself; choose another name",
            )
            self.check(lower not in seen, where, f"{header} is already the target of {seen.get(lower)!r}")
            seen[lower] = claim
        for k, scope in enumerate(jwt.scopes):
            self.check(
                bool(scope) and not any(c.isspace() for c in scope),
                (*path, "scopes", k),
                "a scope is a non-empty word without spaces",
            )
        if jwt.cookie is not None:
            self.check(bool(_TOKEN.fullmatch(jwt.cookie)), (*path, "cookie"), "invalid cookie name")
        if jwt.query is not None:
            self.check(
                bool(re.fullmatch(r"[A-Za-z0-9._~-]+", jwt.query)),
                (*path, "query"),
                f"invalid query parameter name {jwt.query!r}",
            )

    def quota_order(self, chain: list[object], path: Path) -> None:
        """A quota by subject or key counts per principal: an authentication middleware must
        come before it in the chain (by: ip needs none)."""
        authenticated = False
        for j, middleware in enumerate(chain):
            tag = type(middleware).__struct_config__.tag
            authenticated = authenticated or tag in schema.AUTH_KINDS
            if isinstance(middleware, schema.Quota) and middleware.by != "ip":
                self.check(
                    authenticated,
                    (*path, j, "by"),
                    f"a quota by {middleware.by} needs an authentication middleware before it "
                    "in the chain (or use by: ip)",
                )

    def route_upstream(self, config: schema.Config, value: str, path: Path) -> None:
        if "://" in value:
            self.parse(parse_upstream_url, value, path)
            return
        defined = ", ".join(config.upstreams) or "none"
        self.check(
            value in config.upstreams,
            path,
            f"unknown upstream {value!r}{did_you_mean(value, config.upstreams)}; "
            f"defined upstreams: {defined} (or give a URL: http://host:port)",
        )

    def scope_rules(self, scope: str, rules: list[str]) -> list[str]:
        self.check(
            bool(scope) and not any(c.isspace() for c in scope),
            ("scope_map", scope),
            "a scope is a non-empty word without spaces",
        )
        parsed = (
            self.parse(parse_scope_rule, r, ("scope_map", scope, k)) for k, r in enumerate(rules)
        )
        return [f"{method} {pattern}" for method, pattern in parsed]


def _split_host_port(value: str, *, default_port: int | None, min_port: int) -> tuple[str, int]:
    """Parse ``host:port`` / ``[v6]:port`` (port optional when ``default_port`` is set)."""
    if value.startswith("["):
        end = value.find("]")
        if end < 0:
            raise ValueError(f"invalid address {value!r}: missing ']'")
        host, rest = value[1:end], value[end + 1 :]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"invalid IPv6 address {host!r} in {value!r}") from None
        if rest and not rest.startswith(":"):
            raise ValueError(f"invalid address {value!r}: expected ':port' after ']'")
        port_text = rest[1:] if rest else None
    else:
        if value.count(":") > 1:
            raise ValueError(
                f"invalid address {value!r}: write IPv6 addresses in brackets, e.g. [::1]:8080"
            )
        host, sep, port_text_or_host = value.partition(":")
        port_text = port_text_or_host if sep else None
        _check_host(host, value)
    if port_text is None:
        if default_port is None:
            raise ValueError(f"invalid address {value!r}: expected host:port")
        return host, default_port
    if not _PORT.fullmatch(port_text) or not min_port <= int(port_text) <= 65535:
        raise ValueError(f"invalid port {port_text!r} in {value!r}: expected {min_port}-65535")
    return host, int(port_text)


def _check_host(host: str, value: str) -> None:
    """Refuse an empty host, a malformed IPv4 address and a malformed host name."""
    if not host:
        raise ValueError(
            f"invalid address {value!r}: the host is missing (0.0.0.0 listens on every interface)"
        )
    labels = host.rstrip(".").split(".")
    if all(label.isdigit() for label in labels):
        # All-numeric is an IPv4 address or nothing ("999.1.1.1" is not a host name).
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            raise ValueError(f"invalid IPv4 address {host!r} in {value!r}") from None
        return
    if len(host) > 253 or not all(_LABEL.fullmatch(label) for label in labels):
        raise ValueError(f"invalid host name {host!r} in {value!r}")
