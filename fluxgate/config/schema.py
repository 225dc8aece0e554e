"""The typed shape of fluxgate.yaml (every key is documented in fluxgate.example.yaml).

Structs are frozen and refuse unknown keys. ``Duration`` fields hold seconds (float) and
``Size`` fields bytes (int); the loader turns "60s", "5m", "10MiB" into those before
conversion. Middleware entries are written ``- ip_allow: [...]`` in YAML; the loader rewrites
each one-key mapping into a tagged Struct (``kind`` is the tag) before conversion.
"""

from __future__ import annotations

import typing
from typing import Annotated, Literal

import msgspec
from msgspec import Meta, Struct

# ``extra["unit"]`` tells the loader which fields take "60s" / "10MiB" spellings; a new
# duration or size field needs nothing else.
Duration = Annotated[float, Meta(ge=0, extra={"unit": "duration"})]
Timeout = Annotated[float, Meta(gt=0, extra={"unit": "duration"})]  # 0 would fail every call
Size = Annotated[int, Meta(ge=0, extra={"unit": "size"})]
PositiveInt = Annotated[int, Meta(ge=1)]
HeaderBytes = Annotated[int, Meta(ge=1024, le=1024 * 1024, extra={"unit": "size"})]
MAX_WORKERS = 256
Workers = Annotated[int, Meta(ge=1, le=MAX_WORKERS)]

