"""A log-linear (HDR-style) latency histogram of integer microseconds.

Values below 256 are counted exactly.  Above that, every power-of-two range [2^k, 2^(k+1)) is
split into 128 equal sub-buckets, so a recorded value is known to within 1/128 (< 0.8 %) of
itself, whatever its magnitude.  The counts live in one flat list of 4,352 integers (enough for
values up to 2^40 µs, about 12 days; larger values are clamped), which makes recording a few
integer operations, and merging two histograms (one per worker process) an element-wise sum.

Bucket index of a value v (this is HdrHistogram's layout with 7 sub-bucket bits):
    shift = max(0, v.bit_length() - 8)
    index = (shift << 7) + (v >> shift)
"""

from __future__ import annotations

import math

__all__ = ["Histogram"]

_SUB_BITS = 7
_SUB = 1 << _SUB_BITS
_MAX_BITS = 40
MAX_VALUE = (1 << _MAX_BITS) - 1
_BUCKETS = ((_MAX_BITS - _SUB_BITS - 1) << _SUB_BITS) + 2 * _SUB


def bucket_bounds(index: int) -> tuple[int, int]:
    """The lowest and highest value that land in bucket ``index``."""
    shift = (index >> _SUB_BITS) - 1
    if shift <= 0:
        return index, index
    low = (index - (shift << _SUB_BITS)) << shift
    return low, low + (1 << shift) - 1


class Histogram:
    """Counts of integer microsecond values with ~1 % precision, mergeable across processes."""

    __slots__ = ("counts", "count", "total", "min", "max")

    def __init__(self) -> None:
        self.counts = [0] * _BUCKETS
        self.count = 0
        self.total = 0
        self.min = 0
        self.max = 0

    def record(self, value: int) -> None:
        if value < 0:
            value = 0
        elif value > MAX_VALUE:
            value = MAX_VALUE
        shift = value.bit_length() - _SUB_BITS - 1
        if shift < 0:
            self.counts[value] += 1
        else:
            self.counts[(shift << _SUB_BITS) + (value >> shift)] += 1
        if self.count == 0 or value < self.min:
            self.min = value
        if value > self.max:
            self.max = value
        self.count += 1
        self.total += value

    def merge(self, other: Histogram) -> None:
        if other.count == 0:
            return
        counts = self.counts
        for i, n in enumerate(other.counts):
            if n:
                counts[i] += n
        self.min = other.min if self.count == 0 else min(self.min, other.min)
        self.max = max(self.max, other.max)
        self.count += other.count
        self.total += other.total

    def percentile(self, p: float) -> int:
        """The value at percentile ``p`` (0–100): the highest value equivalent to its bucket,
        clamped to the exact recorded maximum (HdrHistogram's ``getValueAtPercentile``)."""
        if self.count == 0:
            return 0
        rank = max(1, math.ceil(p / 100.0 * self.count))
        seen = 0
        for i, n in enumerate(self.counts):
            if n:
                seen += n
                if seen >= rank:
                    return min(bucket_bounds(i)[1], self.max)
        return self.max

    def mean(self) -> float:
        return self.total / self.count if self.count else 0.0

    def to_state(self) -> dict:
        """A compact, picklable/JSON-able form (only the non-empty buckets)."""
        return {
            "buckets": {i: n for i, n in enumerate(self.counts) if n},
            "count": self.count,
            "total": self.total,
            "min": self.min,
            "max": self.max,
        }

    @classmethod
    def from_state(cls, state: dict) -> Histogram:
        hist = cls()
        for i, n in state["buckets"].items():
            hist.counts[int(i)] = n
        hist.count = state["count"]
        hist.total = state["total"]
        hist.min = state["min"]
        hist.max = state["max"]
        return hist
