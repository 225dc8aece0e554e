"""Local replies: the only place where an error becomes bytes on the wire."""

from __future__ import annotations

from collections.abc import Callable
from http import HTTPStatus

import orjson

from fluxgate.errors import ClientError

_REASONS: dict[int, bytes] = {s.value: s.phrase.encode() for s in HTTPStatus}


def reason(status: int) -> bytes:
    """The reason phrase for a status code (empty for unknown codes, as RFC 9112 §4 allows)."""
    return _REASONS.get(status, b"")


class _StatusLines(dict[int, bytes]):
    """`HTTP/1.1 200 OK\\r\\n` by status code; a code without a phrase is built when asked."""

    def __missing__(self, status: int) -> bytes:
        return b"HTTP/1.1 %d %s\r\n" % (status, reason(status))


# `status_line(status)` is a C-level dict lookup: every proxied response asks for one, and
# a Python function around the lookup would cost a frame each time.
status_line: Callable[[int], bytes] = _StatusLines(
    {code: b"HTTP/1.1 %d %s\r\n" % (code, phrase) for code, phrase in _REASONS.items()}
).__getitem__


def error_response(
    error: ClientError,
    request_id: str,
    *,
    close: bool,
    head_only: bool = False,
    extra_headers: list[tuple[bytes, bytes]] | tuple[tuple[bytes, bytes], ...] = (),
) -> bytes:
    """Serialize a ClientError as a local reply.

    The body is `{"error", "error_description", "request_id"}` in JSON, or the error's own
    ``body`` (a ``LocalReply``: a page or a redirect of the browser login); `close` adds
    `Connection: close` (the caller then closes once the bytes are written).
    """
    body = error.body
    if body is None:
        body = orjson.dumps(
            {"error": error.code, "error_description": error.description,
             "request_id": request_id}
        )
    parts = [
        status_line(error.status),
        b"Content-Type: %s\r\n" % error.content_type,
        b"Content-Length: %d\r\n" % len(body),
        b"X-Request-Id: %s\r\n" % request_id.encode(),
        b"Cache-Control: no-store\r\n",
    ]
    for name, value in error.headers:
        parts.append(b"%s: %s\r\n" % (name, value))
    for name, value in extra_headers:
        parts.append(b"%s: %s\r\n" % (name, value))
    if close:
        parts.append(b"Connection: close\r\n")
    parts.append(b"\r\n")
    if not head_only:
        parts.append(body)
    return b"".join(parts)


CONTINUE_100 = b"HTTP/1.1 100 Continue\r\n\r\n"
