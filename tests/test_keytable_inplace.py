"""Keys published in place into a table's spare room (fluxgate/auth/tablewriter.py), as a
worker that mapped the table before sees them: whole or not at all, hostile files refused
without a crash, and readers racing the writer in another process."""

from __future__ import annotations

import mmap
import multiprocessing
import os
import struct

import pytest

from fluxgate._core import KeyTable
from fluxgate.auth import keytable as kt
from fluxgate.auth.tablewriter import TableWriter
from tests.support.keys import DAY, KeyState

NOW = 1_795_000_000.0
OK, UNKNOWN, BAD_SECRET, REVOKED, EXPIRED = 0, 3, 4, 5, 6


@pytest.fixture
def state(tmp_path):
    s = KeyState(tmp_path / "state", clock=lambda: NOW)
    yield s
    s.close()


def publish(state: KeyState, *, spare: int, spare_pool: int | None = None) -> TableWriter:
    """Publish keys.db's keys with ``spare`` entries of room; the master's writer of it."""
    records = state.store.for_table(NOW, 7 * DAY)
    state.usage.ensure(max((kt.usage_slot(r) for r in records), default=0) + 1 + spare)
    kt.publish_table(str(state.dir), kt.build_table(
        records, generation=1, usage_slots=state.usage.slots, quota_tag=state.quotas.tag,
        spare=spare, spare_pool=spare_pool))
    return TableWriter(str(state.dir / kt.TABLE_FILE))


def mapped(state: KeyState) -> tuple[KeyTable, mmap.mmap]:
    with open(state.dir / kt.TABLE_FILE, "rb") as f:
        mapping = mmap.mmap(f.fileno(), 0, mmap.MAP_SHARED, mmap.PROT_READ)
    return KeyTable(mapping, state.signing_key, state.usage.mapping, state.quotas), mapping


def code(table: KeyTable, key: str, now: float = NOW) -> int:
    return table.check(key.encode(), now, b"/", (), None, "10.0.0.1")[0]


def test_keys_added_in_place_work_in_a_table_mapped_before(state):
    _, old = state.generate("old")
    writer = publish(state, spare=8)
    table, mapping = mapped(state)
    try:
        first, new = state.generate("new", scopes=["read"], routes=["/v1"],
                                    allow_ips=["10.0.0.0/8"], quota=(5, 60))
        assert code(table, new) == UNKNOWN
        assert writer.room([first])
        writer.put([first], state.quotas.tag)
        writer.set_generation(2)
        assert code(table, old) == OK and table.generation == 2
        code_, index, limit, remaining, _ = table.check(
            new.encode(), NOW, b"/v1/x", (b"read",), None, "10.1.2.3")
        assert (code_, limit, remaining) == (OK, 5, 4)
        assert table.entry(index)["name"] == "new" and table.entry(index)["routes"] == ("/v1",)
        assert table.check(new.encode(), NOW, b"/v2", (), None, "10.1.2.3")[0] == 7
        assert table.check(new.encode(), NOW, b"/v1", (), None, "192.0.2.1")[0] == 9
        assert writer.keys == 2 and kt.read_generation(str(state.dir)) == 2
    finally:
        table.release()
        mapping.close()
        writer.close()
    assert oct(os.stat(state.dir / kt.TABLE_FILE).st_mode & 0o777) == "0o400"


def test_a_changed_key_gets_a_new_entry_its_bucket_names(state):
    record, key = state.generate("k")
    writer = publish(state, spare=8)
    table, mapping = mapped(state)
    try:
        before = table.find(record.key_id)
        renewed = state.store.renew("k", expires_in=2 * DAY)
        writer.put([renewed], state.quotas.tag)
        after = table.find(record.key_id)
        assert after != before and table.entry(after)["expires_at"] == renewed.expires_at
        # The build placed the key in the home region; its new entry follows that region,
        # and the old one sends readers to the bucket.
        assert before < writer.n_buckets <= after
        flags = mapping[writer.entries_off + before * kt._ENTRY.size + kt._FLAGS_OFFSET]
        assert flags & kt.KEY_LAYOUT["flag_superseded"]
        assert code(table, key, NOW + 1.5 * DAY) == OK
        assert writer.keys == 1  # the same key: not one more
        (revoked,) = state.store.revoke("k")
        assert writer.revoke([record.key_id, "AAAAAAAAAAAA"]) == ["AAAAAAAAAAAA"]
        assert code(table, key) == REVOKED
        writer.put([revoked], state.quotas.tag)  # its new entry says so too
        assert code(table, key) == REVOKED
    finally:
        table.release()
        mapping.close()
        writer.close()


