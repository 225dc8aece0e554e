# cython: language_level=3
# The C-level contract of fluxgate._core: what other Cython modules may `cimport`.
# Python sees fluxgate/_core.pyi; the implementation is fluxgate/_core.pyx.
#
# Conventions: every cdef function here takes pointers + lengths, never raises and
# never touches Python objects (noexcept nogil); failure is a -1 return (plus a reason
# code where there are several), which the Python wrappers in _core.pyx turn into
# PathError / B64Error.

from libc.stdint cimport uint64_t


# ---- tunables ------------------------------------------------------------------------

cdef enum:
    # Paths up to this many bytes are normalized in a stack buffer (no heap allocation).
    FG_PATH_STACK_BUF = 2048


# ---- atomics (GCC/Clang __atomic builtins on a shared mapping) -----------------------

cdef extern from *:
    """
    #include <stdint.h>
    /* Memory orders: add is RELAXED (a counter's own value is exact under any
       order and nothing else is published through it); load ACQUIRE, store RELEASE
       and compare-exchange ACQ_REL, so one slot may publish others (a quota window
       id written after its count is reset). */
    static inline uint64_t fg_atomic_add(uint64_t *p, uint64_t d) {
        return __atomic_add_fetch(p, d, __ATOMIC_RELAXED);
    }
    static inline uint64_t fg_atomic_load(uint64_t *p) {
        return __atomic_load_n(p, __ATOMIC_ACQUIRE);
    }
    static inline void fg_atomic_store(uint64_t *p, uint64_t v) {
        __atomic_store_n(p, v, __ATOMIC_RELEASE);
    }
    static inline int fg_atomic_cas(uint64_t *p, uint64_t expected, uint64_t desired) {
        return __atomic_compare_exchange_n(p, &expected, desired, 0,
                                           __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE);
    }
    /* Stand-alone fences, for a seqlock (fluxgate/_introspect.pxi): release orders the
       writer's "being written" mark before the plain stores that follow it; acquire
       orders a reader's plain loads of the data before its second look at the mark
       (H.-J. Boehm, "Can Seqlocks Get Along With Programming Language Memory Models?",
       MSPC 2012). Compiler barriers on x86-64; dmb on arm64. */
    static inline void fg_fence_acquire(void) {
        __atomic_thread_fence(__ATOMIC_ACQUIRE);
    }
    static inline void fg_fence_release(void) {
        __atomic_thread_fence(__ATOMIC_RELEASE);
    }
    """
    uint64_t fg_atomic_add(uint64_t* p, uint64_t d) noexcept nogil
    uint64_t fg_atomic_load(uint64_t* p) noexcept nogil
    void fg_atomic_store(uint64_t* p, uint64_t v) noexcept nogil
    bint fg_atomic_cas(uint64_t* p, uint64_t expected, uint64_t desired) noexcept nogil
    void fg_fence_acquire() noexcept nogil
    void fg_fence_release() noexcept nogil


# ---- request paths (rules in the _core.pyx docstring) -----------------------------

cdef enum PathReason:
    # Index into _core._PATH_REASONS (the PathError message). 0 means success.
    FG_PATH_OK = 0
    FG_PATH_EMPTY
    FG_PATH_NOT_ABSOLUTE
    FG_PATH_BAD_BYTE            # < 0x21, 0x7F, >= 0x80
    FG_PATH_BACKSLASH
    FG_PATH_FRAGMENT
    FG_PATH_BAD_ESCAPE          # '%' not followed by two hex digits
    FG_PATH_ENCODED_SLASH       # %2F
    FG_PATH_ENCODED_BACKSLASH   # %5C
    FG_PATH_ENCODED_CONTROL     # %00-%1F, %7F
    FG_PATH_ENCODED_DOT_SEGMENT  # '.' or '..' segment spelled with %2E
    FG_PATH_DOT_PARAMS          # '.;…' or '..;…' segment (servlet path parameters)
    FG_PATH_ABOVE_ROOT          # '..' with nothing left to remove
    FG_PATH_DOUBLE_ENCODED      # %25 then the escape of '.', '/', '\\', '%' or a control

