"""Middleware registry: config Struct type → the class that compiles it once per route."""

from __future__ import annotations

from typing import Any

from fluxgate.config import schema
from fluxgate.middleware.ip_allow import IpAllowMiddleware

REGISTRY: dict[type, Any] = {
    schema.IpAllow: IpAllowMiddleware,
}


def compile_middleware(config: Any) -> Any:
    """Build the per-request callable for one middleware entry of a route."""
    try:
        factory = REGISTRY[type(config)]
    except KeyError:
        raise ValueError(f"no middleware implementation for {type(config).__name__}") from None
    return factory.from_config(config)
