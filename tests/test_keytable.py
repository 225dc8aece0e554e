"""The shared key table and usage file (fluxgate/auth/keytable.py): a worker's view follows
new generations, keeps the old one when a publication is broken, and never loses usage."""

from __future__ import annotations

import ipaddress
import os
import struct

import pytest

from fluxgate._core import KeyTable, RequestState, b64url_decode, merge_ratelimit, response_head
from fluxgate.auth import keytable as kt
from fluxgate.auth.tablewriter import TableWriter
from tests.support.keys import KeyState

NOW = 1_795_000_000.0


@pytest.fixture
def state(tmp_path):
    s = KeyState(tmp_path / "state", clock=lambda: NOW)
    yield s
    s.close()


def worker_view(state: KeyState) -> kt.SharedKeys:
    return kt.SharedKeys(str(state.dir), state.signing_key)


def test_a_worker_follows_new_generations(state):
    _, first = state.generate("first")
    state.table()
    shared = worker_view(state)
    try:
        assert shared.table.generation == 1
        assert shared.table.check(first.encode(), NOW, b"/", (), None, "1.2.3.4")[0] == 0
        assert shared.refresh() is False  # nothing new
        _, second = state.generate("second", scopes=["s"])
        state.store.revoke("first")
        state.table()
        assert shared.refresh() is True and shared.table.generation == 2
        assert shared.table.check(first.encode(), NOW, b"/", (), None, "1.2.3.4")[0] == 5
        code, index, *_ = shared.table.check(second.encode(), NOW, b"/", (), None, "1.2.3.4")
        info = shared.info(index)
        assert code == 0 and info.principal.id == "key:second"
        assert info.principal.upstream_headers() == [
            (b"X-FluxGate-Auth", b"api_key"), (b"X-FluxGate-Subject", b"second"),
            (b"X-FluxGate-Scopes", b"s"),
        ]
        assert shared.info(index) is info  # built once per generation
    finally:
        shared.table.release()


def test_a_broken_publication_keeps_the_last_good_table(state, caplog):
    _, key = state.generate("k")
    state.table()
    shared = worker_view(state)
    try:
        # A bad publication (atomically replaced, as the master publishes): refused.
        kt.publish_table(str(state.dir), b"garbage" * 20)
        assert shared.refresh() is False
        assert "cannot map the key table" in caplog.text
        assert shared.table.check(key.encode(), NOW, b"/", (), None, "")[0] == 0
        state.table()  # the next good publication is taken
        assert shared.refresh() is True
    finally:
        shared.table.release()


def test_rotated_keys_carry_deprecation_and_sunset(state):
    state.generate("svc")
    state.store.rotate("svc", grace=3600, expires_in=None, signing_key=state.signing_key)
    table = state.table()
    shared = worker_view(state)
    try:
        by_name = {shared.info(i).key_id: shared.info(i) for i in range(len(shared.table))}
        old, new = state.store.by_name("svc")
        assert by_name[new.key_id].response_headers == ()
        deprecation, sunset = by_name[old.key_id].response_headers
        assert deprecation == (b"Deprecation", b"@%d" % NOW)
        assert sunset[0] == b"Sunset" and sunset[1].endswith(b" GMT")
    finally:
        shared.table.release()
        table.release()


def test_the_table_file_is_read_only(state):
    state.generate("k")
    state.table()
    path = state.dir / kt.TABLE_FILE
    assert path.stat().st_mode & 0o777 == 0o400
    state.table()  # republishing replaces it regardless
    assert path.stat().st_mode & 0o777 == 0o400


def test_usage_file_grows_and_keeps_data(tmp_path):
    path = str(tmp_path / "keys.usage")
    usage = kt.UsageFile(path, create=True)
    assert usage.created and usage.slots == kt.RESERVED_SLOTS + kt.USAGE_GROWTH
    usage.seed(20, 1_700_000_000, "10.0.0.9", 42)
    usage.seed(usage.slots + 10, 1_700_000_001, "2001:db8::1", 7)  # grows the file
    assert usage.slots > kt.RESERVED_SLOTS + kt.USAGE_GROWTH
    usage.close()
    again = kt.UsageFile(path, create=False)
    assert not again.created
    assert again.read(20) == kt.Usage(1_700_000_000_000, "10.0.0.9", 42)
    assert again.read(again.slots - 1) == kt.Usage(0, None, 0)
    assert again.read(again.slots + 5) == kt.Usage(0, None, 0)
    again.close()
    assert os.stat(path).st_mode & 0o777 == 0o600
    with pytest.raises(FileNotFoundError):
        kt.UsageFile(str(tmp_path / "missing"), create=False)


