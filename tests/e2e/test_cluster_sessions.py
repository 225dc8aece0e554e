"""OAuth login sessions and introspection results shared by the nodes of a cluster: two
`fluxgate run` nodes on one real redis-server, django-oauth-toolkit as the OpenID Provider
(rotating refresh tokens with reuse protection), the scripted browser of the login tests.

A session made through node A works on node B; a logout on B ends it on A and closes A's
WebSocket bound to it with 4403 within a second; a refresh at the same moment on both nodes
uses each refresh token once; an introspection made on A serves B. Faults: Redis stopped,
restarted empty, slow, and one node partitioned from it; never a 500.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import http.client
import json
import ssl
import subprocess
import sys
import time
from dataclasses import dataclass, field

import pytest

from tests.e2e import test_oauth2_login as login_tests
from tests.support.browserless import Browserless
from tests.support.certs import write_pair
from tests.support.cluster_login import (
    SESSION_COOKIE,
    SWEEP,
    callback_url,
    echo,
    metric,
    node_config,
    session_get,
    signed_out_url,
    tls_listen,
    ws_connect,
)
from tests.support.gateway import REPO, GatewayProcess, free_port, wait_until
from tests.support.redis_server import FaultRelay

pytestmark = pytest.mark.slow

ca = login_tests.ca


@dataclass
class Cluster:
    nodes: list[GatewayProcess]
    server: object
    client: object
    ca: object
    relays: list = field(default_factory=list)

    def url(self, node: int) -> str:
        return f"https://127.0.0.1:{self.nodes[node].port}"

    def sign_in(self, node: int = 0) -> Browserless:
        browser = Browserless(ca=self.ca)
        hops = browser.login(self.url(node) + "/app/page", "alice",
                             self.server.password("alice"))
        assert hops[-1].status == 200, hops[-1].text
        return browser

    def get(self, browser: Browserless, node: int, path: str = "/app/x") -> int:
        """The status of a script's request (401, not a redirect, without a session)."""
        return browser.get(self.url(node) + path, headers={"Accept": "application/json"}).status


@pytest.fixture
def cluster(tmp_path, ca, upstream, django_auth_server, redis_server):
    started: list[GatewayProcess] = []
    relays: list[FaultRelay] = []

    def start(nodes: int = 2, access_token_seconds: int = 60, relay_for: tuple[int, ...] = (),
              workers: int = 2, on_store_down: str = "local", **options: object) -> Cluster:
        server = django_auth_server
        ports = [free_port() for _ in range(nodes)]
        # One site behind the nodes: the callback and the post-logout page are node A's.
        client = server.register_client([callback_url(ports[0])], [signed_out_url(ports[0])],
                                        access_token_seconds=access_token_seconds)
        leaf = ca.issue_cert("127.0.0.1")
        gateways = []
        for index, port in enumerate(ports):
            store = redis_server.url
            if index in relay_for:
                relay = FaultRelay(redis_server.port).start()
                relays.append(relay)
                store = relay.url
            cert, key = write_pair(leaf, tmp_path, f"node{index}")
            directory = tmp_path / f"node{index}"
            directory.mkdir()
            config = node_config(store, f"n{index}", server, client, ports[0], upstream.url,
                                 on_store_down, **options)
            gw = GatewayProcess(directory, config, workers=workers,
                                listen=tls_listen(port, cert, key))
            started.append(gw)
            gw.start()
            gateways.append(gw)
        return Cluster(gateways, server, client, ca, relays)

    try:
        yield start
    finally:
        for gw in started:
            gw.stop()
        for relay in relays:
            relay.stop()


def ssl_context(ca) -> ssl.SSLContext:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    return context


def no_500(cluster: Cluster) -> None:
    for gw in cluster.nodes:
        assert " 500 " not in gw.log() and "Traceback" not in gw.log(), gw.log()[-3000:]


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
        status, _, _ = _raw_get(c, node, cookie)
        assert status == 401
    no_500(c)


