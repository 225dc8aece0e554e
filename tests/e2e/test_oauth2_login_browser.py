"""The browser login in a real browser: Debian's headless chromium (tests/support/browser.py)
clicks through django-oauth-toolkit's login form, lands on the app behind the gateway, keeps
its session across an access-token refresh, and signs out (the gateway's session and the
server's, RP-initiated)."""

from __future__ import annotations

import time

import pytest

from tests.e2e import test_oauth2_login as login_tests
from tests.e2e.test_oauth2_login import SESSION_COOKIE
from tests.support.gateway import wait_until

pytestmark = pytest.mark.slow

ca = login_tests.ca
login_setup = login_tests.login_setup


def wait_for(driver, condition, timeout: float = 15.0) -> None:
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, timeout).until(lambda d: condition(d.current_url))


def test_chromium_signs_in_refreshes_and_signs_out(login_setup, chromium_factory, upstream):
    from selenium.webdriver.common.by import By

    setup = login_setup(access_token_seconds=3, refresh_leeway="1s")
    browser = chromium_factory(trust=[setup.leaf])
    driver = browser.driver

    browser.get(setup.url + "/app/home?tab=orders")
    wait_for(driver, lambda url: url.startswith(setup.server.login_url))
    driver.find_element(By.ID, "id_username").send_keys("alice")
    driver.find_element(By.ID, "id_password").send_keys(setup.server.password("alice"))
    driver.find_element(By.ID, "submit").click()
    wait_for(driver, lambda url: url == setup.url + "/app/home?tab=orders")
    assert upstream.requests[-1].target == "/app/home?tab=orders"
    assert upstream.requests[-1].header("x-fluxgate-subject") == \
        setup.server.op_session("alice")["sub"]

    cookies = {c["name"]: c for c in browser.cookies()}
    session = cookies[SESSION_COOKIE]
    assert session["secure"] and session["httpOnly"] and session["sameSite"] == "Lax"
    assert not any(name.startswith("__Host-fluxgate-tx-") for name in cookies)

    # Past the access token's lifetime: the next navigation is refreshed, not sent to login.
    time.sleep(3.5)
    browser.get(setup.url + "/app/after-refresh")
    wait_for(driver, lambda url: url == setup.url + "/app/after-refresh")
    assert len(setup.server.refresh_token_uses(setup.client)) >= 1
    assert not setup.server.refresh_reuse_detected(setup.client)

    # Sign out: the gateway's session ends, then the server's; the registered landing page
    # is behind the login again, so the browser ends on the server's login form.
    browser.get(setup.url + "/.fluxgate/logout")
    wait_for(driver, lambda url: url.startswith(setup.server.login_url))
    assert SESSION_COOKIE not in {c["name"] for c in browser.cookies()}
    assert wait_until(lambda: setup.server.revocations(setup.client), timeout=5)

    # The console: nothing but the favicon the app behind the gateway does not serve.
    errors = [e for e in browser.console_errors() if "favicon.ico" not in e]
    assert errors == []
