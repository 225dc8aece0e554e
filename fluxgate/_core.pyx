# cython: language_level=3
"""FluxGate hot path: the C-level work done on every request.

Contract for Cython callers: ``_core.pxd``; for Python: ``_core.pyi``. Bytes and ints
in, small values out; no I/O, asyncio or logging here. Errors are defined in
``fluxgate.errors`` and raised by the thin Python wrappers; the C functions return -1
and a reason code.

Request paths -- ``normalize_path(raw)``
----------------------------------------------------
Input is the request-target path, already split at the first ``?``. The result is what
routes are matched on and what the upstream receives. ``PathError`` (400 bad_request)
is raised for:

* empty input, or a first byte other than ``/`` (origin-form, RFC 9112 §3.2.1);
* a raw byte < 0x21 (controls, space), 0x7F or >= 0x80 (UTF-8 must arrive
  percent-encoded), a raw ``\\`` or ``#``. Other printable ASCII passes unchanged;
* ``%`` not followed by two hex digits (``%``, ``%4``, ``%G1``);
* encoded forms that would change the route if a later hop decoded them: ``%2F``
  (``/``), ``%5C`` (``\\``), ``%00``-``%1F`` and ``%7F`` (controls), in either case;
* an *encoded dot segment*: a segment that decodes to exactly ``.`` or ``..`` and
  spells at least one of its dots as ``%2E``/``%2e``: ``%2e``, ``%2E%2E``, ``.%2e``,
  ``%2e.``. Dots inside a longer segment are plain name characters and are decoded:
  ``/%2e.txt`` -> ``/..txt``, ``/a%2Eb`` -> ``/a.b``, ``/%2e%2e%2e`` -> ``/...``;
* a dot segment with servlet path parameters, ``.;…`` or ``..;…`` (a literal ``;``):
  Tomcat and Jetty upstreams resolve ``/a/..;/b`` to ``/b``;
* a ``..`` segment with no segment left to remove (above the root; never clamped);
* a double encoding of a character refused or decoded above: ``%25`` (``%``) followed
  by the hex of ``.``, ``/``, ``\\``, ``%`` or a control, in either case, whether those
  two digits are written plainly or themselves encoded (``%252e``, ``%252F``,
  ``%255c``, ``%2500``, ``%2525``, ``%25%32%65``): an upstream that decodes twice would
  see ``..``, a separator or a control the gateway never routed on. Checked on the
  decoded segment, so the rule is the same for the input and for its normal form.

Otherwise, in one pass (RFC 3986 §6.2.2):

* ``%XX`` of an unreserved character (ALPHA / DIGIT / ``-`` ``.`` ``_`` ``~``, §2.3)
  is decoded (§6.2.2.2); any other ``%XX`` is kept with upper-case hex (§6.2.2.1):
  ``%3a`` -> ``%3A``, ``%c3%a9`` -> ``%C3%A9``;
* empty segments are dropped first (``//`` -> ``/``), then ``.`` and ``..`` segments
  are removed as in §5.2.4 (so ``/a//../b`` -> ``/b``);
* a trailing slash is kept, and a final dot segment leaves one: ``/a/`` -> ``/a/``,
  ``/a/.`` -> ``/a/``, ``/a/b/..`` -> ``/a/``, ``/a/..`` -> ``/``.

The result is idempotent; when nothing changes, the input object itself is returned.

base64url -- RFC 4648 §5
------------------------
Strict and canonical: only ``A-Z a-z 0-9 - _``; no ``=`` padding, whitespace, ``+`` or
``/``; a length with ``n % 4 == 1`` is refused, and so are non-zero unused bits in the
last character (RFC 4648 §3.5: ``QQ`` is ``b"A"``, ``QR`` is refused). Errors raise
``B64Error``.

Counters
--------
``Counters(buffer)`` views a writable, 8-byte aligned buffer (a ``MAP_SHARED`` mmap)
as native-endian uint64 slots updated with ``__atomic`` builtins, so forked workers
share exact counts. The buffer export is held until ``release()``: the mapping cannot
be closed or resized under it. Memory orders are documented in ``_core.pxd``.
"""

