"""_core's shared introspection-result table (fluxgate/_introspect.pxi): SHA-256 against
FIPS 180-2 and hashlib, the byte layout, the eviction rules, header validation, and a
writer process racing a reader through the seqlock."""

from __future__ import annotations

import hashlib
import mmap
import multiprocessing
import os
import random
import struct
import time

import pytest

from fluxgate._core import INTROSPECT_LAYOUT, IntrospectionCache, sha256
from fluxgate.shm import create_mapping, open_mapping

NOW = 1_795_000_000.0
HEADER = struct.Struct("<QIIQIIQ24x")  # magic, version, ways, buckets, slot_size, -, stamp
SLOT = struct.Struct("<QQdII32s")  # seq, stamp, expires_at, flags, length, digest


def token(i: int) -> bytes:
    return b"opaque-access-token-%08d-0123456789abcdef" % i


def digest(i: int) -> bytes:
    return hashlib.sha256(token(i)).digest()


def table(entries: int = 8, slot_bytes: int = 1024) -> tuple[mmap.mmap, IntrospectionCache]:
    m = mmap.mmap(-1, IntrospectionCache.size_for(entries, slot_bytes))
    return m, IntrospectionCache.format(m, entries, slot_bytes)


@pytest.fixture
def one_bucket():
    # 8 entries: one bucket, so every digest competes for the same 8 slots.
    m, cache = table(8)
    assert cache.buckets == 1 and cache.capacity == 8
    yield cache
    cache.release()
    m.close()


def alive(cache: IntrospectionCache, i: int, now: float = NOW) -> bool:
    return cache.lookup(token(i), now, None) is not None


# ---- SHA-256 -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        # FIPS 180-2, appendix B.1 and B.2; the empty string as every implementation has it.
        (b"abc", "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"),
        (
            b"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq",
            "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1",
        ),
        (b"", "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"),
    ],
)
def test_sha256_known_answers(message, expected):
    assert sha256(message).hex() == expected


def test_sha256_matches_hashlib():
    rng = random.Random(7662)
    # Every length across the padding boundaries (55/56, 63/64/65 bytes), then random ones.
    lengths = list(range(0, 200)) + [rng.randrange(200, 5000) for _ in range(200)]
    for n in lengths:
        data = rng.randbytes(n)
        assert sha256(data) == hashlib.sha256(data).digest(), n


def test_sha256_takes_bytes_only():
    with pytest.raises(TypeError):
        sha256("abc")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        sha256(None)  # type: ignore[arg-type]


# ---- sizes and layout --------------------------------------------------------------


def test_size_for():
    assert IntrospectionCache.size_for(1) == 64 + 8 * 1024
    assert IntrospectionCache.size_for(8) == 64 + 8 * 1024
    assert IntrospectionCache.size_for(9) == 64 + 2 * 8 * 1024
    assert IntrospectionCache.size_for(100) == 64 + 16 * 8 * 1024  # 13 buckets -> 16
    assert IntrospectionCache.size_for(4096, 256) == 64 + 512 * 8 * 256
    for entries, slot in [(0, 1024), (-1, 1024), (8, 64), (8, 1000), (8, 131072), (2**40, 1024)]:
        with pytest.raises(ValueError):
            IntrospectionCache.size_for(entries, slot)


