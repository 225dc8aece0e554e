"""The typed shape of fluxgate.yaml (DESIGN §3).

Structs are frozen and refuse unknown keys. ``Duration`` fields hold seconds (float) and
``Size`` fields bytes (int); the loader turns "60s", "5m", "10MiB" into those before
conversion. Middleware entries are written ``- ip_allow: [...]`` in YAML; the loader rewrites
each one-key mapping into a tagged Struct (``kind`` is the tag) before conversion.
"""

from __future__ import annotations

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
Workers = Annotated[int, Meta(ge=1, le=256)]

HTTP_METHODS = ("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "CONNECT")


class Base(Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    pass


class Limits(Base):
    max_header_bytes: HeaderBytes = 16384
    max_body_bytes: Size = 10 * 1024 * 1024
    header_timeout: Timeout = 10.0
    idle_timeout: Duration = 60.0
    drain_timeout: Duration = 30.0


class Admin(Base):
    listen: str = "127.0.0.1:9901"
    token: str | None = None


class ApiKeys(Base):
    header: str = "X-API-Key"
    query: str = "api_key"
    default_expiry: Duration = 90 * 86400.0
    rotation_grace: Duration = 86400.0


class Upstream(Base):
    targets: Annotated[list[str], Meta(min_length=1)]
    connect_timeout: Timeout = 2.0
    read_timeout: Timeout = 30.0
    pool_size: PositiveInt = 64  # max connections per target
    pool_idle_timeout: Duration = 30.0


class IpAllow(Base, tag="ip_allow", tag_field="kind"):
    cidrs: Annotated[list[str], Meta(min_length=1)]


# Kinds that later work adds go into this union; the loader refuses the others by name.
Middleware = IpAllow

AUTH_KINDS: frozenset[str] = frozenset({"jwt", "oauth2", "api_key", "any"})
KNOWN_KINDS: frozenset[str] = frozenset({"ip_allow", "jwt", "oauth2", "api_key", "quota", "any"})
AVAILABLE_KINDS: frozenset[str] = frozenset({"ip_allow"})


class Route(Base):
    route: str
    upstream: str
    methods: list[str] | None = None
    public: bool = False
    strip_prefix: bool = False
    websocket: bool = True
    middleware: list[Middleware] = []


class Config(Base):
    listen: str = "127.0.0.1:8080"
    workers: Workers | Literal["auto"] = "auto"
    state_dir: str = "./.fluxgate"
    store: str = "sqlite"
    admin: Admin = msgspec.field(default_factory=Admin)
    trusted_proxies: list[str] = []
    limits: Limits = msgspec.field(default_factory=Limits)
    api_keys: ApiKeys = msgspec.field(default_factory=ApiKeys)
    upstreams: dict[str, Upstream] = {}
    routes: list[Route] = []
    scope_map: dict[str, list[str]] = {}
    # "-" = stderr, a path = append to that file, null = off. Never logs query strings.
    access_log: str | None = "-"
