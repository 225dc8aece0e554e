"""Shadow mode end to end (docs/shadow.md): a real `fluxgate run`, a recording upstream and
the admin /metrics. A shadowed entry lets every request through, counts what it would have
decided by reason in fluxgate_shadow_decisions_total, and changes nothing the upstream
sees or any real budget; the config checker says where shadow mode may be used."""

from __future__ import annotations

import asyncio
import http.client
import secrets
import time

import pytest

from fluxgate._core import RequestState
from fluxgate.auth.keyops import KeyOps
from fluxgate.auth.shadow_counts import ALLOW, DENY, ShadowCounts
from fluxgate.config import load_config, load_config_text
from fluxgate.errors import ConfigError, InvalidToken
from fluxgate.master.shadow_metrics import ShadowMetricsService
from fluxgate.metrics import MetricsTable, RouteSlots
from fluxgate.middleware.jwt import JwtMiddleware
from fluxgate.middleware.shadow import ShadowGroup, compile_chain
from tests.support.bad_authserver import BadAuthServer
from tests.support.gateway import GatewayProcess, raw_request, run_in_children, wait_until
from tests.support.tokens import b64, b64json, sign
from tests.support.upstream import RecordingUpstream

SECRET = "shadow-test-secret-of-at-least-32-bytes!"
JWT = f'{{secret: "{SECRET}", algorithms: [HS256], query: access_token'
CONFIG = """\
upstreams:
  app: {targets: ["UPSTREAM"], connect_timeout: 1s, read_timeout: 5s}
routes:
  - route: /jwt
    upstream: app
    public: true
    middleware:
      - jwt: JWT, forward_claims: {email: X-Email}, shadow: true}
      - quota: {limit: 2/h, by: subject, shadow: true}
  - route: /whole
    upstream: app
    public: true
    shadow: true
    middleware:
      - jwt: JWT}
  - route: /enforced
    upstream: app
    middleware:
      - jwt: JWT}
  - route: /key
    upstream: app
    public: true
    middleware:
      - api_key: {shadow: true}
  - route: /keyed
    upstream: app
    middleware:
      - api_key: {}
  - route: /ip
    upstream: app
    public: true
    middleware:
      - ip_allow: {cidrs: [10.0.0.0/8], shadow: true}
""".replace("JWT", JWT)
ADMIN = {"Authorization": "Bearer test-admin-token"}


def token(secret: str = SECRET, **claims: object) -> str:
    now = int(time.time())
    body = {"sub": "alice", "iat": now, "exp": now + 600, "email": "a@example.com", **claims}
    signing_input = f"{b64json({'alg': 'HS256', 'typ': 'JWT'})}.{b64json(body)}".encode()
    return f"{signing_input.decode()}.{b64(sign(secret, 'HS256', signing_input))}"


@pytest.fixture(scope="module")
def upstream():
    server = RecordingUpstream().start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def gw(tmp_path_factory, upstream):
    gateway = GatewayProcess(tmp_path_factory.mktemp("shadow"), CONFIG.replace("UPSTREAM", upstream.url),
                             workers=1)
    try:
        yield gateway.start()
    finally:
        gateway.stop()


def get(port: int, path: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str]]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", path, headers=headers or {})
        resp = conn.getresponse()
        resp.read()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}
    finally:
        conn.close()


def raw_status(port: int, request: bytes) -> int:
    """The status of one request written byte for byte (headers http.client would merge)."""
    answer = raw_request(port, request, read_until_close=False)
    return int(answer.split(b" ", 2)[1])


def metrics(gw: GatewayProcess) -> str:
    conn = http.client.HTTPConnection("127.0.0.1", gw.admin_port, timeout=5)
    try:
        conn.request("GET", "/metrics", headers=ADMIN)
        resp = conn.getresponse()
        assert resp.status == 200
        return resp.read().decode()
    finally:
        conn.close()


def shadow_count(text: str, route: str, method: str, decision: str, reason: str) -> int:
    labels = f'route="{route}",method="{method}",decision="{decision}",reason="{reason}"'
    for line in text.splitlines():
        if line.startswith(f"fluxgate_shadow_decisions_total{{{labels}}} "):
            return int(line.rsplit(" ", 1)[1])
    return 0


def last_request(upstream: RecordingUpstream, path: str):
    found = [r for r in upstream.requests if r.target.startswith(path)]
    assert found, f"nothing reached the upstream for {path}"
    return found[-1]


