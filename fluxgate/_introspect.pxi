# Included into _core.pyx: the shared table of token-introspection results (RFC 7662).
#
# The master (the only writer) asks the authorization server about a bearer token and
# publishes the answer here, in a MAP_SHARED file in state_dir; every worker looks a token
# up with one call per request. Entries are keyed by SHA-256 of the token (FIPS 180-4):
# the token itself is never written anywhere. The payload of an entry is opaque bytes
# (the master's msgpack record); this file never interprets it.
#
# File layout (native byte order and alignment: written and read on one machine)
# -------------------------------------------------------------------------------
# header, 64 bytes:
#     0  u64  magic        "FGINTR01" (0x313052544E494746 read little-endian)
#     8  u32  version      FG_INTRO_VERSION (1)
#    12  u32  ways         slots per bucket, FG_INTRO_WAYS (8)
#    16  u64  buckets      a power of two, at most FG_INTRO_MAX_BUCKETS
#    24  u32  slot_size    bytes per slot: a multiple of 64, FG_INTRO_SLOT_MIN..MAX
#    28  u32  reserved
#    32  u64  stamp        the last stamp handed out (0: none yet); the writer's counter
#    40  u64  reserved[3]
# then buckets x ways slots of slot_size bytes (slot i at 64 + i * slot_size); the file is
# exactly that long. A slot:
#     0  u64  seq          seqlock: odd while the writer is in the slot; 0 never written
#     8  u64  stamp        unique and non-zero per store (header.stamp + 1); 0: empty
#    16  f64  expires_at   the cache expiry (unix seconds, computed by the writer)
#    24  u32  flags        bit 0 (FG_INTRO_ACTIVE): a positive result; clear: active=false
#    28  u32  length       payload bytes, at most slot_size - 64
#    32  u8   digest[32]   SHA-256 of the token
#    64  u8   payload[length]
# (flags and length are one u64 word, flags | length << 32, and expires_at is held as its
# IEEE-754 bits, so that every fixed field is read and written with one 8-byte atomic: the
# byte layout above is the little-endian one.)
#
# A digest lives in one of the 8 slots of bucket (first 8 digest bytes as a u64) & (buckets
# - 1); size_for() picks the smallest power of two with buckets x 8 >= the entries asked
# for (a full bucket evicts, so a table is best kept under half full: see size_for). The
# digest is unkeyed, so anyone can aim tokens at one bucket: what bounds that is
# the eviction rule below (a flood of made-up tokens only ever displaces negative results).
# Digests are compared with memcmp, not in constant time: learning a stored digest is no
# step towards a token (a preimage would be).
#
# Seqlock (as the Linux kernel's seqcount_t; the memory orders are argued in H.-J. Boehm,
# "Can Seqlocks Get Along With Programming Language Memory Models?", MSPC 2012)
# ------------------------------------------------------------------------------------
# Writer: seq := seq | 1 (odd), release fence, the fields and payload, seq := that + 1
# (a release store). Readers: seq (acquire load); odd means "being written": look again;
# the fields (8-byte atomic loads, so no word is torn or loaded twice), the digest compare
# and the payload copy (plain reads, possibly racing the writer: their result is only used
# once validated); acquire fence; seq again. A different seq means the slot changed under
# the reader: it starts over, FG_INTRO_READ_TRIES times at most, then takes a miss (the
# worker then asks the master, as for any miss). A torn length can never make a reader copy
# past its slot: it is checked against the slot's capacity before the copy.
#
# Eviction, inside the digest's bucket, when the master stores a result
# ---------------------------------------------------------------------
# the slot already holding the digest (rewritten in place: one slot per digest) > an empty
# slot > an expired one (expires_at <= now) > for a positive result, the negative entry
# expiring first, then the positive one expiring first; for a negative result, only the
# negative entry expiring first. A live positive result is never evicted by a negative
# one, so a flood of random tokens cannot log a user out of the cache; a bucket full of
# live positives refuses a negative (store() answers False and nothing is written).
#
# Readers and stamps
# ------------------
# A worker decodes a payload once and keeps the result in a dict keyed by the entry's
# stamp (``known``). lookup() answers known[stamp] when the stamp is there, without
# copying the payload or allocating (the int key comes from a small per-view cache);
# otherwise (stamp, active, expires_at, payload), all four from one consistent read.
# Stamps are never reused (the header's counter only grows, and purge/clear keep it), so a
# stamp names one record for the life of the file.

