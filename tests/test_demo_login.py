"""fluxgate/cli/demo_login.py: the demo's OpenID Provider refuses what a real one refuses
(a foreign redirect_uri, no PKCE, a wrong verifier, a code used twice, a replaced refresh
token, a foreign post-logout URI), its route loads as config, and a real `fluxgate demo`
lets headless chromium sign in at /app, see the subject in the echo, and sign out."""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import logging
import re
import secrets
import shlex
import subprocess
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import jwt
import pytest

from fluxgate.cli import demo_login
from fluxgate.cli.demo import demo_config
from fluxgate.cli.demo_login import CLIENT_ID, SUBJECT, USERNAME, DemoOpenIdProvider
from fluxgate.config import load_config_text
from tests.support.browserless import Browserless, find_form
from tests.support.demo import running_demo
from tests.support.gateway import free_port, wait_until

GATEWAY_PORT = 8080  # only written into the provider's registered URIs here


@pytest.fixture
def provider() -> Iterator[DemoOpenIdProvider]:
    op = DemoOpenIdProvider(GATEWAY_PORT)
    server = op.serve_in_thread()
    try:
        yield op
    finally:
        server.shutdown()
        op.sock.close()


def request(op: DemoOpenIdProvider, method: str, target: str, form: dict[str, str] | None = None,
            headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", op.sock.getsockname()[1], timeout=10)
    try:
        body = urllib.parse.urlencode(form) if form is not None else None
        sent = dict(headers or {})
        if form is not None:
            sent.setdefault("Content-Type", "application/x-www-form-urlencoded")
        conn.request(method, target, body=body, headers=sent)
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def basic(secret: str, client_id: str = CLIENT_ID) -> dict[str, str]:
    pair = f"{urllib.parse.quote_plus(client_id)}:{urllib.parse.quote_plus(secret)}"
    return {"Authorization": "Basic " + base64.b64encode(pair.encode()).decode()}


def challenge(verifier: str) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()


def authorize_query(op: DemoOpenIdProvider, verifier: str, **overrides: str | None) -> str:
    params = {"response_type": "code", "client_id": CLIENT_ID, "redirect_uri": op.redirect_uri,
              "scope": "openid profile", "state": "state-1", "nonce": "nonce-1",
              "code_challenge": challenge(verifier), "code_challenge_method": "S256",
              **overrides}
    return "/authorize?" + urllib.parse.urlencode({k: v for k, v in params.items() if v is not None})


def form_id(page: bytes) -> str:
    found = re.search(rb'name="form" value="([^"]+)"', page)
    assert found, page
    return found.group(1).decode()


def sign_in(op: DemoOpenIdProvider, verifier: str, **overrides: str) -> dict[str, str]:
    """The browser's part, by hand: the form, then the redirect's query (code, state, iss)."""
    status, _, page = request(op, "GET", authorize_query(op, verifier, **overrides))
    assert status == 200, page
    status, headers, _ = request(op, "POST", "/authorize", {
        "form": form_id(page), "username": USERNAME, "password": op.password})
    assert status == 303
    location = urllib.parse.urlsplit(headers["location"])
    assert f"{location.scheme}://{location.netloc}{location.path}" == op.redirect_uri
    return dict(urllib.parse.parse_qsl(location.query))


def token(op: DemoOpenIdProvider, form: dict[str, str], secret: str | None = None
          ) -> tuple[int, dict]:
    status, headers, body = request(op, "POST", "/token", form,
                                    basic(op.client_secret if secret is None else secret))
    assert headers.get("cache-control") == "no-store"
    return status, json.loads(body)


def exchange(op: DemoOpenIdProvider, code: str, verifier: str, **overrides: str
             ) -> tuple[int, dict]:
    return token(op, {"grant_type": "authorization_code", "code": code,
                      "redirect_uri": op.redirect_uri, "code_verifier": verifier, **overrides})


def new_verifier() -> str:
    return secrets.token_urlsafe(48)


# ---- discovery and keys ----------------------------------------------------------------------


def test_discovery_and_keys(provider):
    status, _, body = request(provider, "GET", "/.well-known/openid-configuration")
    assert status == 200
    meta = json.loads(body)
    issuer = provider.issuer
    assert meta["issuer"] == issuer and issuer.startswith("http://127.0.0.1:")
    assert meta["authorization_endpoint"] == issuer + "/authorize"
    assert meta["token_endpoint"] == issuer + "/token"
    assert meta["end_session_endpoint"] == issuer + "/logout"
    assert meta["revocation_endpoint"] == issuer + "/revoke"
    assert meta["code_challenge_methods_supported"] == ["S256"]
    assert meta["authorization_response_iss_parameter_supported"] is True
    assert meta["id_token_signing_alg_values_supported"] == ["RS256"]
    status, _, body = request(provider, "GET", "/jwks")
    (key,) = json.loads(body)["keys"]
    assert key["kty"] == "RSA" and key["alg"] == "RS256" and key["kid"] == provider.kid
    assert "d" not in key  # public members only
    assert request(provider, "GET", "/token")[0] == 405
    assert request(provider, "GET", "/nowhere")[0] == 404


# ---- the authorization endpoint --------------------------------------------------------------


@pytest.mark.parametrize("overrides", [
    {"redirect_uri": "http://localhost:8080/elsewhere"},
    {"redirect_uri": "http://evil.example/oauth2/callback"},
    {"redirect_uri": None},
    {"client_id": "someone-else"},
])
def test_authorization_never_redirects_to_an_unregistered_place(provider, overrides):
    status, headers, body = request(provider, "GET",
                                    authorize_query(provider, new_verifier(), **overrides))
    assert status == 400 and "location" not in headers
    assert b"not registered" in body


def test_repeated_parameters_are_refused_without_a_redirect(provider):
    target = authorize_query(provider, new_verifier()) + "&redirect_uri=http%3A%2F%2Fevil.example%2F"
    status, headers, _ = request(provider, "GET", target)
    assert status == 400 and "location" not in headers


@pytest.mark.parametrize("overrides, error", [
    ({"code_challenge": None}, "invalid_request"),
    ({"code_challenge_method": "plain"}, "invalid_request"),
    ({"code_challenge_method": None}, "invalid_request"),
    ({"code_challenge": "short"}, "invalid_request"),
    ({"response_type": "token"}, "unsupported_response_type"),
    ({"scope": "profile"}, "invalid_scope"),
    ({"scope": "openid admin"}, "invalid_scope"),
])
def test_authorization_errors_go_back_to_the_client(provider, overrides, error):
    status, headers, _ = request(provider, "GET",
                                 authorize_query(provider, new_verifier(), **overrides))
    assert status == 303
    location = urllib.parse.urlsplit(headers["location"])
    assert headers["location"].startswith(provider.redirect_uri + "?")
    query = dict(urllib.parse.parse_qsl(location.query))
    assert query["error"] == error and "code" not in query
    assert query["state"] == "state-1" and query["iss"] == provider.issuer


def test_sign_in_form_is_single_use_and_refuses_a_wrong_password(provider, caplog):
    caplog.set_level(logging.INFO, "fluxgate.demo")
    status, headers, page = request(provider, "GET", authorize_query(provider, new_verifier()))
    assert status == 200 and headers["content-type"].startswith("text/html")
    assert "frame-ancestors 'none'" in headers["content-security-policy"]
    first = form_id(page)
    for username, password in [(USERNAME, "wrong"), ("root", provider.password),
                               (USERNAME, ""), (USERNAME, provider.password + "x")]:
        status, headers, page = request(provider, "POST", "/authorize", {
            "form": first, "username": username, "password": password})
        assert status == 200 and "location" not in headers
        assert b"Wrong user or password" in page
        assert form_id(page) != first  # a new form each time; the old one is spent
        status, headers, _ = request(provider, "POST", "/authorize", {
            "form": first, "username": USERNAME, "password": provider.password})
        assert status == 400 and "location" not in headers
        first = form_id(page)
    # A form that was never shown: nothing to sign in to (a cross-site POST cannot guess one).
    status, headers, _ = request(provider, "POST", "/authorize", {
        "form": secrets.token_urlsafe(32), "username": USERNAME, "password": provider.password})
    assert status == 400 and "location" not in headers
    status, headers, _ = request(provider, "POST", "/authorize", {
        "form": first, "username": USERNAME, "password": provider.password})
    assert status == 303
    query = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(headers["location"]).query))
    assert set(query) == {"code", "state", "iss"}
    assert provider.password not in caplog.text and query["code"] not in caplog.text


