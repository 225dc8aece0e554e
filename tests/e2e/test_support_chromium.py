"""The real headless browser (tests/support/browser.py) against the test authorization server:
the login through the form lands on a loopback redirect URI, and what this chromium does with
Secure and __Host- cookies on plain-http loopback origins, which decides whether a gateway
under a browser test needs https."""

from __future__ import annotations

import secrets

import pytest

from tests.support.authserver import Pkce
from tests.support.browser import RedirectCatcher

pytestmark = pytest.mark.slow


def test_chromium_logs_in_and_the_redirect_uri_gets_code_state_and_iss(chromium,
                                                                       django_auth_server):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    server = django_auth_server
    with RedirectCatcher() as catcher:
        client = server.register_client([catcher.url("/callback")])
        pkce, state, nonce = Pkce.new(), secrets.token_urlsafe(16), secrets.token_urlsafe(16)
        chromium.get(server.authorization_url(client, state=state, nonce=nonce, pkce=pkce))
        assert chromium.url.startswith(server.login_url)
        chromium.driver.find_element(By.ID, "id_username").send_keys("alice")
        chromium.driver.find_element(By.ID, "id_password").send_keys(server.password("alice"))
        chromium.driver.find_element(By.ID, "submit").click()
        WebDriverWait(chromium.driver, 15).until(
            lambda driver: driver.current_url.startswith(catcher.url("/callback")))
        assert chromium.driver.find_element(By.ID, "caught").text == "caught"

        path, query = catcher.requests[0]
        assert path == "/callback" and set(query) == {"code", "state", "iss"}
        assert query["state"] == state and query["iss"] == server.issuer
        status, tokens = server.exchange_code(client, query["code"], pkce.verifier)
        assert status == 200, tokens
        claims = server.verify_id_token(tokens["id_token"], client)
        assert claims["nonce"] == nonce and claims["preferred_username"] == "alice"
        assert claims["sid"] == server.op_session("alice")["sid"]
        assert chromium.console_errors() == []


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
def test_chromium_keeps_secure_and_host_cookies_on_plain_http_loopback(chromium, host):
    """Chromium treats http://127.0.0.1 and http://localhost as potentially trustworthy: it
    stores Secure and __Host- cookies they set over plain http and sends them back. So a
    gateway under a browser test on loopback may speak plain http; its __Host- cookies work."""
    with RedirectCatcher() as catcher:
        catcher.set_cookies["/set"] = [
            "plain=1; Path=/", "secure=2; Secure; Path=/",
            "__Host-session=3; Secure; HttpOnly; Path=/; SameSite=Lax",
            "__Host-nosecure=4; Path=/",  # the prefix demands Secure: refused
        ]
        chromium.get(catcher.url("/set", host))
        chromium.get(catcher.url("/check", host))
        sent = sorted(catcher.received_cookies[-1].split("; "))
        assert sent == ["__Host-session=3", "plain=1", "secure=2"]
        stored = {cookie["name"]: cookie for cookie in chromium.cookies()}
        assert stored["__Host-session"]["secure"] is True
        assert stored["__Host-session"]["httpOnly"] is True
