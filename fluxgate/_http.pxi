# HTTP/1.1 request state for the data plane (included by _core.pyx).
#
# RequestState is the per-request context every stage reads and writes (the
# protocol, the middleware chain, the exchange). It is a C struct with Python-visible
# fields so that the head parser fills it without a Python call per field, and
# creating one costs a single allocation plus its four lists.
#
# Every field is a Python object, and Python reaches them through member descriptors
# (`_as_member_fields` below), not the getset properties Cython generates: CPython
# 3.11 specializes attribute access through a T_OBJECT_EX member into a load at an
# offset (~10 ns a read), while a getset property takes the generic path (~35 ns).
# The protocol, the exchange and the middleware touch these fields ~50 times a
# request. A field is assigned, never deleted: `del req.x` would leave an empty slot
# that C code here reads without a check.

from cpython.object cimport PyObject, PyTypeObject


cdef class RequestState:
    """One request: method, target, headers, framing, auth result, status."""

    # The fields are declared in _core.pxd (fluxgate._proxy reads them at C level).

    def __cinit__(self, started=0.0):
        self.started = started
        self.method = b""
        self.http_minor = 1
        self.keep_alive = True
        self.upgrade = None
        self.reparse = False
        self.chunked = False
        self.content_length = 0
        self.has_body = False
        self.body_bytes = 0
        self.message_complete = False
        self.response_done = False
        self.exchange = None
        self.close_after = False
        self.status = 0
        self.request_id = b""
        self.route = None
        self.path = b""
        self.query = b""
        self.client_ip = ""
        self.peer_trusted = False
        self.principal = None
        self.refusal = None
        self.expect_continue = False
        self.host = None
        self.forwarded_for = None
        self.forwarded_proto = None
        self.client_request_id = None
        self.connection = None
        self.hosts = 0
        self.transfer_encoding = None
        self.upgrade_token = None
        self.finished = False
        self.url = b""
        self.header_bytes = 0
        self.headers = []
        self.forward_headers = []
        self.body_buffer = []
        self.response_headers = []

    def ratelimit_headers(self):
        """The RateLimit-* (name, value) pairs of this request's response (empty without
        a quota), for the replies written in Python; response_head writes them itself."""
        if self.rl_limit == 0:
            return []
        return [(_RL_LIMIT, _decimal(self.rl_limit)),
                (_RL_REMAINING, _decimal(self.rl_remaining)),
                (_RL_RESET, _decimal(self.rl_reset))]


cdef extern from "structmember.h":
    ctypedef struct PyMemberDef:
        const char* name
        int type
        Py_ssize_t offset
        int flags
        const char* doc
    int T_OBJECT_EX
    int READONLY

cdef extern from "Python.h":
    object PyDescr_NewMember(PyTypeObject* type, PyMemberDef* member)
    void PyType_Modified(PyTypeObject* type)


cdef tuple _member_names = ()  # the descriptors' names: kept alive with the type


cdef void _as_member_fields(type cls, bint readonly=False) except *:
    """Replace the getset property of each public object field of `cls` by a T_OBJECT_EX
    member descriptor on the same slot (see the top of this file for why); `readonly`
    members refuse assignment from Python (C code still sets the fields).

    Each field's offset is found, not assumed: a probe instance gets a fresh sentinel
    through the field's property, and the instance's memory is searched for it.
    """
    global _member_names
    cdef PyTypeObject* tp = <PyTypeObject*>cls
    names = tuple(
        name.encode() for name, value in vars(cls).items()
        if type(value).__name__ == "getset_descriptor" and not name.startswith("__")
    )
    cdef PyMemberDef* members = <PyMemberDef*>PyMem_Malloc(len(names) * sizeof(PyMemberDef))
    if members == NULL:
        raise MemoryError()
    probe = cls()
    cdef char* base = <char*><PyObject*>probe
    cdef Py_ssize_t offset, found
    cdef bytes name
    for i, name in enumerate(names):
        sentinel = object()
        setattr(probe, name.decode(), sentinel)
        found = -1
        for offset in range(sizeof(PyObject), tp.tp_basicsize, sizeof(PyObject*)):
            if (<PyObject**>(base + offset))[0] == <PyObject*>sentinel:
                found = offset
                break
        if found < 0:
            raise RuntimeError(f"{cls.__name__}.{name.decode()}: no object slot found")
        members[i].name = name
        members[i].type = T_OBJECT_EX
        members[i].offset = found
        members[i].flags = READONLY if readonly else 0
        members[i].doc = NULL
        (<dict>tp.tp_dict)[name.decode()] = PyDescr_NewMember(tp, &members[i])
    PyType_Modified(tp)
    _member_names = _member_names + names