def test_room_runs_out_by_entries_pool_or_usage_slots(state):
    writer = publish(state, spare=2, spare_pool=64)
    try:
        a, _ = state.generate("a")
        b, _ = state.generate("b")
        c, _ = state.generate("c")
        assert writer.room([a, b]) and not writer.room([a, b, c])
        long_name, _ = state.generate("n" * 60, scopes=["s" * 30])
        assert not writer.room([a, long_name])  # 64 bytes of pool do not hold both
        far = a.__class__(**{**a.__dict__, "slot": writer.usage_slots})
        assert not writer.room([far])  # beyond the usage file the table was built for
        writer.put([a, b], state.quotas.tag)
        with pytest.raises(ValueError, match="no room"):
            writer.put([c], state.quotas.tag)
        assert writer.spare_used() == 1.0
    finally:
        writer.close()


# ---- hostile files ---------------------------------------------------------------------------

HEADER = kt._HEADER


def fields(data: bytes) -> dict:
    names = ("magic", "version", "entry_size", "generation", "n", "n_buckets", "buckets_off",
             "entries_off", "pool_off", "pool_len", "usage_slots", "capacity", "built_keys",
             "pool_used")
    return dict(zip(names, HEADER.unpack_from(data), strict=True))


def with_header(data: bytes, **changes) -> bytearray:
    out = bytearray(data)
    HEADER.pack_into(out, 0, *{**fields(data), **changes}.values())
    return out


def spare_table(state: KeyState) -> tuple[bytes, str, object]:
    """A table of one key with room for 4, and another key (not in it) with its text."""
    state.generate("in")
    records = state.store.for_table(NOW, 7 * DAY)
    extra, text = state.generate("extra")
    state.usage.ensure(64)
    data = kt.build_table(records, generation=1, usage_slots=state.usage.slots,
                          quota_tag=None, spare=4)
    return data, text, extra


def published_by_hand(data: bytes, extra, state: KeyState, *, count: int) -> bytearray:
    """``data`` with ``extra`` written after its entries and its bucket set, but a header
    that says ``count`` entries."""
    f = fields(data)
    out = bytearray(data)
    pool = bytearray()
    raw, entry = kt.encode_entry(extra, pool=pool, usage_slots=f["usage_slots"],
                                 quota_tag=None, base=f["pool_used"])
    out[f["pool_off"] + f["pool_used"]:f["pool_off"] + f["pool_used"] + len(pool)] = pool
    at = f["entries_off"] + f["n"] * kt._ENTRY.size
    out[at:at + kt._ENTRY.size] = entry
    bucket = kt.home_bucket(raw, f["n_buckets"])
    while struct.unpack_from("=I", out, f["buckets_off"] + 4 * bucket)[0]:
        bucket = (bucket + 1) % f["n_buckets"]
    struct.pack_into("=I", out, f["buckets_off"] + 4 * bucket, f["n"] + 1)
    return with_header(bytes(out), n=count)


def test_a_bucket_naming_an_unpublished_entry_is_an_unknown_key(state):
    data, text, extra = spare_table(state)
    n = fields(data)["n"]
    table = KeyTable(bytes(published_by_hand(data, extra, state, count=n)), state.signing_key)
    assert code(table, text) == UNKNOWN and len(table) == n
    table = KeyTable(bytes(published_by_hand(data, extra, state, count=n + 1)),
                     state.signing_key)
    assert code(table, text) == OK and len(table) == n + 1


