# Included into _core.pyx: the fast path for a complete, simple request head.
#
# parse_request_head(data, ...) looks at one read from the client socket that starts at a
# message boundary and either returns a filled RequestState or None. None means only
# "not the simple case": the caller then feeds the very same bytes to httptools (llhttp)
# as it always did, so every error message, partial read, pipelined, chunked, upgrade or
# Expect request keeps its one, tested code path. The fast path therefore never decides
# that a request is bad; it only declines.
#
# Safety property (request smuggling): whenever a RequestState comes back, llhttp accepts
# the same bytes and reports exactly the same message -- method, target, version, header
# (name, value) list, should_keep_alive and body -- and nothing after it. It is checked
# differentially against httptools in tests/test_core_http_request.py. To keep it true
# the accepted grammar is a strict subset of what llhttp accepts:
#
# * method: GET HEAD POST PUT DELETE PATCH OPTIONS, upper case, then one SP;
# * request-target: origin-form, '/' then bytes 0x21-0x7E except '#' (llhttp takes every
#   printable byte in path and query, but '#' starts its fragment state); the path part
#   (before the first '?') must also pass normalize_path_into, so a path the gateway
#   answers 400 always goes the slow way and gets its error from the one place that
#   builds it. Paths over FG_PATH_STACK_BUF bytes decline too;
# * one SP, "HTTP/1.1" or "HTTP/1.0", CRLF;
# * header lines: 1+ tchars (RFC 9110 §5.6.2), ':', optional SP/HTAB, a value of
#   0x21-0x7E with SP/HTAB inside, CRLF. The value is what on_header keeps of what llhttp
#   hands it: llhttp removes the leading OWS and keeps trailing SP/HTAB (measured with
#   httptools 0.9.0; "X: \r\n" gives b""), on_header strips those too (RFC 9110 §5.5:
#   whitespace around a field value is not part of it). Header bytes are counted before
#   that strip, as on_header counts them. obs-fold, a bare CR or LF, NUL, other controls,
#   DEL and bytes >= 0x80 all decline;
# * an empty line, then exactly Content-Length body bytes (0 without one) and nothing more.
#
# Headers are classified as ClientConnection.on_header does (fluxgate/proxy/protocol.py,
# kinds in fluxgate/proxy/headers.py). The headers llhttp itself interprets must agree
# with the gateway's classification or the request declines: Content-Length (1-18 digits,
# once), Connection (once, exactly "close" or "keep-alive", so should_keep_alive is
# computable here), and never Transfer-Encoding, Upgrade or Proxy-Connection (llhttp
# treats the latter as Connection; the gateway drops it). Expect declines as well,
# and so does a header name with '_' that reads as Content-Length or Transfer-Encoding
# (H_FRAMING_ALIAS, a 400 on the slow path). Host: exactly one in 1.1, at most one in
# 1.0, and a valid value (_valid_host, RFC 9110 §7.2). Limits: header bytes counted as
# on_url and on_header count them, header lines against max_header_count, and
# Content-Length against max_body_bytes; over any, the slow path raises the 431/413.
#
# Implementation: typed loops over `const unsigned char*` with tables filled at import;
# no Python call per byte. Pass 1 is C only: it checks the grammar, llhttp's framing
# headers, the limits and the total length, and records each header line's span (at most
# _MAX_HEADERS lines, else None), so the common declines -- a partial read, a pipelined or
# chunked request -- cost ~0.1 us and no allocation. Pass 2 makes only the objects
# RequestState keeps (url, names, values, their tuples, the body) and
# classifies the headers; it may still decline (Expect, Host count). CPython keeps a NUL
# after every bytes object's data (p[n] == 0), and NUL is in none of the tables, so the
# scanning loops stop at the end of the data without a separate bounds test.

from libc.string cimport memcmp, memcpy
from cpython.bytes cimport PyBytes_FromStringAndSize, PyBytes_AS_STRING, PyBytes_GET_SIZE
from cpython.dict cimport PyDict_GetItem, PyDict_Size, PyDict_SetItem
from cpython.object cimport PyObject
from cpython.ref cimport Py_INCREF, Py_XDECREF