def address_words(text: str) -> tuple[int, int]:
    """An address as a usage slot holds it (IPv4 mapped into IPv6, two native words)."""
    packed = ipaddress.ip_address(text).packed
    return struct.unpack("=QQ", packed if len(packed) == 16 else b"\0" * 10 + b"\xff\xff" + packed)


def rows_from_read(usage: kt.UsageFile, slots: list[int]) -> list[tuple]:
    """What the flush wrote before snapshot rows: one ``read`` per slot."""
    rows = []
    for slot in slots:
        u = usage.read(slot)
        if u.requests:
            rows.append((slot, u.last_used_ms // 1000 if u.last_used_ms else None, u.address,
                         u.requests))
    return rows


@pytest.mark.parametrize("slots", [None, 3 * kt.USAGE_GROWTH, kt.RESERVED_SLOTS + 9])
def test_snapshot_rows_equal_what_read_gives(tmp_path, slots):
    path = str(tmp_path / "keys.usage")
    if slots is not None and slots % 16:  # a size this module does not make, still valid
        with open(path, "wb") as f:
            f.truncate(slots * kt.SLOT_SIZE)
    usage = kt.UsageFile(path, create=True)
    if slots is not None:
        usage.ensure(slots)
        assert usage.slots == slots
    usage.seed(16, 1_700_000_000, "10.0.0.9", 42)
    usage.seed(17, 1_700_000_001, "2001:db8::1", 7)
    usage.seed(18, None, None, 3)  # counted, never stamped (a row from an older keys.db)
    usage.counters.store(19 * kt.WORDS, 1_700_000_002_999)  # stamped from no usable address
    usage.counters.store(19 * kt.WORDS + 3, 1)
    usage.seed(20, 1_700_000_003, "10.0.0.9", 0)  # no request: no row
    last = usage.slots - 1
    usage.seed(last, 1_700_000_004, "::ffff:10.1.2.3", 2**64 - 1)
    snapshot = usage.snapshot()
    assert len(snapshot) == usage.slots and all(len(raw) == kt.SLOT_SIZE for raw in snapshot)
    used = [16, 17, 18, 19, 20, 21, last]  # 21: never used
    rows = kt.usage_rows(used, [snapshot[slot] for slot in used])
    assert rows == rows_from_read(usage, used)
    assert [row[0] for row in rows] == [16, 17, 18, 19, last]
    assert rows[0] == (16, 1_700_000_000, "10.0.0.9", 42)
    assert rows[2] == (18, None, None, 3) and rows[3] == (19, 1_700_000_002, None, 1)
    usage.close()


OLD = (1_700_000_000_000, *address_words("10.0.0.1"), 5)
NEW = (1_700_000_001_000, *address_words("10.0.0.2"), 6)
HALF = (NEW[0], *OLD[1:3], NEW[3])  # the time stamped, the address not yet stored


@pytest.mark.parametrize("first, second", [
    (HALF, NEW),  # the first copy caught the stamp half done
    (OLD, NEW),   # stamped between the copies
    (OLD, HALF),  # stamped between the copies, the address still to come in the second
], ids=["half-then-done", "old-then-new", "old-then-half"])
def test_snapshot_reads_again_a_slot_stamped_between_its_copies(tmp_path, monkeypatch,
                                                               first, second):
    usage = kt.UsageFile(str(tmp_path / "keys.usage"), create=True)
    slot = 30
    at, hi, lo, requests = NEW  # the stamp is done by the time the slot is read again
    usage.counters.store(slot * kt.WORDS + 1, hi)
    usage.counters.store(slot * kt.WORDS + 2, lo)
    usage.counters.store(slot * kt.WORDS + 3, requests)
    usage.counters.store(slot * kt.WORDS, at)
    copies = []
    for words in (first, second):
        copy = bytearray(usage._copy())
        struct.pack_into("=4Q", copy, slot * kt.SLOT_SIZE, *words)
        copies.append(bytes(copy))
    monkeypatch.setattr(usage, "_copy", iter(copies).__next__)
    raw = usage.snapshot()[slot]
    # Never 10.0.0.1 with the new time: the slot is read again, as ``read`` reads it.
    assert kt.usage_rows([slot], [raw]) == [(slot, 1_700_000_001, "10.0.0.2", 6)]
    assert kt.usage_rows([slot], [raw]) == rows_from_read(usage, [slot])
    monkeypatch.undo()
    usage.close()