def test_layout_as_documented():
    m, cache = table(16, 256)
    assert INTROSPECT_LAYOUT["magic"] == struct.unpack("<Q", b"FGINTR01")[0]
    assert (INTROSPECT_LAYOUT["header_size"], INTROSPECT_LAYOUT["slot_header_size"]) == (64, 64)
    magic, version, ways, buckets, slot_size, _, stamp = HEADER.unpack_from(m, 0)
    assert (m[:8], version, ways, buckets, slot_size, stamp) == (b"FGINTR01", 1, 8, 2, 256, 0)
    assert cache.payload_capacity == 256 - 64 and cache.slot_bytes == 256
    d = digest(1)
    assert cache.store(d, NOW + 60, True, b"payload", NOW)
    bucket = int.from_bytes(d[:8], "little") & 1
    slot = [64 + (bucket * 8 + w) * 256 for w in range(8)]
    seq, stamp, expires, flags, length, dg = SLOT.unpack_from(m, slot[0])
    assert (seq, stamp, expires, flags, length, dg) == (2, 1, NOW + 60, 1, 7, d)
    assert m[slot[0] + 64 : slot[0] + 64 + 7] == b"payload"
    assert HEADER.unpack_from(m, 0)[6] == 1  # the header's stamp counter
    assert cache.store(d, NOW + 90, False, b"no", NOW)  # rewritten in place
    assert SLOT.unpack_from(m, slot[0]) == (4, 2, NOW + 90, 0, 2, d)
    assert cache.purge(d)
    assert SLOT.unpack_from(m, slot[0]) == (6, 0, 0.0, 0, 0, bytes(32))
    cache.release()
    m.close()


# ---- store / lookup ----------------------------------------------------------------


def test_round_trip_and_expiry():
    m, cache = table(1000)
    assert cache.lookup(token(1), NOW, {}) is None
    assert cache.store(digest(1), NOW + 30, True, b"\x93\xc3\xa3sub", NOW)
    assert cache.store(digest(2), NOW + 60, False, b"", NOW)
    stamp1, active, expires, payload = cache.lookup(token(1), NOW, {})
    assert (active, expires, payload) == (True, NOW + 30, b"\x93\xc3\xa3sub")
    assert stamp1 >= 1
    stamp2, active, expires, payload = cache.lookup(token(2), NOW, None)
    assert (active, expires, payload) == (False, NOW + 60, b"")
    assert stamp2 != stamp1
    assert cache.lookup_digest(digest(1), NOW, {}) == cache.lookup(token(1), NOW, {})
    assert cache.lookup(token(3), NOW, {}) is None
    # Served while expires_at > now, not at or after it.
    assert cache.lookup(token(1), NOW + 29.999, {}) is not None
    assert cache.lookup(token(1), NOW + 30, {}) is None
    assert cache.lookup(token(2), NOW + 45, {}) is not None
    assert cache.live_entries(NOW) == (1, 1)
    assert cache.live_entries(NOW + 45) == (0, 1)
    assert cache.live_entries(NOW + 60) == (0, 0)
    with pytest.raises(ValueError):
        cache.lookup_digest(digest(1)[:31], NOW, {})
    with pytest.raises(ValueError):
        cache.store(digest(1) + b"x", NOW + 1, True, b"", NOW)
    with pytest.raises(ValueError):
        cache.store(digest(1), float("nan"), True, b"", NOW)
    cache.release()
    m.close()


def test_known_stamp_returns_the_very_object():
    m, cache = table(1024)
    assert cache.store(digest(1), NOW + 60, True, b"record-1", NOW)
    stamp = cache.lookup(token(1), NOW, {})[0]
    decoded = object()
    known = {stamp: decoded}
    assert cache.lookup(token(1), NOW, known) is decoded
    assert cache.lookup_digest(digest(1), NOW, known) is decoded
    # Expired: a miss, whatever `known` holds.
    assert cache.lookup(token(1), NOW + 60, known) is None
    # A new store of the same token has a new stamp: the payload comes back, not the
    # stale decoded object.
    assert cache.store(digest(1), NOW + 90, True, b"record-1b", NOW)
    new = cache.lookup(token(1), NOW, known)
    assert new[0] != stamp and new[3] == b"record-1b"
    # Stamps that share the per-view int cache's entry (stamp % 64) still answer right.
    for i in range(2, 200):
        assert cache.store(digest(i), NOW + 60, True, b"r", NOW)
    stamps = {i: cache.lookup(token(i), NOW, None)[0] for i in range(1, 200)}
    sharing = [i for i in stamps if stamps[i] % 64 == stamps[1] % 64]
    assert len(sharing) >= 3, stamps
    objs = {stamps[i]: object() for i in stamps}
    for _ in range(3):
        for i in sharing:
            assert cache.lookup(token(i), NOW, objs) is objs[stamps[i]]
    cache.release()
    m.close()


