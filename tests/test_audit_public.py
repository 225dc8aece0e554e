"""fluxgate/cli/audit.py: what passed silently before, now findings: a scope_map rule
that only covers routes without authentication, and `public: true` on a route whose chain
authenticates every request (shadowed authentication excepted: that is how a public
route tries one out)."""

from __future__ import annotations

from fluxgate.cli import audit
from fluxgate.config import load_config_text

JWT = '{jwks_uri: "https://idp.example/jwks", issuer: "https://idp.example", audience: api}'

CONFIG = f"""\
admin: {{token: audit-test-token}}
routes:
  - route: /api
    upstream: http://127.0.0.1:9
    middleware:
      - jwt: {JWT}
      - quota: {{limit: 100/m}}
  - route: /healthz
    upstream: http://127.0.0.1:9
    public: true
  - route: /status
    upstream: http://127.0.0.1:9
    public: true
    middleware:
      - ip_allow: [10.0.0.0/8]
  - route: /reports
    upstream: http://127.0.0.1:9
    public: true
    middleware:
      - jwt: {JWT}
      - quota: {{limit: 100/m, by: ip}}
  - route: /partners
    upstream: http://127.0.0.1:9
    public: true
    middleware:
      - any:
          - jwt: {JWT}
          - api_key: {{}}
      - quota: {{limit: 100/m}}
scope_map:
  ops: ["GET /healthz", "GET /status/**"]
  read: ["GET /api/**", "GET /healthz/**"]
  everything: ["GET /**"]
  under: ["POST /*/x"]
"""


def config():
    return load_config_text(CONFIG)


def codes(cfg, prefix: str) -> list[str]:
    route = next(r for r in cfg.routes if r.route == prefix)
    return [f.code for f in audit.findings(cfg, route)]


def messages(cfg, code: str) -> list[str]:
    return [f.message for f in audit.findings(cfg, cfg.routes[0]) if f.code == code]


def test_scope_rules_covering_only_public_routes_are_findings():
    found = messages(config(), "scope_rule_public_only")
    # ops: both of its rules cover only /healthz and /status. read's "/api/**" covers an
    # authenticated route, its "/healthz/**" does not. "GET /**" and "POST /*/x" reach
    # authenticated routes too.
    assert len(found) == 3, found
    assert found[0].startswith("scope_map ops: 'GET /healthz' only covers routes without "
                               "authentication (/healthz)")
    assert "'GET /status/**'" in found[1] and "(/status)" in found[1]
    assert found[2].startswith("scope_map read: 'GET /healthz/**'")
    assert all("read is never required" in m or "ops is never required" in m for m in found)


def test_scope_rule_findings_are_warnings_on_every_route():
    cfg = config()
    for route in cfg.routes:
        severities = {f.severity for f in audit.findings(cfg, route)
                      if f.code == "scope_rule_public_only"}
        assert severities == {"warning"}


def test_scope_rule_on_a_route_with_public_and_auth_is_not_a_finding():
    # /reports says public: true but authenticates: the scope is checked there.
    cfg = load_config_text(CONFIG.replace('ops: ["GET /healthz", "GET /status/**"]',
                                          'ops: ["GET /reports/**"]')
                           .replace('"GET /healthz/**"', '"GET /api/x"'))
    assert messages(cfg, "scope_rule_public_only") == []


def test_a_rule_that_reaches_no_route_is_not_this_finding():
    cfg = load_config_text(CONFIG.replace('"GET /healthz/**"', '"GET /nowhere/**"')
                           .replace('ops: ["GET /healthz", "GET /status/**"]',
                                    'ops: ["GET /api/x"]'))
    assert messages(cfg, "scope_rule_public_only") == []


def test_public_with_auth_is_a_finding():
    cfg = config()
    assert "public_with_auth" in codes(cfg, "/reports")
    assert "public_with_auth" in codes(cfg, "/partners")
    [message] = [f.message for f in audit.findings(cfg, cfg.routes[4])
                 if f.code == "public_with_auth"]
    assert message.startswith("public: true, yet any authenticates every request here")
    for prefix in ("/api", "/healthz", "/status"):
        assert "public_with_auth" not in codes(cfg, prefix)


def test_public_with_shadowed_auth_is_not_a_finding():
    text = CONFIG.replace(f"""    public: true
    middleware:
      - jwt: {JWT}""", """    public: true
    middleware:
      - jwt: {jwks_uri: "https://idp.example/jwks", issuer: "https://idp.example",
               audience: api, shadow: true}""")
    cfg = load_config_text(text)
    assert cfg.routes[3].middleware[0].shadow
    assert "public_with_auth" not in codes(cfg, "/reports")
