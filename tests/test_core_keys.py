"""_core's API-key and quota section (fluxgate/_keys.pxi): the key check against Python's
hmac, hostile keys as data, the table's validation, quotas exact across processes."""

from __future__ import annotations

import hashlib
import hmac
import json
import mmap
import multiprocessing
import os
import struct
import sys
import time
from pathlib import Path

import pytest

from fluxgate._core import (
    KEY_FORMAT,
    KeyTable,
    Principal,
    PrincipalCache,
    QuotaCounters,
    RequestState,
    b64url_decode,
    b64url_encode,
    extract_api_key,
    merge_ratelimit,
    strip_query_param,
)
from fluxgate.auth import keytable as kt
from fluxgate.auth.keys import key_id_of, mint_key
from fluxgate.auth.quotas import create_quota_file, open_quota_file
from tests.support.keys import KeyState

DATA = Path(__file__).parent / "data" / "keys"
REASONS = KEY_FORMAT["reasons"]
OK = 0
NOW = 1_795_000_000.0  # 2026-11-18; fixed so windows and expiries are exact


def code(name: str) -> int:
    return REASONS.index(name)


def hostile_keys() -> list[tuple[str, bytes, str]]:
    cases = []
    for line in (DATA / "hostile.jsonl").read_text().splitlines():
        case = json.loads(line)
        if "name" in case:
            raw = bytes.fromhex(case["key_hex"]) if "key_hex" in case else case["key"].encode()
            cases.append((case["name"], raw, case["reason"]))
    return cases


@pytest.fixture
def state(tmp_path):
    s = KeyState(tmp_path / "state", clock=lambda: NOW)
    yield s
    s.close()


def check(table, key, *, now=NOW, path=b"/api", scopes=(), any_scopes=None, ip="127.0.0.1"):
    return table.check(key.encode() if isinstance(key, str) else key, now, path, scopes,
                       any_scopes, ip)


# ---- the key format ------------------------------------------------------------------------


def test_minted_key_shape_and_mac_match_rfc2104():
    signing = os.urandom(32)
    minted = mint_key(signing)
    text = minted.text
    assert len(text) == KEY_FORMAT["text_len"] == 63
    assert text.startswith("fg_") and text[3:].isalnum()
    assert key_id_of(text) == minted.key_id == text[3:15]
    raw = b64url_decode(text[3:].encode())
    raw_id, secret, tag = raw[:9], raw[9:33], raw[33:]
    expected = hmac.new(signing, b"fgk1" + raw_id + secret, hashlib.sha256).digest()
    assert minted.digest == expected and tag == expected[:12]


def test_valid_key_passes_and_every_altered_byte_fails_the_tag(state):
    record, key = state.generate("svc")
    table = state.table()
    assert check(table, key)[0] == OK
    raw = bytearray(b64url_decode(key[3:].encode()))
    for i in range(len(raw)):  # id, secret and every tag byte (compared 8 and then 1 at a time)
        forged = bytearray(raw)
        forged[i] ^= 0x01
        text = b"fg_" + b64url_encode(bytes(forged))
        assert check(table, text)[:2] == (code("bad_tag"), -1), i


def test_long_signing_keys_are_hashed_first_as_rfc2104_says(tmp_path):
    signing = os.urandom(100)
    minted = mint_key(signing)
    s = KeyState(tmp_path / "s")
    try:
        record, _ = s.generate("x")
        # Re-sign the stored row with a 100-byte key and check the table accepts it.
        s.store.db.execute("UPDATE keys SET digest = ?, key_id = ? WHERE slot = ?",
                           (minted.digest, minted.key_id, record.slot))
        s.signing_key = signing
        assert check(s.table(), minted.text)[0] == OK
    finally:
        s.close()


