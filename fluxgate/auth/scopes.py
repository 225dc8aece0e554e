"""Scopes: what a credential holds, and what a request needs.

A request is authorized when it holds every scope its route's auth middleware lists and,
where a ``scope_map`` entry covers its method and path, at least one of the scopes that
cover it. ``scope_map`` rules are ``"METHOD /path/pattern"``: a segment ``*`` matches one
path segment, ``**`` any number of them (zero included), ``*`` inside a segment any run of
characters but ``/``; a trailing ``/`` on the request path is ignored; a GET rule covers
HEAD too. Rules match the normalized path, the one the upstream receives.

Any auth middleware (jwt, api_key, ...) builds one ``ScopePolicy`` in ``from_config`` and
calls ``check`` once it knows the principal.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

from fluxgate._core import TokenError
from fluxgate.errors import ClientError, InsufficientScope

_CACHE_LIMIT = 4096


def token_scopes(claims: Mapping[str, Any]) -> frozenset[str]:
    """Scopes of a JWT: ``scope`` (space-separated, RFC 8693 §4.2) and ``scp`` (a string or
    an array of strings, as Azure AD and Okta send). Another type is ``invalid_claim``."""
    found: set[str] = set()
    scope = claims.get("scope")
    if scope is not None:
        if not isinstance(scope, str):
            raise TokenError("invalid_claim")
        found.update(scope.split())
    scp = claims.get("scp")
    if scp is not None:
        if isinstance(scp, str):
            found.update(scp.split())
        elif isinstance(scp, list) and all(isinstance(s, str) for s in scp):
            found.update(s for s in scp if s and not any(c.isspace() for c in s))
        else:
            raise TokenError("invalid_claim")
    return frozenset(found)


def compile_rule(rule: str) -> tuple[str, re.Pattern[str]]:
    """``"GET /api/items/**"`` → ("GET", a regex over the normalized path)."""
    method, _, pattern = rule.strip().partition(" ")
    parts = pattern.strip().strip("/").split("/") if pattern.strip() != "/" else []
    regex = ""
    for part in parts:
        if part == "**":
            regex += "(?:/[^/]+)*"
        elif "*" in part:
            regex += "/" + "[^/]*".join(re.escape(p) for p in part.split("*"))
        else:
            regex += "/" + re.escape(part)
    return method.upper(), re.compile(regex + "/?" if regex else "/")


class ScopePolicy:
    """The scope rules of one route's auth middleware."""

    __slots__ = ("required", "challenge", "rules", "active", "_covering")

    def __init__(self, required: Iterable[str], scope_map: Mapping[str, list[str]]) -> None:
        self.required = frozenset(required)
        self.challenge = " ".join(sorted(self.required))
        self.rules: tuple[tuple[bytes, re.Pattern[str], str], ...] = tuple(
            (method.encode(), regex, scope)
            for scope, rules in scope_map.items()
            for method, regex in map(compile_rule, rules)
        )
        self._covering: dict[tuple[bytes, bytes], frozenset[str]] = {}
        self.active = bool(self.required or self.rules)  # False: check() always passes

    def covering(self, method: bytes, path: bytes) -> frozenset[str]:
        """The scope_map scopes whose rules cover ``method path`` (empty: not covered)."""
        key = (method, path)
        found = self._covering.get(key)
        if found is None:
            text = path.decode("latin-1")
            found = frozenset(
                scope
                for rule_method, regex, scope in self.rules
                if (rule_method == method or (rule_method == b"GET" and method == b"HEAD"))
                and regex.fullmatch(text)
            )
            if len(self._covering) >= _CACHE_LIMIT:
                self._covering.clear()
            self._covering[key] = found
        return found

    def check(self, scopes: frozenset[str], method: bytes, path: bytes) -> ClientError | None:
        """None when ``scopes`` satisfy the route and the scope_map, else a 403."""
        if self.required and not self.required <= scopes:
            return InsufficientScope(scope=self.challenge)
        if self.rules:
            covering = self.covering(method, path)
            if covering and covering.isdisjoint(scopes):
                return InsufficientScope(scope=" ".join(sorted(covering)))
        return None
