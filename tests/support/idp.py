"""A local identity provider for tests: JWKS, OIDC discovery, token minting, key rotation,
outage on demand, request counting. Runs on 127.0.0.1:0 in a thread (plain http, or https
with a certificate the test made).

    idp = IdentityProvider().start()
    token = idp.mint(scope="orders:read")
    idp.rotate()            # new current key, the old one stays published (keep_old=True)
    idp.mode = "down"       # every request answered 503 ("close": connection dropped)
    idp.count("/jwks")      # JWKS requests served so far
"""

from __future__ import annotations

import json
import ssl
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from tests.support.tokens import SigningKey

AUDIENCE = "orders-api"


class IdentityProvider:
    def __init__(self, algs: tuple[str, ...] = ("RS256", "ES256"), *,
                 tls: tuple[str, str] | None = None, keys: list[SigningKey] | None = None) -> None:
        self.keys: list[SigningKey] = list(keys or ())  # given keys instead of new ones
        self._serial = len(self.keys)
        for alg in algs if keys is None else ():
            self.add_key(alg)
        self.current = self.keys[0]
        self.published: list[SigningKey] = list(self.keys)
        self.requests: Counter[str] = Counter()
        self.mode = "up"  # "up" | "down" (503) | "close" (drop the connection) | "garbage"
        self.cache_control: str | None = None
        self.etag = False
        self.discovery_issuer: str | None = None  # what discovery claims (default: issuer)
        self.tls = tls
        self.port = 0
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ---- keys and tokens ----------------------------------------------------------------

    def add_key(self, alg: str) -> SigningKey:
        self._serial += 1
        prefix = {"RS": "rsa", "PS": "rsa", "ES": "ec", "Ed": "ed"}[alg[:2]]
        key = SigningKey.generate(alg, f"{prefix}-{self._serial}")
        self.keys.append(key)
        return key

    def key(self, alg: str) -> SigningKey:
        return next(k for k in self.published if k.alg == alg)

    def rotate(self, alg: str | None = None, *, keep_old: bool = True) -> SigningKey:
        """A new signing key becomes current and is published."""
        new = self.add_key(alg or self.current.alg)
        with self._lock:
            self.published = ([*self.published] if keep_old else []) + [new]
            self.current = new
        return new

    def jwks(self) -> dict[str, Any]:
        with self._lock:
            return {"keys": [k.jwk() for k in self.published]}

    @property
    def issuer(self) -> str:
        scheme = "https" if self.tls else "http"
        return f"{scheme}://127.0.0.1:{self.port}"

    @property
    def jwks_uri(self) -> str:
        return f"{self.issuer}/jwks"

    def claims(self, **overrides: Any) -> dict[str, Any]:
        now = int(time.time())
        body = {"iss": self.issuer, "aud": AUDIENCE, "sub": "user-42", "iat": now,
                "exp": now + 3600}
        body.update(overrides)
        return {k: v for k, v in body.items() if v is not None}

    def mint(self, key: SigningKey | None = None, *, header: dict | None = None,
             **claims: Any) -> str:
        return (key or self.current).mint(self.claims(**claims), header=header)

    def count(self, path: str) -> int:
        with self._lock:
            return self.requests[path]

    # ---- the server ---------------------------------------------------------------------

    def start(self) -> IdentityProvider:
        idp = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802 - http.server's spelling
                path = self.path.split("?")[0]
                with idp._lock:
                    idp.requests[path] += 1
                if idp.mode == "close":
                    self.close_connection = True
                    self.connection.close()
                    return
                if idp.mode == "down":
                    self._send(503, b'{"error":"unavailable"}')
                    return
                if idp.mode == "garbage":
                    self._send(200, b"<html>not json</html>")
                    return
                if path == "/.well-known/openid-configuration":
                    doc = {"issuer": idp.discovery_issuer or idp.issuer, "jwks_uri": idp.jwks_uri}
                    self._send(200, json.dumps(doc).encode())
                elif path == "/jwks":
                    body = json.dumps(idp.jwks()).encode()
                    headers = {}
                    if idp.cache_control:
                        headers["Cache-Control"] = idp.cache_control
                    if idp.etag:
                        tag = '"%x"' % (hash(body) & 0xFFFFFFFF)
                        headers["ETag"] = tag
                        if self.headers.get("If-None-Match") == tag:
                            self._send(304, b"", headers)
                            return
                    self._send(200, body, headers)
                else:
                    self._send(404, b"{}")

            def _send(self, status: int, body: bytes, headers: dict | None = None) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.end_headers()
                if status != 304:
                    self.wfile.write(body)

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        server.daemon_threads = True
        if self.tls:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(*self.tls)
            server.socket = context.wrap_socket(server.socket, server_side=True)
        self._server = server
        self.port = server.server_address[1]
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1},
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(5)
