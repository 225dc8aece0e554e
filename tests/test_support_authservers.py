"""The authorization servers the oauth2 middleware's tests run against: a real
django-oauth-toolkit server (tests/support/authserver.py) and a misbehaving RFC 7662 endpoint
(tests/support/bad_authserver.py). Checked here on their own, so that a failing gateway test
points at the gateway."""

from __future__ import annotations

import http.client
import json
import socket
import time
import urllib.parse
import urllib.request
import uuid

import pytest

from tests.support.authserver import DjangoAuthServer, basic_auth
from tests.support.bad_authserver import JWT_BEARER, BadAuthServer, sha256_hex
from tests.support.tokens import SigningKey


def post_form(url: str, form: dict[str, str], headers: dict[str, str] | None = None,
              timeout: float = 10) -> tuple[int, http.client.HTTPMessage, bytes]:
    """POST a form with http.client; the status, headers and whole body."""
    parts = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    try:
        conn.request("POST", parts.path, urllib.parse.urlencode(form),
                     {"Content-Type": "application/x-www-form-urlencoded", **(headers or {})})
        response = conn.getresponse()
        return response.status, response.headers, response.read()
    finally:
        conn.close()


def get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())


# ---- django-oauth-toolkit ---------------------------------------------------------------------


def test_dot_token_is_active_with_its_scopes_and_the_call_is_counted(django_auth_server):
    server = django_auth_server
    token = server.issue_token(scope="read:inventory write:orders", expires_in=3600, user="alice")
    before = server.introspection_calls()
    status, body = server.introspect(token)  # client_secret_basic
    assert status == 200
    answer = json.loads(body)
    assert answer["active"] is True
    assert answer["scope"].split() == ["read:inventory", "write:orders"]
    assert answer["username"] == "alice"
    assert answer["client_id"] == server.user_client[0]
    assert abs(answer["exp"] - (time.time() + 3600)) < 30
    assert server.introspection_calls() == before + 1


def test_dot_accepts_client_secret_post_and_refuses_a_wrong_secret(django_auth_server):
    server = django_auth_server
    token = server.issue_token(scope="read")  # client_credentials: no resource owner
    status, body = server.introspect(token, "client_secret_post")
    answer = json.loads(body)
    assert status == 200 and answer["active"] is True
    assert "username" not in answer and answer["client_id"] == server.service_client[0]

    before = server.counters().get("introspection.403", 0)
    # DOT's refusal is a bare 403, not RFC 6749's 401 invalid_client.
    status, body = server.introspect(token, credentials=(server.resource_server[0], "wrong"))
    assert (status, body) == (403, b"")
    assert server.counters()["introspection.403"] == before + 1


def test_dot_revocation_and_expiry_make_tokens_inactive(django_auth_server):
    server = django_auth_server
    token = server.issue_token(scope="write:orders", user="bob")
    assert json.loads(server.introspect(token)[1])["active"] is True
    server.revoke(token)
    assert json.loads(server.introspect(token)[1]) == {"active": False}

    assert json.loads(server.introspect(server.issue_token(expires_in=0))[1]) == {"active": False}
    short = server.issue_token(expires_in=1)
    assert json.loads(server.introspect(short)[1])["active"] is True
    time.sleep(1.1)
    assert json.loads(server.introspect(short)[1]) == {"active": False}
    assert json.loads(server.introspect("never-issued")[1]) == {"active": False}


def test_dot_discovery_states_the_issuer(django_auth_server):
    server = django_auth_server
    oidc = get_json(server.discovery_url)
    assert oidc["issuer"] == server.issuer
    assert "introspection_endpoint" not in oidc  # OIDC discovery has no introspection
    metadata = get_json(server.metadata_url)  # RFC 8414 does
    assert metadata["issuer"] == server.issuer
    assert metadata["introspection_endpoint"] == server.introspection_endpoint
    assert "client_secret_basic" in metadata["introspection_endpoint_auth_methods_supported"]
    assert get_json(server.jwks_uri)["keys"][0]["kty"] == "RSA"