# Writes the normalized form of src[0:n] into dst (capacity >= n: the output is never
# longer) and returns its length; on error returns -1 and sets reason[0] (PathReason).
cdef Py_ssize_t normalize_path_into(const unsigned char* src, Py_ssize_t n,
                                    unsigned char* dst, int* reason) noexcept nogil


# ---- base64url (RFC 4648 §5, no padding, canonical) ---------------------------------

# Decoded size of n encoded characters, or -1 when n % 4 == 1 (never a valid length).
cdef inline Py_ssize_t b64url_decoded_len(Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t rem = n & 3
    if rem == 1:
        return -1
    return (n >> 2) * 3 + (rem - 1 if rem else 0)

# Encoded size (no padding) of n bytes.
cdef inline Py_ssize_t b64url_encoded_len(Py_ssize_t n) noexcept nogil:
    return (n // 3) * 4 + (n % 3 + 1 if n % 3 else 0)

# Decodes src[0:n] into dst (capacity >= b64url_decoded_len(n)); returns the number of
# bytes written, or -1 on a character outside the URL alphabet, a bad length, or
# non-zero unused trailing bits. dst may hold partial output after a failure.
cdef Py_ssize_t b64url_decode_into(const unsigned char* src, Py_ssize_t n,
                                   unsigned char* dst) noexcept nogil

# Encodes src[0:n] into dst (capacity >= b64url_encoded_len(n)); returns the length.
cdef Py_ssize_t b64url_encode_into(const unsigned char* src, Py_ssize_t n,
                                   unsigned char* dst) noexcept nogil


# ---- shared counters (uint64 slots in a writable buffer, e.g. a MAP_SHARED mmap) -----

cdef class Counters:
    cdef Py_buffer _view        # held until release()/dealloc: pins the mapping
    cdef uint64_t* _slots       # NULL after release()
    cdef Py_ssize_t _nslots     # 0 after release(), so every bounds check fails

# Unchecked fast path for Cython callers: the caller guarantees 0 <= slot < c._nslots.
cdef inline uint64_t counters_add(Counters c, Py_ssize_t slot,
                                  uint64_t delta) noexcept nogil:
    return fg_atomic_add(&c._slots[slot], delta)

cdef inline uint64_t counters_load(Counters c, Py_ssize_t slot) noexcept nogil:
    return fg_atomic_load(&c._slots[slot])

# The metrics table's per-request update (fluxgate/metrics.py): one call per request.
cdef class RequestRecorder:
    cdef Counters _counters
    cdef Py_ssize_t _header, _block, _capacity, _buckets_offset, _sum_offset
    cdef int _status_min, _status_max, _nbounds
    cdef double _bounds[32]
    cpdef record(self, Py_ssize_t route_slot, int status, double seconds)


# ---- JWT verification (fluxgate/_jwt.pxi; RFC 7515, 7518, 7519, 8037) ---------------

cdef enum:
    # Default and ceiling of a token's size in bytes (the whole compact serialization).
    FG_JWT_MAX_TOKEN = 8192
    FG_JWT_MAX_TOKEN_CEILING = 65536
    # A `kid` longer than this, or with bytes outside 0x21-0x7E, is malformed.
    FG_JWT_MAX_KID = 256
    # Verified tokens cached per verifier, unless configured (0 disables the cache).
    FG_JWT_CACHE_SIZE = 16384
    # A cached token without `exp` (require_exp off) is verified again after this (s).
    FG_JWT_CACHE_NO_EXP_TTL = 300

# One bit per JWS `alg` (RFC 7518 §3.1, RFC 8037 §3.1); a verifier's allowlist and a
# key's usable algorithms are masks of these.
cdef enum JwtAlg:
    FG_JWT_RS256 = 1 << 0
    FG_JWT_RS384 = 1 << 1
    FG_JWT_RS512 = 1 << 2
    FG_JWT_PS256 = 1 << 3
    FG_JWT_PS384 = 1 << 4
    FG_JWT_PS512 = 1 << 5
    FG_JWT_ES256 = 1 << 6
    FG_JWT_ES384 = 1 << 7
    FG_JWT_EDDSA = 1 << 8
    FG_JWT_HS256 = 1 << 9
    FG_JWT_HS384 = 1 << 10
    FG_JWT_HS512 = 1 << 11
    FG_JWT_HMAC_ALGS = FG_JWT_HS256 | FG_JWT_HS384 | FG_JWT_HS512

cdef enum:
    FG_JWT_N_ASYMMETRIC = 9     # JwtAlg bits 0-8 take a public key, 9-11 a secret

# Why a token was refused: index into _core._JWT_REASONS, the stable codes of
# TokenError.reason (logs, metrics). 0 means success.
cdef enum JwtReason:
    FG_JWT_OK = 0
    FG_JWT_MALFORMED             # not 3 base64url parts of JSON objects; bad member
    FG_JWT_TOO_LARGE             # longer than max_token_bytes
    FG_JWT_ALG_NOT_ALLOWED       # `alg` not in the allowlist ("none" never is)
    FG_JWT_CRIT_UNSUPPORTED      # `crit` present: no extension is understood (§4.1.11)
    FG_JWT_UNKNOWN_KID           # no key with this `kid` (the caller may ask a refresh)
    FG_JWT_KEY_ALG_MISMATCH      # the key exists but is not usable with this `alg`
    FG_JWT_NO_KEYS               # no key set at all (JWKS never fetched, or expired)
    FG_JWT_BAD_SIGNATURE
    FG_JWT_EXPIRED               # now >= exp + leeway (RFC 7519 §4.1.4)
    FG_JWT_NOT_YET_VALID         # now < nbf - leeway (§4.1.5)
    FG_JWT_ISSUED_IN_FUTURE      # now < iat - leeway (§4.1.6)
    FG_JWT_MISSING_CLAIM         # `exp` absent while required
    FG_JWT_INVALID_CLAIM         # a registered claim of the wrong type or out of range
    FG_JWT_WRONG_ISSUER          # `iss` is not exactly the configured issuer (§4.1.1)
    FG_JWT_WRONG_AUDIENCE        # no configured audience in `aud` (§4.1.3)

# Python-facing classes (fluxgate/_core.pyi): JwtKey (one prepared public key),
# JwtKeySet (one JWKS generation), JwtVerifier (one jwt middleware config: allowlist,
# claims rules, verified-token cache). They are private to _core at the C level.


# ---- API keys and quota counters (fluxgate/_keys.pxi) ---------

cdef enum:
    # Key text: "fg_" + base64url(id || secret || tag), 3 + 60 bytes. Each part is a
    # whole number of base64 quanta, so the id's 12 characters are text[3:15].
    FG_KEY_ID_BYTES = 9
    FG_KEY_SECRET_BYTES = 24
    FG_KEY_TAG_BYTES = 12      # truncated HMAC-SHA256 (96 bits), checked before lookup
    FG_KEY_RAW_BYTES = 45      # id + secret + tag
    FG_KEY_TEXT_LEN = 63
    FG_KEY_DIGEST_BYTES = 32   # the full HMAC-SHA256: the only form stored
    # last-used stamps: a key's usage slot is rewritten at most once per this many ms.
    FG_KEY_STAMP_MS = 1000
    # Quota table: buckets probed from a tag's home bucket before the table counts as
    # full, and how long past its window's end a bucket must be before another tag may
    # take it.
    FG_QUOTA_MAX_PROBE = 32
    FG_QUOTA_RECLAIM_AFTER = 2
    # Spins on a bucket that another process is re-assigning, before giving up on it; a
    # reservation older than this many seconds was abandoned (its taker died).
    FG_QUOTA_RESERVED_SPINS = 4096
    FG_QUOTA_RESERVED_TIMEOUT = 60

# The outcome of KeyTable.check and .authorize: index into _core._KEY_REASONS (stable codes
# of InvalidKey.reason and of the auth-failure metrics). 0 means the request may pass.
cdef enum KeyCode:
    FG_KEY_OK = 0
    FG_KEY_MALFORMED        # not "fg_" + 60 base64url characters
    FG_KEY_BAD_TAG          # the HMAC tag does not match: forged or mistyped
    FG_KEY_UNKNOWN          # signed, but no such id in the table (deleted)
    FG_KEY_BAD_SECRET       # the id exists but the secret's digest differs
    FG_KEY_REVOKED
    FG_KEY_EXPIRED          # past its expiry, or its rotation grace period has ended
    FG_KEY_ROUTE_DENIED     # the key is limited to other paths (--route)
    FG_KEY_SCOPE_DENIED     # a scope the route requires is missing
    FG_KEY_IP_DENIED        # the client address is outside the key's allowlist
    FG_KEY_QUOTA_EXCEEDED   # the key's quota for this window is used up
    FG_KEY_QUOTA_FULL       # no quota bucket could be found or taken (fails closed)
    FG_KEY_MISSING          # KeyTable.authorize: the request carries no key
    FG_KEY_AMBIGUOUS        # KeyTable.authorize: it carries more than one

# The outcome of QuotaCounters consumption.
cdef enum QuotaCode:
    FG_QUOTA_OK = 0
    FG_QUOTA_EXCEEDED
    FG_QUOTA_FULL

# Python-facing classes (fluxgate/_core.pyi): KeyTable (one generation of the shared
# key table; file layout in fluxgate/auth/keytable.py) and QuotaCounters (the quota
# buckets of fluxgate/auth/quotas.py). They are private to _core at the C level.


# ---- token-introspection results (fluxgate/_introspect.pxi; RFC 7662) ---------------

cdef enum:
    # Slots per bucket: a digest lives in one of the FG_INTRO_WAYS slots of its bucket.
    FG_INTRO_WAYS = 8
    FG_INTRO_DIGEST_BYTES = 32
    # Slot sizes: a multiple of 64, so that slots stay cache-line aligned (the file
    # header and a slot's fixed fields are 64 bytes each; the payload follows them),
    # 1024 unless configured, at least one line of payload, at most 64 KiB.
    FG_INTRO_SLOT_DEFAULT = 1024
    FG_INTRO_SLOT_MIN = 128
    FG_INTRO_SLOT_MAX = 65536
    # At most this many buckets (a file stays below 2**48 bytes).
    FG_INTRO_MAX_BUCKETS = 1 << 28
    # A reader that finds a slot being written (or changed under it) looks again this
    # many times, then treats it as a miss.
    FG_INTRO_READ_TRIES = 64
    # flags bit 0: an active (positive) result; clear: an ``active: false`` one.
    FG_INTRO_ACTIVE = 1

# SHA-256 (FIPS 180-4) of src[0:n] into out[0:32]; 0, or -1 if libcrypto failed.
cdef int sha256_into(const unsigned char* src, Py_ssize_t n,
                     unsigned char* out) noexcept nogil

# Python-facing class (fluxgate/_core.pyi): IntrospectionCache, one view of the shared
# result table. It is private to _core at the C level.


# ---- the data plane's per-request objects (fluxgate/_http.pxi, _resphead.pxi) ---------
#
# Declared here so fluxgate._proxy (the compiled client connection, exchange and
# upstream connection) reads and writes their fields at C level, as _core does.
# Python reaches the same fields through member descriptors (_as_member_fields).

cdef class RequestState:
    cdef public object started           # float: perf_counter() at the first byte
    cdef public object method            # bytes
    cdef public object http_minor        # int: 0 or 1
    cdef public object keep_alive        # bool
    cdef public object upgrade           # bytes | None: b"websocket" once accepted
    cdef public object reparse           # bool: a declined Upgrade (h2c), parse on
    cdef public object chunked           # bool
    cdef public object content_length    # int (llhttp may report up to 2**64 - 1)
    cdef public object has_body          # bool
    cdef public object body_bytes        # int
    cdef public object message_complete  # bool
    cdef public object response_done     # bool
    cdef public object exchange          # Exchange | None
    cdef public object close_after       # bool
    cdef public object status            # int
    cdef public object request_id        # bytes
    cdef public object route             # CompiledRoute | None
    cdef public object path              # bytes
    cdef public object query             # bytes
    cdef public object client_ip         # str
    cdef public object peer_trusted      # bool
    cdef public object principal         # Principal | None
    cdef public object refusal           # str | None: a local refusal's reason code (access log)
    cdef public object expect_continue   # bool
    cdef public object host              # bytes | None
    cdef public object forwarded_for     # bytes | None
    cdef public object forwarded_proto   # bytes | None
    cdef public object client_request_id  # bytes | None
    cdef public object connection        # bytes | None: Connection values, joined
    cdef public object hosts             # int
    cdef public object transfer_encoding  # bytes | None
    cdef public object upgrade_token     # bytes | None
    cdef public object finished          # bool
    cdef public object url               # bytes
    cdef public object header_bytes      # int
    cdef public object headers           # list[(name, value)] as the client sent them
    # The (name, value) pairs of `headers` that go upstream as written (same tuples).
    cdef public object forward_headers
    cdef public object body_buffer       # list[bytes]
    cdef public object response_headers  # list[(name, value)] added to the response
    # RateLimit-* of the strictest quota the request consulted, as integers (rl_limit 0:
    # none): written into the response head as digits, so a quota route allocates no
    # header objects for them. Set through merge_ratelimit, read through ratelimit_headers().
    cdef uint64_t rl_limit
    cdef uint64_t rl_remaining
    cdef uint64_t rl_reset


cdef class ResponseHead:
    # A complete upstream response taken by parse_response_head (read-only in Python).
    cdef public object status            # int
    cdef public object lines             # bytes: forwardable header lines, b"Name: value\r\n"...
    cdef public object content_length    # bytes | None: the Content-Length digits
    cdef public object keep_alive        # bool
    cdef public object body_start        # int
    cdef public object body_length       # int


cdef class RequestIds:
    cdef bytes _prefix
    cdef unsigned long long _counter
    # A client's X-Request-Id when acceptable, else a new id (see _http.pxi).
    cpdef bytes take(self, client_value)


cdef class PrefixTable:
    cdef dict _table
    cdef object _root
    cdef Py_ssize_t _longest
    # The value of the longest matching prefix of a normalized path, else the root's.
    cpdef match(self, bytes path)


# The data plane's parsers and head builders for Cython callers: the def functions of the
# same names without _c (their docstrings say what they do) check their arguments and
# call these. Unlike the functions above they take and return Python objects and raise
# as the def functions do; arguments are never None unless said.

# A RequestState for one complete, simple request, or None (_reqhead.pxi).
cdef RequestState parse_request_head_c(bytes data, dict kinds, dict special,
                                       Py_ssize_t max_header_bytes,
                                       Py_ssize_t max_body_bytes, double started,
                                       Py_ssize_t max_header_count,
                                       bint allow_underscores)

# A ResponseHead for a complete, simple response, or None (_resphead.pxi).
cdef ResponseHead parse_response_head_c(bytes data, bint head_request)

# The request head sent upstream; `drop` may be None or empty (_http.pxi).
cdef bytes upstream_head_c(RequestState req, drop, Py_ssize_t strip, bytes peer,
                           bytes api_key_query)

# The response head for the client, maybe with data[body_start:][:body_length] after it;
# content_length and data may be None (_http.pxi).
cdef bytes response_head_c(bytes status_line, bytes lines, RequestState req, list extra,
                           content_length, bint chunked, bint close, bytes data,
                           Py_ssize_t body_start, Py_ssize_t body_length)
