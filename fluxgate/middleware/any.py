"""any: a route that accepts several authentication methods (DESIGN §3).

``- any: [jwt: {...}, api_key: {...}]``: the first member whose credential the request
carries decides, alone: its refusal is the answer (a present but invalid credential is a
401, never a fall-through to the next method). A request that carries none of them gets
401 missing_credentials.

A member is any auth middleware with ``carries(req) -> bool`` (does the request present
this method's credential at all?) besides the usual ``__call__``; ``drop_headers`` of all
members are dropped, whichever one decides.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fluxgate.auth.failures import AuthFailures
from fluxgate.config.parsers import Path
from fluxgate.config.schema import AnyOf
from fluxgate.errors import ClientError, MissingCredentials
from fluxgate.middleware.kind import ConfigChecker, MiddlewareKind

if TYPE_CHECKING:
    from fluxgate.proxy.protocol import RequestState


class AnyMiddleware:
    """The members of one route's ``any`` entry, in order."""

    __slots__ = ("members", "drop_headers", "failures")

    def __init__(self, members: tuple[Any, ...], failures: AuthFailures | None = None) -> None:
        for member in members:
            if not callable(getattr(member, "carries", None)):
                raise TypeError(f"{type(member).__name__} cannot be a member of any: no carries()")
        self.members = members
        self.drop_headers = frozenset().union(*(getattr(m, "drop_headers", ()) for m in members))
        self.failures = failures

    @classmethod
    def from_config(cls, config: AnyOf, gateway: Any, route: Any = None) -> AnyMiddleware:
        from fluxgate.middleware import compile_middleware

        members = tuple(compile_middleware(m, gateway, route) for m in config.methods)
        return cls(members, AuthFailures.for_gateway(gateway) if gateway is not None else None)

    def carries(self, req: RequestState) -> bool:
        return any(m.carries(req) for m in self.members)

    def __call__(self, req: RequestState) -> ClientError | None:
        for member in self.members:
            if member.carries(req):
                return member(req)
        if self.failures is not None:
            self.failures.count("any", "missing_credentials")
        return MissingCredentials()


def check(checker: ConfigChecker, entry: AnyOf, path: Path) -> None:
    """Each member by its own kind's checks (the loader let only authentication kinds in)."""
    for k, method in enumerate(entry.methods):
        checker.middleware(method, (*path, "methods", k))


def describe(entry: AnyOf) -> str:
    """``any [jwt ...; api_key ...]``: each member as its own kind describes it."""
    from fluxgate.middleware import kind_of  # the registry imports this module

    members = [kind_of(method).describe(method) for method in entry.methods]
    return "any [" + "; ".join(members) + "]"


KIND = MiddlewareKind(
    name="any",
    struct=AnyOf,
    build=AnyMiddleware.from_config,
    describe=describe,
    shorthand="methods",
    nested=True,
    authenticates=True,
    check=check,
)