def _raw_get(c: Cluster, node: int, cookie: str | None, path: str = "/app/api/x",
             bearer: str | None = None):
    return session_get(c.nodes[node].port, c.ca, cookie, path, bearer)


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
    assert _raw_get(c, 0, cookie)[0] == 200 and _raw_get(c, 1, cookie)[0] == 200
    # The transaction was taken: the same answer with its cookie at A again is refused.
    path = hops[-1].location.removeprefix(c.url(0))
    conn = http.client.HTTPSConnection("127.0.0.1", c.nodes[0].port, timeout=10,
                                       context=ssl_context(c.ca))
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
    assert _raw_get(c, 1, first)[0] == 200
    tokens = LogoutTokens.for_server(c.server, c.client)
    good = tokens.valid(sid=op["sid"])
    assert post_logout_token(c.url(1) + "/.fluxgate/backchannel-logout", good, c.ca)[0] == 200
    assert wait_until(lambda: _raw_get(c, 0, first)[0] == 401, timeout=2)
    # The same logout token at the other node is a replay there too.
    assert post_logout_token(c.url(0) + "/.fluxgate/backchannel-logout", good, c.ca)[0] == 400

    second = c.sign_in(0).cookie(SESSION_COOKIE)
    assert _raw_get(c, 1, second)[0] == 200
    done = subprocess.run(
        [sys.executable, "-m", "fluxgate.cli.fluxctl", "--config",
         str(c.nodes[1].config_path), "oauth2", "sessions", "revoke", "--sub", op["sub"]],
        cwd=REPO, capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    assert _raw_get(c, 1, second)[0] == 401
    # Node B's master pushes the end made in its file at its next sweep.
    assert wait_until(lambda: _raw_get(c, 0, second)[0] == 401, timeout=SWEEP + 3)
    no_500(c)


def test_refresh_at_the_same_moment_on_two_nodes_uses_each_refresh_token_once(cluster):
    c = cluster(access_token_seconds=3, refresh_leeway="1s")
    browser = c.sign_in(0)
    cookie = browser.cookie(SESSION_COOKIE)
    assert _raw_get(c, 1, cookie)[0] == 200
    statuses: list[int] = []

    def hammer(node: int) -> list[int]:
        seen = []
        deadline = time.monotonic() + 7.0  # two and more access-token lifetimes
        while time.monotonic() < deadline:
            seen.append(_raw_get(c, node, cookie)[0])
        return seen

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        for result in pool.map(hammer, [0, 1] * 4):
            statuses += result
    uses = c.server.refresh_token_uses(c.client)
    assert len(uses) >= 2, uses  # refreshed, more than once
    assert not c.server.refresh_reuse_detected(c.client), uses
    assert set(statuses) == {200}, {s: statuses.count(s) for s in set(statuses)}
    no_500(c)


def test_an_introspection_made_on_a_serves_b(cluster):
    c = cluster()
    token = c.server.issue_token(scope="read:inventory", user="alice")
    before = c.server.introspection_calls()
    assert _raw_get(c, 0, None, "/inventory/x", bearer=token)[0] == 200
    assert _raw_get(c, 1, None, "/inventory/x", bearer=token)[0] == 200
    assert c.server.introspection_calls() - before == 1
    # An inactive answer is shared too.
    assert _raw_get(c, 0, None, "/inventory/x", bearer="not-issued")[0] == 401
    assert _raw_get(c, 1, None, "/inventory/x", bearer="not-issued")[0] == 401
    assert c.server.introspection_calls() - before == 2
    # Revoked at the server and purged through node A's admin API: gone on B too.
    c.server.revoke(token)
    digest = hashlib.sha256(token.encode()).hexdigest()
    assert admin_post(c.nodes[0], "/admin/oauth2/purge", {"token_sha256": digest}) == 200
    assert wait_until(lambda: _raw_get(c, 1, None, "/inventory/x", bearer=token)[0] == 401,
                      timeout=3)
    no_500(c)


def admin_post(gw: GatewayProcess, path: str, body: dict) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", gw.admin_port, timeout=10)
    try:
        conn.request("POST", path, body=json.dumps(body),
                     headers={"Authorization": "Bearer test-admin-token",
                              "Content-Type": "application/json"})
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()


# ---- faults -------------------------------------------------------------------------------------


class Load:
    """Session requests on every node from a few threads, until stopped."""

    def __init__(self, c: Cluster, cookie: str, nodes: tuple[int, ...] = (0, 1)) -> None:
        self.c, self.cookie, self.nodes = c, cookie, nodes
        self.statuses: list[int] = []
        self.running = True
        self.pool = concurrent.futures.ThreadPoolExecutor(4)
        self.futures = [self.pool.submit(self._run, node) for node in nodes * 2]

    def _run(self, node: int) -> None:
        while self.running:
            self.statuses.append(_raw_get(self.c, node, self.cookie)[0])
            time.sleep(0.02)

    def stop(self) -> dict[int, int]:
        self.running = False
        for future in self.futures:
            future.result()
        self.pool.shutdown()
        return {s: self.statuses.count(s) for s in set(self.statuses)}


def fresh_login_status(c: Cluster, node: int) -> int:
    """A browser without a session navigates to a node: where the login starts."""
    return Browserless(ca=c.ca).get(c.url(node) + "/app/page").status


def test_redis_stopped_mid_load_copies_serve_and_a_logout_meanwhile_lands_after(cluster,
                                                                                redis_server):
    c = cluster()
    browser = c.sign_in(0)
    cookie = browser.cookie(SESSION_COOKIE)
    assert _raw_get(c, 1, cookie)[0] == 200
    never_on_b = c.sign_in(0).cookie(SESSION_COOKIE)
    token = c.server.issue_token(scope="read:inventory", user="alice")
    load = Load(c, cookie)
    time.sleep(0.5)
    redis_server.stop()
    time.sleep(2.0)
    counts = load.stop()
    assert set(counts) == {200}, counts  # the node's copies keep serving
    assert fresh_login_status(c, 0) == 503  # a login needs Redis: a clear page, not a 500
    # B has no copy of that one and cannot ask: 503 (try again), not "sign in".
    status, headers, _ = _raw_get(c, 1, never_on_b)
    assert status == 503 and headers.get("Retry-After")
    # Introspection asks the authorization server itself.
    before = c.server.introspection_calls()
    assert _raw_get(c, 0, None, "/inventory/x", bearer=token)[0] == 200
    assert c.server.introspection_calls() - before == 1
    assert browser.get(c.url(1) + "/.fluxgate/logout").status == 303  # ended on B at once
    assert _raw_get(c, 1, cookie)[0] == 401
    assert _raw_get(c, 0, cookie)[0] == 200  # A cannot know yet
    assert metric(c.nodes[1].admin_port, "fluxgate_cluster_sessions_store_failures_total") > 0
    assert metric(c.nodes[1].admin_port, "fluxgate_cluster_sessions_store_up") == 0
    redis_server.start()  # its data kept: B's sweep pushes the end, A applies it
    assert wait_until(lambda: _raw_get(c, 0, cookie)[0] == 401, timeout=SWEEP + 4)
    assert fresh_login_status(c, 0) == 302
    assert metric(c.nodes[1].admin_port, "fluxgate_cluster_sessions_store_up") == 1
    no_500(c)


def test_redis_restarted_empty_ends_the_sessions_and_users_sign_in_again(cluster, redis_server):
    c = cluster()
    browser = c.sign_in(0)
    cookie = browser.cookie(SESSION_COOKIE)
    ws = ws_connect(c.nodes[0].port, cookie, c.url(0), c.ca)
    assert echo(ws, b"before")
    assert _raw_get(c, 1, cookie)[0] == 200
    redis_server.restart(empty=True)  # Redis is the sessions' authority: they are lost
    assert wait_until(lambda: (_raw_get(c, 0, cookie)[0], _raw_get(c, 1, cookie)[0])
                      == (401, 401), timeout=SWEEP + 4)
    _before, close = ws.recv_until_close()
    assert close is not None and close.close_code == 4401  # sign in again
    again = c.sign_in(0)
    assert _raw_get(c, 1, again.cookie(SESSION_COOKIE))[0] == 200
    no_500(c)


def test_a_slow_redis_still_shares_sessions_logouts_and_introspection(cluster):
    c = cluster(relay_for=(0, 1))
    for relay in c.relays:
        relay.delay = 0.1
    browser = c.sign_in(0)
    cookie = browser.cookie(SESSION_COOKIE)
    assert _raw_get(c, 1, cookie)[0] == 200
    ws = ws_connect(c.nodes[0].port, cookie, c.url(0), c.ca)
    assert echo(ws, b"before")
    assert browser.get(c.url(1) + "/.fluxgate/logout").status == 303
    _before, close = ws.recv_until_close()
    assert close is not None and close.close_code == 4403
    token = c.server.issue_token(scope="read:inventory", user="alice")
    before = c.server.introspection_calls()
    assert _raw_get(c, 0, None, "/inventory/x", bearer=token)[0] == 200
    assert _raw_get(c, 1, None, "/inventory/x", bearer=token)[0] == 200
    assert c.server.introspection_calls() - before == 1
    no_500(c)


def test_a_partitioned_node_stops_serving_unchecked_copies_and_catches_up(cluster):
    c = cluster(relay_for=(1,), on_store_down="deny")
    browser = c.sign_in(0)
    cookie = browser.cookie(SESSION_COOKIE)
    assert _raw_get(c, 1, cookie)[0] == 200
    token = c.server.issue_token(scope="read:inventory", user="alice")
    c.relays[0].partition()
    time.sleep(0.3)  # the relay's pump has stopped forwarding
    assert browser.get(c.url(0) + "/.fluxgate/logout").status == 303
    assert _raw_get(c, 0, cookie)[0] == 401
    # B cannot hear of the logout: it serves its copy until the copies are too old to
    # trust (15 s after its last sweep, which ran at most 5 s before), then 503.
    statuses = []
    started = time.monotonic()
    while time.monotonic() - started < 3 * SWEEP + SWEEP + 3:
        statuses.append(_raw_get(c, 1, cookie)[0])
        if statuses[-1] == 503:
            break
        time.sleep(0.5)
    assert statuses[-1] == 503 and set(statuses) <= {200, 503}, statuses
    # Introspection on B asks the authorization server directly.
    assert _raw_get(c, 1, None, "/inventory/x", bearer=token)[0] == 200
    c.relays[0].heal()
    assert wait_until(lambda: _raw_get(c, 1, cookie)[0] == 401, timeout=SWEEP + 4)
    no_500(c)
