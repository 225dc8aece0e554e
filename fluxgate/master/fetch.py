"""A small, strict HTTP/1.1 GET client on the master's event loop, for key documents (JWKS,
OIDC discovery): asyncio streams + llhttp (httptools), nothing else to install.

Chosen over urllib in a thread because the master is one uvloop loop already, and a fetch
must never block it nor hold a thread that cannot be cancelled when the master stops.

Rules: one request per connection (``Connection: close``); https with certificate and host
name verification (``ssl.create_default_context``: the system CAs, or ``SSL_CERT_FILE``);
plain http only where the config allowed it (loopback, checked by
``config.resolve.parse_key_url``); no redirects followed; the whole exchange bounded by
``timeout`` seconds, the head by 64 KiB and the body by ``max_bytes``.
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
    """The document could not be fetched (the message says why; never a secret)."""


@dataclass
class Response:
    status: int
    headers: dict[str, str] = field(default_factory=dict)  # lower-case names, last wins
    body: bytes = b""


def _ssl_context() -> ssl.SSLContext:
    global _SSL_CONTEXT
    if _SSL_CONTEXT is None:
        _SSL_CONTEXT = ssl.create_default_context()
    return _SSL_CONTEXT


class _Reader:
    """httptools callbacks collecting one response, bounded."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.headers: dict[str, str] = {}
        self.body: list[bytes] = []
        self.size = 0
        self.head_size = 0
        self.head_done = False
        self.complete = False

    def on_header(self, name: bytes, value: bytes) -> None:
        self.head_size += len(name) + len(value)
        if self.head_size > MAX_HEAD_BYTES:
            raise FetchError("response head too large")
        self.headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        self.head_done = True

    def on_body(self, chunk: bytes) -> None:
        self.size += len(chunk)
        if self.size > self.max_bytes:
            raise FetchError(f"response body larger than {self.max_bytes} bytes")
        self.body.append(chunk)

    def on_message_complete(self) -> None:
        self.complete = True


async def fetch(
    url: str,
    *,
    headers: dict[str, str] | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> Response:
    """GET ``url``; raises FetchError for anything but a complete HTTP response."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise FetchError(f"unsupported URL {url!r}")
    host = parts.hostname
    port = parts.port or (443 if parts.scheme == "https" else 80)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    host_header = parts.netloc
    lines = [f"GET {target} HTTP/1.1", f"Host: {host_header}", "Accept: application/json",
             "User-Agent: fluxgate", "Connection: close"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    request = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    tls = _ssl_context() if parts.scheme == "https" else None
    writer = None
    try:
        async with asyncio.timeout(timeout):
            try:
                reader, writer = await asyncio.open_connection(
                    host, port, ssl=tls, server_hostname=host if tls else None,
                    limit=MAX_HEAD_BYTES,
                )
            except ssl.SSLError as exc:
                raise FetchError(f"TLS handshake with {host} failed: {exc.reason}") from None
            except OSError as exc:
                raise FetchError(f"cannot connect to {host}:{port}: {exc.strerror or exc}") from None
            writer.write(request)
            collector = _Reader(max_bytes)
            parser = httptools.HttpResponseParser(collector)
            while not collector.complete:
                data = await reader.read(65536)
                if not data:
                    break
                try:
                    parser.feed_data(data)
                except httptools.HttpParserCallbackError as exc:
                    cause = exc.__context__
                    raise FetchError(str(cause) if cause else "bad response") from None
                except httptools.HttpParserError as exc:
                    raise FetchError(f"malformed HTTP response: {exc}") from None
            if not collector.head_done:
                raise FetchError("connection closed before a complete response head")
            status = parser.get_status_code()
            if not collector.complete:
                # Only a body delimited by the close itself may end without llhttp's say-so.
                te = collector.headers.get("transfer-encoding", "").lower()
                if "content-length" in collector.headers or "chunked" in te:
                    raise FetchError("connection closed before the response was complete")
            return Response(status, collector.headers, b"".join(collector.body))
    except TimeoutError:
        raise FetchError(f"no complete response from {host}:{port} within {timeout:g}s") from None
    except ssl.SSLError as exc:
        raise FetchError(f"TLS error with {host}: {exc.reason}") from None
    except (ConnectionError, OSError) as exc:
        raise FetchError(f"connection to {host}:{port} failed: {exc}") from None
    finally:
        if writer is not None:
            writer.close()
