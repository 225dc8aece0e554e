# The end of every request: the shared metrics and the access log
# (a section of fluxgate/_proxy.pyx), and the clock the data plane reads.

# CLOCK_MONOTONIC in seconds, read without a Python call: the clock of time.perf_counter
# and of the event loop (asyncio's time.monotonic, uvloop's uv_now) on Linux, so the
# deadlines set here compare with the worker's sweep's loop.time().
cdef double monotonic() noexcept nogil


cdef class Accounting:
    cdef RequestRecorder _recorder     # the shared metrics table's, or None
    cdef object _access_log            # AccessLog when it writes somewhere, else None
    cdef list _lines                   # its lines waiting for the flush, or None
    cdef bint _json                    # its format: JSON objects, else text lines
    cdef long _second                  # the second _second_text spells
    cdef char _second_text[24]         # "2026-12-07T04:31:36" (UTC)

    cpdef record(self, RequestState req, Py_ssize_t sent=*)
    cdef bytes _line(self, RequestState req, RouteBase route, double seconds,
                     double upstream, Py_ssize_t sent)
