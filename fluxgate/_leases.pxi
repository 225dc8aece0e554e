# Included into _core.pyx: cluster mode's common quota request (fluxgate/cluster/quotas.py).
#
# ``LeaseSpender(words, quotas)`` spends a unit a node holds: ``words`` are the lease file's
# (fluxgate/cluster/lease_table.py: a slot's word 1 is window end << 32 | units granted, word
# 2 the cluster's use at the last grant, word 6 the last chunk asked), ``quotas`` the quota
# file's buckets, where the node's spending is counted as a single node counts it. One call
# does what Python did in several: read the grant, consume against it, set RateLimit-*.

__all__ += ("LeaseSpender",)

cdef enum:
    _LEASE_SLOT_WORDS = 16
    _W_GRANTED = 1
    _W_GLOBAL = 2
    _W_CHUNK = 6


cdef class LeaseSpender:
    """Spends units in hand of the node's leases (see fluxgate/cluster/quotas.py)."""

    cdef Counters _words
    cdef QuotaCounters _quotas

    def __cinit__(self, Counters words not None, QuotaCounters quotas not None, /):
        self._words = words
        self._quotas = quotas

    def spend(self, RequestState req not None, Py_ssize_t base, uint64_t tag,
              uint32_t limit, uint32_t window, double now, /):
        """Spend one unit of the slot at word ``base`` for ``tag``'s quota (``limit`` per
        ``window`` seconds). Returns 0 (spent; ``req``'s RateLimit-* merged), 1 (spent,
        and half a chunk or less is left: time to ask for the next), or -1 (nothing was
        spent: no unit in hand, or the quota file could not count it)."""
        cdef uint64_t* w = self._words._slots
        cdef uint64_t now_s, end, g, u, used, left = 0, qend = 0, remaining
        cdef uint32_t granted
        if w == NULL or base < 0 or base + _LEASE_SLOT_WORDS > self._words._nslots:
            raise ValueError("lease slot out of range")
        if tag == 0 or window == 0 or limit == 0 or not _time_ok(now):
            return -1
        now_s = <uint64_t>now
        end = (now_s // window + 1) * window
        g = fg_atomic_load(&w[base + _W_GRANTED])
        granted = <uint32_t>g
        if (g >> 32) != end or granted == 0 or granted >= FG_QUOTA_RESERVED_COUNT:
            return -1
        if self._quotas._buckets == NULL:
            return -1
        if quota_consume(self._quotas, tag, granted, window, now_s, &left, &qend) \
                != FG_QUOTA_OK:
            return -1
        u = fg_atomic_load(&w[base + _W_GLOBAL])
        used = <uint32_t>u if (u >> 32) == end else 0
        remaining = limit - used + left if used < limit else left
        merge_ratelimit(req, limit, remaining if remaining < limit else limit,
                        <int64_t>(end - now_s))
        return 1 if left <= (fg_atomic_load(&w[base + _W_CHUNK]) >> 1) else 0
