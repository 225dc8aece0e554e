"""The shared key table and the usage file.

The master compiles the keys of keys.db into ``state_dir/keys.table`` (write, fsync, rename)
at start, with room for more keys than it holds. Keys added or changed later are written into
that room in place (fluxgate/auth/tablewriter.py), through the same page cache every worker
maps: no new file, no remap. When the room runs low the master compiles a new file, writes
into it the changes made meanwhile, and renames it over the old one: a generation with a new
inode, which each worker notices by ``stat`` on its sweep (4 times a second) and maps. Each
worker maps the file read-only, so N workers share one copy in the page cache.

``keys.table`` layout, version 3 (native byte order; sizes in ``_core.KEY_LAYOUT``; the reader
is ``_core.KeyTable``, which validates every offset when it maps a generation, and an entry
added later when a bucket first names it)::

    header, 96 bytes: magic u64 | version u32 | entry size u32 | generation u64 |
        entries u32 (published so far) | buckets u32 | buckets offset u64 | entries offset u64 |
        pool offset u64 | pool length u64 (its room) | usage slots u64 |
        capacity u32 (entries the file has room for) | keys built u32 | pool used u64 |
        8 zero bytes
    buckets: u32 each, entry index + 1 (0: empty); a key's home bucket is the first 4 bytes of
        its id (random) as a u32 h, scaled as h * buckets >> 32, then linear probing
    entries, 128 bytes each; the first ``buckets`` of them are the home region, where a build
        places each key at the index of its bucket, the other entries zero: readers look for
        a key there first, from its id alone (and the request parser prefetches it), and
        read the buckets only for keys added or changed in place, whose entries follow the
        home region (a changed key's entry in the home region is flagged superseded).
        An entry: id (9 bytes, zero-padded to 16) | digest (32) | expires_at i64 |
        sunset_at i64 | deprecated_at i64 | quota tag u64 | quota limit u32 |
        quota window u32 | usage slot u32 | flags u32 (1: revoked, 2: superseded) |
        (offset u32, length u32) of the name, and (offset u32, count u32) of the scopes,
        routes and CIDRs in the pool
    pool: names; scope and route lists as (u16 length, bytes)...; CIDRs as 24-byte records
        {address 16 bytes (IPv4 mapped into IPv6), prefix u32 (+96 for IPv4), 0 u32}, 8-aligned;
        entries may share a list (a build writes each distinct one once)

``keys.usage`` (created once, mode 0600, grown but never recreated): 32-byte slots of four u64
{last use in unix ms, client address (16 bytes), requests}. Workers stamp a key's slot when
they accept it (the address at most once a second, by compare-exchange); the master copies
the slots into keys.db every few seconds, so last use costs no database write per request.
The first ``RESERVED_SLOTS`` slots hold counters for metrics (``STAT_*`` word indexes: quota
refusals, which outlive a master as the counts do); a key's slot is ``RESERVED_SLOTS`` + its
row id.
"""

from __future__ import annotations

import functools
import ipaddress
import logging
import math
import mmap
import os
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from email.utils import formatdate
from itertools import chain, compress, count
from operator import ne, or_
from typing import TYPE_CHECKING, Any

from fluxgate._core import (
    KEY_FORMAT,
    KEY_LAYOUT,
    Counters,
    KeyTable,
    PrincipalCache,
    b64url_decode,
    keytab_home_region,
)
from fluxgate.auth.keys import load_signing_key
from fluxgate.auth.keystore import json_strings
from fluxgate.auth.principal import Principal
from fluxgate.auth.quotas import QUOTA_FILE, key_identity, open_quota_file
from fluxgate.auth.runtime import worker_shared
from fluxgate.cluster.connect import is_redis_url

if TYPE_CHECKING:
    from fluxgate.auth.keystore import KeyRecord, TableRow

log = logging.getLogger("fluxgate.keys")

TABLE_FILE = "keys.table"
USAGE_FILE = "keys.usage"
RESERVED_SLOTS = 16
USAGE_GROWTH = 4096  # slots added at a time
INFOS_LIMIT = 131072  # keys whose principal a worker keeps built (~0.7 kB each)
USAGE_BLOCK = 4096  # bytes of usage slots a flush compares at once (128 slots)
SLOT_SIZE = KEY_LAYOUT["usage_slot_size"]
WORDS = SLOT_SIZE // 8
REASONS: tuple[str, ...] = KEY_FORMAT["reasons"]
# Counter words in the reserved slots.
STAT_KEY_QUOTA = 0        # refused: the key's own quota is spent
STAT_KEY_QUOTA_FULL = 1   # refused: no quota bucket free for the key
STAT_RULE_REJECTED = 2    # refused by a `quota` middleware rule
STAT_RULE_FULL = 3        # refused by a `quota` rule: no bucket free