def test_snapshot_reads_no_slot_again_when_both_copies_agree(tmp_path, monkeypatch):
    usage = kt.UsageFile(str(tmp_path / "keys.usage"), create=True)
    usage.seed(16, 1_700_000_000, "10.0.0.9", 42)
    monkeypatch.setattr(usage, "_words", lambda slot: pytest.fail(f"slot {slot} read again"))
    assert kt.usage_rows([16], [usage.snapshot()[16]]) == [(16, 1_700_000_000, "10.0.0.9", 42)]
    monkeypatch.undo()
    usage.close()


def test_build_table_sizes(state):
    for n in (0, 1, 7, 100):
        records = [state.generate(f"n{n}-{i}")[0] for i in range(n)]
        data = kt.build_table(records, generation=5, usage_slots=state.usage.slots,
                              quota_tag=state.quotas.tag)
        table = KeyTable(data, state.signing_key)
        header = kt._HEADER.unpack_from(data)
        n_buckets, buckets_off, built_keys = header[5], header[6], header[12]
        # Keys take at most 2/3 of the buckets; the home region (an entry per bucket) is
        # all published.
        assert built_keys == n and n_buckets > 3 * n // 2
        assert len(table) == n_buckets and table.generation == 5
        for r in records:
            # Each key's entry sits at the index of the bucket that names it.
            index = table.find(r.key_id)
            assert 0 <= index < n_buckets
            assert struct.unpack_from("=I", data, buckets_off + 4 * index)[0] == index + 1
            home = kt.home_bucket(b64url_decode(r.key_id.encode()), n_buckets)
            assert (index - home) % n_buckets < n_buckets // 2
        table.release()
        # Entries on a 128-byte boundary: two cache lines each, not three.
        entries_off = kt._HEADER.unpack_from(data)[7]
        assert entries_off % kt.ENTRY_ALIGN == 0 and kt.ENTRY_ALIGN == 128


def test_equal_lists_are_in_the_pool_once(state):
    rights = {"scopes": ["read", "write"], "routes": ["/v1"], "allow_ips": ["10.0.0.0/8"]}
    a, _ = state.generate("a", **rights)
    b, key_b = state.generate("b", **rights)
    c, key_c = state.generate("c", scopes=["read"], routes=["/v2"], allow_ips=["192.168.0.0/16"])
    d, _ = state.generate("d")
    records = [a, b, c, d]
    data = kt.build_table(records, generation=1, usage_slots=state.usage.slots, quota_tag=None)
    header = kt._HEADER.unpack_from(data)
    entries_off = header[7]
    table = KeyTable(data, state.signing_key)
    fields = [kt._ENTRY.unpack_from(data, entries_off + table.find(r.key_id) * kt._ENTRY.size)
              for r in records]
    lists = [(f[12], f[14], f[16]) for f in fields]  # scopes, routes and CIDRs offsets
    assert lists[0] == lists[1]
    assert all(x != y for x, y in zip(lists[0], lists[2], strict=True))
    assert all(f[16] % 8 == 0 for f in fields) and fields[3][13:18:2] == (0, 0, 0)
    for record, expected in zip(records, (
            (("read", "write"), ("/v1",)), (("read", "write"), ("/v1",)),
            (("read",), ("/v2",)), ((), ())), strict=True):
        entry = table.entry(table.find(record.key_id))
        assert (entry["scopes"], entry["routes"]) == expected
    ip = "10.1.2.3"
    assert table.check(key_b.encode(), 1_795_000_000.0, b"/v1", (b"write",), None, ip)[0] == 0
    assert table.check(key_c.encode(), 1_795_000_000.0, b"/v2", (b"write",), None,
                       "192.168.1.1")[0] == kt.REASONS.index("insufficient_scope")
    table.release()


