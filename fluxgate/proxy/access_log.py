"""The access log: one line per request, text (default) or JSON, buffered.

The request path pays for one tuple: ``Accounting.record`` (fluxgate/_proxy.pyx) appends
an entry of the request's fields to ``AccessLog.entries`` in C. Lines are formatted and
written when the worker's sweep flushes (four times a second) or when 512 entries wait,
so formatting never delays a response.

What a line holds (README: "Access log"): time (RFC 3339, UTC, milliseconds), client
address, method, path, route, status, total and upstream durations (ms), bytes sent to the
client, request id, principal (the subject or API key name, never a credential) and the
reason code of a refusal. Never a query string (it can carry ``?api_key=``) nor any header
value. Client-controlled text is escaped in the text format so a line stays one line.
"""

from __future__ import annotations

import sys
import time
from typing import IO, Any

import orjson

from fluxgate.config import schema

# Fields of one entry, in the order Accounting.record appends them.
ENTRY = (
    "time", "client", "method", "path", "route", "status", "total", "upstream", "bytes",
    "request_id", "principal", "reason",
)


def access_log_settings(value: str | schema.AccessLog | None) -> tuple[str, str | None]:
    """(format, path) of the ``access_log`` key; path None is off, "-" is stderr.

    The string form (``"-"``, a path, or null) is the text format at that path."""
    if value is None:
        return "text", None
    if isinstance(value, str):
        return "text", value
    return value.format, value.path


def _text(value: bytes) -> str:
    """Client bytes as one printable token: non-ASCII, controls and spaces escaped."""
    text = value.decode("latin-1")
    if text.isprintable() and text.isascii() and " " not in text:
        return text
    return text.encode("unicode_escape").decode("ascii").replace(" ", "\\x20").replace('"', '\\"')


def _principal(principal: Any) -> str | None:
    """The subject (sub claim or API key name) with its method, never a credential."""
    if principal is None:
        return None
    return f"{principal.method}:{principal.subject}"


class _TextSink:
    """Bytes written to a text stream."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream

    def write(self, data: bytes) -> None:
        self._stream.write(data.decode("utf-8", "replace"))

    def flush(self) -> None:
        self._stream.flush()


class AccessLog:
    """Buffered access-log writer of one worker (``entries`` is filled by Accounting)."""

    def __init__(self, setting: str | schema.AccessLog | None) -> None:
        self.format, path = access_log_settings(setting)
        self.entries: list[tuple[Any, ...]] = []
        self.stream: IO[bytes] | _TextSink | None = None
        self._owned = path not in (None, "-")  # a file it opened, closed with it
        if path == "-":
            # A replaced sys.stderr (a test runner's capture) may have no binary buffer.
            self.stream = getattr(sys.stderr, "buffer", None) or _TextSink(sys.stderr)
        elif path:
            # Unbuffered: each flush is one write(2) of whole lines to an O_APPEND file, so
            # the lines of several workers never interleave mid-line.
            self.stream = open(path, "ab", buffering=0)  # noqa: SIM115 - lives with the worker
        self._second = -1
        self._second_text = ""

    def flush(self) -> None:
        """Format and write the waiting entries (the sweep calls this a few times a second)."""
        if not self.entries:
            return
        entries = self.entries[:]
        self.entries.clear()  # in place: Accounting holds this very list
        if self.stream is None:
            return
        line = self._json if self.format == "json" else self._text_line
        self.stream.write(b"".join([line(entry) for entry in entries]))
        self.stream.flush()

    def close(self) -> None:
        """Flush, and close a file (not stderr)."""
        self.flush()
        if self.stream is not None and self._owned:
            self.stream.close()
        self.stream = None

    # -- formats ---------------------------------------------------------------------------

    def _time(self, wall: float) -> str:
        # Lines of one flush mostly share their second: format it once.
        second = int(wall)
        if second != self._second:
            self._second = second
            self._second_text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        return f"{self._second_text}.{int((wall - second) * 1000):03d}Z"

    def _fields(self, entry: tuple[Any, ...]) -> dict[str, Any]:
        (wall, client, method, path, route, status, total, upstream, sent, request_id,
         principal, reason) = entry
        return {
            "time": self._time(wall),
            "client": client or None,
            "method": method.decode("latin-1") or None,
            # path, or the raw target of a request refused before it was routed: never
            # what follows "?"
            "path": path.partition(b"?")[0].decode("latin-1") or None,
            "route": route.label if route is not None else None,
            "status": status,
            "duration_ms": round(total * 1000.0, 3),
            "upstream_ms": round(upstream * 1000.0, 3) if upstream >= 0 else None,
            "bytes": sent,
            "request_id": request_id.decode("latin-1") or None,
            "principal": _principal(principal),
            "reason": reason,
        }

    def _json(self, entry: tuple[Any, ...]) -> bytes:
        return orjson.dumps(self._fields(entry)) + b"\n"

    def _text_line(self, entry: tuple[Any, ...]) -> bytes:
        (wall, client, method, path, route, status, total, upstream, sent, request_id,
         principal, reason) = entry
        up = f"{upstream * 1000.0:.1f}ms" if upstream >= 0 else "-"
        who = _principal(principal)
        return (
            f"{self._time(wall)} {client or '-'} {_text(method) or '-'}"
            f" {_text(path.partition(b'?')[0]) or '-'} {status}"
            f" {total * 1000.0:.1f}ms upstream={up} bytes={sent}"
            f" route={route.label if route is not None else '-'}"
            f" id={_text(request_id) or '-'} principal={_text(who.encode()) if who else '-'}"
            f" reason={reason or '-'}\n"
        ).encode()
