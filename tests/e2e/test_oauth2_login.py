"""The browser login end to end: `fluxgate run` on a TLS listener, django-oauth-toolkit as
the OpenID Provider (PKCE required, rotating refresh tokens with reuse protection,
RP-initiated logout), and a scripted browser (tests/support/browserless.py) that keeps
cookies as a browser does and stops at any hop a test wants to tamper with.
"""

from __future__ import annotations

import concurrent.futures
import http.client
import json
import ssl
import time
import urllib.parse
from dataclasses import dataclass

import pytest
import trustme

from tests.support.authserver import DjangoAuthServer, LoginClient
from tests.support.browserless import Browserless
from tests.support.certs import write_pair
from tests.support.cluster_login import login_middleware
from tests.support.gateway import GatewayProcess, free_port, wait_until

pytestmark = pytest.mark.slow

SESSION_COOKIE = "__Host-fluxgate"


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@dataclass
class LoginSetup:
    gw: GatewayProcess
    server: DjangoAuthServer
    client: LoginClient
    ca: trustme.CA
    leaf: trustme.LeafCert  # the gateway's certificate

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.gw.port}"

    def browser(self) -> Browserless:
        return Browserless(ca=self.ca)

    def sign_in(self, path: str = "/app/page") -> tuple[Browserless, list]:
        browser = self.browser()
        hops = browser.login(self.url + path, "alice", self.server.password("alice"))
        return browser, hops


def login_config(upstream_url: str, server: DjangoAuthServer, client: LoginClient,
                 port: int, **options: object) -> str:
    middleware = login_middleware(server, client, port, **options)
    # /ws/session: the recording upstream's WebSocket echo, behind the same login.
    return (f"routes:\n  - route: /app\n    upstream: {upstream_url}\n{middleware}"
            f"  - route: /ws/session\n    upstream: {upstream_url}\n{middleware}")


@pytest.fixture
def login_setup(tmp_path, ca, upstream, django_auth_server):
    started: list[GatewayProcess] = []

    def start(workers: int = 1, access_token_seconds: int = 60, **options: object) -> LoginSetup:
        port = free_port()
        server = django_auth_server
        client = server.register_client(
            [f"https://127.0.0.1:{port}/oauth2/callback"],
            [f"https://127.0.0.1:{port}/app/signed-out"],
            access_token_seconds=access_token_seconds)
        leaf = ca.issue_cert("127.0.0.1")
        cert, key = write_pair(leaf, tmp_path, f"gw{port}")
        listen = f"{{address: '127.0.0.1:{port}', tls: {{cert: '{cert}', key: '{key}'}}}}"
        directory = tmp_path / f"gw{port}"
        directory.mkdir()
        gw = GatewayProcess(directory, login_config(upstream.url, server, client, port, **options),
                            workers=workers, listen=listen)
        started.append(gw)
        gw.start()
        return LoginSetup(gw, server, client, ca, leaf)

    try:
        yield start
    finally:
        for gw in started:
            gw.stop()


def https_request(setup: LoginSetup, method: str, path: str, headers: dict[str, str] | None = None,
                  body: bytes | None = None) -> tuple[int, dict[str, str], bytes]:
    context = ssl.create_default_context()
    setup.ca.configure_trust(context)
    conn = http.client.HTTPSConnection("127.0.0.1", setup.gw.port, context=context, timeout=10)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        conn.close()


# ---- the login ------------------------------------------------------------------------------