from cpython.buffer cimport PyBUF_WRITABLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.bytes cimport (
    PyBytes_AS_STRING,
    PyBytes_FromStringAndSize,
    PyBytes_GET_SIZE,
)
from cpython.mem cimport PyMem_Free, PyMem_Malloc
from libc.stdint cimport int64_t, uint32_t, uint64_t, uintptr_t
from libc.string cimport memcmp

from fluxgate.errors import B64Error, PathError

__all__ = (
    "RequestIds",
    "RequestState",
    "PrefixTable",
    "response_head",
    "merge_ratelimit",
    "upstream_head",
    "ResponseHead",
    "B64Error",
    "Counters",
    "RequestRecorder",
    "JwtKey",
    "JwtKeySet",
    "JwtPrincipals",
    "JwtVerifier",
    "Principal",
    "PathError",
    "TokenError",
    "b64url_decode",
    "b64url_encode",
    "bearer_token",
    "gc_untrack",
    "jwt_alg_mask",
    "jwt_alg_names",
    "normalize_path",
    "parse_response_head",
    "response_header_kind",
    "parse_request_head",
    "classify_header",
    "valid_host",
    "ChunkedBody",
)


# ---- lookup tables, filled once at import --------------------------------------------

cdef enum:
    # Classes in _PCHAR / _PCT_CLASS beyond the PathReason codes (all reasons are < 32).
    _COPY = 0       # _PCHAR: copy the byte;  _PCT_CLASS: keep "%XX", upper-cased
    _DECODE = 0xFE  # _PCT_CLASS: decode to the literal (unreserved) character
    _PCT = 0xFF     # _PCHAR: start of a percent-escape
    _B64_BAD = 0xFF  # _B64_DEC: not in the URL alphabet (any of the top two bits set)

cdef unsigned char _PCHAR[256]       # raw byte -> _COPY / _PCT / PathReason
cdef unsigned char _PCT_CLASS[256]   # decoded %XX value -> _COPY / _DECODE / PathReason
cdef unsigned char _HEXVAL[256]      # hex digit -> 0..15, else 0xFF
cdef unsigned char _B64_DEC[256]     # URL alphabet -> 0..63, else _B64_BAD
cdef const unsigned char* _HEX = b"0123456789ABCDEF"
cdef const unsigned char* _B64_ENC = (
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
)

cdef tuple _PATH_REASONS = (
    "ok",
    "empty path",
    "path must start with '/'",
    "control, space or non-ASCII byte in path",
    "backslash in path",
    "'#' in path",
    "invalid percent-escape",
    "encoded '/' (%2F) in path",
    "encoded '\\' (%5C) in path",
    "encoded control character in path",
    "dot segment spelled with %2E",
    "dot segment with ';' parameters",
    "'..' climbs above the root",
    "double-encoded '.', '/', '\\', '%' or control (%25XX) in path",
)


cdef int _init_tables() except -1:
    cdef int c
    cdef bytes unreserved = (
        b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~"
    )
    for c in range(256):
        _HEXVAL[c] = 0xFF
        _B64_DEC[c] = _B64_BAD
        _PCT_CLASS[c] = _COPY
        if c < 0x21 or c >= 0x7F:
            _PCHAR[c] = FG_PATH_BAD_BYTE
        else:
            _PCHAR[c] = _COPY
        if c < 0x20 or c == 0x7F:
            _PCT_CLASS[c] = FG_PATH_ENCODED_CONTROL
    _PCHAR[ord("%")] = _PCT
    _PCHAR[ord("\\")] = FG_PATH_BACKSLASH
    _PCHAR[ord("#")] = FG_PATH_FRAGMENT
    # "/" never reaches _PCHAR: the segment loop stops on it.
    for c in unreserved:
        _PCT_CLASS[c] = _DECODE
    _PCT_CLASS[ord("/")] = FG_PATH_ENCODED_SLASH
    _PCT_CLASS[ord("\\")] = FG_PATH_ENCODED_BACKSLASH
    for c in range(16):
        _HEXVAL[_HEX[c]] = c
        if c >= 10:
            _HEXVAL[_HEX[c] | 0x20] = c  # lower-case a-f
    for c in range(64):
        _B64_DEC[_B64_ENC[c]] = c
    return 0


