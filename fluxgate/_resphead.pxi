# Upstream response fast path (included by _core.pyx).
#
# parse_response_head(data, head_request) parses, in one C call, a complete and simple
# upstream response that arrived in one read, so the data plane skips httptools' Python
# callback per header (UpstreamConnection.on_header/on_headers_complete/on_body/
# on_message_complete). It returns a ResponseHead, or None meaning "slow path": the caller
# then feeds the same bytes to httptools exactly as before, so everything it declines keeps
# its current, tested behaviour (interim 1xx, 101, chunked or close-delimited bodies,
# partial reads, pipelined leftovers, malformed input).
#
# Contract (the safety property against response splitting and desync): whenever a result
# is returned, llhttp accepts the same bytes and sees exactly the same message -- status,
# header names and values, should_keep_alive, body -- ending exactly at len(data). So the
# accepted language is a strict subset of llhttp's, checked against it byte for byte by
# tests/test_core_http_response.py:
#
# * status line: "HTTP/1.1 " or "HTTP/1.0 ", three digits in 200..599, then CRLF or SP +
#   reason (bytes 0x20-0x7E and HTAB, may be empty) + CRLF;
# * header lines: 1+ tchars (RFC 9110 §5.6.2), ":" at once, optional SP/HTAB, a value of
#   0x21-0x7E, SP and HTAB, CRLF. The value is what httptools hands on_header: leading OWS
#   dropped, trailing OWS kept (llhttp keeps it), b"" when empty or all OWS. Anything else
#   -- obs-fold, bare CR or LF, NUL and other controls, bytes >= 0x80 -- is declined;
# * the head (status line to the empty line) is at most 64 KiB;
# * Transfer-Encoding: declined. Content-Length: 1-18 digits, nothing else (llhttp would
#   accept "5 " and report the value with its space), at most once;
# * Connection and Proxy-Connection (llhttp reads both for keep-alive): at most once each,
#   value exactly "close" or "keep-alive" (any case, OWS around). A Connection naming
#   headers needs hdr.drop_lines and goes the slow path;
# * framing: after HEAD, or for 204/304, no body: len(data) == head length. Otherwise
#   Content-Length is required (no close-delimited bodies) and the body is exactly the
#   rest of data, no more, no less.
#
# Forwarding is UpstreamConnection.on_header's: lines whose lower-cased name is in
# fluxgate.proxy.headers.HOP_BY_HOP, or is content-length/transfer-encoding/connection,
# are left out; every other one becomes b"name: value\r\n", in order, joined into one
# bytes object. keep_alive is llhttp_should_keep_alive at headers complete (which knows
# nothing of HEAD, so a HEAD answered without Content-Length says False, as today).

from libc.string cimport memcpy

cdef enum:
    _RH_HEAD_MAX = 65536      # longest head taken; a longer one goes to httptools
    _RH_STACK_OUT = 8192      # `lines` built on the stack for heads up to 6 KiB

    # What a header name means here (_rh_name_kind).
    _RH_FORWARD = 0
    _RH_HOP = 1               # dropped, no other effect
    _RH_CONTENT_LENGTH = 2
    _RH_TRANSFER_ENCODING = 3
    _RH_CONNECTION = 4        # dropped; its token sets keep-alive flags
    _RH_PROXY_CONNECTION = 5  # dropped (hop-by-hop); llhttp reads it like Connection

# Header names, values and lower-casing: the shared tables of _http.pxi.
cdef unsigned char _RH_RCHAR[256]    # reason-phrase byte: 0x20-0x7E, HTAB


cdef int _init_resphead_tables() except -1:
    cdef int c
    for c in range(256):
        _RH_RCHAR[c] = 0x20 <= c <= 0x7E or c == b"\t"
    return 0


_init_resphead_tables()


cdef struct _RespParse:
    int status
    int minor
    int flags                     # _CONN_* seen in Connection / Proxy-Connection
    bint keep_alive
    Py_ssize_t head_len
    Py_ssize_t cl_start           # span of the Content-Length digits; cl_len 0: none
    Py_ssize_t cl_len
    Py_ssize_t content_length
    Py_ssize_t out_len            # bytes of `lines` written


