"""The admin API against a real `fluxgate run`: /admin/routes and /admin/reload."""

from __future__ import annotations

import http.client
import json

import pytest

from tests.support.gateway import wait_until

pytestmark = pytest.mark.slow

TOKEN = "test-admin-token"  # what tests/support/gateway.py writes into the config


def admin(gw, method: str, path: str, token: str | None = TOKEN) -> tuple[int, dict]:
    conn = http.client.HTTPConnection("127.0.0.1", gw.admin_port, timeout=30)
    try:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        conn.request(method, path, headers=headers)
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read())
    finally:
        conn.close()


def get(gw, path: str) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=5)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        resp.read()
        return resp.status
    finally:
        conn.close()


def routes_config(upstream_url: str, *prefixes: str) -> str:
    lines = ["access_log: null", "routes:"]
    for prefix in prefixes:
        lines += [f"  - route: {prefix}", f"    upstream: {upstream_url}", "    public: true"]
    lines += [
        "  - route: /keyed",
        f"    upstream: {upstream_url}",
        "    methods: [GET]",
        "    middleware:",
        "      - api_key: {scopes: [read]}",
    ]
    return "\n".join(lines) + "\n"


def test_routes_json_is_the_config_in_force(gateway_factory, upstream):
    gw = gateway_factory(routes_config(upstream.url, "/a"))
    assert admin(gw, "GET", "/admin/routes", token=None)[0] == 401
    assert admin(gw, "GET", "/admin/routes", token="not-the-token")[0] == 401
    status, doc = admin(gw, "GET", "/admin/routes")
    assert status == 200
    a, keyed = doc["routes"]
    assert (a["index"], a["prefix"], a["upstream"], a["public"], a["chain"]) == (
        0, "/a", upstream.url, True, [])
    assert (keyed["prefix"], keyed["methods"], keyed["public"]) == ("/keyed", ["GET", "HEAD"],
                                                                    False)
    assert [entry["kind"] for entry in keyed["chain"]] == ["api_key"]
    assert "read" in keyed["chain"][0]["summary"]
    assert TOKEN not in json.dumps(doc)


def test_reload_changes_routing_and_a_broken_config_changes_nothing(gateway_factory, upstream):
    gw = gateway_factory(routes_config(upstream.url, "/a"))
    assert (get(gw, "/a/x"), get(gw, "/b/x")) == (200, 404)

    gw.write_config(routes_config(upstream.url, "/b"))
    status, doc = admin(gw, "POST", "/admin/reload")
    assert status == 200, doc
    assert doc["status"] == "reloaded" and doc["routes"] == 2 and doc["workers"] == 1
    generation = doc["generation"]
    # The old worker stops accepting once it reads its SIGTERM, a moment after the answer.
    assert wait_until(lambda: get(gw, "/a/x") == 404, 10)
    assert get(gw, "/b/x") == 200
    assert [r["prefix"] for r in admin(gw, "GET", "/admin/routes")[1]["routes"]] == [
        "/b", "/keyed"]

    # A misspelled key on each route: refused as a whole.
    gw.write_config(routes_config("127.0.0.1:1", "/c").replace("public: true", "publik: true"))
    status, doc = admin(gw, "POST", "/admin/reload")
    assert status == 422, doc
    assert doc["error"] == "invalid_config" and doc["request_id"]
    assert doc["generation"] == generation
    assert doc["path"] and doc["line"] and doc["message"]
    assert any(e["path"].endswith("publik") for e in doc["errors"]), doc
    # Nothing of it is in force: the old routes serve, the new one does not exist.
    assert (get(gw, "/b/x"), get(gw, "/c/x")) == (200, 404)
    assert [r["prefix"] for r in admin(gw, "GET", "/admin/routes")[1]["routes"]] == [
        "/b", "/keyed"]
    assert admin(gw, "GET", "/readyz", token=None)[0] == 200