def test_an_inconsistent_entry_published_later_is_refused_not_read(state):
    data, text, extra = spare_table(state)
    f = fields(data)
    # Mapped with the entry unpublished (passes the check at map time), then published
    # with a name far outside the pool: the reader refuses it when its bucket names it.
    good = published_by_hand(data, extra, state, count=f["n"])
    table_bytes = bytearray(good)
    at = f["entries_off"] + f["n"] * kt._ENTRY.size + struct.calcsize("=16s32sqqqQIIII")
    struct.pack_into("=II", table_bytes, at, 1 << 30, 8)  # name offset, length
    table = KeyTable(table_bytes, state.signing_key)
    struct.pack_into("=I", table_bytes, 24, f["n"] + 1)  # now published
    assert code(table, text) == UNKNOWN
    # A count beyond the capacity is no publication either.
    struct.pack_into("=I", table_bytes, 24, f["capacity"] + 1)
    assert code(table, text) == UNKNOWN


def test_headers_that_lie_about_room_are_refused(state):
    data, _, _ = spare_table(state)
    f = fields(data)
    for changes in ({"capacity": f["n"] - 1}, {"n": f["n_buckets"] - 1},
                    {"built_keys": f["n_buckets"] + 1},
                    {"capacity": 1 << 31}, {"n": f["capacity"] + 1}):
        with pytest.raises(ValueError, match="key table"):
            KeyTable(bytes(with_header(data, **changes)), state.signing_key)
    # A bucket past the capacity.
    out = bytearray(data)
    struct.pack_into("=I", out, f["buckets_off"], f["capacity"] + 1)
    with pytest.raises(ValueError, match="bucket points past"):
        KeyTable(bytes(out), state.signing_key)


def test_a_table_whose_buckets_are_all_taken_ends_the_probe(state):
    data, text, _ = spare_table(state)
    f = fields(data)
    out = bytearray(data)
    for b in range(f["n_buckets"]):  # every bucket names entry 1 (no empty one)
        struct.pack_into("=I", out, f["buckets_off"] + 4 * b, 1)
    table = KeyTable(bytes(out), state.signing_key)
    assert code(table, text) == UNKNOWN


# ---- a reader in another process, racing the writer ------------------------------------------


def _reader(state_dir: str, signing_key: bytes, keys: list[str], rounds: int, out) -> None:
    """Check every key, ``rounds`` times over, in a table mapped once; the codes seen."""
    with open(os.path.join(state_dir, kt.TABLE_FILE), "rb") as f:
        mapping = mmap.mmap(f.fileno(), 0, mmap.MAP_SHARED, mmap.PROT_READ)
    table = KeyTable(mapping, signing_key)
    seen = [[] for _ in keys]
    for _ in range(rounds):
        for i, key in enumerate(keys):
            c = table.check(key.encode(), NOW, b"/", (), None, "10.0.0.1")[0]
            if not seen[i] or seen[i][-1] != c:
                seen[i].append(c)
    table.release()
    out.send(seen)


def test_a_racing_reader_sees_each_key_whole_or_not_at_all(state):
    stable, stable_key = state.generate("stable")
    writer = publish(state, spare=600)
    made = [state.generate(f"k{i}") for i in range(200)]
    ctx = multiprocessing.get_context("fork")
    receive, send = ctx.Pipe(duplex=False)
    reader = ctx.Process(target=_reader, args=(
        str(state.dir), state.signing_key, [stable_key] + [k for _, k in made], 300, send))
    reader.start()
    try:
        # New keys one at a time, and new versions of one key flipping between expired and
        # not, while the reader checks them all over and over.
        for i, (record, _) in enumerate(made):
            writer.put([record], None)
            version = state.store.renew("stable", expires_in=DAY if i % 2 else 1)
            writer.put([version.__class__(**{**version.__dict__,
                                             "expires_at": int(NOW) + (DAY if i % 2 else -1)})],
                       None)
        seen = receive.recv()
        reader.join(30)
    finally:
        if reader.is_alive():
            reader.kill()
        writer.close()
    assert reader.exitcode == 0
    # The key that kept changing was always found, valid or expired: never a torn entry
    # (a digest that does not match, an unknown key, an inconsistent entry).
    assert set(seen[0]) <= {OK, EXPIRED}
    # A new key is unknown until published, then accepted for good.
    for codes in seen[1:]:
        assert codes in ([UNKNOWN], [UNKNOWN, OK], [OK]), codes
    assert stable.key_id
