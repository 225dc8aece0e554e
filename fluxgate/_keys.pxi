# Included into _core.pyx: API keys and quota counters (docs/api-keys.md).
#
# API keys
# --------
# Key text: ``fg_`` + base64url(id[9] || secret[24] || tag[12]), 63 bytes. The mac of
# a key is HMAC-SHA256(signing key, "fgk1" || id || secret) (RFC 2104); the tag is its
# first 12 bytes and the digest stored at rest (keys.db, the shared table) is all 32.
# A key that is not 63 bytes of the right alphabet, or whose tag does not match, is
# refused here before any table lookup, so a forged or mistyped key costs one HMAC and
# nothing is decided on shared memory for it (the entry at its id's home is read, and
# what that entry names prefetched while the HMAC runs: hints the result never depends
# on, as is the request parser's prefetch of the entries an X-API-Key value names,
# ``key_hint``); tags and digests are compared in constant time (fg_ct_equal).
#
# ``KeyTable(table, signing_key, usage, quotas)`` views one generation of the shared
# key table (a read-only mapping written by the master; layout in
# fluxgate/auth/keytable.py), the writable usage slots (last use, request count) and the
# quota buckets. ``check`` runs the whole pipeline for one request: parse -> tag ->
# lookup -> digest -> revoked / expiry -> route -> scopes -> IP allowlist -> quota.
# Every offset of the table is validated once, when it is mapped, and an entry the master
# adds in place later when a bucket first names it; ``check`` trusts what was validated.
#
# Quotas
# ------
# ``QuotaCounters(buffer)`` views the quota file (layout in fluxgate/auth/quotas.py):
# an open-addressing table of 16-byte buckets {tag, state}. ``tag`` is a keyed 64-bit
# hash of whose quota it is (never 0, which marks an empty bucket); ``state`` packs the
# end of the current fixed UTC window (unix seconds, high 32 bits) with the count spent
# in it (low 32 bits), so one compare-exchange starts a new window and counts a request
# atomically: exact across every process that maps the file. A bucket whose window
# ended FG_QUOTA_RECLAIM_AFTER seconds ago may be taken by another tag: the taker first
# swaps its state to RESERVED (count 0xFFFFFFFF), then writes the tag, then a zero
# state. Readers load the state before re-checking the tag (both acquire, the writer's
# stores release), so a bucket re-assigned under them is noticed; a spent or reserved
# state is never restored, so a stale compare-exchange cannot succeed.

from cpython.buffer cimport PyBUF_SIMPLE
from cpython.unicode cimport PyUnicode_AsUTF8AndSize
from libc.stdint cimport int64_t, uint8_t, uint16_t
from cpython.ref cimport Py_INCREF, Py_XDECREF
from libc.stdlib cimport calloc, free
from libc.string cimport memchr, memcpy, memset