from cpython.buffer cimport PyBUF_SIMPLE, PyBUF_WRITABLE
from cpython.dict cimport PyDict_GetItemWithError
from cpython.object cimport PyObject
from libc.math cimport isnan
from libc.stdint cimport int64_t, uint8_t, uint32_t, uint64_t, uintptr_t
from libc.string cimport memcmp, memcpy, memset

cdef extern from *:
    """
    #include <stdint.h>
    #include <string.h>

    /* SHA-256 with the low-level SHA256_* calls (deprecated in OpenSSL 3.0, still exported
       by every 3.x libcrypto, and the same SHA-NI/AVX2 block code): the EVP path fetches
       and frees a provider context on every digest, several times the cost of hashing a
       40-byte token. SHA256_Final wipes the message block from the context. */
    #pragma GCC diagnostic push
    #pragma GCC diagnostic ignored "-Wdeprecated-declarations"
    #include <openssl/sha.h>
    static int fg_sha256(const unsigned char *m, size_t n, unsigned char *out) {
        SHA256_CTX c;
        return SHA256_Init(&c) && SHA256_Update(&c, m, n) && SHA256_Final(out, &c) ? 0 : -1;
    }
    #pragma GCC diagnostic pop

    /* A spinning reader's hint to the core (and to its SMT sibling, maybe the writer). */
    #if defined(__x86_64__) || defined(__i386__)
    #define fg_cpu_relax() __builtin_ia32_pause()
    #elif defined(__aarch64__)
    #define fg_cpu_relax() __asm__ __volatile__("yield" ::: "memory")
    #else
    #define fg_cpu_relax() ((void)0)
    #endif

    #define FG_INTRO_MAGIC 0x313052544E494746ULL  /* "FGINTR01" little-endian */
    #define FG_INTRO_VERSION 1
    typedef struct {
        uint64_t magic;
        uint32_t version;
        uint32_t ways;
        uint64_t n_buckets;
        uint32_t slot_size;
        uint32_t reserved0;
        uint64_t stamp;
        uint64_t reserved[3];
    } fg_intro_header;

    typedef struct {
        uint64_t seq;
        uint64_t stamp;
        uint64_t expires_at;    /* the bits of a double */
        uint64_t info;          /* flags | length << 32 */
        uint8_t digest[32];
    } fg_intro_slot;            /* the payload follows */

    _Static_assert(sizeof(fg_intro_header) == 64, "fg_intro_header layout");
    _Static_assert(sizeof(fg_intro_slot) == 64, "fg_intro_slot layout");
    """
    int fg_sha256(const unsigned char* m, size_t n, unsigned char* out) noexcept nogil
    void fg_cpu_relax() noexcept nogil

    uint64_t FG_INTRO_MAGIC
    uint32_t FG_INTRO_VERSION

    ctypedef struct fg_intro_header:
        uint64_t magic
        uint32_t version
        uint32_t ways
        uint64_t n_buckets
        uint32_t slot_size
        uint32_t reserved0
        uint64_t stamp

    ctypedef struct fg_intro_slot:
        uint64_t seq
        uint64_t stamp
        uint64_t expires_at
        uint64_t info
        uint8_t digest[32]


__all__ += (
    "IntrospectionCache",
    "sha256",
)

# What the master's writer, its tests and tools must agree on with this file.
INTROSPECT_LAYOUT = {
    "magic": FG_INTRO_MAGIC,
    "version": FG_INTRO_VERSION,
    "header_size": sizeof(fg_intro_header),
    "slot_header_size": sizeof(fg_intro_slot),
    "ways": FG_INTRO_WAYS,
    "digest_bytes": FG_INTRO_DIGEST_BYTES,
    "slot_default": FG_INTRO_SLOT_DEFAULT,
    "slot_min": FG_INTRO_SLOT_MIN,
    "slot_max": FG_INTRO_SLOT_MAX,
    "max_buckets": FG_INTRO_MAX_BUCKETS,
    "flag_active": FG_INTRO_ACTIVE,
}


