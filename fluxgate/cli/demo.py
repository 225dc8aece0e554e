"""`fluxgate demo`: a working gateway in one command, with nothing else installed.

It starts the built-in echo upstream on loopback, writes a demo config into
`./.fluxgate-demo/` (state_dir, so keys and counters of later features live there too),
prints curl lines that work, and runs the real master + workers on that config.
"""

from __future__ import annotations

import argparse
import os
import secrets
import shlex
import signal
import socket
import sys
import textwrap

from fluxgate import echo
from fluxgate.master.admin import TOKEN_FILE

DEMO_DIR = ".fluxgate-demo"


def _free_port(preferred: int) -> int:
    """`preferred` when it is free on 127.0.0.1, else any free port."""
    for candidate in (preferred, 0):
        probe = socket.socket()
        try:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind(("127.0.0.1", candidate))
            return probe.getsockname()[1]
        except OSError:
            continue
        finally:
            probe.close()
    raise OSError("no free port on 127.0.0.1")


def fluxctl_command() -> str:
    """``fluxctl`` as a fresh shell can run it: the one installed next to this Python (the
    venv's ``bin/``) by absolute path, else this Python with ``-m``; a bare ``fluxctl`` is
    "command not found" unless the venv is activated."""
    installed = os.path.join(os.path.dirname(sys.executable), "fluxctl")
    if os.access(installed, os.X_OK):
        return shlex.quote(installed)
    return f"{shlex.quote(sys.executable)} -m fluxgate.cli.fluxctl"


def demo_config(
    state_dir: str, port: int, admin_port: int, upstream_port: int, extra_routes: str = ""
) -> str:
    """The demo's fluxgate.yaml: one route per capability that has landed (``extra_routes``:
    more items of its `routes:` list, already indented)."""
    return textwrap.dedent(
        f"""\
        # Written by `fluxgate demo`. Edit it and send SIGHUP to the master to reload.
        listen: 127.0.0.1:{port}
        workers: 2
        state_dir: {state_dir}
        admin:
          listen: 127.0.0.1:{admin_port}
        upstreams:
          echo: {{targets: ["http://127.0.0.1:{upstream_port}"], connect_timeout: 2s, read_timeout: 10s}}
        routes:
          - route: /public                 # zero trust: open only because it says so
            upstream: echo
            public: true
          - route: /loopback-only          # ip_allow on the resolved client address
            upstream: echo
            public: true
            middleware:
              - ip_allow: [127.0.0.0/8, "::1/128"]
          - route: /office-only            # you are not in 10.0.0.0/8: 403
            upstream: echo
            public: true
            middleware:
              - ip_allow: [10.0.0.0/8]
        """
    ) + extra_routes


