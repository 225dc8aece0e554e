"""OAuth login sessions and introspection results shared by the nodes of a cluster: two
`fluxgate run` nodes on one real redis-server, django-oauth-toolkit as the OpenID Provider
(rotating refresh tokens with reuse protection), the scripted browser of the login tests.

A session made through node A works on node B; a logout on B ends it on A and closes A's
WebSocket bound to it with 4403 within a second; a refresh at the same moment on both nodes
uses each refresh token once; an introspection made on A serves B. Faults: Redis stopped,
restarted empty, slow, and one node partitioned from it: test_cluster_sessions_faults.py.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import http.client
import subprocess
import sys
import time

import pytest

from tests.e2e import test_oauth2_login as login_tests
from tests.support.browserless import Browserless
from tests.support.cluster_login import (
    SESSION_COOKIE,
    SWEEP,
    admin_post,
    client_context,
    cluster,
    cluster_get,
    echo,
    no_500,
    ws_connect,
)
from tests.support.gateway import REPO, wait_until

pytestmark = pytest.mark.slow

ca = login_tests.ca
cluster = cluster  # the fixture


# ---- sessions across nodes ----------------------------------------------------------------------


def test_a_session_made_on_a_works_on_b_and_a_logout_on_b_closes_as_websocket(cluster):
    c = cluster()
    browser = c.sign_in(0)
    cookie = browser.cookie(SESSION_COOKIE)
    assert c.get(browser, 1) == 200  # node B copies the session from Redis
    sockets = [ws_connect(c.nodes[0].port, cookie, c.url(0), c.ca) for _ in range(3)]
    for ws in sockets:
        assert echo(ws, b"before")
    assert browser.get(c.url(1) + "/.fluxgate/logout").status == 303
    for ws in sockets:  # how soon: bench/bench_cluster_sessions.py
        _before, close = ws.recv_until_close()
        assert close is not None and close.close_code == 4403
    for node in (0, 1):
        status, _, _ = cluster_get(c, node, cookie)
        assert status == 401
    no_500(c)


def test_a_sign_in_begun_on_a_may_come_back_to_b_and_only_once(cluster):
    c = cluster()
    browser = Browserless(ca=c.ca)
    callback = c.url(0) + "/oauth2/callback"
    hops = browser.login(c.url(0) + "/app/page", "alice", c.server.password("alice"),
                         stop=lambda url: url.startswith(callback))
    on_b = hops[-1].location.replace(c.url(0), c.url(1), 1)  # the balancer picked B
    transaction = next(f"{k.name}={k.value}" for k in browser.jar
                       if k.name.startswith("__Host-fluxgate-tx-"))
    landed = browser.get(on_b)
    assert landed.status == 303 and landed.headers["Location"] == "/app/page"
    cookie = browser.cookie(SESSION_COOKIE)
    assert cluster_get(c, 0, cookie)[0] == 200 and cluster_get(c, 1, cookie)[0] == 200
    # The transaction was taken: the same answer with its cookie at A again is refused.
    path = hops[-1].location.removeprefix(c.url(0))
    conn = http.client.HTTPSConnection("127.0.0.1", c.nodes[0].port, timeout=10,
                                       context=client_context(c.ca))
    conn.request("GET", path, headers={"Cookie": transaction})
    replay = conn.getresponse()
    assert replay.status == 400 and b"used already" in replay.read()
    conn.close()
    no_500(c)


def test_back_channel_logout_and_fluxctl_revoke_on_b_end_the_session_on_a(cluster):
    from tests.support.logout_tokens import LogoutTokens, post_logout_token

    c = cluster(backchannel_logout_path="/.fluxgate/backchannel-logout")
    first = c.sign_in(0).cookie(SESSION_COOKIE)
    op = c.server.op_session("alice")
    assert cluster_get(c, 1, first)[0] == 200
    tokens = LogoutTokens.for_server(c.server, c.client)
    good = tokens.valid(sid=op["sid"])
    assert post_logout_token(c.url(1) + "/.fluxgate/backchannel-logout", good, c.ca)[0] == 200
    assert wait_until(lambda: cluster_get(c, 0, first)[0] == 401, timeout=2)
    # The same logout token at the other node is a replay there too.
    assert post_logout_token(c.url(0) + "/.fluxgate/backchannel-logout", good, c.ca)[0] == 400

    second = c.sign_in(0).cookie(SESSION_COOKIE)
    assert cluster_get(c, 1, second)[0] == 200
    done = subprocess.run(
        [sys.executable, "-m", "fluxgate.cli.fluxctl", "--config",
         str(c.nodes[1].config_path), "oauth2", "sessions", "revoke", "--sub", op["sub"]],
        cwd=REPO, capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    assert cluster_get(c, 1, second)[0] == 401
    # Node B's master pushes the end made in its file at its next sweep.
    assert wait_until(lambda: cluster_get(c, 0, second)[0] == 401, timeout=SWEEP + 3)
    no_500(c)


def test_refresh_at_the_same_moment_on_two_nodes_uses_each_refresh_token_once(cluster):
    c = cluster(access_token_seconds=3, refresh_leeway="1s")
    browser = c.sign_in(0)
    cookie = browser.cookie(SESSION_COOKIE)
    assert cluster_get(c, 1, cookie)[0] == 200
    statuses: list[int] = []

    def hammer(node: int) -> list[int]:
        seen = []
        deadline = time.monotonic() + 7.0  # two and more access-token lifetimes
        while time.monotonic() < deadline:
            seen.append(cluster_get(c, node, cookie)[0])
        return seen

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        for result in pool.map(hammer, [0, 1] * 4):
            statuses += result
    uses = c.server.refresh_token_uses(c.client)
    assert len(uses) >= 2, uses  # refreshed, more than once
    assert not c.server.refresh_reuse_detected(c.client), uses
    assert set(statuses) == {200}, {s: statuses.count(s) for s in set(statuses)}
    no_500(c)


def test_a_websocket_on_b_lives_through_refreshes_made_on_either_node(cluster):
    c = cluster(access_token_seconds=3, refresh_leeway="1s")
    cookie = c.sign_in(0).cookie(SESSION_COOKIE)
    ws = ws_connect(c.nodes[1].port, cookie, c.url(0), c.ca)
    started = time.monotonic()
    while time.monotonic() - started < 8.0:  # two and more access-token lifetimes
        assert cluster_get(c, 0, cookie)[0] == 200  # node A refreshes when it sees it due
        assert echo(ws, b"still here")
        time.sleep(0.3)
    uses = c.server.refresh_token_uses(c.client)
    assert len(uses) >= 2 and not c.server.refresh_reuse_detected(c.client), uses
    ws.close()
    no_500(c)


def test_an_introspection_made_on_a_serves_b(cluster):
    c = cluster()
    token = c.server.issue_token(scope="read:inventory", user="alice")
    before = c.server.introspection_calls()
    assert cluster_get(c, 0, None, "/inventory/x", bearer=token)[0] == 200
    assert cluster_get(c, 1, None, "/inventory/x", bearer=token)[0] == 200
    assert c.server.introspection_calls() - before == 1
    # An inactive answer is shared too.
    assert cluster_get(c, 0, None, "/inventory/x", bearer="not-issued")[0] == 401
    assert cluster_get(c, 1, None, "/inventory/x", bearer="not-issued")[0] == 401
    assert c.server.introspection_calls() - before == 2
    # Revoked at the server and purged through node A's admin API: gone on B too.
    c.server.revoke(token)
    digest = hashlib.sha256(token.encode()).hexdigest()
    assert admin_post(c.nodes[0], "/admin/oauth2/purge", {"token_sha256": digest}) == 200
    assert wait_until(lambda: cluster_get(c, 1, None, "/inventory/x", bearer=token)[0] == 401,
                      timeout=3)
    no_500(c)