cdef int sha256_into(const unsigned char* src, Py_ssize_t n,
                     unsigned char* out) noexcept nogil:
    return fg_sha256(src, <size_t>n, out)


def sha256(bytes data not None, /):
    """SHA-256 (FIPS 180-4) of ``data``: the 32-byte digest, the key of IntrospectionCache."""
    out = PyBytes_FromStringAndSize(NULL, FG_INTRO_DIGEST_BYTES)
    if sha256_into(<const unsigned char*>PyBytes_AS_STRING(data), PyBytes_GET_SIZE(data),
                   <unsigned char*>PyBytes_AS_STRING(out)) != 0:
        raise MemoryError("libcrypto SHA-256 failed")
    return out


# ---- one slot ------------------------------------------------------------------------

cdef struct _IntroMeta:
    # A slot's fixed fields, from one consistent read.
    uint64_t stamp
    double expires_at
    uint32_t flags
    uint32_t length


cdef inline double _bits_to_double(uint64_t v) noexcept nogil:
    cdef double d
    memcpy(&d, &v, 8)
    return d


cdef inline uint64_t _double_to_bits(double d) noexcept nogil:
    cdef uint64_t v
    memcpy(&v, &d, 8)
    return v


cdef int _read_meta(fg_intro_slot* s, const unsigned char* digest,
                    _IntroMeta* m) noexcept nogil:
    # 1: the slot holds `digest` (any entry when digest is NULL) and m has its fields;
    # 0: it does not (or it is empty); -1: it kept changing under us. m is only written
    # with a consistent read's fields, but may be written on the way to a -1.
    cdef uint64_t seq, stamp, info
    cdef bint found
    cdef int _t
    for _t in range(FG_INTRO_READ_TRIES):
        seq = fg_atomic_load(&s.seq)
        if seq & 1:
            fg_cpu_relax()
            continue
        stamp = fg_atomic_load(&s.stamp)
        found = stamp != 0 and (
            digest == NULL or memcmp(s.digest, digest, FG_INTRO_DIGEST_BYTES) == 0)
        if found:
            info = fg_atomic_load(&s.info)
            m.stamp = stamp
            m.expires_at = _bits_to_double(fg_atomic_load(&s.expires_at))
            m.flags = <uint32_t>info
            m.length = <uint32_t>(info >> 32)
        fg_fence_acquire()
        if fg_atomic_load(&s.seq) == seq:
            return found
    return -1


cdef object _read_entry(fg_intro_slot* s, const unsigned char* digest, uint32_t capacity,
                        _IntroMeta* m):
    # The payload of the slot holding `digest`, m set from the same consistent read; None
    # when the slot no longer holds it, its length is corrupt, or it kept changing.
    cdef uint64_t seq, stamp, info
    cdef uint32_t n
    cdef int _t
    for _t in range(FG_INTRO_READ_TRIES):
        seq = fg_atomic_load(&s.seq)
        if seq & 1:
            fg_cpu_relax()
            continue
        payload = None
        stamp = fg_atomic_load(&s.stamp)
        if stamp != 0 and memcmp(s.digest, digest, FG_INTRO_DIGEST_BYTES) == 0:
            info = fg_atomic_load(&s.info)
            n = <uint32_t>(info >> 32)
            if n <= capacity:
                m.stamp = stamp
                m.expires_at = _bits_to_double(fg_atomic_load(&s.expires_at))
                m.flags = <uint32_t>info
                m.length = n
                payload = PyBytes_FromStringAndSize(
                    <const char*>s + sizeof(fg_intro_slot), n)
        fg_fence_acquire()
        if fg_atomic_load(&s.seq) == seq:
            return payload
    return None


