"""Quota leasing's pieces against a real redis-server: the grant script (concurrent grants
never pass the limit, the window's expiry, repair after Redis lost a window, give-back),
the node's lease table, chunk sizing, and a worker's decisions (fluxgate/cluster/)."""

from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace

import pytest

from fluxgate._core import RequestState
from fluxgate.auth.quotas import create_quota_file, open_quota_file
from fluxgate.cluster.lease_store import EXPIRY_SLACK, LeaseStore, identity_hash, window_keys
from fluxgate.cluster.lease_table import (
    LEASE_FILE,
    W_CHUNK,
    W_LAST_MS,
    W_LAST_SPENT,
    W_NODES,
    LeaseTable,
    create_lease_file,
)
from fluxgate.cluster.quotas import ClusterQuotas, Spend
from fluxgate.errors import QuotaExceeded, QuotaStoreUnavailable
from fluxgate.proxy.suspend import Suspended
from tests.support.lease_grants import grant_concurrently

ID = identity_hash(b"key\0acme\x0086400")
DAY = 86400


def window_end(now: float, window: int = DAY) -> int:
    return (int(now) // window + 1) * window


# ---- the grant script -------------------------------------------------------------------


def test_concurrent_grants_never_pass_the_limit(redis_server):
    end = window_end(time.time())
    given = grant_concurrently(lambda name: LeaseStore(redis_server.client(), "fg:", name),
                               6, ID, end, chunk=7, limit=1000, join=30)
    assert sum(given) == 1000
    client = redis_server.client()
    used_key, nodes_key = window_keys("fg:", ID, end)
    assert int(client.get(used_key)) == 1000
    assert sum(int(v) for v in client.hgetall(nodes_key).values()) == 1000


def test_grant_is_partial_at_the_end_and_then_nothing(redis_server):
    store = LeaseStore(redis_server.client(), "fg:", "a")
    end = window_end(time.time())
    assert store.grant(ID, end, 8, 10, 0) == [8, 8, 1]
    assert store.grant(ID, end, 8, 10, 8) == [2, 10, 1]
    assert store.grant(ID, end, 8, 10, 10) == [0, 10, 1]
    other = LeaseStore(redis_server.client(), "fg:", "b")
    assert other.grant(ID, end, 1, 10, 0) == [0, 10, 1]  # b never got any: not recorded


def test_keys_expire_with_the_window_and_share_a_hash_tag(redis_server):
    client = redis_server.client()
    store = LeaseStore(client, "fg:", "a")
    end = window_end(time.time(), 60)
    store.grant(ID, end, 3, 10, 0)
    used_key, nodes_key = window_keys("fg:", ID, end)
    assert used_key.startswith("{fg:q:") and nodes_key.startswith(used_key.split("}")[0])
    for key in (used_key, nodes_key):
        assert client.expiretime(key) == end + EXPIRY_SLACK
    # A window that has ended is a different key: the next window starts from nothing.
    assert store.grant(ID, end + 60, 3, 10, 0) == [3, 3, 1]


def test_exact_grants_count_one_by_one_without_a_node_record(redis_server):
    client = redis_server.client()
    store = LeaseStore(client, "fg:", "a")
    end = window_end(time.time())
    answers = [store.grant(ID, end, 1, 3, None)[0] for _ in range(5)]
    assert answers == [1, 1, 1, 0, 0]
    assert not client.exists(window_keys("fg:", ID, end)[1])


def test_a_window_lost_by_redis_is_repaired_from_the_nodes_grants(redis_server):
    a = LeaseStore(redis_server.client(), "fg:", "a")
    end = window_end(time.time())
    assert a.grant(ID, end, 60, 100, 0)[0] == 60
    redis_server.restart(empty=True)
    b = LeaseStore(redis_server.client(), "fg:", "b")
    assert b.grant(ID, end, 30, 100, 0) == [30, 30, 1]  # b cannot know what a holds
    # a's next lease counts its 60 again first: the window is whole, 10 left to grant.
    assert a.grant(ID, end, 30, 100, 60) == [10, 100, 2]


def test_give_back_returns_at_most_what_the_node_was_granted(redis_server):
    client = redis_server.client()
    a = LeaseStore(client, "fg:", "a")
    b = LeaseStore(client, "fg:", "b")
    end = window_end(time.time())
    a.grant(ID, end, 5, 100, 0)
    b.grant(ID, end, 20, 100, 0)
    assert a.give_back(ID, end, 50) == 5
    assert int(client.get(window_keys("fg:", ID, end)[0])) == 20
    assert b.give_back(ID, end, 3) == 3
    assert int(client.get(window_keys("fg:", ID, end)[0])) == 17


# ---- the node's lease table -------------------------------------------------------------


@pytest.fixture
def table(tmp_path):
    path = str(tmp_path / LEASE_FILE)
    assert create_lease_file(path, capacity=64)
    assert not create_lease_file(path, capacity=64)  # kept: it holds the node's grants
    t = LeaseTable(path)
    yield t
    t.close()


def test_lease_table_slots_grants_and_flights(table, tmp_path):
    slot = table.claim(12345, DAY, 1000, ID)
    assert slot is not None and table.find(12345) == slot and table.id_hash(slot) == ID
    assert table.claim(12345, DAY, 1000, ID) == slot
    end = window_end(time.time())
    assert table.granted(slot, end) == 0
    assert table.add_granted(slot, end, 10) == 10
    assert table.add_granted(slot, end, 5) == 15
    assert table.granted(slot, end + DAY) == 0  # the next window holds nothing yet
    assert table.add_granted(slot, end + DAY, 3) == 3
    assert table.add_granted(slot, end, 1) == 0  # a late grant of a past window is dropped
    assert table.take_flight(slot, 1000, 2000)
    assert not table.take_flight(slot, 1500, 2500)
    assert table.in_flight(slot, 1999) and not table.in_flight(slot, 2000)
    assert table.take_flight(slot, 2000, 3000)  # a request that never finished: taken over
    table.end_flight(slot)
    assert table.take_flight(slot, 2001, 3001)
    # Another process (a worker) sees the same words.
    other = LeaseTable(str(tmp_path / LEASE_FILE))
    assert other.find(12345) == slot and other.granted(slot, end + DAY) == 3
    other.close()


def test_lease_table_full_probe_sequence(tmp_path):
    path = str(tmp_path / LEASE_FILE)
    create_lease_file(path, capacity=32)
    t = LeaseTable(path)
    slots = {t.claim(tag, 60, 5, ID) for tag in range(1, 33)}
    assert len(slots) == 32
    assert t.claim(999, 60, 5, ID) is None
    t.close()


def test_store_state_changes_once_and_retries_are_spaced(table):
    assert not table.store_down()
    assert table.mark_store(True) and not table.mark_store(True)
    assert table.store_down()
    table.delay_retry(1000, 1000)
    assert not table.retry_due(1500, 1000)
    assert table.retry_due(2000, 1000) and not table.retry_due(2001, 1000)
    assert table.mark_store(False) and not table.store_down()


def test_lease_file_refuses_other_files(tmp_path):
    path = tmp_path / "other.bin"
    path.write_bytes(b"\0" * 4096)
    with pytest.raises(ValueError):
        LeaseTable(str(path))


# ---- a worker's decisions -----------------------------------------------------------------


def cluster_config(url: str, lease="auto", on_store_down="local", timeout=0.5):
    return SimpleNamespace(
        store=url,
        cluster=SimpleNamespace(node="n1", prefix="fg:", lease=lease,
                                on_store_down=on_store_down, timeout=timeout,
                                tls_ca=None, tls_cert=None, tls_key=None))


@pytest.fixture
def state_dir(tmp_path):
    create_quota_file(str(tmp_path / "quotas.bin"), 1024)
    create_lease_file(str(tmp_path / LEASE_FILE), 1024)
    return tmp_path


def make_quotas(state_dir, url, **settings):
    mapping, counters = open_quota_file(str(state_dir / "quotas.bin"))
    return ClusterQuotas(cluster_config(url, **settings), str(state_dir), counters)


def refuse(req, code, retry):
    return QuotaExceeded(f"spent {code}", headers=((b"Retry-After", b"%d" % retry),))


def spend_for(cq: ClusterQuotas, limit: int, name: bytes = b"acme") -> Spend:
    identity = b"key\0" + name + b"\0%d" % DAY
    return Spend(cq.quotas.tag(identity), identity, limit, DAY, refuse)


async def admit(cq: ClusterQuotas, spend: Spend) -> object:
    """One request's answer: None (accepted) or the refusal, resuming as the proxy does."""
    req = RequestState(0.0)
    step = lambda: cq.admit(req, spend.tag, spend.identity, spend.limit,  # noqa: E731
                            spend.window, spend.refuse, time.time())
    while True:
        try:
            return step()
        except Suspended as wait:
            await wait.future
            step = lambda w=wait: w.resume(req)  # noqa: E731


def run(coro):
    return asyncio.run(coro)


def test_chunk_sizing(state_dir, redis_server):
    cq = make_quotas(state_dir, redis_server.url)
    spend = spend_for(cq, 100_000)
    spend.slot = cq.table.claim(spend.tag, DAY, 100_000, identity_hash(spend.identity))
    end = window_end(time.time())
    now_ms = int(time.time() * 1000)
    # No rate known yet: a small first chunk (a thousandth of the limit, at least 1).
    assert cq._auto_chunk(spend, end, 0, now_ms) == 100
    # 500 units spent in the last half second: a second's worth, 1000.
    cq.table.set_word(spend.slot, W_LAST_MS, now_ms - 500)
    cq.table.set_word(spend.slot, W_LAST_SPENT, 0)
    assert cq._auto_chunk(spend, end, 500, now_ms) == 1000
    # Near the end of the budget, with 4 nodes leasing: at most left / (2 x nodes).
    cq.table.set_global(spend.slot, end, 100_000 - 800, 4)
    assert cq.table.word(spend.slot, W_NODES) == 4
    assert cq._auto_chunk(spend, end, 500, now_ms) == 100
    cq.table.set_global(spend.slot, end, 100_000 - 3, 4)
    assert cq._auto_chunk(spend, end, 500, now_ms) == 1  # never 0


def test_a_worker_spends_leases_exactly_and_stops_at_the_limit(state_dir, redis_server):
    cq = make_quotas(state_dir, redis_server.url)
    spend = spend_for(cq, 50)

    async def go():
        answers = await asyncio.gather(*(admit(cq, spend_for(cq, 50)) for _ in range(80)))
        return answers

    answers = run(go())
    assert sum(a is None for a in answers) == 50
    assert all(isinstance(a, QuotaExceeded) for a in answers if a is not None)
    stats = cq.table.stats()
    assert stats["units"] == 50 and stats["errors"] == 0
    assert stats["leases"] < 50  # chunks, not one call a request
    end = window_end(time.time())
    assert int(redis_server.client().get(window_keys("fg:", identity_hash(spend.identity),
                                                     end)[0])) == 50


def test_lease_zero_counts_every_request_in_redis(state_dir, redis_server):
    cq = make_quotas(state_dir, redis_server.url, lease=0)

    async def go():
        return [await admit(cq, spend_for(cq, 3)) for _ in range(5)]

    answers = run(go())
    assert [a is None for a in answers] == [True, True, True, False, False]
    assert cq.table.stats()["exact"] == 5


@pytest.mark.parametrize("policy", ["deny", "local"])
def test_redis_down_spends_leases_in_hand_then_follows_the_policy(state_dir, redis_server,
                                                                  policy):
    cq = make_quotas(state_dir, redis_server.url, lease=10, on_store_down=policy,
                     timeout=0.3)

    async def go():
        first = await admit(cq, spend_for(cq, 1000))  # leases 10
        assert first is None
        redis_server.stop()
        answers = [await admit(cq, spend_for(cq, 1000)) for _ in range(30)]
        return answers

    answers = run(go())
    accepted = sum(a is None for a in answers)
    if policy == "deny":
        # The 9 units in hand, then 503 (never a 500, never waiting for Redis again).
        assert answers[:9] == [None] * 9
        assert all(isinstance(a, QuotaStoreUnavailable) for a in answers[9:])
        assert accepted == 9
    else:
        assert accepted == 30
    stats = cq.table.stats()
    assert stats["store_down"] == 1 and stats["errors"] >= 1
    assert stats["denied" if policy == "deny" else "local"] == (21 if policy == "deny" else 21)


def test_redis_back_charges_what_was_spent_locally(state_dir, redis_server):
    cq = make_quotas(state_dir, redis_server.url, lease=10, on_store_down="local",
                     timeout=0.3)
    spend = spend_for(cq, 1000)
    used_key = window_keys("fg:", identity_hash(spend.identity), window_end(time.time()))[0]

    async def go():
        assert await admit(cq, spend_for(cq, 1000)) is None
        redis_server.stop()
        for _ in range(25):
            assert await admit(cq, spend_for(cq, 1000)) is None  # 10 leased, 16 local
        redis_server.start()
        cq.table.delay_retry(0, 0)  # do not wait for the next retry second
        for _ in range(40):
            if await admit(cq, spend_for(cq, 1000)) is None and not cq.table.store_down():
                break
            await asyncio.sleep(0.05)

    run(go())
    assert not cq.table.store_down()
    # Redis kept its data (stop saves it): the 16 spent locally are now counted there.
    used = int(redis_server.client().get(used_key))
    spent, _ = cq.quotas.peek(spend.tag, DAY, time.time())
    assert used >= spent


def test_lease_spender_spends_only_what_is_granted(state_dir):
    from fluxgate._core import LeaseSpender

    table = LeaseTable(str(state_dir / LEASE_FILE))
    mapping, quotas = open_quota_file(str(state_dir / "quotas.bin"))
    spender = LeaseSpender(table.words, quotas)
    identity = b"rule\0/r\0ip\x0060\0" + b"10.0.0.1"
    tag = quotas.tag(identity)
    slot = table.claim(tag, 60, 100, identity_hash(identity))
    base = table.base(slot)
    now = time.time()
    end = window_end(now, 60)
    req = RequestState(0.0)
    assert spender.spend(req, base, tag, 100, 60, now) == -1  # nothing granted yet
    table.add_granted(slot, end, 4)
    table.set_global(slot, end, 40, 2)
    table.set_word(slot, W_CHUNK, 4)
    assert [spender.spend(req, base, tag, 100, 60, now) for _ in range(5)] == [0, 1, 1, 1, -1]
    assert quotas.peek(tag, 60, now)[0] == 4  # the fifth was not counted
    assert req.ratelimit_headers()  # RateLimit-* merged for the accepted ones
    table.add_granted(slot, end, 1)
    assert spender.spend(req, base, tag, 100, 60, now) == 1
    with pytest.raises(ValueError):
        spender.spend(req, table.base(table.capacity), tag, 100, 60, now)
    with pytest.raises(ValueError):
        spender.spend(req, -1, tag, 100, 60, now)
    # A window that ended: the grant is of the past one; nothing is spent from it.
    assert spender.spend(req, base, tag, 100, 60, now + 60) == -1
    quotas.release()
    mapping.close()
    table.close()


def test_a_tampered_window_in_redis_is_a_store_error_never_a_grant(state_dir, redis_server):
    cq = make_quotas(state_dir, redis_server.url, lease=10, on_store_down="deny", timeout=0.3)
    spend = spend_for(cq, 1000)
    end = window_end(time.time())
    redis_server.client().set(window_keys("fg:", identity_hash(spend.identity), end)[0],
                              "not a number")
    answer = run(admit(cq, spend))
    assert isinstance(answer, QuotaStoreUnavailable)
    assert cq.table.stats()["errors"] == 1 and cq.table.stats()["units"] == 0


def test_the_key_table_spends_a_keys_quota_from_the_leases(tmp_path):
    from fluxgate._core import KEY_FORMAT, LeaseSpender
    from fluxgate.auth.quotas import key_identity
    from tests.support.keys import KeyState

    reasons = KEY_FORMAT["reasons"]
    state = KeyState(tmp_path / "state")
    create_lease_file(str(tmp_path / "state" / LEASE_FILE), 64)
    table = LeaseTable(str(tmp_path / "state" / LEASE_FILE))
    try:
        _, key = state.generate("acme", quota=(1000, DAY))
        keys = state.table()
        keys.use_leases(LeaseSpender(table.words, state.quotas))
        now = time.time()

        def check():
            return keys.check(key.encode(), now, b"/api", (), None, "127.0.0.1")

        # No slot, then a slot and nothing granted: quota_exceeded (the lease path's cue).
        assert reasons[check()[0]] == "quota_exceeded"
        tag = state.quotas.tag(key_identity("acme", DAY))
        slot = table.claim(tag, DAY, 1000, identity_hash(key_identity("acme", DAY)))
        assert reasons[check()[0]] == "quota_exceeded"
        table.add_granted(slot, window_end(now), 2)
        table.set_global(slot, window_end(now), 600, 3)
        first, second, third = check(), check(), check()
        assert reasons[first[0]] == reasons[second[0]] == "ok"
        assert first[2] == 1000 and first[3] == 1000 - 600 + 1  # limit, estimated remaining
        assert reasons[third[0]] == "quota_exceeded"  # the two units are spent
        # A lease file whose header says another capacity: never a read outside it.
        for capacity in (1 << 40, 1 << 62, 1 << 63, 3):
            table.words.store(2, capacity)
            assert reasons[check()[0]] == "quota_exceeded"
    finally:
        table.close()
        state.close()