def test_login_lands_on_the_page_with_the_principal_and_no_gateway_cookie(login_setup, upstream):
    setup = login_setup()
    browser, hops = setup.sign_in("/app/page?tab=2")
    first = hops[0]
    assert first.status == 302
    authorize = urllib.parse.urlsplit(first.location)
    query = dict(urllib.parse.parse_qsl(authorize.query))
    assert first.location.startswith(setup.server.authorization_endpoint)
    assert query["response_type"] == "code"
    assert query["code_challenge_method"] == "S256" and len(query["code_challenge"]) == 43
    assert len(query["state"]) >= 43 and len(query["nonce"]) >= 43  # 256 random bits each
    assert query["redirect_uri"] == f"{setup.url}/oauth2/callback"
    assert "openid" in query["scope"].split()
    set_cookie = first.headers.get_all("Set-Cookie")
    assert any(c.startswith("__Host-fluxgate-tx-") and "Secure" in c and "HttpOnly" in c
               and "SameSite=Lax" in c and "Path=/" in c for c in set_cookie)

    callback = next(h for h in hops if h.url.startswith(setup.url + "/oauth2/callback"))
    assert callback.status == 303
    assert callback.headers["Location"] == "/app/page?tab=2"  # relative: this site only
    assert callback.headers["Referrer-Policy"] == "no-referrer"
    session_cookie = next(c for c in callback.headers.get_all("Set-Cookie")
                          if c.startswith(SESSION_COOKIE + "="))
    assert "Secure" in session_cookie and "HttpOnly" in session_cookie
    assert "SameSite=Lax" in session_cookie and "Domain" not in session_cookie
    assert len(session_cookie.split(";")[0]) < 100  # one small opaque id, whatever the tokens

    final = hops[-1]
    assert final.status == 200, final.body
    seen = upstream.requests[-1]
    assert seen.target == "/app/page?tab=2"
    assert seen.header("x-fluxgate-auth") == "oauth2"
    assert seen.header("x-fluxgate-subject") == setup.server.op_session("alice")["sub"]
    assert "read" in seen.header("x-fluxgate-scopes").split()
    # The upstream never sees the gateway's cookies (nor an access token unless asked).
    assert SESSION_COOKIE not in (seen.header("cookie") or "")
    assert "fluxgate-tx" not in (seen.header("cookie") or "")
    assert seen.header("authorization") is None


def test_other_cookies_reach_the_upstream_and_access_token_when_configured(login_setup, upstream):
    setup = login_setup(forward_access_token=True)
    browser, hops = setup.sign_in()
    assert hops[-1].status == 200
    browser.jar.set_cookie(_cookie("theme", "dark"))
    assert browser.get(setup.url + "/app/x").status == 200
    seen = upstream.requests[-1]
    # (Cookies are not per port: the jar also sends the authorization server's own.)
    assert "theme=dark" in seen.header("cookie")
    assert "fluxgate" not in seen.header("cookie")
    assert (seen.header("authorization") or "").startswith("Bearer ")
    # A client-sent Authorization is not forwarded in its place.
    browser.get(setup.url + "/app/y", headers={"Authorization": "Bearer forged"})
    assert upstream.requests[-1].header("authorization") != "Bearer forged"


def _cookie(name: str, value: str):
    import http.cookiejar

    return http.cookiejar.Cookie(0, name, value, None, False, "127.0.0.1", False, False, "/",
                                 True, False, None, False, None, None, {})


def test_api_and_script_requests_get_401_not_a_redirect(login_setup):
    setup = login_setup()
    browser = setup.browser()
    for path, headers in [("/app/api/items", {}),
                          ("/app/page", {"Accept": "application/json"}),
                          ("/app/page", {"X-Requested-With": "XMLHttpRequest"}),
                          ("/app/page", {"Sec-Fetch-Mode": "cors"})]:
        hop = browser.get(setup.url + path, headers=headers)
        assert hop.status == 401, (path, headers)
        assert json.loads(hop.body)["error"] == "login_required"
    hop = browser.request("POST", setup.url + "/app/page", b"x=1")
    assert hop.status == 401


# ---- hostile callbacks ------------------------------------------------------------------------


def stop_at_callback(setup: LoginSetup):
    return lambda url: url.startswith(setup.url + "/oauth2/callback")