_init_tables()


# ---- request paths -------------------------------------------------------------------

cdef inline bint _double_encoded(const unsigned char* s, Py_ssize_t n) noexcept nogil:
    # s[0:n] is one decoded segment: does a "%25" in it precede the two hex digits of
    # '.', '/', '\\', '%' or a control? (A second decoding would produce that byte.)
    cdef Py_ssize_t j
    cdef unsigned char hi, lo, c
    for j in range(n - 4):
        if s[j] != b"%" or s[j + 1] != b"2" or s[j + 2] != b"5":
            continue
        hi = _HEXVAL[s[j + 3]]
        lo = _HEXVAL[s[j + 4]]
        if (hi | lo) & 0xF0:
            continue
        c = (hi << 4) | lo
        if c == b"." or c == b"/" or c == b"\\" or c == b"%" or c < 0x20 or c == 0x7F:
            return True
    return False


cdef Py_ssize_t normalize_path_into(const unsigned char* src, Py_ssize_t n,
                                    unsigned char* dst, int* reason) noexcept nogil:
    # Invariant: dst[0:o] is "/" then finished "segment/" groups, and o <= i, so dst
    # never needs more than n bytes.
    cdef Py_ssize_t i = 1, o = 1, seg, seglen
    cdef unsigned char c, k, hi, lo
    cdef bint encoded_dot, encoded_percent

    if n == 0:
        reason[0] = FG_PATH_EMPTY
        return -1
    if src[0] != b"/":
        reason[0] = FG_PATH_NOT_ABSOLUTE
        return -1
    dst[0] = b"/"

    while i < n:
        # Copy one segment, up to the next "/" or the end, decoding as we go.
        seg = o
        encoded_dot = False
        encoded_percent = False
        while i < n:
            c = src[i]
            if c == b"/":
                break
            k = _PCHAR[c]
            if k == _COPY:
                dst[o] = c
                o += 1
                i += 1
                continue
            if k != _PCT:
                reason[0] = k
                return -1
            if i + 2 >= n:
                reason[0] = FG_PATH_BAD_ESCAPE
                return -1
            hi = _HEXVAL[src[i + 1]]
            lo = _HEXVAL[src[i + 2]]
            if (hi | lo) & 0xF0:
                reason[0] = FG_PATH_BAD_ESCAPE
                return -1
            c = (hi << 4) | lo
            k = _PCT_CLASS[c]
            if k == _DECODE:
                dst[o] = c
                o += 1
                if c == b".":
                    encoded_dot = True
            elif k == _COPY:
                dst[o] = b"%"
                dst[o + 1] = _HEX[hi]
                dst[o + 2] = _HEX[lo]
                o += 3
                if c == b"%":
                    encoded_percent = True
            else:
                reason[0] = k
                return -1
            i += 3

        # Here i == n, or src[i] is the "/" that ends the segment.
        if encoded_percent and _double_encoded(dst + seg, o - seg):
            reason[0] = FG_PATH_DOUBLE_ENCODED
            return -1
        seglen = o - seg
        if seglen == 0:
            # "//" collapses; a trailing "/" is already in dst.
            i += 1
            continue
        if dst[seg] == b".":
            if seglen == 1 or (seglen == 2 and dst[seg + 1] == b"."):
                if encoded_dot:
                    reason[0] = FG_PATH_ENCODED_DOT_SEGMENT
                    return -1
                if seglen == 1:
                    o = seg
                elif seg == 1:
                    reason[0] = FG_PATH_ABOVE_ROOT
                    return -1
                else:
                    # RFC 3986 §5.2.4 2C: drop the last segment, keep its "/".
                    o = seg - 1
                    while dst[o - 1] != b"/":
                        o -= 1
                i += 1
                continue
            if dst[seg + 1] == b";" or (
                    seglen > 2 and dst[seg + 1] == b"." and dst[seg + 2] == b";"):
                reason[0] = FG_PATH_DOT_PARAMS
                return -1
        if i < n:
            dst[o] = b"/"
            o += 1
            i += 1
    return o


