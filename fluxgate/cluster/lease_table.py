"""A node's quota leases in ``state_dir/leases.bin``, shared by its workers.

In cluster mode a node takes chunks of each quota window from Redis (``lease_store``) and
its workers spend them locally. The units a worker spends are counted where a single node
counts them, in the quota file (``quotas.bin``, ``QuotaCounters``, the same tag); this file
holds, per tag, how many units the node was granted for the current window. A request is
accepted when ``QuotaCounters.consume(tag, granted, ...)`` succeeds: spent can never pass
granted, with the same compare-exchange that makes one node exact.

The file is created once by the master (mode 0600) and kept across restarts, as the quota
file is; every word is a u64 in native byte order, read and written atomically
(``_core.Counters``)::

    header, 16 words: magic | version | capacity (slots, a power of two) | store state
        (0 up, 1 down) | next store retry (unix ms) | then the node's counters (STAT_*)
    capacity x 16-word slots:
        0 tag (0: empty; claimed by compare-exchange, never freed)
        1 granted: window end << 32 | units granted to this node in that window
        2 global: window end << 32 | units the cluster had used at the last grant
        3 flight: unix ms until which one worker's lease request is in flight (0: none)
        4 last lease, unix ms     5 units spent at the last lease     6 last chunk asked
        7 end of the window whose budget Redis said is gone (0: none)
        8 window (seconds)        9 limit                              10-11 identity hash
        12 nodes that leased this window (from the last grant)
        13 how long the last lease request took, ms

A slot belongs to one tag for good; a full table (every slot of a tag's probe sequence
taken) sends that tag's requests to Redis one by one, which is exact, only slower.
"""

from __future__ import annotations

import mmap
import os
import struct

from fluxgate._core import Counters
from fluxgate.shm import create_kept_file

LEASE_FILE = "leases.bin"
MAGIC = 0x46474C4541534531  # "FGLEASE1"
VERSION = 1
DEFAULT_CAPACITY = 1 << 16  # 8 MiB, sparse: memory only where slots are used
HEADER_WORDS = 16
SLOT_WORDS = 16
MAX_PROBE = 32

# Header words.
_STATE, _RETRY_AT = 3, 4
# Counters of the node, header words 5.. (rendered on /metrics by the master's service).
STAT_LEASES = 5        # lease requests answered by Redis
STAT_UNITS = 6         # units granted by those
STAT_ERRORS = 7        # Redis calls that failed or timed out
STAT_WAITS = 8         # requests that waited for a lease (none was in hand)
STAT_EXACT = 9         # per-request Redis calls (lease: 0, or no slot free)
STAT_RETURNED = 10     # unspent units given back at shutdown
STAT_LOCAL = 11        # requests accepted by on_store_down: local beyond the leases
STAT_DENIED = 12       # requests refused by on_store_down: deny
STATS = {
    "leases": STAT_LEASES, "units": STAT_UNITS, "errors": STAT_ERRORS, "waits": STAT_WAITS,
    "exact": STAT_EXACT, "returned": STAT_RETURNED, "local": STAT_LOCAL, "denied": STAT_DENIED,
}

# Slot words.
W_TAG, W_GRANTED, W_GLOBAL, W_FLIGHT, W_LAST_MS, W_LAST_SPENT, W_CHUNK = range(7)
W_EXHAUSTED, W_WINDOW, W_LIMIT, W_ID_HI, W_ID_LO, W_NODES, W_LATENCY = range(7, 14)

_LOW32 = 0xFFFFFFFF


def lease_file_size(capacity: int) -> int:
    return 8 * (HEADER_WORDS + capacity * SLOT_WORDS)


def create_lease_file(path: str, capacity: int = DEFAULT_CAPACITY) -> bool:
    """Create the lease file if it does not exist (True when it was created)."""
    if capacity < 1 or capacity & (capacity - 1):
        raise ValueError("capacity must be a power of two")
    header = struct.pack("=QQQ", MAGIC, VERSION, capacity)
    return create_kept_file(path, lease_file_size(capacity), header)


def pack(end: int, count: int) -> int:
    return (end << 32) | count