def test_replayed_callback_gets_a_clear_page_not_a_second_session(login_setup, upstream):
    setup = login_setup()
    browser = setup.browser()
    hops = browser.login(setup.url + "/app/page", "alice", setup.server.password("alice"),
                         stop=stop_at_callback(setup))
    callback_url = hops[-1].location
    first = browser.get(callback_url)
    assert first.status == 303
    replay = setup.browser().get(callback_url)  # another browser, no transaction cookie
    assert replay.status == 400 and b"Sign-in could not be completed" in replay.body
    again = browser.get(callback_url)  # the same browser: the transaction was used
    assert again.status == 400
    assert again.headers["Cache-Control"] == "no-store"


def test_tampered_state_and_foreign_issuer_are_refused(login_setup):
    setup = login_setup()
    browser = setup.browser()
    hops = browser.login(setup.url + "/app/page", "alice", setup.server.password("alice"),
                         stop=stop_at_callback(setup))
    callback = urllib.parse.urlsplit(hops[-1].location)
    params = dict(urllib.parse.parse_qsl(callback.query))
    # A state one character off: no transaction cookie matches it.
    tampered = {**params, "state": params["state"][:-1] + ("A" if params["state"][-1] != "A" else "B")}
    hop = browser.get(setup.url + "/oauth2/callback?" + urllib.parse.urlencode(tampered))
    assert hop.status == 400
    # The right state with another issuer (a mix-up attack, RFC 9207).
    mixed = {**params, "iss": "https://evil.example"}
    hop = browser.get(setup.url + "/oauth2/callback?" + urllib.parse.urlencode(mixed))
    assert hop.status == 400
    assert browser.cookie(SESSION_COOKIE) is None
    # The transaction was spent by the refused attempt: the genuine answer no longer works.
    assert browser.get(hops[-1].location).status == 400


def test_access_denied_gets_a_page_not_a_loop(login_setup):
    setup = login_setup()
    browser = setup.browser()
    hops = browser.login(setup.url + "/app/page", "alice", setup.server.password("alice"),
                         stop=stop_at_callback(setup))
    params = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(hops[-1].location).query))
    denied = {"state": params["state"], "error": "access_denied", "iss": params.get("iss", "")}
    hop = browser.get(setup.url + "/oauth2/callback?" + urllib.parse.urlencode(denied))
    assert hop.status == 403 and b"access_denied" in hop.body
    assert hop.location is None


def test_return_path_cannot_redirect_off_site(login_setup):
    setup = login_setup()
    for evil in ["//evil.example/x", "/\\evil.example"]:
        browser = setup.browser()
        hops = browser.login(setup.url + urllib.parse.quote(evil, safe="/\\"), "alice",
                             setup.server.password("alice"))
        for hop in hops:
            assert not (hop.location or "").startswith(("//evil", "/\\", "https://evil"))


# ---- refresh --------------------------------------------------------------------------------


def test_refresh_single_flight_across_workers(login_setup, upstream):
    """Forty concurrent requests over two workers when the access token expires: one
    refresh-token use per rotation, never a reuse (DOT would revoke the whole family)."""
    setup = login_setup(workers=2, access_token_seconds=3, refresh_leeway="1s")
    browser, hops = setup.sign_in()
    assert hops[-1].status == 200
    session = browser.cookie(SESSION_COOKIE)
    headers = {"Cookie": f"{SESSION_COOKIE}={session}", "Accept": "text/html"}
    statuses: list[int] = []
    rounds = 3
    for _ in range(rounds):
        time.sleep(3.2)  # past the access token's expiry
        with concurrent.futures.ThreadPoolExecutor(20) as pool:
            statuses += list(pool.map(
                lambda _i: https_request(setup, "GET", "/app/x", headers)[0], range(40)))
    assert statuses == [200] * (40 * rounds)
    uses = setup.server.refresh_token_uses(setup.client)
    assert not setup.server.refresh_reuse_detected(setup.client), uses
    assert all(count == 1 for count in uses.values()), uses
    # One refresh per expiry, plus those begun early within refresh_leeway.
    assert rounds <= len(uses) <= 2 * rounds, uses


