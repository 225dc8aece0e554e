"""A small, strict HTTP/1.1 GET client on the master's event loop, for key documents (JWKS,
OIDC discovery): asyncio streams + llhttp (httptools), nothing else to install.

Chosen over urllib in a thread because the master is one uvloop loop already, and a fetch
must never block it nor hold a thread that cannot be cancelled when the master stops.

Rules: one request per connection (``Connection: close``); https with certificate and host
name verification (``ssl.create_default_context``: the system CAs, or ``SSL_CERT_FILE``);
plain http only where the config allowed it (loopback, checked by
``config.resolve.parse_key_url``); no redirects followed; the whole exchange bounded by
``timeout`` seconds, the head by 64 KiB and the body by ``max_bytes``.

The pieces below the error classes (``parse_url``, ``tls_context``, ``ResponseReader``,
``connect_error``) are shared with the keep-alive pool of ``master/http_pool.py``.
"""

from __future__ import annotations

import asyncio
import ssl
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import httptools

MAX_HEAD_BYTES = 64 * 1024
DEFAULT_TIMEOUT = 10.0
DEFAULT_MAX_BYTES = 1024 * 1024
_SSL_CONTEXT: ssl.SSLContext | None = None


class FetchError(Exception):
    """The document could not be fetched (the message says why; never a secret).

    ``reason`` is a stable code for metrics; subclasses narrow it."""

    reason = "invalid_response"


class Unreachable(FetchError):
    """No connection, or it broke before a response."""

    reason = "unreachable"


class TlsFailure(FetchError):
    """The TLS handshake failed (certificate, host name, protocol)."""

    reason = "tls"


class TooLarge(FetchError):
    """The response head or body is over its bound."""

    reason = "too_large"


@dataclass
class Response:
    status: int
    headers: dict[str, str] = field(default_factory=dict)  # lower-case names, last wins
    body: bytes = b""


@dataclass(frozen=True)
class Target:
    """Where a URL points: ``tls`` for https, ``authority`` as the Host header carries it."""

    tls: bool
    host: str
    port: int
    path: str
    authority: str


def parse_url(url: str) -> Target:
    """Split an http(s) URL; raises FetchError for anything else."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise FetchError(f"unsupported URL {url!r}")
    tls = parts.scheme == "https"
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return Target(tls, parts.hostname, parts.port or (443 if tls else 80), path, parts.netloc)


def tls_context(ca_file: str | None = None) -> ssl.SSLContext:
    """A verifying client context (certificate and host name): the system CAs, built once,
    or only those of ``ca_file``, read now (a rotated file is read again by the next
    caller)."""
    global _SSL_CONTEXT
    if ca_file is not None:
        return ssl.create_default_context(cafile=ca_file)
    if _SSL_CONTEXT is None:
        _SSL_CONTEXT = ssl.create_default_context()
    return _SSL_CONTEXT


def connect_error(host: str, port: int, exc: OSError) -> FetchError:
    """The FetchError for a failed connect or TLS handshake."""
    if isinstance(exc, ssl.SSLError):
        # The reason (CERTIFICATE_VERIFY_FAILED) and, for a certificate, what was wrong.
        detail = getattr(exc, "verify_message", None)
        why = f"{exc.reason}: {detail}" if detail and exc.reason else (detail or exc.reason or exc)
        return TlsFailure(f"TLS handshake with {host} failed: {why}")
    return Unreachable(f"cannot connect to {host}:{port}: {exc.strerror or exc}")


class ResponseReader:
    """httptools callbacks collecting one response, bounded; owns its parser."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.headers: dict[str, str] = {}
        self.body: list[bytes] = []
        self.size = 0
        self.head_size = 0
        self.head_done = False
        self.complete = False
        self.parser = httptools.HttpResponseParser(self)

    def on_header(self, name: bytes, value: bytes) -> None:
        self.head_size += len(name) + len(value)
        if self.head_size > MAX_HEAD_BYTES:
            raise TooLarge("response head too large")
        self.headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        self.head_done = True
        # Refused before reading: a body announced too large will not shrink.
        length = self.headers.get("content-length", "")
        if length.isdigit() and int(length) > self.max_bytes:
            raise TooLarge(f"response body larger than {self.max_bytes} bytes")

    def on_body(self, chunk: bytes) -> None:
        self.size += len(chunk)
        if self.size > self.max_bytes:
            raise TooLarge(f"response body larger than {self.max_bytes} bytes")
        self.body.append(chunk)

    def on_message_complete(self) -> None:
        self.complete = True

    def feed(self, data: bytes) -> None:
        """Parse ``data``; raises FetchError (a bound, or malformed HTTP)."""
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserCallbackError as exc:
            cause = exc.__context__
            if isinstance(cause, FetchError):
                raise cause from None
            raise FetchError(str(cause) if cause else "bad response") from None
        except httptools.HttpParserError as exc:
            raise FetchError(f"malformed HTTP response: {exc}") from None

    def finish_at_eof(self) -> None:
        """The connection closed: raise unless the response is whole."""
        if not self.head_done:
            raise Unreachable("connection closed before a complete response head")
        if not self.complete:
            # Only a body delimited by the close itself may end without llhttp's say-so.
            te = self.headers.get("transfer-encoding", "").lower()
            if "content-length" in self.headers or "chunked" in te:
                raise FetchError("connection closed before the response was complete")

    def response(self) -> Response:
        return Response(self.parser.get_status_code(), self.headers, b"".join(self.body))


async def fetch(
    url: str,
    *,
    headers: dict[str, str] | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> Response:
    """GET ``url``; raises FetchError for anything but a complete HTTP response."""
    target = parse_url(url)
    host, port = target.host, target.port
    lines = [f"GET {target.path} HTTP/1.1", f"Host: {target.authority}",
             "Accept: application/json", "User-Agent: fluxgate", "Connection: close"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    request = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    tls = tls_context() if target.tls else None
    writer = None
    try:
        async with asyncio.timeout(timeout):
            try:
                reader, writer = await asyncio.open_connection(
                    host, port, ssl=tls, server_hostname=host if tls else None,
                    limit=MAX_HEAD_BYTES,
                )
            except OSError as exc:
                raise connect_error(host, port, exc) from None
            writer.write(request)
            collector = ResponseReader(max_bytes)
            while not collector.complete:
                data = await reader.read(65536)
                if not data:
                    collector.finish_at_eof()
                    break
                collector.feed(data)
            return collector.response()
    except TimeoutError:
        raise FetchError(f"no complete response from {host}:{port} within {timeout:g}s") from None
    except ssl.SSLError as exc:
        raise TlsFailure(f"TLS error with {host}: {exc.reason}") from None
    except (ConnectionError, OSError) as exc:
        raise Unreachable(f"connection to {host}:{port} failed: {exc}") from None
    finally:
        if writer is not None:
            writer.close()
