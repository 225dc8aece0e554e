"""The jwt and any middleware: unit checks of the credential handling, then real gateways
(``fluxgate run`` on 127.0.0.1:0) in front of a recording upstream, with keys from a local
identity provider: principal and headers upstream, scopes, scope_map, cookie and query
tokens, ``any``, the hostile-token suite, key rotation, provider outage, a flood of random
kids, OIDC discovery, https with certificate verification."""

from __future__ import annotations

import contextlib
import datetime
import http.client
import ipaddress
import json
import random
import re
import string
import time
from collections import Counter
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from fluxgate.config import load_config, load_config_text
from fluxgate.middleware.jwt import JwtMiddleware, claim_header_value
from fluxgate.proxy.protocol import RequestState
from tests.support import hostile
from tests.support.gateway import GatewayProcess, wait_until
from tests.support.idp import AUDIENCE, IdentityProvider
from tests.support.tokens import SigningKey
from tests.support.upstream import RecordingUpstream

ADMIN = {"Authorization": "Bearer test-admin-token"}


# ---- helpers ------------------------------------------------------------------------------


class Client:
    """Keep-alive HTTP/1.1 client to one port (reconnects when the server closes)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.conn: http.client.HTTPConnection | None = None

    def request(self, method: str, path: str, headers: dict | None = None, token: str | None = None):
        headers = dict(headers or {})
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        for attempt in range(2):
            if self.conn is None:
                self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
            try:
                self.conn.request(method, path, headers=headers)
                resp = self.conn.getresponse()
                body = resp.read()
            except (ConnectionError, http.client.HTTPException):
                self.conn.close()
                self.conn = None
                if attempt:
                    raise
                continue
            if resp.getheader("Connection", "").lower() == "close":
                self.conn.close()
                self.conn = None
            return resp.status, {k.lower(): v for k, v in resp.getheaders()}, body
        raise AssertionError("unreachable")

    def get(self, path: str, **kwargs):
        return self.request("GET", path, **kwargs)

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()


def metrics(gw: GatewayProcess) -> str:
    status, _, body = Client(gw.admin_port).get("/metrics", headers=ADMIN)
    assert status == 200
    return body.decode()


def metric(text: str, name: str, **labels: str) -> float:
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    for line in text.splitlines():
        if line.startswith(f"{name}{{{want}}} ") or (not labels and line.startswith(f"{name} ")):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def jwt_block(idp: IdentityProvider, indent: int = 10, **extra: object) -> str:
    options = {"issuer": idp.issuer, "audience": AUDIENCE, "jwks_uri": idp.jwks_uri, **extra}
    return "\n".join(f"{' ' * indent}{k}: {json.dumps(v)}" for k, v in options.items())


def start_gateway(tmp: Path, config: str, workers: int = 1, env: dict | None = None) -> GatewayProcess:
    tmp.mkdir(parents=True, exist_ok=True)
    return GatewayProcess(tmp, config, workers=workers, env=env).start()


@contextlib.contextmanager
def serving(tmp_path: Path, *algs: str, tls: tuple[str, str] | None = None):
    """A provider + a recording upstream; ``start(**jwt_options)`` runs a gateway with one
    route /api on them (``middleware=`` replaces the route's whole middleware list)."""
    idp = (IdentityProvider(algs, tls=tls) if algs else IdentityProvider(tls=tls)).start()
    upstream = RecordingUpstream().start()
    started: list[GatewayProcess] = []

    def start(workers: int = 2, env: dict | None = None, block: str | None = None,
              middleware: str | None = None, **options) -> GatewayProcess:
        if middleware is None:
            middleware = "      - jwt:\n" + (block or jwt_block(idp, **options))
        config = f"""
routes:
  - route: /api
    upstream: {upstream.url}
    middleware:
{middleware}
"""
        gw = start_gateway(tmp_path / f"gw{len(started)}", config, workers=workers, env=env)
        started.append(gw)
        return gw

    try:
        yield idp, upstream, start
    finally:
        for gw in started:
            gw.stop()
        upstream.stop()
        idp.stop()


# ---- unit: credentials and claim headers --------------------------------------------------


class FakeGateway:
    """What from_config reads of a worker's Gateway, without a master (so no key table:
    tokens would fail closed; these tests only look at credentials)."""

    def __init__(self, config, state_dir: str = "/nonexistent") -> None:
        self.config = config
        self.state_dir = state_dir
        self.periodic: list = []


def _middleware(**options) -> JwtMiddleware:
    text = (
        "routes:\n  - route: /a\n    upstream: http://127.0.0.1:9\n    middleware:\n"
        "      - jwt:\n          jwks_uri: https://idp.test/jwks\n"
        + "".join(f"          {k}: {json.dumps(v)}\n" for k, v in options.items())
    )
    config = load_config_text(text)
    return JwtMiddleware.from_config(config.routes[0].middleware[0], FakeGateway(config), None)


def _request(*headers: tuple[bytes, bytes], query: bytes = b"") -> RequestState:
    req = RequestState(0.0)
    req.headers = list(headers)
    req.query = query
    req.method, req.path = b"GET", b"/a"
    return req


def test_bearer_token_extraction():
    mw = _middleware()
    assert mw.token(_request((b"Authorization", b"Bearer abc.def.ghi"))) == b"abc.def.ghi"
    assert mw.token(_request((b"authorization", b"bEaReR    abc"))) == b"abc"
    assert mw.token(_request((b"Authorization", b"Bearer"))) == b""
    assert mw.token(_request((b"Authorization", b"Basic dXNlcjpwdw=="))) is None
    assert mw.token(_request((b"Authorization", b"Bearerabc"))) is None
    assert mw.token(_request()) is None
    two = _request((b"Authorization", b"Bearer a"), (b"Authorization", b"Bearer b"))
    assert mw.token(two) not in (b"a", b"b", None)
    assert type(mw(two)).__name__ == "InvalidToken" and mw(two).reason == "ambiguous_credentials"
    assert type(mw(_request())).__name__ == "MissingCredentials"
    assert mw(_request((b"Authorization", b"Bearer "))).reason == "malformed"
    # Never the query string unless configured.
    assert mw.token(_request(query=b"access_token=abc")) is None


def test_cookie_and_query_tokens():
    mw = _middleware(cookie="session", query="access_token")
    req = _request((b"Cookie", b"theme=dark; session=tok.en.x; other=1"))
    assert mw.token(req) == b"tok.en.x"
    req = _request(query=b"a=1&access_token=q.r.s&b=2")
    assert mw.token(req) == b"q.r.s" and req.query == b"a=1&b=2"  # removed for the upstream
    req = _request((b"Authorization", b"Bearer h.h.h"), (b"Cookie", b"session=c.c.c"))
    assert mw.token(req) == b"h.h.h"  # the Authorization header wins
    assert mw.carries(_request(query=b"access_token=x")) and not mw.carries(_request())


def test_claim_header_values_cannot_split_the_head():
    assert claim_header_value("user-1") == b"user-1"
    assert claim_header_value("a\r\nX-Evil: 1") == b"aX-Evil: 1"
    assert claim_header_value("José") == "José".encode()
    assert claim_header_value(42) == b"42" and claim_header_value(True) == b"true"
    assert claim_header_value(["a", "b", 3]) == b"a, b, 3"
    assert claim_header_value({"k": "v\n"}) == b'{"k":"v\\n"}'
    assert claim_header_value("\x00\x01") is None
    assert claim_header_value("x" * 5000) is None
    assert claim_header_value(None) is None and claim_header_value(2**70) is None


# ---- the shared gateway -------------------------------------------------------------------


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    idp = IdentityProvider().start()
    other = IdentityProvider(("ES256",)).start()
    upstream = RecordingUpstream().start()
    config = f"""
routes:
  - route: /api
    upstream: {upstream.url}
    middleware:
      - jwt:
{jwt_block(idp, forward_claims={"sub": "X-User-Id", "email": "X-User-Email", "roles": "X-Roles"})}
  - route: /scoped
    upstream: {upstream.url}
    middleware:
      - jwt:
{jwt_block(idp, scopes=["orders:read", "orders:list"])}
  - route: /orders
    upstream: {upstream.url}
    middleware:
      - jwt:
{jwt_block(idp)}
  - route: /alt
    upstream: {upstream.url}
    middleware:
      - jwt:
{jwt_block(idp, cookie="session", query="access_token")}
  - route: /either
    upstream: {upstream.url}
    middleware:
      - any:
          - jwt:
{jwt_block(other, indent=14)}
          - jwt:
{jwt_block(idp, indent=14, cookie="session")}
  - route: /public
    upstream: {upstream.url}
    public: true
scope_map:
  orders:write: ["POST /orders/**", "PUT /orders/*"]
  orders:admin: ["DELETE /orders/**", "POST /orders/**"]
"""
    gw = start_gateway(tmp_path_factory.mktemp("jwt-world"), config, workers=2)
    client = Client(gw.port)
    try:
        yield idp, other, upstream, gw, client
    finally:
        client.close()
        gw.stop()
        upstream.stop()
        other.stop()
        idp.stop()


def test_valid_token_reaches_upstream_with_principal_headers(world):
    idp, _, upstream, _, client = world
    token = idp.mint(email="ann@example.com", roles=["admin", "ops"], scope="orders:read a:b")
    before = len(upstream.requests)
    status, _, body = client.get("/api/items?x=1", token=token,
                                 headers={"X-User-Id": "spoofed", "X-FluxGate-Auth": "none"})
    assert status == 200, body
    seen = upstream.requests[before]
    assert len(upstream.requests) == before + 1
    assert seen.target == "/api/items?x=1"
    assert seen.header("X-FluxGate-Auth") == "jwt"
    assert seen.header("X-FluxGate-Subject") == "user-42"
    assert seen.header("X-FluxGate-Scopes") == "a:b orders:read"
    assert seen.header("X-User-Id") == "user-42"
    assert [v for k, v in seen.headers if k.lower() == "x-user-id"] == ["user-42"]
    assert seen.header("X-User-Email") == "ann@example.com"
    assert seen.header("X-Roles") == "admin, ops"
    assert seen.header("Authorization") == f"Bearer {token}"  # forwarded as-is (documented)


def test_absent_claim_header_is_never_taken_from_the_client(world):
    idp, _, upstream, _, client = world
    before = len(upstream.requests)
    status, _, _ = client.get("/api/x", token=idp.mint(), headers={"X-User-Email": "boss@corp"})
    assert status == 200
    assert upstream.requests[before].header("X-User-Email") is None


def test_missing_and_invalid_tokens_are_401_and_never_forwarded(world):
    idp, _, upstream, _, client = world
    before = len(upstream.requests)
    status, headers, body = client.get("/api/x")
    assert status == 401 and json.loads(body)["error"] == "missing_credentials"
    assert headers["www-authenticate"] == 'Bearer realm="fluxgate"'
    status, headers, body = client.get("/api/x", token=idp.mint(exp=int(time.time()) - 3600))
    assert status == 401 and json.loads(body)["error"] == "invalid_token"
    assert headers["www-authenticate"] == 'Bearer realm="fluxgate", error="invalid_token"'
    # The reason is for logs and metrics only: an expired and a forged token read the same.
    forged = client.get("/api/x", token=idp.mint()[:-4] + "AAAA")[2]
    assert json.loads(forged)["error_description"] == json.loads(body)["error_description"]
    status, _, _ = client.get("/api/x", headers={"Authorization": "Basic dXNlcjpwYXNz"})
    assert status == 401
    assert len(upstream.requests) == before


def test_route_scopes(world):
    idp, _, upstream, _, client = world
    status, headers, body = client.get("/scoped/x", token=idp.mint(scope="orders:read"))
    assert status == 403 and json.loads(body)["error"] == "insufficient_scope"
    assert 'error="insufficient_scope"' in headers["www-authenticate"]
    assert 'scope="orders:list orders:read"' in headers["www-authenticate"]
    assert client.get("/scoped/x", token=idp.mint(scp=["orders:read", "orders:list"]))[0] == 200
    assert client.get("/scoped/x", token=idp.mint(scope="orders:list", scp="orders:read"))[0] == 200


def test_scope_map(world):
    idp, _, _, _, client = world
    reader = idp.mint(scope="orders:read")
    writer = idp.mint(scope="orders:write")
    admin = idp.mint(scope="orders:admin")
    assert client.get("/orders/1", token=reader)[0] == 200  # no rule covers GET
    status, headers, _ = client.request("POST", "/orders/new", token=reader)
    assert status == 403 and 'scope="orders:admin orders:write"' in headers["www-authenticate"]
    assert client.request("POST", "/orders/new", token=writer)[0] == 200
    assert client.request("POST", "/orders/a/b/c", token=admin)[0] == 200
    assert client.request("PUT", "/orders/7", token=writer)[0] == 200
    assert client.request("PUT", "/orders/7/lines", token=writer)[0] == 200  # * is one segment
    assert client.request("DELETE", "/orders/7", token=writer)[0] == 403
    assert client.request("DELETE", "/orders/7", token=admin)[0] == 200
    assert client.request("DELETE", "/orders/./7/", token=writer)[0] == 403  # normalized


def test_cookie_and_query_sources_end_to_end(world):
    idp, _, upstream, _, client = world
    token = idp.mint()
    assert client.get("/alt/x", headers={"Cookie": f"a=b; session={token}"})[0] == 200
    before = len(upstream.requests)
    assert client.get(f"/alt/x?k=v&access_token={token}")[0] == 200
    assert upstream.requests[before].target == "/alt/x?k=v"  # the token left the URL
    assert client.get(f"/api/x?access_token={token}")[0] == 401  # not configured there


def test_any_first_carried_credential_decides(world):
    idp, other, _, _, client = world
    assert client.get("/either/x", token=other.mint())[0] == 200
    # A bearer token: the first member carries it and decides; no fall-through to the
    # second member, even though the second would accept this token.
    assert client.get("/either/x", token=idp.mint())[0] == 401
    # Only the second member's cookie: it decides.
    assert client.get("/either/x", headers={"Cookie": f"session={idp.mint()}"})[0] == 200
    status, _, body = client.get("/either/x")
    assert status == 401 and json.loads(body)["error"] == "missing_credentials"


def test_metrics_count_failures_by_reason(world):
    idp, _, _, gw, client = world
    client.get("/api/x", token=idp.mint(aud="someone-else"))
    text = metrics(gw)
    assert metric(text, "fluxgate_auth_failures_total", method="jwt", reason="wrong_audience") >= 1
    assert metric(text, "fluxgate_auth_failures_total", method="jwt",
                  reason="missing_credentials") >= 1
    jwks = metric(text, "fluxgate_jwks_refresh_total", provider=idp.jwks_uri, result="ok")
    assert jwks == 1  # two workers, five routes on this provider: one fetch
    assert idp.count("/jwks") == 1


# ---- the hostile-token suite --------------------------------------------------------------

HOSTILE = hostile.cases()


def test_hostile_suite_is_there():
    assert len(HOSTILE) >= 60
    reasons = Counter(case["reason"] for _, case in HOSTILE)
    assert {"alg_not_allowed", "bad_signature", "malformed", "unknown_kid",
            "crit_unsupported", "invalid_claim", "token_too_large"} <= set(reasons)


def test_hostile_tokens_through_the_gateway(tmp_path):
    """Every case: 401 invalid_token, never a 500, never a byte to the upstream; and the
    reasons counted in metrics are exactly the expected ones."""
    with serving(tmp_path) as (idp, upstream, start):
        gw = start(workers=1)
        client = Client(gw.port)
        expected: Counter[str] = Counter()
        for name, case in HOSTILE:
            token = hostile.build(case, idp)
            status, headers, body = client.get("/api/secret", token=token)
            assert status == 401, (name, status, body)
            assert json.loads(body)["error"] == "invalid_token", name
            assert 'error="invalid_token"' in headers["www-authenticate"], name
            expected[case["reason"]] += 1
        client.close()
        assert upstream.requests == [] and upstream.connections == 0
        text = metrics(gw)
        counted = {
            m.group(1): int(float(m.group(2)))
            for m in re.finditer(
                r'fluxgate_auth_failures_total\{method="jwt",reason="([a-z_]+)"\} (\S+)', text
            )
        }
        assert counted == dict(expected)
        assert "Traceback" not in gw.log()


# ---- keys over time ------------------------------------------------------------------------


@pytest.fixture
def single(tmp_path):
    """``serving`` with one RS256 key."""
    with serving(tmp_path, "RS256") as world:
        yield world


def test_key_rotation_is_picked_up_without_restart(single):
    idp, _, start = single
    gw = start(workers=2)
    client = Client(gw.port)
    old_token = idp.mint()
    assert client.get("/api/x", token=old_token)[0] == 200
    new_key = idp.rotate(keep_old=False)
    new_token = idp.mint()
    # The first request with the new kid is refused and asks the master for a refresh;
    # the new key is live on the workers within about a second.
    t0 = time.monotonic()
    assert wait_until(lambda: client.get("/api/x", token=new_token)[0] == 200, timeout=5)
    assert time.monotonic() - t0 < 3.0
    # Every worker sees a new signing key within one second. The first 200 came
    # from whichever worker swept first; give the other the contract's second (a busy CI
    # machine can delay its 250 ms sweep), then fresh connections, spread over both, must
    # all be accepted.
    time.sleep(1.0)
    for _ in range(20):
        one = Client(gw.port)
        assert one.get("/api/x", token=idp.mint(jti=str(random.random())))[0] == 200
        one.close()
    # The old key is gone from the provider, so is it from the gateway (cache flushed).
    assert client.get("/api/x", token=old_token)[0] == 401
    assert idp.count("/jwks") == 2
    text = metrics(gw)
    assert metric(text, "fluxgate_jwks_refresh_requests_total", provider=idp.jwks_uri) >= 1
    assert new_key.kid in gw.log()


def test_provider_outage_keeps_the_last_keys(single):
    idp, _, start = single
    gw = start(workers=1)
    client = Client(gw.port)
    assert client.get("/api/x", token=idp.mint())[0] == 200
    idp.mode = "down"
    status, _, body = Client(gw.admin_port).request("POST", "/admin/jwks/refresh", headers=ADMIN)
    assert status == 200 and json.loads(body)["providers"][0]["last_error"]
    for i in range(5):  # new tokens (not cached) still verify with the last good keys
        assert client.get("/api/x", token=idp.mint(jti=f"t{i}"))[0] == 200
    text = metrics(gw)
    assert metric(text, "fluxgate_jwks_refresh_total", provider=idp.jwks_uri, result="error") >= 1
    assert metric(text, "fluxgate_jwks_keys", provider=idp.jwks_uri) == 1
    idp.mode = "close"
    Client(gw.admin_port).request("POST", "/admin/jwks/refresh", headers=ADMIN)
    assert client.get("/api/x", token=idp.mint(jti="later"))[0] == 200


def test_a_thousand_random_kids_cost_one_jwks_fetch(single):
    idp, upstream, start = single
    gw = start(workers=2)
    assert wait_until(lambda: idp.count("/jwks") == 1)
    attacker = SigningKey.generate("RS256", None)
    # One signature reused under 1,000 kids: the kid is only looked up, so the signature
    # never matters (and minting 1,000 RSA signatures would take seconds).
    claims = idp.claims()
    clients = [Client(gw.port) for _ in range(8)]
    statuses: Counter[int] = Counter()
    for i in range(1000):
        kid = "".join(random.choices(string.ascii_letters + string.digits, k=16))
        token = attacker.mint(claims, header={"kid": kid})
        statuses[clients[i % 8].get("/api/x", token=token)[0]] += 1
    for c in clients:
        c.close()
    assert statuses == {401: 1000}
    time.sleep(1.0)  # the master polls requests 4x a second; give it several chances
    assert idp.count("/jwks") == 2  # the start-up fetch and exactly one refresh
    assert upstream.requests == []
    text = metrics(gw)
    assert metric(text, "fluxgate_auth_failures_total", method="jwt", reason="unknown_kid") == 1000
    requests = metric(text, "fluxgate_jwks_refresh_requests_total", provider=idp.jwks_uri)
    assert 1 <= requests <= 1000


def test_oidc_discovery(single):
    idp, _, start = single
    block = f"          issuer: {idp.issuer}\n          audience: {AUDIENCE}"
    gw = start(workers=1, block=block)
    assert Client(gw.port).get("/api/x", token=idp.mint())[0] == 200
    assert idp.count("/.well-known/openid-configuration") == 1 and idp.count("/jwks") == 1


def test_discovery_naming_another_issuer_fails_closed(single):
    idp, upstream, start = single
    idp.discovery_issuer = "https://impostor.example"
    block = f"          issuer: {idp.issuer}\n          audience: {AUDIENCE}"
    gw = start(workers=1, block=block)
    status, _, body = Client(gw.port).get("/api/x", token=idp.mint())
    assert status == 503 and json.loads(body)["error"] == "auth_server_unavailable"
    assert idp.count("/jwks") == 0 and upstream.requests == []


def _tls_files(directory: Path) -> tuple[str, str, str]:
    """A CA and a server certificate for 127.0.0.1 signed by it."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fluxgate test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(1)
          .not_valid_before(now - datetime.timedelta(hours=1))
          .not_valid_after(now + datetime.timedelta(hours=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(2)
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    paths = directory / "ca.pem", directory / "cert.pem", directory / "key.pem"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return tuple(str(p) for p in paths)


def test_https_provider_certificate_is_verified(tmp_path):
    ca, cert, key = _tls_files(tmp_path)
    with serving(tmp_path, "ES256", tls=(cert, key)) as (idp, upstream, start):
        untrusting = start(workers=1)
        status, _, _ = Client(untrusting.port).get("/api/x", token=idp.mint())
        assert status == 503  # an unverifiable certificate gives no keys: fail closed
        assert "CERTIFICATE_VERIFY_FAILED" in untrusting.log()
        trusting = start(workers=1, env={"SSL_CERT_FILE": ca})
        assert Client(trusting.port).get("/api/x", token=idp.mint())[0] == 200
        assert upstream.requests and len(upstream.requests) == 1


def test_any_with_jwt_and_api_key(tmp_path):
    """``any: [jwt, api_key]``: whichever credential the request carries decides; a bad
    bearer token is a 401 even with a good API key beside it (no fall-through)."""
    from fluxgate.auth.keyops import KeyOps

    with serving(tmp_path, "ES256") as (idp, upstream, start):
        gw = start(workers=1, middleware=f"""\
      - any:
          - jwt:
{jwt_block(idp, indent=14)}
          - api_key: {{}}""")
        key = KeyOps(load_config(gw.config_path)).generate("svc")["key"]
        client = Client(gw.port)
        assert wait_until(lambda: client.get("/api/x", headers={"X-API-Key": key})[0] == 200)
        before = len(upstream.requests)
        assert client.get("/api/x", token=idp.mint())[0] == 200
        assert upstream.requests[before].header("X-FluxGate-Auth") == "jwt"
        assert client.get("/api/x", headers={"X-API-Key": key})[0] == 200
        assert upstream.requests[before + 1].header("X-FluxGate-Auth") == "api_key"
        both = {"X-API-Key": key, "Authorization": "Bearer " + idp.mint()[:-4] + "AAAA"}
        status, _, body = client.get("/api/x", headers=both)
        assert status == 401 and json.loads(body)["error"] == "invalid_token"
        status, _, body = client.get("/api/x")
        assert status == 401 and json.loads(body)["error"] == "missing_credentials"
        assert len(upstream.requests) == before + 2


def test_any_passes_a_query_token_to_its_member():
    """``any`` asks its members whether the request carries their credential; asking must
    not consume it, so a token in the query string is still verified (here: refused as
    malformed), never answered "missing"."""
    from fluxgate.middleware.any import AnyMiddleware

    text = (
        "routes:\n  - route: /a\n    upstream: http://127.0.0.1:9\n    middleware:\n      - any:\n"
        "          - jwt: {jwks_uri: 'https://idp.test/jwks', query: access_token}\n"
        "          - jwt: {jwks_uri: 'https://idp2.test/jwks'}\n"
    )
    config = load_config_text(text)
    mw = AnyMiddleware.from_config(config.routes[0].middleware[0], FakeGateway(config), None)
    refusal = mw(_request(query=b"access_token=a.b.c"))
    assert type(refusal).__name__ == "InvalidToken" and refusal.reason == "malformed"


# ---- principals shared across tokens of one caller ----------------------------------------


def _hs256_verifier(forward_claims: dict[str, str] | None = None):
    from fluxgate.middleware.jwt import build_verifier

    config = load_config_text(f"""
routes:
  - route: /api
    upstream: http://127.0.0.1:9
    middleware:
      - jwt:
          issuer: https://idp.test
          audience: api
          algorithms: [HS256]
          secret: "{'s' * 32}"
          forward_claims: {json.dumps(forward_claims or {})}
""")
    return build_verifier(config.routes[0].middleware[0])


def _hs256(**claims) -> bytes:
    from tests.support.tokens import b64, b64json, sign

    now = int(time.time())
    body = {"iss": "https://idp.test", "aud": "api", "iat": now, "exp": now + 600, **claims}
    signing_input = f"{b64json({'alg': 'HS256', 'typ': 'JWT'})}.{b64json(body)}".encode()
    return signing_input + b"." + b64(sign(b"s" * 32, "HS256", signing_input)).encode()


def test_tokens_of_one_caller_share_a_principal_and_claims_keep_their_types():
    verifier = _hs256_verifier({"admin": "X-Admin", "tier": "X-Tier"})
    now = time.time()
    first = verifier.authenticate(_hs256(sub="alice", jti="1", scope="a b", admin=True), now)
    second = verifier.authenticate(_hs256(sub="alice", jti="2", scope="a b", admin=True), now)
    assert first.subject == "alice" and first.scopes == frozenset({"a", "b"})
    # true, 1 and "1" are different header values: never one principal for them
    as_int = verifier.authenticate(_hs256(sub="alice", jti="3", scope="a b", admin=1), now)
    as_str = verifier.authenticate(_hs256(sub="alice", jti="4", scope="a b", admin="1"), now)
    other = verifier.authenticate(_hs256(sub="alice", jti="5", scope="a", admin="1"), now)
    assert b"X-Admin: true\r\n" in first.upstream_lines and b"X-Admin: 1\r\n" in as_int.upstream_lines
    assert as_str.upstream_lines == as_int.upstream_lines and other.scopes == frozenset({"a"})
    # string claims share one principal across tokens; any other type builds its own each time
    assert as_str is verifier.authenticate(_hs256(sub="alice", jti="6", scope="a b", admin="1"), now)
    assert second is not first and second == first
    assert as_int is not verifier.authenticate(_hs256(sub="alice", jti="7", scope="a b", admin=1), now)
    scp_list = verifier.authenticate(_hs256(sub="bob", jti="8", scp=["x", "y"]), now)
    assert scp_list is verifier.authenticate(_hs256(sub="bob", jti="9", scp=["x", "y"]), now)
    assert scp_list.scopes == frozenset({"x", "y"})
    with pytest.raises(Exception, match="invalid_claim"):  # a bad scope type is still refused
        verifier.authenticate(_hs256(sub="bob", jti="10", scope=7), now)


def test_array_claims_and_scope_sets_are_shared_too():
    verifier = _hs256_verifier({"roles": "X-Roles"})
    now = time.time()
    first = verifier.authenticate(_hs256(sub="alice", jti="1", scope="a b", roles=["r", "s"]), now)
    again = verifier.authenticate(_hs256(sub="alice", jti="2", scope="a b", roles=["r", "s"]), now)
    as_str = verifier.authenticate(_hs256(sub="alice", jti="3", scope="a b", roles="r, s"), now)
    bob = verifier.authenticate(_hs256(sub="bob", jti="4", scope="b a", roles=["r", "s"]), now)
    assert again is first and b"X-Roles: r, s\r\n" in first.upstream_lines
    assert as_str is not first and as_str.upstream_lines == first.upstream_lines
    assert bob.scopes == first.scopes and bob.subject == "bob"
    carol = verifier.authenticate(_hs256(sub="carol", jti="5", scope="a b"), now)
    assert carol.scopes is first.scopes  # one set for every holder of "a b"
    mixed = verifier.authenticate(_hs256(sub="alice", jti="6", scope="a b", roles=["r", 1]), now)
    assert b"X-Roles: r, 1\r\n" in mixed.upstream_lines


def test_only_the_claims_the_route_reads_are_built():
    verifier = _hs256_verifier({"email": "X-Email", "https://idp.test/roles": "X-Roles"})
    assert verifier.claims == ("exp", "nbf", "iat", "iss", "aud", "sub", "scope", "scp", "email",
                               "https://idp.test/roles")
    token = _hs256(sub="alice", jti="j", scope="a", email="a@x.test", tenant={"id": 7},
                   plan="pro", roles=["unused"], **{"https://idp.test/roles": ["admin"]})
    principal = verifier.authenticate(token, time.time())
    assert principal.claims_headers == ((b"X-Email", b"a@x.test"), (b"X-Roles", b"admin"))
    claims = verifier.verify(token, time.time())
    assert set(claims) == {"iss", "aud", "iat", "exp", "sub", "scope", "email",
                           "https://idp.test/roles"}


@pytest.mark.parametrize("callers", [100, 16384])
def test_a_full_token_cache_gives_the_cycle_collector_nothing_to_walk(callers):
    # 16,384 cached tokens of 100 callers, or each of its own: their claims and principals
    # are outside the collector, so a full collection walks about as many objects as before.
    import gc

    verifier = _hs256_verifier({"roles": "X-Roles"})
    tokens = [_hs256(sub=f"user-{i % callers}", jti=str(i), scope="a b", aud=["api", "account"],
                     roles=["r1", "r2"], tenant={"id": i, "tags": ["x"]}) for i in range(16384)]
    now = time.time()
    gc.collect()
    gc.disable()
    try:
        before = len(gc.get_objects())
        for token in tokens:
            verifier.authenticate_bearer([(b"Authorization", b"Bearer " + token)], now)
        # As a worker's young collections would before anything reaches the oldest
        # generation: each takes one level of nested tuples of strings off the lists.
        gc.collect(0)
        gc.collect(1)
        added = len(gc.get_objects()) - before
    finally:
        gc.enable()
    assert verifier.cached == 16384 and added < 1000, added
    principal = verifier.authenticate(tokens[-1], now)
    assert principal.subject == f"user-{16383 % callers}" and not gc.is_tracked(principal)


def _hs256_middleware(**options) -> JwtMiddleware:
    text = (
        "routes:\n  - route: /a\n    upstream: http://127.0.0.1:9\n    middleware:\n"
        "      - jwt:\n          issuer: https://idp.test\n          audience: api\n"
        f"          algorithms: [HS256]\n          secret: \"{'s' * 32}\"\n"
        + "".join(f"          {k}: {json.dumps(v)}\n" for k, v in options.items())
    )
    config = load_config_text(text)
    return JwtMiddleware.from_config(config.routes[0].middleware[0], FakeGateway(config), None)


def _outcome(refusal, req) -> tuple:
    principal = req.principal
    return (type(refusal).__name__, getattr(refusal, "reason", None),
            None if principal is None else (principal.id, principal.upstream_lines))


@pytest.mark.parametrize("options", [{}, {"scopes": ["orders:read"], "cookie": "session"}],
                         ids=["no-scopes", "scopes-and-cookie"])
def test_the_compiled_step_decides_as_the_whole_policy_does(options):
    # middleware(req) is JwtStep.__call__ (compiled, the bearer-token case) falling back to
    # _slow_call; _slow_call alone is the whole policy: both answer every request alike.
    now = int(time.time())
    good = _hs256(sub="alice", scope="orders:read")
    forged = good[:-2] + (b"AA" if good[-2:] != b"AA" else b"BA")
    cases = [
        [(b"Authorization", b"Bearer " + good)],
        [(b"authorization", b"bearer   " + good + b"  ")],
        [(b"Authorization", b"Bearer " + _hs256(sub="bob", scope="profile"))],
        [(b"Authorization", b"Bearer " + _hs256(sub="carol", exp=now - 3600))],
        [(b"Authorization", b"Bearer " + _hs256(sub="dave", iss="https://other.test"))],
        [(b"Authorization", b"Bearer " + forged)],
        [(b"Authorization", b"Bearer not-a-token")],
        [(b"Authorization", b"Bearer ")],
        [(b"Authorization", b"Bearer")],
        [(b"Authorization", b"Basic dXNlcjpwdw==")],
        [(b"Authorization", b"Bearer " + good), (b"Authorization", b"Bearer " + good)],
        [(b"Cookie", b"session=" + good)],
        [],
    ]
    for headers in cases:
        compiled, whole = _request(*headers), _request(*headers)
        refusal = _hs256_middleware(**options)(compiled)
        expected = _hs256_middleware(**options)._slow_call(whole)
        assert _outcome(refusal, compiled) == _outcome(expected, whole), headers
    ok = _request((b"Authorization", b"Bearer " + good))
    assert _hs256_middleware(**options)(ok) is None and ok.principal.subject == "alice"


def test_the_compiled_step_answers_401_for_headers_it_cannot_read():
    mw = _hs256_middleware()
    req = _request()
    req.headers = [(b"Authorization", "Bearer str-not-bytes")]
    refusal = mw(req)
    assert type(refusal).__name__ == "InvalidToken" and refusal.reason == "other"
    assert req.principal is None