def test_invalid_grant_ends_the_session(login_setup):
    setup = login_setup(access_token_seconds=2, refresh_leeway="1s")
    browser, hops = setup.sign_in()
    assert hops[-1].status == 200
    # The server forgets the user's tokens (as an administrator revoking access would).
    setup.server.revoke_user_tokens("alice")
    time.sleep(2.2)
    hop = browser.get(setup.url + "/app/x", headers={"Accept": "application/json"})
    assert hop.status == 401
    assert browser.cookie(SESSION_COOKIE) is None  # cleared


# ---- CSRF -----------------------------------------------------------------------------------


def test_unsafe_methods_need_this_sites_origin(login_setup, upstream):
    setup = login_setup()
    browser, _ = setup.sign_in()
    cookie = {"Cookie": f"{SESSION_COOKIE}={browser.cookie(SESSION_COOKIE)}"}
    before = len(upstream.requests)
    status, _, _ = https_request(setup, "POST", "/app/orders", {**cookie,
                                 "Origin": "https://evil.example"}, b"{}")
    assert status == 403
    status, _, _ = https_request(setup, "POST", "/app/orders", cookie, b"{}")
    assert status == 403  # no Origin, no Sec-Fetch-Site
    assert len(upstream.requests) == before  # nothing reached the upstream
    status, _, _ = https_request(setup, "POST", "/app/orders", {**cookie, "Origin": setup.url},
                                 b"{}")
    assert status == 200


# ---- logout ---------------------------------------------------------------------------------


def test_logout_ends_the_session_in_every_worker_and_at_the_server(login_setup, upstream):
    setup = login_setup(workers=2)
    browser, hops = setup.sign_in()
    session = browser.cookie(SESSION_COOKIE)
    cookie = {"Cookie": f"{SESSION_COOKIE}={session}", "Accept": "application/json"}
    assert all(https_request(setup, "GET", "/app/x", cookie)[0] == 200 for _ in range(10))
    hop = browser.get(setup.url + "/.fluxgate/logout")
    assert hop.status == 303
    end = urllib.parse.urlsplit(hop.location)
    assert hop.location.startswith(setup.server.end_session_endpoint)
    params = dict(urllib.parse.parse_qsl(end.query))
    assert params["post_logout_redirect_uri"] == f"{setup.url}/app/signed-out"
    assert params["id_token_hint"].count(".") == 2
    assert any(c.startswith(SESSION_COOKIE + "=;") or "Max-Age=0" in c
               for c in hop.headers.get_all("Set-Cookie"))
    # The old cookie is refused by every worker at once.
    assert all(https_request(setup, "GET", "/app/x", cookie)[0] == 401 for _ in range(10))
    # The refresh token was revoked at the server (RFC 7009, in the background).
    assert wait_until(lambda: setup.server.revocations(setup.client), timeout=5)
    # RP-initiated logout at the server lands back on the registered page.
    landing = browser.get(hop.location)
    assert landing.status in (302, 303)
    assert landing.location.startswith(f"{setup.url}/app/signed-out")


def test_cross_site_logout_link_asks_for_a_click(login_setup):
    setup = login_setup()
    browser, _ = setup.sign_in()
    hop = browser.get(setup.url + "/.fluxgate/logout", headers={"Sec-Fetch-Site": "cross-site"})
    assert hop.status == 200 and b"<form method=\"post\"" in hop.body
    assert browser.get(setup.url + "/app/x").status == 200  # still signed in


def test_callback_and_logout_never_reach_the_upstream(login_setup, upstream):
    setup = login_setup()
    before = len(upstream.requests)
    browser = setup.browser()
    for path in ["/oauth2/callback", "/oauth2/callback?code=x&state=y", "/.fluxgate/logout",
                 "/oauth2/callback/../callback?state=" + "A" * 5000]:
        hop = browser.get(setup.url + path)
        assert hop.status in (303, 400, 414, 431), (path, hop.status)
    hop = browser.request("POST", setup.url + "/.fluxgate/logout", b"",
                          headers={"Origin": "https://evil.example"})
    assert hop.status == 403
    assert len(upstream.requests) == before


# ---- back-channel logout --------------------------------------------------------------------


