"""The console in a real browser (Debian's headless chromium through Selenium): sign in with
the admin token, watch req/s move while a bounded load runs, generate a key and use it,
revoke it and see the gateway refuse it, hostile names shown as text, a wrong token and a
forged CSRF token refused, and no console error on the way; and markup that the config
cannot hold (a route path with <script>) rendered as text, from an in-process master.

Screenshots of the console land in the test's directory; with FLUXGATE_CONSOLE_SCREENSHOTS
set to a directory (docs/images for the ones the docs show) they are copied there too.
"""

from __future__ import annotations

import http.client
import os
import shutil
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest

from tests.support.gateway import wait_until

pytestmark = pytest.mark.slow

TOKEN = "test-admin-token"  # tests/support/gateway.py writes it into every config
SECRET = "c" * 40
# The most hostile characters a route path may hold ('<' and '>' are refused by the config).
ODD_ROUTE = "/it's(1)&x=;alert(1)"
XSS_SCOPES = ["<img/src=x/onerror=alert(1)>", "<script>alert(2)</script>"]
XSS_NAME = "<img src=x onerror=alert(3)>"
LOAD_REQUESTS = 400
DEAD_JWKS = "http://127.0.0.1:9/jwks.json"  # nothing listens: the panel shows the error


def config(upstream_url: str) -> str:
    return f"""\
api_keys: {{signing_secret: "{SECRET}"}}
routes:
  - route: /api
    upstream: {upstream_url}
    middleware:
      - api_key: {{}}
  - route: /pub
    upstream: {upstream_url}
    public: true
    middleware:
      - api_key: {{shadow: true}}
  - route: "{ODD_ROUTE}"
    upstream: {upstream_url}
    public: true
  - route: /jwt
    upstream: {upstream_url}
    middleware:
      - jwt: {{issuer: "https://idp.invalid", audience: api, jwks_uri: "{DEAD_JWKS}"}}
"""


def data_request(gw, path: str, key: str | None = None) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=5)
    try:
        conn.request("GET", path, headers={"X-API-Key": key} if key else {})
        resp = conn.getresponse()
        resp.read()
        return resp.status
    finally:
        conn.close()


def bounded_load(gw, count: int, stop: threading.Event) -> threading.Thread:
    """``count`` requests to /pub and a few refused ones to /api, spread over a few seconds
    (a short pause between them), on one keep-alive connection."""
    def run() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=5)
        try:
            for i in range(count):
                if stop.wait(0.01):
                    return
                conn.request("GET", "/api/x" if i % 10 == 0 else "/pub/x")
                conn.getresponse().read()
        finally:
            conn.close()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


class Console:
    """The console page through Selenium."""

    def __init__(self, browser, gw) -> None:
        from selenium.webdriver.common.by import By

        self.browser, self.driver, self.by = browser, browser.driver, By
        self.base = f"http://127.0.0.1:{gw.admin_port}"

    def find(self, css: str):
        return self.driver.find_element(self.by.CSS_SELECTOR, css)

    def text(self, css: str) -> str:
        return self.find(css).text

    def wait(self, condition, timeout: float = 15.0) -> None:
        from selenium.common.exceptions import (
            NoSuchElementException,
            StaleElementReferenceException,
            WebDriverException,
        )
        from selenium.webdriver.support.ui import WebDriverWait

        def asked() -> bool:
            try:
                return condition()
            except WebDriverException as exc:
                # chromedriver's words, not a stale-element error, for an element found
                # on the page a navigation was replacing at that moment (seen at sign-out)
                if "does not belong to the document" in str(exc):
                    return False
                raise

        # The page re-renders its tables every poll and navigates on sign-in and sign-out:
        # an element read a moment ago may be gone; the condition is asked again.
        WebDriverWait(self.driver, timeout, ignored_exceptions=(
            NoSuchElementException, StaleElementReferenceException,
        )).until(lambda d: asked())

    def sign_in(self, token: str) -> None:
        self.browser.get(self.base + "/console")
        field = self.find("#token")
        field.clear()
        field.send_keys(token)
        self.find("#signin").click()

    def key_row(self, name: str):
        for row in self.driver.find_elements(self.by.CSS_SELECTOR, "#keys tbody tr"):
            cells = row.find_elements(self.by.TAG_NAME, "td")
            if cells and cells[0].text == name and cells[2].text in ("active", "grace"):
                return row
        return None

    def key_row_text(self, name: str) -> str:
        """The text of the live row of key ``name`` (waiting for one)."""
        found: list[str] = []

        def read() -> bool:
            row = self.key_row(name)
            if row is not None:
                found.append(row.text)
            return row is not None

        self.wait(read)
        return found[-1]

    def click_key_button(self, name: str, action: str) -> None:
        """Click the ``action`` button of the live row of key ``name`` (the table is
        rebuilt every few seconds: a row found a moment ago may be gone, so ask again)."""
        def click() -> bool:
            row = self.key_row(name)
            if row is None:
                return False
            row.find_element(self.by.CSS_SELECTOR, f"button[data-action={action}]").click()
            return True

        self.wait(click)

    def screenshot(self, directory: Path, name: str) -> None:
        path = directory / name
        self.driver.save_screenshot(str(path))
        target = os.environ.get("FLUXGATE_CONSOLE_SCREENSHOTS")
        if target:
            shutil.copyfile(path, Path(target) / name)


