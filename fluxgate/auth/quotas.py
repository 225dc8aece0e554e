"""Quota counters in ``state_dir/quotas.bin``.

The file is created once (mode 0600) and never recreated, so counts survive restarts; every
worker maps it ``MAP_SHARED`` and counts with compare-exchange in ``_core.QuotaCounters``,
exact across workers. Layout (native byte order, ``_core.KEY_LAYOUT`` has the sizes)::

    header, 64 bytes: magic u64 | version u32 | reserved u32 | capacity u64 (buckets, a power
                      of two) | salt 32 bytes (keys the tag hash) | reserved u64
    capacity x 16-byte buckets: tag u64 | state u64 (window end << 32 | count)

Whose quota a bucket counts is an *identity* string hashed into a tag: ``key_identity`` for
a key's own quota (its name and window, so a rotation keeps the count) and ``rule_identity``
for a ``quota`` middleware rule (route, dimension, window, and the caller's value).

The file is sparse: 2**20 buckets (16 MiB) cost memory only where they are used.
"""

from __future__ import annotations

import mmap
import os
import secrets
import struct
from typing import TYPE_CHECKING

from fluxgate._core import KEY_LAYOUT, QuotaCounters, merge_ratelimit
from fluxgate.errors import QuotaExceeded
from fluxgate.shm import create_kept_file

if TYPE_CHECKING:
    from fluxgate._core import RequestState

QUOTA_FILE = "quotas.bin"
DEFAULT_CAPACITY = 1 << 20

_HEADER = struct.Struct("=QIIQ32sQ")
assert _HEADER.size == KEY_LAYOUT["quota_header_size"]


def quota_file_size(capacity: int) -> int:
    return _HEADER.size + capacity * KEY_LAYOUT["quota_bucket_size"]


def create_quota_file(path: str, capacity: int = DEFAULT_CAPACITY) -> bool:
    """Create the quota file if it does not exist (True when it was created). An existing
    file is kept as it is: it holds the counts."""
    if capacity < 1 or capacity & (capacity - 1):
        raise ValueError("capacity must be a power of two")
    header = _HEADER.pack(
        KEY_LAYOUT["quota_magic"], KEY_LAYOUT["quota_version"], 0, capacity,
        secrets.token_bytes(32), 0,
    )
    return create_kept_file(path, quota_file_size(capacity), header)


def open_quota_file(path: str) -> tuple[mmap.mmap, QuotaCounters]:
    """Map an existing quota file read-write; (mapping, counters). Raises OSError when it
    is missing, ValueError when it is not a quota file."""
    fd = os.open(path, os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW)
    try:
        size = os.fstat(fd).st_size
        if size < _HEADER.size:
            raise ValueError(f"{path} is not a FluxGate quota file")
        mapping = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
    finally:
        os.close(fd)
    try:
        return mapping, QuotaCounters(mapping)
    except ValueError as exc:
        mapping.close()
        raise ValueError(f"{path}: {exc}") from None


def key_identity(name: str, window: int) -> bytes:
    """The identity of a key name's own quota (shared by every key of the name)."""
    return b"key\0%s\0%d" % (name.encode(), window)


def rule_identity(route: str, by: str, window: int) -> bytes:
    """The prefix of a quota rule's identities; the caller's value is appended."""
    return b"rule\0%s\0%s\0%d\0" % (route.encode(), by.encode(), window)


# ---- response headers (IETF draft-ietf-httpapi-ratelimit-headers, RFC 9110 §10.2.3) --------
# RateLimit-* live on the request as integers (_core.merge_ratelimit) until the response
# head is written.


def quota_exceeded(
    req: RequestState, limit: int, retry: int, description: str
) -> QuotaExceeded:
    """The 429 of a spent budget: RateLimit-* with nothing remaining on ``req``, and
    Retry-After (RFC 9110 §10.2.3) in seconds."""
    merge_ratelimit(req, limit, 0, retry)
    return QuotaExceeded(description, headers=((b"Retry-After", b"%d" % retry),))