# ---- the token endpoint ------------------------------------------------------------------------


def test_code_exchange_gives_a_verifiable_id_token(provider):
    verifier = new_verifier()
    answer = sign_in(provider, verifier)
    assert answer["state"] == "state-1" and answer["iss"] == provider.issuer
    status, tokens = exchange(provider, answer["code"], verifier)
    assert status == 200, tokens
    assert tokens["token_type"] == "Bearer" and tokens["expires_in"] == 120
    assert tokens["scope"] == "openid profile"
    keys = jwt.PyJWKSet.from_dict(json.loads(request(provider, "GET", "/jwks")[2]))
    claims = jwt.decode(tokens["id_token"], keys.keys[0].key, algorithms=["RS256"],
                        audience=CLIENT_ID, issuer=provider.issuer)
    assert claims["sub"] == SUBJECT and claims["nonce"] == "nonce-1"
    assert claims["name"] and claims["sid"] and claims["exp"] > claims["iat"]
    assert jwt.get_unverified_header(tokens["id_token"])["kid"] == provider.kid


def test_wrong_verifier_spends_the_code(provider):
    verifier = new_verifier()
    code = sign_in(provider, verifier)["code"]
    assert exchange(provider, code, new_verifier()) == (400, {
        "error": "invalid_grant", "error_description": "the code_verifier does not match the challenge"})
    # The right verifier is too late: the code was spent by the first presentation.
    assert exchange(provider, code, verifier)[1]["error"] == "invalid_grant"


