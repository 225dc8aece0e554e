"""fluxgate/auth/scopes.py: scopes of a token, route scopes, scope_map rules."""

from __future__ import annotations

import pytest

from fluxgate._core import TokenError
from fluxgate.auth.scopes import ScopePolicy, compile_rule, token_scopes
from fluxgate.errors import InsufficientScope


def test_token_scopes():
    assert token_scopes({"scope": "a b  c"}) == {"a", "b", "c"}
    assert token_scopes({"scp": ["x", "y"], "scope": "a"}) == {"a", "x", "y"}
    assert token_scopes({"scp": "x y"}) == {"x", "y"}
    assert token_scopes({}) == frozenset()
    for bad in ({"scope": 1}, {"scope": ["a"]}, {"scp": [1]}, {"scp": {"a": 1}}):
        with pytest.raises(TokenError) as info:
            token_scopes(bad)
        assert info.value.reason == "invalid_claim"


@pytest.mark.parametrize(
    "rule,path,matches",
    [
        ("GET /api/inventory/**", "/api/inventory", True),
        ("GET /api/inventory/**", "/api/inventory/", True),
        ("GET /api/inventory/**", "/api/inventory/a/b/c", True),
        ("GET /api/inventory/**", "/api/inventory2", False),
        ("GET /api/inventory/**", "/api", False),
        ("PUT /api/orders/*", "/api/orders/7", True),
        ("PUT /api/orders/*", "/api/orders/7/", True),
        ("PUT /api/orders/*", "/api/orders/7/lines", False),
        ("PUT /api/orders/*", "/api/orders", False),
        ("POST /api/orders", "/api/orders", True),
        ("POST /api/orders", "/api/orders/", True),
        ("POST /api/orders", "/api/orders/1", False),
        ("GET /files/*.pdf", "/files/a.pdf", True),
        ("GET /files/*.pdf", "/files/a.txt", False),
        ("GET /a.b", "/aXb", False),
        ("GET /**", "/anything/at/all", True),
        ("GET /", "/", True),
        ("GET /", "/x", False),
    ],
)
def test_rules(rule, path, matches):
    method, regex = compile_rule(rule)
    assert method == rule.split()[0]
    assert bool(regex.fullmatch(path)) is matches


def test_policy():
    policy = ScopePolicy(
        ["base"],
        {"write": ["POST /api/orders/**", "PUT /api/orders/*"], "admin": ["POST /api/orders/**"],
         "read": ["GET /api/orders/**"]},
    )
    assert policy.check(frozenset({"base"}), b"DELETE", b"/api/orders/1") is None  # uncovered
    refusal = policy.check(frozenset({"base"}), b"POST", b"/api/orders/1")
    assert isinstance(refusal, InsufficientScope)
    assert refusal.headers[0][1].endswith(b'scope="admin write"')
    assert policy.check(frozenset({"base", "write"}), b"POST", b"/api/orders/1") is None
    assert policy.check(frozenset({"base", "admin"}), b"POST", b"/api/orders/1") is None
    assert policy.check(frozenset({"write"}), b"POST", b"/api/orders/1") is not None  # no base
    assert policy.check(frozenset({"base"}), b"HEAD", b"/api/orders/1") is not None  # GET rule
    assert policy.check(frozenset({"base", "read"}), b"HEAD", b"/api/orders/1") is None
    for i in range(5000):  # the per-path memo stays bounded
        policy.check(frozenset({"base"}), b"GET", b"/x/%d" % i)
    assert len(policy._covering) <= 4096
    assert ScopePolicy([], {}).check(frozenset(), b"GET", b"/") is None