@pytest.mark.parametrize(("name", "key", "reason"), hostile_keys(), ids=lambda v: str(v)[:30])
def test_hostile_keys_are_refused_before_any_lookup(state, name, key, reason):
    state.generate("svc")
    table = state.table()
    assert check(table, key) == (code(reason), -1, 0, 0, 0)
    assert table.verify(key, NOW) == (code(reason), -1)


def test_unknown_revoked_and_expired(state, tmp_path):
    _, gone = state.generate("gone")
    record, revoked = state.generate("revoked")
    _, short = state.generate("short", expires_in=60)
    state.store.revoke("revoked")
    table = state.table()
    assert check(table, revoked)[:2] == (code("revoked"), table.find(record.key_id))
    assert check(table, short, now=NOW + 59)[0] == OK
    assert check(table, short, now=NOW + 60)[0] == code("expired")
    # A key of this gateway that is not in the table (deleted from keys.db): unknown.
    state.store.db.execute("DELETE FROM keys WHERE name = 'gone'")
    assert check(state.table(), gone)[:2] == (code("unknown_key"), -1)


def test_a_stolen_id_with_another_secret_is_refused(state):
    record, key = state.generate("svc")
    # Same id, another secret, correctly tagged (as only the signing secret allows): the
    # digest comparison still refuses it.
    raw_id = b64url_decode(record.key_id.encode())
    secret = os.urandom(24)
    mac = hmac.new(state.signing_key, b"fgk1" + raw_id + secret, hashlib.sha256).digest()
    forged = b"fg_" + b64url_encode(raw_id + secret + mac[:12])
    assert check(state.table(), forged)[:2] == (code("bad_secret"), -1)


# ---- routes, scopes, addresses -------------------------------------------------------------


def test_routes_are_segment_prefixes(state):
    _, key = state.generate("svc", routes=["/internal/metrics", "/v1/"])
    table = state.table()
    for path, ok in [
        (b"/internal/metrics", True), (b"/internal/metrics/cpu", True), (b"/v1", True),
        (b"/v1/x", True), (b"/internal/metricsX", False), (b"/internal", False),
        (b"/", False), (b"/v10", False),
    ]:
        assert (check(table, key, path=path)[0] == OK) is ok, path


def test_scopes_all_required_and_any_of_covering(state):
    _, key = state.generate("svc", scopes=["read:metrics", "write:x"])
    table = state.table()
    assert check(table, key, scopes=(b"read:metrics",))[0] == OK
    assert check(table, key, scopes=(b"read:metrics", b"write:x"))[0] == OK
    assert check(table, key, scopes=(b"read:metrics", b"admin"))[0] == code("insufficient_scope")
    assert check(table, key, scopes=(b"read:metric",))[0] == code("insufficient_scope")
    assert check(table, key, any_scopes=(b"nope", b"write:x"))[0] == OK
    assert check(table, key, any_scopes=(b"nope",))[0] == code("insufficient_scope")


def test_ip_allowlist_v4_v6_and_mapped(state):
    _, key = state.generate("svc", allow_ips=["10.1.2.0/24", "2001:db8::/32", "192.0.2.7"])
    table = state.table()
    for ip, ok in [
        ("10.1.2.3", True), ("10.1.3.3", False), ("::ffff:10.1.2.200", True),
        ("2001:db8:1::5", True), ("2001:db9::5", False), ("192.0.2.7", True),
        ("192.0.2.8", False), ("", False), ("not an address", False), ("10.1.2.3%eth0", False),
    ]:
        assert (check(table, key, ip=ip)[0] == OK) is ok, ip
    _, open_key = state.generate("open")
    assert check(state.table(), open_key, ip="garbage")[0] == OK  # no allowlist: any


def test_order_scope_before_ip_before_quota(state):
    _, key = state.generate("svc", scopes=["a"], allow_ips=["10.0.0.0/8"], quota=(1, 60))
    table = state.table()
    assert check(table, key, scopes=(b"b",), ip="1.2.3.4")[0] == code("insufficient_scope")
    assert check(table, key, ip="1.2.3.4")[0] == code("ip_not_allowed")
    # Neither refusal spent the quota.
    assert check(table, key, ip="10.0.0.1")[:4] == (OK, table.find(key[3:15]), 1, 0)
    assert check(table, key, ip="10.0.0.1")[0] == code("quota_exceeded")


