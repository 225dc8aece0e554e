"""Cluster nodes with a browser login and an introspection route, for the sessions tests
(tests/e2e/test_cluster_sessions.py) and benchmark (bench/bench_cluster_sessions.py).

    client = server.register_client([callback_url(ports[0])], [signed_out_url(ports[0])])
    text = node_config(store_url, "n0", server, client, ports[0], upstream.url)
    GatewayProcess(directory, text, workers=2, listen=tls_listen(port, cert, key)).start()
    session_get(port, ca, cookie)                   # (status, headers, body) of /app/api/x
    ws = ws_connect(port, cookie, origin, ca)       # RFC 6455 over TLS on /ws/session

Every node serves /app and /ws/session behind one oauth2 login whose callback is the first
node's (one site behind a load balancer), and /inventory behind introspection by
django-oauth-toolkit's resource-server client.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import socket
import ssl
from typing import Any

from tests.support.websocket import OP_TEXT, WsClient

SESSION_COOKIE = "__Host-fluxgate"
SESSION_SECRET = "cluster-session-secret-" + "x" * 24
SIGNING_SECRET = "cluster-signing-secret-" + "y" * 24
SWEEP = 5.0  # fluxgate/cluster/session_sync.py SYNC_INTERVAL


def callback_url(port: int) -> str:
    return f"https://127.0.0.1:{port}/oauth2/callback"


def signed_out_url(port: int) -> str:
    return f"https://127.0.0.1:{port}/app/signed-out"


def tls_listen(port: int, cert: str, key: str) -> str:
    return f"{{address: '127.0.0.1:{port}', tls: {{cert: '{cert}', key: '{key}'}}}}"


def node_config(store: str, node: str, server: Any, client: Any, site_port: int,
                upstream_url: str, on_store_down: str = "local", **options: object) -> str:
    """One node's config (the header GatewayProcess adds comes first)."""
    extra = "".join(f"          {k}: {json.dumps(v)}\n" for k, v in options.items())
    login = (
        "    middleware:\n"
        "      - oauth2:\n"
        f"          issuer: {server.issuer}\n"
        f"          client_id: {client.client_id}\n"
        f"          client_secret: '{client.client_secret}'\n"
        "          login: true\n"
        f"          redirect_uri: {callback_url(site_port)}\n"
        f"          post_logout_redirect_uri: {signed_out_url(site_port)}\n"
        "          login_scopes: [openid, read]\n"
        "          api_paths: [/app/api]\n"
        f"{extra}"
    )
    rs_id, rs_secret = server.resource_server
    return (
        f"store: {store}\n"
        f"cluster: {{node: {node}, session_secret: '{SESSION_SECRET}', timeout: 0.5, "
        f"on_store_down: {on_store_down}}}\n"
        f"api_keys: {{signing_secret: '{SIGNING_SECRET}'}}\n"
        "routes:\n"
        f"  - route: /app\n    upstream: {upstream_url}\n{login}"
        f"  - route: /ws/session\n    upstream: {upstream_url}\n{login}"
        f"  - route: /inventory\n    upstream: {upstream_url}\n    middleware:\n"
        "      - oauth2:\n"
        f"          issuer: {server.issuer}\n"
        f"          client_id: {rs_id}\n"
        f"          client_secret: '{rs_secret}'\n"
        "          scopes: [read:inventory]\n"
    )


_CONTEXTS: dict[int, tuple[Any, ssl.SSLContext]] = {}


def _context(ca: Any) -> ssl.SSLContext:
    """A client context trusting ``ca`` (made once per CA: loading the system's CAs takes
    tens of milliseconds, more than the request)."""
    found = _CONTEXTS.get(id(ca))
    if found is None or found[0] is not ca:
        context = ssl.create_default_context()
        ca.configure_trust(context)
        found = _CONTEXTS[id(ca)] = (ca, context)
    return found[1]


def session_get(port: int, ca: Any, cookie: str | None, path: str = "/app/api/x",
                bearer: str | None = None) -> tuple[int, dict[str, str], bytes]:
    """(status, headers, body) of a GET with the session cookie and/or a bearer token."""
    conn = http.client.HTTPSConnection("127.0.0.1", port, context=_context(ca), timeout=10)
    try:
        headers = {"Cookie": f"{SESSION_COOKIE}={cookie}"} if cookie else {}
        if bearer:
            headers["Authorization"] = f"Bearer {bearer}"
        conn.request("GET", path, headers=headers)
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        conn.close()


def ws_connect(port: int, cookie: str, origin: str, ca: Any) -> WsClient:
    """An RFC 6455 handshake on /ws/session; ConnectionError for anything but 101."""
    raw = socket.create_connection(("127.0.0.1", port), timeout=5)
    sock = _context(ca).wrap_socket(raw, server_hostname="127.0.0.1")
    key = base64.b64encode(os.urandom(16)).decode()
    lines = ["GET /ws/session HTTP/1.1", f"Host: 127.0.0.1:{port}", "Connection: Upgrade",
             "Upgrade: websocket", "Sec-WebSocket-Version: 13", f"Sec-WebSocket-Key: {key}",
             f"Cookie: {SESSION_COOKIE}={cookie}", f"Origin: {origin}"]
    sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 101 "):
        sock.close()
        raise ConnectionError(head.decode("latin-1"))
    ws = WsClient(sock, head, rest)
    ws.sock.settimeout(8)
    return ws


def echo(ws: WsClient, text: bytes) -> bool:
    """Whether the upstream's echo answers ``text`` through the tunnel."""
    ws.send(OP_TEXT, text)
    frame = ws.recv_frame()
    return frame is not None and frame.opcode == OP_TEXT and frame.payload == text


def metric(admin_port: int, name: str, token: str = "test-admin-token") -> float:
    """One unlabelled series of a node's /metrics."""
    conn = http.client.HTTPConnection("127.0.0.1", admin_port, timeout=10)
    try:
        conn.request("GET", "/metrics", headers={"Authorization": f"Bearer {token}"})
        text = conn.getresponse().read().decode()
    finally:
        conn.close()
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not in /metrics")