cdef inline int _rh_name_kind(const unsigned char* p, Py_ssize_t n) noexcept nogil:
    # The names UpstreamConnection.on_header sets aside: HOP_BY_HOP plus the framing
    # headers. Length first, so most names cost one switch and no comparison.
    if n == 2:
        return _RH_HOP if _ieq(p, "te", 2) else _RH_FORWARD
    if n == 7:
        return _RH_HOP if _ieq(p, "upgrade", 7) or _ieq(p, "trailer", 7) else _RH_FORWARD
    if n == 10:
        if _ieq(p, "connection", 10):
            return _RH_CONNECTION
        return _RH_HOP if _ieq(p, "keep-alive", 10) else _RH_FORWARD
    if n == 14:
        return _RH_CONTENT_LENGTH if _ieq(p, "content-length", 14) else _RH_FORWARD
    if n == 16:
        return _RH_PROXY_CONNECTION if _ieq(p, "proxy-connection", 16) else _RH_FORWARD
    if n == 17:
        return _RH_TRANSFER_ENCODING if _ieq(p, "transfer-encoding", 17) else _RH_FORWARD
    if n == 18:
        return _RH_HOP if _ieq(p, "proxy-authenticate", 18) else _RH_FORWARD
    if n == 19:
        return _RH_HOP if _ieq(p, "proxy-authorization", 19) else _RH_FORWARD
    return _RH_FORWARD


cdef int _rh_parse(const unsigned char* p, Py_ssize_t n, bint head_request,
                   unsigned char* out, Py_ssize_t out_cap, _RespParse* r) noexcept nogil:
    # 0: a fast-path response, r and out[0:r.out_len] filled; -1: slow path; -2: `out`
    # is too small (only when out_cap < 2 * head length; the caller retries bigger).
    cdef Py_ssize_t lim = n if n < _RH_HEAD_MAX else _RH_HEAD_MAX
    cdef Py_ssize_t i, name_start, name_len, val_start, val_len, o = 0
    cdef int kind, flag, seen = 0
    cdef long long cl
    cdef bint no_body, needs_eof

    r.flags = 0
    r.cl_len = 0
    r.content_length = 0

    # Status line. The shortest complete response is "HTTP/1.1 200\r\n\r\n" (16 bytes).
    if lim < 16 or memcmp(p, b"HTTP/1.", 7) != 0 or p[8] != b" ":
        return -1
    if p[7] == b"1":
        r.minor = 1
    elif p[7] == b"0":
        r.minor = 0
    else:
        return -1
    if not (b"2" <= p[9] <= b"5" and b"0" <= p[10] <= b"9" and b"0" <= p[11] <= b"9"):
        return -1  # 1xx (interim, 101 upgrade) and anything llhttp reads otherwise
    r.status = (p[9] - c'0') * 100 + (p[10] - c'0') * 10 + (p[11] - c'0')
    i = 12
    if p[i] == b" ":
        i += 1
        while i < lim and _RH_RCHAR[p[i]]:
            i += 1
    if i + 1 >= lim or p[i] != b"\r" or p[i + 1] != b"\n":
        return -1
    i += 2

    # Header lines, up to the empty line.
    while True:
        if i + 1 >= lim:
            return -1  # partial head, or longer than _RH_HEAD_MAX
        if p[i] == b"\r":
            if p[i + 1] != b"\n":
                return -1
            i += 2
            break
        name_start = i
        while i < lim and _TCHAR[p[i]]:
            i += 1
        name_len = i - name_start
        if name_len == 0 or i >= lim or p[i] != b":":
            return -1  # obs-fold, space before ':', empty name, bare LF, ...
        i += 1
        while i < lim and (p[i] == b" " or p[i] == b"\t"):
            i += 1
        val_start = i
        while i < lim and _FIELD_VALUE[p[i]]:
            i += 1
        if i + 1 >= lim or p[i] != b"\r" or p[i + 1] != b"\n":
            return -1
        val_len = i - val_start
        i += 2

        kind = _rh_name_kind(p + name_start, name_len)
        if kind == _RH_FORWARD:
            # name ": " value CRLF is at most one byte longer than its line (":" with no
            # OWS), and a line is at least 4 bytes, so 2 * head length always fits.
            if o + name_len + val_len + 4 > out_cap:
                return -2
            memcpy(out + o, p + name_start, name_len)
            o += name_len
            out[o] = b":"
            out[o + 1] = b" "
            o += 2
            memcpy(out + o, p + val_start, val_len)
            o += val_len
            out[o] = b"\r"
            out[o + 1] = b"\n"
            o += 2
        elif kind == _RH_HOP:
            pass
        elif kind == _RH_CONTENT_LENGTH:
            # llhttp refuses a second one; a value with OWS or signs is left to it too.
            if r.cl_len != 0 or not _content_length(p + val_start, val_len, &cl):
                return -1
            r.content_length = <Py_ssize_t>cl
            r.cl_start = val_start
            r.cl_len = val_len
        elif kind == _RH_TRANSFER_ENCODING:
            return -1
        else:
            # Connection / Proxy-Connection: once each (a second Connection would join to
            # "a,b", not one token), and only the two options llhttp acts on.
            if seen & (1 << kind):
                return -1
            seen |= 1 << kind
            flag = _connection_option(p + val_start, val_len)
            if flag == 0:
                return -1
            r.flags |= flag

    r.head_len = i
    r.out_len = o

    # Framing. llhttp skips the body of 204/304 even with a Content-Length; HEAD it cannot
    # know about (the caller stops it at headers complete), so both end at the head.
    no_body = head_request or r.status == 204 or r.status == 304
    if no_body:
        if n != i:
            return -1
    elif r.cl_len == 0 or n - i != r.content_length:
        return -1  # close-delimited, partial body, or bytes of a next message

    # llhttp_should_keep_alive: HTTP/1.1 unless "close", HTTP/1.0 only with "keep-alive",
    # and never when the message would need EOF (no framing on a status with a body).
    needs_eof = r.cl_len == 0 and r.status != 204 and r.status != 304
    if r.minor == 1:
        r.keep_alive = not (r.flags & _CONN_CLOSE) and not needs_eof
    else:
        r.keep_alive = (r.flags & _CONN_KEEP_ALIVE) != 0 and not needs_eof
    return 0