def normalize_path(bytes raw not None, /):
    """Normalize a request path for route matching; PathError if ambiguous."""
    cdef Py_ssize_t n = PyBytes_GET_SIZE(raw)
    cdef const unsigned char* src = <const unsigned char*>PyBytes_AS_STRING(raw)
    cdef unsigned char stack_buf[FG_PATH_STACK_BUF]
    cdef unsigned char* buf = stack_buf
    cdef Py_ssize_t m
    cdef int reason = FG_PATH_OK

    if n > FG_PATH_STACK_BUF:
        buf = <unsigned char*>PyMem_Malloc(n)
        if buf == NULL:
            raise MemoryError()
    try:
        m = normalize_path_into(src, n, buf, &reason)
        if m < 0:
            raise PathError(_PATH_REASONS[reason])
        if m == n and memcmp(buf, src, n) == 0:
            return raw
        return PyBytes_FromStringAndSize(<char*>buf, m)
    finally:
        if buf != stack_buf:
            PyMem_Free(buf)


# ---- base64url -----------------------------------------------------------------------

cdef extern from *:
    """
    #if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
    #include <tmmintrin.h>
    /* 16 base64url characters to 12 bytes a step, with the SSSE3 byte shuffle (the method
       of W. Mula and D. Lemire, "Faster Base64 Encoding and Decoding Using AVX2
       Instructions", ACM TWEB 2018, adapted to the URL alphabet). Stops before the
       first block holding a byte outside the alphabet and returns the characters it
       decoded (a multiple of 16); the scalar loop after it decides that block. Checked
       once at import (fg_b64url_init): SSSE3 is not part of x86-64 itself. */
    static int fg_have_ssse3 = 0;

    static void fg_b64url_init(void) {
        fg_have_ssse3 = __builtin_cpu_supports("ssse3") ? 1 : 0;
    }

    __attribute__((target("ssse3")))
    static Py_ssize_t fg_b64url_decode16_ssse3(const unsigned char *src, Py_ssize_t n,
                                               unsigned char *dst) {
        /* By high nibble, one class bit; by low nibble, the classes it is invalid in:
           2x: only '-' (0x2D); 3x: '0'-'9'; 4x, 6x: not 0x40/0x60; 5x: 'P'-'Z' and '_';
           7x: 'p'-'z'; 0x, 1x, 8x-Fx: nothing. */
        const __m128i lut_hi = _mm_setr_epi8(0x20, 0x20, 0x01, 0x02, 0x04, 0x08, 0x04, 0x10,
                                             0x20, 0x20, 0x20, 0x20, 0x20, 0x20, 0x20, 0x20);
        const __m128i lut_lo = _mm_setr_epi8(0x25, 0x21, 0x21, 0x21, 0x21, 0x21, 0x21, 0x21,
                                             0x21, 0x21, 0x23, 0x3B, 0x3B, 0x3A, 0x3B, 0x33);
        /* value = byte + offset[high nibble]; '_' (0x5F) is fixed up on its own. */
        const __m128i offsets = _mm_setr_epi8(0, 0, 62 - 0x2D, 52 - 0x30, -0x41, -0x41,
                                              26 - 0x61, 26 - 0x61, 0, 0, 0, 0, 0, 0, 0, 0);
        const __m128i underscore = _mm_set1_epi8(0x5F);
        const __m128i underscore_fix = _mm_set1_epi8(63 - 0x5F + 0x41);
        const __m128i nibble = _mm_set1_epi8(0x0F);
        const __m128i pack_pairs = _mm_set1_epi32(0x01400140);
        const __m128i pack_quads = _mm_set1_epi32(0x00011000);
        const __m128i order = _mm_setr_epi8(2, 1, 0, 6, 5, 4, 10, 9, 8, 14, 13, 12,
                                            -1, -1, -1, -1);
        Py_ssize_t i = 0;
        while (i + 16 <= n) {
            __m128i x = _mm_loadu_si128((const __m128i *)(src + i));
            __m128i hi = _mm_and_si128(_mm_srli_epi32(x, 4), nibble);
            __m128i lo = _mm_and_si128(x, nibble);
            __m128i bad = _mm_and_si128(_mm_shuffle_epi8(lut_lo, lo),
                                        _mm_shuffle_epi8(lut_hi, hi));
            if (_mm_movemask_epi8(_mm_cmpgt_epi8(bad, _mm_setzero_si128())))
                break;
            __m128i fix = _mm_and_si128(_mm_cmpeq_epi8(x, underscore), underscore_fix);
            __m128i v = _mm_add_epi8(x, _mm_add_epi8(_mm_shuffle_epi8(offsets, hi), fix));
            v = _mm_maddubs_epi16(v, pack_pairs);       /* a*64 + b per 16 bits */
            v = _mm_madd_epi16(v, pack_quads);          /* 24 bits per 32 */
            v = _mm_shuffle_epi8(v, order);             /* 12 bytes, big-endian */
            _mm_storel_epi64((__m128i *)dst, v);
            int tail = _mm_cvtsi128_si32(_mm_srli_si128(v, 8));
            memcpy(dst + 8, &tail, 4);
            i += 16;
            dst += 12;
        }
        return i;
    }

    static inline Py_ssize_t fg_b64url_decode16(const unsigned char *src, Py_ssize_t n,
                                                unsigned char *dst) {
        return fg_have_ssse3 ? fg_b64url_decode16_ssse3(src, n, dst) : 0;
    }
    #else
    static void fg_b64url_init(void) {}

    static inline Py_ssize_t fg_b64url_decode16(const unsigned char *src, Py_ssize_t n,
                                                unsigned char *dst) {
        (void)src; (void)n; (void)dst;
        return 0;
    }
    #endif
    """
    void fg_b64url_init() noexcept nogil
    Py_ssize_t fg_b64url_decode16(const unsigned char* src, Py_ssize_t n,
                                  unsigned char* dst) noexcept nogil


