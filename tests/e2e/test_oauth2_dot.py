"""oauth2 against a real authorization server: django-oauth-toolkit on 127.0.0.1, its
resource-server client registered by the fixture, tokens issued through its token endpoint.
"""

from __future__ import annotations

import time

import pytest

from tests.e2e.test_oauth2 import hammer, request
from tests.support.gateway import wait_until

pytestmark = pytest.mark.slow


def dot_routes(upstream_url: str, server, **options: object) -> str:
    client_id, secret = server.resource_server
    extra = "".join(f"          {k}: {v}\n" for k, v in options.items())
    return (
        "routes:\n"
        f"  - route: /inventory\n    upstream: {upstream_url}\n    middleware:\n"
        "      - oauth2:\n"
        f"          issuer: {server.issuer}\n"
        f"          client_id: {client_id}\n"
        f"          client_secret: '{secret}'\n"
        "          scopes: [read:inventory]\n"
        f"{extra}"
    )


def test_one_call_for_a_thousand_requests_over_two_workers(gateway_factory, upstream,
                                                           django_auth_server):
    server = django_auth_server
    token = server.issue_token(scope="read:inventory write:orders", user="alice")
    gw = gateway_factory(dot_routes(upstream.url, server), workers=2)
    before = server.introspection_calls()
    statuses = hammer(gw.port, "/inventory/items", token, connections=32, total=1000)
    assert statuses == [200] * 1000
    assert server.introspection_calls() - before == 1
    seen = upstream.requests[-1]
    assert seen.header("x-fluxgate-auth") == "oauth2"
    assert seen.header("x-fluxgate-subject") == "alice"
    assert seen.header("x-fluxgate-scopes") == "read:inventory write:orders"


def test_scopes_and_inactive_tokens(gateway_factory, upstream, django_auth_server):
    server = django_auth_server
    reader = server.issue_token(scope="read:inventory")
    writer_only = server.issue_token(scope="write:orders")
    expired = server.issue_token(scope="read:inventory", expires_in=-10)
    gw = gateway_factory(dot_routes(upstream.url, server))
    assert request(gw.port, "/inventory", reader)[0] == 200
    assert request(gw.port, "/inventory", writer_only)[0] == 403
    assert request(gw.port, "/inventory", expired)[0] == 401
    assert request(gw.port, "/inventory", "not-a-token-the-server-issued")[0] == 401


def test_revoked_token_stops_within_cache_ttl(gateway_factory, upstream, django_auth_server):
    server = django_auth_server
    token = server.issue_token(scope="read:inventory", user="bob")
    gw = gateway_factory(dot_routes(upstream.url, server, cache_ttl="2s"), workers=2)
    assert request(gw.port, "/inventory", token)[0] == 200
    server.revoke(token)
    revoked_at = time.monotonic()
    assert wait_until(lambda: request(gw.port, "/inventory", token)[0] == 401, timeout=6)
    assert time.monotonic() - revoked_at < 3.0


def test_wrong_client_secret_fails_closed(gateway_factory, upstream, django_auth_server):
    server = django_auth_server
    token = server.issue_token(scope="read:inventory")
    config = dot_routes(upstream.url, server).replace(server.resource_server[1], "wrong-secret")
    gw = gateway_factory(config)
    status, headers, _body = request(gw.port, "/inventory", token)
    assert status == 503 and headers.get("retry-after")
