"""fluxgate/cli/audit.py: findings for crafted configs, and routes explain (normalized and
ambiguous paths, 404, 405, HEAD with GET, scope_map decisions)."""

from __future__ import annotations

import pytest

from fluxgate.cli import audit
from fluxgate.config import load_config_text, schema

SECRET = "s" * 40

CONFIG = f"""\
admin: {{token: audit-test-token}}
routes:
  - route: /api/orders
    upstream: http://127.0.0.1:9
    methods: [GET, POST]
    websocket: false
    middleware:
      - jwt: {{jwks_uri: "https://idp.example/jwks", issuer: "https://idp.example",
               audience: orders-api, scopes: [orders]}}
      - quota: {{limit: 100/m}}
  - route: /api
    upstream: http://127.0.0.1:9
    middleware:
      - api_key: {{scopes: [read:api]}}
  - route: /healthz
    upstream: http://127.0.0.1:9
    public: true
  - route: /ops
    upstream: http://127.0.0.1:9
    public: true
    middleware:
      - ip_allow: [10.0.0.0/8]
  - route: /legacy
    upstream: http://127.0.0.1:9
    middleware:
      - jwt: {{algorithms: [HS256, RS256], secret: "{SECRET}",
               jwks_uri: "http://127.0.0.1:8000/jwks"}}
      - quota: {{limit: 10/s, by: ip}}
  - route: /private
    upstream: http://127.0.0.1:9
    middleware:
      - api_key: {{query: false}}
      - quota: {{limit: 10/s, by: key}}
scope_map:
  write:orders: ["POST /api/orders", "PUT /api/orders/*"]
  read:orders: ["GET /api/orders/**"]
  admin:orders: ["POST /api/orders"]
"""


@pytest.fixture(scope="module")
def config():
    return load_config_text(CONFIG)


def codes(config, prefix: str) -> dict[str, str]:
    route = next(r for r in config.routes if r.route == prefix)
    return {f.code: f.severity for f in audit.findings(config, route)}


def test_a_well_configured_route_has_no_findings(config):
    assert codes(config, "/api/orders") == {}


def test_public_and_ip_allow_only_routes(config):
    assert codes(config, "/healthz") == {"public_route": "warning", "no_quota": "warning"}
    assert codes(config, "/ops") == {"ip_allow_only": "warning", "no_quota": "warning"}


def test_api_key_route_findings(config):
    # Query keys are off unless api_keys.query names a parameter: no api_key_in_query.
    assert config.api_keys.query is None
    assert codes(config, "/api") == {"no_quota": "warning", "websocket_authenticated": "info"}


def test_api_key_in_query_only_when_enabled():
    config = load_config_text("api_keys: {query: api_key}\n" + CONFIG)
    assert codes(config, "/api") == {
        "api_key_in_query": "warning", "no_quota": "warning", "websocket_authenticated": "info",
    }
    # query: false on the route: keys are not taken from URLs there.
    assert "api_key_in_query" not in codes(config, "/private")


def test_jwt_findings(config):
    found = codes(config, "/legacy")
    assert found == {
        "jwt_no_audience": "warning", "jwt_shared_secret": "warning",
        "jwt_plain_http_loopback": "info", "websocket_authenticated": "info",
    }
    messages = " ".join(f.message for f in audit.findings(config, config.routes[4]))
    assert SECRET not in messages and "HS256" in messages


def test_plain_http_to_another_host_is_an_error():
    # The config check refuses this; a config built around it still gets the finding.
    jwt = schema.Jwt(jwks_uri="http://idp.example/jwks", audience="a")
    route = schema.Route(route="/x", upstream="http://127.0.0.1:9",
                         middleware=[jwt, schema.Quota(limit="1/s")], websocket=False)
    found = audit.route_findings(schema.Config(), route)
    assert [(f.code, f.severity) for f in found] == [("jwt_plain_http", "error")]
    assert audit.worst(found) == "error" and audit.worst([]) is None