def test_shadowed_jwt_lets_everything_through_and_counts_by_reason(gw, upstream):
    good = token()
    expired = token(exp=int(time.time()) - 3600)
    forged = token(secret="another-secret-of-at-least-32-bytes-long")
    cases = [
        ({}, "missing_credentials"),
        ({"Authorization": f"Bearer {expired}"}, "expired"),
        ({"Authorization": f"Bearer {forged}"}, "bad_signature"),
        ({"Authorization": "Bearer not.a.jwt"}, "malformed"),
        ({"Authorization": "Bearer " + "A" * 9000}, "token_too_large"),
        ({"Authorization": f"Bearer {good}", "X-Email": "forged@client"}, None),
    ]
    for headers, _ in cases:
        status, response = get(gw.port, "/jwt/x", headers)
        assert status == 200
        assert not any(h.startswith("ratelimit") for h in response)  # the shadow quota's own
    text = metrics(gw)
    for _, reason in cases:
        if reason is not None:
            assert shadow_count(text, "/jwt", "jwt", "deny", reason) == 1, reason
    assert shadow_count(text, "/jwt", "jwt", "allow", "ok") == 1
    # Refusals that did not happen are not auth failures.
    assert 'fluxgate_auth_failures_total{method="jwt",reason="expired"}' not in text
    # The upstream saw the request as the public route passes it: no identity asserted, the
    # client's own headers untouched (the shadowed jwt's forward_claims are not enforced).
    seen = last_request(upstream, "/jwt/x")
    assert seen.header("X-FluxGate-Auth") is None and seen.header("X-FluxGate-Subject") is None
    assert seen.header("Authorization") == f"Bearer {good}"
    assert seen.header("X-Email") == "forged@client"


def test_shadow_quota_counts_in_its_own_bucket_and_a_token_in_the_query_stays(gw, upstream):
    bob = token(sub="bob")
    for _ in range(3):
        assert get(gw.port, f"/jwt/q?a=1&access_token={bob}&b=2")[0] == 200
    assert last_request(upstream, "/jwt/q").target == f"/jwt/q?a=1&access_token={bob}&b=2"
    text = metrics(gw)
    # 2/h by subject: the shadowed quota saw the shadowed jwt's principal.
    assert shadow_count(text, "/jwt", "quota", "allow", "ok") >= 2
    assert shadow_count(text, "/jwt", "quota", "deny", "quota_exceeded") >= 1


def test_route_shadow_is_every_entry_and_enforced_routes_are_unchanged(gw):
    expired = token(exp=int(time.time()) - 3600)
    assert get(gw.port, "/whole", {"Authorization": f"Bearer {expired}"})[0] == 200
    status, headers = get(gw.port, "/enforced", {"Authorization": f"Bearer {expired}"})
    assert status == 401 and "invalid_token" in headers["www-authenticate"]
    assert get(gw.port, "/enforced", {"Authorization": f"Bearer {token()}"})[0] == 200
    text = metrics(gw)
    assert shadow_count(text, "/whole", "jwt", "deny", "expired") == 1
    assert 'fluxgate_auth_failures_total{method="jwt",reason="expired"} 1' in text
    assert 'route="/enforced"' not in "\n".join(
        line for line in text.splitlines() if line.startswith("fluxgate_shadow_decisions_total"))
    # The decision is logged with its reason, never with the credential.
    assert wait_until(lambda: "shadow: route /whole: jwt would deny (expired)" in gw.log())
    assert expired not in gw.log()


def test_shadowed_api_key_counts_without_spending_the_keys_quota(gw, upstream):
    key = KeyOps(load_config(gw.config_path)).generate("metered", quota="1/h")["key"]
    # Until the worker maps the new key table, the shadow says unknown_key.
    assert wait_until(lambda: get(gw.port, "/key/a", {"X-API-Key": key})[0] == 200 and
                      shadow_count(metrics(gw), "/key", "api_key", "allow", "ok") >= 1,
                      timeout=10)
    for _ in range(3):
        status, headers = get(gw.port, "/key/a", {"X-API-Key": key})
        assert status == 200
        assert not any(h.startswith("ratelimit") for h in headers)  # the key's quota: untouched
    assert get(gw.port, "/key/a", {"X-API-Key": "fg_garbage"})[0] == 200
    assert get(gw.port, "/key/a")[0] == 200
    assert raw_status(gw.port, b"GET /key/a HTTP/1.1\r\nHost: x\r\nX-API-Key: " + key.encode()
                      + b"\r\nX-API-Key: " + key.encode() + b"\r\n\r\n") == 200
    # The key is never forwarded, shadow or not.
    assert last_request(upstream, "/key/a").header("X-API-Key") is None
    text = metrics(gw)
    assert shadow_count(text, "/key", "api_key", "allow", "ok") >= 4
    assert shadow_count(text, "/key", "api_key", "deny", "missing_credentials") == 1
    # The reason the middleware counts, not the refusal's coarser one ("ambiguous").
    assert shadow_count(text, "/key", "api_key", "deny", "ambiguous_credentials") == 1
    assert sum(shadow_count(text, "/key", "api_key", "deny", r)
               for r in ("bad_tag", "unknown_key", "invalid_key", "other")) >= 1
    # None of the shadow's uses spent the key's budget of one: the enforced route has it all.
    status, headers = get(gw.port, "/keyed", {"X-API-Key": key})
    assert status == 200 and headers["ratelimit-limit"] == "1"  # what an enforced key shows
    assert get(gw.port, "/keyed", {"X-API-Key": key})[0] == 429