@pytest.mark.parametrize("verifier", ["", "short", "x" * 129, "a b" * 20])
def test_malformed_verifiers_are_refused(provider, verifier):
    code = sign_in(provider, new_verifier())["code"]
    assert exchange(provider, code, verifier)[1]["error"] == "invalid_grant"


def test_the_challenge_itself_is_not_a_verifier(provider):
    verifier = new_verifier()
    code = sign_in(provider, verifier)["code"]
    assert exchange(provider, code, challenge(verifier))[1]["error"] == "invalid_grant"


def test_a_code_is_used_once(provider):
    verifier = new_verifier()
    code = sign_in(provider, verifier)["code"]
    status, tokens = exchange(provider, code, verifier)
    assert status == 200
    assert exchange(provider, code, verifier) == (400, {
        "error": "invalid_grant", "error_description": "the code is unknown, expired or already used"})
    # What the code was exchanged for is revoked with it (RFC 6749 §4.1.2).
    status, answer = token(provider, {"grant_type": "refresh_token",
                                      "refresh_token": tokens["refresh_token"]})
    assert (status, answer["error"]) == (400, "invalid_grant")


def test_a_code_answers_only_to_its_redirect_uri_and_client(provider):
    verifier = new_verifier()
    code = sign_in(provider, verifier)["code"]
    status, answer = exchange(provider, code, verifier,
                              redirect_uri="http://localhost:8080/elsewhere")
    assert (status, answer["error"]) == (400, "invalid_grant")
    code = sign_in(provider, verifier)["code"]
    for secret in ("wrong", ""):
        status, answer = exchange_with_secret(provider, code, verifier, secret)
        assert (status, answer["error"]) == (401, "invalid_client")
    status, headers, body = request(provider, "POST", "/token", {
        "grant_type": "authorization_code", "code": code, "code_verifier": verifier,
        "redirect_uri": provider.redirect_uri})  # no client authentication at all
    assert status == 401 and headers["www-authenticate"].startswith("Basic")
    assert exchange(provider, code, verifier)[0] == 200  # refusals above did not spend it


def exchange_with_secret(op, code, verifier, secret):
    return token(op, {"grant_type": "authorization_code", "code": code, "code_verifier": verifier,
                      "redirect_uri": op.redirect_uri}, secret=secret)


def test_an_expired_code_is_refused(provider, monkeypatch):
    verifier = new_verifier()
    code = sign_in(provider, verifier)["code"]

    class Later:  # the provider's clock, a minute and a second on
        monotonic = staticmethod(lambda: real_monotonic() + demo_login.CODE_SECONDS + 1)
        time = staticmethod(demo_login.time.time)

    real_monotonic = demo_login.time.monotonic
    monkeypatch.setattr(demo_login, "time", Later)
    assert exchange(provider, code, verifier)[1]["error"] == "invalid_grant"


@pytest.mark.parametrize("form", [
    {"grant_type": "password", "username": USERNAME, "password": "x"},
    {"grant_type": "client_credentials"},
    {},
])
def test_other_grants_are_refused(provider, form):
    status, answer = token(provider, form)
    assert (status, answer["error"]) == (400, "unsupported_grant_type")