fg_b64url_init()


cdef Py_ssize_t b64url_decode_into(const unsigned char* src, Py_ssize_t n,
                                   unsigned char* dst) noexcept nogil:
    cdef Py_ssize_t quads, rem = n & 3, _q, done
    cdef uint32_t a, b, c, d, v
    cdef unsigned char* out

    if rem == 1:
        return -1
    done = fg_b64url_decode16(src, n - rem, dst)
    src += done
    out = dst + done // 4 * 3
    quads = (n - rem - done) >> 2
    for _q in range(quads):
        a = _B64_DEC[src[0]]
        b = _B64_DEC[src[1]]
        c = _B64_DEC[src[2]]
        d = _B64_DEC[src[3]]
        if (a | b | c | d) & 0xC0:
            return -1
        v = (a << 18) | (b << 12) | (c << 6) | d
        out[0] = <unsigned char>(v >> 16)
        out[1] = <unsigned char>(v >> 8)
        out[2] = <unsigned char>v
        src += 4
        out += 3
    if rem == 2:
        a = _B64_DEC[src[0]]
        b = _B64_DEC[src[1]]
        # RFC 4648 §3.5: the last character's 4 unused bits must be zero.
        if (a | b) & 0xC0 or b & 0x0F:
            return -1
        out[0] = <unsigned char>((a << 2) | (b >> 4))
        out += 1
    elif rem == 3:
        a = _B64_DEC[src[0]]
        b = _B64_DEC[src[1]]
        c = _B64_DEC[src[2]]
        if (a | b | c) & 0xC0 or c & 0x03:
            return -1
        out[0] = <unsigned char>((a << 2) | (b >> 4))
        out[1] = <unsigned char>((b << 4) | (c >> 2))
        out += 2
    return out - dst


