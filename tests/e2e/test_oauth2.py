"""oauth2 (RFC 7662 introspection through the side pool) end to end: a real `fluxgate run`,
a recording upstream and a scriptable authorization server on 127.0.0.1.

The real django-oauth-toolkit server is exercised in test_oauth2_dot.py; here the server
misbehaves on demand (slow, down, garbage) and counts its calls.
"""

from __future__ import annotations

import http.client
import json
import os
import threading
import time
from pathlib import Path

import pytest

from tests.support.bad_authserver import BadAuthServer, sha256_hex
from tests.support.gateway import wait_until

pytestmark = pytest.mark.slow
ADMIN_TOKEN = "test-admin-token"


def oauth2_routes(upstream_url: str, server: BadAuthServer, **options: object) -> str:
    settings = {
        "client_id": server.client_id,
        "client_secret": server.client_secret,
        "issuer": server.issuer,
        "introspection_endpoint": server.introspection_endpoint,
        "audience": "orders-api",
        "timeout": "1s",
        **options,
    }
    body = "".join(f"            {k}: {json.dumps(v)}\n" for k, v in settings.items())
    return (
        "routes:\n"
        f"  - route: /orders\n    upstream: {upstream_url}\n    middleware:\n"
        f"      - oauth2:\n{body}"
        f"  - route: /public\n    upstream: {upstream_url}\n    public: true\n"
    )