def test_dot_resource_binding_is_reported_as_aud(django_auth_server):
    server = django_auth_server
    token = server.issue_token(scope="read", resource="https://orders.example")
    assert json.loads(server.introspect(token)[1])["aud"] == ["https://orders.example"]


def test_dot_server_stops_by_pid(tmp_path):
    with DjangoAuthServer(tmp_path) as server:
        assert server.startup_seconds < 30
        port = server.port
        assert json.loads(server.introspect(server.issue_token())[1])["active"] is True
    assert server.proc.returncode is not None
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    assert list(tmp_path.rglob("*.sqlite3"))  # the database lives under tmp_path


# ---- the misbehaving server -------------------------------------------------------------------


@pytest.fixture
def bad_as():
    with BadAuthServer(client_id="gw", client_secret="s3cret:+/") as server:
        yield server


def introspect(server: BadAuthServer, token: str, auth: str = "basic", timeout: float = 10):
    form = {"token": token, "token_type_hint": "access_token"}
    headers = {}
    if auth == "basic":
        headers["Authorization"] = basic_auth(server.client_id, server.client_secret)
    elif auth == "post":
        form.update(client_id=server.client_id, client_secret=server.client_secret)
    return post_form(server.introspection_endpoint, form, headers, timeout)


def test_bad_as_ok_answers_known_tokens_and_counts_by_digest(bad_as):
    token = bad_as.add_token(scope="orders:read", sub="user-7")
    status, headers, body = introspect(bad_as, token)
    answer = json.loads(body)
    assert status == 200 and headers["Content-Type"] == "application/json"
    assert answer["active"] is True and answer["scope"] == "orders:read"
    assert answer["sub"] == "user-7" and answer["iss"] == bad_as.issuer
    assert json.loads(introspect(bad_as, "unknown")[2]) == {"active": False}
    assert bad_as.calls == 2
    assert bad_as.calls_by_token == {sha256_hex(token): 1, sha256_hex("unknown"): 1}
    assert bad_as.last_request["auth_method"] == "client_secret_basic"
    assert bad_as.last_request["token_type_hint"] == "access_token"


def test_bad_as_refuses_wrong_client_authentication(bad_as):
    token = bad_as.add_token()
    for auth in ("post", "none"):
        status, _, body = introspect(bad_as, token, auth)
        assert (status, json.loads(body)) == (401, {"error": "invalid_client"})
    bad_as.client_secret = "other"
    assert introspect(bad_as, token)[0] == 200  # the helper sends the current secret
    wrong = {"Authorization": basic_auth("gw", "s3cret:+/")}
    assert post_form(bad_as.introspection_endpoint, {"token": token}, wrong)[0] == 401
    assert bad_as.last_auth_error == "wrong client_id or client_secret"

    bad_as.auth_method = "client_secret_post"
    assert introspect(bad_as, token, "post")[0] == 200
    assert introspect(bad_as, token, "basic")[0] == 401


def test_bad_as_private_key_jwt(bad_as):
    key, other = SigningKey.generate("ES256"), SigningKey.generate("ES256")
    bad_as.auth_method, bad_as.client_public_key = "private_key_jwt", key
    token = bad_as.add_token()

    def send(signer: SigningKey = key, **overrides) -> int:
        now = int(time.time())
        claims = {"iss": "gw", "sub": "gw", "aud": bad_as.introspection_endpoint,
                  "iat": now, "exp": now + 60, "jti": uuid.uuid4().hex, **overrides}
        assertion = signer.mint({k: v for k, v in claims.items() if v is not None})
        form = {"token": token, "client_assertion_type": JWT_BEARER,
                "client_assertion": assertion}
        return post_form(bad_as.introspection_endpoint, form)[0]

    assert send() == 200
    assert bad_as.last_assertion["iss"] == "gw"
    assert bad_as.last_assertion_header["alg"] == "ES256"
    assert send(aud=[bad_as.issuer, "https://elsewhere"]) == 200
    assert send(jti="once") == 200
    assert send(jti="once") == 401 and bad_as.last_auth_error == "jti replayed"
    assert send(other) == 401
    assert send(aud="https://elsewhere") == 401
    assert send(sub="someone") == 401
    assert send(exp=int(time.time()) + 600) == 401
    assert send(exp=int(time.time()) - 5) == 401
    assert send(jti=None) == 401