cdef void _write_slot(fg_intro_slot* s, const unsigned char* digest, uint64_t stamp,
                      double expires_at, uint32_t flags, const unsigned char* payload,
                      uint32_t n) noexcept nogil:
    # The writer's side of the seqlock. digest NULL (and stamp 0) empties the slot. An odd
    # seq left by a writer that died in the slot stays odd until this write ends.
    cdef uint64_t busy = fg_atomic_load(&s.seq) | 1
    fg_atomic_store(&s.seq, busy)
    fg_fence_release()
    fg_atomic_store(&s.stamp, stamp)
    fg_atomic_store(&s.expires_at, _double_to_bits(expires_at))
    fg_atomic_store(&s.info, flags | (<uint64_t>n << 32))
    if digest != NULL:
        memcpy(s.digest, digest, FG_INTRO_DIGEST_BYTES)
    else:
        memset(s.digest, 0, FG_INTRO_DIGEST_BYTES)
    if n:
        memcpy(<unsigned char*>s + sizeof(fg_intro_slot), payload, n)
    fg_atomic_store(&s.seq, busy + 1)


# ---- geometry ------------------------------------------------------------------------

cdef int _intro_geometry(object entries, object slot_bytes, uint64_t* buckets,
                         uint64_t* size) except -1:
    # The bucket count and file size for at least `entries` entries of `slot_bytes`.
    cdef uint64_t need, b = 1
    cdef uint64_t most = <uint64_t>FG_INTRO_MAX_BUCKETS * FG_INTRO_WAYS
    if not FG_INTRO_SLOT_MIN <= slot_bytes <= FG_INTRO_SLOT_MAX or slot_bytes % 64:
        raise ValueError(f"slot_bytes must be a multiple of 64 in {FG_INTRO_SLOT_MIN}.."
                         f"{FG_INTRO_SLOT_MAX}, not {slot_bytes}")
    if not 1 <= entries <= most:
        raise ValueError(f"entries must be in 1..{most}, not {entries}")
    need = (<uint64_t>entries + FG_INTRO_WAYS - 1) // FG_INTRO_WAYS
    while b < need:
        b <<= 1
    buckets[0] = b
    size[0] = sizeof(fg_intro_header) + b * FG_INTRO_WAYS * <uint64_t>slot_bytes
    return 0


# ---- the table -----------------------------------------------------------------------

cdef int _check_digest(bytes digest) except -1:
    if PyBytes_GET_SIZE(digest) != FG_INTRO_DIGEST_BYTES:
        raise ValueError(f"a digest is {FG_INTRO_DIGEST_BYTES} bytes (SHA-256), "
                         f"not {PyBytes_GET_SIZE(digest)}")
    return 0


