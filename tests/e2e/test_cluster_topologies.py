"""Two gateway nodes (two workers each) on a 3-master Redis Cluster, and on Sentinel through a
failover: a key made on one node works on the other, a revocation on one is refused by the
other within a second, a key's quota is shared; a Sentinel failover during use leaves keys
working, key changes resume on the new primary, and nothing answers 500."""

from __future__ import annotations

import threading
import time
from collections import Counter

import pytest

from tests.support.cluster_keys import admin, answers, node_config, status, wait_answer

pytestmark = pytest.mark.slow

REVOCATION_BOUND = 1.0  # s


def start_nodes(gateway_factory, store: str, upstream) -> list:
    return [gateway_factory(node_config(store, n, upstream.url), workers=2, name=f"node-{n}")
            for n in ("a", "b")]


def create(gw, name: str, **fields) -> dict:
    code, doc = admin(gw, "POST", "/admin/keys", {"name": name, **fields})
    assert code == 201, doc
    return doc


def test_two_nodes_on_redis_cluster_share_keys_revocations_and_quotas(
        gateway_factory, redis_cluster, upstream):
    a, b = start_nodes(gateway_factory, redis_cluster.url, upstream)
    key = create(a, "alice")["key"]
    wait_answer([a, b], key, 200, seconds=3)
    code, doc = admin(b, "POST", "/admin/keys/revoke", {"name": "alice"})
    assert code == 200 and doc["revoked"][0]["status"] == "revoked"
    assert answers(b, key) == {401}
    wait_answer([a], key, 401, seconds=REVOCATION_BOUND)
    # A quota of 20 a day spent through both nodes: 20 answers 200 in all, then 429s.
    limited = create(b, "metered", quota="20/d")["key"]
    wait_answer([a, b], limited, 200, seconds=3, probes=1)  # 2 units spent
    seen = Counter(status(gw, limited) for _ in range(30) for gw in (a, b))
    assert set(seen) <= {200, 429}, seen
    assert seen[200] == 18, seen


@pytest.mark.parametrize("how", ["sentinel-failover", "primary-killed"])
def test_a_sentinel_failover_during_use_keeps_keys_working_and_changes_resume(
        gateway_factory, redis_sentinel, upstream, how):
    a, b = start_nodes(gateway_factory, redis_sentinel.url, upstream)
    key = create(a, "alice", quota="100000/d")["key"]
    wait_answer([a, b], key, 200, seconds=3)
    seen: Counter = Counter()
    stop = threading.Event()

    def load() -> None:
        while not stop.is_set():
            for gw in (a, b):
                seen[status(gw, key)] += 1

    loader = threading.Thread(target=load, daemon=True)
    loader.start()
    try:
        old_primary = redis_sentinel.primary_port()
        assert redis_sentinel.failover(kill=how == "primary-killed") != old_primary
        # Key changes go to the new primary: each admin call answers 201 or 503, never 500.
        changes: Counter = Counter()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            code, doc = admin(b, "POST", "/admin/keys", {"name": "after-failover"})
            changes[code] += 1
            if code == 201:
                break
            assert code == 503, (code, doc)
            time.sleep(0.2)
        assert changes[201] == 1, changes
        fresh = doc["key"]
        wait_answer([a, b], fresh, 200, seconds=3)
        code, _ = admin(a, "POST", "/admin/keys/revoke", {"name": "after-failover"})
        assert code == 200
        wait_answer([b], fresh, 401, seconds=REVOCATION_BOUND)
    finally:
        stop.set()
        loader.join(30)
    print(how, "requests", dict(seen), "admin calls", dict(changes))
    assert set(seen) == {200} and seen[200] > 0, seen
    written = redis_sentinel.client().keys("*keys*")
    assert written  # the new primary holds the cluster's keys