cdef Py_ssize_t b64url_encode_into(const unsigned char* src, Py_ssize_t n,
                                   unsigned char* dst) noexcept nogil:
    cdef Py_ssize_t rest = n % 3, _t
    cdef uint32_t v
    cdef unsigned char* out = dst

    for _t in range(n // 3):
        v = (<uint32_t>src[0] << 16) | (<uint32_t>src[1] << 8) | src[2]
        out[0] = _B64_ENC[v >> 18]
        out[1] = _B64_ENC[(v >> 12) & 63]
        out[2] = _B64_ENC[(v >> 6) & 63]
        out[3] = _B64_ENC[v & 63]
        src += 3
        out += 4
    if rest == 1:
        v = <uint32_t>src[0] << 16
        out[0] = _B64_ENC[v >> 18]
        out[1] = _B64_ENC[(v >> 12) & 63]
        out += 2
    elif rest == 2:
        v = (<uint32_t>src[0] << 16) | (<uint32_t>src[1] << 8)
        out[0] = _B64_ENC[v >> 18]
        out[1] = _B64_ENC[(v >> 12) & 63]
        out[2] = _B64_ENC[(v >> 6) & 63]
        out += 3
    return out - dst


cdef str _b64_reason(const unsigned char* src, Py_ssize_t n):
    # Cold path: say why b64url_decode_into refused src.
    cdef Py_ssize_t i
    if n & 3 == 1:
        return "base64url length % 4 == 1"
    for i in range(n):
        if _B64_DEC[src[i]] == _B64_BAD:
            return f"invalid base64url character at offset {i}"
    return "non-canonical base64url (unused trailing bits set)"


def b64url_decode(bytes data not None, /):
    """Decode strict, unpadded, canonical base64url (RFC 4648 §5); raise B64Error."""
    cdef Py_ssize_t n = PyBytes_GET_SIZE(data)
    cdef const unsigned char* src = <const unsigned char*>PyBytes_AS_STRING(data)
    cdef Py_ssize_t m = b64url_decoded_len(n)
    if m < 0:
        raise B64Error(_b64_reason(src, n))
    out = PyBytes_FromStringAndSize(NULL, m)
    if b64url_decode_into(src, n, <unsigned char*>PyBytes_AS_STRING(out)) < 0:
        raise B64Error(_b64_reason(src, n))
    return out


def b64url_encode(bytes data not None, /):
    """Encode as base64url without padding (RFC 4648 §5, §3.2)."""
    cdef Py_ssize_t n = PyBytes_GET_SIZE(data)
    out = PyBytes_FromStringAndSize(NULL, b64url_encoded_len(n))
    b64url_encode_into(<const unsigned char*>PyBytes_AS_STRING(data), n,
                       <unsigned char*>PyBytes_AS_STRING(out))
    return out


# ---- shared counters -----------------------------------------------------------------

cdef inline uint64_t* _slot_ptr(Counters self, Py_ssize_t slot) except NULL:
    if slot < 0 or slot >= self._nslots:
        raise IndexError(f"counter slot {slot} out of range ({self._nslots} slots)")
    return &self._slots[slot]


cdef class Counters:
    """uint64 counters in a writable, 8-byte aligned buffer, updated atomically.

    Construct from a ``mmap.mmap`` of a file (MAP_SHARED) before forking, and every
    worker sees the same counts. Slots are native-endian uint64; arithmetic wraps
    modulo 2**64, and ``add`` takes only non-negative deltas (OverflowError otherwise).
    """

    def __cinit__(self, buffer, /):
        # BufferError if the buffer is read-only.
        PyObject_GetBuffer(buffer, &self._view, PyBUF_WRITABLE)
        if self._view.len == 0 or self._view.len & 7:
            n = self._view.len
            PyBuffer_Release(&self._view)
            raise ValueError(f"counter buffer size {n} is not a positive multiple of 8")
        if (<uintptr_t>self._view.buf) & 7:
            PyBuffer_Release(&self._view)
            raise ValueError("counter buffer is not 8-byte aligned")
        self._slots = <uint64_t*>self._view.buf
        self._nslots = self._view.len >> 3

    def __dealloc__(self):
        if self._slots != NULL:
            self._slots = NULL
            self._nslots = 0
            PyBuffer_Release(&self._view)

    def __len__(self):
        return self._nslots

    def add(self, Py_ssize_t slot, uint64_t delta=1):
        """Atomically add delta (>= 0) to a slot; return the new value."""
        return fg_atomic_add(_slot_ptr(self, slot), delta)

    def load(self, Py_ssize_t slot):
        """Atomically read a slot."""
        return fg_atomic_load(_slot_ptr(self, slot))

    def store(self, Py_ssize_t slot, uint64_t value):
        """Atomically overwrite a slot."""
        fg_atomic_store(_slot_ptr(self, slot), value)

    def compare_exchange(self, Py_ssize_t slot, uint64_t expected, uint64_t new):
        """Set the slot to new if it holds expected; return whether it did."""
        return fg_atomic_cas(_slot_ptr(self, slot), expected, new)

    def release(self):
        """Drop the buffer export so the mmap may close; every slot becomes invalid."""
        if self._slots != NULL:
            self._slots = NULL
            self._nslots = 0
            PyBuffer_Release(&self._view)


cdef class RequestRecorder:
    """The metrics table's per-request update (fluxgate/metrics.py) in one C call.

    A request adds 1 to its status counter and to its latency bucket, and its latency in
    microseconds to the sum, in its route's block. The layout is given once, by the table.
    """

    # Fields declared in _core.pxd (fluxgate._proxy records each request at C level).

    def __cinit__(self, Counters counters not None, *, Py_ssize_t header_slots,
                  Py_ssize_t block_slots, Py_ssize_t capacity, int status_min,
                  int status_max, buckets, Py_ssize_t buckets_offset,
                  Py_ssize_t sum_offset):
        if len(buckets) > 32:
            raise ValueError("at most 32 latency buckets")
        if len(counters) < header_slots + capacity * block_slots:
            raise ValueError("the counters are smaller than the layout")
        self._counters = counters
        self._header = header_slots
        self._block = block_slots
        self._capacity = capacity
        self._status_min = status_min
        self._status_max = status_max
        self._buckets_offset = buckets_offset
        self._sum_offset = sum_offset
        self._nbounds = len(buckets)
        for i, bound in enumerate(buckets):
            self._bounds[i] = bound

    cpdef record(self, Py_ssize_t route_slot, int status, double seconds):
        """Count one finished request. A route slot outside the table counts under slot 0
        (never drop a request from the totals); a status outside the range raises
        ValueError before anything is counted."""
        cdef Py_ssize_t base, bucket = 0
        if not self._status_min <= status <= self._status_max:
            raise ValueError(
                f"status {status} outside {self._status_min}..{self._status_max}")
        if not 0 <= route_slot < self._capacity:
            route_slot = 0
        if not seconds >= 0.0:
            seconds = 0.0  # a clock step backwards (or NaN) must not wrap the sum
        # The first bound >= seconds (Prometheus' "le"); past the last one: +Inf.
        while bucket < self._nbounds and self._bounds[bucket] < seconds:
            bucket += 1
        base = self._header + route_slot * self._block
        fg_atomic_add(_slot_ptr(self._counters, base + status - self._status_min), 1)
        fg_atomic_add(_slot_ptr(self._counters, base + self._buckets_offset + bucket), 1)
        fg_atomic_add(_slot_ptr(self._counters, base + self._sum_offset),
                      <uint64_t>(seconds * 1000000.0))


# Feature sections, kept in their own files so each reads on its own (a module past
# ~1,500 lines is split into .pxi files; these grow with their features).
include "_http.pxi"
include "_resphead.pxi"
include "_reqhead.pxi"
include "_chunked.pxi"
include "_principal.pxi"
include "_jwt.pxi"
include "_keys.pxi"
include "_introspect.pxi"
include "_leases.pxi"