def _request(headers, query=b"", path=b"/api", ip="127.0.0.1"):
    req = RequestState()
    req.headers, req.query, req.path, req.client_ip = headers, query, path, ip
    return req


def test_authorize_decides_as_extract_api_key_and_check_do(state):
    """The middleware's one call finds the key as extract_api_key does and decides as
    check does (keys without a quota here: deciding twice spends nothing)."""
    plain = state.generate("plain", scopes=["a"])[1].encode()
    fenced = state.generate("fenced", routes=["/api"], allow_ips=["10.0.0.0/8"])[1].encode()
    revoked = state.generate("gone")[1].encode()
    state.store.revoke("gone")
    table = state.table()
    forged = plain[:-1] + (b"A" if plain[-1:] != b"A" else b"B")
    shapes = [  # (headers, query, path, ip, required scopes)
        ([], b"", b"/api", "127.0.0.1", ()),
        ([(b"X-API-Key", plain)], b"", b"/api", "127.0.0.1", ()),
        ([(b"x-api-key", plain)], b"", b"/api", "127.0.0.1", (b"a",)),
        ([(b"X-API-Key", plain)], b"", b"/api", "127.0.0.1", (b"b",)),
        ([], b"x=1&api_key=" + plain, b"/api", "127.0.0.1", ()),
        ([(b"X-API-Key", plain)], b"api_key=" + plain, b"/api", "127.0.0.1", ()),
        ([(b"X-API-Key", plain), (b"X-Api-Key", plain)], b"", b"/api", "127.0.0.1", ()),
        ([(b"X-API-Key", fenced)], b"", b"/api/x", "10.1.2.3", ()),
        ([(b"X-API-Key", fenced)], b"", b"/other", "10.1.2.3", ()),
        ([(b"X-API-Key", fenced)], b"", b"/api", "192.0.2.1", ()),
        ([(b"X-API-Key", revoked)], b"", b"/api", "127.0.0.1", ()),
        ([(b"X-API-Key", forged)], b"", b"/api", "127.0.0.1", ()),
        ([(b"X-API-Key", b"fg_" + b"A" * 60)], b"", b"/api", "127.0.0.1", ()),
        ([(b"X-API-Key", b"\x00garbage\r\n")], b"", b"/api", "127.0.0.1", ()),
    ]
    seen = set()
    for headers, query, path, ip, scopes in shapes:
        count, key = extract_api_key(headers, b"x-api-key", query, b"api_key")
        req = _request(headers, query, path, ip)
        got = table.authorize(req, b"x-api-key", b"api_key", scopes, None, NOW, PrincipalCache())
        if count == 0:
            assert got == (code("missing_credentials"), -1, 0, 0)
        elif count == 2:
            assert got == (code("ambiguous_credentials"), -1, 0, 0)
        else:
            assert got == check(table, key, path=path, scopes=scopes, ip=ip)[:2] + (0, 0)
        assert req.ratelimit_headers() == [] == req.response_headers  # no quota, no RateLimit-*
        seen.add(REASONS[got[0]])
    assert seen == {"ok", "missing_credentials", "ambiguous_credentials", "insufficient_scope",
                    "route_not_allowed", "ip_not_allowed", "revoked", "bad_tag", "malformed"}