_as_member_fields(RequestState)

# ---- heads the gateway writes ------------------------------------------------------
#
# Both builders size the output first and copy each piece once into a single bytes
# object: the head leaves in one write, with no intermediate list or join.

from libc.string cimport memcpy as _memcpy


cdef inline char* _put(char* out, bytes piece) noexcept:
    cdef Py_ssize_t n = PyBytes_GET_SIZE(piece)
    _memcpy(out, PyBytes_AS_STRING(piece), n)
    return out + n


cdef inline char* _put_c(char* out, const char* piece, Py_ssize_t n) noexcept:
    _memcpy(out, piece, n)
    return out + n


# ---- RateLimit-* (draft-ietf-httpapi-ratelimit-headers) ----------------------------

cdef bytes _RL_LIMIT = b"RateLimit-Limit"
cdef bytes _RL_REMAINING = b"RateLimit-Remaining"
cdef bytes _RL_RESET = b"RateLimit-Reset"

cdef const char* _DIGIT_PAIRS = (
    b"00010203040506070809101112131415161718192021222324252627282930313233343536373839"
    b"40414243444546474849505152535455565758596061626364656667686970717273747576777879"
    b"8081828384858687888990919293949596979899"
)

cdef enum:
    _DIGITS_MAX = 20  # 2**64 - 1 in decimal


cdef inline int _digits(char* buf, uint64_t value) noexcept:
    # ``value`` in decimal at the end of buf[_DIGITS_MAX]; returns where it starts.
    # Two digits a division: a limit is often 10 digits, and three a request showed up
    # in profiles of the api_key route when PyBytes_FromFormat wrote them.
    cdef int i = _DIGITS_MAX
    cdef uint64_t pair
    while value >= 100:
        pair = value % 100
        value //= 100
        i -= 2
        buf[i] = _DIGIT_PAIRS[2 * pair]
        buf[i + 1] = _DIGIT_PAIRS[2 * pair + 1]
    if value >= 10:
        i -= 2
        buf[i] = _DIGIT_PAIRS[2 * value]
        buf[i + 1] = _DIGIT_PAIRS[2 * value + 1]
    else:
        i -= 1
        buf[i] = <char>(48 + value)
    return i


cdef bytes _decimal(uint64_t value):
    cdef char buf[_DIGITS_MAX]
    cdef int i = _digits(buf, value)
    return PyBytes_FromStringAndSize(buf + i, _DIGITS_MAX - i)


cpdef merge_ratelimit(RequestState req, uint64_t limit, uint64_t remaining, int64_t reset):
    """Set the RateLimit-Limit/Remaining/Reset of ``req``'s response (``reset`` in
    seconds; one in the past is 0). When a stricter quota already set them (no more
    remaining than this one), keep that one."""
    if req is None:
        raise TypeError("req must be a RequestState")
    if limit == 0:
        raise ValueError("a quota's limit is at least 1")
    if req.rl_limit != 0 and req.rl_remaining <= remaining:
        return
    req.rl_limit = limit
    req.rl_remaining = remaining
    req.rl_reset = <uint64_t>reset if reset > 0 else 0


