"""A real headless browser for tests: Debian's chromium driven by its chromedriver through
Selenium, with a fresh profile per browser and the page's console errors collected.

    def test_login(chromium, django_auth_server):
        chromium.get(url)                      # chromium.driver is the Selenium WebDriver
        chromium.driver.find_element(By.ID, "id_username").send_keys("alice")
        assert chromium.console_errors() == []

    def test_https(chromium_factory, gateway_leaf):
        browser = chromium_factory(trust=[gateway_leaf])    # a trustme leaf to accept

Nothing is downloaded: the driver's path is given (Selenium Manager is never asked, and
SE_OFFLINE forbids it to fetch anything). The packages are `chromium` and `chromium-driver`
(`make sysdeps` installs them as root). Without them the fixtures skip, saying so; under CI
(CI=true), where the Makefile installed them, they fail instead.

`RedirectCatcher` is a loopback redirect URI (http, or https with an SSLContext): it answers
every GET with a small page and keeps the query strings and cookies it received.
"""

from __future__ import annotations

import base64
import hashlib
import http.server
import os
import shutil
import tempfile
import threading
import urllib.parse
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
# The machine's network is closed: without the background-networking flags chromium's own
# connections (component updates, sync, QUIC probes) are refused and slow every start.
CHROMIUM_FLAGS = (
    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-dev-shm-usage", "--window-size=1280,900",
)


def chromium_unavailable() -> str | None:
    """Why a headless chromium cannot run here, or None."""
    for path, package in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")):
        if not path.exists():
            return f"{path} is missing (apt-get install {package}; `make sysdeps` as root)"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install -e '.[test]')"
    return None


def spki_sha256(leaf: Any) -> str:
    """base64 SHA-256 of a certificate's public key (SubjectPublicKeyInfo), as chromium's
    --ignore-certificate-errors-spki-list takes it; ``leaf`` is a trustme.LeafCert."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    cert = x509.load_pem_x509_certificate(leaf.cert_chain_pems[0].bytes())
    spki = cert.public_key().public_bytes(serialization.Encoding.DER,
                                          serialization.PublicFormat.SubjectPublicKeyInfo)
    return base64.b64encode(hashlib.sha256(spki).digest()).decode()


class HeadlessChromium:
    """One chromium with its own profile directory, removed on `quit`."""

    def __init__(self, *, trust: list[Any] = (), extra_args: tuple[str, ...] = ()) -> None:
        os.environ["SE_OFFLINE"] = "true"
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service

        self.profile = Path(tempfile.mkdtemp(prefix="fluxgate-chromium-"))
        options = webdriver.ChromeOptions()
        options.binary_location = str(CHROMIUM)
        for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={self.profile}", *extra_args):
            options.add_argument(flag)
        if trust:
            # Accept these test certificates only (chromium honours the list with a
            # --user-data-dir), instead of --ignore-certificate-errors for every site.
            spkis = ",".join(spki_sha256(leaf) for leaf in trust)
            options.add_argument(f"--ignore-certificate-errors-spki-list={spkis}")
        options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
        self._log = open(self.profile.with_suffix(".driver.log"), "wb")
        try:
            self.driver = webdriver.Chrome(
                options=options, service=Service(str(CHROMEDRIVER), log_output=self._log))
        except Exception:
            self._cleanup()
            raise
        self.driver.set_page_load_timeout(20)
        self._console: list[dict[str, Any]] = []

    def get(self, url: str) -> None:
        self.driver.get(url)

    @property
    def url(self) -> str:
        return self.driver.current_url

    def console(self) -> list[dict[str, Any]]:
        """Every console entry so far (chromedriver hands each out once; kept here)."""
        self._console.extend(self.driver.get_log("browser"))
        return list(self._console)

    def console_errors(self) -> list[str]:
        """The messages of SEVERE console entries (errors, failed loads) so far."""
        return [entry["message"] for entry in self.console() if entry["level"] == "SEVERE"]

    def cookies(self) -> list[dict[str, Any]]:
        """The cookies the browser would send to the current page's URL."""
        return self.driver.get_cookies()

    def quit(self) -> None:
        try:
            self.driver.quit()
        finally:
            self._cleanup()

    def _cleanup(self) -> None:
        self._log.close()
        shutil.rmtree(self.profile, ignore_errors=True)
        self.profile.with_suffix(".driver.log").unlink(missing_ok=True)


def _require_chromium() -> None:
    reason = chromium_unavailable()
    if reason is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"headless chromium unavailable under CI: {reason}")
        pytest.skip(f"headless chromium unavailable: {reason}")


@pytest.fixture
def chromium_factory() -> Iterator[Callable[..., HeadlessChromium]]:
    """Start browsers (``trust=[trustme leaf, ...]``, ``extra_args=(...)``); all are quit
    at the end of the test."""
    _require_chromium()
    browsers: list[HeadlessChromium] = []

    def start(**kwargs: Any) -> HeadlessChromium:
        browsers.append(HeadlessChromium(**kwargs))
        return browsers[-1]

    try:
        yield start
    finally:
        for browser in browsers:
            browser.quit()


@pytest.fixture
def chromium(chromium_factory) -> HeadlessChromium:
    """A headless chromium with a fresh profile (no cookies), quit after the test."""
    return chromium_factory()


class RedirectCatcher:
    """A loopback HTTP server that records every GET's path, query and Cookie header and
    answers 200 with a small page (and the ``Set-Cookie`` lines given for that path)."""

    def __init__(self, host: str = "127.0.0.1", ssl_context: Any = None) -> None:
        self.scheme = "https" if ssl_context is not None else "http"
        self.requests: list[tuple[str, dict[str, str]]] = []
        self.set_cookies: dict[str, list[str]] = {}
        self.received_cookies: list[str | None] = []
        catcher = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                parts = urllib.parse.urlsplit(self.path)
                catcher.requests.append(
                    (parts.path, dict(urllib.parse.parse_qsl(parts.query))))
                catcher.received_cookies.append(self.headers.get("Cookie"))
                body = b"<!DOCTYPE html><title>caught</title><p id='caught'>caught</p>"
                self.send_response(200)
                self.send_header("Content-Type", "text/html; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                for cookie in catcher.set_cookies.get(parts.path, []):
                    self.send_header("Set-Cookie", cookie)
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer((host, 0), Handler)
        if ssl_context is not None:
            self.server.socket = ssl_context.wrap_socket(self.server.socket, server_side=True)
        self.port = self.server.server_address[1]
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def url(self, path: str = "/callback", host: str = "127.0.0.1") -> str:
        return f"{self.scheme}://{host}:{self.port}{path}"

    def __enter__(self) -> RedirectCatcher:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(5)