cdef enum:
    # What the gateway does with a request header (exported below as H_*; the protocol's
    # llhttp path and proxy/headers.py use the same numbers and classify_header()).
    _H_FORWARD = 0
    _H_HOST = 1
    _H_CONTENT_LENGTH = 2
    _H_TRANSFER_ENCODING = 3
    _H_EXPECT = 4
    _H_FORWARDED_FOR = 5
    _H_FORWARDED_PROTO = 6
    _H_REQUEST_ID = 7
    _H_CONNECTION = 8
    _H_UPGRADE = 9
    _H_DROP = 10
    _H_FLUXGATE = 11
    # A name with '_' that is Content-Length or Transfer-Encoding once each '_' is a '-':
    # CGI-style upstreams (WSGI, PHP) read it as that header. A 400 (smuggling attempt).
    _H_FRAMING_ALIAS = 12
    # Distinct header-name spellings remembered per worker: random names cannot grow it.
    _KINDS_CACHE_MAX = 4096
    # Header names llhttp interprets itself (its own header state machine).
    _LL_NONE = 0
    _LL_CONTENT_LENGTH = 1
    _LL_CONNECTION = 2
    _LL_OTHER = 3   # transfer-encoding, upgrade, proxy-connection: always the slow path
    # Header lines a fast-path request may have (their spans live on the C stack).
    _MAX_HEADERS = 100

# Module-level constants, so a parsed request shares these objects (no allocation).
cdef bytes _M_GET = b"GET"
cdef bytes _M_PUT = b"PUT"
cdef bytes _M_HEAD = b"HEAD"
cdef bytes _M_POST = b"POST"
cdef bytes _M_PATCH = b"PATCH"
cdef bytes _M_DELETE = b"DELETE"
cdef bytes _M_OPTIONS = b"OPTIONS"
cdef bytes _RQ_COMMA = b", "

# Header names, values and lower-casing: the shared tables of _http.pxi.
cdef unsigned char _RQ_TARGET[256]   # 1: request-target byte taken here


cdef extern from *:
    """
    #if defined(__SSE2__)
    #include <emmintrin.h>
    /* 16 bytes a step: a signed compare below 0x20 catches 0x00-0x1F and 0x80-0xFF at
       once, an equality catches DEL (0x7F). SSE2 is part of x86-64 itself. */
    static inline Py_ssize_t fg_plain_run16(const unsigned char *p, Py_ssize_t i,
                                            Py_ssize_t n) {
        const __m128i space = _mm_set1_epi8(0x20), del = _mm_set1_epi8(0x7F);
        while (i + 16 <= n) {
            __m128i x = _mm_loadu_si128((const __m128i *)(p + i));
            __m128i bad = _mm_or_si128(_mm_cmplt_epi8(x, space), _mm_cmpeq_epi8(x, del));
            if (_mm_movemask_epi8(bad))
                break;
            i += 16;
        }
        return i;
    }
    #else
    static inline Py_ssize_t fg_plain_run16(const unsigned char *p, Py_ssize_t i,
                                            Py_ssize_t n) {
        (void)p; (void)n;
        return i;
    }
    #endif
    """
    Py_ssize_t fg_plain_run16(const unsigned char* p, Py_ssize_t i, Py_ssize_t n) noexcept


cdef inline Py_ssize_t _plain_run(const unsigned char* p, Py_ssize_t i, Py_ssize_t n) noexcept:
    # Skips bytes while every one is 0x20..0x7E, 16 at a time (SSE2) and then 8 at a time:
    # long field values (a bearer token is ~600 bytes) are most of a head, and a table
    # lookup per byte shows in the profile. Word tricks from "Bit Twiddling Hacks"
    # (hasless / hasmore): a word has a byte < 0x20 iff (x - 0x20..20) & ~x & 0x80..80, a
    # byte > 0x7E iff ((x + 0x01..01) | x) & 0x80..80. The byte loop that follows decides
    # exactly.
    cdef uint64_t x
    i = fg_plain_run16(p, i, n)
    while i + 8 <= n:
        memcpy(&x, p + i, 8)
        if ((((x - 0x2020202020202020ULL) & ~x) | (x + 0x0101010101010101ULL) | x)
                & 0x8080808080808080ULL):
            break
        i += 8
    return i


