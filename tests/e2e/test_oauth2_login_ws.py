"""WebSockets bound to a browser session, end to end: signed in through django-oauth-toolkit
(tests/e2e/test_oauth2_login.py's setup), a WebSocket over the gateway's TLS listener to the
recording upstream's RFC 6455 echo. A refresh moves the connection's deadline and it stays
open; a refresh that fails for good closes it with 4401; a logout or a revocation anywhere
closes it with 4403 within a second; both sides get the Close frame.
"""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from tests.e2e import test_oauth2_login as login_tests
from tests.e2e.test_oauth2_login import SESSION_COOKIE, LoginSetup, https_request
from tests.support.cluster_login import ws_connect as tls_ws_connect
from tests.support.gateway import REPO, wait_until
from tests.support.websocket import OP_TEXT, WsClient

pytestmark = pytest.mark.slow

# The login tests' fixtures: a trustme CA, and the gateway + authorization server setup.
ca = login_tests.ca
login_setup = login_tests.login_setup


def ws_connect(setup: LoginSetup, cookie: str | None, origin: str | None) -> WsClient:
    """An RFC 6455 handshake over TLS; raises ConnectionError for anything but 101."""
    return tls_ws_connect(setup.gw.port, cookie, origin, setup.ca)


def echo(ws: WsClient, text: bytes) -> bool:
    ws.send(OP_TEXT, text)
    frame = ws.recv_frame()
    return frame is not None and frame.opcode == OP_TEXT and frame.payload == text


def upstream_close_codes(upstream) -> list[int]:
    return [event[1] for event in upstream.ws_events if event[0] == "close"]


def signed_in(setup: LoginSetup) -> str:
    browser, hops = setup.sign_in()
    assert hops[-1].status == 200
    return browser.cookie(SESSION_COOKIE)


def test_websocket_lives_through_three_refreshes(login_setup, upstream):
    setup = login_setup(access_token_seconds=3, refresh_leeway="1s")
    cookie = signed_in(setup)
    ws = ws_connect(setup, cookie, setup.url)
    ws.sock.settimeout(5)
    started = time.monotonic()
    while time.monotonic() - started < 10.5:  # three and a half access-token lifetimes
        assert echo(ws, b"still here %f" % time.monotonic())
        time.sleep(0.5)
    uses = setup.server.refresh_token_uses(setup.client)
    assert len(uses) >= 3, uses
    assert not setup.server.refresh_reuse_detected(setup.client)
    ws.close()


def test_websocket_closes_with_4401_when_the_session_cannot_be_refreshed(login_setup, upstream):
    setup = login_setup(access_token_seconds=3, refresh_leeway="1s")
    cookie = signed_in(setup)
    ws = ws_connect(setup, cookie, setup.url)
    ws.sock.settimeout(8)
    assert echo(ws, b"hello")
    setup.server.revoke_user_tokens("alice")
    _before, close = ws.recv_until_close()
    assert close is not None and close.close_code == 4401
    assert wait_until(lambda: 4401 in upstream_close_codes(upstream), timeout=3)
    assert ws.read_eof()


@pytest.mark.parametrize("how", ["logout", "fluxctl"])
def test_logout_elsewhere_closes_the_websocket_with_4403(login_setup, upstream, how):
    setup = login_setup(workers=2)
    browser, hops = setup.sign_in()
    cookie = browser.cookie(SESSION_COOKIE)
    sockets = [ws_connect(setup, cookie, setup.url) for _ in range(4)]  # both workers, likely
    for ws in sockets:
        ws.sock.settimeout(5)
        assert echo(ws, b"before")
    if how == "logout":
        assert browser.get(setup.url + "/.fluxgate/logout").status == 303
    else:
        done = subprocess.run(
            [sys.executable, "-m", "fluxgate.cli.fluxctl", "--config", str(setup.gw.config_path),
             "oauth2", "sessions", "revoke", "--sub", setup.server.op_session("alice")["sub"]],
            cwd=REPO, capture_output=True, text=True, timeout=30)
        assert done.returncode == 0, done.stderr
    ended = time.monotonic()
    for ws in sockets:
        _before, close = ws.recv_until_close()
        assert close is not None and close.close_code == 4403
    assert time.monotonic() - ended < 1.5  # within a second of the logout (plus the sweep)
    assert wait_until(lambda: upstream_close_codes(upstream).count(4403) >= 4, timeout=3)


def test_upgrade_needs_a_session_and_this_sites_origin(login_setup, upstream):
    setup = login_setup()
    cookie = signed_in(setup)
    before = len(upstream.requests)
    for cookie_value, origin in [(None, setup.url), (cookie, "https://evil.example"),
                                 (cookie, None), ("forged" * 7 + "x", setup.url)]:
        with pytest.raises(ConnectionError) as refused:
            ws_connect(setup, cookie_value, origin)
        assert " 401 " in str(refused.value) or " 403 " in str(refused.value)
    assert len(upstream.requests) == before
    status, _, _ = https_request(setup, "GET", "/app/x", {"Cookie": f"{SESSION_COOKIE}={cookie}"})
    assert status == 200