def test_authorize_spends_the_quota_and_merges_ratelimit(state):
    key = state.generate("metered", quota=(2, 60))[1].encode()
    table = state.table()
    index = table.find(key[3:15].decode())
    reset = 60 - int(NOW) % 60  # the fixed UTC minute's end
    for remaining in (1, 0):
        req = _request([(b"X-API-Key", key)])
        assert table.authorize(req, b"x-api-key", b"", (), None, NOW, PrincipalCache()) == (OK, index, 2, reset)
        assert req.ratelimit_headers() == [(b"RateLimit-Limit", b"2"),
                                           (b"RateLimit-Remaining", b"%d" % remaining),
                                           (b"RateLimit-Reset", b"%d" % reset)]
    req = _request([(b"X-API-Key", key)])
    assert table.authorize(req, b"x-api-key", b"", (), None, NOW, PrincipalCache()) == (
        code("quota_exceeded"), index, 2, reset)
    assert req.ratelimit_headers() == []  # the middleware's 429 adds them, with Retry-After
    # A stricter quota met earlier in the chain keeps its figures.
    key2 = state.generate("roomy", quota=(100, 3600))[1].encode()
    table = state.table()
    req = _request([(b"X-API-Key", key2)])
    merge_ratelimit(req, 5, 1, 9)
    assert table.authorize(req, b"x-api-key", b"", (), None, NOW, PrincipalCache())[0] == OK
    assert req.ratelimit_headers() == [(b"RateLimit-Limit", b"5"),
                                       (b"RateLimit-Remaining", b"1"), (b"RateLimit-Reset", b"9")]


def test_authorize_sets_a_known_principal_and_answers_none(state):
    _, plain = state.generate("known")
    _, other = state.generate("other")
    _, graced = state.generate("rotating")
    state.store.rotate("rotating", grace=3600, expires_in=None, signing_key=state.signing_key)
    table = state.table()
    index, other_index = table.find(plain[3:15]), table.find(other[3:15])
    graced_key_index = table.find(graced[3:15])
    principals = PrincipalCache()
    marker = Principal("key:known", "api_key", "known")
    graced_marker = Principal("key:rotating", "api_key", "rotating")
    principals[index] = marker
    principals[graced_key_index] = graced_marker

    def authorize(key: bytes, path: bytes = b"/api", scopes: tuple = (), plist=principals):
        req = _request([(b"X-API-Key", key)], path=path)
        return table.authorize(req, b"x-api-key", b"", scopes, None, NOW, plist), req

    got, req = authorize(plain.encode())
    assert got is None and req.principal is marker
    # Not built yet: the caller builds and sets it.
    got, req = authorize(other.encode())
    assert got == (OK, other_index, 0, 0) and req.principal is None
    got, req = authorize(plain.encode(), plist=PrincipalCache())
    assert got == (OK, index, 0, 0) and req.principal is None
    # Refused, even with a principal at hand: no principal is set.
    got, req = authorize(plain.encode(), scopes=(b"missing",))
    assert got[0] == code("insufficient_scope") and req.principal is None
    forged = plain[:-2] + ("AA" if plain[-2:] != "AA" else "BB")
    got, req = authorize(forged.encode())
    assert got[0] == code("bad_tag") and req.principal is None
    # A key in its rotation grace period goes back to the caller (Deprecation / Sunset).
    got, req = authorize(graced.encode())
    assert got == (OK, graced_key_index, 0, 0) and req.principal is None


def test_principal_cache_keeps_replaces_and_releases_principals():
    cache = PrincipalCache()
    made = {i: Principal(f"key:k{i}", "api_key", f"k{i}") for i in range(0, 50_000, 7)}
    for index, principal in made.items():  # far past the first table's 1,024 slots
        cache[index] = principal
    assert len(cache) == len(made)
    assert all(cache.get(index) is principal for index, principal in made.items())
    assert cache.get(1) is None and cache.get(-1) is None and cache.get(2**40, "no") == "no"
    # Replacing keeps one reference to the new principal and drops the old one's.
    old, new = made[7], Principal("key:new", "api_key", "new")
    held = sys.getrefcount(old)
    cache[7] = new
    assert cache.get(7) is new and len(cache) == len(made)
    assert sys.getrefcount(old) == held - 1
    with pytest.raises(TypeError):
        cache[3] = object()  # principals only: they cannot make a cycle through the cache
    with pytest.raises(IndexError):
        cache[-1] = new
    # A worker drops the whole cache with its table generation: its references go too.
    held = sys.getrefcount(new)
    del cache
    assert sys.getrefcount(new) == held - 1