def test_malformed_token_requests_are_400_not_500(provider):
    auth = basic(provider.client_secret)
    for body, content_type in [(b"grant_type=refresh_token&grant_type=authorization_code",
                                "application/x-www-form-urlencoded"),
                               (b'{"grant_type": "refresh_token"}', "application/json"),
                               (b"\xff\xfe=\x00", "application/x-www-form-urlencoded")]:
        conn = http.client.HTTPConnection("127.0.0.1", provider.sock.getsockname()[1], timeout=10)
        conn.request("POST", "/token", body=body, headers={**auth, "Content-Type": content_type})
        resp = conn.getresponse()
        assert resp.status == 400, body
        assert json.loads(resp.read())["error"] in ("invalid_request", "unsupported_grant_type")
        conn.close()


def test_refresh_rotates_and_a_replaced_token_ends_the_sign_in(provider):
    verifier = new_verifier()
    tokens = exchange(provider, sign_in(provider, verifier)["code"], verifier)[1]
    first = tokens["refresh_token"]
    status, refreshed = token(provider, {"grant_type": "refresh_token", "refresh_token": first})
    assert status == 200 and refreshed["refresh_token"] != first
    assert refreshed["access_token"] != tokens["access_token"] and refreshed["expires_in"] == 120
    second = refreshed["refresh_token"]
    status, third = token(provider, {"grant_type": "refresh_token", "refresh_token": second})
    assert status == 200
    # The first token again: refused, and the sign-in it belongs to ends with it.
    assert token(provider, {"grant_type": "refresh_token", "refresh_token": first}) == (400, {
        "error": "invalid_grant", "error_description": "this refresh token was already used"})
    status, answer = token(provider, {"grant_type": "refresh_token",
                                      "refresh_token": third["refresh_token"]})
    assert (status, answer["error"]) == (400, "invalid_grant")
    for unknown in ("", secrets.token_urlsafe(32), tokens["access_token"]):
        status, answer = token(provider, {"grant_type": "refresh_token", "refresh_token": unknown})
        assert (status, answer["error"]) == (400, "invalid_grant")


def test_refresh_scope_may_narrow_never_widen(provider):
    verifier = new_verifier()
    refresh = exchange(provider, sign_in(provider, verifier)["code"], verifier)[1]["refresh_token"]
    status, answer = token(provider, {"grant_type": "refresh_token", "refresh_token": refresh,
                                      "scope": "openid admin"})
    assert (status, answer["error"]) == (400, "invalid_scope")
    status, answer = token(provider, {"grant_type": "refresh_token", "refresh_token": refresh,
                                      "scope": "openid"})
    assert status == 200 and answer["scope"] == "openid"


def test_revocation(provider):
    verifier = new_verifier()
    refresh = exchange(provider, sign_in(provider, verifier)["code"], verifier)[1]["refresh_token"]
    status, _, _ = request(provider, "POST", "/revoke", {"token": refresh}, basic("wrong"))
    assert status == 401
    status, _, body = request(provider, "POST", "/revoke",
                              {"token": refresh, "token_type_hint": "refresh_token"},
                              basic(provider.client_secret))
    assert (status, json.loads(body)) == (200, {})
    status, answer = token(provider, {"grant_type": "refresh_token", "refresh_token": refresh})
    assert (status, answer["error"]) == (400, "invalid_grant")
    # An unknown token is answered the same (RFC 7009 §2.2).
    assert request(provider, "POST", "/revoke", {"token": "nothing"},
                   basic(provider.client_secret))[0] == 200


# ---- RP-initiated logout -------------------------------------------------------------------