class LeaseTable:
    """The lease file mapped read-write; every method is safe across processes."""

    def __init__(self, path: str) -> None:
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW)
        try:
            size = os.fstat(fd).st_size
            if size < 8 * HEADER_WORDS:
                raise ValueError(f"{path} is not a FluxGate lease file")
            self._map = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        finally:
            os.close(fd)
        self.words = Counters(self._map)
        w = self.words
        capacity = w.load(2)
        if (w.load(0) != MAGIC or w.load(1) != VERSION or capacity == 0
                or capacity & (capacity - 1) or size < lease_file_size(capacity)):
            self.close()
            raise ValueError(f"{path} is not a FluxGate lease file (magic, version or size)")
        self.capacity = capacity
        self._mask = capacity - 1

    @classmethod
    def in_state_dir(cls, state_dir: str) -> LeaseTable:
        return cls(os.path.join(state_dir, LEASE_FILE))

    def close(self) -> None:
        self.words.release()
        self._map.close()

    # ---- slots ---------------------------------------------------------------------------

    def base(self, slot: int) -> int:
        """The word index of ``slot``'s first word."""
        return HEADER_WORDS + slot * SLOT_WORDS

    def find(self, tag: int) -> int | None:
        """The slot of ``tag``, or None when it has none yet."""
        w = self.words
        for i in range(MAX_PROBE):
            slot = (tag + i) & self._mask
            t = w.load(self.base(slot) + W_TAG)
            if t == tag:
                return slot
            if t == 0:
                return None
        return None

    def claim(self, tag: int, window: int, limit: int, id_hash: bytes) -> int | None:
        """The slot of ``tag``, taking a free one if it has none; None when its probe
        sequence is full. ``id_hash`` (16 bytes) names the quota in Redis."""
        w = self.words
        for i in range(MAX_PROBE):
            slot = (tag + i) & self._mask
            b = self.base(slot)
            t = w.load(b + W_TAG)
            if t == 0 and w.compare_exchange(b + W_TAG, 0, tag):
                t = tag
            elif t == 0:
                t = w.load(b + W_TAG)
            if t == tag:
                self.describe(slot, window, limit, id_hash)
                return slot
        return None

    def describe(self, slot: int, window: int, limit: int, id_hash: bytes) -> None:
        """Record what the slot's quota is (for giving leases back at shutdown)."""
        w, b = self.words, self.base(slot)
        if w.load(b + W_WINDOW) != window or w.load(b + W_LIMIT) != limit:
            w.store(b + W_WINDOW, window)
            w.store(b + W_LIMIT, limit)
        if w.load(b + W_ID_HI) == 0:
            w.store(b + W_ID_LO, int.from_bytes(id_hash[8:16], "big"))
            w.store(b + W_ID_HI, int.from_bytes(id_hash[:8], "big") or 1)

    def id_hash(self, slot: int) -> bytes:
        w, b = self.words, self.base(slot)
        return w.load(b + W_ID_HI).to_bytes(8, "big") + w.load(b + W_ID_LO).to_bytes(8, "big")

    def used_slots(self) -> list[int]:
        """Every claimed slot (for the master's shutdown and tests)."""
        w = self.words
        return [s for s in range(self.capacity) if w.load(self.base(s) + W_TAG)]

    def word(self, slot: int, index: int) -> int:
        return self.words.load(self.base(slot) + index)

    def set_word(self, slot: int, index: int, value: int) -> None:
        self.words.store(self.base(slot) + index, value)

    def granted(self, slot: int, end: int) -> int:
        """Units granted to this node for the window ending at ``end``."""
        g = self.words.load(self.base(slot) + W_GRANTED)
        return g & _LOW32 if g >> 32 == end else 0

    def add_granted(self, slot: int, end: int, units: int) -> int:
        """Add a grant of the window ending at ``end``; the window's total."""
        w, i = self.words, self.base(slot) + W_GRANTED
        while True:
            g = w.load(i)
            if g >> 32 > end:
                return 0  # a later window's grant is there already
            # Capped below the quota file's reserved count (a limit is at most 2**32 - 2).
            total = min((g & _LOW32 if g >> 32 == end else 0) + units, _LOW32 - 1)
            if w.compare_exchange(i, g, pack(end, total)):
                return total

    def set_granted(self, slot: int, end: int, units: int) -> None:
        self.words.store(self.base(slot) + W_GRANTED, pack(end, units))

    def set_global(self, slot: int, end: int, used: int, nodes: int) -> None:
        b = self.base(slot)
        self.words.store(b + W_GLOBAL, pack(end, min(used, _LOW32)))
        self.words.store(b + W_NODES, nodes)

    def global_used(self, slot: int, end: int) -> int | None:
        """Units the cluster had used at this node's last grant of the window, if any."""
        g = self.words.load(self.base(slot) + W_GLOBAL)
        return g & _LOW32 if g >> 32 == end else None

    def exhausted(self, slot: int, end: int) -> bool:
        """Did Redis say this window's budget is gone?"""
        return self.words.load(self.base(slot) + W_EXHAUSTED) == end

    def set_exhausted(self, slot: int, end: int) -> None:
        self.words.store(self.base(slot) + W_EXHAUSTED, end)

    # ---- the one lease request in flight per slot ----------------------------------------

    def take_flight(self, slot: int, now_ms: int, until_ms: int) -> bool:
        """Become the node's one lease request for ``slot`` (until ``until_ms``, after
        which another may take over a request that never finished)."""
        w, i = self.words, self.base(slot) + W_FLIGHT
        f = w.load(i)
        if f and f > now_ms:
            return False
        return w.compare_exchange(i, f, until_ms)

    def in_flight(self, slot: int, now_ms: int) -> bool:
        f = self.words.load(self.base(slot) + W_FLIGHT)
        return bool(f) and f > now_ms

    def end_flight(self, slot: int) -> None:
        self.words.store(self.base(slot) + W_FLIGHT, 0)

    # ---- the store's state and the node's counters ---------------------------------------

    def store_down(self) -> bool:
        return self.words.load(_STATE) == 1

    def mark_store(self, down: bool) -> bool:
        """Set the store's state; True when this call changed it (log once per change)."""
        old = 0 if down else 1
        return self.words.compare_exchange(_STATE, old, 1 - old)

    def retry_due(self, now_ms: int, every_ms: int) -> bool:
        """While the store is down: True for one caller per ``every_ms``, who tries it."""
        w = self.words
        at = w.load(_RETRY_AT)
        return at <= now_ms and w.compare_exchange(_RETRY_AT, at, now_ms + every_ms)

    def delay_retry(self, now_ms: int, every_ms: int) -> None:
        self.words.store(_RETRY_AT, now_ms + every_ms)

    def count(self, stat: int, n: int = 1) -> None:
        self.words.add(stat, n)

    def stats(self) -> dict[str, int]:
        w = self.words
        out = {name: w.load(i) for name, i in STATS.items()}
        out["store_down"] = w.load(_STATE)
        return out