def test_gateway_findings():
    wide = load_config_text("trusted_proxies: [10.0.0.0/8, '::/0']\n" + CONFIG.split("\n", 1)[1])
    found = {f.code: f for f in audit.config_findings(wide)}
    assert set(found) == {"trusted_proxies_wide", "admin_token_generated"}
    assert found["trusted_proxies_wide"].severity == "error"
    assert "::/0" in found["trusted_proxies_wide"].message
    assert found["admin_token_generated"].severity == "info"
    assert audit.config_findings(load_config_text(CONFIG)) == []
    # Findings come most severe first.
    route = wide.routes[2]
    severities = [f.severity for f in audit.findings(wide, route)]
    assert severities == ["error", "warning", "warning", "info"]


def test_explain_normalizes_like_the_gateway(config):
    doc = audit.explain(config, "post", "/api/./orders/../orders?x=1")
    assert doc["request"] == {"method": "POST", "path": "/api/./orders/../orders",
                              "normalized": "/api/orders"}
    assert doc["refusal"] is None and doc["method_allowed"]
    assert doc["route"]["index"] == 0 and doc["route"]["prefix"] == "/api/orders"
    assert [m["kind"] for m in doc["chain"]] == ["jwt", "quota"]
    # Longest prefix on a segment boundary: /api/ordersx belongs to /api.
    assert audit.explain(config, "GET", "/api/ordersx")["route"]["prefix"] == "/api"


@pytest.mark.parametrize("path", ["/api/%2e%2e/admin", "/api/%2Forders", "api/orders"])
def test_ambiguous_or_malformed_paths_are_the_gateways_400(config, path):
    doc = audit.explain(config, "GET", path)
    assert doc["refusal"]["status"] == 400 and doc["route"] is None


def test_no_route_and_method_not_allowed():
    config = load_config_text(CONFIG)
    assert audit.explain(config, "GET", "/nowhere")["refusal"]["status"] == 404
    doc = audit.explain(config, "DELETE", "/api/orders/7")
    assert doc["refusal"] == {"status": 405, "code": "method_not_allowed",
                              "message": "Allow: GET, HEAD, POST"}
    assert not doc["method_allowed"] and doc["route"]["index"] == 0
    head = audit.explain(config, "HEAD", "/api/orders/7")  # HEAD goes with GET
    assert head["refusal"] is None and head["method_allowed"]


def test_scope_map_decisions(config):
    doc = audit.explain(config, "POST", "/api/orders", ["orders", "admin:orders"])
    (jwt,) = doc["scopes"]
    assert jwt["required"] == ["orders"]
    assert jwt["covering"] == [{"scope": "write:orders", "rule": "POST /api/orders"},
                               {"scope": "admin:orders", "rule": "POST /api/orders"}]
    assert jwt["decision"]["authorized"]
    assert 'admin:orders by rule "POST /api/orders"' in jwt["decision"]["why"]

    refused = audit.explain(config, "POST", "/api/orders", ["write:orders"])["scopes"][0]
    assert refused["decision"] == {"authorized": False, "status": 403,
                                   "why": "lacks the route's required scope(s) orders"}
    refused = audit.explain(config, "HEAD", "/api/orders/7/", ["orders"])["scopes"][0]
    assert refused["covering"] == [{"scope": "read:orders", "rule": "GET /api/orders/**"}]
    assert not refused["decision"]["authorized"] and "read:orders" in refused["decision"]["why"]

    # Not covered by any rule: the route's own scopes decide; without --scopes, no decision.
    doc = audit.explain(config, "GET", "/api/other", ["read:api"])
    assert doc["scopes"] == [{"method": "api_key", "required": ["read:api"], "covering": [],
                              "decision": {"authorized": True,
                                           "why": "holds every required scope (read:api)"}}]
    assert "decision" not in audit.explain(config, "GET", "/api/other")["scopes"][0]
    assert audit.explain(config, "GET", "/healthz", ["x"])["scopes"] == []


