"""One error tree for FluxGate.

Client-facing errors carry the HTTP status and the stable snake_case code documented in README (HTTP behaviour);
only ``fluxgate.proxy.responses`` turns them into bytes.
"""

from __future__ import annotations


class FluxGateError(Exception):
    """Base of every error FluxGate raises on purpose."""


class ConfigError(FluxGateError):
    """The configuration is invalid; the message names the key path (and line when known)."""

    def __init__(self, message: str, path: str = "", line: int | None = None) -> None:
        self.path = path
        self.line = line
        where = path
        if line is not None:
            where = f"{path} (line {line})" if path else f"line {line}"
        super().__init__(f"{where}: {message}" if where else message)


class ClientError(FluxGateError):
    """An error answered to the client with a local reply (JSON body)."""

    status = 400
    code = "bad_request"
    close_connection = False
    # A reply with a body of its own (a login page, a redirect) instead of the JSON error.
    body: bytes | None = None
    content_type = b"application/json"

    def __init__(self, description: str = "", *, headers: tuple[tuple[bytes, bytes], ...] = ()):
        self.description = description or self.__class__.__doc__ or self.code
        self.headers = headers
        super().__init__(self.description)


class BadRequest(ClientError):
    """Malformed or ambiguous request."""

    status, code, close_connection = 400, "bad_request", True


class NoRoute(ClientError):
    """No route matches this path."""

    status, code = 404, "no_route"


class MethodNotAllowed(ClientError):
    """This route does not accept this method."""

    status, code = 405, "method_not_allowed"


class IpNotAllowed(ClientError):
    """The client address is not in this route's allowlist."""

    status, code = 403, "ip_not_allowed"


class ExpectationFailed(ClientError):
    """Only `Expect: 100-continue` is understood (RFC 9110 §10.1.1)."""

    status, code, close_connection = 417, "expectation_failed", True


class BodyTooLarge(ClientError):
    """The request body exceeds limits.max_body_bytes."""

    status, code, close_connection = 413, "body_too_large", True


class HeadersTooLarge(ClientError):
    """The request headers exceed limits.max_header_bytes."""

    status, code, close_connection = 431, "headers_too_large", True


class HttpVersionNotSupported(ClientError):
    """The gateway speaks HTTP/1.1 (and 1.0) to clients: an HTTP/2 connection preface gets
    this answer, in HTTP/1.1, and the connection closes."""

    status, code, close_connection = 505, "http_version_not_supported", True


class InternalError(ClientError):
    """The gateway failed to process this request; it was not forwarded."""

    status, code, close_connection = 500, "internal_error", True


class UpstreamUnavailable(ClientError):
    """The upstream could not be reached."""

    status, code = 502, "upstream_unavailable"


class UpstreamTimeout(ClientError):
    """The upstream did not answer in time."""

    status, code = 504, "upstream_timeout"


class PathError(BadRequest, ValueError):
    """Malformed or ambiguous request path; raised by ``_core.normalize_path``.

    The message framing is intact, so the connection may stay open.
    """

    close_connection = False


class B64Error(FluxGateError, ValueError):
    """Not strict, canonical, unpadded base64url (RFC 4648 §5); raised by ``_core``.

    Not client-facing by itself: the caller decides (a JWT segment → 401 invalid_token).
    """


class TokenError(FluxGateError, ValueError):
    """A JWT failed verification; raised by ``_core.JwtVerifier``.

    ``reason`` is a stable snake_case code for logs and metrics (``malformed``,
    ``alg_not_allowed``, ``unknown_kid``, ``bad_signature``, ``expired``, ...); ``kid`` is the
    token's key id when the reason is ``unknown_kid``. Not client-facing by itself: the jwt
    middleware answers 401 invalid_token (or 503 when no keys could ever be fetched).
    """

    def __init__(self, reason: str, kid: str | None = None) -> None:
        self.reason = reason
        self.kid = kid
        super().__init__(reason)


