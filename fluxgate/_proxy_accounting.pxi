# The end of every request (included by _proxy.pyx; contract in _proxy_accounting.pxd).

from posix.time cimport CLOCK_MONOTONIC, clock_gettime, timespec


cdef double monotonic() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return ts.tv_sec + ts.tv_nsec * 1e-9


def now():
    """monotonic() for Python: when a request began (RequestState.started)."""
    return monotonic()


cdef class Accounting:
    """Counts a finished request in the shared metrics table and the access log; one per
    worker (Gateway.accounting). Query strings can carry credentials (``?api_key=``), so
    the access log has only the path."""

    def __init__(self, RequestRecorder recorder, access_log):
        self._recorder = recorder
        self._access_log = access_log

    cpdef record(self, RequestState req):
        """Count ``req``, finished now: its status and latency under its route's slot."""
        cdef double seconds = monotonic() - <double>req.started
        cdef RouteBase route = req.route
        cdef Py_ssize_t slot = route.slot if route is not None else 0
        if self._recorder is not None:
            self._recorder.record(slot, req.status, seconds)
        if self._access_log is not None:
            self._access_log.add(
                "%s %s %s %d %.1fms %s\n"
                % (
                    req.client_ip or "-",
                    req.method.decode("latin-1") or "-",
                    (req.path or b"-").decode("latin-1"),
                    req.status,
                    seconds * 1000.0,
                    req.request_id.decode("latin-1") or "-",
                )
            )
