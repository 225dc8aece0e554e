"""deploy/grafana/fluxgate-dashboard.json and deploy/prometheus/alerts.yaml use only metrics
that exist: every metric name in their PromQL is one a real gateway's /metrics exposes (a
gateway with jwt, api_key, oauth2 and shadowed routes behind a TLS listener)."""

from __future__ import annotations

import http.client
import json
import re
import ssl
from pathlib import Path

import pytest
import trustme
import yaml

from tests.support.bad_authserver import BadAuthServer
from tests.support.certs import write_pair
from tests.support.gateway import REPO, GatewayProcess
from tests.support.idp import AUDIENCE, IdentityProvider

pytestmark = pytest.mark.slow

DASHBOARD = REPO / "deploy" / "grafana" / "fluxgate-dashboard.json"
ALERTS = REPO / "deploy" / "prometheus" / "alerts.yaml"

# PromQL words that are not metric names.
_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or",
             "unless", "bool", "offset", "inf", "nan"}
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
_MATCHERS = re.compile(r"\{[^{}]*\}")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)")
_RANGE = re.compile(r"\[[^\]]*\]")
_VARIABLE = re.compile(r"\$\{?\w+\}?")
_IDENTIFIER = re.compile(r"(?<![\w.])([a-zA-Z_:][a-zA-Z0-9_:]*)\s*(\()?")


def metric_names(expr: str) -> set[str]:
    """The metric names an expression reads (functions, keywords, labels, strings dropped)."""
    text = _VARIABLE.sub("", _RANGE.sub("", _STRING.sub('""', expr)))
    text = _GROUPING.sub("", text)
    while _MATCHERS.search(text):
        text = _MATCHERS.sub("", text)
    return {name for name, call in _IDENTIFIER.findall(text)
            if not call and name.lower() not in _KEYWORDS}


def dashboard_expressions() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    found = []

    def walk(panels: list[dict]) -> None:
        for panel in panels:
            found.extend(t["expr"] for t in panel.get("targets", []) if t.get("expr"))
            walk(panel.get("panels", []))

    walk(dashboard["panels"])
    for variable in dashboard["templating"]["list"]:
        query = variable.get("query")
        if isinstance(query, dict):
            found.append(re.sub(r"^label_values\((\w+).*", r"\1", query["query"]))
    return found


def alert_expressions() -> list[str]:
    rules = yaml.safe_load(ALERTS.read_text())
    return [rule["expr"] for group in rules["groups"] for rule in group["rules"]]


def test_the_extractor_finds_names_and_skips_the_rest():
    expr = ('histogram_quantile(0.99, sum by (route, le) (rate(x_bucket{route=~"$route",'
            's="a{b}"}[$__rate_interval]))) / on (provider) group_left y_total '
            'and time() - z_seconds > 3 * 86400 unless count without (le) (w)')
    assert metric_names(expr) == {"x_bucket", "y_total", "z_seconds", "w"}
    assert metric_names('sum(label_replace(rate(a[5m]), "c", "${1}xx", "s", "(.).."))') == {"a"}


def test_both_files_have_expressions():
    assert len(dashboard_expressions()) >= 20
    assert len(alert_expressions()) >= 10
    for rule in yaml.safe_load(ALERTS.read_text())["groups"][0]["rules"]:
        assert rule["alert"] and rule["labels"]["severity"] and rule["annotations"]["summary"]


_SELECTOR = re.compile(r"([a-zA-Z_:][a-zA-Z0-9_:]*)\{([^{}]*)\}")
_MATCHER_LABEL = re.compile(r"([a-zA-Z_]\w*)\s*(?:=~|!~|!=|=)")
_SAMPLE_LABEL = re.compile(r'([a-zA-Z_]\w*)="(?:[^"\\]|\\.)*"')


def selector_labels(expr: str) -> set[tuple[str, str]]:
    """(metric, label) of each label matcher written on a metric name."""
    text = _VARIABLE.sub("", _STRING.sub('""', expr))
    return {(name, label) for name, body in _SELECTOR.findall(text)
            for label in _MATCHER_LABEL.findall(body)}


