"""The quota middleware (fluxgate/middleware/quota.py): by client address on a public route,
by key and by subject after api_key, headers of the stricter budget, and who is counted."""

from __future__ import annotations

import http.client
import json
import time

import pytest

from fluxgate.auth.keyops import KeyOps
from fluxgate.auth.principal import Principal
from fluxgate.config import load_config
from fluxgate.middleware.quota import QuotaMiddleware

CONFIG = """\
routes:
  - route: /open
    upstream: {url}
    public: true
    middleware:
      - quota: {{limit: 3/h, by: ip}}
  - route: /keyed
    upstream: {url}
    middleware:
      - api_key: {{}}
      - quota: {{limit: 2/h, by: key}}
  - route: /subject
    upstream: {url}
    middleware:
      - api_key: {{}}
      - quota: 4/h
  - route: /probe
    upstream: {url}
    middleware:
      - api_key: {{}}
"""


def get(port: int, path: str, headers: dict[str, str] | None = None, source: str | None = None):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5,
                                      source_address=(source, 0) if source else None)
    try:
        conn.request("GET", path, headers=headers or {})
        resp = conn.getresponse()
        body = resp.read()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, body
    finally:
        conn.close()


@pytest.fixture
def gw(gateway_factory, upstream):
    return gateway_factory(CONFIG.format(url=upstream.url))


def issue(gw, name: str, **kwargs) -> str:
    with KeyOps(load_config(gw.config_path)) as ops:
        key = ops.generate(name, routes=["/keyed", "/subject"], **kwargs)["key"]
    deadline = time.monotonic() + 5
    while get(gw.port, "/probe/x", {"X-API-Key": key})[0] != 403:  # known: route refused
        assert time.monotonic() < deadline
        time.sleep(0.05)
    return key


def test_by_ip_on_a_public_route(gw, upstream):
    statuses = [get(gw.port, "/open/x")[0] for _ in range(4)]
    assert statuses == [200, 200, 200, 429]
    status, headers, body = get(gw.port, "/open/x")
    assert json.loads(body)["error"] == "quota_exceeded"
    assert 1 <= int(headers["retry-after"]) <= 3600
    assert (headers["ratelimit-limit"], headers["ratelimit-remaining"]) == ("3", "0")
    # Another client address has its own budget.
    assert get(gw.port, "/open/x", source="127.0.0.2")[0] == 200
    assert len([r for r in upstream.requests if r.target == "/open/x"]) == 4


def test_by_key_and_the_stricter_headers(gw):
    key = issue(gw, "rule-and-own", quota="100/h")  # the key's own quota is looser
    first = get(gw.port, "/keyed/x", {"X-API-Key": key})
    assert first[0] == 200
    assert (first[1]["ratelimit-limit"], first[1]["ratelimit-remaining"]) == ("2", "1")
    assert get(gw.port, "/keyed/x", {"X-API-Key": key})[0] == 200
    status, headers, _ = get(gw.port, "/keyed/x", {"X-API-Key": key})
    assert status == 429 and headers["ratelimit-limit"] == "2"
    # Each route's rule counts on its own; the key's own quota counted all three requests
    # that passed api_key (the 429 above was the rule's, after the key's).
    status, headers, _ = get(gw.port, "/subject/x", {"X-API-Key": key})
    assert status == 200 and headers["ratelimit-limit"] == "4"
    with KeyOps(load_config(gw.config_path)) as ops:
        assert ops.usage("rule-and-own")["quota"]["used"] == 4


def test_by_subject_separates_principals(gw):
    a = issue(gw, "subject-a")
    b = issue(gw, "subject-b")
    assert [get(gw.port, "/subject/x", {"X-API-Key": a})[0] for _ in range(5)] == [200] * 4 + [429]
    assert get(gw.port, "/subject/x", {"X-API-Key": b})[0] == 200


class _Req:
    def __init__(self, principal=None, client_ip="10.0.0.1"):
        self.principal = principal
        self.client_ip = client_ip
        self.response_headers = []


def test_identity_of_each_dimension():
    rule = QuotaMiddleware.__new__(QuotaMiddleware)
    key_principal = Principal("key:svc", "api_key", "svc", key_name="svc")
    jwt_principal = Principal("jwt:https://idp|alice", "jwt", "alice")
    for by, principal, expected in [
        ("ip", None, "10.0.0.1"),
        ("subject", key_principal, "key:svc"),
        ("subject", jwt_principal, "jwt:https://idp|alice"),
        ("key", key_principal, "svc"),
        ("key", jwt_principal, "jwt:https://idp|alice"),
        ("subject", None, None),
    ]:
        rule.by = by
        assert rule.identity(_Req(principal)) == expected