def request(port: int, path: str, token: str | None = None, *,
            headers: dict[str, str] | None = None, timeout: float = 10.0,
            method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        sent = dict(headers or {})
        if token is not None:
            sent["Authorization"] = f"Bearer {token}"
        conn.request(method, path, headers=sent)
        resp = conn.getresponse()
        body = resp.read()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, body
    finally:
        conn.close()


def admin(gw, method: str, path: str, body: dict | None = None) -> dict:
    conn = http.client.HTTPConnection("127.0.0.1", gw.admin_port, timeout=10)
    try:
        payload = json.dumps(body).encode() if body is not None else None
        conn.request(method, path, body=payload,
                     headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
        resp = conn.getresponse()
        data = resp.read()
        assert resp.status == 200, data
        return json.loads(data) if resp.getheader("Content-Type", "").startswith(
            "application/json") else {"text": data.decode()}
    finally:
        conn.close()


def metrics_text(gw) -> str:
    conn = http.client.HTTPConnection("127.0.0.1", gw.admin_port, timeout=10)
    try:
        conn.request("GET", "/metrics", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
        return conn.getresponse().read().decode()
    finally:
        conn.close()


def hammer(port: int, path: str, token: str, *, connections: int, total: int) -> list[int]:
    """``total`` requests over ``connections`` kept-alive connections, all at once."""
    statuses: list[int] = []
    lock = threading.Lock()
    per_connection = [total // connections + (i < total % connections)
                      for i in range(connections)]
    start = threading.Barrier(connections)

    def run(count: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
        start.wait()
        try:
            for _ in range(count):
                conn.request("GET", path, headers={"Authorization": f"Bearer {token}"})
                resp = conn.getresponse()
                resp.read()
                with lock:
                    statuses.append(resp.status)
        finally:
            conn.close()

    threads = [threading.Thread(target=run, args=(n,)) for n in per_connection]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return statuses


@pytest.fixture
def auth_server():
    with BadAuthServer(client_id="gateway", client_secret="s3cret:with/odd&chars") as server:
        yield server


def test_one_introspection_call_for_a_thousand_requests(gateway_factory, upstream, auth_server):
    token = auth_server.add_token(scope="read write", sub="user-42", client_id="shop")
    gw = gateway_factory(oauth2_routes(upstream.url, auth_server), workers=2)
    statuses = hammer(gw.port, "/orders/1", token, connections=32, total=1000)
    assert statuses == [200] * 1000
    assert auth_server.calls == 1
    assert auth_server.calls_by_token[sha256_hex(token)] == 1
    seen = upstream.requests[-1]
    assert seen.header("x-fluxgate-auth") == "oauth2"
    assert seen.header("x-fluxgate-subject") == "user-42"
    assert seen.header("x-fluxgate-scopes") == "read write"
    assert seen.header("x-fluxgate-client-id") == "shop"
    text = metrics_text(gw)
    assert 'fluxgate_oauth2_introspection_total{provider=' in text
    assert "fluxgate_oauth2_cache_hits_total" in text


def test_token_never_stored_logged_or_exported(gateway_factory, upstream, auth_server):
    token = auth_server.add_token(scope="read")
    inactive = "never-valid-" + "x" * 30
    gw = gateway_factory(oauth2_routes(upstream.url, auth_server), workers=1)
    assert request(gw.port, "/orders", token)[0] == 200
    assert request(gw.port, "/orders", inactive)[0] == 401
    status = admin(gw, "GET", "/admin/oauth2")
    text = metrics_text(gw) + json.dumps(status)
    for secret in (token, inactive, auth_server.client_secret):
        assert secret not in text
        assert secret not in gw.log()
        for path in Path(gw.state_dir).rglob("*"):
            if path.is_file():
                assert secret.encode() not in path.read_bytes(), path
    cache_files = list(Path(gw.state_dir, "oauth2").glob("*.cache"))
    assert cache_files and all(os.stat(p).st_mode & 0o077 == 0 for p in cache_files)


def test_refusals(gateway_factory, upstream, auth_server):
    good = auth_server.add_token(scope="read")
    no_scope = auth_server.add_token(scope="other")
    wrong_aud = auth_server.add_token(scope="read", aud="another-api")
    wrong_iss = auth_server.add_token(scope="read", iss="https://evil.example")
    refresh = auth_server.add_token(scope="read", token_type="refresh_token")
    expired = auth_server.add_token(scope="read", exp=int(time.time()) - 10)
    future = auth_server.add_token(scope="read", nbf=int(time.time()) + 3600)
    gw = gateway_factory(oauth2_routes(upstream.url, auth_server, scopes=["read"]))
    port = gw.port
    assert request(port, "/orders", good)[0] == 200
    status, headers, body = request(port, "/orders")
    assert status == 401 and json.loads(body)["error"] == "missing_credentials"
    assert headers["www-authenticate"].startswith('Bearer realm="fluxgate"')
    status, headers, body = request(port, "/orders", no_scope)
    assert status == 403 and json.loads(body)["error"] == "insufficient_scope"
    for token in (wrong_aud, wrong_iss, refresh, expired, future, "unknown-token"):
        status, headers, body = request(port, "/orders", token)
        assert status == 401, (token, body)
        assert json.loads(body)["error"] == "invalid_token"
        assert 'error="invalid_token"' in headers["www-authenticate"]
    # Two Authorization headers, an empty and an oversized token: refused before any call.
    calls = auth_server.calls
    raw = (b"GET /orders HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + good.encode()
           + b"\r\nAuthorization: Bearer " + good.encode() + b"\r\nConnection: close\r\n\r\n")
    from tests.support.gateway import raw_request
    assert raw_request(port, raw).startswith(b"HTTP/1.1 401")
    assert request(port, "/orders", headers={"Authorization": "Bearer "})[0] in (400, 401)
    assert request(port, "/orders", "A" * 9000)[0] in (401, 431)
    assert auth_server.calls == calls
    # Nothing refused reached the upstream.
    assert all(r.header("authorization") == f"Bearer {good}" for r in upstream.requests)
    text = metrics_text(gw)
    assert 'method="oauth2",reason="wrong_audience"' in text
    assert 'method="oauth2",reason="inactive"' in text


def test_slow_server_does_not_delay_other_requests(gateway_factory, upstream, auth_server):
    auth_server.delay = 2.0
    token = auth_server.add_token(scope="read")
    gw = gateway_factory(oauth2_routes(upstream.url, auth_server, timeout="5s"), workers=1)
    auth_server.mode = "slow"
    result: list[tuple[int, float]] = []

    def slow_request() -> None:
        started = time.monotonic()
        status = request(gw.port, "/orders", token)[0]
        result.append((status, time.monotonic() - started))

    thread = threading.Thread(target=slow_request)
    thread.start()
    time.sleep(0.2)  # the token's request now waits on the authorization server
    latencies = []
    for _ in range(20):  # the same (only) worker serves the public route meanwhile
        started = time.monotonic()
        assert request(gw.port, "/public")[0] == 200
        latencies.append(time.monotonic() - started)
    thread.join(10)
    assert result and result[0][0] == 200 and result[0][1] >= 1.8
    assert max(latencies) < 0.5, latencies


def test_server_down_fails_closed_and_cache_keeps_serving(gateway_factory, upstream,
                                                         auth_server):
    cached = auth_server.add_token(scope="read")
    fresh = auth_server.add_token(scope="read")
    gw = gateway_factory(oauth2_routes(upstream.url, auth_server), workers=2)
    assert request(gw.port, "/orders", cached)[0] == 200
    auth_server.mode = "down"
    started = time.monotonic()
    status, headers, body = request(gw.port, "/orders", fresh)
    assert status == 503 and json.loads(body)["error"] == "auth_server_unavailable"
    assert headers.get("retry-after")
    assert time.monotonic() - started < 2.5  # timeout 1s, plus the worker's grace
    for _ in range(10):
        assert request(gw.port, "/orders", cached)[0] == 200
    auth_server.mode = "hang"
    started = time.monotonic()
    assert request(gw.port, "/orders", fresh)[0] == 503
    assert time.monotonic() - started < 2.5


@pytest.mark.parametrize("mode", ["garbage", "html", "status500", "huge", "string_active",
                                  "no_active", "array"])
def test_untrustworthy_answers_are_refused(gateway_factory, upstream, auth_server, mode):
    token = auth_server.add_token(scope="read")
    gw = gateway_factory(oauth2_routes(upstream.url, auth_server))
    auth_server.mode = mode
    status, _headers, body = request(gw.port, "/orders", token)
    assert status == 503, body
    assert json.loads(body)["error"] == "auth_server_unavailable"
    assert not upstream.requests


def test_breaker_opens_and_recovers(gateway_factory, upstream, auth_server):
    tokens = [auth_server.add_token(scope="read") for _ in range(12)]
    gw = gateway_factory(oauth2_routes(upstream.url, auth_server))
    auth_server.mode = "status500"
    for token in tokens[:8]:
        assert request(gw.port, "/orders", token)[0] == 503
    calls = auth_server.calls
    assert calls <= 6  # the breaker opened after 5 failures in a row
    status = admin(gw, "GET", "/admin/oauth2")["providers"][0]
    assert status["breaker"] == "open"
    auth_server.mode = "ok"
    assert wait_until(lambda: request(gw.port, "/orders", tokens[9])[0] == 200, timeout=8,
                      interval=0.5)


def test_revoked_token_stops_within_cache_ttl_and_purge(gateway_factory, upstream, auth_server):
    token = auth_server.add_token(scope="read")
    other = auth_server.add_token(scope="read")
    gw = gateway_factory(oauth2_routes(upstream.url, auth_server, cache_ttl="2s"), workers=2)
    assert request(gw.port, "/orders", token)[0] == 200
    auth_server.tokens[token]["active"] = False  # revoked at the authorization server
    revoked_at = time.monotonic()
    assert wait_until(lambda: request(gw.port, "/orders", token)[0] == 401, timeout=5)
    assert time.monotonic() - revoked_at <= 3.0
    # The operator's purge: the next request asks again at once.
    assert request(gw.port, "/orders", other)[0] == 200
    auth_server.tokens[other]["active"] = False
    purged = admin(gw, "POST", "/admin/oauth2/purge", {"token_sha256": sha256_hex(other)})
    assert purged["purged"] >= 1
    assert request(gw.port, "/orders", other)[0] == 401


def test_discovery_and_client_secret_post(gateway_factory, upstream):
    with BadAuthServer(client_id="gw", client_secret="pw",
                       auth_method="client_secret_post") as server:
        token = server.add_token(scope="read")
        config = oauth2_routes(upstream.url, server, auth_method="client_secret_post")
        config = config.replace(f'            introspection_endpoint: '
                                f'"{server.introspection_endpoint}"\n', "")
        gw = gateway_factory(config)
        assert wait_until(lambda: request(gw.port, "/orders", token)[0] == 200, timeout=5)
        assert server.requests["/.well-known/oauth-authorization-server"] >= 1


def test_private_key_jwt(gateway_factory, upstream, tmp_path):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    key_file = tmp_path / "client.pem"
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    with BadAuthServer(client_id="gw", auth_method="private_key_jwt",
                       client_public_key=key.public_key()) as server:
        token = server.add_token(scope="read")
        config = oauth2_routes(upstream.url, server, auth_method="private_key_jwt",
                               private_key=str(key_file))
        config = config.replace(f'            client_secret: "{server.client_secret}"\n', "")
        gw = gateway_factory(config)
        assert request(gw.port, "/orders", token)[0] == 200, server.last_auth_error
        assert server.last_assertion["iss"] == "gw"


def test_miss_rate_limit(gateway_factory, upstream, auth_server):
    good = auth_server.add_token(scope="read")
    gw = gateway_factory(oauth2_routes(upstream.url, auth_server, miss_rate="5/m"))
    assert request(gw.port, "/orders", good)[0] == 200
    statuses = [request(gw.port, "/orders", f"random-{i}")[0] for i in range(10)]
    assert statuses.count(401) == 4 and statuses.count(429) == 6
    assert auth_server.calls == 5
    assert request(gw.port, "/orders", good)[0] == 200  # cached: not a miss


@pytest.mark.parametrize("order", ["jwt_first", "oauth2_first"])
def test_any_sends_jws_shaped_tokens_to_jwt_and_opaque_ones_to_oauth2(
        gateway_factory, upstream, auth_server, order):
    from tests.support.idp import IdentityProvider

    idp = IdentityProvider().start()
    try:
        jwt = (f"jwt: {{issuer: '{idp.issuer}', audience: orders-api, "
               f"jwks_uri: '{idp.jwks_uri}'}}")
        oauth2 = (f"oauth2: {{client_id: {auth_server.client_id}, "
                  f"client_secret: '{auth_server.client_secret}', "
                  f"introspection_endpoint: '{auth_server.introspection_endpoint}'}}")
        members = [jwt, oauth2] if order == "jwt_first" else [oauth2, jwt]
        gw = gateway_factory(
            "routes:\n"
            f"  - route: /orders\n    upstream: {upstream.url}\n    middleware:\n"
            f"      - any: [{members[0]}, {members[1]}]\n")
        opaque = auth_server.add_token(scope="read", sub="opaque-user")
        token = idp.mint()
        assert request(gw.port, "/orders", token)[0] == 200
        assert upstream.requests[-1].header("x-fluxgate-auth") == "jwt"
        assert auth_server.calls == 0
        # A JWS-shaped forgery is the jwt member's to refuse: the server is never asked.
        assert request(gw.port, "/orders", token[:-4] + "AAAA")[0] == 401
        assert auth_server.calls == 0
        assert request(gw.port, "/orders", opaque)[0] == 200
        assert upstream.requests[-1].header("x-fluxgate-auth") == "oauth2"
        assert upstream.requests[-1].header("x-fluxgate-subject") == "opaque-user"
        assert auth_server.calls == 1
        assert request(gw.port, "/orders", "opaque-but-unknown")[0] == 401
        assert request(gw.port, "/orders")[0] == 401
    finally:
        idp.stop()


def test_fluxctl_oauth2_status_purge_and_audit(gateway_factory, upstream, auth_server):
    import subprocess
    import sys

    token = auth_server.add_token(scope="read")
    gw = gateway_factory(oauth2_routes(upstream.url, auth_server))
    assert request(gw.port, "/orders", token)[0] == 200

    def fluxctl(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "fluxgate.cli.fluxctl", "--config", str(gw.config_path),
             *args], input=stdin, capture_output=True, text=True, timeout=60)

    status = fluxctl("oauth2", "status", "--json")
    assert status.returncode == 0, status.stderr
    provider = json.loads(status.stdout)["providers"][0]
    assert provider["calls"]["active"] == 1 and provider["breaker"] == "closed"
    purge = fluxctl("oauth2", "purge", "--token-stdin", stdin=token + "\n")
    assert purge.returncode == 0 and "purged" in purge.stdout
    assert token not in purge.stdout + purge.stderr
    assert request(gw.port, "/orders", token)[0] == 200
    assert auth_server.calls == 2  # asked again after the purge
    assert fluxctl("oauth2", "purge", "--sha256", "nothex").returncode == 1

    audit = fluxctl("auth", "verify", "--endpoint", "/orders", "--mode", "audit", "--json")
    assert audit.returncode == 0, audit.stderr
    codes = {f["code"] for f in json.loads(audit.stdout)["findings"]}
    assert {"oauth2_plain_http_loopback", "oauth2_no_miss_rate"} <= codes
    assert auth_server.client_secret not in audit.stdout

    calls = auth_server.calls
    probe = fluxctl("auth", "verify", "--endpoint", "/orders", "--mode", "strict",
                    "--probe", gw.url, "--token", token, "--flood", "10", "--json",
                    "--admin-url", f"http://127.0.0.1:{gw.admin_port}",
                    "--admin-token", ADMIN_TOKEN)
    doc = json.loads(probe.stdout)
    rows = {r["name"]: r for r in doc["probe"]["probes"]}
    # 14 distinct tokens: 10 flood tokens, the unknown one (asked once, its 19 repeats
    # answered from the negative cache), the JWS-shaped forgery, the flipped token, and the
    # valid one (already cached): 13 calls, no more.
    flood = rows["random_token_flood"]
    assert flood["introspections"]["distinct_tokens"] == 14
    assert flood["introspections"]["after"] - flood["introspections"]["before"] == 13
    assert auth_server.calls - calls == 13
    assert probe.returncode == 1  # findings (plain http) fail strict mode, not the probes
    assert all(r["result"] == "pass" for r in rows.values() if r["method"] in ("oauth2", "-")), rows
    assert {"valid_token", "unknown_token", "random_token_flood", "repeated_unknown_token",
            "flipped_token"} <= set(rows)
    assert token not in probe.stdout


def test_fluxctl_verify_token_reads_the_cache_offline(gateway_factory, upstream, auth_server):
    import subprocess
    import sys

    token = auth_server.add_token(scope="read", sub="carol")
    weak = auth_server.add_token(scope="other")
    gw = gateway_factory(oauth2_routes(upstream.url, auth_server, scopes=["read"]))

    def verify(t: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "fluxgate.cli.fluxctl", "--config", str(gw.config_path),
             "auth", "verify", "--endpoint", "/orders", "--mode", "audit", "--token", t,
             "--json"], capture_output=True, text=True, timeout=60)

    unseen = verify(token)
    assert unseen.returncode == 2 and "not in the gateway's introspection cache" in unseen.stdout
    assert request(gw.port, "/orders", token)[0] == 200
    assert request(gw.port, "/orders", weak)[0] == 403
    calls = auth_server.calls
    seen = verify(token)
    assert seen.stdout, seen.stderr  # (empty once, under load, in a CI run: say why next time)
    allowed = json.loads(seen.stdout)["credential"]
    assert allowed["decision"] == "allow" and allowed["principal"]["subject"] == "carol"
    refused = verify(weak)
    assert refused.stdout, (refused.returncode, refused.stderr)
    denied = json.loads(refused.stdout)["credential"]
    assert denied["decision"] == "deny" and denied["status"] == 403
    assert auth_server.calls == calls  # fluxctl asked nobody


def test_reload_keeps_serving_and_applies_new_settings(gateway_factory, upstream, auth_server):
    import signal

    token = auth_server.add_token(scope="read")
    gw = gateway_factory(oauth2_routes(upstream.url, auth_server), workers=2)
    assert request(gw.port, "/orders", token)[0] == 200
    gw.write_config(oauth2_routes(upstream.url, auth_server, scopes=["admin"]))
    gw.signal(signal.SIGHUP)
    # The new generation requires a scope the token lacks: 403 once it serves.
    assert wait_until(lambda: request(gw.port, "/orders", token)[0] == 403, timeout=10)
    assert request(gw.port, "/orders", auth_server.add_token(scope="admin"))[0] == 200
    assert admin(gw, "GET", "/admin/oauth2")["providers"]