def test_overwrite_keeps_one_slot(one_bucket):
    cache = one_bucket
    for k in range(20):
        assert cache.store(digest(1), NOW + 10 + k, k % 2 == 0, b"v%d" % k, NOW)
    assert cache.live_entries(NOW) == (0, 1)  # k = 19: negative
    assert cache.lookup(token(1), NOW, None)[1:] == (False, NOW + 29, b"v19")
    # The other seven slots are still free.
    for i in range(2, 9):
        assert cache.store(digest(i), NOW + 60, True, b"", NOW)
    assert cache.live_entries(NOW) == (7, 1)


def test_payload_must_fit():
    m, cache = table(8, 128)
    assert cache.payload_capacity == 64
    assert not cache.store(digest(1), NOW + 60, True, b"x" * 65, NOW)
    assert cache.lookup(token(1), NOW, None) is None
    assert cache.store(digest(1), NOW + 60, True, b"x" * 64, NOW)
    assert cache.lookup(token(1), NOW, None)[3] == b"x" * 64
    assert not cache.store(digest(1), NOW + 60, True, b"y" * 65, NOW)
    assert cache.lookup(token(1), NOW, None)[3] == b"x" * 64  # untouched
    cache.release()
    m.close()


# ---- eviction ----------------------------------------------------------------------


def test_negative_flood_never_evicts_a_live_positive(one_bucket):
    cache = one_bucket
    for i in range(8):
        assert cache.store(digest(i), NOW + 100 + i, True, b"user", NOW)
    for i in range(1000, 3000):
        assert not cache.store(digest(i), NOW + 1000, False, b"", NOW)
    assert all(alive(cache, i) for i in range(8))
    assert cache.live_entries(NOW) == (8, 0)
    # Once a positive has expired, its slot is fair game for a negative.
    assert cache.store(digest(5000), NOW + 50, False, b"", NOW + 100.5)
    assert not alive(cache, 0, NOW) and alive(cache, 5000, NOW)
    assert all(alive(cache, i) for i in range(1, 8))


def test_negatives_evict_negatives_only(one_bucket):
    cache = one_bucket
    for i in range(4):
        assert cache.store(digest(i), NOW + 100, True, b"user", NOW)
    for i in range(4, 8):
        assert cache.store(digest(i), NOW + 10 * i, False, b"", NOW)  # 40, 50, 60, 70
    # Each new negative takes the negative slot that expires first.
    assert cache.store(digest(100), NOW + 500, False, b"", NOW)
    assert not alive(cache, 4) and all(alive(cache, i) for i in (5, 6, 7, 100))
    assert cache.store(digest(101), NOW + 500, False, b"", NOW)
    assert not alive(cache, 5) and all(alive(cache, i) for i in (6, 7, 100, 101))
    assert all(alive(cache, i) for i in range(4))
    assert cache.live_entries(NOW) == (4, 4)


def test_positive_evicts_the_earliest_negative_first(one_bucket):
    cache = one_bucket
    expiries = [70, 30, 90, 50]
    for i, e in enumerate(expiries):
        assert cache.store(digest(i), NOW + e, False, b"", NOW)
    for i in range(4, 8):
        assert cache.store(digest(i), NOW + 10, True, b"user", NOW)  # expire soonest
    assert cache.store(digest(100), NOW + 100, True, b"user", NOW)
    assert not alive(cache, 1)  # the negative expiring at +30, not a positive at +10
    assert all(alive(cache, i) for i in (0, 2, 3, 4, 5, 6, 7, 100))
    assert cache.store(digest(101), NOW + 100, True, b"user", NOW)
    assert not alive(cache, 3)  # then +50
    assert cache.live_entries(NOW) == (6, 2)


