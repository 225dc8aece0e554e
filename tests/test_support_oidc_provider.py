"""The test authorization server as an OpenID Provider (tests/support/authserver.py), the
scripted browser (tests/support/browserless.py) and the logout tokens
(tests/support/logout_tokens.py), checked on their own so that a failing login test points at
the gateway. Each test registers its own client: the server is shared by the session."""

from __future__ import annotations

import json
import secrets
import ssl
import time
import urllib.error
import urllib.parse

import jwt
import pytest
import trustme

from tests.support.authserver import Pkce, token_digest
from tests.support.browser import RedirectCatcher
from tests.support.browserless import Browserless, LoginFailed
from tests.support.logout_tokens import (
    BACKCHANNEL_LOGOUT_EVENT,
    LogoutTokens,
    claims_of,
    post_logout_token,
)

RP = "http://127.0.0.1:9/"  # the relying party: never fetched, the walks stop before it
CALLBACK = RP + "callback"


def at_callback(url: str) -> bool:
    return url.startswith(RP)


def login(server, client, *, state: str = "st-1", nonce: str = "n-1", approve: bool = True,
          pkce: Pkce | None = None, browser: Browserless | None = None, **extra: str):
    """Walk a login as alice up to the callback; (browser, hops, callback query, pkce)."""
    browser = browser or Browserless()
    pkce = pkce or Pkce.new()
    url = server.authorization_url(client, state=state, nonce=nonce, pkce=pkce, **extra)
    hops = browser.login(url, "alice", server.password("alice"), approve=approve,
                         stop=at_callback)
    return browser, hops, hops[-1].query(), pkce


@pytest.fixture
def client(django_auth_server):
    return django_auth_server.register_client([CALLBACK], ["http://127.0.0.1:9/bye"],
                                              access_token_seconds=3, id_token_seconds=30)


# ---- discovery --------------------------------------------------------------------------------


def test_discovery_describes_an_openid_provider(django_auth_server):
    server = django_auth_server
    oidc = server.discovery()
    assert oidc["issuer"] == server.issuer
    assert oidc["authorization_endpoint"] == server.authorization_endpoint
    assert oidc["token_endpoint"] == server.token_endpoint
    assert oidc["userinfo_endpoint"] == server.userinfo_endpoint
    assert oidc["end_session_endpoint"] == server.end_session_endpoint
    assert oidc["code_challenge_methods_supported"] == ["S256"]  # plain is not offered
    assert oidc["authorization_response_iss_parameter_supported"] is True
    assert "RS256" in oidc["id_token_signing_alg_values_supported"]
    metadata = json.loads(server._request("GET", "/.well-known/oauth-authorization-server/o")[1])
    assert metadata["revocation_endpoint"] == server.revocation_endpoint
    assert metadata["authorization_response_iss_parameter_supported"] is True
    jwks = json.loads(server._request("GET", "/o/.well-known/jwks.json")[1])
    assert [key["kid"] for key in jwks["keys"]] == [server.signing_key.kid]
    assert jwks["keys"][0]["n"] == server.signing_key.jwk()["n"]


# ---- the login --------------------------------------------------------------------------------


def test_browserless_login_gets_a_code_for_the_redirect_uri(django_auth_server, client):
    server = django_auth_server
    browser, hops, query, pkce = login(server, client, state="s-42")
    assert [(h.method, urllib.parse.urlsplit(h.url).path, h.status) for h in hops] == [
        ("GET", "/o/authorize/", 302), ("GET", "/accounts/login/", 200),
        ("POST", "/accounts/login/", 302), ("GET", "/o/authorize/", 302)]
    assert hops[-1].location.startswith(CALLBACK + "?")
    assert set(query) == {"code", "state", "iss"}
    assert query["state"] == "s-42" and query["iss"] == server.issuer
    assert browser.cookie("sessionid") is not None  # the AS's own session

    status, tokens = server.exchange_code(client, query["code"], pkce.verifier)
    assert status == 200, tokens
    assert tokens["expires_in"] == 3 and tokens["token_type"] == "Bearer"
    claims = server.verify_id_token(tokens["id_token"], client)
    session = server.op_session("alice")
    assert claims["nonce"] == "n-1" and claims["preferred_username"] == "alice"
    assert claims["sub"] == session["sub"] and claims["sid"] == session["sid"]
    assert claims["exp"] - claims["iat"] in (30, 31)
    status, body = server._request("GET", "/o/userinfo/",
                                   headers={"Authorization": f"Bearer {tokens['access_token']}"})
    assert status == 200 and json.loads(body)["sub"] == session["sub"]

    # The code works once.
    status, answer = server.exchange_code(client, query["code"], pkce.verifier)
    assert (status, answer["error"]) == (400, "invalid_grant")