@pytest.fixture(scope="module")
def exposition(tmp_path_factory) -> str:
    """The /metrics text of a gateway with each auth method and a TLS listener."""
    tmp = tmp_path_factory.mktemp("dashboards")
    ca = trustme.CA()
    cert, key = write_pair(ca.issue_cert("127.0.0.1"), tmp, "gw")
    idp = IdentityProvider().start()
    authserver = BadAuthServer().start()
    try:
        config = f"""\
upstreams: {{app: {{targets: ["http://127.0.0.1:9"], connect_timeout: 1s}}}}
routes:
  - route: /jwt
    upstream: app
    middleware:
      - jwt: {{issuer: "{idp.issuer}", jwks_uri: "{idp.jwks_uri}", audience: "{AUDIENCE}"}}
  - route: /keys
    upstream: app
    middleware:
      - api_key: {{}}
      - quota: {{limit: 10/m}}
  - route: /opaque
    upstream: app
    middleware:
      - oauth2: {{client_id: "{authserver.client_id}", client_secret: "{authserver.client_secret}",
                  introspection_endpoint: "{authserver.introspection_endpoint}", timeout: 1s}}
  - route: /watch
    upstream: app
    public: true
    middleware:
      - jwt: {{issuer: "{idp.issuer}", jwks_uri: "{idp.jwks_uri}", audience: "{AUDIENCE}",
               shadow: true}}
"""
        gw = GatewayProcess(tmp, config, listen=f"{{address: '127.0.0.1:0', tls: "
                                                f"{{cert: '{cert}', key: '{key}'}}}}")
        gw.start()
        try:
            context = ssl.create_default_context()
            ca.configure_trust(context)
            for path in ("/jwt", "/keys", "/opaque", "/watch"):
                conn = http.client.HTTPSConnection("127.0.0.1", gw.port, context=context,
                                                   timeout=10)
                conn.request("GET", path, headers={"Authorization": "Bearer not-a-token"})
                conn.getresponse().read()
                conn.close()
            admin = http.client.HTTPConnection("127.0.0.1", gw.admin_port, timeout=10)
            admin.request("GET", "/metrics", headers={"Authorization": "Bearer test-admin-token"})
            text = admin.getresponse().read().decode()
            admin.close()
        finally:
            gw.stop()
    finally:
        authserver.stop()
        idp.stop()
    return text


@pytest.fixture(scope="module")
def exposed(exposition) -> set[str]:
    """Every metric name the gateway exposes."""
    names = set()
    for line in exposition.splitlines():
        if line.startswith("# TYPE "):
            names.add(line.split()[2])
        elif line and not line.startswith("#"):
            names.add(re.split(r"[{ ]", line, maxsplit=1)[0])
    return names


@pytest.fixture(scope="module")
def exposed_labels(exposition) -> set[tuple[str, str]]:
    """(metric, label) of every exposed series."""
    found = set()
    for line in exposition.splitlines():
        if line and not line.startswith("#") and "{" in line:
            name, _, rest = line.partition("{")
            found.update((name, label) for label in _SAMPLE_LABEL.findall(rest.rsplit("}", 1)[0]))
    return found


@pytest.mark.parametrize("source", ["dashboard", "alerts"])
def test_every_metric_used_exists(source, exposed):
    expressions = dashboard_expressions() if source == "dashboard" else alert_expressions()
    used = set().union(*(metric_names(e) for e in expressions))
    assert used, "no metric names found"
    assert not used - exposed, f"{source} uses metrics a gateway does not expose"


@pytest.mark.parametrize("source", ["dashboard", "alerts"])
def test_every_label_matched_exists(source, exposed_labels):
    expressions = dashboard_expressions() if source == "dashboard" else alert_expressions()
    used = set().union(*(selector_labels(e) for e in expressions))
    assert len(used) >= 3
    assert not used - exposed_labels, f"{source} matches labels the metrics do not carry"


def test_the_check_would_catch_a_missing_metric(exposed):
    assert "fluxgate_requests_total" in exposed
    assert "fluxgate_request_duration_seconds_bucket" in exposed
    assert metric_names("rate(fluxgate_request_total[5m])") - exposed == {"fluxgate_request_total"}
    assert selector_labels('rate(fluxgate_requests_total{code=~"5..",route="/a"}[5m])') == {
        ("fluxgate_requests_total", "code"), ("fluxgate_requests_total", "route")}


def test_the_dashboard_covers_each_area():
    text = DASHBOARD.read_text()
    for name in ("fluxgate_requests_total", "fluxgate_request_duration_seconds_bucket",
                 "fluxgate_auth_failures_total", "fluxgate_quota_rejections_total",
                 "fluxgate_jwks_refresh_total", "fluxgate_jwks_last_success_timestamp_seconds",
                 "fluxgate_oauth2_breaker_state", "fluxgate_oauth2_sidepool_in_flight",
                 "fluxgate_oauth2_sidepool_rejected_total",
                 "fluxgate_tls_certificate_expiry_timestamp_seconds", "fluxgate_workers_ready",
                 "fluxgate_shadow_decisions_total"):
        assert name in text, name
    assert Path(ALERTS).read_text().count("alert:") >= 10