cdef int _init_reqhead_tables() except -1:
    cdef int c
    for c in range(256):
        _RQ_TARGET[c] = 0x21 <= c <= 0x7E
    _RQ_TARGET[ord("#")] = 0  # llhttp switches to its fragment state: not the simple case
    return 0


_init_reqhead_tables()


cdef inline int _llhttp_role(const unsigned char* s, Py_ssize_t n) noexcept nogil:
    # Which of llhttp's own header states a name enters (by length first: most names
    # cannot be one of them and cost one switch).
    if n == 14:
        return _LL_CONTENT_LENGTH if _ieq(s, b"content-length", 14) else _LL_NONE
    if n == 10:
        return _LL_CONNECTION if _ieq(s, b"connection", 10) else _LL_NONE
    if n == 17:
        return _LL_OTHER if _ieq(s, b"transfer-encoding", 17) else _LL_NONE
    if n == 7:
        return _LL_OTHER if _ieq(s, b"upgrade", 7) else _LL_NONE
    if n == 16:
        return _LL_OTHER if _ieq(s, b"proxy-connection", 16) else _LL_NONE
    return _LL_NONE


H_FORWARD = _H_FORWARD
H_HOST = _H_HOST
H_CONTENT_LENGTH = _H_CONTENT_LENGTH
H_TRANSFER_ENCODING = _H_TRANSFER_ENCODING
H_EXPECT = _H_EXPECT
H_FORWARDED_FOR = _H_FORWARDED_FOR
H_FORWARDED_PROTO = _H_FORWARDED_PROTO
H_REQUEST_ID = _H_REQUEST_ID
H_CONNECTION = _H_CONNECTION
H_UPGRADE = _H_UPGRADE
H_DROP = _H_DROP
H_FLUXGATE = _H_FLUXGATE
H_FRAMING_ALIAS = _H_FRAMING_ALIAS
HEADER_KINDS_CACHE_MAX = _KINDS_CACHE_MAX
FLUXGATE_PREFIX = b"x-fluxgate-"


def classify_header(bytes name not None, dict kinds not None, dict special not None,
                    bint allow_underscores=False):
    """What the gateway does with a request header named ``name`` (as sent): ``special``
    maps lower-cased names to their kind; other ``x-fluxgate-*`` names are H_FLUXGATE, the
    rest H_FORWARD. A name with ``_`` is H_FRAMING_ALIAS when it reads as Content-Length
    or Transfer-Encoding with ``-`` for ``_``, else H_DROP unless ``allow_underscores``
    (and then still H_DROP when it reads as a header ``special`` names). ``kinds`` caches
    the answer per spelling (bounded; one ``allow_underscores`` per cache)."""
    return _kind_of(name, kinds, special, allow_underscores)


cdef inline int _kind_of(bytes name, dict kinds, dict special, bint underscores) except -1:
    cdef PyObject* cached = PyDict_GetItem(kinds, name)
    if cached != NULL:
        return <object>cached
    return _classify(name, <const unsigned char*>PyBytes_AS_STRING(name),
                     PyBytes_GET_SIZE(name), kinds, special, underscores)


cdef int _classify(bytes name, const unsigned char* s, Py_ssize_t n,
                   dict kinds, dict special, bint underscores) except -1:
    # A miss in the per-worker cache: look the lower-cased name up in ``special``, and
    # remember the answer while the cache is under its bound.
    cdef bytes lname = PyBytes_FromStringAndSize(NULL, n)
    cdef unsigned char* d = <unsigned char*>PyBytes_AS_STRING(lname)
    cdef Py_ssize_t j
    cdef bint underscore = False
    for j in range(n):
        d[j] = _LOWER[s[j]]
        underscore |= s[j] == b"_"
    kind = special.get(lname)
    if kind is None:
        if underscore:
            kind = _underscore_kind(lname, special, underscores)
        elif n >= 11 and memcmp(d, b"x-fluxgate-", 11) == 0:
            kind = _H_FLUXGATE
        else:
            kind = _H_FORWARD
    if PyDict_Size(kinds) < _KINDS_CACHE_MAX:
        PyDict_SetItem(kinds, name, kind)
    return kind