_HEADER = struct.Struct("=QIIQIIQQQQQIIQ8x")
_ENTRY = struct.Struct("=16s32sqqqQIIIIIIIIIIII")
_CIDR = struct.Struct("=16sII")
_U16 = struct.Struct("=H")
_U32 = struct.Struct("=I")
_SLOT = struct.Struct(f"={WORDS}Q")
BLOCK_SLOTS = USAGE_BLOCK // SLOT_SIZE
_BLOCK = struct.Struct(f"{SLOT_SIZE}s" * BLOCK_SLOTS)  # a block of usage slots, one bytes each
assert _HEADER.size == KEY_LAYOUT["keytab_header_size"]
assert _ENTRY.size == KEY_LAYOUT["key_entry_size"]
assert _CIDR.size == KEY_LAYOUT["cidr_size"]


def usage_slot(record: KeyRecord) -> int:
    return RESERVED_SLOTS + record.slot


# ---- building a generation (master) ---------------------------------------------------------


ENTRY_ALIGN = 128  # bytes; the mapping starts on a page
SPARE_POOL_PER_ENTRY = 256  # bytes of names and lists left per spare entry
_REVOKED_FLAG = KEY_LAYOUT["flag_revoked"]
_SUPERSEDED_FLAG = KEY_LAYOUT["flag_superseded"]


def _align(n: int, to: int) -> int:
    return (n + to - 1) // to * to


def home_bucket(raw_id: bytes, n_buckets: int) -> int:
    """The bucket where the probe for key id ``raw_id`` starts (as ``_core.KeyTable``'s)."""
    return _U32.unpack_from(raw_id)[0] * n_buckets >> 32


def _cidr_record(text: str) -> bytes:
    net = ipaddress.ip_network(text, strict=True)
    if net.version == 4:
        packed = b"\0" * 10 + b"\xff\xff" + net.network_address.packed
        return _CIDR.pack(packed, net.prefixlen + 96, 0)
    return _CIDR.pack(net.network_address.packed, net.prefixlen, 0)


def build_table(
    records: Sequence[KeyRecord],
    *,
    generation: int,
    usage_slots: int,
    quota_tag: Callable[[bytes], int] | None,
    spare: int = 0,
    spare_pool: int | None = None,
) -> bytes:
    """The bytes of one table generation holding ``records``. ``quota_tag`` maps a quota
    identity to its bucket tag (``QuotaCounters.tag``); without it no key has a quota.

    ``spare`` entries (and ``spare_pool`` bytes of names and lists, SPARE_POOL_PER_ENTRY
    each by default) are left free for ``TableWriter`` to add keys in place."""
    n = len(records)
    # Keys (those built and those added in place) take at most 2/3 of the buckets: short
    # probes. The home region has an entry per bucket, so its size is what that load costs
    # in memory: ~200 bytes a key, against ~140 for entries and buckets alone.
    n_buckets = (n + spare) * 3 // 2 + 1
    capacity = n_buckets + spare
    buckets_off = _HEADER.size
    # Entries start on a 128-byte boundary: each 128-byte entry is then two cache lines
    # (one adjacent-line pair) rather than three, and a request reads fields in all of
    # them. Readers only require 8-byte alignment.
    entries_off = _align(buckets_off + 4 * n_buckets, ENTRY_ALIGN)
    pool_off = entries_off + capacity * _ENTRY.size
    pool = bytearray()
    entries = bytearray()
    # Keys of one service usually hold the same scopes, routes and networks: each list is
    # in the pool once, so that a request checking one finds it where the last request did
    # (cached, and on a page the TLB holds) instead of on a page of its own.
    encode = functools.partial(encode_entry, pool=pool, usage_slots=usage_slots,
                               quota_tag=quota_tag, shared={})
    for r in records:
        entries += encode(r)[1]
    buckets, home = keytab_home_region(entries, n_buckets)
    pool_used = len(pool)
    pool_len = _align(pool_used + (spare * SPARE_POOL_PER_ENTRY if spare_pool is None
                                   else spare_pool), 8)
    header = _HEADER.pack(
        KEY_LAYOUT["keytab_magic"], KEY_LAYOUT["keytab_version"], _ENTRY.size, generation,
        n_buckets, n_buckets, buckets_off, entries_off, pool_off, pool_len, usage_slots,
        capacity, n, pool_used,
    )
    out = bytearray(header)
    out += buckets
    out += b"\0" * (entries_off - len(out))
    out += home
    out += b"\0" * (pool_off - len(out))
    out += pool
    out += b"\0" * (pool_off + pool_len - len(out))
    return bytes(out)


