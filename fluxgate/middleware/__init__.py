"""Middleware registry: config Struct type → the class that compiles it once per route."""

from __future__ import annotations

from typing import Any

from fluxgate.config import schema
from fluxgate.middleware.any import AnyMiddleware
from fluxgate.middleware.api_key import ApiKeyMiddleware
from fluxgate.middleware.ip_allow import IpAllowMiddleware
from fluxgate.middleware.jwt import JwtMiddleware
from fluxgate.middleware.quota import QuotaMiddleware

REGISTRY: dict[type, Any] = {
    schema.IpAllow: IpAllowMiddleware,
    schema.ApiKey: ApiKeyMiddleware,
    schema.Quota: QuotaMiddleware,
    schema.Jwt: JwtMiddleware,
    schema.AnyOf: AnyMiddleware,
}


def compile_middleware(config: Any, gateway: Any, route: Any) -> Any:
    """Build the per-request callable for one middleware entry of a route.

    `from_config(config, gateway, route)` runs once per worker boot: all expensive
    preparation (parsing CIDRs, mapping shared tables, building verifiers) happens there.
    `gateway` is the worker's runtime (loop, config, state_dir, shared tables); `route` is
    the route's schema entry.
    """
    try:
        factory = REGISTRY[type(config)]
    except KeyError:
        raise ValueError(f"no middleware implementation for {type(config).__name__}") from None
    return factory.from_config(config, gateway, route)