cdef class IntrospectionCache:
    """One process's view of the shared introspection-result table (layout and rules in
    fluxgate/_introspect.pxi): ``store``/``purge``/``clear`` for the master, ``lookup`` for
    workers. The buffer export is held until ``release()``."""

    cdef Py_buffer _view
    cdef bint _have_view
    cdef bint _writable
    cdef fg_intro_header* _hdr
    cdef unsigned char* _slots      # the first slot; NULL after release()
    cdef uint64_t _mask             # buckets - 1
    cdef uint64_t _nslots
    cdef uint32_t _slot_size
    cdef uint32_t _capacity         # payload bytes per slot
    # The int objects of recently seen stamps, by stamp % 64, so that a lookup answered
    # from `known` builds no int (a stamp is never 0, so a zeroed entry matches nothing).
    cdef uint64_t _key_stamps[64]
    cdef list _keys

    def __cinit__(self, buffer, *, bint writable):
        PyObject_GetBuffer(buffer, &self._view, PyBUF_WRITABLE if writable else PyBUF_SIMPLE)
        self._have_view = True
        self._writable = writable
        self._keys = [None] * 64
        self._validate()

    cdef int _validate(self) except -1:
        cdef unsigned char* base = <unsigned char*>self._view.buf
        cdef uint64_t size = <uint64_t>self._view.len
        cdef fg_intro_header* hdr = <fg_intro_header*>base
        cdef uint64_t b
        cdef uint32_t slot
        if (<uintptr_t>base) & 7:
            raise ValueError("introspection cache: buffer is not 8-byte aligned")
        if size < sizeof(fg_intro_header):
            raise ValueError("introspection cache: shorter than its header")
        if fg_atomic_load(&hdr.magic) != FG_INTRO_MAGIC or hdr.version != FG_INTRO_VERSION:
            raise ValueError("introspection cache: bad magic or version")
        if hdr.ways != FG_INTRO_WAYS:
            raise ValueError(f"introspection cache: {hdr.ways} ways, this build has "
                             f"{FG_INTRO_WAYS}")
        slot = hdr.slot_size
        if slot < FG_INTRO_SLOT_MIN or slot > FG_INTRO_SLOT_MAX or slot % 64:
            raise ValueError(f"introspection cache: slot size {slot}")
        b = hdr.n_buckets
        if b == 0 or b & (b - 1) or b > FG_INTRO_MAX_BUCKETS:
            raise ValueError(f"introspection cache: bucket count {b}")
        # b <= 2**28 and slot <= 2**16: the product cannot overflow.
        if sizeof(fg_intro_header) + b * FG_INTRO_WAYS * slot != size:
            raise ValueError(
                f"introspection cache: {size} bytes, the header describes "
                f"{sizeof(fg_intro_header) + b * FG_INTRO_WAYS * slot}")
        self._hdr = hdr
        self._slots = base + sizeof(fg_intro_header)
        self._mask = b - 1
        self._nslots = b * FG_INTRO_WAYS
        self._slot_size = slot
        self._capacity = slot - sizeof(fg_intro_slot)
        return 0

    def __dealloc__(self):
        self._drop()

    cdef void _drop(self) noexcept:
        self._slots = NULL
        self._hdr = NULL
        self._nslots = 0
        if self._have_view:
            self._have_view = False
            PyBuffer_Release(&self._view)

    def release(self):
        """Drop the buffer export so the mapping may close. Lookups miss after it; the
        writer's calls raise ValueError."""
        self._drop()

    @staticmethod
    def size_for(entries, slot_bytes=FG_INTRO_SLOT_DEFAULT):
        """Bytes of a table file with room for at least ``entries`` entries of
        ``slot_bytes`` (a multiple of 64, 128..65536; a payload may use slot_bytes - 64).

        Room is not a promise: a digest may only use its own bucket's 8 slots. Filled
        with random digests, a table loses about 14% of them to full buckets at 100% of
        its capacity, 5% at 75%, 1% at 50%, none seen at 25% (measured, 16,384 slots):
        ask for about twice the live entries expected."""
        cdef uint64_t buckets, size
        _intro_geometry(entries, slot_bytes, &buckets, &size)
        return size

    @classmethod
    def format(cls, buffer, entries, slot_bytes=FG_INTRO_SLOT_DEFAULT):
        """Write the header of a new table into ``buffer`` -- a fresh, zero-filled,
        writable mapping of exactly ``size_for(entries, slot_bytes)`` bytes, such as
        ``fluxgate.shm.create_mapping`` makes -- and return the writer's view of it.
        ValueError if the size differs or the header is not zero (an existing table,
        which readers may have mapped)."""
        cdef Py_buffer view
        cdef uint64_t buckets, size
        cdef fg_intro_header* hdr
        cdef const unsigned char* p
        cdef size_t i
        _intro_geometry(entries, slot_bytes, &buckets, &size)
        PyObject_GetBuffer(buffer, &view, PyBUF_WRITABLE)
        try:
            if (<uintptr_t>view.buf) & 7:
                raise ValueError("introspection cache: buffer is not 8-byte aligned")
            if <uint64_t>view.len != size:
                raise ValueError(f"introspection cache: {view.len} bytes, "
                                 f"{entries} entries of {slot_bytes} need {size}")
            p = <const unsigned char*>view.buf
            for i in range(sizeof(fg_intro_header)):
                if p[i]:
                    raise ValueError("introspection cache: the header is not zero "
                                     "(an existing table)")
            hdr = <fg_intro_header*>view.buf
            hdr.version = FG_INTRO_VERSION
            hdr.ways = FG_INTRO_WAYS
            hdr.n_buckets = buckets
            hdr.slot_size = <uint32_t>slot_bytes
            # Last, with release order: a header with its magic is a whole header.
            fg_atomic_store(&hdr.magic, FG_INTRO_MAGIC)
        finally:
            PyBuffer_Release(&view)
        return cls(buffer, writable=True)

    @property
    def writable(self):
        return self._writable

    @property
    def buckets(self):
        return self._mask + 1 if self._slots != NULL else 0

    @property
    def capacity(self):
        """Slots in the table (buckets x ways): the most entries it can hold."""
        return self._nslots

    @property
    def slot_bytes(self):
        return self._slot_size

    @property
    def payload_capacity(self):
        """The largest payload ``store`` accepts."""
        return self._capacity

    cdef inline fg_intro_slot* _slot(self, uint64_t i) noexcept nogil:
        return <fg_intro_slot*>(self._slots + i * self._slot_size)

    cdef inline uint64_t _bucket(self, const unsigned char* digest) noexcept nogil:
        # The first slot of digest's bucket.
        cdef uint64_t h
        memcpy(&h, digest, 8)
        return (h & self._mask) * FG_INTRO_WAYS

    # ---- readers -----------------------------------------------------------------

    cdef object _stamp_key(self, uint64_t stamp):
        cdef Py_ssize_t i = stamp & 63
        if self._key_stamps[i] != stamp:
            self._keys[i] = stamp
            self._key_stamps[i] = stamp
        return self._keys[i]

    cdef object _lookup(self, const unsigned char* digest, double now, dict known):
        cdef _IntroMeta m
        cdef uint64_t base
        cdef int way
        cdef fg_intro_slot* s = NULL
        cdef PyObject* hit
        if self._slots == NULL:
            return None
        base = self._bucket(digest)
        # The 8 slot headers sit 1 KiB apart: ask for all their lines at once, rather
        # than one miss after another when the table is cold.
        for way in range(FG_INTRO_WAYS):
            fg_prefetch(self._slot(base + way), 0)
        for way in range(FG_INTRO_WAYS):
            if _read_meta(self._slot(base + way), digest, &m) == 1:
                s = self._slot(base + way)
                break
        if s == NULL or not m.expires_at > now:
            return None
        if known is not None:
            hit = PyDict_GetItemWithError(known, self._stamp_key(m.stamp))
            if hit != NULL:
                return <object>hit
        payload = _read_entry(s, digest, self._capacity, &m)
        if payload is None or not m.expires_at > now:
            return None
        return m.stamp, (m.flags & FG_INTRO_ACTIVE) != 0, m.expires_at, payload

    def lookup(self, bytes token not None, double now, dict known, /):
        """The entry for bearer ``token`` (hashed here with SHA-256) whose expiry is after
        ``now``: ``known[stamp]`` when its stamp is a key of ``known`` (nothing copied),
        else (stamp, active, expires_at, payload), read consistently. None on a miss, an
        expired entry, or a slot that kept changing while read."""
        cdef unsigned char digest[FG_INTRO_DIGEST_BYTES]
        if sha256_into(<const unsigned char*>PyBytes_AS_STRING(token),
                       PyBytes_GET_SIZE(token), digest) != 0:
            return None
        return self._lookup(digest, now, known)

    def lookup_digest(self, bytes digest not None, double now, dict known, /):
        """``lookup`` for a token whose SHA-256 the caller already has."""
        _check_digest(digest)
        return self._lookup(<const unsigned char*>PyBytes_AS_STRING(digest), now, known)

    def live_entries(self, double now):
        """(positive, negative): the entries whose expiry is after ``now`` (metrics; a
        walk over the whole table)."""
        cdef uint64_t i, positive = 0, negative = 0
        cdef _IntroMeta m
        if self._slots == NULL:
            raise ValueError("introspection cache released")
        for i in range(self._nslots):
            if _read_meta(self._slot(i), NULL, &m) == 1 and m.expires_at > now:
                if m.flags & FG_INTRO_ACTIVE:
                    positive += 1
                else:
                    negative += 1
        return positive, negative

    # ---- the writer ---------------------------------------------------------------

    cdef int _check_writer(self) except -1:
        if self._slots == NULL:
            raise ValueError("introspection cache released")
        if not self._writable:
            raise ValueError("introspection cache: a read-only view (writable=False)")
        return 0

    cdef int64_t _own_slot(self, const unsigned char* digest) noexcept nogil:
        # The slot holding digest, -1 if none. The writer's own reads: no seqlock needed.
        cdef uint64_t base = self._bucket(digest)
        cdef int way
        cdef fg_intro_slot* s
        for way in range(FG_INTRO_WAYS):
            s = self._slot(base + way)
            if s.stamp != 0 and memcmp(s.digest, digest, FG_INTRO_DIGEST_BYTES) == 0:
                return <int64_t>(base + way)
        return -1

    cdef int64_t _victim(self, const unsigned char* digest, bint active,
                         double now) noexcept nogil:
        # Where a result for digest goes (rules at the top of this file); -1: nowhere.
        # Ranks: 0 empty, 1 expired, 2 a live negative, 3 a live positive (for a
        # positive result only); the earliest expiry first within a rank.
        cdef uint64_t base = self._bucket(digest)
        cdef int way
        cdef fg_intro_slot* s
        cdef int rank, best_rank = 4
        cdef int64_t best = -1
        cdef double expires, best_expires = 0.0
        for way in range(FG_INTRO_WAYS):
            s = self._slot(base + way)
            if s.stamp == 0:
                rank = 0
                expires = 0.0
            elif memcmp(s.digest, digest, FG_INTRO_DIGEST_BYTES) == 0:
                return <int64_t>(base + way)
            else:
                expires = _bits_to_double(s.expires_at)
                if not expires > now:
                    rank = 1
                elif not s.info & FG_INTRO_ACTIVE:
                    rank = 2
                elif active:
                    rank = 3
                else:
                    continue  # a negative result never evicts a live positive one
            if rank < best_rank or (rank == best_rank and expires < best_expires):
                best = <int64_t>(base + way)
                best_rank = rank
                best_expires = expires
        return best

    def store(self, bytes digest not None, double expires_at, bint active,
              bytes payload not None, double now):
        """Publish a result for the token whose SHA-256 is ``digest``: ``active`` (a
        positive result, else ``active: false``), served until ``expires_at``, with an
        opaque ``payload``. False (nothing written) when the payload is longer than
        ``payload_capacity`` or the bucket has no slot this result may take."""
        cdef const unsigned char* d
        cdef Py_ssize_t n = PyBytes_GET_SIZE(payload)
        cdef int64_t i
        cdef uint64_t stamp
        self._check_writer()
        _check_digest(digest)
        if isnan(expires_at) or isnan(now):
            raise ValueError("expires_at and now must be numbers")
        if n > self._capacity:
            return False
        d = <const unsigned char*>PyBytes_AS_STRING(digest)
        i = self._victim(d, active, now)
        if i < 0:
            return False
        stamp = fg_atomic_add(&self._hdr.stamp, 1)
        _write_slot(self._slot(<uint64_t>i), d, stamp, expires_at,
                    FG_INTRO_ACTIVE if active else 0,
                    <const unsigned char*>PyBytes_AS_STRING(payload), <uint32_t>n)
        return True

    def purge(self, bytes digest not None):
        """Empty the slot holding ``digest`` (every reader misses it from now on);
        whether there was one."""
        cdef int64_t i
        self._check_writer()
        _check_digest(digest)
        i = self._own_slot(<const unsigned char*>PyBytes_AS_STRING(digest))
        if i < 0:
            return False
        _write_slot(self._slot(<uint64_t>i), NULL, 0, 0.0, 0, NULL, 0)
        return True

    def clear(self):
        """Empty every slot (stamps keep counting up: no stamp is ever reused)."""
        cdef uint64_t i
        cdef fg_intro_slot* s
        self._check_writer()
        for i in range(self._nslots):
            s = self._slot(i)
            if s.stamp != 0:
                _write_slot(s, NULL, 0, 0.0, 0, NULL, 0)
