"""A scriptable RFC 7662 introspection endpoint for failure cases, on 127.0.0.1:0 in a thread.

    with BadAuthServer(client_id="gw", client_secret="s3cret") as server:
        token = server.add_token(scope="orders:read", sub="user-42")   # or server.tokens[t] = {...}
        server.mode = "slow"          # every mode is below
        server.calls, server.calls_by_token[sha256_hex(token)]

Modes (what the introspection endpoint does; discovery always answers while the server is up):
  "ok"             answers from ``tokens`` (unknown: {"active": false}) after checking client
                   authentication (``auth_method``); wrong auth: 401 {"error":"invalid_client"}
  "slow"           waits ``delay`` seconds (default 2), then as "ok"
  "down"           the listening socket and every open connection are closed (refused);
                   "up" (or any other mode) listens again on the same port ("up" means "ok")
  "garbage"        bytes that are not HTTP, then the connection is closed
  "html"           200 text/html
  "status500"      500 with a JSON error body
  "huge"           200 with a 5 MB JSON body (the token's answer plus padding)
  "string_active"  {"active": "true", ...}
  "no_active"      the token's answer without "active"
  "array"          a JSON array holding the token's answer
  "hang"           reads the request and never answers (until stop() or "down")
"huge", "string_active", "no_active" and "array" check client authentication first, as "ok".

Client authentication (``auth_method``): "client_secret_basic" (default), "client_secret_post",
"private_key_jwt" (the ``client_assertion`` is verified with ``client_public_key``: signature,
iss = sub = client_id, aud naming the issuer or an endpoint, exp in the future and at most
5 minutes ahead, a jti never seen before; its claims are kept in ``last_assertion``), or "none".
Tokens are never logged or stored by the server: calls are counted by their SHA-256.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import socket
import threading
import time
import urllib.parse
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt

MODES = ("ok", "slow", "down", "up", "garbage", "html", "status500", "huge", "string_active",
         "no_active", "array", "hang")
AUTH_METHODS = ("client_secret_basic", "client_secret_post", "private_key_jwt", "none")
JWT_BEARER = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
# Asymmetric algorithms only: an HMAC "signature" keyed with a public key proves nothing.
ASSERTION_ALGS = ["RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384",
                  "ES512", "EdDSA"]
HUGE_BYTES = 5 * 1024 * 1024
GARBAGE = b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03 this is not HTTP \xff\xfe\x00\r\n\r\n"


def sha256_hex(token: str) -> str:
    """The key of ``calls_by_token``: tokens themselves are never kept."""
    return hashlib.sha256(token.encode()).hexdigest()


class AuthFailure(Exception):
    """Client authentication failed; the message says why (for ``last_auth_error``)."""


class BadAuthServer:
    """An RFC 7662 endpoint whose behaviour a test sets with ``mode``."""

    def __init__(self, client_id: str = "fluxgate-gateway", client_secret: str | None = None, *,
                 auth_method: str = "client_secret_basic", client_public_key: Any = None,
                 delay: float = 2.0) -> None:
        if auth_method not in AUTH_METHODS:
            raise ValueError(f"auth_method must be one of {AUTH_METHODS}")
        self.client_id = client_id
        self.client_secret = client_secret or secrets.token_urlsafe(24)
        self.auth_method = auth_method
        # A cryptography public key, or anything with a ``.public`` one (tokens.SigningKey).
        self.client_public_key = client_public_key
        self.delay = delay
        self.tokens: dict[str, dict[str, Any]] = {}
        self.discovery_issuer: str | None = None  # what discovery claims (default: issuer)
        # Members added to the discovery document (a value of None removes that member).
        self.extra_metadata: dict[str, Any] = {}
        self.calls = 0
        self.calls_by_token: Counter[str] = Counter()
        self.requests: Counter[str] = Counter()  # every request, by path
        self.last_request: dict[str, Any] = {}  # the last introspection request, minus secrets
        self.last_auth_error: str | None = None
        self.last_assertion: dict[str, Any] | None = None
        self.last_assertion_header: dict[str, Any] | None = None
        self.port = 0
        self._mode = "ok"
        self._seen_jti: set[str] = set()
        self._lock = threading.Lock()
        self._release = threading.Event()  # wakes "hang" and "slow" handlers
        self._connections: set[socket.socket] = set()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ---- addresses ----------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def issuer(self) -> str:
        return self.url

    @property
    def introspection_endpoint(self) -> str:
        return f"{self.url}/introspect"

    @property
    def token_endpoint(self) -> str:
        return f"{self.url}/token"

    def discovery(self) -> dict[str, Any]:
        """The document served at both well-known paths."""
        document = {"issuer": self.discovery_issuer or self.issuer,
                    "introspection_endpoint": self.introspection_endpoint,
                    "token_endpoint": self.token_endpoint,
                    "introspection_endpoint_auth_methods_supported": [self.auth_method],
                    **self.extra_metadata}
        return {k: v for k, v in document.items() if v is not None}

    # ---- tokens -----------------------------------------------------------------------------

    def add_token(self, token: str | None = None, **claims: Any) -> str:
        """Register an active token (a new random one unless given) with a full RFC 7662
        answer; ``claims`` override the defaults, and a value of None drops that member."""
        token = token or secrets.token_urlsafe(32)
        now = int(time.time())
        answer = {"active": True, "scope": "read", "sub": "user-42", "exp": now + 3600,
                  "iat": now, "client_id": "test-app", "iss": self.issuer,
                  "aud": "orders-api", "token_type": "Bearer"}
        answer.update(claims)
        self.tokens[token] = {k: v for k, v in answer.items() if v is not None}
        return token

    # ---- mode -------------------------------------------------------------------------------

    @property
    def mode(self) -> str:
        return self._mode

    @mode.setter
    def mode(self, value: str) -> None:
        if value not in MODES:
            raise ValueError(f"mode must be one of {MODES}")
        if value == "down":
            self._mode = "down"
            self._close_listener()
            return
        if self._server is None and self._thread is not None:
            self._listen(self.port)  # back up on the port clients know
        self._mode = "ok" if value == "up" else value
        self._release.clear()

    # ---- the server ---------------------------------------------------------------------

    def start(self) -> BadAuthServer:
        """Listen on 127.0.0.1:0 in a background thread."""
        self._listen(0)
        return self

    def stop(self) -> None:
        """Stop listening, close every connection and release hung handlers."""
        self._close_listener()
        self._thread = None

    def __enter__(self) -> BadAuthServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _listen(self, port: int) -> None:
        server = ThreadingHTTPServer(("127.0.0.1", port), self._handler_class())
        server.daemon_threads = True
        self._server = server
        self.port = server.server_address[1]
        self._thread = threading.Thread(target=server.serve_forever,
                                        kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()

    def _close_listener(self) -> None:
        self._release.set()
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
        # Keep-alive connections would otherwise still reach a server that is "down".
        with self._lock:
            connections, self._connections = list(self._connections), set()
        for conn in connections:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    # ---- requests ---------------------------------------------------------------------------

    def _authenticate(self, headers: Any, form: dict[str, str]) -> str | None:
        """The client authentication method the request used; AuthFailure if it is not the
        expected one or its credentials are wrong."""
        authorization = headers.get("Authorization", "")
        basic = authorization[:6].lower() == "basic "
        if self.auth_method == "none":
            return None
        if self.auth_method == "client_secret_basic":
            if not basic:
                raise AuthFailure("no HTTP Basic credentials")
            if "client_secret" in form or "client_assertion" in form:
                raise AuthFailure("more than one client authentication method")
            try:
                pair = base64.b64decode(authorization[6:].strip(), validate=True).decode()
                client_id, secret = (urllib.parse.unquote_plus(p) for p in pair.split(":", 1))
            except ValueError as error:
                raise AuthFailure(f"malformed Basic credentials: {error}") from None
            if client_id != self.client_id or not secrets.compare_digest(
                    secret.encode(), self.client_secret.encode()):
                raise AuthFailure("wrong client_id or client_secret")
            return "client_secret_basic"
        if authorization:
            raise AuthFailure("an Authorization header with body authentication")
        if self.auth_method == "client_secret_post":
            if form.get("client_id") != self.client_id or not secrets.compare_digest(
                    form.get("client_secret", "").encode(), self.client_secret.encode()):
                raise AuthFailure("wrong or missing client_id/client_secret in the body")
            return "client_secret_post"
        self._check_assertion(form)
        return "private_key_jwt"

    def _check_assertion(self, form: dict[str, str]) -> None:
        if "client_secret" in form:
            raise AuthFailure("client_secret with a client assertion")
        if form.get("client_assertion_type") != JWT_BEARER:
            raise AuthFailure("client_assertion_type is not jwt-bearer")
        assertion = form.get("client_assertion")
        if not assertion:
            raise AuthFailure("no client_assertion")
        if "client_id" in form and form["client_id"] != self.client_id:
            raise AuthFailure("client_id does not match")
        key = getattr(self.client_public_key, "public", self.client_public_key)
        if key is None:
            raise AuthFailure("no client public key configured")
        try:
            header = jwt.get_unverified_header(assertion)
            claims = jwt.decode(assertion, key, algorithms=ASSERTION_ALGS,
                                options={"verify_aud": False,
                                         "require": ["iss", "sub", "aud", "exp", "jti"]})
        except jwt.PyJWTError as error:
            raise AuthFailure(f"client_assertion rejected: {error}") from None
        with self._lock:
            self.last_assertion, self.last_assertion_header = claims, header
        if claims["iss"] != self.client_id or claims["sub"] != self.client_id:
            raise AuthFailure("iss and sub must both be the client_id")
        audiences = claims["aud"] if isinstance(claims["aud"], list) else [claims["aud"]]
        if not {self.issuer, self.introspection_endpoint, self.token_endpoint} & set(audiences):
            raise AuthFailure(f"aud {audiences!r} names neither the issuer nor an endpoint")
        if not isinstance(claims["exp"], int | float) or claims["exp"] > time.time() + 300:
            raise AuthFailure("exp more than 5 minutes ahead")
        with self._lock:
            if claims["jti"] in self._seen_jti:
                raise AuthFailure("jti replayed")
            self._seen_jti.add(claims["jti"])

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        srv = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def setup(self) -> None:
                super().setup()
                with srv._lock:
                    srv._connections.add(self.connection)

            def finish(self) -> None:
                with srv._lock:
                    srv._connections.discard(self.connection)
                super().finish()

            def do_GET(self) -> None:  # noqa: N802 - http.server's spelling
                path = self.path.split("?")[0]
                with srv._lock:
                    srv.requests[path] += 1
                if path in ("/.well-known/oauth-authorization-server",
                            "/.well-known/openid-configuration"):
                    self._json(200, srv.discovery())
                elif path == "/introspect":
                    self._json(405, {"error": "invalid_request"}, {"Allow": "POST"})
                else:
                    self._json(404, {"error": "not_found"})

            def do_POST(self) -> None:  # noqa: N802
                path = self.path.split("?")[0]
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with srv._lock:
                    srv.requests[path] += 1
                if path != "/introspect":
                    self._json(404, {"error": "not_found"})
                    return
                form = dict(urllib.parse.parse_qsl(body.decode("utf-8", "replace")))
                token = form.get("token")
                with srv._lock:
                    srv.calls += 1
                    if token is not None:
                        srv.calls_by_token[sha256_hex(token)] += 1
                    srv.last_request = {
                        "content_type": self.headers.get("Content-Type"),
                        "accept": self.headers.get("Accept"),
                        "token_type_hint": form.get("token_type_hint"),
                        "fields": sorted(form),
                    }
                self._introspect(srv.mode, token, form)

            def _introspect(self, mode: str, token: str | None, form: dict[str, str]) -> None:
                if mode == "hang":
                    srv._release.wait()
                    self.close_connection = True
                    return
                if mode == "garbage":
                    self.wfile.write(GARBAGE)
                    self.close_connection = True
                    return
                if mode == "html":
                    self._send(200, b"<html><body><h1>Sign in</h1></body></html>",
                               "text/html; charset=utf-8")
                    return
                if mode == "status500":
                    self._json(500, {"error": "server_error"})
                    return
                if mode == "slow" and srv._release.wait(srv.delay):
                    self.close_connection = True  # stopped meanwhile
                    return
                try:
                    method = srv._authenticate(self.headers, form)
                except AuthFailure as failure:
                    with srv._lock:
                        srv.last_auth_error = str(failure)
                    self._json(401, {"error": "invalid_client"},
                               {"WWW-Authenticate": 'Basic realm="introspection"'})
                    return
                with srv._lock:
                    srv.last_auth_error = None
                    srv.last_request["auth_method"] = method
                if token is None:
                    self._json(400, {"error": "invalid_request"})
                    return
                answer = dict(srv.tokens.get(token) or {"active": False})
                if mode == "huge":
                    answer["padding"] = "x" * HUGE_BYTES
                elif mode == "string_active":
                    answer["active"] = "true"
                elif mode == "no_active":
                    answer.pop("active", None)
                elif mode == "array":
                    self._json(200, [answer])
                    return
                self._json(200, answer)

            def _json(self, status: int, obj: Any, headers: dict | None = None) -> None:
                self._send(status, json.dumps(obj).encode(), "application/json", headers)

            def _send(self, status: int, body: bytes, content_type: str,
                      headers: dict | None = None) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Cache-Control", "no-store")
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(body)

        return Handler