# ---- usage ---------------------------------------------------------------------------------


def test_usage_stamp_and_count(state):
    record, key = state.generate("svc")
    table = state.table()
    slot = kt.usage_slot(record)
    assert state.usage.read(slot) == kt.Usage(0, None, 0)
    check(table, key, ip="10.9.8.7")
    check(table, key, now=NOW + 0.5, ip="10.9.8.8")  # within a second: the address stays
    check(table, key, ip="not-an-ip")
    usage = state.usage.read(slot)
    assert (usage.last_used_ms, usage.address, usage.requests) == (int(NOW * 1000), "10.9.8.7", 3)
    check(table, key, now=NOW + 2, ip="2001:db8::1")
    usage = state.usage.read(slot)
    assert (usage.last_used_ms, usage.address, usage.requests) == (int((NOW + 2) * 1000),
                                                                   "2001:db8::1", 4)
    check(table, b"fg_" + b"A" * 60)  # refused keys are no use of anyone's key
    assert state.usage.read(slot).requests == 4


# ---- the table file ------------------------------------------------------------------------


def test_table_generation_find_and_entry(state):
    record, _ = state.generate("svc", scopes=["s1"], routes=["/a"], allow_ips=["10.0.0.0/8"],
                               quota=(5, 3600))
    table = state.table()
    assert table.generation == state.generation and len(table) >= 2  # the home region
    entry = table.entry(table.find(record.key_id))
    assert entry["name"] == "svc" and entry["scopes"] == ("s1",) and entry["routes"] == ("/a",)
    assert entry["quota_limit"] == 5 and entry["quota_period"] == 3600
    assert entry["cidrs"] == ((b"\0" * 10 + b"\xff\xff\x0a\0\0\0", 104),)
    assert table.find("AAAAAAAAAAAA") == -1 and table.find("short") == -1
    with pytest.raises(IndexError):
        table.entry(len(table))


def test_request_heads_naming_keys_parse_alike_with_a_table_mapped_and_released(state):
    # The parser prefetches the bucket a 63-byte X-API-Key value names in the newest mapped
    # table: any value, trusted or not, and none once that table is released.
    from fluxgate._core import parse_request_head
    from fluxgate.proxy import headers as hdr

    _, key = state.generate("svc")
    values = [key.encode(), b"fg_" + b"\xff" * 60, b"fg_" + b"!" * 60, b"fg_" + b"_" * 60,
              b"xx_" + key.encode()[3:], key.encode()[:-1]]
    special = {**hdr.REQUEST_SPECIAL, b"x-api-key": hdr.H_DROP}

    def parsed(value: bytes):
        data = b"GET /a HTTP/1.1\r\nHost: h\r\nX-API-Key: " + value + b"\r\n\r\n"
        req = parse_request_head(data, {}, special, 8192, 0, 0.0)
        if req is None:
            return None
        return req.path, req.headers, req.forward_headers

    before = [parsed(v) for v in values]
    table = state.table()
    assert [parsed(v) for v in values] == before
    assert before[0] == (b"/a", [(b"Host", b"h"), (b"X-API-Key", key.encode())],
                         [(b"Host", b"h")])
    assert check(table, key)[0] == OK
    table.release()
    assert [parsed(v) for v in values] == before


def test_many_keys_all_found(state):
    keys = [state.generate(f"k{i}")[1] for i in range(300)]
    table = state.table()
    assert all(check(table, k)[0] == OK for k in keys)


