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

The ``cluster`` fixture (a test module imports it, with the login tests' ``ca``) starts such
nodes on the ``redis_server`` fixture: ``c = cluster(nodes=2, access_token_seconds=60,
relay_for=(1,), on_store_down="local", **oauth2_options)``.
"""

from __future__ import annotations

import base64
import concurrent.futures
import http.client
import json
import os
import socket
import ssl
import time
from dataclasses import dataclass, field
from typing import Any

import pytest

from tests.support.browserless import Browserless
from tests.support.certs import write_pair
from tests.support.gateway import GatewayProcess, free_port
from tests.support.redis_server import FaultRelay
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


def login_middleware(server: Any, client: Any, site_port: int, **options: object) -> str:
    """A route's ``middleware:`` block: the oauth2 browser login of ``client`` at ``server``
    for the site on ``site_port``, with ``options`` added to the oauth2 entry."""
    extra = "".join(f"          {k}: {json.dumps(v)}\n" for k, v in options.items())
    return (
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


def node_config(store: str, node: str, server: Any, client: Any, site_port: int,
                upstream_url: str, on_store_down: str = "local", **options: object) -> str:
    """One node's config (the header GatewayProcess adds comes first)."""
    login = login_middleware(server, client, site_port, **options)
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


def client_context(ca: Any) -> ssl.SSLContext:
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
    conn = http.client.HTTPSConnection("127.0.0.1", port, context=client_context(ca),
                                       timeout=10)
    try:
        headers = {"Cookie": f"{SESSION_COOKIE}={cookie}"} if cookie else {}
        if bearer:
            headers["Authorization"] = f"Bearer {bearer}"
        conn.request("GET", path, headers=headers)
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        conn.close()


def ws_connect(port: int, cookie: str | None, origin: str | None, ca: Any) -> WsClient:
    """An RFC 6455 handshake over TLS on /ws/session, with the session cookie and the
    Origin when given; ConnectionError for anything but 101."""
    raw = socket.create_connection(("127.0.0.1", port), timeout=5)
    sock = client_context(ca).wrap_socket(raw, server_hostname="127.0.0.1")
    key = base64.b64encode(os.urandom(16)).decode()
    lines = ["GET /ws/session HTTP/1.1", f"Host: 127.0.0.1:{port}", "Connection: Upgrade",
             "Upgrade: websocket", "Sec-WebSocket-Version: 13", f"Sec-WebSocket-Key: {key}"]
    if cookie is not None:
        lines.append(f"Cookie: {SESSION_COOKIE}={cookie}")
    if origin is not None:
        lines.append(f"Origin: {origin}")
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


# ---- a cluster of login nodes for tests (the `cluster` fixture) -------------------------------


@dataclass
class Cluster:
    """Login nodes on one Redis (some through a FaultRelay), as the fixture started them."""

    nodes: list[GatewayProcess]
    server: object
    client: object
    ca: object
    relays: list = field(default_factory=list)

    def url(self, node: int) -> str:
        return f"https://127.0.0.1:{self.nodes[node].port}"

    def sign_in(self, node: int = 0) -> Browserless:
        browser = Browserless(ca=self.ca)
        hops = browser.login(self.url(node) + "/app/page", "alice",
                             self.server.password("alice"))
        assert hops[-1].status == 200, hops[-1].text
        return browser

    def get(self, browser: Browserless, node: int, path: str = "/app/x") -> int:
        """The status of a script's request (401, not a redirect, without a session)."""
        return browser.get(self.url(node) + path, headers={"Accept": "application/json"}).status


@pytest.fixture
def cluster(tmp_path, ca, upstream, django_auth_server, redis_server):
    started: list[GatewayProcess] = []
    relays: list[FaultRelay] = []

    def start(nodes: int = 2, access_token_seconds: int = 60, relay_for: tuple[int, ...] = (),
              workers: int = 2, on_store_down: str = "local", **options: object) -> Cluster:
        server = django_auth_server
        ports = [free_port() for _ in range(nodes)]
        # One site behind the nodes: the callback and the post-logout page are node A's.
        client = server.register_client([callback_url(ports[0])], [signed_out_url(ports[0])],
                                        access_token_seconds=access_token_seconds)
        leaf = ca.issue_cert("127.0.0.1")
        gateways = []
        for index, port in enumerate(ports):
            store = redis_server.url
            if index in relay_for:
                relay = FaultRelay(redis_server.port).start()
                relays.append(relay)
                store = relay.url
            cert, key = write_pair(leaf, tmp_path, f"node{index}")
            directory = tmp_path / f"node{index}"
            directory.mkdir()
            config = node_config(store, f"n{index}", server, client, ports[0], upstream.url,
                                 on_store_down, **options)
            gw = GatewayProcess(directory, config, workers=workers,
                                listen=tls_listen(port, cert, key))
            started.append(gw)
            gw.start()
            gateways.append(gw)
        return Cluster(gateways, server, client, ca, relays)

    try:
        yield start
    finally:
        for gw in started:
            gw.stop()
        for relay in relays:
            relay.stop()


def no_500(cluster: Cluster) -> None:
    """No node answered a 500 or logged a traceback."""
    for gw in cluster.nodes:
        assert " 500 " not in gw.log() and "Traceback" not in gw.log(), gw.log()[-3000:]


def cluster_get(c: Cluster, node: int, cookie: str | None, path: str = "/app/api/x",
                bearer: str | None = None) -> tuple[int, dict[str, str], bytes]:
    """``session_get`` on node ``node`` of ``c``."""
    return session_get(c.nodes[node].port, c.ca, cookie, path, bearer)


def admin_post(gw: GatewayProcess, path: str, body: dict) -> int:
    """The status of a POST to a node's admin API (the test gateways' admin token)."""
    conn = http.client.HTTPConnection("127.0.0.1", gw.admin_port, timeout=10)
    try:
        conn.request("POST", path, body=json.dumps(body),
                     headers={"Authorization": "Bearer test-admin-token",
                              "Content-Type": "application/json"})
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()


class Load:
    """Session requests on every node from a few threads, until stopped."""

    def __init__(self, c: Cluster, cookie: str, nodes: tuple[int, ...] = (0, 1)) -> None:
        self.c, self.cookie, self.nodes = c, cookie, nodes
        self.statuses: list[int] = []
        self.running = True
        self.pool = concurrent.futures.ThreadPoolExecutor(4)
        self.futures = [self.pool.submit(self._run, node) for node in nodes * 2]

    def _run(self, node: int) -> None:
        while self.running:
            self.statuses.append(cluster_get(self.c, node, self.cookie)[0])
            time.sleep(0.02)

    def stop(self) -> dict[int, int]:
        self.running = False
        for future in self.futures:
            future.result()
        self.pool.shutdown()
        return {s: self.statuses.count(s) for s in set(self.statuses)}


def fresh_login_status(c: Cluster, node: int) -> int:
    """A browser without a session navigates to a node: where the login starts."""
    return Browserless(ca=c.ca).get(c.url(node) + "/app/page").status