def encode_entry(r: KeyRecord, *, pool: bytearray, usage_slots: int,
                 quota_tag: Callable[[bytes], int] | None, base: int = 0,
                 shared: dict[bytes, int] | None = None) -> tuple[bytes, bytes]:
    """(raw key id, the entry's bytes) of ``r`` (a ``KeyRecord`` or a ``TableRow``); its
    name and lists appended to ``pool``, which starts ``base`` (a multiple of 8) bytes into
    the table's pool. With ``shared`` ({encoded list: its offset}, filled as lists are
    appended), a list already in the pool is pointed at rather than appended again."""
    raw_id = b64url_decode(r.key_id.encode())
    name = r.name.encode()
    name_off = base + len(pool)
    pool += name
    scopes, routes, allow_ips = key_lists(r)
    # Most keys have no routes or networks, and many no scopes: an empty list costs no call.
    at = base + len(pool)
    scopes_off = _pooled(pool, base, shared, _strings_record(scopes), align=1) if scopes else at
    at = base + len(pool)
    routes_off = _pooled(pool, base, shared, _strings_record(routes), align=1) if routes else at
    # CIDR records are read as 8-byte aligned structures (an empty list's offset too).
    if allow_ips:
        cidrs_off = _pooled(pool, base, shared, b"".join(map(_cidr_record, allow_ips)), align=8)
    else:
        pad = -len(pool) % 8  # base is a multiple of 8
        if pad:
            pool += b"\0" * pad
        cidrs_off = base + len(pool)
    tag = 0
    if r.quota_limit is not None and quota_tag is not None:
        tag = quota_tag(key_identity(r.name, r.quota_window))
    slot = RESERVED_SLOTS + r.slot
    if slot >= usage_slots:
        raise ValueError(f"usage slot {slot} is beyond the usage file ({usage_slots})")
    valid_until = r.valid_until
    return raw_id, _ENTRY.pack(
        raw_id, r.digest, valid_until, valid_until if r.grace_until is not None else 0,
        r.rotated_at or 0, tag, r.quota_limit or 0, r.quota_window or 0, slot,
        _REVOKED_FLAG if r.revoked_at is not None else 0,
        name_off, len(name), scopes_off, len(scopes), routes_off, len(routes),
        cidrs_off, len(allow_ips),
    )


def _strings_record(strings: Sequence[str]) -> bytes:
    # A scope or route list as the pool holds it: (u16 length, bytes) per string.
    return b"".join(_U16.pack(len(b)) + b for b in (s.encode() for s in strings))


def _pooled(pool: bytearray, base: int, shared: dict[bytes, int] | None, record: bytes, *,
            align: int) -> int:
    """The offset of ``record`` (not empty) in the table's pool: where ``shared`` says an
    equal one is, or appended to ``pool`` (after padding to ``align``)."""
    if shared is not None:
        at = shared.get(record)
        if at is not None:
            return at
    pad = -(base + len(pool)) % align
    if pad:
        pool += b"\0" * pad
    at = base + len(pool)
    pool += record
    if shared is not None:
        shared[record] = at
    return at


def key_lists(r: KeyRecord | TableRow) -> tuple[Sequence[str], Sequence[str], Sequence[str]]:
    """The scopes, routes and allowed networks of a record, or of a row (JSON text)."""
    if isinstance(r.scopes, str):
        return json_strings(r.scopes), json_strings(r.routes), json_strings(r.allow_ips)
    return r.scopes, r.routes, r.allow_ips