def no_dialog(driver) -> bool:
    from selenium.common.exceptions import NoAlertPresentException

    try:
        driver.switch_to.alert  # noqa: B018 - raises when there is none
    except NoAlertPresentException:
        return True
    return False


def resource_errors_only(errors: list[str], statuses: tuple[int, ...]) -> bool:
    """True when every console error is a refused request with one of ``statuses`` (the
    browser logs each 4xx it was answered): no script error, no CSP violation."""
    allowed = tuple(f"status of {s} " for s in statuses)
    return all("Failed to load resource" in e and any(a in e for a in allowed) for e in errors)


def test_console_in_chromium(gateway_factory, upstream, chromium, tmp_path):
    gw = gateway_factory(config(upstream.url), workers=2)
    page = Console(chromium, gw)
    driver = chromium.driver
    seen = 0

    def new_errors() -> list[str]:
        nonlocal seen
        errors = chromium.console_errors()
        fresh, seen = errors[seen:], len(errors)
        return fresh

    # A wrong token: the sign-in page again, with a 401 and no cookie.
    page.sign_in("not-the-admin-token")
    page.wait(lambda: "not valid" in page.text("main"))
    assert page.find("#token") is not None
    assert not any(c["name"] == "fluxgate_console" for c in chromium.cookies())
    assert resource_errors_only(new_errors(), (401,))  # /console, then the refused sign-in
    page.screenshot(tmp_path, "console-signin.png")

    # The right one: the console, with a session cookie scripts cannot read.
    page.sign_in(TOKEN)
    # The sign-in page is /console too: wait for the session cookie, not for the URL.
    page.wait(lambda: any(c["name"] == "fluxgate_console" for c in chromium.cookies()))
    assert chromium.url == page.base + "/console"
    cookie = next(c for c in chromium.cookies() if c["name"] == "fluxgate_console")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    assert TOKEN not in chromium.url
    assert driver.execute_script("return document.cookie") == ""
    page.wait(lambda: page.text("#generation").startswith("generation 1"))
    assert len(driver.find_elements(page.by.CSS_SELECTOR, "#workers tbody tr")) == 2
    assert resource_errors_only(new_errors(), (401,))  # /console before the sign-in

    # The JWKS provider nobody answers for, with its error; the jwt route's chain.
    def jwks_row() -> list[str]:
        return [td.text for td in driver.find_elements(page.by.CSS_SELECTOR, "#jwks tbody td")]

    page.wait(lambda: jwks_row()[:1] == [DEAD_JWKS] and jwks_row()[-1] not in ("", "–"))
    provider, keys, last_fetch, failures, error = jwks_row()
    assert keys == "0" and last_fetch == "never" and int(failures) >= 1 and "127.0.0.1:9" in error
    page.wait(lambda: "jwt" in page.text("#routes"))

    # Traffic: req/s moves while a bounded load runs.
    assert data_request(gw, "/pub/warm") == 200
    stop = threading.Event()
    load = bounded_load(gw, LOAD_REQUESTS, stop)
    try:
        page.wait(lambda: page.text("#rps") not in ("–", "0", "0.0")
                  and float(page.text("#rps")) > 0)
        page.wait(lambda: page.text("#p99").endswith("ms"))
        page.wait(lambda: "/pub" in page.text("#traffic") and "api_key" in page.text("#auth-failures"))
        # /pub's api_key in shadow mode: every keyless request counted as a refusal it was not.
        page.wait(lambda: "missing_credentials" in page.text("#shadow"))
        page.screenshot(tmp_path, "console-traffic.png")
    finally:
        stop.set()
        load.join(10)

    # The odd route path is shown as text, in the traffic and routes tables.
    page.wait(lambda: ODD_ROUTE in page.text("#routes"))
    assert data_request(gw, "/it's(1)&x=;alert(1)/a") == 200
    page.wait(lambda: ODD_ROUTE in page.text("#traffic"))

    # Generate a key whose scopes are markup: shown once, as text; the gateway takes it.
    page.find("#key-name").send_keys("console-e2e")
    page.find("#key-scopes").send_keys(" ".join(XSS_SCOPES))
    page.find("#key-quota").send_keys("1000/h")
    page.find("#generate-button").click()
    page.wait(lambda: page.find("#new-key").is_displayed())
    key = page.text("#new-key-value")
    assert key.startswith("fg_")
    assert wait_until(lambda: data_request(gw, "/api/x", key) == 200, timeout=5)
    row_text = page.key_row_text("console-e2e")
    for scope in XSS_SCOPES:
        assert scope in row_text
    # A name that is markup is refused by the key API, and the refusal shows it as text.
    page.find("#key-name").send_keys(XSS_NAME)
    page.find("#generate-button").click()
    page.wait(lambda: page.find("#key-message").is_displayed())
    assert XSS_NAME in page.text("#key-message")
    assert driver.find_elements(page.by.CSS_SELECTOR, "main img, main script") == []
    assert no_dialog(driver)
    page.find("#new-key-dismiss").click()
    page.find("#key-name").clear()
    driver.execute_script("document.getElementById('keys-panel').scrollIntoView()")
    page.screenshot(tmp_path, "console-keys.png")

    # Rotate: a new key, shown once; the old one keeps working through its grace period.
    page.click_key_button("console-e2e", "rotate")
    page.wait(lambda: page.find("#new-key").is_displayed()
              and page.text("#new-key-value") not in ("", key))
    rotated = page.text("#new-key-value")
    assert wait_until(lambda: data_request(gw, "/api/x", rotated) == 200, timeout=5)
    assert data_request(gw, "/api/x", key) == 200
    page.find("#new-key-dismiss").click()

    # Revoke each (two clicks: arm, confirm): the gateway refuses both keys.
    for _ in range(2):
        key_id = page.key_row_text("console-e2e").split()[1]
        page.click_key_button("console-e2e", "revoke")  # arms the button
        page.click_key_button("console-e2e", "revoke")  # confirms
        page.wait(lambda key_id=key_id: f"Revoked: console-e2e ({key_id})" in page.text("#key-message"))
    page.wait(lambda: page.key_row("console-e2e") is None)
    assert wait_until(lambda: data_request(gw, "/api/x", key) == 401
                      and data_request(gw, "/api/x", rotated) == 401, timeout=5)

    driver.execute_script("document.getElementById('health-panel').scrollIntoView()")
    page.screenshot(tmp_path, "console-health.png")

    # Since the sign-in, the only console error is the key API's 400 for the markup name.
    errors = new_errors()
    assert len(errors) == 1 and resource_errors_only(errors, (400,)), errors

    # A forged CSRF token (or none) from the page itself: 403.
    statuses = driver.execute_async_script("""
        const done = arguments[arguments.length - 1];
        const post = (headers) => fetch('/console/api/keys/revoke', {
            method: 'POST', credentials: 'same-origin',
            headers: Object.assign({'Content-Type': 'application/json'}, headers),
            body: JSON.stringify({name: 'console-e2e'})}).then((r) => r.status);
        Promise.all([post({'X-CSRF-Token': 'forged'}), post({})]).then(done);
    """)
    assert statuses == [403, 403]
    errors = new_errors()
    assert len(errors) == 2 and resource_errors_only(errors, (403,)), errors
    assert no_dialog(driver)

    # Sign out: back to the sign-in page; the session is gone on the server too.
    page.find("#signout").click()
    page.wait(lambda: "signed out" in page.text("main"))
    conn = http.client.HTTPConnection("127.0.0.1", gw.admin_port, timeout=5)
    conn.request("GET", "/console/api/live", headers={
        "Cookie": f"fluxgate_console={cookie['value']}", "Host": f"127.0.0.1:{gw.admin_port}"})
    assert conn.getresponse().status == 401
    conn.close()
    assert new_errors() == []


