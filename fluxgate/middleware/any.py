"""any: a route that accepts several authentication methods.

``- any: [jwt: {...}, api_key: {...}]``: the first member whose credential the request
carries decides, alone: its refusal is the answer (a present but invalid credential is a
401, never a fall-through to the next method). A request that carries none of them gets
401 missing_credentials.

A member is any auth middleware with ``carries(req) -> bool`` (does the request present
this method's credential at all?) besides the usual ``__call__``; ``drop_headers`` of all
members are dropped, whichever one decides.

jwt and oauth2 both take ``Authorization: Bearer``. When an ``any`` has both, the token's
shape decides, whatever their order: a JWS compact serialization (RFC 7515 §7.1: three
dot-separated parts, the header a base64url JSON object, so it starts with ``eyJ``) goes
to the first jwt member, any other token to the first oauth2 member. (An authorization
server that issues JWT access tokens and wants them introspected is configured with
oauth2 alone.) An API key sent as a bearer token (``fg_…``) goes to the api_key member,
whatever the order, as it would on a route with api_key alone.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fluxgate._core import bearer_token
from fluxgate.auth.failures import AuthFailures
from fluxgate.auth.keys import PREFIX as KEY_PREFIX  # fg_: never a JWT or an opaque token
from fluxgate.config.parsers import Path
from fluxgate.config.schema import AnyOf
from fluxgate.errors import ClientError, MissingCredentials
from fluxgate.middleware.kind import ConfigChecker, MiddlewareKind

if TYPE_CHECKING:
    from fluxgate.proxy.protocol import RequestState


_BEARER = ("jwt", "oauth2")  # the methods that take Authorization: Bearer


class AnyMiddleware:
    """The members of one route's ``any`` entry, in order."""

    __slots__ = ("members", "drop_headers", "failures", "by_shape", "api_key")

    def __init__(self, members: tuple[Any, ...], failures: AuthFailures | None = None) -> None:
        for member in members:
            if not callable(getattr(member, "carries", None)):
                raise TypeError(f"{type(member).__name__} cannot be a member of any: no carries()")
        self.members = members
        self.drop_headers = frozenset().union(*(getattr(m, "drop_headers", ()) for m in members))
        self.failures = failures
        # (jwt member, oauth2 member) when both take bearer tokens here, else None.
        jwt = next((m for m in members if getattr(m, "method", None) == "jwt"), None)
        oauth2 = next((m for m in members if getattr(m, "method", None) == "oauth2"), None)
        self.by_shape = (jwt, oauth2) if jwt is not None and oauth2 is not None else None
        # The api_key member, when a bearer method is here too (it takes bearer fg_ keys).
        self.api_key = next((m for m in members if getattr(m, "method", None) == "api_key"),
                            None) if jwt is not None or oauth2 is not None else None

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
                if getattr(member, "method", None) in _BEARER and (
                        self.by_shape is not None or self.api_key is not None):
                    member = self._bearer_member(req, member)
                return member(req)
        if self.failures is not None:
            self.failures.count("any", "missing_credentials")
        return MissingCredentials()


    def _bearer_member(self, req: RequestState, member: Any) -> Any:
        token = bearer_token(req.headers)
        if not token:  # none (a jwt cookie or query token), empty, or ambiguous
            return member
        if self.api_key is not None and token.startswith(KEY_PREFIX):
            return self.api_key
        if self.by_shape is None:
            return member
        jwt, oauth2 = self.by_shape
        return jwt if is_jws_shaped(token) else oauth2


def is_jws_shaped(token: bytes) -> bool:
    """Does ``token`` look like a JWS compact serialization (not a proof that it is one)?"""
    return token.startswith(b"eyJ") and token.count(b".") == 2


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
