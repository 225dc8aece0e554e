"""The middleware kinds this version implements, in order, and what is done through them.

``KINDS`` is the registry the loader, the config checker, the worker, ``fluxctl routes
explain`` / ``auth verify`` and the ``--probe`` battery iterate (``kind.py`` says what a
record holds). Its order is the order kinds are listed and probed in. A new kind is a module
with a ``KIND`` record, a line here, and its Struct in ``schema.Middleware``.
"""

from __future__ import annotations

import typing
from collections.abc import Iterator
from typing import Any

from fluxgate.config import schema
from fluxgate.middleware import any as any_of
from fluxgate.middleware import api_key, ip_allow, jwt, oauth2, quota
from fluxgate.middleware.kind import Middleware, MiddlewareKind

__all__ = [
    "KINDS", "Middleware", "MiddlewareKind", "auth_methods", "compile_middleware", "kind_of",
]  # fmt: skip


def _registry(*kinds: MiddlewareKind) -> dict[str, MiddlewareKind]:
    """The records by name, each checked against the schema's unions (a kind msgspec cannot
    decode, or an `any` member it would refuse, fails here rather than at a user's config)."""
    union = set(typing.get_args(schema.Middleware))
    members = set(typing.get_args(schema.AuthMethod))
    for kind in kinds:
        if kind.struct not in union:
            raise TypeError(f"kind {kind.name!r}: {kind.struct.__name__} is not in schema.Middleware")
        if (kind.authenticates and not kind.nested) != (kind.struct in members):
            raise TypeError(f"kind {kind.name!r}: schema.AuthMethod must hold {kind.struct.__name__}"
                            " exactly when it authenticates")
    return {kind.name: kind for kind in kinds}


KINDS: dict[str, MiddlewareKind] = _registry(
    ip_allow.KIND,
    jwt.KIND,
    api_key.KIND,
    oauth2.KIND,
    quota.KIND,
    any_of.KIND,
)
_BY_STRUCT = {kind.struct: kind for kind in KINDS.values()}


def kind_of(entry: Any) -> MiddlewareKind:
    """The record of a middleware config entry (an instance of one of the kinds' Structs)."""
    try:
        return _BY_STRUCT[type(entry)]
    except KeyError:
        raise ValueError(f"no middleware implementation for {type(entry).__name__}") from None


def compile_middleware(config: Any, gateway: Any, route: Any) -> Middleware:
    """Build the per-request callable for one middleware entry of a route.

    Runs once per worker boot (``MiddlewareKind.build``, the class's ``from_config``).
    ``gateway`` is the worker's runtime (loop, config, state_dir, shared tables); ``route``
    is the route's schema entry.
    """
    return kind_of(config).build(config, gateway, route)


def auth_methods(route: schema.Route, kind: str | None = None) -> Iterator[schema.AuthMethod]:
    """The route's authentication entries in chain order, the members of a nested kind
    (``any``) in its place; with ``kind``, only those of that kind."""
    for entry in route.middleware:
        record = kind_of(entry)
        methods = record.members(entry) if record.nested else [entry]
        for method in methods:
            found = kind_of(method)
            if found.authenticates and (kind is None or found.name == kind):
                yield method