def test_full_of_positives_a_positive_evicts_the_earliest_positive(one_bucket):
    cache = one_bucket
    expiries = [80, 20, 60, 40, 90, 70, 30, 50]
    for i, e in enumerate(expiries):
        assert cache.store(digest(i), NOW + e, True, b"user", NOW)
    assert not cache.store(digest(100), NOW + 100, False, b"", NOW)
    assert cache.store(digest(100), NOW + 100, True, b"user", NOW)
    assert not alive(cache, 1)  # +20
    assert cache.store(digest(101), NOW + 100, True, b"user", NOW)
    assert not alive(cache, 6)  # +30
    assert all(alive(cache, i) for i in (0, 2, 3, 4, 5, 7, 100, 101))


def test_empty_then_expired_before_live(one_bucket):
    cache = one_bucket
    for i in range(8):
        assert cache.store(digest(i), NOW + (5 if i in (2, 6) else 100), False, b"", NOW)
    assert cache.purge(digest(4))
    later = NOW + 10  # entries 2 and 6 have expired
    assert cache.store(digest(100), NOW + 200, False, b"", later)  # the purged slot
    assert all(alive(cache, i, NOW) for i in (0, 1, 2, 3, 5, 6, 7, 100))
    assert cache.store(digest(101), NOW + 200, False, b"", later)  # an expired one
    assert cache.store(digest(102), NOW + 200, False, b"", later)  # the other
    assert not alive(cache, 2, NOW) and not alive(cache, 6, NOW)
    assert all(alive(cache, i, later) for i in (0, 1, 3, 5, 7, 100, 101, 102))


# ---- purge and clear ---------------------------------------------------------------


def test_purge_and_clear():
    m, cache = table(1024)
    for i in range(40):
        assert cache.store(digest(i), NOW + 60, i % 3 != 0, b"p%d" % i, NOW)
    assert cache.live_entries(NOW) == (26, 14)
    assert cache.purge(digest(5))
    assert cache.lookup(token(5), NOW, None) is None
    assert not cache.purge(digest(5))
    assert not cache.purge(digest(999))
    assert cache.live_entries(NOW) == (25, 14)
    last = max(cache.lookup(token(i), NOW, None)[0] for i in range(40) if i != 5)
    cache.clear()
    assert cache.live_entries(NOW) == (0, 0)
    assert all(cache.lookup(token(i), NOW, None) is None for i in range(40))
    # Stamps are never reused: a worker's decoded records stay unambiguous.
    assert cache.store(digest(1), NOW + 60, True, b"again", NOW)
    assert cache.lookup(token(1), NOW, None)[0] > last
    cache.release()
    m.close()


# ---- views, validation, release ----------------------------------------------------


def test_reader_view_cannot_write():
    m, writer = table(8)
    assert writer.store(digest(1), NOW + 60, True, b"x", NOW)
    reader = IntrospectionCache(m, writable=False)
    assert not reader.writable and writer.writable
    assert reader.lookup(token(1), NOW, None)[3] == b"x"
    for call in (
        lambda: reader.store(digest(2), NOW + 60, True, b"x", NOW),
        lambda: reader.purge(digest(1)),
        reader.clear,
    ):
        with pytest.raises(ValueError):
            call()
    # A read-only buffer makes a reader, never a writer.
    frozen = bytes(m)
    assert IntrospectionCache(frozen, writable=False).lookup(token(1), NOW, None)[3] == b"x"
    with pytest.raises(BufferError):
        IntrospectionCache(frozen, writable=True)
    reader.release()
    writer.release()
    m.close()


def corrupted(offset: int, fmt: str, value) -> bytearray:
    m, cache = table(16)
    cache.release()
    data = bytearray(m)
    m.close()
    struct.pack_into(fmt, data, offset, value)
    return data