def test_shadowed_ip_allow_counts_the_addresses_it_would_refuse(gw):
    for _ in range(2):
        assert get(gw.port, "/ip")[0] == 200
    assert shadow_count(metrics(gw), "/ip", "ip_allow", "deny", "ip_not_allowed") == 2


def test_counts_are_shared_across_processes_and_rendered_by_route(tmp_path):
    class Master:
        state_dir = str(tmp_path)
        route_slots = None

    service = ShadowMetricsService(Master())
    config = load_config_text(BASE + f"  - {{route: /a, upstream: app, public: true, "
                                     f"middleware: [jwt: {JWT}, shadow: true}}]}}\n"
                                     "  - {route: /b, upstream: app, public: true}\n")
    asyncio.run(service.start(config))
    try:
        table = MetricsTable.create(str(tmp_path / "m.bin"), capacity=4)
        Master.route_slots = RouteSlots(table)
        slot_a = Master.route_slots.assign(["/a", "/b"])[0]

        def worker() -> bool:
            counts = ShadowCounts.open(str(tmp_path))
            for _ in range(3):
                counts.count(slot_a, "jwt", DENY, "expired")
            counts.count(slot_a, "jwt", ALLOW, "ok")
            counts.count(slot_a, "no-such-kind", DENY, "no-such-reason")
            counts.count(10_000, "jwt", DENY, "expired")  # outside the table: slot 0, not /a
            return True

        assert run_in_children(2, worker) == [0, 0]
        rows = {tuple(v for _, v in m.labels): m.value for m in service.metrics()}
        assert rows == {("/a", "jwt", "deny", "expired"): 6, ("/a", "jwt", "allow", "ok"): 2,
                        ("/a", "other", "deny", "other"): 2}
        table.close()
    finally:
        asyncio.run(service.stop())
    assert not (tmp_path / "shadow_decisions.bin").exists()


# ---- where shadow mode may be used ----------------------------------------------------------

BASE = """\
upstreams: {app: {targets: ["http://127.0.0.1:9"]}}
routes:
"""


def refused(routes: str) -> str:
    with pytest.raises(ConfigError) as err:
        load_config_text(BASE + routes)
    return str(err.value)


def test_only_shadowed_authentication_needs_public_true():
    message = refused(f"  - {{route: /a, upstream: app, middleware: [jwt: {JWT}, shadow: true}}]}}\n")
    assert "public: true" in message and "shadow" in message
    assert "public: true" in refused(
        f"  - {{route: /a, upstream: app, shadow: true, middleware: [jwt: {JWT}}}]}}\n")
    config = load_config_text(BASE + f"  - {{route: /a, upstream: app, public: true, "
                                     f"middleware: [jwt: {JWT}, shadow: true}}]}}\n")
    assert config.routes[0].middleware[0].shadow is True
    # An enforced method next to the shadowed one: not public.
    load_config_text(BASE + f"  - {{route: /a, upstream: app, middleware: "
                            f"[jwt: {JWT}, shadow: true}}, api_key: {{}}]}}\n")


def test_enforced_quota_by_subject_needs_an_enforced_authentication():
    assert "authentication" in refused(
        f"  - {{route: /a, upstream: app, public: true, middleware: "
        f"[jwt: {JWT}, shadow: true}}, quota: {{limit: 5/m}}]}}\n")
    load_config_text(BASE + f"  - {{route: /a, upstream: app, public: true, middleware: "
                            f"[jwt: {JWT}, shadow: true}}, quota: {{limit: 5/m, shadow: true}}]}}\n")


def test_shadow_belongs_to_the_whole_any_entry():
    assert "whole any entry" in refused(
        f"  - {{route: /a, upstream: app, middleware: "
        f"[any: [jwt: {JWT}, shadow: true}}, api_key: {{}}]]}}\n")