def test_end_session_redirects_only_to_the_registered_uri(provider):
    verifier = new_verifier()
    tokens = exchange(provider, sign_in(provider, verifier)["code"], verifier)[1]
    id_token = tokens["id_token"]
    header, payload, signature = id_token.split(".")
    forged_claims = {**jwt.decode(id_token, options={"verify_signature": False}), "sid": "x"}
    forged_payload = base64.urlsafe_b64encode(json.dumps(forged_claims).encode()).rstrip(b"=")
    for params in [
        {"id_token_hint": id_token, "post_logout_redirect_uri": "http://evil.example/"},
        {"client_id": CLIENT_ID, "post_logout_redirect_uri": "http://localhost:8080/other"},
        {"client_id": "someone-else", "post_logout_redirect_uri": provider.post_logout_redirect_uri},
        {"post_logout_redirect_uri": provider.post_logout_redirect_uri},  # whose? unknown
        {"id_token_hint": f"{header}.{forged_payload.decode()}.{signature}",
         "post_logout_redirect_uri": provider.post_logout_redirect_uri},
        {"id_token_hint": "not-a-token"},
    ]:
        status, headers, _ = request(provider, "GET", "/logout?" + urllib.parse.urlencode(params))
        assert status == 400 and "location" not in headers, params
    # The sign-in is still alive: none of the refused calls ended it.
    status, refreshed = token(provider, {"grant_type": "refresh_token",
                                         "refresh_token": tokens["refresh_token"]})
    assert status == 200
    status, headers, _ = request(provider, "GET", "/logout?" + urllib.parse.urlencode({
        "id_token_hint": id_token, "client_id": CLIENT_ID, "state": "s1",
        "post_logout_redirect_uri": provider.post_logout_redirect_uri}))
    assert status == 303
    assert headers["location"] == provider.post_logout_redirect_uri + "?state=s1"
    # Signed out at the provider: the sign-in's refresh token is gone.
    status, answer = token(provider, {"grant_type": "refresh_token",
                                      "refresh_token": refreshed["refresh_token"]})
    assert (status, answer["error"]) == (400, "invalid_grant")
    status, _, page = request(provider, "GET", "/logout")
    assert status == 200 and b"signed out" in page


# ---- the demo config -------------------------------------------------------------------------


def test_route_loads_as_config(provider, tmp_path):
    config = load_config_text(demo_config(str(tmp_path), GATEWAY_PORT, 9901, 9000,
                                          provider.route_yaml("echo")))
    route = next(r for r in config.routes if r.route == "/app")
    entry = route.middleware[0]
    assert entry.login and entry.issuer == provider.issuer
    assert (entry.client_id, entry.client_secret) == (CLIENT_ID, provider.client_secret)
    assert entry.redirect_uri == f"http://localhost:{GATEWAY_PORT}/oauth2/callback"
    assert entry.post_logout_redirect_uri == provider.post_logout_redirect_uri
    assert entry.login_scopes == ["openid", "profile"]


# ---- the gateway against the provider: refreshes, logout ------------------------------------


@pytest.mark.slow
def test_gateway_refreshes_and_signs_out_at_the_provider(upstream, gateway_factory, caplog):
    caplog.set_level(logging.INFO, "fluxgate.demo")
    port = free_port()
    # 5 s access tokens, under the gateway's 30 s refresh_leeway: each request of the
    # session has the master refresh it (in the background while the token is valid).
    op = DemoOpenIdProvider(port, access_token_seconds=5)
    server = op.serve_in_thread()
    try:
        gw = gateway_factory("routes:\n" + op.route_yaml(upstream.url),
                             listen=f"127.0.0.1:{port}")
        browser = Browserless()
        hops = browser.login(op.app_url + "page?tab=1", USERNAME, op.password)
        assert [h.url.split("?")[0] for h in hops] == [
            op.app_url + "page", op.issuer + "/authorize", op.issuer + "/authorize",
            op.redirect_uri, op.app_url + "page"]
        assert hops[-1].status == 200
        assert upstream.requests[-1].target == "/app/page?tab=1"
        assert upstream.requests[-1].header("x-fluxgate-subject") == SUBJECT
        for n in range(6):
            assert browser.get(op.app_url + f"n{n}").status == 200
            assert upstream.requests[-1].header("x-fluxgate-subject") == SUBJECT
            wait_until(lambda n=n: caplog.text.count("refreshed (sid") > n, timeout=5)
        assert caplog.text.count("refreshed (sid") >= 3, caplog.text
        assert "refresh refused" not in caplog.text  # a rotated token is never sent again

        hop = browser.get(f"http://localhost:{port}/.fluxgate/logout")
        hops = browser.follow(hop)
        # Signed out at the gateway and at the provider, back at /app: the sign-in form.
        assert hops[-1].url.startswith(op.issuer + "/authorize")
        assert "password" in find_form(hops[-1]).fields
        assert wait_until(lambda: "refresh token revoked" in caplog.text, timeout=10)
        assert "signed out (sid" in caplog.text
        assert browser.cookie("__Host-fluxgate") is None
        assert browser.get(op.app_url).status == 302
        assert gw.proc.poll() is None
    finally:
        server.shutdown()
        op.sock.close()
    assert op.password not in caplog.text and op.client_secret not in caplog.text


# ---- a real `fluxgate demo` in headless chromium -------------------------------------------


def _banner_value(banner: str, pattern: str) -> re.Match:
    found = re.search(pattern, banner)
    assert found, banner
    return found


