"""Cluster sessions and introspection results when Redis fails: stopped mid-load, restarted
empty, slow (100 ms each way), one node partitioned from it. Two `fluxgate run` nodes, a real
redis-server (through a fault relay where a test needs one), django-oauth-toolkit; never a
500 (tests/e2e/test_cluster_sessions.py has the same setup without faults).
"""

from __future__ import annotations

import time

import pytest

from tests.e2e import test_oauth2_login as login_tests
from tests.support.cluster_login import (
    SESSION_COOKIE,
    SWEEP,
    Load,
    cluster,
    cluster_get,
    echo,
    fresh_login_status,
    metric,
    no_500,
    ws_connect,
)
from tests.support.gateway import wait_until

pytestmark = pytest.mark.slow

ca = login_tests.ca
cluster = cluster  # the fixture


def test_redis_stopped_mid_load_copies_serve_and_a_logout_meanwhile_lands_after(cluster,
                                                                                redis_server):
    c = cluster()
    browser = c.sign_in(0)
    cookie = browser.cookie(SESSION_COOKIE)
    assert cluster_get(c, 1, cookie)[0] == 200
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
    status, headers, _ = cluster_get(c, 1, never_on_b)
    assert status == 503 and headers.get("Retry-After")
    # Introspection asks the authorization server itself.
    before = c.server.introspection_calls()
    assert cluster_get(c, 0, None, "/inventory/x", bearer=token)[0] == 200
    assert c.server.introspection_calls() - before == 1
    assert browser.get(c.url(1) + "/.fluxgate/logout").status == 303  # ended on B at once
    assert cluster_get(c, 1, cookie)[0] == 401
    assert cluster_get(c, 0, cookie)[0] == 200  # A cannot know yet
    assert metric(c.nodes[1].admin_port, "fluxgate_cluster_sessions_store_failures_total") > 0
    assert metric(c.nodes[1].admin_port, "fluxgate_cluster_sessions_store_up") == 0
    redis_server.start()  # its data kept: B's sweep pushes the end, A applies it
    assert wait_until(lambda: cluster_get(c, 0, cookie)[0] == 401, timeout=SWEEP + 4)
    assert fresh_login_status(c, 0) == 302
    assert metric(c.nodes[1].admin_port, "fluxgate_cluster_sessions_store_up") == 1
    no_500(c)


def test_redis_restarted_empty_ends_the_sessions_and_users_sign_in_again(cluster, redis_server):
    c = cluster()
    browser = c.sign_in(0)
    cookie = browser.cookie(SESSION_COOKIE)
    ws = ws_connect(c.nodes[0].port, cookie, c.url(0), c.ca)
    assert echo(ws, b"before")
    assert cluster_get(c, 1, cookie)[0] == 200
    redis_server.restart(empty=True)  # Redis is the sessions' authority: they are lost
    assert wait_until(lambda: (cluster_get(c, 0, cookie)[0], cluster_get(c, 1, cookie)[0])
                      == (401, 401), timeout=SWEEP + 4)
    _before, close = ws.recv_until_close()
    assert close is not None and close.close_code == 4401  # sign in again
    again = c.sign_in(0)
    assert cluster_get(c, 1, again.cookie(SESSION_COOKIE))[0] == 200
    no_500(c)


def test_a_slow_redis_still_shares_sessions_logouts_and_introspection(cluster):
    c = cluster(relay_for=(0, 1))
    for relay in c.relays:
        relay.delay = 0.1
    browser = c.sign_in(0)
    cookie = browser.cookie(SESSION_COOKIE)
    assert cluster_get(c, 1, cookie)[0] == 200
    ws = ws_connect(c.nodes[0].port, cookie, c.url(0), c.ca)
    assert echo(ws, b"before")
    assert browser.get(c.url(1) + "/.fluxgate/logout").status == 303
    _before, close = ws.recv_until_close()
    assert close is not None and close.close_code == 4403
    token = c.server.issue_token(scope="read:inventory", user="alice")
    before = c.server.introspection_calls()
    assert cluster_get(c, 0, None, "/inventory/x", bearer=token)[0] == 200
    assert cluster_get(c, 1, None, "/inventory/x", bearer=token)[0] == 200
    assert c.server.introspection_calls() - before == 1
    no_500(c)


def test_a_partitioned_node_stops_serving_unchecked_copies_and_catches_up(cluster):
    c = cluster(relay_for=(1,), on_store_down="deny")
    browser = c.sign_in(0)
    cookie = browser.cookie(SESSION_COOKIE)
    assert cluster_get(c, 1, cookie)[0] == 200
    token = c.server.issue_token(scope="read:inventory", user="alice")
    c.relays[0].partition()
    time.sleep(0.3)  # the relay's pump has stopped forwarding
    assert browser.get(c.url(0) + "/.fluxgate/logout").status == 303
    assert cluster_get(c, 0, cookie)[0] == 401
    # B cannot hear of the logout: it serves its copy until the copies are too old to
    # trust (15 s after its last sweep, which ran at most 5 s before), then 503.
    statuses = []
    started = time.monotonic()
    while time.monotonic() - started < 3 * SWEEP + SWEEP + 3:
        statuses.append(cluster_get(c, 1, cookie)[0])
        if statuses[-1] == 503:
            break
        time.sleep(0.5)
    assert statuses[-1] == 503 and set(statuses) <= {200, 503}, statuses
    # Introspection on B asks the authorization server directly.
    assert cluster_get(c, 1, None, "/inventory/x", bearer=token)[0] == 200
    c.relays[0].heal()
    assert wait_until(lambda: cluster_get(c, 1, cookie)[0] == 401, timeout=SWEEP + 4)
    no_500(c)