class KeyStoreError(FluxGateError):
    """An API key operation was refused (unknown name, duplicate, bad value); the message
    is meant for the operator (fluxctl, the admin API)."""


def _bearer_challenge(error: str = "", scope: str = "") -> tuple[tuple[bytes, bytes], ...]:
    """RFC 6750 §3: the WWW-Authenticate challenge of a 401/403 bearer error (§3.1: a request
    without credentials gets the challenge but no error code)."""
    value = 'Bearer realm="fluxgate"'
    if error:
        value += f', error="{error}"'
    if scope:
        value += f', scope="{scope}"'
    return ((b"WWW-Authenticate", value.encode()),)


_NO_CREDENTIALS_CHALLENGE = _bearer_challenge()
_INVALID_TOKEN_CHALLENGE = _bearer_challenge("invalid_token")

Challenge = tuple[tuple[bytes, bytes], ...]


def api_key_challenge(header: str, error: str = "", scope: str = "") -> Challenge:
    """The WWW-Authenticate challenge of a refusal on an API-key route: the ``ApiKey``
    scheme naming the header the key goes in, so a client is not sent looking for a
    bearer token (RFC 9110 §11.6.1: a scheme defines its own parameters; docs/api-keys.md).

    ``ApiKey realm="fluxgate", header="X-API-Key"[, error="invalid_key"][, scope="..."]``
    """
    value = f'ApiKey realm="fluxgate", header="{header}"'
    if error:
        value += f', error="{error}"'
    if scope:
        value += f', scope="{scope}"'
    return ((b"WWW-Authenticate", value.encode()),)


class MissingCredentials(ClientError):
    """This route requires credentials and the request carries none."""

    status, code = 401, "missing_credentials"

    def __init__(self, description: str = "", *, challenge: Challenge | None = None) -> None:
        super().__init__(description, headers=challenge or _NO_CREDENTIALS_CHALLENGE)


class InvalidToken(ClientError):
    """The bearer token is invalid, expired or not meant for this route."""

    status, code = 401, "invalid_token"

    def __init__(self, description: str = "", *, reason: str = "invalid") -> None:
        # `reason` is the stable machine code for logs and metrics; the client sees only a
        # generic description so a probe learns nothing about which check failed.
        self.reason = reason
        super().__init__(description, headers=_INVALID_TOKEN_CHALLENGE)


class InvalidKey(ClientError):
    """The API key is invalid, expired or revoked."""

    status, code = 401, "invalid_key"

    def __init__(self, description: str = "", *, reason: str = "invalid",
                 challenge: Challenge | None = None) -> None:
        self.reason = reason
        super().__init__(description, headers=challenge or _INVALID_TOKEN_CHALLENGE)


class InsufficientScope(ClientError):
    """The credential lacks a scope this route requires."""

    status, code = 403, "insufficient_scope"

    def __init__(self, description: str = "", *, scope: str = "",
                 challenge: Challenge | None = None) -> None:
        super().__init__(description,
                         headers=challenge or _bearer_challenge("insufficient_scope", scope))


class QuotaExceeded(ClientError):
    """The quota for this window is used up."""

    status, code = 429, "quota_exceeded"


class QuotaStoreUnavailable(ClientError):
    """Cluster mode with ``on_store_down: deny``: Redis cannot be reached and this node
    holds no unspent lease of the quota, so whether the budget is spent is unknown."""

    status, code = 503, "quota_store_unavailable"


class LocalReply(ClientError):
    """A reply the gateway writes itself that is not an error of the request: a step of
    the browser login (a redirect, a page), an answer of a gateway endpoint."""

    def __init__(self, status: int, code: str, body: bytes = b"", *,
                 content_type: bytes = b"text/html; charset=utf-8",
                 headers: tuple[tuple[bytes, bytes], ...] = ()) -> None:
        super().__init__(code, headers=headers)
        self.status = status
        self.code = code
        self.body = body
        self.content_type = content_type


class AuthServerUnavailable(ClientError):
    """The authorization server could not be reached; the gateway fails closed."""

    status, code = 503, "auth_server_unavailable"