def test_pkce_is_required_and_s256_only(django_auth_server, client):
    server = django_auth_server
    browser = Browserless()
    browser.login(server.authorization_url(client, state="warm", pkce=Pkce.new()), "alice",
                  server.password("alice"), stop=at_callback)
    # No challenge, or a plain one: an error sent back to the client, no code.
    for extra in ({}, {"code_challenge": "x" * 43, "code_challenge_method": "plain"}):
        url = server.authorization_url(client, state="s", pkce=None, **extra)
        hop = browser.get(url)
        query = hop.query()
        assert hop.status == 302 and "code" not in query
        assert query["error"] == "invalid_request" and query["state"] == "s"
    # A wrong verifier, and none at all.
    for verifier, error in ((Pkce.new().verifier, "invalid_grant"), (None, "invalid_request")):
        _, _, query, _ = login(server, client, browser=browser)
        status, answer = server.exchange_code(client, query["code"], verifier)
        assert (status, answer["error"]) == (400, error)


def test_a_wrong_password_shows_the_form_again(django_auth_server, client):
    server = django_auth_server
    url = server.authorization_url(client, state="s", pkce=Pkce.new())
    with pytest.raises(LoginFailed) as failure:
        Browserless().login(url, "alice", "not-her-password", stop=at_callback)
    assert failure.value.hops[-1].status == 200 and "Wrong username" in failure.value.hops[-1].text


def test_consent_screen_when_asked_for(django_auth_server):
    server = django_auth_server
    client = server.register_client([CALLBACK], skip_authorization=False)
    _, hops, query, _ = login(server, client, state="yes")
    assert hops[-2].method == "GET" and "Authorize" in hops[-2].text  # the consent page
    assert hops[-1].method == "POST" and set(query) == {"code", "state", "iss"}
    _, _, query, _ = login(server, client, state="no", approve=False)
    assert query["error"] == "access_denied" and query["state"] == "no"
    assert "code" not in query


def test_iss_parameter_can_be_dropped_or_wrong(django_auth_server, client):
    server = django_auth_server
    try:
        server.set_authorization_response_iss(False)
        _, _, query, _ = login(server, client)
        assert "iss" not in query and "code" in query
        assert "authorization_response_iss_parameter_supported" not in server.discovery()
        server.set_authorization_response_iss("https://impostor.example")
        _, _, query, _ = login(server, client)
        assert query["iss"] == "https://impostor.example"
        assert server.discovery()["authorization_response_iss_parameter_supported"] is True
    finally:
        server.set_authorization_response_iss(True)
    _, _, query, _ = login(server, client)
    assert query["iss"] == server.issuer


def test_a_client_registration_can_be_replaced(django_auth_server, client):
    server = django_auth_server
    other = "http://127.0.0.1:9/elsewhere"
    url = server.authorization_url(client, state="s", pkce=Pkce.new(), redirect_uri=other)
    # An unregistered redirect URI: an error page at the AS, never a redirect to it.
    hop = Browserless().login(url, "alice", server.password("alice"), stop=at_callback)[-1]
    assert hop.status == 400 and hop.location is None
    moved = server.register_client([other], client_id=client.client_id,
                                   client_secret=client.client_secret)
    _, _, query, _ = login(server, moved, redirect_uri=other)
    assert "code" in query


# ---- refresh, reuse and revocation ------------------------------------------------------------


def test_refresh_rotates_and_a_reused_token_revokes_the_family(django_auth_server, client):
    server = django_auth_server
    _, _, query, pkce = login(server, client)
    first = server.exchange_code(client, query["code"], pkce.verifier)[1]
    status, second = server.refresh(client, first["refresh_token"])
    assert status == 200 and second["refresh_token"] != first["refresh_token"]
    server.verify_id_token(second["id_token"], client)  # a new ID token on refresh
    assert server.refresh_token_uses(client) == {token_digest(first["refresh_token"]): 1}
    assert server.refresh_reuse_detected(client) is False

    status, answer = server.refresh(client, first["refresh_token"])  # reuse
    assert (status, answer["error"]) == (400, "invalid_grant")
    # Reuse protection revoked the whole family: the rotated token is dead too.
    status, answer = server.refresh(client, second["refresh_token"])
    assert (status, answer["error"]) == (400, "invalid_grant")
    assert json.loads(server.introspect(second["access_token"])[1]) == {"active": False}
    assert server.refresh_reuse_detected(client) is True
    assert server.refresh_token_uses(client) == {
        token_digest(first["refresh_token"]): 2, token_digest(second["refresh_token"]): 1}
    assert [(g["status"], g["error"]) for g in server.refresh_grants(client)] == [
        (200, None), (400, "invalid_grant"), (400, "invalid_grant")]