def test_corrupt_tables_are_refused(state):
    record, _ = state.generate("svc", scopes=["s"], quota=(5, 60))
    index = state.table().find(record.key_id)
    good = (state.dir / kt.TABLE_FILE).read_bytes()
    signing = state.signing_key

    def refused(data: bytes) -> None:
        with pytest.raises(ValueError):
            KeyTable(data, signing)

    refused(b"")
    refused(bytes(good[:40]))
    refused(bytes(good[:-1]))  # the pool is cut short
    bad = bytearray(good)
    bad[0] ^= 1  # magic
    refused(bytes(bad))
    header = struct.unpack_from("=QIIQIIQQQQQ", good)
    bad = bytearray(good)
    struct.pack_into("=I", bad, 28, header[4] + 1)  # more buckets than published entries
    refused(bytes(bad))
    bad = bytearray(good)
    entry_off = header[7] + index * kt._ENTRY.size
    struct.pack_into("=I", bad, entry_off + 104, 10_000)  # scopes offset past the pool
    refused(bytes(bad))
    bad = bytearray(good)
    struct.pack_into("=I", bad, entry_off + 88, 1 << 30)  # usage slot past the file
    refused(bytes(bad))
    KeyTable(bytes(good), signing)  # and the original is fine


# ---- quotas --------------------------------------------------------------------------------


@pytest.fixture
def quotas(tmp_path):
    path = str(tmp_path / "quotas.bin")
    create_quota_file(path, 64)
    mapping, q = open_quota_file(path)
    yield q
    q.release()
    mapping.close()