cdef struct _RateLimitText:
    char limit[_DIGITS_MAX]
    char remaining[_DIGITS_MAX]
    char reset[_DIGITS_MAX]
    int limit_at, remaining_at, reset_at  # where each number starts in its buffer


cdef inline Py_ssize_t _ratelimit_text(RequestState req, _RateLimitText* t) noexcept:
    # The three numbers as digits; returns the bytes their header lines take (0: none).
    if req.rl_limit == 0:
        return 0
    t.limit_at = _digits(t.limit, req.rl_limit)
    t.remaining_at = _digits(t.remaining, req.rl_remaining)
    t.reset_at = _digits(t.reset, req.rl_reset)
    return (17 + _DIGITS_MAX - t.limit_at + 2 + 21 + _DIGITS_MAX - t.remaining_at + 2
            + 17 + _DIGITS_MAX - t.reset_at + 2)


cdef inline char* _put_ratelimit(char* out, _RateLimitText* t) noexcept:
    out = _put_c(out, "RateLimit-Limit: ", 17)
    out = _put_c(out, t.limit + t.limit_at, _DIGITS_MAX - t.limit_at)
    out = _put_c(out, "\r\nRateLimit-Remaining: ", 23)
    out = _put_c(out, t.remaining + t.remaining_at, _DIGITS_MAX - t.remaining_at)
    out = _put_c(out, "\r\nRateLimit-Reset: ", 19)
    out = _put_c(out, t.reset + t.reset_at, _DIGITS_MAX - t.reset_at)
    return _put_c(out, "\r\n", 2)


def upstream_head(RequestState req not None, drop, Py_ssize_t strip, bytes peer not None,
                  bytes api_key_query not None):
    """The request head sent upstream, in one bytes object.

    The target is ``req.path`` without its first ``strip`` bytes when ``strip >= 0``
    (a route's strip_prefix; what remains always starts with ``/``), then ``?`` and
    ``req.query`` without any ``api_key_query`` parameter (an API key never reaches an
    upstream). ``req.forward_headers`` are the client's headers that go upstream as
    written; ``drop`` is a set of lower-cased names to leave out on top (Connection-named
    ones, forward_claims targets, a route's strip_request_headers; ``_`` in a client's
    name counts as ``-``), or empty. The gateway's own lines follow:
    X-Forwarded-For (the client's chain only from a trusted peer, then ``peer``),
    X-Forwarded-Proto, X-Forwarded-Host, X-Request-Id, the principal's X-FluxGate-*
    block, the Upgrade pair for an accepted WebSocket, and the framing line re-created
    from what the parser saw, never copied.
    """
    return upstream_head_c(req, drop, strip, peer, api_key_query)


cdef bytes upstream_head_c(RequestState req, drop, Py_ssize_t strip, bytes peer,
                           bytes api_key_query):
    # upstream_head for Cython callers (fluxgate/_proxy.pyx); no argument is None
    # but `drop`.
    cdef bytes path = req.path, query = req.query, target
    if strip >= 0:
        path = path[strip:]
        if not path.startswith(b"/"):
            path = b"/" + path
    if query:
        query = strip_query_param(query, api_key_query)
    target = path + b"?" + query if query else path
    if req.peer_trusted and req.forwarded_for:
        forwarded_for = <bytes?>req.forwarded_for + b", " + peer
        forwarded_proto = req.forwarded_proto or b"http"
    else:
        forwarded_for = peer
        forwarded_proto = b"http"
    principal = req.principal
    extra = b"" if principal is None else principal.upstream_lines
    return _build_upstream_head(req, target, drop, forwarded_for, forwarded_proto, extra)