def test_merge_ratelimit_keeps_the_stricter_quota():
    req = RequestState()
    assert req.ratelimit_headers() == []
    merge_ratelimit(req, 100, 40, 60)
    merge_ratelimit(req, 10, 3, 5)  # stricter: replaces
    merge_ratelimit(req, 1000, 999, 3600)  # looser: ignored
    assert req.ratelimit_headers() == [(b"RateLimit-Limit", b"10"),
                                       (b"RateLimit-Remaining", b"3"), (b"RateLimit-Reset", b"5")]
    merge_ratelimit(req, 5, 3, 1)  # as strict: the first one stays
    assert req.ratelimit_headers()[0] == (b"RateLimit-Limit", b"10")
    assert req.response_headers == []  # no header objects until a reply is written
    with pytest.raises(ValueError):
        merge_ratelimit(req, 0, 0, 0)  # a limit of 0 would read as "no quota"


@pytest.mark.parametrize("value", [0, 7, 10, 99, 100, 101, 1_000, 4_000_000_000, 2**64 - 1])
def test_merge_ratelimit_writes_plain_decimals(value):
    req = RequestState()
    merge_ratelimit(req, max(value, 1), value, -3)  # a reset in the past is 0
    expected = [(b"RateLimit-Limit", b"%d" % max(value, 1)),
                (b"RateLimit-Remaining", b"%d" % value), (b"RateLimit-Reset", b"0")]
    assert req.ratelimit_headers() == expected
    req.request_id = b"r"
    head = response_head(b"HTTP/1.1 200 OK\r\n", b"", req, [], None, False, False)
    assert head == (b"HTTP/1.1 200 OK\r\nX-Request-Id: r\r\n"
                    + b"".join(b"%s: %s\r\n" % pair for pair in expected) + b"\r\n")


def test_revoke_in_place_flips_only_the_keys_named(state):
    made = [state.generate(f"k{i}") for i in range(50)]  # enough for probes to collide
    state.table()
    shared = worker_view(state)
    writer = TableWriter(str(state.dir / kt.TABLE_FILE))
    try:
        ids = [r.key_id for r, _ in made[:3]]
        ghost = made[3][0].key_id[:-1] + ("A" if made[3][0].key_id[-1] != "A" else "B")
        assert writer.revoke(ids + [ghost]) == [ghost]
        codes = [shared.table.check(text.encode(), NOW, b"/", (), None, "1.2.3.4")[0]
                 for _, text in made]
        assert codes == [5, 5, 5] + [0] * 47  # the mapped generation, no refresh
        assert shared.table.generation == 1 and shared.refresh() is False
        assert os.stat(state.dir / kt.TABLE_FILE).st_mode & 0o777 == 0o400
        assert writer.revoke(ids) == []  # again: nothing changes
        assert writer.revoke([]) == []
    finally:
        writer.close()
        shared.table.release()


def test_revoke_in_place_leaves_a_foreign_file_alone(state):
    path = state.dir / kt.TABLE_FILE
    path.write_bytes(b"\0" * 200)
    path.chmod(0o400)
    with pytest.raises(ValueError, match="not a key table"):
        TableWriter(str(path))
    assert path.read_bytes() == b"\0" * 200
    assert os.stat(path).st_mode & 0o777 == 0o400


def test_changes_gives_the_slots_stamped_since_the_last_flush_and_only_those(tmp_path):
    usage = kt.UsageFile(str(tmp_path / "keys.usage"), create=True)
    try:
        flushed = bytearray()
        assert usage.changes(flushed) == ([], [])  # all zeros, as the empty past
        assert len(flushed) == usage.slots * kt.SLOT_SIZE
        # Slots in one block, in another, at a block's edge and past the file's first size.
        per_block = kt.USAGE_BLOCK // kt.SLOT_SIZE
        chosen = [20, 21, per_block - 1, per_block, 5 * per_block + 3]
        for n, slot in enumerate(chosen):
            usage.seed(slot, 1_700_000_000 + n, "10.0.0.9", n + 1)
        grown = usage.slots + 10
        usage.seed(grown, 1_700_000_100, "2001:db8::1", 7)
        slots, raws = usage.changes(flushed)
        assert slots == chosen + [grown]
        assert raws == [usage.snapshot()[s] for s in slots]
        assert usage.changes(flushed) == ([], [])  # nothing since
        usage.seed(21, 1_700_000_200, "10.0.0.8", 9)
        assert usage.changes(flushed)[0] == [21]
        usage.count(kt.STAT_KEY_QUOTA)  # a counter in a reserved slot changes too
        assert usage.changes(flushed)[0] == [0]
    finally:
        usage.close()