def test_revocation_is_logged_and_ends_the_refresh_token(django_auth_server, client):
    server = django_auth_server
    _, _, query, pkce = login(server, client)
    tokens = server.exchange_code(client, query["code"], pkce.verifier)[1]
    status, _ = server._post_form(
        "/o/revoke_token/", [("token", tokens["refresh_token"]),
                             ("token_type_hint", "refresh_token")],
        basic=(client.client_id, client.client_secret))
    assert status == 200
    assert server.revocations(client) == [{
        "client_id": client.client_id, "status": 200, "error": None,
        "digest": token_digest(tokens["refresh_token"]), "token_type_hint": "refresh_token"}]
    assert server.refresh(client, tokens["refresh_token"])[1]["error"] == "invalid_grant"
    assert server.refresh_reuse_detected(client) is False  # presented once, refused


def test_revoking_a_users_tokens_makes_refresh_fail(django_auth_server, client):
    server = django_auth_server
    other = server.register_client([CALLBACK])
    _, _, query, pkce = login(server, client)
    tokens = server.exchange_code(client, query["code"], pkce.verifier)[1]
    _, _, query, pkce = login(server, other)
    kept = server.exchange_code(other, query["code"], pkce.verifier)[1]
    assert server.revoke_user_tokens("alice", client) == {"refresh_tokens": 1,
                                                          "access_tokens": 0}
    assert json.loads(server.introspect(tokens["access_token"])[1]) == {"active": False}
    assert server.refresh(client, tokens["refresh_token"])[1]["error"] == "invalid_grant"
    assert server.refresh(other, kept["refresh_token"])[0] == 200  # another client's: kept


def test_access_tokens_expire_after_the_clients_lifetime(django_auth_server):
    server = django_auth_server
    client = server.register_client([CALLBACK], access_token_seconds=1)
    _, _, query, pkce = login(server, client)
    tokens = server.exchange_code(client, query["code"], pkce.verifier)[1]
    assert tokens["expires_in"] == 1
    assert json.loads(server.introspect(tokens["access_token"])[1])["active"] is True
    time.sleep(1.2)
    assert json.loads(server.introspect(tokens["access_token"])[1]) == {"active": False}
    assert server.refresh(client, tokens["refresh_token"])[0] == 200  # refresh still works


# ---- RP-initiated logout ----------------------------------------------------------------------


def test_rp_initiated_logout_redirects_and_ends_the_op_session(django_auth_server, client):
    server = django_auth_server
    browser, _, query, pkce = login(server, client)
    tokens = server.exchange_code(client, query["code"], pkce.verifier)[1]
    assert server.op_session("alice")["sid"] is not None

    unregistered = server.end_session_endpoint + "?" + urllib.parse.urlencode({
        "id_token_hint": tokens["id_token"], "post_logout_redirect_uri": "https://evil.example/",
        "state": "x"})
    hop = browser.get(unregistered)
    assert hop.status == 400 and hop.location is None

    hop = browser.get(server.end_session_endpoint + "?" + urllib.parse.urlencode({
        "id_token_hint": tokens["id_token"], "client_id": client.client_id,
        "post_logout_redirect_uri": client.post_logout_redirect_uris[0], "state": "bye-1"}))
    assert hop.status == 302
    assert hop.location == client.post_logout_redirect_uris[0] + "?state=bye-1"
    assert server.op_session("alice")["sid"] is None
    assert json.loads(server.introspect(tokens["access_token"])[1]) == {"active": False}
    log = server.log()
    assert "id_token_hint=[redacted]" in log and tokens["id_token"] not in log
    # The AS session is over: the next authorization asks for the password again.
    url = server.authorization_url(client, state="again", pkce=Pkce.new())
    assert urllib.parse.urlsplit(browser.get(url).location).path == "/accounts/login/"


