"""The small HTTP servers of ``fluxgate demo`` (its JWKS, its authorization server): stdlib
``http.server`` on a loopback socket bound up front.

The socket is bound when the demo starts, so its port can go into the generated config
before the process that serves it (the echo upstream's child) is forked; the parent then
closes its copy.
"""

from __future__ import annotations

import base64
import binascii
import http.server
import socket
import threading
import urllib.parse
from typing import Any

import orjson


class JsonHandler(http.server.BaseHTTPRequestHandler):
    """A request handler that answers JSON and logs nothing (the gateway's access log, in
    the same terminal, already says what happened)."""

    def send_json(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
        """Answer ``status`` with ``body`` as JSON (and any extra ``headers``)."""
        payload = body if isinstance(body, bytes) else orjson.dumps(body)
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args: Any) -> None:
        pass


def serve_in_thread(sock: socket.socket,
                    handler: type[http.server.BaseHTTPRequestHandler],
                    ) -> http.server.ThreadingHTTPServer:
    """Serve ``handler`` on the listening ``sock`` from a daemon thread of the calling
    process; returns the server (``shutdown()`` stops it)."""
    server = http.server.ThreadingHTTPServer(sock.getsockname(), handler,
                                             bind_and_activate=False)
    server.socket.close()
    server.socket = sock
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def basic_credentials(authorization: str | None) -> tuple[str, str] | None:
    """The client id and secret of an HTTP Basic ``Authorization`` header, each
    form-urlencoded first (RFC 6749 §2.3.1); None when it is not one."""
    scheme, _, encoded = (authorization or "").partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        pair = base64.b64decode(encoded.strip(), validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        return None
    client_id, sep, secret = pair.partition(":")
    if not sep:
        return None
    return urllib.parse.unquote_plus(client_id), urllib.parse.unquote_plus(secret)
