# Included into _core.pyx: the principal, who a request is whatever method proved it
# (fluxgate/auth/principal.py is its Python home and documents it).
#
# Compiled because a jwt route builds one per newly verified token from a new caller
# (JwtPrincipals, _jwt.pxi): as a Python class its construction was the largest Python
# cost of a verified-token cache miss. Its header lines are formatted here once, for every
# request of its credentials to copy (_http.pxi reads ``upstream_lines``).

cimport cython
from cpython.unicode cimport PyUnicode_DATA, PyUnicode_GET_LENGTH
from libc.string cimport memcpy

cdef extern from "Python.h":
    bint PyUnicode_IS_ASCII(object o)

cdef bytes _AUTH_LINE = b"X-FluxGate-Auth: "
cdef bytes _SUBJECT_LINE = b"\r\nX-FluxGate-Subject: "
cdef bytes _SCOPES_LINE = b"\r\nX-FluxGate-Scopes: "
# The head of a jwt principal's lines, up to its subject.
cdef bytes _JWT_LINES_HEAD = b"X-FluxGate-Auth: jwt\r\nX-FluxGate-Subject: "


cdef bytes _header_safe(str text):
    # A header value that cannot split the head: only printable ASCII (0x20-0x7E) is kept,
    # controls and anything beyond ASCII are dropped.
    cdef Py_ssize_t n = PyUnicode_GET_LENGTH(text), i, k = 0
    cdef const unsigned char* p
    cdef Py_UCS4 ch
    cdef bytes out
    cdef char* q
    if PyUnicode_IS_ASCII(text):
        p = <const unsigned char*>PyUnicode_DATA(text)
        for i in range(n):
            if not 0x20 <= p[i] <= 0x7E:
                break
        else:  # the common case: nothing to drop
            return PyBytes_FromStringAndSize(<const char*>p, n)
    out = PyBytes_FromStringAndSize(NULL, n)
    q = PyBytes_AS_STRING(out)
    for ch in text:
        if 0x20 <= ch <= 0x7E:
            q[k] = <char>ch
            k += 1
    return PyBytes_FromStringAndSize(q, k)


cdef bytes _scopes_value(object scopes):
    # The X-FluxGate-Scopes value: the scopes sorted, space-separated (empty for none).
    return _header_safe(" ".join(sorted(scopes))) if scopes else b""


cdef bytes _principal_lines(bytes head, bytes subject, bytes scopes, tuple claims_headers):
    # head + subject, then the scopes line and one line per forwarded claim, each ending
    # in CRLF: what the upstream request head carries. One allocation without claims.
    cdef Py_ssize_t hn = PyBytes_GET_SIZE(head), sn = PyBytes_GET_SIZE(subject)
    cdef Py_ssize_t cn = PyBytes_GET_SIZE(scopes)
    cdef Py_ssize_t ln = PyBytes_GET_SIZE(_SCOPES_LINE)
    cdef bytes out
    cdef char* q
    if claims_headers:
        parts = [head, subject, _SCOPES_LINE, scopes, b"\r\n"]
        for name, value in claims_headers:
            parts += (name, b": ", value, b"\r\n")
        return b"".join(parts)
    out = PyBytes_FromStringAndSize(NULL, hn + sn + ln + cn + 2)
    q = PyBytes_AS_STRING(out)
    memcpy(q, PyBytes_AS_STRING(head), hn)
    memcpy(q + hn, PyBytes_AS_STRING(subject), sn)
    memcpy(q + hn + sn, PyBytes_AS_STRING(_SCOPES_LINE), ln)
    memcpy(q + hn + sn + ln, PyBytes_AS_STRING(scopes), cn)
    memcpy(q + hn + sn + ln + cn, b"\r\n", 2)
    return out


@cython.no_gc
cdef class Principal:
    """An authenticated caller; treat as immutable (it is shared by every request of a
    cached credential).

    ``Principal(id, method, subject, scopes=frozenset(), key_name=None,
    claims_headers=())``: ``id`` the stable identity quotas count by (``jwt:<iss>|<sub>``,
    ``key:<name>``), ``method`` ``jwt``, ``oauth2`` or ``api_key`` (the X-FluxGate-Auth
    value), ``subject`` the sub claim or key name (X-FluxGate-Subject), ``claims_headers``
    the forward_claims headers, encoded. ``upstream_lines``: the X-FluxGate-* headers as
    the upstream request head carries them.

    Outside the cycle collector: it holds strings, bytes, a frozenset and tuples of bytes,
    in no cycle, and the verified-token cache keeps one with each of up to 16,384 tokens
    for every full collection to walk otherwise.
    """

    cdef public object id
    cdef public object method
    cdef public object subject
    cdef public object scopes
    cdef public object key_name
    cdef public object claims_headers
    cdef public object upstream_lines

    def __init__(self, id, method, subject, scopes=frozenset(), key_name=None,
                 claims_headers=()):
        self.id = id
        self.method = method
        self.subject = subject
        self.scopes = scopes
        self.key_name = key_name
        self.claims_headers = claims_headers
        self.upstream_lines = _principal_lines(
            _AUTH_LINE + (<str?>method).encode() + _SUBJECT_LINE, _header_safe(subject),
            _scopes_value(scopes), tuple(claims_headers))

    def upstream_headers(self):
        """The X-FluxGate-* headers the upstream receives, as (name, value) pairs."""
        return [
            (b"X-FluxGate-Auth", (<str?>self.method).encode()),
            (b"X-FluxGate-Subject", _header_safe(self.subject)),
            (b"X-FluxGate-Scopes", _scopes_value(self.scopes)),
            *self.claims_headers,
        ]

    def __eq__(self, other):
        cdef Principal o
        if not isinstance(other, Principal):
            return NotImplemented
        o = <Principal>other
        return ((self.id, self.method, self.subject, self.scopes, self.key_name,
                 self.claims_headers)
                == (o.id, o.method, o.subject, o.scopes, o.key_name, o.claims_headers))

    def __hash__(self):
        return hash((self.id, self.method, self.subject, self.scopes, self.key_name))

    def __repr__(self):
        return (f"Principal(id={self.id!r}, method={self.method!r}, "
                f"scopes={sorted(self.scopes)!r})")


cdef Principal _jwt_principal(object issuer, str subject, object scopes, bytes scopes_value,
                              tuple claims_headers):
    # A jwt principal, as Principal(f"jwt:{issuer}|{subject}", "jwt", subject, scopes,
    # claims_headers=claims_headers) builds it, without the Python call.
    cdef Principal p = Principal.__new__(Principal)
    p.id = f"jwt:{issuer}|{subject}"
    p.method = "jwt"
    p.subject = subject
    p.scopes = scopes
    p.claims_headers = claims_headers
    p.upstream_lines = _principal_lines(_JWT_LINES_HEAD, _header_safe(subject), scopes_value,
                                        claims_headers)
    return p