cdef bytes _build_upstream_head(RequestState req, bytes target, drop, bytes forwarded_for,
                                bytes forwarded_proto, bytes extra):
    cdef list lines = req.forward_headers
    cdef Py_ssize_t total, i, n_lines = len(lines)
    cdef tuple pair
    cdef bytes host = req.host, upgrade = req.upgrade, framing
    cdef bint dropping = bool(drop)
    cdef bytearray keep
    cdef char* out
    if req.chunked:
        framing = b"Transfer-Encoding: chunked\r\n"
    elif req.has_body or req.method in (b"POST", b"PUT", b"PATCH"):
        framing = b"Content-Length: %d\r\n" % req.content_length
    else:
        framing = b""
    if dropping:
        # A name is compared with each "_" read as "-" (X_User_Id is X-User-Id to a
        # CGI-style upstream); names with "_" are only forwarded when the config allows them.
        keep = bytearray(n_lines)
        for i in range(n_lines):
            keep[i] = (<bytes?>(<tuple?>lines[i])[0]).lower().replace(b"_", b"-") not in drop
    total = len(req.method) + 1 + len(target) + 11  # b"METHOD target HTTP/1.1\r\n"
    for i in range(n_lines):
        if not dropping or keep[i]:
            pair = <tuple?>lines[i]
            total += len(<bytes?>pair[0]) + len(<bytes?>pair[1]) + 4  # b"name: value\r\n"
    # X-Forwarded-For and X-Forwarded-Proto
    total += 17 + len(forwarded_for) + 21 + len(forwarded_proto) + 2
    if host is not None:
        total += 18 + len(host) + 2
    total += 14 + len(req.request_id) + 2
    total += len(extra)
    if upgrade is not None:
        total += 30 + len(upgrade) + 2
    total += len(framing) + 2
    result = PyBytes_FromStringAndSize(NULL, total)
    out = PyBytes_AS_STRING(result)
    out = _put(out, req.method)
    out = _put_c(out, " ", 1)
    out = _put(out, target)
    out = _put_c(out, " HTTP/1.1\r\n", 11)
    for i in range(n_lines):
        if not dropping or keep[i]:
            pair = <tuple>lines[i]
            out = _put(out, <bytes>pair[0])
            out = _put_c(out, ": ", 2)
            out = _put(out, <bytes>pair[1])
            out = _put_c(out, "\r\n", 2)
    out = _put_c(out, "X-Forwarded-For: ", 17)
    out = _put(out, forwarded_for)
    out = _put_c(out, "\r\nX-Forwarded-Proto: ", 21)
    out = _put(out, forwarded_proto)
    out = _put_c(out, "\r\n", 2)
    if host is not None:
        out = _put_c(out, "X-Forwarded-Host: ", 18)
        out = _put(out, host)
        out = _put_c(out, "\r\n", 2)
    out = _put_c(out, "X-Request-Id: ", 14)
    out = _put(out, req.request_id)
    out = _put_c(out, "\r\n", 2)
    out = _put(out, extra)
    if upgrade is not None:
        out = _put_c(out, "Connection: Upgrade\r\nUpgrade: ", 30)
        out = _put(out, upgrade)
        out = _put_c(out, "\r\n", 2)
    out = _put(out, framing)
    _put_c(out, "\r\n", 2)
    return result


def response_head(bytes status_line not None, bytes lines not None,
                  RequestState req not None, list extra not None, content_length,
                  bint chunked, bint close,
                  bytes data=None, Py_ssize_t body_start=0, Py_ssize_t body_length=0):
    """The response head sent to the client in one bytes object, maybe with a body.

    ``lines`` is the upstream's forwardable header block; ``req`` gives X-Request-Id and
    the RateLimit-* of its quotas; ``extra`` the (name, value) pairs the gateway adds
    (Deprecation, Sunset...); ``content_length`` the digits to re-emit or None;
    ``chunked`` adds Transfer-Encoding: chunked, ``close`` Connection: close. When
    ``data`` is given, ``data[body_start:body_start + body_length]`` follows the head,
    so a whole small response leaves in one write.
    """
    return response_head_c(status_line, lines, req, extra, content_length, chunked, close,
                           data, body_start, body_length)


