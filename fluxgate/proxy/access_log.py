"""The access log: one line per request, text (default) or JSON, buffered.

The line is written in C when the request is counted (``Accounting.record`` in
fluxgate/_proxy.pyx, ~2,000 instructions) and kept in ``AccessLog.lines``; the worker's
sweep writes what waits four times a second, and 512 waiting lines are written at once, so
a request never waits for the disk.

What a line holds (docs/access-log.md): time (RFC 3339, UTC, milliseconds), client
address, method, path, route, status, total and upstream durations (ms), bytes sent to the
client, request id, principal (``method:subject``, never a credential) and the reason code
of a refusal. Never a query string (it can carry ``?api_key=``) nor any header value.
Client-controlled bytes are escaped (``\\xHH`` in text, JSON escapes in JSON), so a line
is always one line.
"""

from __future__ import annotations

import sys
from typing import IO, Any

from fluxgate.config import schema


def access_log_settings(value: str | schema.AccessLog | None) -> tuple[str, str | None]:
    """(format, path) of the ``access_log`` key; path None is off, "-" is stderr.

    The string form (``"-"``, a path, or null) is the text format at that path."""
    if value is None:
        return "text", None
    if isinstance(value, str):
        return "text", value
    return value.format, value.path


class _TextSink:
    """Bytes written to a text stream."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream

    def write(self, data: bytes) -> None:
        self._stream.write(data.decode("utf-8", "replace"))

    def flush(self) -> None:
        self._stream.flush()


class AccessLog:
    """Buffered access-log writer of one worker (``lines`` is filled by Accounting)."""

    def __init__(self, setting: str | schema.AccessLog | None) -> None:
        self.format, path = access_log_settings(setting)
        self.lines: list[bytes] = []
        self.stream: IO[bytes] | _TextSink | None = None
        self._owned = path not in (None, "-")  # a file it opened, closed with it
        if path == "-":
            # A replaced sys.stderr (a test runner's capture) may have no binary buffer.
            self.stream = getattr(sys.stderr, "buffer", None) or _TextSink(sys.stderr)
        elif path:
            # Unbuffered: each flush is one write(2) of whole lines to an O_APPEND file, so
            # the lines of several workers never interleave mid-line.
            self.stream = open(path, "ab", buffering=0)  # noqa: SIM115 - lives with the worker

    def flush(self) -> None:
        """Write the waiting lines (the sweep calls this a few times a second)."""
        if not self.lines:
            return
        data = b"".join(self.lines)
        self.lines.clear()  # in place: Accounting holds this very list
        if self.stream is not None:
            self.stream.write(data)
            self.stream.flush()

    def close(self) -> None:
        """Flush, and close a file (not stderr)."""
        self.flush()
        if self.stream is not None and self._owned:
            self.stream.close()
        self.stream = None