def test_bad_as_slow_answers_after_the_delay(bad_as):
    bad_as.mode, bad_as.delay = "slow", 0.3
    token = bad_as.add_token()
    began = time.monotonic()
    assert json.loads(introspect(bad_as, token)[2])["active"] is True
    assert time.monotonic() - began >= 0.3


def test_bad_as_down_refuses_connections_and_up_reopens_the_port(bad_as):
    token = bad_as.add_token()
    port = bad_as.port
    # An open keep-alive connection must not outlive "down" either.
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    conn.request("GET", "/.well-known/openid-configuration")
    conn.getresponse().read()
    bad_as.mode = "down"
    with pytest.raises(ConnectionRefusedError):
        introspect(bad_as, token)
    with pytest.raises((OSError, http.client.HTTPException)):
        conn.request("GET", "/.well-known/openid-configuration")
        conn.getresponse().read()
    conn.close()
    bad_as.mode = "up"
    assert bad_as.mode == "ok" and bad_as.port == port
    assert introspect(bad_as, token)[0] == 200


def test_bad_as_garbage_is_not_http(bad_as):
    bad_as.mode = "garbage"
    with socket.create_connection(("127.0.0.1", bad_as.port), timeout=5) as sock:
        sock.sendall(b"POST /introspect HTTP/1.1\r\nHost: a\r\nContent-Length: 7\r\n\r\ntoken=x")
        received = b""
        while chunk := sock.recv(4096):
            received += chunk
    assert received and not received.startswith(b"HTTP/")
    assert bad_as.calls == 1


@pytest.mark.parametrize(("mode", "status", "content_type", "check"), [
    ("html", 200, "text/html; charset=utf-8", lambda body: body.startswith(b"<html>")),
    ("status500", 500, "application/json", lambda body: json.loads(body)["error"]),
    ("huge", 200, "application/json",
     lambda body: len(body) > 5 * 1024 * 1024 and json.loads(body)["active"] is True),
    ("string_active", 200, "application/json",
     lambda body: json.loads(body)["active"] == "true"),
    ("no_active", 200, "application/json",
     lambda body: "active" not in json.loads(body) and json.loads(body)["scope"] == "read"),
    ("array", 200, "application/json", lambda body: json.loads(body)[0]["active"] is True),
])
def test_bad_as_malformed_answers(bad_as, mode, status, content_type, check):
    bad_as.mode = mode
    got_status, headers, body = introspect(bad_as, bad_as.add_token())
    assert (got_status, headers["Content-Type"]) == (status, content_type)
    assert check(body)


def test_bad_as_hang_never_answers_until_stopped():
    server = BadAuthServer().start()
    token = server.add_token()
    server.mode = "hang"
    try:
        with pytest.raises(TimeoutError):
            introspect(server, token, timeout=0.5)
        assert server.calls == 1
    finally:
        began = time.monotonic()
        server.stop()
    assert time.monotonic() - began < 2


def test_bad_as_discovery(bad_as):
    for path in ("/.well-known/oauth-authorization-server", "/.well-known/openid-configuration"):
        doc = get_json(bad_as.url + path)
        assert doc["issuer"] == bad_as.issuer == bad_as.url
        assert doc["introspection_endpoint"] == bad_as.introspection_endpoint
        assert doc["token_endpoint"] == bad_as.token_endpoint
    bad_as.discovery_issuer = "https://impostor.example"
    assert get_json(bad_as.url + "/.well-known/openid-configuration")["issuer"] == (
        "https://impostor.example")
    assert bad_as.calls == 0  # discovery is not introspection
