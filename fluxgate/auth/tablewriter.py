"""The master's writer into a published key table's spare room.

A generation is built with room for more entries than it holds (``build_table(spare=...)``).
Keys added or changed after it was built are written into that room in place, through a
writable shared mapping of the same file every worker maps, instead of rebuilding and
republishing a million-key table for one create:

* an entry is written only where no reader looks yet: its names and lists at the end of the
  pool, the entry after the last published one; then ``n_entries`` grows, then the entry's
  bucket is set. Each of those two is one aligned 8-byte atomic store with release order,
  and readers load them with acquire order (``_core.KeyTable``), so a reader that finds an
  entry through its bucket finds it whole: it never sees a torn entry.
* a key that changes (rotated, renewed, revoked) gets a new entry, and its bucket is pointed
  at the new one in one store; the old entry stays, unreachable, until the next rebuild.
  Readers look for a key in the table's home region (where the build placed it) before its
  bucket, so the old entry is then flagged superseded (one byte, as the revoked flag):
  from then on they follow the bucket.
* a revocation needs no new entry: the revoked bit is set in the flags of the entry the
  key's bucket names (one byte; see ``TableWriter.revoke``).

Only one writer at a time (the master's loop) touches a file. When the room runs out (or a
key's usage slot is beyond the usage file the table was built for) ``room`` says so and the
master rebuilds the table in full.
"""

from __future__ import annotations

import mmap
import os
import struct
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from fluxgate._core import KEY_LAYOUT, Counters, b64url_decode
from fluxgate.auth.keytable import (
    _CIDR,
    _ENTRY,
    _FLAGS_OFFSET,
    _HEADER,
    _REVOKED_FLAG,
    _SUPERSEDED_FLAG,
    _U32,
    encode_entry,
    home_bucket,
    key_lists,
    open_writable,
    usage_slot,
)

if TYPE_CHECKING:
    from fluxgate.auth.keystore import KeyRecord

# 8-byte words of the header (see keytable's layout): the generation; n_entries with
# n_buckets (stored together: one atomic store); pool_used.
_GENERATION_WORD = 2
_COUNT_WORD = 3
_POOL_USED_WORD = 10
_COUNT = struct.Struct("=II")
_WORD = struct.Struct("=Q")
assert _HEADER.size == 96