cdef bytes response_head_c(bytes status_line, bytes lines, RequestState req, list extra,
                           content_length, bint chunked, bint close, bytes data,
                           Py_ssize_t body_start, Py_ssize_t body_length):
    # response_head for Cython callers (fluxgate/_proxy.pyx); only content_length
    # and data may be None.
    cdef Py_ssize_t total, i, n_extra = len(extra), ratelimit_len
    cdef tuple pair
    cdef char* out
    cdef bytes request_id = <bytes?>req.request_id
    cdef _RateLimitText ratelimit
    ratelimit_len = _ratelimit_text(req, &ratelimit)
    total = len(status_line) + len(lines) + 14 + len(request_id) + 2 + ratelimit_len
    for i in range(n_extra):
        pair = <tuple?>extra[i]
        total += len(<bytes?>pair[0]) + 2 + len(<bytes?>pair[1]) + 2
    if content_length is not None:
        total += 16 + len(<bytes?>content_length) + 2
    if chunked:
        total += 28
    if close:
        total += 19
    total += 2
    if data is not None:
        if body_start < 0 or body_length < 0 or body_start + body_length > len(data):
            raise ValueError("body outside data")
        total += body_length
    result = PyBytes_FromStringAndSize(NULL, total)
    out = PyBytes_AS_STRING(result)
    out = _put(out, status_line)
    out = _put(out, lines)
    out = _put_c(out, "X-Request-Id: ", 14)
    out = _put(out, request_id)
    out = _put_c(out, "\r\n", 2)
    if ratelimit_len:
        out = _put_ratelimit(out, &ratelimit)
    for i in range(n_extra):
        pair = <tuple?>extra[i]
        out = _put(out, <bytes?>pair[0])
        out = _put_c(out, ": ", 2)
        out = _put(out, <bytes?>pair[1])
        out = _put_c(out, "\r\n", 2)
    if content_length is not None:
        out = _put_c(out, "Content-Length: ", 16)
        out = _put(out, <bytes?>content_length)
        out = _put_c(out, "\r\n", 2)
    if chunked:
        out = _put_c(out, "Transfer-Encoding: chunked\r\n", 28)
    if close:
        out = _put_c(out, "Connection: close\r\n", 19)
    out = _put_c(out, "\r\n", 2)
    if data is not None and body_length:
        _put_c(out, PyBytes_AS_STRING(data) + body_start, body_length)
    return result


# ---- request ids and routing -------------------------------------------------------

from cpython.dict cimport PyDict_GetItem as _dict_get
from cpython.object cimport PyObject as _PyObject

cdef unsigned char _RID_OK[256]  # the bytes a client's X-Request-Id may use


cdef int _init_rid_table() except -1:
    for c in b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.:":
        _RID_OK[c] = 1
    return 0


_init_rid_table()


cdef class RequestIds:
    """Request ids for one worker: a client's X-Request-Id when short and plainly spelled
    (at most 128 bytes of ``A-Z a-z 0-9 - _ . :``), else ``<prefix><counter in hex>``."""

    # Fields declared in _core.pxd.

    def __cinit__(self, bytes prefix not None):
        if len(prefix) > 64:
            raise ValueError("request id prefix longer than 64 bytes")
        self._prefix = prefix
        self._counter = 0

    cpdef bytes take(self, client_value):
        """The id of a request: ``client_value`` (bytes or None) when acceptable, else a
        new one."""
        cdef const unsigned char* s
        cdef Py_ssize_t n, i
        cdef char buf[96]
        cdef Py_ssize_t plen = PyBytes_GET_SIZE(self._prefix)
        cdef unsigned long long v
        cdef int digits = 0
        if client_value is not None:
            n = PyBytes_GET_SIZE(<bytes?>client_value)
            if 0 < n <= 128:
                s = <const unsigned char*>PyBytes_AS_STRING(client_value)
                i = 0
                while i < n and _RID_OK[s[i]]:
                    i += 1
                if i == n:
                    return client_value
        self._counter += 1
        _memcpy(buf, PyBytes_AS_STRING(self._prefix), plen)
        v = self._counter
        while v:
            digits += 1
            v >>= 4
        v = self._counter
        for i in range(digits):
            buf[plen + digits - 1 - i] = b"0123456789abcdef"[v & 15]
            v >>= 4
        return PyBytes_FromStringAndSize(buf, plen + digits)