def publish_table(state_dir: str, data: bytes) -> None:
    """Replace ``keys.table`` atomically: workers holding the old mapping keep it intact.

    The file is never rewritten in place (a worker's mapping of a truncated file would fault),
    so it is created read-only (0400): an accidental in-place edit fails instead. The writes
    in place are ``TableWriter``'s (fluxgate/auth/tablewriter.py), into room the file was
    built with: its size never changes."""
    replace_table(state_dir, write_table(state_dir, data))


def write_table(state_dir: str, data: bytes) -> str:
    """Write and fsync a generation beside ``keys.table``; its path, for ``replace_table``."""
    path = os.path.join(state_dir, TABLE_FILE)
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        os.unlink(tmp)  # a leftover of a crash, read-only: O_TRUNC could not reopen it
    except FileNotFoundError:
        pass
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o400)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return tmp


def replace_table(state_dir: str, tmp: str) -> None:
    """Make the generation ``write_table`` wrote the published one (an atomic rename)."""
    os.replace(tmp, os.path.join(state_dir, TABLE_FILE))


_FLAGS_OFFSET = struct.calcsize("=16s32sqqqQIII")  # of the flags u32 in an entry
# The revoked and superseded bits live in the flags word's first byte (each set alone).
assert _REVOKED_FLAG < 256 and _SUPERSEDED_FLAG < 256


