"""The JWT part of ``fluxgate demo``: a signing key made in the demo's state dir, its JWKS
served on loopback (a tiny identity provider), a ``/jwt`` route, and a token to curl with.

The key stays in ``<state_dir>/demo-jwt-key.pem`` (mode 0600) so a restarted demo keeps
accepting tokens it minted before; each start mints a fresh one-hour token into
``<state_dir>/demo-token.jwt``. Loopback only, plain http: allowed for a JWKS on loopback.
"""

from __future__ import annotations

import os
import time
from typing import Any

import orjson
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from fluxgate.cli.demo_http import JsonHandler, serve_in_thread
from fluxgate.cli.jws import b64_uint, compact
from fluxgate.echo import bind_loopback

KID = "demo-1"
AUDIENCE = "demo-api"
JWKS_PATH = "/.well-known/jwks.json"


class DemoIssuer:
    """The demo's identity provider: one RSA key, its JWKS on 127.0.0.1, token minting."""

    def __init__(self, state_dir: str) -> None:
        path = os.path.join(state_dir, "demo-jwt-key.pem")
        try:
            with open(path, "rb") as f:
                key: Any = serialization.load_pem_private_key(f.read(), None)
        except FileNotFoundError:
            key = rsa.generate_private_key(65537, 2048)
            pem = key.private_bytes(serialization.Encoding.PEM,
                                    serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
            with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as f:
                f.write(pem)
        self.key = key
        self.token_path = os.path.join(state_dir, "demo-token.jwt")
        self.sock = bind_loopback()
        self.issuer = f"http://127.0.0.1:{self.sock.getsockname()[1]}"

    @property
    def jwks_uri(self) -> str:
        return self.issuer + JWKS_PATH

    def jwks(self) -> bytes:
        numbers = self.key.public_key().public_numbers()
        return orjson.dumps({"keys": [{
            "kty": "RSA", "kid": KID, "use": "sig", "alg": "RS256",
            "n": b64_uint(numbers.n), "e": b64_uint(numbers.e),
        }]})

    def mint(self, seconds: int = 3600, **claims: Any) -> str:
        """An RS256 token for the demo route, valid for ``seconds``."""
        now = int(time.time())
        body = {"iss": self.issuer, "aud": AUDIENCE, "sub": "demo-user", "iat": now,
                "exp": now + seconds, "scope": "demo:read", **claims}
        return compact({"alg": "RS256", "typ": "JWT", "kid": KID}, body, self.key, "RS256")

    def write_token(self) -> str:
        """Mint a one-hour token into the token file (0600); returns its path."""
        token = self.mint()
        fd = os.open(self.token_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(token)
        return self.token_path

    def route_yaml(self, upstream: str) -> str:
        """The demo config's /jwt route (an item of its `routes:` list)."""
        return (
            "  - route: /jwt                    # JWT: keys from the demo's own JWKS\n"
            f"    upstream: {upstream}\n"
            "    middleware:\n"
            "      - jwt:\n"
            f"          issuer: {self.issuer}\n"
            f"          audience: {AUDIENCE}\n"
            f"          jwks_uri: {self.jwks_uri}\n"
            "          forward_claims: {sub: X-User-Id}\n"
            "      - quota: {limit: 600/m}        # per subject (fluxctl auth verify asks for one)\n"
        )

    def serve_in_thread(self) -> None:
        """Serve the JWKS from a daemon thread of the calling process (the echo upstream)."""
        body = self.jwks()

        class Handler(JsonHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's spelling
                found = self.path == JWKS_PATH
                self.send_json(200 if found else 404, body if found else {"error": "not_found"})

        serve_in_thread(self.sock, Handler)