cdef class PrefixTable:
    """Longest-prefix matching on segment boundaries, the body of fluxgate/proxy/router.py's
    Router (a Python subclass): ``match`` is a C method, so a request's route lookup costs
    no Python frame.

    ``table`` maps normalized route prefixes without a trailing slash to their values;
    ``root`` answers a path no prefix matches.
    """

    # Fields declared in _core.pxd.

    def __init__(self, dict table not None, root=None):
        self._table = table
        self._root = root
        self._longest = max([len(key) for key in table], default=0)

    cpdef match(self, bytes path):
        """The value of the longest key that is ``path`` or a prefix of it ending on a
        segment boundary (a trailing ``/`` of ``path`` ignored), else the root's."""
        if path is None:
            raise TypeError("path must be bytes, not None")
        cdef const char* p = PyBytes_AS_STRING(path)
        cdef Py_ssize_t n = PyBytes_GET_SIZE(path)
        cdef _PyObject* hit
        if n > 1 and p[n - 1] == b"/":
            n -= 1
        if n > self._longest:
            # Prefixes longer than every key cannot match: start at the last segment
            # boundary within reach, without building and hashing the candidates above it
            # (a request path is usually longer than its route's prefix).
            n = self._longest
            while n > 0 and p[n] != b"/":
                n -= 1
        while n > 0:
            candidate = PyBytes_FromStringAndSize(p, n) if n != PyBytes_GET_SIZE(path) else path
            hit = _dict_get(self._table, candidate)
            if hit != NULL:
                return <object>hit
            n -= 1
            while n > 0 and p[n] != b"/":
                n -= 1
        return self._root


# ---- HTTP/1.1 bytes, shared by both head parsers (_reqhead.pxi, _resphead.pxi) ----------
#
# What a header line may hold (RFC 9110 §5.1, §5.5, §5.6.2) and the two header values the
# parsers read themselves, defined once: the request and the response parser accept the
# same header-line grammar and must never drift apart.

cdef unsigned char _TCHAR[256]        # 1: a header-name byte (tchar)
cdef unsigned char _FIELD_VALUE[256]  # 1: a field-value byte llhttp takes (VCHAR, SP, HTAB)
cdef unsigned char _LOWER[256]        # ASCII lower-casing

cdef enum:
    _CL_MAX_DIGITS = 18     # < 2**63: a Content-Length fits a long long without checks
    # The Connection options llhttp's should_keep_alive acts on (its F_CONNECTION_* flags).
    _CONN_CLOSE = 1
    _CONN_KEEP_ALIVE = 2


cdef int _init_http_tables() except -1:
    cdef int c
    cdef bytes tchar_punct = b"!#$%&'*+-.^_`|~"
    for c in range(256):
        _LOWER[c] = c + 32 if 0x41 <= c <= 0x5A else c
        _TCHAR[c] = (0x30 <= c <= 0x39) or (0x41 <= c <= 0x5A) or (0x61 <= c <= 0x7A)
        _FIELD_VALUE[c] = (0x21 <= c <= 0x7E) or c == 0x20 or c == 0x09
    for c in tchar_punct:
        _TCHAR[c] = 1
    return 0


_init_http_tables()


cdef inline bint _ieq(const unsigned char* s, const char* lower, Py_ssize_t n) noexcept nogil:
    # s[0:n] equals the lower-case ASCII literal, ignoring case.
    cdef Py_ssize_t j
    for j in range(n):
        if _LOWER[s[j]] != <unsigned char>lower[j]:
            return False
    return True