@pytest.mark.parametrize(
    ("offset", "fmt", "value"),
    [
        (0, "<Q", 0),  # magic
        (0, "<8s", b"FGINTR02"),
        (8, "<I", 2),  # version
        (12, "<I", 4),  # ways
        (16, "<Q", 0),  # buckets
        (16, "<Q", 3),  # not a power of two
        (16, "<Q", 4),  # more than the file holds
        (16, "<Q", 2**62),  # would overflow the size
        (16, "<Q", 1),  # fewer than the file holds
        (24, "<I", 1000),  # slot size not a multiple of 64
        (24, "<I", 64),
        (24, "<I", 2048),
        (24, "<I", 2**31),
    ],
)
def test_corrupt_header_is_a_value_error(offset, fmt, value):
    with pytest.raises(ValueError):
        IntrospectionCache(corrupted(offset, fmt, value), writable=True)


def test_size_mismatch_is_a_value_error():
    m, cache = table(16)
    cache.release()
    good = bytearray(m)
    m.close()
    IntrospectionCache(good, writable=False)
    for bad in (good[:-1], good + bytes(1024), good[:64], good[:63], bytearray()):
        with pytest.raises(ValueError):
            IntrospectionCache(bad, writable=False)
    with pytest.raises(ValueError):
        IntrospectionCache(memoryview(bytearray(len(good) + 1))[1:], writable=False)


def test_format_refuses_wrong_size_and_existing_tables():
    size = IntrospectionCache.size_for(16)
    with pytest.raises(ValueError):
        IntrospectionCache.format(mmap.mmap(-1, size + 4096), 16)
    with pytest.raises(ValueError):
        IntrospectionCache.format(mmap.mmap(-1, size), 100)
    m, cache = table(16)
    with pytest.raises(ValueError, match="not zero"):
        IntrospectionCache.format(m, 16)
    with pytest.raises(BufferError):
        IntrospectionCache.format(bytes(size), 16)  # read-only
    cache.release()
    m.close()


def test_corrupt_slots_are_misses_not_crashes():
    m, cache = table(8, 128)
    assert cache.store(digest(1), NOW + 60, True, b"x", NOW)
    assert cache.store(digest(2), NOW + 60, True, b"y", NOW)
    slot1 = 64  # first way of the only bucket
    struct.pack_into("<I", m, slot1 + 28, 65)  # a length past the slot's payload room
    assert cache.lookup(token(1), NOW, None) is None
    known = {cache.lookup(token(2), NOW, None)[0]: "decoded"}
    struct.pack_into("<Q", m, slot1 + 128, 7)  # slot 2's seqlock stuck odd (writer died)
    assert cache.lookup(token(2), NOW, known) is None  # bounded retries, then a miss
    assert cache.live_entries(NOW) == (1, 0)  # counted by its fixed fields alone
    # The writer takes the stuck slot back.
    assert cache.store(digest(2), NOW + 60, True, b"z", NOW)
    assert struct.unpack_from("<Q", m, slot1 + 128)[0] == 8
    assert cache.lookup(token(2), NOW, None)[3] == b"z"
    cache.release()
    m.close()


def test_release():
    m, cache = table(8)
    assert cache.store(digest(1), NOW + 60, True, b"x", NOW)
    cache.release()
    cache.release()
    m.close()  # the export is gone: the mapping may close
    assert cache.lookup(token(1), NOW, None) is None
    assert cache.capacity == 0 and cache.buckets == 0
    with pytest.raises(ValueError):
        cache.store(digest(1), NOW + 60, True, b"x", NOW)
    with pytest.raises(ValueError):
        cache.live_entries(NOW)


def test_held_export_pins_the_mapping():
    m, cache = table(8)
    with pytest.raises(BufferError):
        m.close()
    cache.release()
    m.close()


# ---- across processes --------------------------------------------------------------