def test_shadow_is_a_boolean():
    assert "shadow" in refused(
        f"  - {{route: /a, upstream: app, public: true, middleware: [jwt: {JWT}, shadow: yes-please}}]}}\n")


# ---- oauth2: an introspection miss never holds the request ----------------------------------


def test_shadowed_oauth2_answers_at_once_and_counts_the_introspection_when_it_comes(tmp_path):
    server = BadAuthServer().start()
    upstream = RecordingUpstream().start()
    gw = GatewayProcess(tmp_path, f"""\
routes:
  - route: /opaque
    upstream: "{upstream.url}"
    public: true
    middleware:
      - oauth2: {{client_id: "{server.client_id}", client_secret: "{server.client_secret}",
                  introspection_endpoint: "{server.introspection_endpoint}", timeout: 2s,
                  shadow: true}}
""")
    try:
        gw.start()
        active = server.add_token(sub="carol")
        inactive = secrets.token_urlsafe(24)  # unknown to the server: active false
        assert get(gw.port, "/opaque", {"Authorization": f"Bearer {active}"})[0] == 200
        assert get(gw.port, "/opaque", {"Authorization": f"Bearer {inactive}"})[0] == 200
        assert get(gw.port, "/opaque")[0] == 200

        def counted(decision: str, reason: str) -> bool:
            return shadow_count(metrics(gw), "/opaque", "oauth2", decision, reason) == 1

        assert wait_until(lambda: counted("allow", "ok"), timeout=10)
        assert wait_until(lambda: counted("deny", "inactive"), timeout=10)
        assert counted("deny", "missing_credentials")
        # A server that never answers: the request is still answered, not held.
        server.mode = "hang"
        hung = secrets.token_urlsafe(24)
        assert get(gw.port, "/opaque/h", {"Authorization": f"Bearer {hung}"})[0] == 200
        assert last_request(upstream, "/opaque/h").header("X-FluxGate-Auth") is None
        assert wait_until(lambda: counted("deny", "auth_server_unavailable"), timeout=15)
        assert 'fluxgate_auth_failures_total{method="oauth2"' not in metrics(gw)
        assert active not in gw.log() and hung not in gw.log()
    finally:
        gw.stop()
        server.mode = "up"
        server.stop()
        upstream.stop()


# ---- the step itself ------------------------------------------------------------------------


def test_a_shadow_step_puts_back_what_its_entries_changed_and_survives_their_failures():
    seen = []

    def meddling(req):
        req.principal = "someone"
        req.query = b""
        req.response_headers.append((b"X-Shadow", b"1"))
        seen.append("meddling")
        return None

    def failing(req):
        seen.append("failing")
        raise RuntimeError("a bug in a middleware")

    def refusing(req):
        seen.append("refusing")
        return InvalidToken(reason="expired")

    req = RequestState(0.0)
    req.headers, req.query, req.method, req.path = [], b"a=1", b"GET", b"/a"
    req.principal, req.response_headers = None, []
    group = ShadowGroup("/a", 1, [("jwt", meddling), ("quota", failing), ("jwt", refusing)], None)
    assert group(req) is None
    assert seen == ["meddling", "failing"]  # a failure ends the run, like a refusal
    assert req.principal is None and req.query == b"a=1" and req.response_headers == []
    seen.clear()
    group = ShadowGroup("/a", 1, [("jwt", refusing), ("quota", meddling)], None)
    assert group(req) is None and seen == ["refusing"]


def test_routes_without_shadow_keep_their_chain_and_shadowed_runs_are_grouped(tmp_path):
    class Gateway:
        state_dir = str(tmp_path)
        periodic: list = []

    config = load_config_text(BASE + (
        f"  - {{route: /plain, upstream: app, middleware: [jwt: {JWT}}}]}}\n"
        f"  - {{route: /mixed, upstream: app, middleware: [ip_allow: {{cidrs: [10.0.0.0/8], "
        f"shadow: true}}, jwt: {JWT}, shadow: true}}, jwt: {JWT}}}]}}\n"))
    Gateway.config = config
    plain, mixed = (compile_chain(route, Gateway(), i + 1) for i, route in enumerate(config.routes))
    assert [type(m) for m in plain] == [JwtMiddleware]
    assert [type(m) for m in mixed] == [ShadowGroup, JwtMiddleware]
    assert [method for method, _ in mixed[0].entries] == ["ip_allow", "jwt"]
    assert not getattr(mixed[0], "drop_headers", ())  # nothing the upstream sees is dropped
