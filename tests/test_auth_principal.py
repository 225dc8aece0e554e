"""The principal (compiled in fluxgate._core) and the jwt route's principal builder.

A jwt principal is built at C level (JwtPrincipals) for each newly verified token of a new
caller: it must be exactly the Principal the public constructor builds from the same claims,
and nothing a token says may split the upstream request head.
"""

from __future__ import annotations

import gc

import pytest

from fluxgate._core import JwtPrincipals, TokenError
from fluxgate.auth.principal import Principal
from fluxgate.auth.scopes import token_scopes
from fluxgate.middleware.jwt import claim_header_value

HOSTILE = ["user-1", "", "a\r\nX-Evil: 1", "\x00\x7f\x1b[31m", "é-ü-日本", "tab\there", " x "]


def lines(principal: Principal) -> bytes:
    """upstream_lines as the headers' list formats them."""
    return b"".join(name + b": " + value + b"\r\n" for name, value in principal.upstream_headers())


def test_upstream_lines_carry_method_subject_sorted_scopes_and_claims():
    p = Principal("jwt:iss|u", "jwt", "u", frozenset({"b", "a"}),
                  claims_headers=((b"X-Tenant", b"t1"),))
    assert p.upstream_lines == (b"X-FluxGate-Auth: jwt\r\nX-FluxGate-Subject: u\r\n"
                                b"X-FluxGate-Scopes: a b\r\nX-Tenant: t1\r\n")
    assert lines(p) == p.upstream_lines
    bare = Principal("key:k", "api_key", "k", key_name="k")
    assert bare.upstream_lines == (b"X-FluxGate-Auth: api_key\r\nX-FluxGate-Subject: k\r\n"
                                   b"X-FluxGate-Scopes: \r\n")
    assert bare.key_name == "k" and bare.scopes == frozenset() and bare.claims_headers == ()


@pytest.mark.parametrize("subject", HOSTILE)
def test_no_subject_or_scope_can_split_the_head(subject):
    p = Principal("x", "jwt", subject, frozenset({subject + "s", "ok"} if subject else set()))
    body = p.upstream_lines.replace(b"\r\n", b"\n")
    assert body.count(b"\n") == 3 and b"\r" not in body
    assert all(0x20 <= c <= 0x7E or c == 0x0A for c in body)
    assert lines(p) == p.upstream_lines
    assert p.subject == subject  # the identity itself is kept as sent


def test_equality_hash_repr_and_mutable_lines():
    a = Principal("jwt:i|u", "jwt", "u", frozenset({"s"}))
    b = Principal("jwt:i|u", "jwt", "u", frozenset({"s"}))
    assert a == b and hash(a) == hash(b) and a != Principal("jwt:i|v", "jwt", "v")
    assert a != "jwt:i|u" and repr(a) == "Principal(id='jwt:i|u', method='jwt', scopes=['s'])"
    a.upstream_lines += b"Authorization: Bearer t\r\n"  # oauth2 login adds its token line
    assert a.upstream_lines.endswith(b"Authorization: Bearer t\r\n")
    assert not gc.is_tracked(a)  # a cached credential's principal costs collections nothing


def builder(forward=(), limit=4096) -> JwtPrincipals:
    return JwtPrincipals(tuple((c, h.encode()) for c, h in forward), token_scopes,
                         claim_header_value, limit)


def expected(claims: dict, forward=()) -> Principal:
    """The principal as the public constructor builds it from the same claims."""
    subject = claims.get("sub") or ""
    headers = []
    for claim, header in forward:
        if claim in claims and (value := claim_header_value(claims[claim])) is not None:
            headers.append((header.encode(), value))
    return Principal(f"jwt:{claims.get('iss') or ''}|{subject}", "jwt", subject,
                     token_scopes(claims), claims_headers=tuple(headers))


@pytest.mark.parametrize("subject", HOSTILE)
@pytest.mark.parametrize("extra", [
    {}, {"scope": "b a"}, {"scp": ["x", "y z", ""]}, {"scope": "a", "scp": "c d"},
    {"tenant": "t\r\n1", "roles": ["r", "s"]}, {"tenant": 7, "roles": ["r", 1]},
    {"iss": None}, {"iss": 12},
])
def test_built_principal_is_the_constructors(subject, extra):
    forward = (("tenant", "X-Tenant"), ("roles", "X-Roles"))
    claims = {"iss": "https://idp", "sub": subject, **extra}
    for fwd in ((), forward):
        got, want = builder(fwd)(claims), expected(claims, fwd)
        assert got == want and got.upstream_lines == want.upstream_lines
        assert (got.id, got.subject, got.method) == (want.id, want.subject, "jwt")


def test_callers_and_scope_sets_are_shared_and_tables_bounded():
    build = builder(limit=2)
    first = build({"iss": "i", "sub": "u", "scope": "a b"})
    assert build({"iss": "i", "sub": "u", "scope": "a b"}) is first
    other = build({"iss": "i", "sub": "v", "scope": "a b"})
    assert other is not first and other.scopes is first.scopes
    for n in range(5):  # past the limit: the tables are emptied, answers stay right
        p = build({"iss": "i", "sub": f"w{n}", "scope": "c"})
        assert p.subject == f"w{n}" and p.scopes == frozenset({"c"})
    assert build({"iss": "i", "sub": "u", "scope": "a b"}) == first
    # a scope string and a one-item scp array are different claims, whatever they hold
    assert build({"sub": "u", "scope": "a"}).scopes == build({"sub": "u", "scp": ["a"]}).scopes


@pytest.mark.parametrize("claims", [
    {"sub": "u", "scope": 1}, {"sub": "u", "scope": ["a"]}, {"sub": "u", "scp": [1]},
    {"sub": "u", "scp": {"a": 1}}, {"sub": "u", "scp": True},
])
def test_scopes_of_another_type_are_refused(claims):
    with pytest.raises(TokenError) as err:
        builder()(claims)
    assert err.value.reason == "invalid_claim"