HTTP_METHODS = ("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "CONNECT")


class Base(Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    pass


class Limits(Base):
    max_header_bytes: HeaderBytes = 16384
    max_header_count: Annotated[int, Meta(ge=8, le=10000)] = 100  # header fields; 431 beyond
    # Header names with "_" are dropped unless this is true (nginx: underscores_in_headers);
    # one that reads as Content-Length / Transfer-Encoding is a 400 either way.
    allow_underscores_in_headers: bool = False
    max_body_bytes: Size = 10 * 1024 * 1024
    header_timeout: Timeout = 10.0
    idle_timeout: Duration = 60.0
    drain_timeout: Duration = 30.0


class Admin(Base):
    listen: str = "127.0.0.1:9901"
    token: str | None = None


class ApiKeys(Base):
    header: str = "X-API-Key"
    # Also take keys from this query parameter (e.g. api_key); off unless named, since a key
    # in a URL ends up in browser history and intermediary logs.
    query: str | None = None
    default_expiry: Duration = 90 * 86400.0
    rotation_grace: Duration = 86400.0
    # The key that signs and digests API keys; default: state_dir/keys.secret, generated once.
    signing_secret: str | None = None


class AccessLog(Base):
    format: Literal["text", "json"] = "text"
    path: str | None = "-"  # "-" = stderr, a file appended to, null = off


class Certificate(Base):
    """One certificate the listener can present: PEM files (the chain, leaf first; its key)."""

    cert: str
    key: str


class ListenTls(Base):
    """TLS on the listener: ``cert`` + ``key``, or ``certificates`` chosen by SNI (the first
    is the default); fluxgate/tls.py builds the context."""

    cert: str | None = None
    key: str | None = None
    certificates: list[Certificate] = []


class Listen(Base):
    """``listen: {address: host:port, tls: {...}}``; a plain ``host:port`` string is the same
    without TLS."""

    address: str
    tls: ListenTls | None = None


class UpstreamTls(Base):
    """How https targets are verified (and the gateway identifies itself, mTLS)."""

    ca: str | None = None  # PEM CA bundle; default: the system CAs
    cert: str | None = None  # client certificate (PEM) for mTLS; with key
    key: str | None = None
    server_name: str | None = None  # SNI and the name verified; default: the target's host


class Upstream(Base):
    targets: Annotated[list[str], Meta(min_length=1)]
    tls: UpstreamTls | None = None  # https targets only
    connect_timeout: Timeout = 2.0
    read_timeout: Timeout = 30.0
    pool_size: PositiveInt = 64  # max connections per target
    pool_idle_timeout: Duration = 30.0


class MiddlewareEntry(Base):
    """What every middleware entry accepts besides its kind's own keys."""

    # Evaluated on every request, its decision logged and counted, never enforced
    # (docs/shadow.md).
    shadow: bool = False


class IpAllow(MiddlewareEntry, tag="ip_allow", tag_field="kind", kw_only=True):
    cidrs: Annotated[list[str], Meta(min_length=1)]


class Jwt(MiddlewareEntry, tag="jwt", tag_field="kind", kw_only=True):
    """Bearer JWTs verified against a JWKS (or an HS* shared secret)."""

    issuer: str | None = None  # exact `iss`; also the OIDC discovery base without jwks_uri
    audience: str | list[str] | None = None  # one of these must be in `aud`
    jwks_uri: str | None = None  # https (http only on loopback)
    clockSkewTolerance: Duration = 60.0  # leeway for exp, nbf, iat
    algorithms: list[str] = msgspec.field(default_factory=lambda: ["RS256", "ES256"])
    forward_claims: dict[str, str] = {}  # claim -> upstream header
    scopes: list[str] = []  # every one required (from `scope` / `scp`)
    secret: str | None = None  # HS* shared secret; only with HS* in algorithms
    require_exp: bool = True
    jwks_refresh: Timeout = 300.0  # poll period (Cache-Control max-age may shorten it)
    jwks_max_stale: Timeout = 86400.0  # last good keys are kept this long while fetches fail
    cache_size: Annotated[int, Meta(ge=0, le=1_000_000)] = 16384  # verified tokens cached
    max_token_bytes: Annotated[int, Meta(ge=256, le=65536, extra={"unit": "size"})] = 8192
    cookie: str | None = None  # also take the token from this cookie
    query: str | None = None  # also from this query parameter (off unless named)


class ApiKey(MiddlewareEntry, tag="api_key", tag_field="kind", kw_only=True):
    """API keys from the ``api_keys.header`` header (or the ``api_keys.query`` parameter
    when one is named); every scope listed is required of the key. ``query: false`` refuses
    keys in the query string on this route (they are still stripped before proxying)."""

    scopes: list[str] = []
    query: bool = True


class LoginSession(Base):
    """The server-side session of the oauth2 browser login."""

    cookie: str = "__Host-fluxgate"  # the session cookie's name (holds an opaque id only)
    idle: Timeout = 8 * 3600.0  # ended after this long without a request
    absolute: Timeout = 24 * 3600.0  # ended this long after the login, whatever the use
    key_rotation: Timeout = 24 * 3600.0  # a new encryption key for the store this often


class OAuth2(MiddlewareEntry, tag="oauth2", tag_field="kind", kw_only=True):
    """Opaque bearer tokens validated by RFC 7662 introspection through the master's side
    pool; every listed scope is required of the token."""

    client_id: str = ""  # required (checked): the gateway's client at the server
    client_secret: str | None = None  # client_secret_basic / client_secret_post
    issuer: str | None = None  # RFC 8414 / OIDC discovery base; `iss` must match when sent
    introspection_endpoint: str | None = None  # default: from discovery
    auth_method: Literal["client_secret_basic", "client_secret_post", "private_key_jwt"] = (
        "client_secret_basic"
    )
    private_key: str | None = None  # PEM file signing private_key_jwt assertions (RFC 7523)
    audience: str | list[str] | None = None  # one of these must be in the response's `aud`
    scopes: list[str] = []
    cache_ttl: Timeout = 60.0  # a positive answer is kept until min(exp, cache_ttl)
    negative_cache_ttl: Timeout = 5.0  # `active: false` is kept this long
    cache_size: Annotated[int, Meta(ge=64, le=4_000_000)] = 65536  # shared result slots
    timeout: Timeout = 5.0  # one call to the authorization server, waiting included
    max_connections: Annotated[int, Meta(ge=1, le=256)] = 8  # to the authorization server
    max_pending: Annotated[int, Meta(ge=1, le=1_000_000)] = 1024  # distinct tokens queued
    miss_rate: str | None = None  # e.g. "20/s": cache misses per client address and worker
    clockSkewTolerance: Duration = 60.0  # leeway for nbf
    ca_file: str | None = None  # CA bundle for an https endpoint (default: system CAs)
    # The browser login (authorization code flow with PKCE, server-side sessions): with
    # login: true a browser without a session is sent to the server's login page.
    login: bool = False
    redirect_uri: str | None = None  # the registered callback; its path is served by the gateway
    codeChallengeMethod: str = "S256"  # S256 only: plain is refused
    login_scopes: list[str] = msgspec.field(default_factory=lambda: ["openid"])  # asked for
    refresh_leeway: Duration = 30.0  # refresh the access token this long before it expires
    forward_access_token: bool = False  # upstream gets Authorization: Bearer <access token>
    # Claims of a JWT access token that add to the principal's scopes (dotted paths, e.g.
    # Auth0's permissions, Keycloak's realm_access.roles), on top of the token's scope.
    scope_claims: list[str] = msgspec.field(default_factory=lambda: ["scope", "scp"])
    api_paths: list[str] = []  # path prefixes answered 401 (never a redirect) without a session
    # Absolute return URLs after login are refused unless their origin is listed here.
    allowed_return_origins: list[str] = []
    # Origins accepted on unsafe methods and WebSocket upgrades besides redirect_uri's own.
    allowed_origins: list[str] = []
    logout_path: str = "/.fluxgate/logout"
    post_logout_redirect_uri: str | None = None  # registered at the server for RP logout
    backchannel_logout_path: str | None = None  # e.g. /.fluxgate/backchannel-logout
    require_iss_parameter: bool = False  # RFC 9207 iss in the callback even if not advertised
    session: LoginSession = msgspec.field(default_factory=LoginSession)


# Authentication methods `any` can combine: every authenticating kind but `any` itself.
AuthMethod = Jwt | ApiKey | OAuth2


class AnyOf(MiddlewareEntry, tag="any", tag_field="kind", kw_only=True):
    """`- any: [jwt: {...}, api_key: {...}]`: the first method whose credential the request
    carries decides; a present but invalid credential is a 401, not a fall-through."""

    methods: Annotated[list[AuthMethod], Meta(min_length=1)]


class Quota(MiddlewareEntry, tag="quota", tag_field="kind", kw_only=True):
    """``- quota: {limit: 1000/m, by: subject}``: a budget per fixed UTC window (s, m, h, d)
    per principal (``subject``), API key name (``key``) or client address (``ip``)."""

    limit: str
    by: Literal["subject", "key", "ip"] = "subject"


# Every kind's Struct; its module in fluxgate/middleware/ registers the rest of the kind.
Middleware = IpAllow | Jwt | AnyOf | ApiKey | Quota | OAuth2


def _tags(union: object) -> frozenset[str]:
    return frozenset(m.__struct_config__.tag for m in typing.get_args(union))


# The kinds this version implements: the tags of the Middleware union.
AVAILABLE_KINDS: frozenset[str] = _tags(Middleware)
# Kinds announced but not in this version: the loader refuses them as "not available yet"
# (rather than "unknown") until their Struct joins the union.
PLANNED_KINDS: frozenset[str] = frozenset({"oauth2"}) - AVAILABLE_KINDS
KNOWN_KINDS: frozenset[str] = AVAILABLE_KINDS | PLANNED_KINDS
AUTH_KINDS: frozenset[str] = _tags(AuthMethod) | {AnyOf.__struct_config__.tag}


# Request headers never forwarded unless `strip_request_headers` says otherwise: identities
# an authenticating proxy or TLS terminator asserts to the app behind it (a client must not
# be able to claim one), and method overrides (the route's `methods` and scope_map rules
# judged the request's own method). A route's forward_claims headers are the gateway's own.
DEFAULT_STRIP_REQUEST_HEADERS: tuple[str, ...] = (
    "Remote-User", "X-Remote-User", "X-Remote-Group", "X-User", "X-User-Id", "X-Username",
    "X-Auth-User", "X-Auth-User-Id", "X-Authenticated-User", "X-Authenticated-Userid",
    "X-Authenticated-Groups", "X-Forwarded-User", "X-Forwarded-Email", "X-Forwarded-Groups",
    "X-Forwarded-Preferred-Username", "X-Auth-Request-User", "X-Auth-Request-Email",
    "X-Auth-Request-Groups", "X-Auth-Request-Preferred-Username", "X-Consumer-Id",
    "X-Consumer-Username", "X-Consumer-Custom-Id", "X-Credential-Identifier",
    "X-Forwarded-Client-Cert", "X-Client-Cert", "X-SSL-Client-Cert", "X-SSL-Client-DN",
    "X-SSL-Client-Verify", "X-HTTP-Method-Override", "X-HTTP-Method", "X-Method-Override",
)  # fmt: skip


class Cluster(Base):
    """Cluster mode's settings (used when ``store`` is a Redis URL)."""

    # This node's name in the shared store (leases, sessions, the key log's readers);
    # default: the host name and the listen port.
    node: str | None = None
    # Prefix of every Redis key and channel, so that several gateways can share one Redis.
    prefix: str = "fluxgate:"
    # Quota leasing: the chunk a node takes from a key's window at a time ("auto" adapts it
    # to the key's rate and remaining budget; 0 counts every request in Redis, exactly).
    lease: Annotated[int, Meta(ge=0)] | Literal["auto"] = "auto"
    # When Redis cannot be reached and a node's leases are spent: refuse (deny) or count
    # on this node alone against the whole limit (local). Login sessions: deny stops serving
    # a node's copies once they have gone 15 s unchecked against Redis (503).
    on_store_down: Literal["deny", "local"] = "local"
    # Each Redis call's bound; a call that takes longer counts as the store being down.
    timeout: Timeout = 0.5
    # CA bundle that verifies a rediss:// server (default: the system's CAs), and an
    # optional client certificate and key.
    tls_ca: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    # Derives the keys that encrypt OAuth login sessions in Redis (the same on every node;
    # from ${ENV}, at least 32 characters); required when a route has an oauth2 login.
    session_secret: str | None = None


class Route(Base):
    route: str
    upstream: str
    methods: list[str] | None = None
    public: bool = False
    strip_prefix: bool = False
    websocket: bool = True
    # Read and validate the whole body (<= limits.max_body_bytes) before anything goes
    # upstream, then send it with Content-Length (nginx's proxy_request_buffering on).
    buffer_request_body: bool = False
    strip_request_headers: list[str] = []  # on top of the top-level list, on this route
    middleware: list[Middleware] = []
    # Every middleware entry of the route in shadow mode; the route then needs public: true
    # (docs/shadow.md).
    shadow: bool = False


class Config(Base):
    listen: str | Listen = "127.0.0.1:8080"
    workers: Workers | Literal["auto"] = "auto"
    state_dir: str = "./.fluxgate"
    store: str = "sqlite"
    cluster: Cluster = msgspec.field(default_factory=Cluster)
    admin: Admin = msgspec.field(default_factory=Admin)
    trusted_proxies: list[str] = []
    limits: Limits = msgspec.field(default_factory=Limits)
    # Request headers dropped before proxying, on every route (replaces the default list).
    strip_request_headers: list[str] = msgspec.field(
        default_factory=lambda: list(DEFAULT_STRIP_REQUEST_HEADERS)
    )
    api_keys: ApiKeys = msgspec.field(default_factory=ApiKeys)
    upstreams: dict[str, Upstream] = {}
    routes: list[Route] = []
    scope_map: dict[str, list[str]] = {}
    # "-" = stderr, a path = append to that file, null = off (text lines), or
    # {format: text|json, path: ...}. Never logs query strings.
    access_log: str | AccessLog | None = "-"