def test_backchannel_logout_ends_the_matching_sessions_and_refuses_hostile_tokens(
        login_setup, upstream):
    from tests.support.logout_tokens import LogoutTokens, claims_of, post_logout_token

    setup = login_setup(workers=2, backchannel_logout_path="/.fluxgate/backchannel-logout")
    browser, hops = setup.sign_in()
    assert hops[-1].status == 200
    cookie = {"Cookie": f"{SESSION_COOKIE}={browser.cookie(SESSION_COOKIE)}",
              "Accept": "application/json"}
    endpoint = setup.url + "/.fluxgate/backchannel-logout"
    tokens = LogoutTokens.for_server(setup.server, setup.client)
    op = setup.server.op_session("alice")
    before = len(upstream.requests)
    for name, token in tokens.hostile(sub=op["sub"], sid=op["sid"]).items():
        status, headers, body = post_logout_token(endpoint, token, setup.ca)
        assert status == 400, (name, status, body)
        assert headers["Cache-Control"] == "no-store"
        assert https_request(setup, "GET", "/app/x", cookie)[0] == 200, name
    assert len(upstream.requests) == before + len(tokens.hostile(sub="x", sid="y"))

    good = tokens.valid(sid=op["sid"])
    status, _, _ = post_logout_token(endpoint, good, setup.ca)
    assert status == 200
    assert all(https_request(setup, "GET", "/app/x", cookie)[0] == 401 for _ in range(6))
    # The same token again (its jti) is a replay.
    status, _, _ = post_logout_token(endpoint, good, setup.ca)
    assert status == 400
    replayed_jti = tokens.valid(sub=op["sub"], jti=claims_of(good)["jti"])
    assert post_logout_token(endpoint, replayed_jti, setup.ca)[0] == 400


def test_a_navigation_on_another_host_name_goes_to_the_callbacks_origin_first(login_setup):
    setup = login_setup()
    status, headers, _ = https_request(setup, "GET", "/app/page?x=1",
                                       {"Host": f"localhost:{setup.gw.port}", "Accept": "text/html"})
    assert status == 302
    assert headers["location"] == f"{setup.url}/app/page?x=1"  # the configured origin
    status, headers, _ = https_request(setup, "GET", "/app/page",
                                       {"Host": "evil.example", "Accept": "text/html"})
    assert status == 302 and headers["location"].startswith(setup.url + "/")


def test_backchannel_logout_whose_body_comes_after_its_head(login_setup, upstream):
    """The logout token in a second packet: the endpoint waits for the whole body (nothing
    is sent upstream meanwhile) and then decides."""
    import socket

    from tests.support.logout_tokens import LogoutTokens

    setup = login_setup(backchannel_logout_path="/.fluxgate/backchannel-logout")
    browser, hops = setup.sign_in()
    cookie = {"Cookie": f"{SESSION_COOKIE}={browser.cookie(SESSION_COOKIE)}",
              "Accept": "application/json"}
    token = LogoutTokens.for_server(setup.server, setup.client).valid(
        sid=setup.server.op_session("alice")["sid"])
    body = urllib.parse.urlencode({"logout_token": token}).encode()
    context = ssl.create_default_context()
    setup.ca.configure_trust(context)
    before = len(upstream.requests)
    with context.wrap_socket(socket.create_connection(("127.0.0.1", setup.gw.port), timeout=10),
                             server_hostname="127.0.0.1") as sock:
        sock.sendall(b"POST /.fluxgate/backchannel-logout HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                     b"Content-Type: application/x-www-form-urlencoded\r\n"
                     b"Content-Length: %d\r\n\r\n" % len(body))
        time.sleep(0.3)
        sock.sendall(body[:100])
        time.sleep(0.3)
        sock.sendall(body[100:])
        answer = sock.recv(65536)
    assert answer.startswith(b"HTTP/1.1 200 "), answer
    assert len(upstream.requests) == before
    assert https_request(setup, "GET", "/app/x", cookie)[0] == 401