# ---- logout tokens ------------------------------------------------------------------------------


class ReferenceLogoutVerifier:
    """The checks of OIDC Back-Channel Logout 1.0 section 2.6, with PyJWT: what the gateway
    must do too. Here it proves that every hostile token is really wrong."""

    def __init__(self, server, client) -> None:
        self.server, self.client = server, client
        self.seen: set[str] = set()

    def __call__(self, token: str) -> dict:
        header = jwt.get_unverified_header(token)
        assert header.get("kid") == self.server.signing_key.kid
        claims = jwt.decode(token, self.server.signing_key.public, algorithms=["RS256"],
                            audience=self.client.client_id, issuer=self.server.issuer,
                            options={"require": ["iss", "aud", "iat", "exp", "jti"]})
        assert claims["iat"] <= time.time() + 60
        assert isinstance(claims.get("events"), dict)
        assert claims["events"].get(BACKCHANNEL_LOGOUT_EVENT) == {}
        assert "sub" in claims or "sid" in claims
        assert "nonce" not in claims
        assert claims["jti"] not in self.seen
        self.seen.add(claims["jti"])
        return claims


def test_logout_tokens_valid_and_hostile(django_auth_server, client):
    server = django_auth_server
    tokens = LogoutTokens.for_server(server, client)
    verify = ReferenceLogoutVerifier(server, client)
    good = tokens.valid(sub="7", sid="sid-7")
    claims = verify(good)
    assert claims["sub"] == "7" and claims["sid"] == "sid-7"
    assert jwt.get_unverified_header(good)["typ"] == "logout+jwt"
    assert verify(tokens.valid(sid="only-sid"))["sid"] == "only-sid"
    hostile = tokens.hostile(sub="7", sid="sid-7")
    assert len(hostile) >= 15
    for name, token in hostile.items():
        with pytest.raises((jwt.InvalidTokenError, AssertionError, ValueError)):
            verify(token)
            pytest.fail(f"{name} passed the reference verifier")
    with pytest.raises(AssertionError):  # a replay of good's jti
        verify(tokens.valid(sub="7", jti=claims_of(good)["jti"]))
    with pytest.raises(ValueError):
        tokens.claims()


def test_post_logout_token_sends_the_form(tmp_path):
    ca = trustme.CA()
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    with RedirectCatcher(ssl_context=context) as catcher:
        # The catcher only answers GET: a POST gets 501, which still shows the request came.
        status, _, _ = post_logout_token(catcher.url("/bcl"), "a.b.c", ca)
        assert status == 501


# ---- the scripted browser ---------------------------------------------------------------------


def test_browserless_keeps_secure_cookies_for_https_and_loopback():
    ca = trustme.CA()
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(context)
    cookies = ["__Host-s=1; Secure; HttpOnly; Path=/; SameSite=Lax", "plain=2; Path=/"]
    with RedirectCatcher(ssl_context=context) as tls, RedirectCatcher() as plain:
        tls.set_cookies["/set"] = plain.set_cookies["/set"] = cookies
        browser = Browserless(ca=ca)
        browser.get(tls.url("/set"))
        browser.get(tls.url("/check"))
        assert tls.received_cookies[-1] == "__Host-s=1; plain=2"
        assert browser.cookie("__Host-s") == "1"
        for loopback_is_secure, expected in ((True, "__Host-s=1; plain=2"), (False, "plain=2")):
            browser = Browserless(loopback_is_secure=loopback_is_secure)
            browser.get(plain.url("/set"))
            browser.get(plain.url("/check"))
            assert plain.received_cookies[-1] == expected
    with RedirectCatcher(ssl_context=context) as tls:
        with pytest.raises(urllib.error.URLError) as refused:  # an unknown CA is refused
            Browserless().get(tls.url("/"))
        assert isinstance(refused.value.reason, ssl.SSLCertVerificationError)


def test_browserless_returns_redirects_and_errors_unfollowed():
    with RedirectCatcher() as catcher:
        browser = Browserless()
        hop = browser.get(catcher.url("/x?a=1"))
        assert (hop.status, hop.location, catcher.requests) == (200, None, [("/x", {"a": "1"})])
        assert browser.history == [hop]
        nonce = secrets.token_hex(4)
        assert browser.post_form(catcher.url(f"/{nonce}"), {"a": "b"}).status == 501