# ---- the browser login ----------------------------------------------------------------------

LOGIN = """\
admin: {{token: audit-test-token}}
routes:
  - route: {route}
    upstream: http://127.0.0.1:9
    websocket: false
    middleware:
      - oauth2:
          issuer: https://login.example.com
          client_id: web
          client_secret: "{secret}"
          login: true
          redirect_uri: https://app.example.com/oauth2/callback
{options}      - quota: {{limit: 100/m}}
"""
CAREFUL = {
    "post_logout_redirect_uri": "https://app.example.com/signed-out",
    "backchannel_logout_path": "/.fluxgate/backchannel-logout",
}


def login_codes(route: str = "/app", **options: object) -> dict[str, audit.Finding]:
    import json

    lines = "".join(f"          {k}: {json.dumps(v)}\n" for k, v in options.items())
    config = load_config_text(LOGIN.format(route=route, secret=SECRET, options=lines))
    return {f.code: f for f in audit.findings(config, config.routes[0])}


def test_a_careful_login_route_has_no_findings():
    assert login_codes(**CAREFUL) == {}
    # The resource-server findings do not apply to a login (it introspects nothing).
    assert not {"oauth2_no_audience", "oauth2_no_miss_rate"} & set(login_codes())


def test_login_logout_findings():
    found = login_codes()
    assert {c: f.severity for c, f in found.items()} == {
        "login_no_post_logout_redirect": "warning", "login_no_backchannel": "info"}
    assert "post_logout_redirect_uri" in found["login_no_post_logout_redirect"].message


def test_login_lifetime_findings():
    found = login_codes(**CAREFUL, session={"absolute": "30d", "idle": "30d"})
    assert found["login_long_session"].severity == "warning"
    assert "30 days" in found["login_long_session"].message
    assert found["login_idle_not_shorter"].severity == "info"
    assert set(login_codes(**CAREFUL, session={"absolute": "7d", "idle": "1h"})) == set()


def test_login_origin_and_upstream_findings():
    found = login_codes(**CAREFUL, forward_access_token=True,
                        allowed_return_origins=["http://shop.example.com",
                                                "https://ok.example.com", "http://127.0.0.1:3000"],
                        allowed_origins=["http://admin.example.com"],
                        scopes=["orders", "openid"])
    assert found["login_wide_return_origins"].severity == "warning"
    assert "http://shop.example.com" in found["login_wide_return_origins"].message
    assert "127.0.0.1" not in found["login_wide_return_origins"].message  # loopback is fine
    assert found["login_plain_http_origins"].severity == "warning"
    assert found["login_access_token_forwarded"].severity == "info"
    assert found["login_scopes_not_requested"].severity == "warning"
    assert "orders" in found["login_scopes_not_requested"].message
    assert "login_scopes_not_requested" not in login_codes(
        **CAREFUL, scopes=["orders"], login_scopes=["openid", "orders"])


def test_login_api_route_without_api_paths():
    found = login_codes("/app/api", **CAREFUL)
    assert found["login_api_paths_missing"].severity == "warning"
    assert "api_paths: [/app/api]" in found["login_api_paths_missing"].message
    assert login_codes("/app/api", **CAREFUL, api_paths=["/app/api"]) == {}
    assert login_codes("/apiary", **CAREFUL) == {}  # a word that starts with api is no API


def test_login_plain_http_on_loopback_is_info_and_no_secret_is_shown():
    text = LOGIN.format(route="/app", secret=SECRET, options="").replace(
        "https://login.example.com", "http://127.0.0.1:8000/o").replace(
        "https://app.example.com", "http://localhost:8080")
    config = load_config_text(text)
    found = audit.findings(config, config.routes[0])
    codes = {f.code: f.severity for f in found}
    assert codes["login_plain_http_loopback"] == "info"
    assert codes["oauth2_plain_http_loopback"] == "info"
    assert SECRET not in " ".join(f.message for f in found)
