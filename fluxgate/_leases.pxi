# Included into _core.pyx: cluster mode's common quota request (fluxgate/cluster/quotas.py).
#
# ``LeaseSpender(words, quotas)`` spends a unit a node holds: ``words`` are the lease file's
# (fluxgate/cluster/lease_table.py: a slot's word 1 is window end << 32 | units granted, word
# 2 the cluster's use at the last grant, word 6 the last chunk asked), ``quotas`` the quota
# file's buckets, where the node's spending is counted as a single node counts it. One call
# does what Python did in several: read the grant, consume against it, set RateLimit-*.
# ``KeyTable.use_leases(spender)`` makes the key table spend keys' quotas the same way,
# inside its one call per request (``lease_spend_tag``).

__all__ += ("LeaseSpender",)

cdef enum:
    _LEASE_HEADER_WORDS = 16
    _LEASE_SLOT_WORDS = 16
    _LEASE_MAX_PROBE = 32
    _W_GRANTED = 1
    _W_GLOBAL = 2
    _W_CHUNK = 6


cdef class LeaseSpender:
    """Spends units in hand of the node's leases (see fluxgate/cluster/quotas.py)."""

    cdef Counters _words
    cdef QuotaCounters _quotas
    # A tag whose next chunk is due, set when the key table spent a unit of it (the api_key
    # middleware asks for the chunk and sets it back to 0).
    cdef public uint64_t ahead_tag

    def __cinit__(self, Counters words not None, QuotaCounters quotas not None, /):
        self._words = words
        self._quotas = quotas

    def spend(self, RequestState req not None, Py_ssize_t base, uint64_t tag,
              uint32_t limit, uint32_t window, double now, /):
        """Spend one unit of the slot at word ``base`` for ``tag``'s quota (``limit`` per
        ``window`` seconds). Returns 0 (spent; ``req``'s RateLimit-* merged), 1 (spent,
        and half a chunk or less is left: time to ask for the next), or -1 (nothing was
        spent: no unit in hand, or the quota file could not count it)."""
        cdef uint64_t remaining = 0, end = 0
        cdef int r
        if (self._words._slots == NULL or base < 0
                or base + _LEASE_SLOT_WORDS > self._words._nslots):
            raise ValueError("lease slot out of range")
        if tag == 0 or window == 0 or limit == 0 or not _time_ok(now):
            return -1
        r = _lease_spend_at(self, base, tag, limit, window, <uint64_t>now, &remaining, &end)
        if r >= 0:
            merge_ratelimit(req, limit, remaining, <int64_t>(end - <uint64_t>now))
        return r


cdef int _lease_spend_at(LeaseSpender s, Py_ssize_t base, uint64_t tag, uint32_t limit,
                         uint32_t window, uint64_t now_s, uint64_t* remaining,
                         uint64_t* end_out) noexcept:
    # The spending of ``spend``; base is in range, the arguments checked.
    cdef uint64_t* w = s._words._slots
    cdef uint64_t end, g, u, used, left = 0, qend = 0, rem
    cdef uint32_t granted
    end = (now_s // window + 1) * window
    g = fg_atomic_load(&w[base + _W_GRANTED])
    granted = <uint32_t>g
    if (g >> 32) != end or granted == 0 or granted >= FG_QUOTA_RESERVED_COUNT:
        return -1
    if s._quotas._buckets == NULL:
        return -1
    if quota_consume(s._quotas, tag, granted, window, now_s, &left, &qend) != FG_QUOTA_OK:
        return -1
    u = fg_atomic_load(&w[base + _W_GLOBAL])
    used = <uint32_t>u if (u >> 32) == end else 0
    rem = limit - used + left if used < limit else left
    remaining[0] = rem if rem < limit else limit
    end_out[0] = end
    return 1 if left <= (fg_atomic_load(&w[base + _W_CHUNK]) >> 1) else 0


cdef int lease_spend_tag(LeaseSpender s, uint64_t tag, uint32_t limit, uint32_t window,
                         uint64_t now_s, uint64_t* remaining,
                         uint64_t* end_out) noexcept:
    # KeyTable's quota step in cluster mode: find tag's slot (the lease file's probing,
    # fluxgate/cluster/lease_table.py) and spend there; -1 when it has no slot or no unit.
    cdef uint64_t* w = s._words._slots
    cdef uint64_t capacity, mask, slot, t
    cdef Py_ssize_t base
    cdef int i, r
    if w == NULL or tag == 0 or window == 0 or limit == 0:
        return -1
    capacity = fg_atomic_load(&w[2])
    if (capacity == 0 or capacity & (capacity - 1)
            or s._words._nslots < _LEASE_HEADER_WORDS
            or capacity > (<uint64_t>s._words._nslots - _LEASE_HEADER_WORDS)
            // _LEASE_SLOT_WORDS):  # divided, not multiplied: no overflow
        return -1
    mask = capacity - 1
    for i in range(_LEASE_MAX_PROBE):
        slot = (tag + <uint64_t>i) & mask
        base = <Py_ssize_t>(_LEASE_HEADER_WORDS + slot * _LEASE_SLOT_WORDS)
        t = fg_atomic_load(&w[base])
        if t == tag:
            r = _lease_spend_at(s, base, tag, limit, window, now_s, remaining, end_out)
            if r == 1:
                s.ahead_tag = tag
            return r
        if t == 0:
            return -1
    return -1