cdef int _underscore_kind(bytes lname, dict special, bint allow) except -1:
    # Servers that map header names to CGI-style variables (HTTP_CONTENT_LENGTH) read "_"
    # and "-" alike, so "Content_Length" may be taken for the real one upstream: a name
    # that aliases framing is refused, one that aliases a header the gateway reads or
    # sets is dropped, any other is dropped unless underscores are allowed (nginx's
    # underscores_in_headers off).
    dashed = lname.replace(b"_", b"-")
    kind = special.get(dashed)
    if kind == _H_CONTENT_LENGTH or kind == _H_TRANSFER_ENCODING:
        return _H_FRAMING_ALIAS
    if not allow or kind is not None or dashed.startswith(b"x-fluxgate-"):
        return _H_DROP
    return _H_FORWARD


# Header names as the parser hands them out: one bytes object per spelling, reused.
# Clients send the same few names on every request; a reused object keeps its hash, so
# the kinds-cache lookup that follows costs no siphash, and no allocation is made.
# Direct-mapped on a cheap hash of the name, a slot replaced on a collision: hostile
# random names only cost what a fresh object costs.
cdef enum:
    _NAME_SLOTS = 512  # a power of two
cdef PyObject* _name_slots[<int>_NAME_SLOTS]


cdef inline bytes _header_name(const unsigned char* s, Py_ssize_t n):
    cdef uint32_t h = <uint32_t>n
    cdef Py_ssize_t j
    for j in range(n):
        h = h * 31 + s[j]
    h = (h ^ (h >> 9)) & (_NAME_SLOTS - 1)
    cdef PyObject* cached = _name_slots[h]
    if cached != NULL and PyBytes_GET_SIZE(<object>cached) == n \
            and memcmp(PyBytes_AS_STRING(<object>cached), s, n) == 0:
        return <bytes>cached
    name = PyBytes_FromStringAndSize(<const char*>s, n)
    Py_XDECREF(cached)
    Py_INCREF(name)
    _name_slots[h] = <PyObject*>name
    return name


cdef struct _Span:
    # One header line found by the scan: name at p[ns:ns+nl], value at p[vs:vs+vl].
    Py_ssize_t ns
    Py_ssize_t nl
    Py_ssize_t vs
    Py_ssize_t vl
    int role


def parse_request_head(bytes data not None, dict kinds not None, dict special not None,
                       Py_ssize_t max_header_bytes, Py_ssize_t max_body_bytes,
                       double started, Py_ssize_t max_header_count=_MAX_HEADERS,
                       bint allow_underscores=False):
    """A RequestState for one complete, simple request in ``data``; None: use httptools.

    ``kinds`` is the per-worker cache {header name as sent: kind}, ``special`` the
    gateway's {lower-case name: kind} (fluxgate.proxy.headers); ``allow_underscores`` as
    for classify_header. The accepted grammar and why None is always safe: the comment
    at the top of fluxgate/_reqhead.pxi.
    """
    return parse_request_head_c(data, kinds, special, max_header_bytes, max_body_bytes,
                                started, max_header_count, allow_underscores)