def test_fixed_windows(quotas):
    tag = quotas.tag(b"someone")
    day = 86400
    start = (int(NOW) // day) * day
    for i in range(3):
        assert quotas.consume(tag, 3, day, start + 10 + i) == (0, 2 - i, start + day)
    assert quotas.consume(tag, 3, day, start + day - 1) == (1, 0, start + day)
    assert quotas.peek(tag, day, start + 100) == (3, start + day)
    # 00:00 UTC: a new window.
    assert quotas.consume(tag, 3, day, start + day) == (0, 2, start + 2 * day)
    assert quotas.peek(quotas.tag(b"nobody"), day, start) == (0, start + day)


def test_tags_are_keyed(tmp_path, quotas):
    other = tmp_path / "other.bin"
    create_quota_file(str(other), 64)
    mapping, q2 = open_quota_file(str(other))
    try:
        assert quotas.tag(b"x") == quotas.tag(b"x") != q2.tag(b"x")
        assert quotas.tag(b"x") != quotas.tag(b"y") and quotas.tag(b"") != 0
    finally:
        q2.release()
        mapping.close()


def test_bad_arguments(quotas):
    for args in [(0, 1, 60, NOW), (1, 0, 60, NOW), (1, 1, 0, NOW), (1, 2**32 - 1, 60, NOW),
                 (1, 1, 60, -1.0), (1, 1, 60, 2.0**33)]:
        with pytest.raises((ValueError, OverflowError)):
            quotas.consume(*args)


def test_stale_buckets_are_reclaimed_and_a_live_full_table_fails_closed(quotas):
    # 64 buckets, probe sequences of 32: add tags until one finds no bucket.
    granted, newcomer = [], None
    for i in range(1000):
        tag = quotas.tag(b"t%d" % i)
        if quotas.consume(tag, 10, 60, NOW)[0] == 2:
            newcomer = tag
            break
        granted.append(tag)
    assert newcomer is not None and len(granted) >= 32
    assert quotas.peek(newcomer, 60, NOW)[0] == 0  # refused: nothing counted
    assert quotas.consume(newcomer, 10, 60, NOW + 5)[0] == 2  # every window still live
    # Two minutes later every window has ended: the newcomer takes a bucket.
    later = NOW + 120
    assert quotas.consume(newcomer, 10, 60, later)[:2] == (0, 9)
    assert quotas.consume(newcomer, 10, 60, later)[:2] == (0, 8)
    assert quotas.peek(newcomer, 60, later)[0] == 2
    # An old tag coming back starts a fresh window (its old one had ended anyway).
    assert quotas.consume(granted[0], 10, 60, later)[:2] == (0, 9)


def _hammer(path: str, tag: int, limit: int, attempts: int, start, out) -> None:
    mapping, q = open_quota_file(path)
    start.wait()
    ok = sum(1 for _ in range(attempts) if q.consume(tag, limit, 86400, time.time())[0] == 0)
    out.put(ok)
    q.release()
    mapping.close()


def test_exact_across_processes(tmp_path):
    path = str(tmp_path / "quotas.bin")
    create_quota_file(path, 1024)
    mapping, q = open_quota_file(path)
    tag = q.tag(b"shared")
    ctx = multiprocessing.get_context("fork")
    start, out = ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=_hammer, args=(path, tag, 20_000, 10_000, start, out))
             for _ in range(4)]
    for p in procs:
        p.start()
    start.set()
    granted = [out.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(10)
    assert sum(granted) == 20_000  # 40,000 attempts, exactly the limit granted
    assert q.peek(tag, 86400, time.time())[0] == 20_000
    q.release()
    mapping.close()


def test_quota_file_is_kept_and_checked(tmp_path):
    path = tmp_path / "quotas.bin"
    assert create_quota_file(str(path), 64) is True
    mapping, q = open_quota_file(str(path))
    tag = q.tag(b"a")
    q.consume(tag, 5, 60, NOW)
    q.release()
    mapping.close()
    assert create_quota_file(str(path), 64) is False  # an existing file holds counts
    mapping, q = open_quota_file(str(path))
    assert q.peek(tag, 60, NOW)[0] == 1 and q.tag(b"a") == tag
    q.release()
    mapping.close()
    assert os.stat(path).st_mode & 0o777 == 0o600
    path.write_bytes(b"\0" * 100)
    with pytest.raises(ValueError):
        open_quota_file(str(path))
    with pytest.raises(ValueError):
        QuotaCounters(mmap.mmap(-1, 4096))


# ---- request helpers -----------------------------------------------------------------------


def test_extract_api_key():
    h = [(b"Host", b"x"), (b"X-Api-Key", b"k1")]
    assert extract_api_key(h, b"x-api-key", b"", b"api_key") == (1, b"k1")
    assert extract_api_key([(b"Host", b"x")], b"x-api-key", b"", b"api_key") == (0, None)
    assert extract_api_key(h + [(b"x-api-key", b"k2")], b"x-api-key", b"", b"api_key")[0] == 2
    assert extract_api_key(h, b"x-api-key", b"api_key=k1", b"api_key")[0] == 2
    assert extract_api_key([], b"x-api-key", b"a=1&api_key=k%5F1&b", b"api_key") == (1, b"k_1")
    assert extract_api_key([], b"x-api-key", b"api%5Fkey=k", b"api_key") == (1, b"k")
    assert extract_api_key([], b"x-api-key", b"api_key", b"api_key") == (1, b"")
    assert extract_api_key([], b"x-api-key", b"xapi_key=1&api_keys=2", b"api_key") == (0, None)
    assert extract_api_key([], b"x-api-key", b"api_key=%ZZ", b"api_key") == (1, b"%ZZ")
    assert extract_api_key([], b"x-api-key", b"api_key=k", b"") == (0, None)  # query off
    assert extract_api_key([], b"x-api-key", b"&&api_key=k&&", b"api_key") == (1, b"k")


def test_strip_query_param():
    q = b"a=1&api_key=zz&b=2"
    assert strip_query_param(q, b"api_key") == b"a=1&b=2"
    assert strip_query_param(b"api_key=1", b"api_key") == b""
    assert strip_query_param(b"a=1&api%5fkey=1&API_KEY=2", b"api_key") == b"a=1&API_KEY=2"
    assert strip_query_param(b"x=api_key", b"api_key") == b"x=api_key"
    same = b"a=1&b=2"
    assert strip_query_param(same, b"api_key") is same
    assert strip_query_param(b"api_key&a", b"api_key") == b"a"