def cmd_demo(args: argparse.Namespace) -> int:
    """Run the demo until Ctrl-C."""
    from fluxgate.config import load_config
    from fluxgate.master.arbiter import Arbiter

    state_dir = os.path.abspath(args.dir)
    os.makedirs(state_dir, mode=0o700, exist_ok=True)
    port = _free_port(args.port)
    admin_port = _free_port(args.admin_port)
    upstream_sock = echo.bind_loopback()
    upstream_port = upstream_sock.getsockname()[1]
    # ---- JWT: a demo signing key, its JWKS on loopback, a /jwt route ----------
    from fluxgate.cli.demo_jwt import DemoIssuer

    issuer = DemoIssuer(state_dir)  # the JWKS is served by the echo child, below
    token_path = issuer.write_token()
    extra_routes = issuer.route_yaml("echo")
    # ---- end JWT ------------------------------------------------------------------------
    # ---- API keys: a key issued at start, shown once below; an /api-key route --
    from fluxgate.cli.demo_keys import DemoKeys

    demo_keys = DemoKeys(state_dir)
    extra_routes += demo_keys.route_yaml("echo")
    # ---- end API keys -------------------------------------------------------------------
    # ---- oauth2: a local authorization server (RFC 7662 introspection), an opaque token --
    from fluxgate.cli.demo_oauth2 import DemoAuthServer

    auth_server = DemoAuthServer(state_dir)  # served by the echo child, below
    oauth2_token_path = auth_server.write_token()
    unknown_token = secrets.token_urlsafe(32)  # shaped like the real one, issued by nobody
    extra_routes += auth_server.route_yaml("echo")
    # ---- end oauth2 ---------------------------------------------------------------------
    # ---- oauth2 login: a local OpenID Provider, an /app route browsers sign in to -----
    from fluxgate.cli.demo_login import SUBJECT, USERNAME, DemoOpenIdProvider

    provider = DemoOpenIdProvider(port)  # served by the echo child, below
    extra_routes += provider.route_yaml("echo")
    # ---- end oauth2 login ---------------------------------------------------------------
    config_path = os.path.join(state_dir, "fluxgate.yaml")
    with open(os.open(config_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as f:
        f.write(demo_config(state_dir, port, admin_port, upstream_port, extra_routes))

    child = os.fork()
    if child == 0:  # the echo upstream
        try:
            signal.signal(signal.SIGINT, signal.SIG_IGN)  # the demo stops it, not Ctrl-C
            issuer.serve_in_thread()  # JWT: the demo's JWKS, next to the echo upstream
            auth_server.serve_in_thread()  # oauth2: the demo's introspection endpoint
            provider.serve_in_thread()  # oauth2 login: the demo's OpenID Provider
            echo.serve_forever(upstream_sock)
        finally:
            os._exit(0)
    upstream_sock.close()
    issuer.sock.close()  # JWT: the child serves it
    auth_server.sock.close()  # oauth2: likewise
    provider.sock.close()  # oauth2 login: likewise
    base = f"http://127.0.0.1:{port}"
    # Every printed line runs as pasted into a fresh shell: absolute, quoted paths.
    fluxctl = f"{fluxctl_command()} --config {shlex.quote(config_path)}"
    token_file = shlex.quote(os.path.join(state_dir, TOKEN_FILE))
    token_path = shlex.quote(token_path)
    oauth2_token_path = shlex.quote(oauth2_token_path)
    print(
        textwrap.dedent(
            f"""
            FluxGate demo: gateway on {base} (2 workers), echo upstream on 127.0.0.1:{upstream_port}
            config: {config_path}

              curl -i {base}/public/hello             # 200, proxied: the echo shows X-Forwarded-*, X-Request-Id
              curl -i {base}/loopback-only/ok         # 200: ip_allow lets loopback in
              curl -i {base}/office-only/x            # 403 ip_not_allowed
              curl -i {base}/nowhere                  # 404 no_route
              curl -i --path-as-is '{base}/public/%2e%2e/admin'   # 400: ambiguous path
              curl -i -H "Authorization: Bearer $(cat {token_path})" {base}/jwt/hello
                                                      # 200: a JWT the demo minted (valid 1 h)
              curl -i {base}/jwt/hello                # 401 missing_credentials
              {fluxctl} auth verify --endpoint /jwt/hello --mode audit \\
                  --probe {base} --token "$(cat {token_path})"
                                                      # hostile tokens at the live route: all refused
              curl -i -H "X-API-Key: {demo_keys.key}" {base}/api-key/hello
                                                      # 200 + RateLimit-*: the key issued just now
                                                      # (shown once; 5 per minute, then 429)
              curl -i {base}/api-key/hello            # 401 missing_credentials
              {fluxctl} keys list
                                                      # quota used, last use; never the key
              curl -i -H "Authorization: Bearer $(cat {oauth2_token_path})" {base}/inventory/items
                                                      # 200: an opaque token (valid 1 h); the gateway
                                                      # asks {auth_server.introspection_endpoint}
                                                      # once, then keeps the answer for a minute
              curl -i {base}/inventory/items          # 401 missing_credentials
              curl -i -H "Authorization: Bearer {unknown_token}" {base}/inventory/items
                                                      # 401 invalid_token: the server says inactive
              {fluxctl} auth verify --endpoint /inventory/items --mode audit \\
                  --probe {base} --token "$(cat {oauth2_token_path})"
                                                      # opaque-token probes: all refused
              curl -i {base}/app/                     # 302 to the demo's OpenID Provider (a page
                                                      # without a session: sign in first)
              curl -i -H "Accept: application/json" {base}/app/
                                                      # 401 login_required: scripts are not redirected
              curl -s -H "Authorization: Bearer $(cat {token_file})" http://127.0.0.1:{admin_port}/metrics

            In a browser (Chromium, Firefox): {provider.app_url}
              sign in as {USERNAME} / {provider.password} at the demo's OpenID Provider ({provider.issuer});
              the echo shows X-FluxGate-Subject: {SUBJECT}, and the session cookie holds no token.
              Access tokens last 2 minutes: reload after 90 s and the log shows the refresh.
              {provider.logout_url} signs out (here and at the provider).

            Ctrl-C stops it.
            """
        ),
        flush=True,
    )
    print(demo_keys.key_list(config_path), flush=True)  # API keys: `fluxctl keys list` now
    try:
        return Arbiter(load_config(config_path), config_path, workers_override=None).run()
    finally:
        try:
            os.kill(child, signal.SIGTERM)
            os.waitpid(child, 0)
        except (ProcessLookupError, ChildProcessError):
            pass


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register `fluxgate demo`."""
    demo = sub.add_parser("demo", help="zero-setup demo: gateway + echo upstream on loopback")
    demo.add_argument("--port", type=int, default=8080, help="gateway port (default 8080, else any free)")
    demo.add_argument("--admin-port", type=int, default=9901, help="admin port (default 9901)")
    demo.add_argument("--dir", default=DEMO_DIR, help=f"state directory (default ./{DEMO_DIR})")
    demo.set_defaults(func=cmd_demo)