cdef RequestState parse_request_head_c(bytes data, dict kinds, dict special,
                                       Py_ssize_t max_header_bytes,
                                       Py_ssize_t max_body_bytes, double started,
                                       Py_ssize_t max_header_count,
                                       bint allow_underscores):
    # parse_request_head for Cython callers (fluxgate/_proxy.pyx), who pass
    # non-None objects.
    cdef const unsigned char* p = <const unsigned char*>PyBytes_AS_STRING(data)
    cdef Py_ssize_t n = PyBytes_GET_SIZE(data)
    cdef Py_ssize_t i, url_start, url_end, path_end, path_len, ns, nl, vs, vl, header_bytes
    cdef Py_ssize_t head_len, h, nheaders = 0
    cdef Py_ssize_t max_lines = min(max_header_count, <Py_ssize_t>_MAX_HEADERS)
    cdef long long cl = 0
    cdef int minor, kind, role, option, hosts = 0, reason = FG_PATH_OK
    cdef bint seen_cl = False, seen_conn = False, conn_close = False, conn_keep = False
    cdef unsigned char c
    cdef unsigned char path_buf[FG_PATH_STACK_BUF]
    cdef _Span spans[_MAX_HEADERS]
    cdef bytes method, name, value
    cdef RequestState req

    # Pass 1, C only: the request line, every header line's span and llhttp's framing
    # headers. Partial reads, pipelining, chunked bodies and the like decline here,
    # before any object is made (they cost the slow path nothing measurable).

    # Shortest simple request: "GET / HTTP/1.0\r\n\r\n" (18 bytes); this also makes the
    # method probes below stay inside the data.
    if n < 18:
        return None
    if p[3] == 0x20:
        if memcmp(p, b"GET", 3) == 0:
            method = _M_GET
        elif memcmp(p, b"PUT", 3) == 0:
            method = _M_PUT
        else:
            return None
    elif p[4] == 0x20:
        if memcmp(p, b"POST", 4) == 0:
            method = _M_POST
        elif memcmp(p, b"HEAD", 4) == 0:
            method = _M_HEAD
        else:
            return None
    elif p[5] == 0x20 and memcmp(p, b"PATCH", 5) == 0:
        method = _M_PATCH
    elif p[6] == 0x20 and memcmp(p, b"DELETE", 6) == 0:
        method = _M_DELETE
    elif p[7] == 0x20 and memcmp(p, b"OPTIONS", 7) == 0:
        method = _M_OPTIONS
    else:
        return None  # CONNECT, lower case, unknown methods, HTTP/0.9, noise
    i = PyBytes_GET_SIZE(method) + 1

    # Origin-form only: absolute-form, authority-form and "*" take the slow path.
    if p[i] != b"/":
        return None
    url_start = i
    while _RQ_TARGET[p[i]] and p[i] != b"?":
        i += 1
    path_end = i
    while _RQ_TARGET[p[i]]:
        i += 1
    if p[i] != 0x20:
        return None  # a second SP, a control, '#', >= 0x80, or the end of the data
    url_end = i
    header_bytes = url_end - url_start
    if header_bytes > max_header_bytes:
        return None
    i += 1
    if n - i < 10 or memcmp(p + i, b"HTTP/1.", 7) != 0:
        return None
    c = p[i + 7]
    if c == b"1":
        minor = 1
    elif c == b"0":
        minor = 0
    else:
        return None
    if p[i + 8] != b"\r" or p[i + 9] != b"\n":
        return None
    i += 10

    while True:
        if p[i] == b"\r":
            # p[i] != 0, so i < n and p[i + 1] is at most the terminating NUL.
            if p[i + 1] != b"\n":
                return None
            i += 2
            break
        if nheaders == max_lines:
            return None  # beyond max_header_count, the slow path's 431
        ns = i
        while _TCHAR[p[i]]:
            i += 1
        nl = i - ns
        # Empty name: obs-fold (SP/HTAB first), a bare LF, or the end of the data.
        if nl == 0 or p[i] != b":":
            return None
        i += 1
        while p[i] == 0x20 or p[i] == 0x09:
            i += 1
        vs = i
        i = _plain_run(p, i, n)
        while _FIELD_VALUE[p[i]]:
            i += 1
        if p[i] != b"\r" or p[i + 1] != b"\n":
            return None  # bare CR/LF, NUL, controls, DEL, >= 0x80, or a partial head
        vl = i - vs
        i += 2
        header_bytes += nl + vl + 4
        if header_bytes > max_header_bytes:
            return None

        role = _llhttp_role(p + ns, nl)
        if role == _LL_OTHER:
            return None
        if role == _LL_CONTENT_LENGTH:
            # A second one, even equal, or trailing OWS: slow path.
            if seen_cl or not _content_length(p + vs, vl, &cl):
                return None
            seen_cl = True
        elif role == _LL_CONNECTION:
            # One header holding one option: should_keep_alive is then plain to compute.
            # A second Connection header would join into a list: slow path.
            if seen_conn:
                return None
            seen_conn = True
            option = _connection_option(p + vs, vl)
            if option == 0:
                return None
            conn_close = option == _CONN_CLOSE
            conn_keep = option == _CONN_KEEP_ALIVE
        while vl > 0 and (p[vs + vl - 1] == 0x20 or p[vs + vl - 1] == 0x09):
            vl -= 1  # RFC 9110 §5.5: trailing OWS is not part of the value
        spans[nheaders].ns = ns
        spans[nheaders].nl = nl
        spans[nheaders].vs = vs
        spans[nheaders].vl = vl
        spans[nheaders].role = role
        nheaders += 1
    head_len = i

    # Exactly the announced body: nothing pipelined after it, nothing missing.
    if n - head_len != cl or cl > max_body_bytes:
        return None
    # A path the gateway refuses (PathError -> 400) declines, so the 400 and its reason
    # come from the slow path; normalize_path_into is pure C on a stack buffer.
    if path_end - url_start > FG_PATH_STACK_BUF:
        return None
    path_len = normalize_path_into(p + url_start, path_end - url_start, path_buf, &reason)
    if path_len < 0:
        return None

    # Pass 2: the objects, and the gateway's classification of every header (as
    # ClientConnection.on_header does it).
    req = RequestState.__new__(RequestState, started)
    req.url = PyBytes_FromStringAndSize(<const char*>p + url_start, url_end - url_start)
    # Split and normalized here, so the protocol's router skips its own split (_route).
    req.path = PyBytes_FromStringAndSize(<const char*>path_buf, path_len)
    if url_end > path_end:
        req.query = PyBytes_FromStringAndSize(<const char*>p + path_end + 1,
                                              url_end - path_end - 1)
    for h in range(nheaders):
        ns = spans[h].ns
        nl = spans[h].nl
        vs = spans[h].vs
        vl = spans[h].vl
        role = spans[h].role
        name = _header_name(p + ns, nl)
        value = PyBytes_FromStringAndSize(<const char*>p + vs, vl)
        pair = (name, value)
        req.headers.append(pair)
        kind = _kind_of(name, kinds, special, allow_underscores)
        # llhttp frames the message by its own reading of these two: the gateway's
        # classification must be the same one, or this is not the simple case.
        if (kind == _H_CONTENT_LENGTH) != (role == _LL_CONTENT_LENGTH):
            return None
        if (kind == _H_CONNECTION) != (role == _LL_CONNECTION):
            return None

        if kind == _H_FORWARD:
            req.forward_headers.append(pair)
        elif kind == _H_DROP:
            # Hop-by-hop or the API key header: an API key's bucket starts loading now,
            # while the rest of the request is parsed and routed (fluxgate/_keys.pxi).
            key_hint(p + vs, vl)
        elif kind == _H_FLUXGATE:
            pass  # a client-sent X-FluxGate-*
        elif kind == _H_HOST:
            if not _valid_host(p + vs, vl):
                return None  # the slow path's 400 (RFC 9112 §3.2)
            hosts += 1
            req.host = value
            req.forward_headers.append(pair)
        elif kind == _H_CONTENT_LENGTH:
            pass  # read in pass 1
        elif kind == _H_FORWARDED_FOR:
            if req.forwarded_for is None:
                req.forwarded_for = value
            else:
                req.forwarded_for = req.forwarded_for + _RQ_COMMA + value
        elif kind == _H_FORWARDED_PROTO:
            req.forwarded_proto = value
        elif kind == _H_REQUEST_ID:
            req.client_request_id = value
        elif kind == _H_CONNECTION:
            req.connection = value  # checked in pass 1
        else:
            # Transfer-Encoding, Expect, Upgrade, a framing alias, or a kind unknown here.
            return None

    # RFC 9112 §3.2: one Host in 1.1; 1.0 may omit it.
    if hosts > 1 or (hosts == 0 and minor == 1):
        return None

    req.method = method
    req.http_minor = minor
    # llhttp's should_keep_alive for a request with no other framing concerns.
    req.keep_alive = (not conn_close) if minor == 1 else conn_keep
    req.header_bytes = header_bytes
    req.hosts = hosts
    req.content_length = cl
    if cl > 0:
        req.has_body = True
        req.body_bytes = <Py_ssize_t>cl
        req.body_buffer.append(PyBytes_FromStringAndSize(<const char*>p + head_len, <Py_ssize_t>cl))
    req.message_complete = True
    return req
