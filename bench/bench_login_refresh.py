"""Refresh under load for browser sessions: how many requests one refresh serves, and that a
rotated refresh token is never presented twice, however many connections and workers hit
the session when its access token runs out.

    .venv/bin/python -m pytest bench/bench_login_refresh.py -m e2e -s

A real `fluxgate run` (2 workers, TLS), django-oauth-toolkit as the OpenID Provider with
3-second access tokens, refresh-token rotation and reuse protection (a second use of a
refresh token revokes the whole family, which would end the session). One session signed in
through the scripted browser, then CONNECTIONS threads send requests with its cookie for
DURATION seconds (bounded in time and count). The server's log of refresh grants counts
each refresh token's uses.
"""

from __future__ import annotations

import http.client
import ssl
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
import trustme

from tests.support.authserver import DjangoAuthServer
from tests.support.browserless import Browserless
from tests.support.certs import write_pair
from tests.support.gateway import GatewayProcess, free_port
from tests.support.upstream import RecordingUpstream

pytestmark = pytest.mark.e2e

CONNECTIONS = 32
DURATION = 12.0  # four access-token lifetimes
MAX_REQUESTS = 200_000
ACCESS_TOKEN_SECONDS = 3
SESSION_COOKIE = "__Host-fluxgate"


def _config(upstream_url: str, server: DjangoAuthServer, client, port: int) -> str:
    return (
        "routes:\n"
        f"  - route: /app\n    upstream: {upstream_url}\n    middleware:\n"
        "      - oauth2:\n"
        f"          issuer: {server.issuer}\n"
        f"          client_id: {client.client_id}\n"
        f"          client_secret: '{client.client_secret}'\n"
        "          login: true\n"
        f"          redirect_uri: https://127.0.0.1:{port}/oauth2/callback\n"
        "          refresh_leeway: 1s\n"
    )


def _hammer(port: int, context: ssl.SSLContext, cookie: str, deadline: float,
            statuses: Counter, lock: threading.Lock, budget: list[int]) -> None:
    conn = http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=10)
    headers = {"Cookie": f"{SESSION_COOKIE}={cookie}", "Accept": "application/json"}
    local: Counter = Counter()
    try:
        while time.monotonic() < deadline:
            with lock:
                if budget[0] <= 0:
                    break
                budget[0] -= 1
            conn.request("GET", "/app/data", headers=headers)
            response = conn.getresponse()
            response.read()
            local[response.status] += 1
    finally:
        conn.close()
        with lock:
            statuses.update(local)


def test_refresh_under_concurrent_load(tmp_path: Path) -> None:
    ca = trustme.CA()
    upstream = RecordingUpstream().start()
    server = DjangoAuthServer(tmp_path).start()
    gw = None
    try:
        port = free_port()
        client = server.register_client([f"https://127.0.0.1:{port}/oauth2/callback"],
                                        access_token_seconds=ACCESS_TOKEN_SECONDS)
        cert, key = write_pair(ca.issue_cert("127.0.0.1"), tmp_path, "gw")
        listen = f"{{address: '127.0.0.1:{port}', tls: {{cert: '{cert}', key: '{key}'}}}}"
        (tmp_path / "gw").mkdir()
        gw = GatewayProcess(tmp_path / "gw", _config(upstream.url, server, client, port),
                            workers=2, listen=listen).start()
        browser = Browserless(ca=ca)
        hops = browser.login(f"https://127.0.0.1:{port}/app/", "alice", server.password("alice"))
        assert hops[-1].status == 200, hops[-1].body
        cookie = browser.cookie(SESSION_COOKIE)
        context = ssl.create_default_context()
        ca.configure_trust(context)
        statuses: Counter = Counter()
        lock = threading.Lock()
        budget = [MAX_REQUESTS]
        started = time.monotonic()
        deadline = started + DURATION
        threads = [threading.Thread(target=_hammer, args=(port, context, cookie, deadline,
                                                          statuses, lock, budget))
                   for _ in range(CONNECTIONS)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(DURATION + 30)
        elapsed = time.monotonic() - started
        uses = server.refresh_token_uses(client)
        grants = server.refresh_grants(client)
        total = sum(statuses.values())
        refreshes = len(uses)
        print()
        print(f"{CONNECTIONS} connections over 2 workers for {elapsed:.1f} s, access tokens of "
              f"{ACCESS_TOKEN_SECONDS} s, refresh_leeway 1 s")
        print(f"requests: {total} ({total / elapsed:.0f}/s), statuses {dict(statuses)}")
        print(f"refresh grants at the server: {len(grants)}; distinct refresh tokens used: "
              f"{refreshes}; most uses of one refresh token: {max(uses.values(), default=0)}; "
              f"reuse detected: {server.refresh_reuse_detected(client)}")
        if refreshes:
            print(f"requests per refresh: {total / refreshes:.0f}")
        assert statuses.keys() == {200}, statuses
        assert not server.refresh_reuse_detected(client)
        assert all(count == 1 for count in uses.values()), uses
    finally:
        if gw is not None:
            gw.stop()
        server.stop()
        upstream.stop()