def test_markup_in_every_name_renders_as_text(chromium, tmp_path):
    """Names the config cannot hold (a route path with <script>) reach the page through a
    console whose master reports them: a metrics label, a route, a key name, a scope, a
    provider URL and an error message, each markup. All show as text: no element, no
    dialog, no console error."""
    from tests.test_console import HOSTILE_NAME, HOSTILE_ROUTE, Harness
    from tests.test_console import TOKEN as HARNESS_TOKEN

    harness = Harness(tmp_path)
    try:
        page = Console(chromium, SimpleNamespace(admin_port=harness.port))
        page.sign_in(HARNESS_TOKEN)
        page.wait(lambda: chromium.url == page.base + "/console")
        page.wait(lambda: HOSTILE_ROUTE in page.text("#traffic")
                  and HOSTILE_ROUTE in page.text("#routes")
                  and "jwt <b>" in page.text("#routes"))
        page.wait(lambda: HOSTILE_NAME in page.text("#keys")
                  and "<script>alert(1)</script>" in page.text("#keys"))
        page.wait(lambda: "https://idp/<jwks>" in page.text("#jwks")
                  and "<b>timeout</b>" in page.text("#authservers"))
        driver = chromium.driver
        assert driver.find_elements(page.by.CSS_SELECTOR, "main img, main script, main b b") == []
        assert no_dialog(driver)
        errors = [e for e in chromium.console_errors() if "/console - " not in e]
        assert errors == []  # beyond the 401 of /console before the sign-in
    finally:
        harness.close()
