"""The oauth2 part of ``fluxgate demo``: a tiny authorization server on loopback with an
RFC 7662 introspection endpoint, an ``/inventory`` route whose opaque bearer tokens the
gateway introspects there, and a token to curl with.

Everything is made afresh at each start and lives as long as the demo: the gateway's
client secret at the server, written inline into the demo config (0600; no environment
variable to set before ``fluxctl`` can read that config, and the secret dies with the
run), and one opaque access token, valid for an hour, in ``<state_dir>/demo-oauth2.token``
(0600). The server answers ``active: true`` for that token and ``active: false`` for any
other, and logs each introspection it answers, so the terminal shows that a repeated
token is not asked about again while the gateway's shared table holds the answer
(``cache_ttl``, a minute by default).
"""

from __future__ import annotations

import http.server
import logging
import os
import secrets
import threading
import time
import urllib.parse
from typing import Any

from fluxgate.cli.demo_http import JsonHandler, basic_credentials, serve_in_thread
from fluxgate.cli.probe_jws import fingerprint
from fluxgate.echo import bind_loopback

CLIENT_ID = "fluxgate-demo"  # the gateway, as a client of the authorization server
APP_CLIENT_ID = "demo-app"  # the application the access token was issued to
SUBJECT = "demo-user"
SCOPE = "read:inventory"
AUDIENCE = "inventory-api"  # the resource server the demo's tokens are meant for
INTROSPECTION_PATH = "/introspect"
MAX_BODY = 16384  # an introspection request is a token and a hint

log = logging.getLogger("fluxgate.demo")


class DemoAuthServer:
    """The demo's authorization server: client credentials for the gateway, one opaque
    access token, and an introspection endpoint on 127.0.0.1 that knows them."""

    def __init__(self, state_dir: str, seconds: int = 3600) -> None:
        self.sock = bind_loopback()
        self.issuer = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.client_secret = secrets.token_urlsafe(32)
        self.token = secrets.token_urlsafe(32)
        self.expires_at = int(time.time()) + seconds
        self.token_path = os.path.join(state_dir, "demo-oauth2.token")
        self.calls = 0  # introspections answered to an authenticated client
        self._lock = threading.Lock()

    @property
    def introspection_endpoint(self) -> str:
        return self.issuer + INTROSPECTION_PATH

    def write_token(self) -> str:
        """Write the access token into the token file (0600); returns its path."""
        fd = os.open(self.token_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(self.token)
        return self.token_path

    def client_authenticated(self, authorization: str | None) -> bool:
        """True when ``authorization`` is HTTP Basic with the gateway's client id and
        secret (each form-urlencoded first, RFC 6749 §2.3.1)."""
        pair = basic_credentials(authorization)
        if pair is None:
            return False
        client_id, secret = pair
        # Both compared whatever the first gives, in constant time: the secret is a secret.
        same_id = secrets.compare_digest(client_id.encode(), CLIENT_ID.encode())
        same_secret = secrets.compare_digest(secret.encode(), self.client_secret.encode())
        return same_id and same_secret

    def introspect(self, token: str) -> dict[str, Any]:
        """The RFC 7662 answer for ``token``: the demo token while it lasts, else inactive."""
        with self._lock:
            self.calls += 1
            call = self.calls
        known = secrets.compare_digest(token.encode(), self.token.encode())
        active = known and time.time() < self.expires_at
        # A digest prefix, never the token: the log is on the terminal for anyone to see
        # (and the same prefix as `fluxctl auth verify --probe` shows, to match them up).
        log.info("demo authorization server: introspection #%d, %s token [%s]: %s", call,
                 "the demo" if known else "an unknown", fingerprint(token),
                 "active" if active else "inactive")
        if not active:
            return {"active": False}
        return {"active": True, "scope": SCOPE, "sub": SUBJECT, "client_id": APP_CLIENT_ID,
                "exp": self.expires_at, "token_type": "Bearer", "iss": self.issuer,
                "aud": AUDIENCE}

    def route_yaml(self, upstream: str) -> str:
        """The demo config's ``/inventory`` route (an item of its `routes:` list)."""
        return (
            "  - route: /inventory              # oauth2: opaque tokens, checked by introspection\n"
            f"    upstream: {upstream}\n"
            "    middleware:\n"
            "      - oauth2:\n"
            f"          issuer: {self.issuer}\n"
            f"          introspection_endpoint: {self.introspection_endpoint}\n"
            f"          client_id: {CLIENT_ID}\n"
            f'          client_secret: "{self.client_secret}"   # made at this start\n'
            f"          scopes: [{SCOPE}]\n"
            f"          audience: {AUDIENCE}\n"
            "      - quota: {limit: 600/m}        # per subject (fluxctl auth verify asks for one)\n"
        )

    def serve_in_thread(self) -> http.server.ThreadingHTTPServer:
        """Serve the introspection endpoint from a daemon thread of the calling process
        (the echo upstream); returns the server."""
        server = self

        class Handler(JsonHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's spelling
                if self.path != INTROSPECTION_PATH:
                    self.send_json(404, {"error": "not_found"})
                    return
                try:
                    length = int(self.headers.get("Content-Length") or 0)
                except ValueError:
                    length = -1
                if not 0 <= length <= MAX_BODY:
                    self.close_connection = True
                    self.send_json(400, {"error": "invalid_request"})
                    return
                body = self.rfile.read(length).decode("latin-1")
                if not server.client_authenticated(self.headers.get("Authorization")):
                    self.send_json(401, {"error": "invalid_client"},
                                   {"WWW-Authenticate": 'Basic realm="demo"'})
                    return
                tokens = urllib.parse.parse_qs(body).get("token", [])
                if len(tokens) != 1:
                    self.send_json(400, {"error": "invalid_request"})
                    return
                self.send_json(200, server.introspect(tokens[0]))

            def do_GET(self) -> None:  # noqa: N802 - http.server's spelling
                if self.path == INTROSPECTION_PATH:
                    self.send_json(405, {"error": "method_not_allowed"}, {"Allow": "POST"})
                else:
                    self.send_json(404, {"error": "not_found"})

        return serve_in_thread(self.sock, Handler)