cdef inline bint _content_length(const unsigned char* s, Py_ssize_t n,
                                 long long* out) noexcept nogil:
    # A Content-Length value both llhttp and int() read the same way: 1-18 digits, no OWS,
    # sign or list (anything else is left to llhttp).
    cdef long long value = 0
    cdef Py_ssize_t j
    if n == 0 or n > _CL_MAX_DIGITS:
        return False
    for j in range(n):
        if s[j] < 0x30 or s[j] > 0x39:  # "0" .. "9"
            return False
        value = value * 10 + (s[j] - 0x30)
    out[0] = value
    return True


# ---- Host (RFC 9110 §7.2, RFC 3986 §3.2.2) -------------------------------------------

cdef extern from "arpa/inet.h" nogil:
    int inet_pton(int af, const char* src, void* dst)

cdef extern from "sys/socket.h" nogil:
    int AF_INET6

cdef unsigned char _REG_NAME[256]  # 1: unreserved / sub-delims, the bytes of a reg-name

cdef enum:
    _IPV6_TEXT_MAX = 45  # the longest IPv6 address text, "ffff:...:255.255.255.255"
    _PORT_DIGITS_MAX = 5


cdef int _init_host_table() except -1:
    cdef int c
    for c in b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~!$&'()*+,;=":
        _REG_NAME[c] = 1
    return 0


_init_host_table()


cdef bint _valid_host(const unsigned char* s, Py_ssize_t n) noexcept nogil:
    # Host = uri-host [ ":" port ]: a reg-name (unreserved, sub-delims, pct-encoded;
    # IPv4 addresses are spelled with its bytes), or an IPv6 address in brackets; then
    # at most 5 port digits. No userinfo ("@"), path ("/"), spaces or other bytes; an
    # empty value is allowed (RFC 9112 §3.2: the authority may be empty), a port
    # without a host is not. IPvFuture and zone ids are refused.
    cdef Py_ssize_t i = 0, j, end
    cdef char text[_IPV6_TEXT_MAX + 1]
    cdef unsigned char addr[16]
    if n > 0 and s[0] == b"[":
        end = 1
        while end < n and s[end] != b"]":
            end += 1
        if end == n or end - 1 > _IPV6_TEXT_MAX or end == 1:
            return False
        _memcpy(text, s + 1, end - 1)
        text[end - 1] = 0
        if inet_pton(AF_INET6, text, addr) != 1:
            return False
        i = end + 1
    else:
        while i < n:
            if _REG_NAME[s[i]]:
                i += 1
            elif s[i] == b"%" and i + 2 < n and not (_HEXVAL[s[i + 1]] | _HEXVAL[s[i + 2]]) & 0xF0:
                i += 3
            else:
                break
        if i == 0 and i < n:
            return False  # ":80" names no host
    if i == n:
        return True
    if s[i] != b":" or n - i - 1 > _PORT_DIGITS_MAX:
        return False
    for j in range(i + 1, n):
        if s[j] < 0x30 or s[j] > 0x39:
            return False
    return True


def valid_host(bytes value not None, /):
    """Is ``value`` a valid Host field value (RFC 9110 §7.2: uri-host [":" port])?

    A reg-name or IPv4 address, or an IPv6 address in brackets, then an optional port of
    at most 5 digits; the empty value is allowed. Anything else -- a space, userinfo
    (``@``), a path, a zone id, junk -- is a 400 for the caller (RFC 9112 §3.2)."""
    return _valid_host(<const unsigned char*>PyBytes_AS_STRING(value), PyBytes_GET_SIZE(value))


cdef inline int _connection_option(const unsigned char* s, Py_ssize_t n) noexcept nogil:
    # _CONN_CLOSE / _CONN_KEEP_ALIVE for a Connection value that is exactly that one option
    # (any case; leading OWS is already gone, trailing OWS is trimmed here), else 0.
    while n > 0 and (s[n - 1] == 0x20 or s[n - 1] == 0x09):
        n -= 1
    if n == 5 and _ieq(s, b"close", 5):
        return _CONN_CLOSE
    if n == 10 and _ieq(s, b"keep-alive", 10):
        return _CONN_KEEP_ALIVE
    return 0
