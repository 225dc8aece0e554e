"""What a typed Config means: the checks its types cannot express, and what a process derives
from it (upstream specs, worker counts).

``check_config`` runs the value parsers (``parsers.py``) over a Config, and each middleware
entry's own checks (its kind's record in the middleware registry), reporting the key path;
the loader adds the user's spelling and the line. ``resolve_upstream`` and ``worker_count``
work on a Config the loader already accepted.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

import msgspec

from fluxgate.cluster.connect import is_redis_url, parse_store_url
from fluxgate.config import schema
from fluxgate.config.parsers import (
    JWKS_MIN_REFRESH,
    JWT_ALGORITHMS,
    MIN_SECRET_CHARS,
    RESERVED_CLAIM_HEADERS,
    Path,
    did_you_mean,
    format_path,
    is_header_name,
    is_https_url,
    is_loopback,
    is_query_name,
    is_reserved_header,
    parse_host_name,
    parse_key_url,
    parse_listen,
    parse_method,
    parse_network,
    parse_route_path,
    parse_scope_rule,
    parse_upstream_url,
)
from fluxgate.errors import ConfigError
from fluxgate.tls import ListenerTls, TlsConfigError, client_context, listener_tls

if TYPE_CHECKING:
    from fluxgate.middleware.kind import MiddlewareKind

# The value parsers are importable from here too.
__all__ = [
    "JWKS_MIN_REFRESH", "JWT_ALGORITHMS", "RESERVED_CLAIM_HEADERS", "Fail", "Path",
    "UpstreamSpec", "build_listener_tls", "check_config", "did_you_mean", "format_path",
    "is_loopback", "listen_address", "listen_tls", "parse_key_url", "parse_listen", "parse_method", "parse_network", "parse_route_path",
    "parse_scope_rule", "parse_upstream_url", "resolve_upstream", "worker_count",
]  # fmt: skip

Fail = Callable[[Path, str], Exception]
_T = TypeVar("_T")
_UPSTREAM_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


class UpstreamSpec(msgspec.Struct, frozen=True):
    """Everything a worker needs to open connections for one route's upstream.

    ``name`` is the upstream's name in ``upstreams:``, or the URL itself when the route
    names a URL. ``targets`` are ``(host, port)`` pairs, IPv6 hosts without brackets.
    ``tls`` is set when the targets are https (an empty ``UpstreamTls``: the system CAs and
    the target's own host name).
    """

    name: str
    targets: tuple[tuple[str, int], ...]
    connect_timeout: float
    read_timeout: float
    pool_size: int
    pool_idle_timeout: float
    tls: schema.UpstreamTls | None = None


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
    https = is_https_url(upstream.targets[0])  # the checker refused mixed schemes
    return UpstreamSpec(
        name=route.upstream,
        targets=targets,
        connect_timeout=upstream.connect_timeout,
        read_timeout=upstream.read_timeout,
        pool_size=upstream.pool_size,
        pool_idle_timeout=upstream.pool_idle_timeout,
        tls=(upstream.tls or schema.UpstreamTls()) if https else None,
    )


def listen_address(config: schema.Config) -> str:
    """The listener's ``host:port``, from either spelling of ``listen``."""
    listen = config.listen
    return listen if isinstance(listen, str) else listen.address


def listen_tls(config: schema.Config) -> schema.ListenTls | None:
    """The listener's TLS block, or None for plain HTTP."""
    listen = config.listen
    return None if isinstance(listen, str) else listen.tls


def build_listener_tls(config: schema.Config) -> ListenerTls | None:
    """The listener's TLS context, every certificate read now (None for plain HTTP).

    The master calls it for each generation of workers, so a reload re-reads the files.
    Raises ``ConfigError`` naming the key (``listen.tls.cert``) of a file that cannot be used.
    """
    tls = listen_tls(config)
    if tls is None:
        return None
    try:
        return listener_tls(tls)
    except TlsConfigError as exc:
        raise ConfigError(exc.message, format_path(("listen", "tls", *exc.path))) from None


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


def check_config(config: schema.Config, fail: Fail | None = None) -> schema.Config:
    """Check what the types cannot say; return ``config`` normalized (methods in upper case,
    an empty ``admin.token`` as ``None``).

    Listen addresses (admin on loopback only), store, CIDRs, upstream names and targets,
    route paths (no duplicates), route upstreams, methods, zero trust (an unauthenticated
    route must say ``public: true``), scope_map rules. ``fail(path, message)`` builds the
    exception to raise; ``path`` is the Struct field path (the loader maps it back to the
    user's spelling and line). By default a ``ConfigError`` without a line.
    """
    from fluxgate.middleware import kind_of  # not at the top: it imports every implementation

    if fail is None:
        fail = _plain_error
    return _Checker(fail, kind_of).config(config)


def _plain_error(path: Path, message: str) -> ConfigError:
    return ConfigError(message, format_path(path))


class _Checker:
    """Raises ``fail(path, message)`` at the first thing wrong; a middleware entry's checks
    are its kind's (``kind_of`` finds the record), handed this checker."""

    def __init__(self, fail: Fail, kind_of: Callable[[object], MiddlewareKind]) -> None:
        self.fail = fail
        self.kind_of = kind_of

    def check(self, ok: bool, path: Path, message: str) -> None:
        if not ok:
            raise self.fail(path, message)

    def parse(self, parser: Callable[[str], _T], value: str, path: Path) -> _T:
        try:
            return parser(value)
        except ValueError as exc:
            raise self.fail(path, str(exc)) from None

    def config(self, config: schema.Config) -> schema.Config:
        listen_addr = self.listen(config.listen)
        if config.store != "sqlite":
            self.check(
                is_redis_url(config.store),
                ("store",),
                # not echoed: a URL carries a password
                "expected 'sqlite' or a Redis URL (redis://host:port/db, rediss://, "
                "redis+sentinel://, redis+cluster://)",
            )
        if is_redis_url(config.store):
            self.parse(parse_store_url, config.store, ("store",))
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
            is_header_name(header),
            ("api_keys", "header"),
            f"invalid header name {header!r}",
        )
        # The key header is dropped from every request as it is parsed: it must
        # not be one that HTTP or the gateway itself relies on.
        self.check(
            not is_reserved_header(header),
            ("api_keys", "header"),
            f"{header} is used by HTTP or the gateway itself; choose another name",
        )
        self.check(
            query is None or is_query_name(query),
            ("api_keys", "query"),
            f"invalid query parameter name {query!r}",
        )
        secret = config.api_keys.signing_secret
        self.check(
            secret is None or not secret.strip() or len(secret) >= MIN_SECRET_CHARS,
            ("api_keys", "signing_secret"),
            f"must be at least {MIN_SECRET_CHARS} characters (e.g. `openssl rand -base64 32`)",
        )
        self.check(
            not (is_redis_url(config.store) and _has_api_keys(config))
            or bool((secret or "").strip()),
            ("api_keys", "signing_secret"),
            "cluster mode (a Redis store) with API key routes needs it, the same on every node "
            "(e.g. ${FLUXGATE_KEY_SECRET} set to `openssl rand -base64 32`): keys are signed "
            "with it, and a secret generated on each node would make the other nodes' keys "
            "invalid",
        )
        if is_redis_url(config.store) and _has_login(config):
            session_secret = config.cluster.session_secret or ""
            self.check(
                len(session_secret.strip()) >= MIN_SECRET_CHARS,
                ("cluster", "session_secret"),
                "cluster mode with an oauth2 login needs a session secret of at least "
                f"{MIN_SECRET_CHARS} characters, the same on every node (e.g. "
                "${FLUXGATE_SESSION_SECRET} set to `openssl rand -base64 32`): it derives "
                "the keys that encrypt sessions in Redis",
            )
        self.strip_headers(config.strip_request_headers, ("strip_request_headers",))
        for name, upstream in config.upstreams.items():
            self.upstream(name, upstream)
        routes = self.routes(config)
        scope_map = {
            scope: self.scope_rules(scope, rules) for scope, rules in config.scope_map.items()
        }
        admin = msgspec.structs.replace(config.admin, token=token)
        return msgspec.structs.replace(config, admin=admin, routes=routes, scope_map=scope_map)

    def listen(self, listen: str | schema.Listen) -> tuple[str, int]:
        if isinstance(listen, str):
            return self.parse(parse_listen, listen, ("listen",))
        address = self.parse(parse_listen, listen.address, ("listen", "address"))
        if listen.tls is not None:
            # Every file is read now, so `fluxgate check` and a reload refuse what the
            # workers could not serve with.
            try:
                listener_tls(listen.tls)
            except TlsConfigError as exc:
                raise self.fail(("listen", "tls", *exc.path), exc.message) from None
        return address

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
            self.check(
                is_https_url(target) == is_https_url(upstream.targets[0]),
                path,
                "the targets of one upstream are all http:// or all https://",
            )
        if upstream.tls is not None:
            self.upstream_tls(upstream, ("upstreams", name, "tls"))

    def upstream_tls(self, upstream: schema.Upstream, path: Path) -> None:
        tls = upstream.tls
        self.check(
            is_https_url(upstream.targets[0]),
            path,
            "tls applies to https:// targets; these are http://",
        )
        if tls.server_name is not None:
            self.parse(parse_host_name, tls.server_name, (*path, "server_name"))
        if tls.ca is None and tls.cert is None and tls.key is None:
            return  # the system CAs: nothing to read
        try:
            client_context(tls)
        except TlsConfigError as exc:
            raise self.fail((*path, *exc.path), exc.message) from None

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
            self.chain(route.middleware, ("routes", i, "middleware"))
            self.shadow(route, ("routes", i))
            self.strip_headers(route.strip_request_headers, ("routes", i, "strip_request_headers"))
            # Zero trust: no authentication only when said out loud.
            self.check(
                route.public or any(self.kind_of(m).authenticates for m in route.middleware),
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

    def strip_headers(self, names: list[str], path: Path) -> None:
        """Header names a strip list may hold: tokens, none the gateway reads or sets."""
        for k, name in enumerate(names):
            self.check(is_header_name(name), (*path, k), f"invalid header name {name!r}")
            self.check(
                not is_reserved_header(name),
                (*path, k),
                f"{name} is used by HTTP or the gateway itself and cannot be stripped",
            )

    def middleware(self, entry: object, path: Path) -> None:
        """The entry's own checks, by its kind (``path`` is its Struct path)."""
        self.kind_of(entry).check(self, entry, path)

    def shadow(self, route: schema.Route, path: Path) -> None:
        """Where shadow mode may be used (fluxgate/middleware/shadow.py)."""
        from fluxgate.middleware.shadow import check_route  # imports every implementation

        check_route(self, route, path)

    def chain(self, chain: list[object], path: Path) -> None:
        """The checks that depend on what comes before an entry in its route's chain."""
        authenticated = False
        for j, entry in enumerate(chain):
            kind = self.kind_of(entry)
            if kind.check_in_chain is not None:
                kind.check_in_chain(self, entry, (*path, j), authenticated)
            authenticated = authenticated or kind.authenticates

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


def _middleware_entries(config: schema.Config):
    """Every middleware entry of every route, each method of an ``any:`` on its own."""
    for route in config.routes:
        for middleware in route.middleware:
            yield from (middleware.methods if isinstance(middleware, schema.AnyOf)
                        else [middleware])


def _has_login(config: schema.Config) -> bool:
    """Whether a route of ``config`` has an oauth2 middleware with ``login: true``."""
    return any(isinstance(m, schema.OAuth2) and m.login for m in _middleware_entries(config))


def _has_api_keys(config: schema.Config) -> bool:
    """Whether a route of ``config`` takes API keys."""
    return any(isinstance(m, schema.ApiKey) for m in _middleware_entries(config))