class TableWriter:
    """A writable view of one table file (published, or written and about to be)."""

    def __init__(self, path: str) -> None:
        self.path = path
        fd = open_writable(path)
        try:
            size = os.fstat(fd).st_size
            self.mapping = mmap.mmap(fd, size, mmap.MAP_SHARED,
                                     mmap.PROT_READ | mmap.PROT_WRITE)
        finally:
            os.close(fd)
        # The workers the master forks after opening it get no writable mapping of the
        # table: each maps it read-only itself.
        if hasattr(mmap, "MADV_DONTFORK"):
            self.mapping.madvise(mmap.MADV_DONTFORK)
        (magic, version, entry_size, _, self.n, self.n_buckets, self.buckets_off,
         self.entries_off, self.pool_off, self.pool_len, self.usage_slots, self.capacity,
         built_keys, self.pool_used) = _HEADER.unpack_from(self.mapping)
        if (magic, version, entry_size) != (KEY_LAYOUT["keytab_magic"],
                                            KEY_LAYOUT["keytab_version"], _ENTRY.size):
            self.mapping.close()
            raise ValueError(f"{path} is not a key table of this version")
        self.words = Counters(self.mapping)
        self.built = self.n  # the entries when opened (a file is opened once built)
        self.keys = built_keys  # distinct keys (a changed key's old entry is not one)
        self._opened_pool = self.pool_used

    @property
    def generation(self) -> int:
        return self.words.load(_GENERATION_WORD)

    def set_generation(self, generation: int) -> None:
        """Publish a new generation number (what ``read_generation`` and metrics report)."""
        self.words.store(_GENERATION_WORD, generation)

    def spare_used(self) -> float:
        """How much of the room left when opened is taken, 0..1 (entries or pool, whichever
        is fuller)."""
        room = self.capacity - self.built
        pool_room = self.pool_len - self._opened_pool
        return max((self.n - self.built) / room if room else 1.0,
                   (self.pool_used - self._opened_pool) / pool_room if pool_room else 1.0)

    def room(self, records: Sequence[KeyRecord]) -> bool:
        """Can ``records`` all be written in place?"""
        if self.n + len(records) > self.capacity:
            return False
        need = 0
        for r in records:
            if usage_slot(r) >= self.usage_slots:
                return False
            scopes, routes, allow_ips = key_lists(r)
            need += 8 + len(r.name.encode()) + sum(2 + len(s.encode()) for s in scopes) \
                + sum(2 + len(p.encode()) for p in routes) + _CIDR.size * len(allow_ips) + 8
        return self.pool_used + need <= self.pool_len

    def put(self, records: Sequence[KeyRecord], quota_tag: Callable[[bytes], int] | None
            ) -> None:
        """Publish ``records`` (new keys, or new states of keys the table holds) in place.
        The caller checked ``room``."""
        for r in records:
            base = (self.pool_used + 7) & ~7
            pool = bytearray()
            raw_id, entry = encode_entry(r, pool=pool, usage_slots=self.usage_slots,
                                         quota_tag=quota_tag, base=base)
            if self.n >= self.capacity or base + len(pool) > self.pool_len:
                raise ValueError("no room left in the key table")
            at = self.pool_off + base
            self.mapping[at:at + len(pool)] = pool
            index = self.n
            at = self.entries_off + index * _ENTRY.size
            self.mapping[at:at + _ENTRY.size] = entry
            # Release stores: the entry's bytes are visible before the count, the count
            # before the bucket that names the entry.
            self.n += 1
            self.pool_used = base + len(pool)
            self.words.store(_POOL_USED_WORD, self.pool_used)
            self.words.store(_COUNT_WORD, _word(_COUNT.pack(self.n, self.n_buckets)))
            bucket = self._bucket_of(raw_id)
            old = self._bucket(bucket)
            if old == 0:
                self.keys += 1
            self._set_bucket(bucket, index + 1)
            if old:
                # Readers look for a key where the build placed it before they read its
                # bucket: that entry now sends them to the bucket.
                self._flag(old - 1, _SUPERSEDED_FLAG)

    def revoke(self, key_ids: Sequence[str]) -> list[str]:
        """Set the revoked flag of ``key_ids``' current entries; the ids not in the table.

        Every worker reads an entry's flags at each check, so a revocation is in force
        everywhere as soon as the byte is stored, without waiting for a new generation (which
        keys.db still gets, and carries the flag). The byte is the low byte of the aligned
        flags word and only gains the revoked bit: a reader sees the word before or after,
        never a mix (see ``_flag``)."""
        missing = []
        for key_id in key_ids:
            bucket = self._bucket_of(b64url_decode(key_id.encode()))
            v = self._bucket(bucket)
            if v == 0:
                missing.append(key_id)
                continue
            self._flag(v - 1, _REVOKED_FLAG)
        return missing

    def _flag(self, index: int, flag: int) -> None:
        """Add ``flag`` to entry ``index``'s flags: one byte, one store (flags only gain
        bits, and each lives in the word's first byte)."""
        at = self.entries_off + index * _ENTRY.size + _FLAGS_OFFSET
        self.mapping[at] = self.mapping[at] | flag

    def close(self) -> None:
        self.words.release()
        self.mapping.close()

    # ---- buckets ----------------------------------------------------------------------------

    def _bucket(self, bucket: int) -> int:
        return _U32.unpack_from(self.mapping, self.buckets_off + 4 * bucket)[0]

    def _bucket_of(self, raw: bytes) -> int:
        """The bucket holding key id ``raw``, or the empty one where it goes (the readers'
        probe: linear from the home bucket, the id's first 4 bytes scaled to the bucket
        count)."""
        bucket = home_bucket(raw, self.n_buckets)
        id16 = raw.ljust(16, b"\0")
        for _ in range(self.n_buckets):
            v = self._bucket(bucket)
            if v == 0:
                return bucket
            at = self.entries_off + (v - 1) * _ENTRY.size
            if self.mapping[at:at + 16] == id16:
                return bucket
            bucket = (bucket + 1) % self.n_buckets
        raise ValueError("the key table's buckets are full")

    def _set_bucket(self, bucket: int, value: int) -> None:
        # Buckets are 4 bytes; the atomic store is of the aligned 8-byte word holding two.
        # Only this writer changes buckets, so the other half is stored as it is.
        offset = self.buckets_off + 4 * bucket
        word = offset // 8
        pair = bytearray(_WORD.pack(self.words.load(word)))
        _U32.pack_into(pair, offset % 8, value)
        self.words.store(word, _word(pair))


def _word(raw: bytes | bytearray) -> int:
    """Eight bytes as the native u64 an atomic store writes back as those bytes."""
    return _WORD.unpack(raw)[0]
