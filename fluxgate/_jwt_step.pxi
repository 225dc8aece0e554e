# Included into _core.pyx (by _jwt.pxi): the jwt middleware's per-request entry, compiled.
#
# A route calls each middleware once per request; as a Python __call__ that was a frame, a
# few attribute loads and a second call into JwtVerifier.authenticate_bearer for what is,
# on nearly every request, one bearer token looked up in (or added to) the verified-token
# cache. JwtStep does that case here and hands every other one to the Python subclass
# (fluxgate/middleware/jwt.py), which keeps the whole policy: ``_slow_call`` for a request
# without an ``Authorization: Bearer`` header (a cookie or query token, or none), ``_refuse``
# for an invalid, empty or ambiguous one, ``_failed`` for an unexpected error,
# ``_check_scopes`` where the route requires scopes.

from posix.time cimport CLOCK_REALTIME, clock_gettime, timespec

__all__ += ("JwtStep",)


cdef inline double _wall_now() noexcept nogil:
    # time.time()'s clock, without the float object.
    cdef timespec ts
    clock_gettime(CLOCK_REALTIME, &ts)
    return <double>ts.tv_sec + <double>ts.tv_nsec * 1e-9


cdef class JwtStep:
    """The compiled base of the jwt middleware: ``step(req)`` authenticates the request's
    bearer token with ``verifier`` and sets ``req.principal`` (None: the request goes on),
    or returns the refusal the subclass makes. The subclass defines ``_slow_call(req)``,
    ``_refuse(err)``, ``_failed()`` and ``_check_scopes(req, principal)``."""

    cdef public JwtVerifier verifier
    cdef object _scopes
    cdef bint _scoped                # scopes.active, read when scopes is set, not per request

    @property
    def scopes(self):
        """The route's scope rules; ``active`` False when no scope is ever required."""
        return self._scopes

    @scopes.setter
    def scopes(self, value):
        self._scopes = value
        self._scoped = value.active

    def __call__(self, req):
        if type(req) is not RequestState or self.verifier is None:
            return self._slow_call(req)
        headers = (<RequestState>req).headers
        if type(headers) is not list:
            return self._slow_call(req)
        try:
            # TokenError for several Authorization headers or an empty token, as _slow_call
            principal = self.verifier._bearer_principal(<list>headers, _wall_now())
        except TokenError as err:
            return self._refuse(err)
        except Exception:  # never a 500 for what a client sent
            return self._failed()
        if principal is None:
            return self._slow_call(req)  # no bearer token: the cookie or query parameter
        if self._scoped:
            return self._check_scopes(req, principal)
        (<RequestState>req).principal = principal
        return None
