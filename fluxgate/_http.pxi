# HTTP/1.1 request state for the data plane (included by _core.pyx).
#
# RequestState is the per-request context every stage reads and writes (the protocol,
# the middleware chain, the exchange). It is a C struct with Python-visible fields so that
# the head parser in this module fills it without a Python call per field, and creating one
# costs a single allocation plus its four lists.


cdef class RequestState:
    """Everything about one request: method, target, headers, framing, auth result, status."""

    cdef public double started
    cdef public bytes method
    cdef public int http_minor
    cdef public bint keep_alive
    cdef public object upgrade           # bytes | None: b"websocket" once accepted
    cdef public bint reparse             # an Upgrade the gateway declines (h2c): parse on
    cdef public bint chunked
    cdef public object content_length    # int (llhttp may report up to 2**64 - 1)
    cdef public bint has_body
    cdef public Py_ssize_t body_bytes
    cdef public bint message_complete
    cdef public bint response_done
    cdef public object exchange          # Exchange | None
    cdef public bint close_after
    cdef public int status
    cdef public bytes request_id
    cdef public object route             # CompiledRoute | None
    cdef public bytes path
    cdef public bytes query
    cdef public str client_ip
    cdef public bint peer_trusted
    cdef public object principal         # Principal | None
    cdef public bint expect_continue
    cdef public object host              # bytes | None
    cdef public object forwarded_for     # bytes | None
    cdef public object forwarded_proto   # bytes | None
    cdef public object client_request_id  # bytes | None
    cdef public object connection        # bytes | None: Connection header values, joined
    cdef public int hosts
    cdef public object transfer_encoding  # bytes | None
    cdef public object upgrade_token     # bytes | None
    cdef public bint finished
    cdef public bytes url
    cdef public Py_ssize_t header_bytes
    cdef public list headers             # [(name, value)] as the client sent them
    cdef public list lines               # forwardable header lines, b"Name: value\r\n"
    cdef public list body_buffer
    cdef public list response_headers    # [(name, value)] added to the client's response

    def __cinit__(self, double started=0.0):
        self.started = started
        self.method = b""
        self.http_minor = 1
        self.keep_alive = True
        self.upgrade = None
        self.content_length = 0
        self.exchange = None
        self.request_id = b""
        self.route = None
        self.path = b""
        self.query = b""
        self.client_ip = ""
        self.principal = None
        self.host = None
        self.forwarded_for = None
        self.forwarded_proto = None
        self.client_request_id = None
        self.connection = None
        self.transfer_encoding = None
        self.upgrade_token = None
        self.url = b""
        self.headers = []
        self.lines = []
        self.body_buffer = []
        self.response_headers = []