cdef extern from *:
    """
    #include <stdint.h>
    #include <string.h>
    #include <arpa/inet.h>
    #include <sys/socket.h>
    #include <openssl/crypto.h>
    #include <openssl/evp.h>

    /* HMAC-SHA256 (RFC 2104) with the padded-key blocks absorbed once: a MAC of a short
       message then costs two SHA-256 compressions and two copies of a 112-byte struct.
       The low-level SHA256_* calls (deprecated in OpenSSL 3.0, still exported by every
       3.x libcrypto and dispatching to the same SHA-NI/AVX2 block code) because the EVP
       path's EVP_MD_CTX_copy_ex frees and re-allocates the provider context on every
       copy: ~1,300 instructions a MAC, more than the two compressions themselves. */
    #pragma GCC diagnostic push
    #pragma GCC diagnostic ignored "-Wdeprecated-declarations"
    #include <openssl/sha.h>
    typedef struct {
        SHA256_CTX inner;   /* after H(K ^ ipad) */
        SHA256_CTX outer;   /* after H(K ^ opad) */
    } fg_hmac_t;

    static void fg_hmac_free(fg_hmac_t *h) {
        OPENSSL_cleanse(h, sizeof *h);
    }

    static int fg_hmac_init(fg_hmac_t *h, const unsigned char *key, size_t n) {
        unsigned char block[64], pad[64];
        size_t i;
        int ok = 1;
        memset(block, 0, sizeof block);
        if (n > 64)  /* RFC 2104 §2: longer keys are hashed first */
            ok = SHA256(key, n, block) != NULL;
        else if (n)
            memcpy(block, key, n);
        for (i = 0; i < 64; i++) pad[i] = block[i] ^ 0x36;
        ok = ok && SHA256_Init(&h->inner) && SHA256_Update(&h->inner, pad, 64);
        for (i = 0; i < 64; i++) pad[i] = block[i] ^ 0x5c;
        ok = ok && SHA256_Init(&h->outer) && SHA256_Update(&h->outer, pad, 64);
        OPENSSL_cleanse(block, sizeof block);
        OPENSSL_cleanse(pad, sizeof pad);
        if (!ok) fg_hmac_free(h);
        return ok ? 0 : -1;
    }

    /* The MAC in two halves, so a caller may start memory loads between them: the inner
       hash of m into out, then the outer hash of out over itself. */
    static int fg_hmac_sha256_inner(const fg_hmac_t *h, const unsigned char *m, size_t n,
                                    unsigned char *out) {
        SHA256_CTX work = h->inner;
        int ok = SHA256_Update(&work, m, n) && SHA256_Final(out, &work);
        OPENSSL_cleanse(&work, sizeof work);  /* the state had absorbed the message */
        return ok ? 0 : -1;
    }

    static int fg_hmac_sha256_outer(const fg_hmac_t *h, unsigned char *out) {
        SHA256_CTX work = h->outer;
        int ok = SHA256_Update(&work, out, 32) && SHA256_Final(out, &work);
        OPENSSL_cleanse(&work, sizeof work);
        return ok ? 0 : -1;
    }

    static int fg_hmac_sha256(const fg_hmac_t *h, const unsigned char *m, size_t n,
                              unsigned char *out) {
        if (fg_hmac_sha256_inner(h, m, n, out) != 0) return -1;
        return fg_hmac_sha256_outer(h, out);
    }
    #pragma GCC diagnostic pop

    /* Constant time: every byte is compared whatever the first difference. Eight bytes a
       step (CRYPTO_memcmp goes a byte at a time); the empty asm keeps the compiler from
       turning the OR into an early exit. */
    static int fg_ct_equal(const void *a, const void *b, size_t n) {
        const unsigned char *x = a, *y = b;
        uint64_t u, v, diff = 0;
        size_t i = 0;
        for (; i + 8 <= n; i += 8) {
            memcpy(&u, x + i, 8);
            memcpy(&v, y + i, 8);
            diff |= u ^ v;
            __asm__ ("" : "+r" (diff));
        }
        for (; i < n; i++) {
            diff |= (uint64_t)(x[i] ^ y[i]);
            __asm__ ("" : "+r" (diff));
        }
        return diff == 0;
    }

    /* A hint, never a read the result depends on: start loading the cache line of p
       (for writing when rw) while other work goes on. */
    #define fg_prefetch(p, rw) __builtin_prefetch((p), (rw), 3)

    /* An address as 16 bytes, IPv4 as IPv4-mapped IPv6 (RFC 4291 §2.5.5.2). */
    static int fg_ip16(const char *text, unsigned char *out) {
        if (inet_pton(AF_INET, text, out + 12) == 1) {
            memset(out, 0, 10);
            out[10] = out[11] = 0xff;
            return 1;
        }
        return inet_pton(AF_INET6, text, out) == 1;
    }

    /* The shared key table (writer: fluxgate/auth/keytable.py). Native byte order: the
       table is written and read on one machine. */
    #define FG_KEYTAB_MAGIC 0x3142544B59454B46ULL  /* "FKEYKTB1" little-endian */
    #define FG_KEYTAB_VERSION 3
    /* The master adds entries to a published generation in place (its spare room): an
       entry and its pool bytes are written first, then n_entries, then the bucket that
       names it (each store a release, each load here an acquire), so a reader that finds
       an entry through a bucket finds it whole. A key that changes gets a new entry, and
       its bucket is pointed at it in one store: no entry is ever rewritten, but for the
       revoked flag. The generation is bumped in place with each such publication.
       A build places each key's entry at the index of the bucket that names it (the
       first n_buckets entries, empty ones zero, are the home region): a lookup finds such
       a key from its id alone, without reading its bucket, and the request parser can
       prefetch its entry. Entries added in place follow the home region; the home entry
       of a key changed in place is flagged superseded. */
    typedef struct {
        uint64_t magic;
        uint32_t version;
        uint32_t entry_size;
        uint64_t generation;
        uint32_t n_entries;     /* published so far; only grows */
        uint32_t n_buckets;     /* the home region's entries; keys at most 2/3 of it */
        uint64_t buckets_off;   /* n_buckets x uint32: entry index + 1, 0 = empty */
        uint64_t entries_off;   /* capacity x fg_key_entry, 8-aligned (the master writes 128) */
        uint64_t pool_off;      /* names, scope and route lists, CIDRs */
        uint64_t pool_len;      /* the pool's room, written or not */
        uint64_t usage_slots;   /* the usage file holds at least this many slots */
        uint32_t capacity;      /* entries the file has room for */
        uint32_t n_keys;        /* the keys the build placed in the home region */
        uint64_t pool_used;     /* the writer's; readers bound offsets by pool_len */
        uint64_t reserved1;
    } fg_keytab_header;

    static inline uint32_t fg_load_u32(const uint32_t *p) {
        return __atomic_load_n(p, __ATOMIC_ACQUIRE);
    }
    static inline uint64_t fg_load_u64(const uint64_t *p) {
        return __atomic_load_n(p, __ATOMIC_ACQUIRE);
    }

    #define FG_KEYF_REVOKED 1u
    /* A home-region entry whose key was changed in place: its bucket names a newer entry. */
    #define FG_KEYF_SUPERSEDED 2u

    typedef struct {
        uint8_t id[16];         /* FG_KEY_ID_BYTES used, the rest zero */
        uint8_t digest[32];
        int64_t expires_at;     /* unix seconds; grace end included */
        int64_t sunset_at;      /* end of the rotation grace period, 0: not rotated */
        int64_t deprecated_at;  /* when the key was rotated, 0 when not rotated */
        uint64_t quota_tag;     /* QuotaCounters tag of the key's name, 0: no quota */
        uint32_t quota_limit;
        uint32_t quota_period;  /* window length in seconds */
        uint32_t usage_slot;
        uint32_t flags;         /* FG_KEYF_* */
        uint32_t name_off, name_len;
        uint32_t scopes_off, n_scopes;   /* n x (uint16 length, bytes), in the pool */
        uint32_t routes_off, n_routes;   /* same encoding: normalized path prefixes */
        uint32_t cidrs_off, n_cidrs;     /* n x fg_cidr, 8-aligned, in the pool */
    } fg_key_entry;

    typedef struct {
        uint8_t addr[16];       /* IPv4 as IPv4-mapped IPv6 */
        uint32_t prefix;        /* 0..128 (an IPv4 /n is stored as /n+96) */
        uint32_t reserved;
    } fg_cidr;

    /* A usage slot: 4 x uint64 {last use in unix ms, address (2 words), requests}. */
    #define FG_USAGE_WORDS 4

    /* The quota file (writer: fluxgate/auth/quotas.py). */
    #define FG_QUOTA_MAGIC 0x31415451584C4646ULL  /* "FFLXQTA1" little-endian */
    #define FG_QUOTA_VERSION 1
    typedef struct {
        uint64_t magic;
        uint32_t version;
        uint32_t reserved0;
        uint64_t capacity;      /* buckets, a power of two */
        uint8_t salt[32];       /* key of the tag hash */
        uint64_t reserved1;
    } fg_quota_header;
    #define FG_QUOTA_RESERVED_COUNT 0xFFFFFFFFu

    _Static_assert(sizeof(fg_keytab_header) == 96, "fg_keytab_header layout");
    _Static_assert(sizeof(fg_key_entry) == 128, "fg_key_entry layout");
    _Static_assert(sizeof(fg_cidr) == 24, "fg_cidr layout");
    _Static_assert(sizeof(fg_quota_header) == 64, "fg_quota_header layout");
    """
    ctypedef struct fg_hmac_t:
        pass
    void fg_hmac_free(fg_hmac_t* h) noexcept nogil
    int fg_hmac_init(fg_hmac_t* h, const unsigned char* key, size_t n) noexcept nogil
    int fg_hmac_sha256(const fg_hmac_t* h, const unsigned char* m, size_t n,
                       unsigned char* out) noexcept nogil
    int fg_hmac_sha256_inner(const fg_hmac_t* h, const unsigned char* m, size_t n,
                             unsigned char* out) noexcept nogil
    int fg_hmac_sha256_outer(const fg_hmac_t* h, unsigned char* out) noexcept nogil
    bint fg_ct_equal(const void* a, const void* b, size_t n) noexcept nogil
    void fg_prefetch(const void* p, int rw) noexcept nogil
    bint fg_ip16(const char* text, unsigned char* out) noexcept nogil

    uint64_t FG_KEYTAB_MAGIC
    uint32_t FG_KEYTAB_VERSION
    uint32_t FG_KEYF_REVOKED
    uint32_t FG_KEYF_SUPERSEDED
    int FG_USAGE_WORDS
    uint64_t FG_QUOTA_MAGIC
    uint32_t FG_QUOTA_VERSION
    uint32_t FG_QUOTA_RESERVED_COUNT

    ctypedef struct fg_keytab_header:
        uint64_t magic
        uint32_t version
        uint32_t entry_size
        uint64_t generation
        uint32_t n_entries
        uint32_t n_buckets
        uint64_t buckets_off
        uint64_t entries_off
        uint64_t pool_off
        uint64_t pool_len
        uint64_t usage_slots
        uint32_t capacity
        uint32_t n_keys

    uint32_t fg_load_u32(const uint32_t* p) noexcept nogil
    uint64_t fg_load_u64(const uint64_t* p) noexcept nogil

    ctypedef struct fg_key_entry:
        uint8_t id[16]
        uint8_t digest[32]
        int64_t expires_at
        int64_t sunset_at
        int64_t deprecated_at
        uint64_t quota_tag
        uint32_t quota_limit
        uint32_t quota_period
        uint32_t usage_slot
        uint32_t flags
        uint32_t name_off
        uint32_t name_len
        uint32_t scopes_off
        uint32_t n_scopes
        uint32_t routes_off
        uint32_t n_routes
        uint32_t cidrs_off
        uint32_t n_cidrs

    ctypedef struct fg_cidr:
        uint8_t addr[16]
        uint32_t prefix

    ctypedef struct fg_quota_header:
        uint64_t magic
        uint32_t version
        uint64_t capacity
        uint8_t salt[32]


__all__ += (
    "KeyTable",
    "PrincipalCache",
    "QuotaCounters",
    "extract_api_key",
    "keytab_home_region",
    "strip_query_param",
)

cdef tuple _KEY_REASONS = (
    "ok",
    "malformed",
    "bad_tag",
    "unknown_key",
    "bad_secret",
    "revoked",
    "expired",
    "route_not_allowed",
    "insufficient_scope",
    "ip_not_allowed",
    "quota_exceeded",
    "quota_table_full",
    "missing_credentials",      # authorize only: no key in the request
    "ambiguous_credentials",    # authorize only: more than one
)

# What fluxgate/auth (mint, table and file writers) must agree on with this file.
KEY_FORMAT = {
    "prefix": b"fg_",
    "mac_domain": b"fgk1",
    "id_bytes": FG_KEY_ID_BYTES,
    "secret_bytes": FG_KEY_SECRET_BYTES,
    "tag_bytes": FG_KEY_TAG_BYTES,
    "text_len": FG_KEY_TEXT_LEN,
    "digest_bytes": FG_KEY_DIGEST_BYTES,
    "reasons": _KEY_REASONS,
}
KEY_LAYOUT = {
    "keytab_magic": FG_KEYTAB_MAGIC,
    "keytab_version": FG_KEYTAB_VERSION,
    "keytab_header_size": sizeof(fg_keytab_header),
    "key_entry_size": sizeof(fg_key_entry),
    "cidr_size": sizeof(fg_cidr),
    "flag_revoked": FG_KEYF_REVOKED,
    "flag_superseded": FG_KEYF_SUPERSEDED,
    "usage_slot_size": FG_USAGE_WORDS * 8,
    "quota_magic": FG_QUOTA_MAGIC,
    "quota_version": FG_QUOTA_VERSION,
    "quota_header_size": sizeof(fg_quota_header),
    "quota_bucket_size": 16,
}