def test_master_and_worker_mappings_see_each_other(tmp_path):
    path = str(tmp_path / "idp.cache")
    size = IntrospectionCache.size_for(1000)
    master_map = create_mapping(path, size)
    master = IntrospectionCache.format(master_map, 1000)

    def check_size(n: int) -> None:
        if n != size:
            raise ValueError(n)

    worker_map = open_mapping(path, check_size)
    worker = IntrospectionCache(worker_map, writable=False)
    assert worker.lookup(token(1), NOW, {}) is None
    assert master.store(digest(1), NOW + 60, True, b"rec", NOW)
    stamp, active, _, payload = worker.lookup(token(1), NOW, {})
    assert (active, payload) == (True, b"rec")
    assert worker.lookup(token(1), NOW, {stamp: "decoded"}) == "decoded"
    assert master.purge(digest(1))
    assert worker.lookup(token(1), NOW, {stamp: "decoded"}) is None
    assert master.store(digest(2), NOW + 60, False, b"", NOW)
    assert worker.live_entries(NOW) == (0, 1)
    master.clear()
    assert worker.live_entries(NOW) == (0, 0)
    worker.release()
    master.release()
    worker_map.close()
    master_map.close()


RACE = struct.Struct("<dBI")  # expires_at, active, body length; body; sha256 of the rest


def _race_payload(i: int, rng: random.Random) -> tuple[float, bool, bytes]:
    expires, active = NOW + 1000 + i, i % 3 != 0
    body = bytes([i & 0xFF]) * rng.randrange(0, 900)
    head = RACE.pack(expires, active, len(body)) + body
    return expires, active, head + hashlib.sha256(head).digest()


def _race_writer(path: str, start, done, seconds: float, iterations: int, stop=None) -> None:
    m = open_mapping(path)
    cache = IntrospectionCache(m, writable=True)
    rng = random.Random(os.getpid())
    start.wait()
    deadline = time.monotonic() + seconds
    i = 0
    while i < iterations and time.monotonic() < deadline and not (stop and stop.is_set()):
        expires, active, payload = _race_payload(i, rng)
        assert cache.store(digest(1), expires, active, payload, NOW)
        if i % 64 == 0:  # neighbours in the bucket come and go too
            cache.store(digest(2 + i % 5), expires, not active, payload[:100], NOW)
            cache.purge(digest(2 + (i + 2) % 5))
        i += 1
    done.set()
    cache.release()
    m.close()


def test_reader_never_sees_a_torn_entry(tmp_path):
    path = str(tmp_path / "race.cache")
    size = IntrospectionCache.size_for(8)  # one bucket: the neighbours share it
    wm = create_mapping(path, size)
    w = IntrospectionCache.format(wm, 8)
    expires, active, payload = _race_payload(0, random.Random(0))
    assert w.store(digest(1), expires, active, payload, NOW)
    w.release()
    wm.close()

    m = open_mapping(path)
    reader = IntrospectionCache(m, writable=False)
    ctx = multiprocessing.get_context("fork")
    start, done, stop = ctx.Event(), ctx.Event(), ctx.Event()
    proc = ctx.Process(target=_race_writer, args=(path, start, done, 8.0, 2_000_000, stop))
    proc.start()
    start.set()
    seen = misses = 0
    last_stamp = 0
    stamps = set()
    # Until the writer has rewritten the slot often enough to have raced the reader, or a
    # bound: on a loaded machine the writer process may get little CPU.
    deadline = time.monotonic() + 8.0
    while time.monotonic() < deadline and not (seen > 1000 and len(stamps) > 100):
        for _ in range(256):
            got = reader.lookup(token(1), NOW, None)
            if got is None:
                misses += 1
                continue
            stamp, active, expires, payload = got
            head, check = payload[:-32], payload[-32:]
            assert hashlib.sha256(head).digest() == check
            assert RACE.unpack_from(head) == (expires, active, len(head) - RACE.size)
            assert stamp >= last_stamp  # one slot: a later read never goes back
            last_stamp = stamp
            stamps.add(stamp)
            seen += 1
        if done.is_set():
            break
    stop.set()
    proc.join(10)
    assert proc.exitcode == 0
    assert done.is_set()
    assert seen > 1000 and len(stamps) > 100, (seen, len(stamps), misses)
    # Known stamps short-circuit under the same race.
    final = reader.lookup(token(1), NOW, None)
    assert reader.lookup(token(1), NOW, {final[0]: "decoded"}) == "decoded"
    reader.release()
    m.close()