cdef class ResponseHead:
    """A complete upstream response taken by parse_response_head (fields read-only)."""

    # The fields are declared in _core.pxd: Python-object fields behind read-only member
    # descriptors (_as_member_fields in _http.pxi): the exchange reads all six once per
    # response, and CPython 3.11 takes the generic attribute lookup for the getset
    # properties `cdef readonly` would give.

    def __repr__(self):
        return (
            f"ResponseHead(status={self.status}, lines={self.lines!r}, "
            f"content_length={self.content_length!r}, keep_alive={self.keep_alive}, "
            f"body_start={self.body_start}, body_length={self.body_length})"
        )


_as_member_fields(ResponseHead, readonly=True)

RH_FORWARD = _RH_FORWARD
RH_CONTENT_LENGTH = _RH_CONTENT_LENGTH
RH_TRANSFER_ENCODING = _RH_TRANSFER_ENCODING
RH_CONNECTION = _RH_CONNECTION


def response_header_kind(bytes name not None):
    """What the gateway does with an upstream response header: RH_FORWARD, RH_CONTENT_LENGTH,
    RH_TRANSFER_ENCODING, RH_CONNECTION, or another value for a hop-by-hop header that is
    only dropped (the table parse_response_head uses, for llhttp's path)."""
    return _rh_name_kind(<const unsigned char*>PyBytes_AS_STRING(name), PyBytes_GET_SIZE(name))


def parse_response_head(bytes data not None, bint head_request):
    """A ResponseHead for a complete, simple response in ``data``; None: use httptools."""
    return parse_response_head_c(data, head_request)


cdef ResponseHead parse_response_head_c(bytes data, bint head_request):
    # parse_response_head for Cython callers (fluxgate/_proxy.pyx); data not None.
    cdef const unsigned char* p = <const unsigned char*>PyBytes_AS_STRING(data)
    cdef Py_ssize_t n = PyBytes_GET_SIZE(data)
    cdef unsigned char stack_out[_RH_STACK_OUT]
    cdef unsigned char* out = stack_out
    cdef _RespParse r
    cdef int rc
    cdef ResponseHead head

    rc = _rh_parse(p, n, head_request, out, _RH_STACK_OUT, &r)
    if rc == -2:
        # A long head (over 6 KiB); 2 * _RH_HEAD_MAX bounds `lines` for any head taken.
        out = <unsigned char*>PyMem_Malloc(2 * _RH_HEAD_MAX)
        if out == NULL:
            raise MemoryError()
        rc = _rh_parse(p, n, head_request, out, 2 * _RH_HEAD_MAX, &r)
    try:
        if rc != 0:
            return None
        head = ResponseHead.__new__(ResponseHead)
        head.status = r.status
        head.lines = PyBytes_FromStringAndSize(<char*>out, r.out_len) if r.out_len else b""
        head.content_length = (
            PyBytes_FromStringAndSize(<char*>p + r.cl_start, r.cl_len) if r.cl_len else None
        )
        head.keep_alive = r.keep_alive
        head.body_start = r.head_len
        head.body_length = n - r.head_len
        return head
    finally:
        if out != stack_out:
            PyMem_Free(out)