@pytest.mark.slow
def test_demo_login_in_chromium(tmp_path, chromium):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    def ready(_state: Path, log: str) -> bool:
        return "oauth2 login login:" in log and "discovered" in log

    with running_demo(tmp_path, ready) as (_state, log_path):
        banner = log_path.read_text()
        app_url = _banner_value(banner, r"In a browser \(Chromium, Firefox\): (\S+)").group(1)
        who = _banner_value(banner, r"sign in as (\S+) / (\S+) at the demo's OpenID Provider "
                                    r"\((\S+)\);")
        username, password, issuer = who.groups()
        logout_url = _banner_value(banner, r"(\S+/\.fluxgate/logout) signs out").group(1)
        assert username == USERNAME and app_url.startswith("http://localhost:")
        port = urllib.parse.urlsplit(app_url).port

        # The printed curl lines for /app answer what their comments say.
        curl_lines = [line for line in banner.splitlines() if "curl" in line and "/app/" in line]
        assert len(curl_lines) == 2, banner
        for line in curl_lines:
            expected = _banner_value(line + _next(banner, line), r"#\s*(\d{3})").group(1)
            words = [w for w in shlex.split(line.partition("#")[0]) if w != "-i"]
            out = subprocess.run([words[0], "-s", "-o", "/dev/null", "-w", "%{http_code}",
                                  *words[1:]], capture_output=True, text=True, timeout=10)
            assert out.stdout == expected, (line, out.stdout, out.stderr)

        driver = chromium.driver
        wait = WebDriverWait(driver, 15)

        def sign_in_form_shown() -> None:
            wait.until(lambda d: d.current_url.startswith(issuer + "/authorize"))
            wait.until(lambda d: d.find_elements(By.ID, "sign-in"))

        def fill(user: str, secret: str) -> None:
            driver.find_element(By.ID, "username").send_keys(user)
            driver.find_element(By.ID, "password").send_keys(secret)
            driver.find_element(By.ID, "sign-in").click()

        chromium.get(app_url)
        sign_in_form_shown()
        fill(username, password + "x")
        wait.until(lambda d: d.find_elements(By.ID, "error"))
        fill(username, password)
        wait.until(lambda d: d.current_url == app_url)
        echo = json.loads(driver.find_element(By.TAG_NAME, "body").text)
        headers = {k.lower(): v for k, v in echo["headers"].items()}
        assert headers["x-fluxgate-subject"] == SUBJECT
        assert headers["x-fluxgate-auth"] == "oauth2"
        assert "fluxgate" not in headers.get("cookie", "")  # the gateway's cookies stay its own
        cookies = {c["name"]: c for c in chromium.cookies()}
        session = cookies["__Host-fluxgate"]
        assert session["secure"] and session["httpOnly"] and session["sameSite"] == "Lax"

        # Signing out lands on /app (the registered post-logout URI), which asks to sign in.
        chromium.get(logout_url)
        sign_in_form_shown()
        chromium.get(app_url)
        sign_in_form_shown()
        assert "__Host-fluxgate" not in {c["name"] for c in chromium.cookies()}
        # The gateway revokes the refresh token in the background while the browser goes to
        # the provider's end_session endpoint, which forgets the grant: either may come first.
        assert wait_until(lambda: any(line in log_path.read_text() for line in REVOCATION_SEEN),
                          timeout=10)

        # No console errors on the provider's pages or the gateway's; the gateway has no
        # route for the browser's own /favicon.ico request, which is the echo's to serve.
        errors = [e for e in chromium.console_errors()
                  if not e.startswith(f"http://localhost:{port}/favicon.ico")]
        assert errors == []
    log_text = log_path.read_text()
    steps = [line for line in log_text.splitlines() if "demo OpenID Provider:" in line]
    assert any("signed in" in s for s in steps) and any("code exchanged" in s for s in steps)
    assert any("signed out" in s for s in steps), log_text
    assert any(line in s for s in steps for line in REVOCATION_SEEN), log_text
    assert log_text.count(password) == 1  # printed once, for the person; never logged


# The demo provider's log of the gateway's RFC 7009 call at logout: revoked, or already
# forgotten by its end_session endpoint when the browser got there first.
REVOCATION_SEEN = ("refresh token revoked", "revocation of a token it does not hold")


def _next(banner: str, line: str) -> str:
    """The line after ``line`` in ``banner`` (a long command's comment goes there)."""
    lines = banner.splitlines()
    index = lines.index(line)
    return lines[index + 1] if index + 1 < len(lines) else ""