def open_writable(path: str) -> int:
    """A read-write descriptor of a table file, which stays 0400: nothing else may open it
    to write; only this open needs the write bit, for a moment."""
    os.chmod(path, 0o600, follow_symlinks=False)
    try:
        return os.open(path, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
    finally:
        os.chmod(path, 0o400, follow_symlinks=False)


def read_generation(state_dir: str) -> int:
    """The generation of the published table, 0 when there is none."""
    try:
        with open(os.path.join(state_dir, TABLE_FILE), "rb") as f:
            head = f.read(_HEADER.size)
    except FileNotFoundError:
        return 0
    if len(head) < _HEADER.size:
        return 0
    return _HEADER.unpack(head)[3]


# ---- the usage file -------------------------------------------------------------------------


@dataclass(frozen=True)
class Usage:
    """One key's usage slot."""

    last_used_ms: int
    address: str | None
    requests: int


@functools.lru_cache(maxsize=4096)
def _address_text(hi: int, lo: int) -> str | None:
    # A usage slot's address words as text. Cached: a key is used from few addresses, and
    # ipaddress took most of the master's periodic flush over every key's slot.
    raw = struct.pack("=QQ", hi, lo)
    if not any(raw):
        return None
    ip = ipaddress.IPv6Address(raw)
    return str(ip.ipv4_mapped or ip)


def usage_rows(
    slots: Sequence[int], raws: Sequence[bytes]
) -> list[tuple[int, int | None, str | None, int]]:
    """``KeyStore.record_usage`` rows (slot, last use in s, address, requests) from the bytes
    of usage slots (``UsageFile.snapshot``), decoded as ``UsageFile.read`` does; a slot with
    no request gives no row. ``slots[i]`` is the keys.db slot whose bytes are ``raws[i]``."""
    # One comprehension over one iter_unpack: this runs for every changed key each flush.
    words = _SLOT.iter_unpack(b"".join(raws))
    return [
        (slot, at // 1000 if at else None, _address_text(hi, lo) if at else None, requests)
        for slot, (at, hi, lo, requests) in zip(slots, words, strict=True)
        if requests
    ]


class UsageFile:
    """``keys.usage`` mapped read-write (master, fluxctl, and each worker)."""

    def __init__(self, path: str, *, create: bool) -> None:
        self.path = path
        flags = os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW
        self.created = False
        try:
            fd = os.open(path, flags)
        except FileNotFoundError:
            if not create:
                raise
            fd = os.open(path, flags | os.O_CREAT | os.O_EXCL, 0o600)
            self.created = True
        try:
            size = os.fstat(fd).st_size
            if size < RESERVED_SLOTS * SLOT_SIZE or size % SLOT_SIZE:
                if not self.created and size:
                    raise ValueError(f"{path} is not a usage file (size {size})")
                size = (RESERVED_SLOTS + USAGE_GROWTH) * SLOT_SIZE
                os.ftruncate(fd, size)
            self._map(fd, size)
        finally:
            os.close(fd)

    def _map(self, fd: int, size: int) -> None:
        self.mapping = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        self.counters = Counters(self.mapping)
        self.slots = size // SLOT_SIZE
        # ``snapshot`` splits the file into slots with one Struct of a block of slots (one of
        # every slot would take as much memory as the file). Files made here hold 4112 slots,
        # then a multiple of 4096: blocks of 16 or 256; gcd fits any other size too.
        self._block = struct.Struct(f"{SLOT_SIZE}s" * math.gcd(self.slots, 256))

    def ensure(self, slots: int) -> None:
        """Grow the file (sparse) to hold at least ``slots`` slots; existing data stays."""
        if slots <= self.slots:
            return
        size = _align(slots, USAGE_GROWTH) * SLOT_SIZE
        fd = os.open(self.path, os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW)
        try:
            size = max(size, os.fstat(fd).st_size)
            if os.fstat(fd).st_size < size:
                os.ftruncate(fd, size)
            # The old mapping is not closed here: a worker's current KeyTable still holds
            # it, and it goes away with the last reference.
            self.counters.release()
            self._map(fd, size)
        finally:
            os.close(fd)

    def refresh(self) -> None:
        """Remap when another process grew the file."""
        size = os.stat(self.path).st_size
        if size // SLOT_SIZE > self.slots:
            self.ensure(size // SLOT_SIZE)

    def read(self, slot: int) -> Usage:
        """A consistent copy of a slot (retried while a stamp is being written)."""
        if slot >= self.slots:
            return Usage(0, None, 0)
        at, hi, lo, requests = self._words(slot)
        return Usage(at, _address_text(hi, lo) if at else None, requests)

    def _words(self, slot: int) -> tuple[int, int, int, int]:
        # A worker stamps the time first (compare-exchange, strictly increasing) and the
        # address after it: the address words are only taken if the time did not change
        # around them.
        load = self.counters.load
        base = slot * WORDS
        for _ in range(8):
            at = load(base)
            hi, lo = load(base + 1), load(base + 2)
            if load(base) == at:
                break
        return at, hi, lo, load(base + 3)

    def snapshot(self) -> list[bytes]:
        """Every slot's bytes (index: slot), each slot as consistent as ``read`` makes it.

        The file is copied twice; a slot whose bytes differ between the copies is read
        again the way ``read`` does."""
        # Why a slot equal in both copies is not a torn stamp: the first copy is finished
        # before the second begins, and a slot's time only increases (a worker
        # compare-exchanges it to a later ms, then stores the address), so a time equal in
        # both copies means no stamp began between them, and the address, equal in both too,
        # is not being rewritten meanwhile. That is ``read``'s check (the time unchanged
        # around the address loads) with the address compared as well. Both miss only a
        # stamp whose address store is still pending across both loads (the worker publishes
        # the time first); the next flush writes that slot again, as its bytes then differ
        # from those flushed. A word torn by the copy itself (memcpy promises no 8-byte
        # atomicity) differs between the copies too, so it is read again.
        first = self._copy()
        second = self._copy()
        slots = list(chain.from_iterable(self._block.iter_unpack(first)))
        if first != second:  # a request or stamp in between; find its slots
            moved = chain.from_iterable(self._block.iter_unpack(second))
            for slot in compress(count(), map(ne, slots, moved)):
                slots[slot] = _SLOT.pack(*self._words(slot))
        return slots

    def changes(self, flushed: bytearray, first_slot: int = 0, end_slot: int | None = None
                ) -> tuple[list[int], list[bytes]]:
        """The slots of [first_slot, end_slot) (default: every slot) whose bytes differ from
        ``flushed`` (the file as last flushed), and their bytes, each as consistent as
        ``snapshot`` makes it; ``flushed`` is updated. ``first_slot`` is a multiple of
        BLOCK_SLOTS.

        ``flushed`` grows with the file (a new slot is compared with zeros). Blocks of slots
        equal in both copies and in ``flushed`` are passed over whole: with a million keys a
        flush builds objects for the slots used since the last one, not for every slot."""
        if first_slot % BLOCK_SLOTS:
            raise ValueError("first_slot is not at a block of slots")
        low = first_slot * SLOT_SIZE
        high = self.slots * SLOT_SIZE if end_slot is None else min(
            end_slot, self.slots) * SLOT_SIZE
        first = self._copy(low, high)
        second = self._copy(low, high)
        high = low + len(first)
        if len(flushed) < high:
            flushed.extend(bytes(high - len(flushed)))
        slots: list[int] = []
        raws: list[bytes] = []
        split = _BLOCK.unpack_from
        for start in range(low, high, USAGE_BLOCK):
            end = start + USAGE_BLOCK
            at = start - low  # in the copies
            before = flushed[start:end]
            if first[at:at + USAGE_BLOCK] == before and second[at:at + USAGE_BLOCK] == before:
                continue
            if end <= high:
                # A whole block: its slots split and compared in C, the slots that differ
                # (in either copy, from the flushed bytes) taken as below. With many keys
                # in use most blocks hold a changed slot: a Python step per slot of every
                # such block cost twice this.
                base = start // SLOT_SIZE
                was, now, again = split(before), split(first, at), split(second, at)
                for k in compress(range(BLOCK_SLOTS),
                                  map(or_, map(ne, now, was), map(ne, again, was))):
                    raw = now[k]
                    if raw != again[k]:  # moved between the copies: read again
                        raw = _SLOT.pack(*self._words(base + k))
                    if raw != was[k]:
                        slots.append(base + k)
                        raws.append(raw)
                continue
            for offset in range(start, high, SLOT_SIZE):
                raw = first[offset - low:offset - low + SLOT_SIZE]
                if raw != second[offset - low:offset - low + SLOT_SIZE]:  # moved: read again
                    raw = _SLOT.pack(*self._words(offset // SLOT_SIZE))
                if raw != flushed[offset:offset + SLOT_SIZE]:
                    slots.append(offset // SLOT_SIZE)
                    raws.append(raw)
        for slot, raw in zip(slots, raws, strict=True):
            flushed[slot * SLOT_SIZE:(slot + 1) * SLOT_SIZE] = raw
        return slots, raws

    def _copy(self, low: int = 0, high: int | None = None) -> bytes:
        # The slots' bytes [low, high) (default: every slot) in one memcpy (~30 µs for 20k
        # slots).
        return self.mapping[low:self.slots * SLOT_SIZE if high is None else high]

    def seed(self, slot: int, last_used_at: int | None, address: str | None, requests: int) -> None:
        """Fill a slot from keys.db (a usage file created after keys were used)."""
        self.ensure(slot + 1)
        base = slot * WORDS
        if address:
            ip = ipaddress.ip_address(address)
            packed = (b"\0" * 10 + b"\xff\xff" + ip.packed) if ip.version == 4 else ip.packed
            hi, lo = struct.unpack("=QQ", packed)
            self.counters.store(base + 1, hi)
            self.counters.store(base + 2, lo)
        self.counters.store(base + 3, requests)
        self.counters.store(base, (last_used_at or 0) * 1000)

    def stat(self, word: int) -> int:
        return self.counters.load(word)

    def count(self, word: int) -> None:
        self.counters.add(word)

    def close(self) -> None:
        counters = getattr(self, "counters", None)
        if counters is not None:
            counters.release()
            self.mapping.close()
            self.counters = None


# ---- a worker's view ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class KeyInfo:
    """What a worker derives once per key and generation."""

    principal: Principal  # its upstream headers are encoded once, at construction
    response_headers: tuple[tuple[bytes, bytes], ...]  # Deprecation/Sunset while in grace
    key_id: str
    scopes: tuple[str, ...]


def _key_info(entry: dict[str, Any]) -> KeyInfo:
    name = entry["name"]
    scopes = entry["scopes"]
    principal = Principal(f"key:{name}", "api_key", name, frozenset(scopes), key_name=name)
    response: tuple[tuple[bytes, bytes], ...] = ()
    if entry["sunset_at"]:
        # RFC 9745 §2 (a Structured Field Date) and RFC 8594 §3 (an HTTP-date).
        response = (
            (b"Deprecation", b"@%d" % entry["deprecated_at"]),
            (b"Sunset", formatdate(entry["sunset_at"], usegmt=True).encode()),
        )
    return KeyInfo(principal, response, entry["key_id"], scopes)


class SharedKeys:
    """A worker's maps of keys.table, keys.usage and quotas.bin, refreshed by the sweep.

    One per worker process (``for_gateway``), shared by every api_key and quota middleware.
    """

    # The table counts keys' own quotas in quotas.bin; not in cluster mode, where a key's
    # quota is the cluster's: the table spends the node's leases (``use_leases``).
    key_quotas = True
    leases: Any = None  # _core.LeaseSpender in cluster mode

    def use_leases(self, leases: Any) -> None:
        """Cluster mode: every table generation spends keys' quotas from ``leases``."""
        self.leases = leases
        if self.table is not None:
            self.table.use_leases(leases)

    def __init__(self, state_dir: str, signing_key: bytes | None) -> None:
        self.state_dir = state_dir
        self.signing_key = signing_key
        self.table: KeyTable | None = None
        # What a key's first request in this table built, by entry index; dicts of the keys
        # in use rather than lists as long as the table (16 MiB a worker for a million
        # keys), emptied when INFOS_LIMIT keys are in them.
        self.infos: dict[int, KeyInfo] = {}
        # The same keys' principals: KeyTable.authorize sets req.principal from here
        # itself, so the common request touches no KeyInfo. An array as long as the
        # table (8 bytes an entry), backed only on the pages keys in use are written to.
        self.principals = PrincipalCache()
        self._mapping: mmap.mmap | None = None
        self._stamp: tuple[int, int] | None = None
        self.usage = UsageFile(os.path.join(state_dir, USAGE_FILE), create=False)
        self._quota_map, self.quotas = open_quota_file(os.path.join(state_dir, QUOTA_FILE))
        if signing_key is not None:
            self.refresh()

    @classmethod
    def for_gateway(cls, gateway: Any, *, with_keys: bool) -> SharedKeys:
        """The worker's instance; ``with_keys`` when an api_key middleware needs the table
        (the signing secret is then read from the config or state_dir)."""

        def create() -> SharedKeys:
            shared = cls(gateway.state_dir, None)
            shared.key_quotas = not is_redis_url(gateway.config.store)
            gateway.periodic.append(shared.on_sweep)
            return shared

        shared = worker_shared(gateway, "keys", create)
        if with_keys and shared.signing_key is None:
            shared.signing_key = load_signing_key(
                gateway.config.api_keys.signing_secret, gateway.state_dir, create=False
            )
            shared.refresh()
            if shared.table is None:
                raise OSError(f"no key table in {gateway.state_dir}: is the master running?")
        return shared

    def on_sweep(self, now: float) -> None:
        if self.signing_key is not None:
            self.refresh()

    def refresh(self) -> bool:
        """Map a new table generation if the master published one; True when it did."""
        path = os.path.join(self.state_dir, TABLE_FILE)
        try:
            st = os.stat(path)
        except FileNotFoundError:
            return False
        # A new generation is a new file (renamed over the old one); the master's changes in
        # place (keys added, revoked) are seen through the mapping, not by remapping.
        stamp = (st.st_dev, st.st_ino)
        if stamp == self._stamp:
            return False
        try:
            with open(path, "rb") as f:
                mapping = mmap.mmap(f.fileno(), 0, mmap.MAP_SHARED, mmap.PROT_READ)
            # Only the master grows the usage file (before it publishes); a worker maps
            # what is there, and KeyTable refuses a table whose slots it does not cover.
            self.usage.refresh()
            table = KeyTable(mapping, self.signing_key, self.usage.mapping,
                             self.quotas if self.key_quotas else None)
            if self.leases is not None:
                table.use_leases(self.leases)
        except (OSError, ValueError) as exc:
            log.error("cannot map the key table %s: %s; keeping generation %s", path, exc,
                      self.table.generation if self.table is not None else "none")
            self._stamp = stamp  # do not retry every sweep; the next publication will
            return False
        old_table, old_mapping = self.table, self._mapping
        self.table, self._mapping, self._stamp = table, mapping, stamp
        self._forget_infos()
        if old_table is not None:
            old_table.release()
        if old_mapping is not None:
            old_mapping.close()
        return True

    def _forget_infos(self) -> None:
        # Built per entry index at a key's first request in the current table.
        self.infos = {}
        self.principals = PrincipalCache(self.table.capacity)

    def info(self, index: int) -> KeyInfo:
        """The cached principal and headers of entry ``index`` of the current table."""
        info = self.infos.get(index)
        if info is None:
            if len(self.infos) >= INFOS_LIMIT:
                self._forget_infos()
            info = self.infos[index] = _key_info(self.table.entry(index))
            self.principals[index] = info.principal
        return info
