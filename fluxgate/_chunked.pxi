# Included into _core.pyx: the framing of a chunked request body, followed beside llhttp.
#
# llhttp (httptools) parses chunk extensions and trailer fields but bounds neither and
# reports no extension, so a client could send an endless chunk-size line, one byte of
# data at a time behind megabytes of extensions. RFC 9112 §7.1.1: "A server ought to limit
# the total length of chunk extensions received in a request to an amount reasonable for
# the services provided ... and generate an appropriate 4xx (Client Error) response if
# that amount is exceeded."
#
# ChunkedBody is given the very bytes llhttp is given, from the first one after the head
# (the protocol splits its reads there): it skips chunk data by the announced size and
# measures each chunk-size line (the size, its extensions) and the trailer section. It
# decides nothing else -- llhttp still parses every byte and refuses what is malformed --
# it only says where the body ends (so the protocol knows which bytes are the next
# request's) and when a line or the trailers outgrew their bound. One pass in C; chunk
# data costs one subtraction per read, whatever its size.

cdef enum:
    _CB_SIZE = 0       # in a chunk-size line: chunk-size [ chunk-ext ] CRLF
    _CB_DATA = 1       # in chunk data
    _CB_DATA_END = 2   # the CRLF after chunk data
    _CB_TRAILER = 3    # in the trailer section, after the last chunk
    _CB_DONE = 4

CHUNK_LINE_TOO_LONG = -1
CHUNK_TRAILERS_TOO_LARGE = -2


cdef class ChunkedBody:
    """Follows one chunked request body (RFC 9112 §7.1) to bound its chunk-size lines at
    ``max_line`` bytes (CRLF excluded) and its trailer section at ``max_trailers``."""

    cdef int _state
    cdef uint64_t _remaining  # data bytes left in the current chunk
    cdef uint64_t _size       # the chunk size read so far from the current line
    cdef bint _in_size        # still reading the size's hex digits
    cdef Py_ssize_t _line     # bytes of the current line so far, its LF excluded
    cdef Py_ssize_t _trailers
    cdef Py_ssize_t _max_line
    cdef Py_ssize_t _max_trailers

    def __cinit__(self, Py_ssize_t max_line, Py_ssize_t max_trailers):
        self._state = _CB_SIZE
        self._in_size = True
        self._max_line = max_line
        self._max_trailers = max_trailers

    @property
    def done(self):
        """The body's last byte (the trailer section's empty line) has been seen."""
        return self._state == _CB_DONE

    def scan(self, bytes data not None, Py_ssize_t start=0):
        """Follow ``data[start:]``: the offset just past the body's end when it ends in
        ``data``, else ``len(data)``; CHUNK_LINE_TOO_LONG (-1) or CHUNK_TRAILERS_TOO_LARGE
        (-2) as soon as a bound is passed."""
        cdef const unsigned char* p = <const unsigned char*>PyBytes_AS_STRING(data)
        cdef Py_ssize_t n = PyBytes_GET_SIZE(data), i = start
        cdef uint64_t take
        cdef unsigned char c, v
        if start < 0 or start > n:
            raise ValueError("start outside data")
        while i < n:
            if self._state == _CB_DATA:
                take = <uint64_t>(n - i)
                if take > self._remaining:
                    take = self._remaining
                i += <Py_ssize_t>take
                self._remaining -= take
                if self._remaining == 0:
                    self._state = _CB_DATA_END
                    self._line = 0
                continue
            if self._state == _CB_DONE:
                return i
            c = p[i]
            i += 1
            if c != b"\n":
                self._line += 1
                if self._state == _CB_SIZE:
                    if self._line > self._max_line + 1:  # + the CR before its LF
                        return CHUNK_LINE_TOO_LONG
                    v = _HEXVAL[c]
                    if self._in_size and v != 0xFF and self._size >> 60 == 0:
                        self._size = (self._size << 4) | v
                    else:
                        self._in_size = False  # ";" starts the extensions (or llhttp errs)
                elif self._state == _CB_TRAILER:
                    self._trailers += 1
                    if self._trailers > self._max_trailers:
                        return CHUNK_TRAILERS_TOO_LARGE
                elif self._line > 2:
                    return CHUNK_LINE_TOO_LONG  # not the CRLF after data: llhttp errs too
                continue
            # A line ends (llhttp itself refuses a bare LF or a CR elsewhere than before it).
            if self._state == _CB_SIZE:
                if self._size == 0:
                    self._state = _CB_TRAILER
                else:
                    self._state = _CB_DATA
                    self._remaining = self._size
                self._size = 0
                self._in_size = True
            elif self._state == _CB_DATA_END:
                self._state = _CB_SIZE
            elif self._line <= 1:  # an empty line ("\r\n") ends the trailer section
                self._state = _CB_DONE
                return i
            self._line = 0
        return n