cdef const unsigned char* _MAC_DOMAIN = b"fgk1"


# ---- quota counters ------------------------------------------------------------------

cdef inline uint64_t _state(uint64_t end, uint64_t count) noexcept nogil:
    return (end << 32) | count


cdef inline bint _time_ok(double now) noexcept nogil:
    # A window end (now + a period of up to a year) must fit the 32 state bits.
    return 0 <= now < 4294967296.0 - 86400 * 366


cdef class QuotaCounters:
    """The shared quota buckets over a writable mapping of the quota file."""

    cdef Py_buffer _view
    cdef uint64_t* _buckets      # 2 words per bucket: tag, state; NULL after release()
    cdef uint64_t _mask
    cdef fg_hmac_t _mac
    cdef bint _have_mac

    def __cinit__(self, buffer, /):
        cdef const fg_quota_header* hdr
        cdef uint64_t capacity
        PyObject_GetBuffer(buffer, &self._view, PyBUF_WRITABLE)
        try:
            if (<uintptr_t>self._view.buf) & 7:
                raise ValueError("quota buffer is not 8-byte aligned")
            if self._view.len < <Py_ssize_t>sizeof(fg_quota_header):
                raise ValueError("quota buffer is shorter than its header")
            hdr = <const fg_quota_header*>self._view.buf
            if hdr.magic != FG_QUOTA_MAGIC or hdr.version != FG_QUOTA_VERSION:
                raise ValueError("not a FluxGate quota file (magic/version)")
            capacity = hdr.capacity
            if capacity == 0 or capacity & (capacity - 1) or capacity > (1ULL << 32):
                raise ValueError("quota capacity is not a power of two")
            if <uint64_t>self._view.len < sizeof(fg_quota_header) + capacity * 16:
                raise ValueError("quota buffer is shorter than its capacity")
            if fg_hmac_init(&self._mac, hdr.salt, 32) != 0:
                raise MemoryError("HMAC context")
            self._have_mac = True
        except BaseException:
            PyBuffer_Release(&self._view)
            raise
        self._buckets = <uint64_t*>(<char*>self._view.buf + sizeof(fg_quota_header))
        self._mask = capacity - 1

    def __dealloc__(self):
        self._drop()

    cdef void _drop(self) noexcept:
        if self._have_mac:
            fg_hmac_free(&self._mac)
            self._have_mac = False
        if self._buckets != NULL:
            self._buckets = NULL
            PyBuffer_Release(&self._view)

    def release(self):
        """Drop the buffer export so the mapping may close; unusable after."""
        self._drop()

    @property
    def capacity(self):
        return self._mask + 1 if self._buckets != NULL else 0

    def tag(self, bytes identity not None, /):
        """The bucket tag of an identity (a keyed 64-bit hash; never 0)."""
        cdef unsigned char mac[32]
        cdef uint64_t t
        self._check_open()
        if fg_hmac_sha256(&self._mac, <const unsigned char*>PyBytes_AS_STRING(identity),
                          PyBytes_GET_SIZE(identity), mac) != 0:
            raise MemoryError("HMAC failed")
        memcpy(&t, mac, 8)
        return t if t != 0 else 1

    def consume(self, uint64_t tag, uint32_t limit, uint32_t period, double now, /):
        """Count one request against ``limit`` per ``period`` seconds (fixed windows
        aligned on the unix epoch, so days are UTC days). Returns (code, remaining,
        window_end): code 0 counted, 1 exceeded, 2 table full (nothing counted)."""
        cdef uint64_t remaining = 0, end = 0
        cdef int code
        self._check_args(tag, limit, period, now)
        code = quota_consume(self, tag, limit, period, <uint64_t>now, &remaining, &end)
        return code, remaining, end

    def peek(self, uint64_t tag, uint32_t period, double now, /):
        """(spent in the current window, window_end) without counting; (0, end) when the
        tag has no bucket."""
        cdef uint64_t now_s, cur_end, s, t
        cdef int i
        self._check_args(tag, 1, period, now)
        now_s = <uint64_t>now
        cur_end = (now_s // period + 1) * period
        for i in range(FG_QUOTA_MAX_PROBE):
            t = fg_atomic_load(&self._buckets[((tag + i) & self._mask) * 2])
            if t == 0:
                break
            if t != tag:
                continue
            s = fg_atomic_load(&self._buckets[((tag + i) & self._mask) * 2 + 1])
            if (<uint32_t>s) == FG_QUOTA_RESERVED_COUNT or (s >> 32) <= now_s:
                return 0, cur_end
            return <uint32_t>s, s >> 32
        return 0, cur_end

    cdef int _check_open(self) except -1:
        if self._buckets == NULL:
            raise ValueError("quota counters released")
        return 0

    cdef int _check_args(self, uint64_t tag, uint32_t limit, uint32_t period,
                         double now) except -1:
        self._check_open()
        if tag == 0:
            raise ValueError("tag 0 marks an empty bucket")
        if limit == 0 or limit >= FG_QUOTA_RESERVED_COUNT:
            raise ValueError("limit must be between 1 and 2**32 - 2")
        if period == 0:
            raise ValueError("period must be at least 1 second")
        if not _time_ok(now):
            raise ValueError("now is outside the 32-bit unix time range")
        return 0


cdef bint _reserved(uint64_t* b, uint64_t now_s) noexcept nogil:
    # Wait (bounded) while another process re-assigns bucket b; True if it was reserved.
    cdef uint64_t s = fg_atomic_load(&b[1])
    cdef int spins = 0
    if (<uint32_t>s) != FG_QUOTA_RESERVED_COUNT \
            or (s >> 32) + FG_QUOTA_RESERVED_TIMEOUT <= now_s:
        return False
    while spins < FG_QUOTA_RESERVED_SPINS:
        spins += 1
        s = fg_atomic_load(&b[1])
        if (<uint32_t>s) != FG_QUOTA_RESERVED_COUNT:
            break
    return True


cdef int _quota_at(uint64_t* b, uint64_t tag, uint32_t limit, uint64_t now_s,
                   uint64_t cur_end, uint64_t* remaining,
                   uint64_t* end_out) noexcept nogil:
    # Count in bucket b, which held `tag` when the caller looked. Returns a QuotaCode,
    # or -1 when the bucket no longer belongs to `tag` (the caller keeps probing).
    cdef uint64_t s, end, count
    cdef int spins = 0
    while True:
        s = fg_atomic_load(&b[1])
        if (<uint32_t>s) == FG_QUOTA_RESERVED_COUNT:
            spins += 1
            if spins > FG_QUOTA_RESERVED_SPINS:
                return -1  # its taker stalled; a reserved bucket holds no live window
            continue
        if fg_atomic_load(&b[0]) != tag:
            return -1
        end = s >> 32
        count = <uint32_t>s
        if end <= now_s:
            end = cur_end  # the window has ended: a new one starts with this request
            count = 0
        if count >= limit:
            remaining[0] = 0
            end_out[0] = end
            return FG_QUOTA_EXCEEDED
        if fg_atomic_cas(&b[1], s, _state(end, count + 1)):
            remaining[0] = limit - count - 1
            end_out[0] = end
            return FG_QUOTA_OK


cdef inline void quota_prefetch(QuotaCounters q, uint64_t tag) noexcept nogil:
    # The first bucket of tag's probe sequence, where its count almost always is.
    if q._buckets != NULL:
        fg_prefetch(&q._buckets[(tag & q._mask) * 2], 1)


cdef int quota_consume(QuotaCounters q, uint64_t tag, uint32_t limit, uint32_t period,
                       uint64_t now_s, uint64_t* remaining,
                       uint64_t* end_out) noexcept nogil:
    cdef uint64_t* buckets = q._buckets
    cdef uint64_t mask = q._mask
    cdef uint64_t cur_end = (now_s // period + 1) * period
    cdef uint64_t t, s
    cdef int i
    cdef uint64_t* b
    cdef int r, attempt
    for attempt in range(2):
        # Pass 1: the tag's bucket, or the first empty one in its probe sequence.
        # Buckets never become empty again, so the tag cannot live past an empty one.
        for i in range(FG_QUOTA_MAX_PROBE):
            b = &buckets[((tag + i) & mask) * 2]
            t = fg_atomic_load(&b[0])
            if t == 0:
                if fg_atomic_cas(&b[0], 0, tag):
                    t = tag
                else:
                    t = fg_atomic_load(&b[0])
            elif t != tag and _reserved(b, now_s):
                t = fg_atomic_load(&b[0])  # it may have been re-assigned to this tag
            if t == tag:
                r = _quota_at(b, tag, limit, now_s, cur_end, remaining, end_out)
                if r >= 0:
                    return r
        # Pass 2: the probe sequence is full of other tags; take the first bucket whose
        # window ended a while ago (every process picks the same one), then count there.
        for i in range(FG_QUOTA_MAX_PROBE):
            b = &buckets[((tag + i) & mask) * 2]
            s = fg_atomic_load(&b[1])
            if (<uint32_t>s) == FG_QUOTA_RESERVED_COUNT:
                if (s >> 32) + FG_QUOTA_RESERVED_TIMEOUT > now_s:
                    break  # being re-assigned right now: look again from the start
            elif s == 0 or (s >> 32) + FG_QUOTA_RECLAIM_AFTER > now_s:
                continue   # fresh (just taken) or still counting a live window
            if fg_atomic_cas(&b[1], s, _state(now_s, FG_QUOTA_RESERVED_COUNT)):
                fg_atomic_store(&b[0], tag)
                fg_atomic_store(&b[1], 0)
                r = _quota_at(b, tag, limit, now_s, cur_end, remaining, end_out)
                if r >= 0:
                    return r
            break
    remaining[0] = 0
    end_out[0] = cur_end
    return FG_QUOTA_FULL


# ---- the key table -------------------------------------------------------------------

cdef inline uint16_t _u16(const unsigned char* p) noexcept nogil:
    cdef uint16_t v
    memcpy(&v, p, 2)
    return v


cdef bint _strings_ok(const unsigned char* pool, uint64_t pool_len, uint32_t off,
                      uint32_t n) noexcept nogil:
    # n x (uint16 length, bytes) fits in the pool.
    cdef uint64_t p = off
    cdef uint32_t k
    for k in range(n):
        if p + 2 > pool_len:
            return False
        p += 2 + _u16(pool + p)
        if p > pool_len:
            return False
    return True


cdef bint _has_string(const unsigned char* p, uint32_t n, const char* s,
                      Py_ssize_t slen) noexcept nogil:
    cdef uint32_t k
    cdef uint16_t ln
    for k in range(n):
        ln = _u16(p)
        if ln == slen and memcmp(p + 2, s, slen) == 0:
            return True
        p += 2 + ln
    return False


cdef bint _route_ok(const unsigned char* p, uint32_t n, const char* path,
                    Py_ssize_t plen) noexcept nogil:
    # Prefixes are normalized route paths ("/a/b", or "/"): segment-wise prefix match.
    cdef uint32_t k
    cdef uint16_t ln
    if n == 0:
        return True
    for k in range(n):
        ln = _u16(p)
        if ln == 1 and p[2] == b"/":
            return True
        if ln <= plen and memcmp(p + 2, path, ln) == 0 \
                and (ln == plen or path[ln] == b"/"):
            return True
        p += 2 + ln
    return False


cdef bint _cidr_match(const unsigned char* addr, const fg_cidr* c) noexcept nogil:
    cdef uint32_t full = c.prefix >> 3, rem = c.prefix & 7
    cdef unsigned char mask
    if full and memcmp(addr, c.addr, full) != 0:
        return False
    if rem == 0:
        return True
    mask = <unsigned char>(0xFF << (8 - rem))
    return (addr[full] & mask) == (c.addr[full] & mask)


# The entries of the newest table mapped in this process (a worker maps one generation
# at a time) and its bucket count, for ``key_hint``; cleared when that table is released.
cdef const fg_key_entry* _hint_entries = NULL
cdef uint32_t _hint_n_buckets = 0
# The slots of the PrincipalCache made last in this process (a worker makes one per table
# generation it maps), by entry index.
cdef PyObject** _hint_principals = NULL
cdef uint32_t _hint_n_principals = 0


cdef enum:
    PRINCIPAL_CACHE_MIN = 1024  # slots of a PrincipalCache made without a size


cdef class PrincipalCache:
    """The principals a worker built for the keys of one table, by entry index.

    ``PrincipalCache(slots=1024)``. ``KeyTable.authorize`` reads it for every accepted
    key: an array of principal pointers indexed by entry, so the read is one memory access
    at an address known from the entry index alone (a dict of a hundred thousand ints
    costs three). A build places keys at their home bucket's index, so the request parser
    prefetches the slot from the key's id (``key_hint``, in the cache made last) with its
    entry. Made
    with the table's ``capacity`` slots, it never grows; slots never written stay pages
    never touched. Holds Principals only: outside the cycle collector, they make no cycle
    through it.
    """

    cdef PyObject** _slots      # counted references; NULL: none kept
    cdef uint32_t _n
    cdef Py_ssize_t _used

    def __cinit__(self, Py_ssize_t slots=PRINCIPAL_CACHE_MIN, /):
        global _hint_principals, _hint_n_principals
        if not 0 < slots <= 0xFFFFFFFF:
            raise ValueError("slots must be in 1..2**32 - 1")
        self._resize(<uint32_t>slots)
        _hint_principals, _hint_n_principals = self._slots, self._n

    def __dealloc__(self):
        cdef uint32_t i
        global _hint_principals, _hint_n_principals
        if self._slots == NULL:
            return
        if _hint_principals == self._slots:
            _hint_principals = NULL
            _hint_n_principals = 0
        for i in range(self._n):
            Py_XDECREF(self._slots[i])
        free(self._slots)

    cdef int _resize(self, uint32_t n) except -1:
        # n slots, the principals held kept. calloc maps a large array fresh: only the
        # pages a principal is written to are ever backed.
        global _hint_principals, _hint_n_principals
        cdef PyObject** slots = <PyObject**>calloc(n, sizeof(PyObject*))
        if slots == NULL:
            raise MemoryError("principal cache")
        if self._slots != NULL:
            memcpy(slots, self._slots, self._n * sizeof(PyObject*))
            if _hint_principals == self._slots:
                _hint_principals, _hint_n_principals = slots, n
            free(self._slots)
        self._slots, self._n = slots, n
        return 0

    cdef inline PyObject* _find(self, Py_ssize_t index) noexcept nogil:
        # Borrowed: the principal of entry ``index``, NULL when none was kept.
        return self._slots[index] if 0 <= index < self._n else NULL

    def __setitem__(self, Py_ssize_t index, Principal principal not None):
        """Keep ``principal`` for entry ``index`` (replacing one kept before)."""
        if not 0 <= index < 0xFFFFFFFF:
            raise IndexError(index)
        if index >= self._n:
            self._resize(<uint32_t>min(max(<Py_ssize_t>self._n * 2, index + 1), 0xFFFFFFFF))
        Py_INCREF(principal)
        if self._slots[index] != NULL:
            Py_XDECREF(self._slots[index])
        else:
            self._used += 1
        self._slots[index] = <PyObject*>principal

    def get(self, Py_ssize_t index, default=None, /):
        """The principal kept for entry ``index``, else ``default``."""
        cdef PyObject* found = self._find(index)
        return <object>found if found != NULL else default

    def __len__(self):
        return self._used


cdef inline uint32_t _home_of(const unsigned char* raw, uint32_t n_buckets) noexcept nogil:
    # Where key id raw[0:FG_KEY_ID_BYTES]'s probe starts: its first 4 bytes (ids are
    # random, so they are the hash) scaled to [0, n_buckets) by a multiply and a shift,
    # which lets the bucket count be any number, not only a power of two.
    cdef uint32_t h
    memcpy(&h, raw, 4)
    return <uint32_t>((<uint64_t>h * n_buckets) >> 32)


cdef inline uint32_t _next_slot(uint32_t slot, uint32_t n_buckets) noexcept nogil:
    # The linear probe's next bucket (and home-region entry), wrapping at the end.
    slot += 1
    return 0 if slot == n_buckets else slot


cdef inline void key_hint(const unsigned char* text, Py_ssize_t n) noexcept nogil:
    # The request parser met a header value that may be an API key: prefetch the entries
    # at its id's home (where a build places the key) and the principal slot of the
    # first, so that the lookup that follows in the api_key step finds them in cache,
    # their pages translated. A hint only: the value is not trusted here, and nothing
    # depends on it.
    cdef unsigned char head[6]
    cdef uint32_t home
    if (n != FG_KEY_TEXT_LEN or _hint_entries == NULL or text[0] != b"f"
            or text[1] != b"g" or text[2] != b"_"
            or b64url_decode_into(text + 3, 8, head) != 6):
        return
    home = _home_of(head, _hint_n_buckets)
    fg_prefetch(&_hint_entries[home], 0)
    fg_prefetch(<const unsigned char*>&_hint_entries[home] + 64, 0)
    if home + 1 < _hint_n_buckets:  # linear probing puts many keys one bucket on
        fg_prefetch(&_hint_entries[home + 1], 0)
        fg_prefetch(<const unsigned char*>&_hint_entries[home + 1] + 64, 0)
    if home < _hint_n_principals:
        fg_prefetch(&_hint_principals[home], 0)


cdef class KeyTable:
    """One generation of the shared key table, with usage slots and quota buckets."""

    cdef Py_buffer _view
    cdef bint _have_view
    cdef const fg_keytab_header* _hdr
    cdef const fg_key_entry* _entries
    cdef const uint32_t* _buckets
    cdef const unsigned char* _pool
    cdef uint32_t _n_buckets
    cdef uint32_t _n              # entries validated (those published when last looked)
    cdef uint32_t _capacity
    cdef uint64_t _pool_len
    cdef fg_hmac_t _mac
    cdef bint _have_mac
    cdef Py_buffer _usage_view
    cdef uint64_t* _usage         # FG_USAGE_WORDS per slot; NULL without a usage buffer
    cdef uint64_t _usage_slots
    cdef QuotaCounters _quotas
    cdef LeaseSpender _leases   # cluster mode: keys' quotas spend the node's leases

    def __cinit__(self, table, bytes signing_key not None, usage=None,
                  QuotaCounters quotas=None, /):
        PyObject_GetBuffer(table, &self._view, PyBUF_SIMPLE)
        self._have_view = True
        self._validate()
        if usage is not None:
            PyObject_GetBuffer(usage, &self._usage_view, PyBUF_WRITABLE)
            if (<uintptr_t>self._usage_view.buf) & 7:
                PyBuffer_Release(&self._usage_view)
                raise ValueError("usage buffer is not 8-byte aligned")
            self._usage = <uint64_t*>self._usage_view.buf
            self._usage_slots = self._usage_view.len // (FG_USAGE_WORDS * 8)
            if self._usage_slots < self._hdr.usage_slots:
                raise ValueError(
                    f"usage buffer has {self._usage_slots} slots, the table needs "
                    f"{self._hdr.usage_slots}")
        self._quotas = quotas
        global _hint_entries, _hint_n_buckets
        _hint_entries = self._entries
        _hint_n_buckets = self._n_buckets
        if fg_hmac_init(&self._mac,
                        <const unsigned char*>PyBytes_AS_STRING(signing_key),
                        PyBytes_GET_SIZE(signing_key)) != 0:
            raise MemoryError("HMAC context")
        self._have_mac = True

    cdef int _validate(self) except -1:
        cdef const unsigned char* base = <const unsigned char*>self._view.buf
        cdef uint64_t size = self._view.len
        cdef const fg_keytab_header* hdr
        cdef uint32_t i, v, n
        if (<uintptr_t>base) & 7 or size < sizeof(fg_keytab_header):
            raise ValueError("key table: too short or misaligned")
        hdr = <const fg_keytab_header*>base
        if hdr.magic != FG_KEYTAB_MAGIC or hdr.version != FG_KEYTAB_VERSION:
            raise ValueError("key table: bad magic or version")
        if hdr.entry_size != sizeof(fg_key_entry):
            raise ValueError("key table: entry size differs from this build")
        n = fg_load_u32(&hdr.n_entries)
        # The first n_buckets entries are the home region (published whole when built);
        # entries added in place follow it.
        if hdr.n_buckets == 0 or hdr.n_buckets > n or hdr.capacity < n \
                or hdr.n_keys > hdr.n_buckets:
            raise ValueError("key table: bucket count or capacity")
        if (hdr.buckets_off & 7 or hdr.buckets_off > size
                or <uint64_t>hdr.n_buckets * 4 > size - hdr.buckets_off):
            raise ValueError("key table: buckets out of bounds")
        if (hdr.entries_off & 7 or hdr.entries_off > size
                or <uint64_t>hdr.capacity * sizeof(fg_key_entry)
                > size - hdr.entries_off):
            raise ValueError("key table: entries out of bounds")
        if hdr.pool_off > size or hdr.pool_len > size - hdr.pool_off \
                or hdr.pool_off & 7:
            raise ValueError("key table: pool out of bounds")
        self._hdr = hdr
        self._buckets = <const uint32_t*>(base + hdr.buckets_off)
        self._entries = <const fg_key_entry*>(base + hdr.entries_off)
        self._pool = base + hdr.pool_off
        self._pool_len = hdr.pool_len
        self._n_buckets = hdr.n_buckets
        self._capacity = hdr.capacity
        self._n = 0
        for i in range(hdr.n_buckets):
            # A bucket may name an entry published after n was read: checked when met.
            v = fg_load_u32(&self._buckets[i])
            if v > hdr.capacity:
                raise ValueError("key table: bucket points past the entries")
        for i in range(n):
            if not self._entry_ok(i):
                raise ValueError(f"key table: entry {i} is inconsistent")
        self._n = n
        return 0

    cdef bint _entry_ok(self, uint32_t i) noexcept nogil:
        # Every offset of entry i within the pool, its usage slot within the usage file
        # the header promises, its quota sane.
        cdef const fg_key_entry* e = &self._entries[i]
        cdef const unsigned char* pool = self._pool
        cdef uint64_t pool_len = self._pool_len
        return not (<uint64_t>e.name_off + e.name_len > pool_len
                    or not _strings_ok(pool, pool_len, e.scopes_off, e.n_scopes)
                    or not _strings_ok(pool, pool_len, e.routes_off, e.n_routes)
                    or e.cidrs_off & 7
                    or <uint64_t>e.cidrs_off + <uint64_t>e.n_cidrs * sizeof(fg_cidr)
                    > pool_len
                    or e.usage_slot >= self._hdr.usage_slots
                    or (e.quota_tag != 0
                        and (e.quota_limit == 0 or e.quota_period == 0
                             or e.quota_limit >= FG_QUOTA_RESERVED_COUNT)))

    cdef bint _catch_up(self, uint32_t v) noexcept nogil:
        # Entry v - 1 was published after this view last looked: validate what the master
        # published since, once. False (the key is treated as absent) if entry v - 1 is not
        # among the published entries or an entry before it is inconsistent.
        cdef uint32_t n = fg_load_u32(&self._hdr.n_entries), i
        if n > self._capacity or v > n:
            return False
        for i in range(self._n, n):
            if not self._entry_ok(i):
                return False
            self._n = i + 1
        return True

    def __dealloc__(self):
        self._drop()

    cdef void _drop(self) noexcept:
        if self._have_mac:
            fg_hmac_free(&self._mac)
            self._have_mac = False
        if self._usage != NULL:
            self._usage = NULL
            self._usage_slots = 0
            PyBuffer_Release(&self._usage_view)
        global _hint_entries
        if self._have_view:
            if _hint_entries == self._entries:
                _hint_entries = NULL
            self._have_view = False
            self._hdr = NULL
            self._n = 0
            PyBuffer_Release(&self._view)

    def release(self):
        """Drop the buffer exports so the mappings may close; unusable after."""
        self._drop()
        self._quotas = None
        self._leases = None

    def use_leases(self, LeaseSpender leases, /):
        """Cluster mode: spend keys' quotas from the node's leases (fluxgate/_leases.pxi)
        rather than count them against their whole limit; a key with no unit in hand is
        answered QUOTA_EXCEEDED, which the api_key middleware takes to the lease path."""
        self._leases = leases

    def __len__(self):
        return self._n

    @property
    def capacity(self):
        """Entries this generation has room for: every entry index is below it."""
        if self._hdr == NULL:
            raise ValueError("key table released")
        return self._capacity

    @property
    def generation(self):
        if self._hdr == NULL:
            raise ValueError("key table released")
        return fg_load_u64(&self._hdr.generation)

    cdef uint32_t _in_home_region(self, const unsigned char* raw) noexcept nogil:
        # The entry index + 1 of key id raw[0:FG_KEY_ID_BYTES] where a build placed it,
        # 0 when it is not there (not in the table, added or changed in place since). A
        # build fills the home region as it fills the buckets, so the key, if there, is in
        # the run of non-empty entries from its home on; the entry is then the one its
        # bucket names unless it is flagged superseded. Costs no read of the bucket array.
        cdef uint32_t slot = _home_of(raw, self._n_buckets), probes
        cdef const fg_key_entry* e
        cdef const uint64_t* id_words
        for probes in range(self._n_buckets):
            e = &self._entries[slot]
            id_words = <const uint64_t*>e.id
            if id_words[0] == 0 and id_words[1] == 0:
                return 0  # an empty entry ends the run
            if memcmp(e.id, raw, FG_KEY_ID_BYTES) == 0:
                if fg_load_u32(&e.flags) & FG_KEYF_SUPERSEDED:
                    return 0
                return slot + 1
            slot = _next_slot(slot, self._n_buckets)
        return 0

    cdef uint32_t _lookup(self, const unsigned char* raw) noexcept nogil:
        # The entry index + 1 of key id raw[0:FG_KEY_ID_BYTES], 0 when absent.
        cdef uint32_t v = self._in_home_region(raw), slot, probes
        if v != 0:
            return v
        slot = _home_of(raw, self._n_buckets)
        for probes in range(self._n_buckets):
            v = fg_load_u32(&self._buckets[slot])
            if v == 0:
                return 0
            if v > self._n and not self._catch_up(v):
                return 0
            if memcmp(self._entries[v - 1].id, raw, FG_KEY_ID_BYTES) == 0:
                return v
            slot = _next_slot(slot, self._n_buckets)
        return 0  # every bucket taken (a hostile file): the key is not there

    cdef int _verify(self, const unsigned char* text, Py_ssize_t n, int64_t now,
                     Py_ssize_t* index, PrincipalCache principals,
                     PyObject** principal) noexcept:
        # parse -> tag -> lookup -> digest -> revoked / expired. index is set only once the
        # secret is proven (the caller's -1 stays for a malformed, forged or unknown key);
        # with ``principals``, principal[0] to what it holds for the entry found (borrowed,
        # NULL for none).
        cdef unsigned char raw[FG_KEY_RAW_BYTES]
        cdef unsigned char msg[4 + FG_KEY_ID_BYTES + FG_KEY_SECRET_BYTES]
        cdef unsigned char mac[32]
        cdef uint32_t v, hinted
        cdef const fg_key_entry* e
        if self._hdr == NULL:
            return FG_KEY_UNKNOWN
        if (n != FG_KEY_TEXT_LEN or text[0] != b"f" or text[1] != b"g"
                or text[2] != b"_"
                or b64url_decode_into(text + 3, FG_KEY_TEXT_LEN - 3, raw)
                != FG_KEY_RAW_BYTES):
            return FG_KEY_MALFORMED
        # With many keys in turn every step of the lookup misses the caches and the TLB, so
        # each starts as early as its address is known. The request parser prefetched the
        # id's home entries and principal slot (key_hint); what the entry at home points
        # to (usage slot, quota bucket, principal) starts loading here, during the MAC.
        # Hints only: nothing is decided on any of them before the tag is proven.
        hinted = _home_of(raw, self._n_buckets)
        if memcmp(self._entries[hinted].id, raw, FG_KEY_ID_BYTES) == 0:
            self._prefetch_for(hinted, principals)
        memcpy(msg, _MAC_DOMAIN, 4)
        memcpy(msg + 4, raw, FG_KEY_ID_BYTES + FG_KEY_SECRET_BYTES)
        if fg_hmac_sha256_inner(&self._mac, msg, sizeof(msg), mac) != 0:
            return FG_KEY_BAD_TAG
        if fg_hmac_sha256_outer(&self._mac, mac) != 0:
            return FG_KEY_BAD_TAG
        if not fg_ct_equal(mac, raw + FG_KEY_ID_BYTES + FG_KEY_SECRET_BYTES,
                           FG_KEY_TAG_BYTES):
            return FG_KEY_BAD_TAG
        v = self._lookup(raw)
        if v == 0:
            return FG_KEY_UNKNOWN
        e = &self._entries[v - 1]
        if v - 1 != hinted:  # the key is not at its home
            self._prefetch_for(v - 1, principals)
        if principals is not None:
            principal[0] = principals._find(v - 1)
            if principal[0] != NULL:
                # The head the upstream request copies.
                fg_prefetch(<PyObject*>(<Principal>principal[0]).upstream_lines, 0)
        if not fg_ct_equal(mac, e.digest, FG_KEY_DIGEST_BYTES):
            return FG_KEY_BAD_SECRET
        index[0] = <Py_ssize_t>v - 1
        if e.flags & FG_KEYF_REVOKED:
            return FG_KEY_REVOKED
        if now >= e.expires_at:
            return FG_KEY_EXPIRED
        return FG_KEY_OK

    cdef inline void _prefetch_for(self, uint32_t index, PrincipalCache principals) noexcept:
        # Start loading what a request with the key of entry ``index`` (a validated one)
        # reads after its lookup: the usage slot and quota bucket it counts in, the
        # principal ``authorize`` sets.
        cdef const fg_key_entry* e = &self._entries[index]
        cdef PyObject* principal
        if self._usage != NULL:
            fg_prefetch(&self._usage[<uint64_t>e.usage_slot * FG_USAGE_WORDS], 1)
        if e.quota_tag != 0 and self._quotas is not None:
            quota_prefetch(self._quotas, e.quota_tag)
        if principals is not None:
            principal = principals._find(index)
            if principal != NULL:
                fg_prefetch(principal, 1)

    cdef int _stamp(self, const fg_key_entry* e, double now, str ip) except -1:
        # Last use (at most once per FG_KEY_STAMP_MS per key, by whoever wins the
        # compare-exchange) and the request count, in the key's usage slot.
        cdef uint64_t* slot
        cdef uint64_t now_ms = <uint64_t>(now * 1000.0), last
        cdef unsigned char addr[16]
        cdef uint64_t words[2]
        cdef const char* text
        if self._usage == NULL:
            return 0
        slot = &self._usage[<uint64_t>e.usage_slot * FG_USAGE_WORDS]
        fg_atomic_add(&slot[3], 1)
        last = fg_atomic_load(&slot[0])
        if now_ms < last + FG_KEY_STAMP_MS or not fg_atomic_cas(&slot[0], last, now_ms):
            return 0
        text = PyUnicode_AsUTF8AndSize(ip, NULL)
        if not fg_ip16(text, addr):
            memset(addr, 0, 16)
        memcpy(words, addr, 16)
        fg_atomic_store(&slot[1], words[0])
        fg_atomic_store(&slot[2], words[1])
        return 0

    cdef int _decide(self, bytes key, double now, bytes path, tuple scopes, tuple any_scopes,
                     str ip, Py_ssize_t* index, uint32_t* limit, uint64_t* remaining,
                     uint64_t* end, const fg_key_entry** proven,
                     PrincipalCache principals, PyObject** principal) except -1:
        # The whole decision for one key (see ``check``); index is set once the secret is
        # proven, limit/remaining/end once the quota was consulted (limit 0: not). proven
        # is set to the entry of a live key (not revoked or expired), refused or not: the
        # caller stamps its use (``_stamp``) last, when the usage slot, prefetched at the
        # lookup, has had the longest to arrive. principal: as ``_verify`` sets it.
        cdef const fg_key_entry* e
        cdef const unsigned char* pool
        cdef int code
        cdef Py_ssize_t i, n
        cdef unsigned char addr[16]
        cdef const char* text
        cdef bytes scope
        cdef bint any_ok
        cdef uint32_t k
        cdef const fg_cidr* cidr
        code = self._verify(<const unsigned char*>PyBytes_AS_STRING(key),
                            PyBytes_GET_SIZE(key), <int64_t>now, index, principals,
                            principal)
        if code != FG_KEY_OK:
            return code
        e = &self._entries[index[0]]
        proven[0] = e
        pool = self._pool
        if not _route_ok(pool + e.routes_off, e.n_routes, PyBytes_AS_STRING(path),
                         PyBytes_GET_SIZE(path)):
            return FG_KEY_ROUTE_DENIED
        n = len(scopes)
        for i in range(n):
            scope = scopes[i]
            if not _has_string(pool + e.scopes_off, e.n_scopes,
                               PyBytes_AS_STRING(scope), PyBytes_GET_SIZE(scope)):
                return FG_KEY_SCOPE_DENIED
        if any_scopes is not None:
            any_ok = False
            for scope in any_scopes:
                if _has_string(pool + e.scopes_off, e.n_scopes,
                               PyBytes_AS_STRING(scope), PyBytes_GET_SIZE(scope)):
                    any_ok = True
                    break
            if not any_ok:
                return FG_KEY_SCOPE_DENIED
        if e.n_cidrs:
            text = PyUnicode_AsUTF8AndSize(ip, NULL)
            if text == NULL or not fg_ip16(text, addr):
                return FG_KEY_IP_DENIED
            cidr = <const fg_cidr*>(pool + e.cidrs_off)
            for k in range(e.n_cidrs):
                if _cidr_match(addr, &cidr[k]):
                    break
            else:
                return FG_KEY_IP_DENIED
        if e.quota_tag == 0 or (self._quotas is None and self._leases is None):
            return FG_KEY_OK
        limit[0] = e.quota_limit
        if not _time_ok(now):
            return FG_KEY_QUOTA_FULL
        if self._leases is not None:
            if lease_spend_tag(self._leases, e.quota_tag, e.quota_limit, e.quota_period,
                               <uint64_t>now, remaining, end) >= 0:
                return FG_KEY_OK
            remaining[0] = 0
            return FG_KEY_QUOTA_EXCEEDED
        code = quota_consume(self._quotas, e.quota_tag, e.quota_limit, e.quota_period,
                             <uint64_t>now, remaining, end)
        if code == FG_QUOTA_OK:
            return FG_KEY_OK
        remaining[0] = 0
        return FG_KEY_QUOTA_EXCEEDED if code == FG_QUOTA_EXCEEDED else FG_KEY_QUOTA_FULL

    def check(self, bytes key not None, double now, bytes path not None,
              tuple scopes not None, tuple any_scopes, str ip not None, /):
        """Authenticate and authorize one request with API key ``key``.

        ``path`` is the normalized request path (checked against the key's routes);
        ``scopes`` are the scopes the route requires, all of which the key must hold;
        ``any_scopes``, when not None, are scopes of which the key must hold at least
        one (a scope_map rule covering the request); ``ip`` is the resolved client
        address. Returns (code, index, limit, remaining, window_end): code is a KeyCode
        (index into KEY_FORMAT["reasons"]); index is the key's entry (-1 until the
        secret is proven); the last three describe the key's quota (limit 0: none)
        once it was consulted.
        """
        cdef Py_ssize_t index = -1
        cdef uint32_t limit = 0
        cdef uint64_t remaining = 0, end = 0
        cdef const fg_key_entry* proven = NULL
        cdef int code = self._decide(key, now, path, scopes, any_scopes, ip, &index, &limit,
                                     &remaining, &end, &proven, None, NULL)
        if proven != NULL:
            self._stamp(proven, now, ip)
        return code, index, limit, remaining, end

    def authorize(self, RequestState req not None, bytes lname not None,
                  bytes qname not None, tuple scopes not None, tuple any_scopes,
                  double now, PrincipalCache principals not None, /):
        """``check`` for one request as the api_key middleware sees it, in one call.

        The key is found in ``req.headers`` / ``req.query`` as ``extract_api_key`` finds
        it (header ``lname``, parameter ``qname``); ``req.path`` and ``req.client_ip``
        are checked as ``check`` checks them. An accepted key's quota goes into
        ``req``'s RateLimit-* as ``merge_ratelimit`` sets them.

        ``principals`` holds, by entry index, the principals the caller built so far (an
        index absent: not yet). When the key is accepted, is not in a rotation grace
        period and its principal is there, that principal becomes ``req.principal`` and
        the answer is None.

        Otherwise (code, index, limit, reset): code as ``check``'s (OK for an accepted
        key whose principal the caller sets), or KEY_MISSING / KEY_AMBIGUOUS (no key /
        more than one); index as ``check``'s; when the quota was consulted, its limit and
        the seconds to its window's end (at least 0), else 0, 0.
        """
        cdef Py_ssize_t index = -1
        cdef uint32_t limit = 0
        cdef uint64_t remaining = 0, end = 0
        cdef int64_t reset = 0
        cdef int code
        cdef Py_ssize_t count
        cdef PyObject* principal = NULL
        cdef const fg_key_entry* proven = NULL
        key = _find_api_key(req.headers, lname, req.query, qname, &count)
        if count != 1:
            return (FG_KEY_MISSING if count == 0 else FG_KEY_AMBIGUOUS), -1, 0, 0
        code = self._decide(key, now, req.path, scopes, any_scopes, req.client_ip, &index,
                            &limit, &remaining, &end, &proven, principals, &principal)
        if limit != 0:
            reset = <int64_t>end - <int64_t>now
            if reset < 0:
                reset = 0
            if code == FG_KEY_OK:
                merge_ratelimit(req, limit, remaining, reset)
        if code != FG_KEY_OK or proven.sunset_at != 0:
            principal = NULL  # the caller builds the answer (a refusal, or grace headers)
        if proven != NULL:
            self._stamp(proven, now, req.client_ip)
        if principal != NULL:
            req.principal = <object>principal
            return None
        return code, index, limit, reset

    def verify(self, bytes key not None, double now, /):
        """Only the credential: (code, index) after parse, tag, lookup, digest, revoked
        and expiry checks; no usage stamp, no quota."""
        cdef Py_ssize_t index = -1
        cdef int code = self._verify(<const unsigned char*>PyBytes_AS_STRING(key),
                                     PyBytes_GET_SIZE(key), <int64_t>now, &index, None,
                                     NULL)
        return code, index

    def find(self, str key_id not None, /):
        """The entry index of a key id (its 12 base64url characters), or -1."""
        cdef bytes text = key_id.encode("ascii", "replace")
        cdef unsigned char raw[12]
        if self._hdr == NULL or len(text) != 12 or b64url_decode_into(
                <const unsigned char*>PyBytes_AS_STRING(text), 12, raw) != 9:
            return -1
        return <Py_ssize_t>self._lookup(raw) - 1

    def entry(self, Py_ssize_t index, /):
        """A dict describing entry ``index`` (for principals, headers and tools)."""
        cdef const fg_key_entry* e
        cdef const unsigned char* p
        cdef uint32_t k
        cdef uint16_t ln
        cdef const fg_cidr* c
        if self._hdr == NULL or not 0 <= index < self._n:
            raise IndexError(index)
        e = &self._entries[index]
        scopes = []
        p = self._pool + e.scopes_off
        for k in range(e.n_scopes):
            ln = _u16(p)
            scopes.append(PyBytes_FromStringAndSize(<const char*>p + 2, ln).decode())
            p += 2 + ln
        routes = []
        p = self._pool + e.routes_off
        for k in range(e.n_routes):
            ln = _u16(p)
            routes.append(PyBytes_FromStringAndSize(<const char*>p + 2, ln).decode())
            p += 2 + ln
        cidrs = []
        c = <const fg_cidr*>(self._pool + e.cidrs_off)
        for k in range(e.n_cidrs):
            cidrs.append((PyBytes_FromStringAndSize(<const char*>c[k].addr, 16),
                          c[k].prefix))
        return {
            "key_id": b64url_encode(
                PyBytes_FromStringAndSize(<const char*>e.id, FG_KEY_ID_BYTES)).decode(),
            "name": PyBytes_FromStringAndSize(<const char*>self._pool + e.name_off,
                                              e.name_len).decode(),
            "scopes": tuple(scopes),
            "routes": tuple(routes),
            "cidrs": tuple(cidrs),
            "expires_at": e.expires_at,
            "sunset_at": e.sunset_at,
            "deprecated_at": e.deprecated_at,
            "quota_tag": e.quota_tag,
            "quota_limit": e.quota_limit,
            "quota_period": e.quota_period,
            "usage_slot": e.usage_slot,
            "revoked": bool(e.flags & FG_KEYF_REVOKED),
        }


# ---- request helpers -----------------------------------------------------------------

cdef Py_ssize_t _pct_decode(const unsigned char* s, Py_ssize_t n, unsigned char* out,
                            Py_ssize_t cap) noexcept nogil:
    # application/x-www-form-urlencoded: %XX and "+" (space). -1 if longer than cap or a
    # malformed escape.
    cdef Py_ssize_t i = 0, o = 0
    cdef unsigned char hi, lo
    while i < n:
        if o >= cap:
            return -1
        if s[i] == b"%":
            if i + 2 >= n:
                return -1
            hi = _HEXVAL[s[i + 1]]
            lo = _HEXVAL[s[i + 2]]
            if (hi | lo) & 0xF0:
                return -1
            out[o] = (hi << 4) | lo
            i += 3
        elif s[i] == b"+":
            out[o] = b" "
            i += 1
        else:
            out[o] = s[i]
            i += 1
        o += 1
    return o


cdef bint _param_is(const unsigned char* s, Py_ssize_t n, const unsigned char* name,
                    Py_ssize_t ln) noexcept nogil:
    # Is the (possibly percent-encoded) parameter name s[0:n] equal to name?
    cdef unsigned char buf[128]
    cdef Py_ssize_t m
    if n == ln and memcmp(s, name, n) == 0:
        return True
    if n < ln or memchr(s, b"%", n) == NULL:
        return False
    m = _pct_decode(s, n, buf, sizeof(buf))
    return m == ln and memcmp(buf, name, ln) == 0


def keytab_home_region(const unsigned char[::1] entries not None, uint32_t n_buckets, /):
    """(buckets, home region) of a key table built from ``entries`` (whole fg_key_entry
    records, in any order): each entry is placed at the index of the bucket readers find
    its id in (from the id's home, linearly), and that bucket names it (index + 1); the
    other buckets are 0 and the other entries zero. For the table's writer: a million
    keys in a few tens of milliseconds."""
    cdef Py_ssize_t size = sizeof(fg_key_entry)
    cdef Py_ssize_t n = entries.shape[0] // size, i
    cdef uint32_t slot
    cdef uint32_t* out
    cdef unsigned char* region
    if entries.shape[0] % size:
        raise ValueError("entries are not whole entries")
    if <uint64_t>n >= n_buckets:
        raise ValueError("n_buckets must be above the number of entries")
    buckets = PyBytes_FromStringAndSize(NULL, <Py_ssize_t>n_buckets * 4)
    home = PyBytes_FromStringAndSize(NULL, <Py_ssize_t>n_buckets * size)
    out = <uint32_t*>PyBytes_AS_STRING(buckets)
    region = <unsigned char*>PyBytes_AS_STRING(home)
    with nogil:
        memset(out, 0, <size_t>n_buckets * 4)
        memset(region, 0, <size_t>n_buckets * size)
        for i in range(n):
            slot = _home_of(&entries[i * size], n_buckets)
            while out[slot]:
                slot = _next_slot(slot, n_buckets)
            out[slot] = slot + 1
            memcpy(region + <size_t>slot * size, &entries[i * size], size)
    return buckets, home


def extract_api_key(list headers not None, bytes lname not None, bytes query not None,
                    bytes qname not None, /):
    """Find the API key of a request: header ``lname`` (lower-case) in ``headers``
    (a list of (name, value)) and parameter ``qname`` in the raw ``query``.

    Returns (count, value): count 0 (no key), 1 (value is the key, the query form
    percent-decoded) or 2 (more than one: an ambiguous request, value None).
    """
    cdef Py_ssize_t count
    value = _find_api_key(headers, lname, query, qname, &count)
    return count, value


cdef object _find_api_key(list headers, bytes lname, bytes query, bytes qname,
                          Py_ssize_t* found):
    # extract_api_key's search: the key (None unless exactly one) and, in found[0], the
    # count capped at 2.
    cdef Py_ssize_t count = 0, i, start, end, eq, n, m
    cdef const unsigned char* q
    cdef const unsigned char* ln = <const unsigned char*>PyBytes_AS_STRING(lname)
    cdef Py_ssize_t lnn = PyBytes_GET_SIZE(lname)
    cdef const unsigned char* qn = <const unsigned char*>PyBytes_AS_STRING(qname)
    cdef Py_ssize_t qnn = PyBytes_GET_SIZE(qname)
    cdef unsigned char buf[256]
    cdef bytes name
    value = None
    for item in headers:
        name = item[0]
        if PyBytes_GET_SIZE(name) == lnn and _ieq(
                <const unsigned char*>PyBytes_AS_STRING(name), <const char*>ln, lnn):
            count += 1
            value = item[1]
    n = PyBytes_GET_SIZE(query)
    if n and qnn:
        q = <const unsigned char*>PyBytes_AS_STRING(query)
        start = 0
        while start <= n:
            end = start
            while end < n and q[end] != b"&":
                end += 1
            eq = start
            while eq < end and q[eq] != b"=":
                eq += 1
            if end > start and _param_is(q + start, eq - start, qn, qnn):
                count += 1
                if eq < end:
                    m = _pct_decode(q + eq + 1, end - eq - 1, buf, sizeof(buf))
                    # An undecodable or oversized value is kept raw (malformed).
                    value = (PyBytes_FromStringAndSize(<const char*>buf, m) if m >= 0
                             else PyBytes_FromStringAndSize(<const char*>q + eq + 1,
                                                            end - eq - 1))
                else:
                    value = b""
            start = end + 1
    if count > 1:
        found[0] = 2
        return None
    found[0] = count
    return value


def strip_query_param(bytes query not None, bytes name not None, /):
    """``query`` without every ``name`` parameter (matched as extract_api_key does);
    the same object when there is none."""
    cdef Py_ssize_t n = PyBytes_GET_SIZE(query), start = 0, end, eq, o = 0
    cdef const unsigned char* q = <const unsigned char*>PyBytes_AS_STRING(query)
    cdef const unsigned char* nm = <const unsigned char*>PyBytes_AS_STRING(name)
    cdef Py_ssize_t nn = PyBytes_GET_SIZE(name)
    cdef bint found = False
    cdef unsigned char* out
    if n == 0 or nn == 0:
        return query
    result = PyBytes_FromStringAndSize(NULL, n)
    out = <unsigned char*>PyBytes_AS_STRING(result)
    while start <= n:
        end = start
        while end < n and q[end] != b"&":
            end += 1
        eq = start
        while eq < end and q[eq] != b"=":
            eq += 1
        if end > start and _param_is(q + start, eq - start, nm, nn):
            found = True
        elif end > start:
            if o:
                out[o] = b"&"
                o += 1
            memcpy(out + o, q + start, end - start)
            o += end - start
        start = end + 1
    if not found:
        return query
    return result[:o]
