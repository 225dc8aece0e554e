"""fluxgate/cli/demo_jwt.py: the demo's issuer mints tokens its own JWKS verifies, its route
loads as config, and its JWKS is served on loopback."""

from __future__ import annotations

import json
import os
import time
import urllib.request

from fluxgate._core import JwtVerifier, TokenError
from fluxgate.auth.jwk import build_keyset
from fluxgate.cli.demo import demo_config
from fluxgate.cli.demo_jwt import AUDIENCE, DemoIssuer
from fluxgate.config import load_config_text


def test_demo_issuer(tmp_path):
    issuer = DemoIssuer(str(tmp_path))
    try:
        assert os.stat(tmp_path / "demo-jwt-key.pem").st_mode & 0o777 == 0o600
        issuer.serve_in_thread()
        with urllib.request.urlopen(issuer.jwks_uri, timeout=5) as response:
            jwks = json.loads(response.read())
        v = JwtVerifier(algorithms=["RS256"], issuer=issuer.issuer, audiences=[AUDIENCE])
        v.set_keys(build_keyset(jwks["keys"], 1))
        token = open(issuer.write_token()).read()
        claims = v.verify(token.encode(), time.time())
        assert claims["sub"] == "demo-user" and claims["exp"] - claims["iat"] == 3600
        try:
            v.verify(issuer.mint(seconds=-120).encode(), time.time())
        except TokenError as exc:
            assert exc.reason == "expired"
        # A restarted demo keeps its key, so earlier tokens stay valid.
        again = DemoIssuer(str(tmp_path))
        again.sock.close()
        assert again.jwks() == issuer.jwks()
        config = load_config_text(demo_config(str(tmp_path), 8080, 9901, 9000,
                                              issuer.route_yaml("echo")))
        route = next(r for r in config.routes if r.route == "/jwt")
        assert route.middleware[0].jwks_uri == issuer.jwks_uri
    finally:
        issuer.sock.close()
