"""API keys end to end: real `fluxgate run` processes, real SQLite, the shared table.

One 4-worker gateway serves most tests (each with its own key names); the restart test has
its own. Keys are issued the way fluxctl does it (KeyOps on the config's state_dir), while
the gateway runs, so every test also exercises the master's watch of keys.db.
"""

from __future__ import annotations

import http.client
import json
import threading
import time
from pathlib import Path
from urllib.parse import quote

import pytest

from fluxgate.auth.keyops import KeyOps
from fluxgate.auth.keytable import read_generation
from fluxgate.config import load_config
from tests.support.gateway import GatewayProcess, raw_request
from tests.support.upstream import RecordingUpstream
from tools.loadgen import run_load

DATA = Path(__file__).parent / "data" / "keys"

CONFIG = """\
trusted_proxies: [127.0.0.1/32]
api_keys: {{query: api_key}}  # query keys are opt-in: these tests cover them too
upstreams:
  app: {{targets: ["{url}"], connect_timeout: 1s, read_timeout: 5s, pool_size: 64}}
routes:
  - route: /load
    upstream: app
    middleware:
      - api_key: {{}}
  - route: /metrics
    upstream: app
    middleware:
      - api_key: {{scopes: [read:metrics]}}
  - route: /strict
    upstream: app
    middleware:
      - api_key: {{query: false}}
  - route: /probe
    upstream: app
    middleware:
      - api_key: {{}}
  - route: /open
    upstream: app
    public: true
"""


@pytest.fixture(scope="module")
def upstream():
    server = RecordingUpstream().start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def gw(tmp_path_factory, upstream):
    gateway = GatewayProcess(tmp_path_factory.mktemp("gw4"), CONFIG.format(url=upstream.url),
                             workers=4)
    try:
        yield gateway.start()
    finally:
        gateway.stop()


def ops(gw: GatewayProcess) -> KeyOps:
    """The fluxctl path: keys.db of the gateway's state_dir, written while it runs."""
    return KeyOps(load_config(gw.config_path))


def request(port: int, path: str, headers: dict[str, str] | None = None, *,
            source: str | None = None) -> tuple[int, dict[str, str], dict]:
    conn = http.client.HTTPConnection(
        "127.0.0.1", port, timeout=5, source_address=(source, 0) if source else None
    )
    try:
        conn.request("GET", path, headers=headers or {})
        resp = conn.getresponse()
        body = resp.read()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, (
            json.loads(body) if body.startswith(b"{") else {})
    finally:
        conn.close()


def wait_known(gw: GatewayProcess, key: str, *, seconds: float = 5.0) -> None:
    """Wait until every worker knows ``key``: it is restricted to other paths, so /probe
    answers 403 (known) instead of 401 (not yet), without spending any quota. Then one
    sweep more, for the workers this probe did not reach."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if request(gw.port, "/probe/x", {"X-API-Key": key})[0] == 403:
            time.sleep(0.5)
            return
        time.sleep(0.05)
    raise AssertionError("the key never reached the workers")


def wait_published(gw: GatewayProcess, before: int, *, seconds: float = 5.0) -> None:
    """Wait for a table generation after ``before``, plus two worker sweeps."""
    deadline = time.monotonic() + seconds
    while read_generation(str(gw.state_dir)) <= before:
        assert time.monotonic() < deadline, "no new key table was published"
        time.sleep(0.02)
    time.sleep(0.6)


# ---- quotas ---------------------------------------------------------------------------------


def test_quota_exact_across_four_workers_and_kept_across_a_restart(tmp_path, upstream):
    gateway = GatewayProcess(tmp_path, CONFIG.format(url=upstream.url), workers=4)
    gateway.start()
    try:
        with ops(gateway) as o:
            key = o.generate("load-test", quota="1000/d", routes=["/load"])["key"]
        wait_known(gateway, key)
        report = run_load(f"{gateway.url}/load/x", connections=32, requests=1500,
                          duration=60, headers=[("X-API-Key", key)], processes=2, timeout=10)
        assert report["status"] == {"200": 1000, "429": 500}, report["status"]
        assert not any(report["errors"].values()), report["errors"]
        gateway.stop()
        # The count (quotas.bin) and the use (flushed into keys.db at stop) survive.
        with ops(gateway) as o:
            (record,) = o.store.by_name("load-test")
            assert record.requests >= 1500 and record.last_used_from == "127.0.0.1"
        gateway.start()
        status, headers, body = request(gateway.port, "/load/x", {"X-API-Key": key})
        assert status == 429 and body["error"] == "quota_exceeded"
        assert int(headers["retry-after"]) >= 1
        assert headers["ratelimit-limit"] == "1000" and headers["ratelimit-remaining"] == "0"
        with ops(gateway) as o:
            assert o.usage("load-test")["quota"]["used"] == 1000
    finally:
        gateway.stop()


def test_ratelimit_headers_count_down(gw):
    with ops(gw) as o:
        key = o.generate("countdown", quota="3/h", routes=["/load"])["key"]
    wait_known(gw, key)
    seen = []
    for _ in range(4):
        status, headers, _ = request(gw.port, "/load/x", {"X-API-Key": key})
        seen.append((status, headers.get("ratelimit-remaining")))
        assert headers["ratelimit-limit"] == "3"
        assert 0 < int(headers["ratelimit-reset"]) <= 3600
    assert seen == [(200, "2"), (200, "1"), (200, "0"), (429, "0")]


# ---- revocation, rotation, expiry -----------------------------------------------------------


def test_revoke_under_load_every_worker_refuses_within_a_second(gw):
    with ops(gw) as o:
        key = o.generate("revoked-under-load", routes=["/load"])["key"]
    wait_known(gw, key)
    results: list[tuple[float, int]] = []
    stop = threading.Event()

    def client() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=5)
        deadline = time.monotonic() + 10  # bounded even if the test fails early
        try:
            while not stop.is_set() and time.monotonic() < deadline:
                sent = time.monotonic()
                conn.request("GET", "/load/x", headers={"X-API-Key": key})
                resp = conn.getresponse()
                resp.read()
                results.append((sent, resp.status))
        finally:
            conn.close()

    threads = [threading.Thread(target=client) for _ in range(8)]
    for t in threads:
        t.start()
    time.sleep(1.0)
    with ops(gw) as o:
        o.revoke("revoked-under-load")
    revoked_at = time.monotonic()  # committed
    time.sleep(2.0)
    stop.set()
    for t in threads:
        t.join(15)
    late_ok = [s for s, code in results if code == 200 and s > revoked_at + 1.0]
    assert not late_ok, f"{len(late_ok)} requests accepted more than 1 s after the revocation"
    assert {code for s, code in results if s > revoked_at + 1.0} == {401}
    assert any(code == 200 for s, code in results if s < revoked_at)
    # New connections land on every worker (4 workers, 24 connections): all refuse.
    assert {request(gw.port, "/load/x", {"X-API-Key": key})[0] for _ in range(24)} == {401}


def test_rotation_both_keys_until_the_grace_ends_then_only_the_new_one(gw):
    with ops(gw) as o:
        old = o.generate("rotating", quota="100/d", routes=["/load"])["key"]
    wait_known(gw, old)
    for _ in range(3):
        assert request(gw.port, "/load/x", {"X-API-Key": old})[0] == 200
    before = read_generation(str(gw.state_dir))
    with ops(gw) as o:
        rotated = o.rotate("rotating", grace="5s")
        grace_until = o.store.by_id(old[3:15]).valid_until  # whole seconds
    new = rotated["key"]
    wait_published(gw, before)
    status, headers, _ = request(gw.port, "/load/x", {"X-API-Key": new})
    assert status == 200 and "deprecation" not in headers
    remaining = int(headers["ratelimit-remaining"])
    assert remaining == 100 - 4  # the name's count went on: 3 with the old key, 1 new
    status, headers, _ = request(gw.port, "/load/x", {"X-API-Key": old})
    assert status == 200
    assert int(headers["ratelimit-remaining"]) == remaining - 1
    assert headers["deprecation"].startswith("@")
    assert headers["sunset"].endswith(" GMT")
    time.sleep(max(grace_until - time.time(), 0) + 0.3)
    status, _, body = request(gw.port, "/load/x", {"X-API-Key": old})
    assert (status, body["error"]) == (401, "invalid_key")
    assert request(gw.port, "/load/x", {"X-API-Key": new})[0] == 200


def test_expired_key_refused_then_renewed(gw):
    with ops(gw) as o:
        key = o.generate("short-lived", expiry="4s", routes=["/load"])["key"]
        expires = o.store.by_name("short-lived")[0].expires_at  # whole seconds
    wait_known(gw, key)
    assert request(gw.port, "/load/x", {"X-API-Key": key})[0] == 200
    time.sleep(max(expires - time.time(), 0) + 0.2)
    status, headers, body = request(gw.port, "/load/x", {"X-API-Key": key})
    assert (status, body["error"]) == (401, "invalid_key")
    assert headers["www-authenticate"].startswith("ApiKey ") and 'error="invalid_key"' in (
        headers["www-authenticate"])
    before = read_generation(str(gw.state_dir))
    with ops(gw) as o:
        o.renew("short-lived", expiry="1h")
    wait_published(gw, before)
    assert request(gw.port, "/load/x", {"X-API-Key": key})[0] == 200


# ---- addresses ------------------------------------------------------------------------------


def test_ip_allowlist_trusted_proxy_and_spoofed_forwarded_for(gw, upstream):
    with ops(gw) as o:
        key = o.generate("office", allow_ips=["10.1.2.0/24"], routes=["/load"])["key"]
    wait_known(gw, key)
    h = {"X-API-Key": key}
    # 127.0.0.1 is a trusted proxy: its X-Forwarded-For names the client.
    assert request(gw.port, "/load/a", {**h, "X-Forwarded-For": "10.1.2.3"})[0] == 200
    assert upstream.requests[-1].header("X-Forwarded-For") == "10.1.2.3, 127.0.0.1"
    status, _, body = request(gw.port, "/load/b", {**h, "X-Forwarded-For": "192.168.9.9"})
    assert (status, body["error"]) == (403, "ip_not_allowed")
    assert request(gw.port, "/load/c", h)[0] == 403  # 127.0.0.1 itself is not allowed
    # 127.0.0.2 is not a trusted proxy: its X-Forwarded-For is a spoof and is ignored.
    status, _, body = request(gw.port, "/load/d", {**h, "X-Forwarded-For": "10.1.2.3"},
                              source="127.0.0.2")
    assert (status, body["error"]) == (403, "ip_not_allowed")
    time.sleep(1.1)
    assert request(gw.port, "/load/e", {**h, "X-Forwarded-For": "10.1.2.77"})[0] == 200
    with ops(gw) as o:
        assert o.usage("office")["last_used_from"] == "10.1.2.77"


# ---- refusals -------------------------------------------------------------------------------


def hostile_http_keys() -> list[tuple[str, str]]:
    cases = []
    for line in (DATA / "hostile.jsonl").read_text().splitlines():
        case = json.loads(line)
        if "key" in case:
            cases.append((case["name"], case["key"]))
    return cases


def test_forged_truncated_and_garbage_keys_are_401_never_500_never_forwarded(gw, upstream):
    with ops(gw) as o:
        real = o.generate("target", routes=["/load"])["key"]
    wait_known(gw, real)
    cases = hostile_http_keys() + [
        ("the real key truncated", real[:-1]),
        ("the real key, one character changed", real[:-1] + ("A" if real[-1] != "A" else "B")),
        ("the real key twice", real + real),
    ]
    before = len(upstream.requests)
    for name, key in cases:
        head = b"GET /load/x HTTP/1.1\r\nHost: t\r\nX-API-Key: %s\r\n\r\n" % key.encode()
        reply = raw_request(gw.port, head, read_until_close=False)
        assert reply.startswith(b"HTTP/1.1 401 "), (name, reply[:200])
        assert b'"invalid_key"' in reply, name
        reply = raw_request(
            gw.port, b"GET /load/x?api_key=%s HTTP/1.1\r\nHost: t\r\n\r\n" % quote(key).encode(),
            read_until_close=False,
        )
        assert reply.startswith(b"HTTP/1.1 401 "), (name, reply[:200])
    assert len(upstream.requests) == before, "a refused request reached the upstream"
    # Two keys in one request are ambiguous, whatever they are.
    status, _, body = request(gw.port, f"/load/x?api_key={real}", {"X-API-Key": real})
    assert (status, body["error"]) == (401, "invalid_key")
    status, headers, body = request(gw.port, "/load/x")
    assert (status, body["error"]) == (401, "missing_credentials")
    assert headers["www-authenticate"] == 'ApiKey realm="fluxgate", header="X-API-Key"'
    assert len(upstream.requests) == before
    # Every refusal is counted by its reason (never with the key): /metrics.
    conn = http.client.HTTPConnection("127.0.0.1", gw.admin_port, timeout=5)
    conn.request("GET", "/metrics", headers={"Authorization": "Bearer test-admin-token"})
    metrics = conn.getresponse().read().decode()
    conn.close()
    for reason in ("malformed", "bad_tag", "ambiguous_credentials", "missing_credentials"):
        assert f'fluxgate_auth_failures_total{{method="api_key",reason="{reason}"}}' in metrics


def test_scopes_routes_and_query_policy(gw, upstream):
    with ops(gw) as o:
        reader = o.generate("reader", scopes=["read:metrics"])["key"]
        writer = o.generate("writer", scopes=["write:metrics"], routes=["/metrics/cpu"])["key"]
    wait_known(gw, writer)
    assert request(gw.port, "/metrics/cpu", {"X-API-Key": reader})[0] == 200
    status, headers, body = request(gw.port, "/metrics/cpu", {"X-API-Key": writer})
    assert (status, body["error"]) == (403, "insufficient_scope")
    assert 'scope="read:metrics"' in headers["www-authenticate"]
    status, _, body = request(gw.port, "/load/x", {"X-API-Key": writer})  # other path
    assert (status, body["error"]) == (403, "insufficient_scope")
    # /strict refuses keys in the query string, and still strips them.
    status, _, body = request(gw.port, f"/strict/x?api_key={reader}")
    assert (status, body["error"]) == (401, "missing_credentials")
    assert request(gw.port, f"/strict/x?api_key={reader}&a=1", {"X-API-Key": reader})[0] == 200
    assert upstream.requests[-1].target == "/strict/x?a=1"


def test_the_key_never_reaches_the_upstream_logs_or_metrics(gw, upstream):
    with ops(gw) as o:
        key = o.generate("secretive", scopes=["read:metrics"], routes=["/metrics"])["key"]
    wait_known(gw, key)
    spoof = {"X-FluxGate-Subject": "admin", "X-FluxGate-Auth": "jwt"}
    assert request(gw.port, "/metrics/a?x=1", {"X-API-Key": key, **spoof})[0] == 200
    by_header = upstream.requests[-1]
    assert request(gw.port, f"/metrics/b?x=1&api_key={key}&y=2")[0] == 200
    by_query = upstream.requests[-1]
    assert by_query.target == "/metrics/b?x=1&y=2"
    for received in (by_header, by_query):
        assert "x-api-key" not in received.header_names()
        assert key not in json.dumps(received.headers) and key not in received.target
        assert received.header("X-FluxGate-Auth") == "api_key"
        assert received.header("X-FluxGate-Subject") == "secretive"
        assert received.header("X-FluxGate-Scopes") == "read:metrics"
    conn = http.client.HTTPConnection("127.0.0.1", gw.admin_port, timeout=5)
    auth = {"Authorization": "Bearer test-admin-token"}
    for path in ("/metrics", "/admin/keys?all=1", "/admin/keys/show?name=secretive"):
        conn.request("GET", path, headers=auth)
        resp = conn.getresponse()
        text = resp.read().decode()
        assert resp.status == 200 and key not in text and key[15:] not in text, path
    conn.close()
    time.sleep(0.3)  # the access log is flushed by the sweep
    assert key not in gw.log() and key[15:] not in gw.log()
    for path in gw.state_dir.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert key.encode() not in data and key[15:].encode() not in data, path


def test_keys_are_stripped_on_every_route(gw, upstream):
    # Whatever decides (here: nothing, a public route), no upstream sees a key.
    status = request(gw.port, "/open/x?a=1&api_key=fg_anything&b=2",
                     {"X-API-Key": "fg_whatever", "x-api-KEY": "second"})[0]
    assert status == 200
    received = upstream.requests[-1]
    assert received.target == "/open/x?a=1&b=2"
    assert "x-api-key" not in received.header_names()


def test_state_files_are_private(gw):
    for name in ("keys.db", "keys.secret", "keys.usage", "quotas.bin"):
        assert (gw.state_dir / name).stat().st_mode & 0o777 == 0o600, name
    assert (gw.state_dir / "keys.table").stat().st_mode & 0o777 == 0o400  # never rewritten


# ---- the middleware on its own: scope_map -----------------------------------------------------


class _Gateway:
    """What ApiKeyMiddleware.from_config reads of a worker's Gateway."""

    def __init__(self, config) -> None:
        self.config = config
        self.state_dir = config.state_dir
        self.periodic: list = []


def test_scope_map_rules_cover_methods_and_paths(tmp_path):
    from fluxgate.config import load_config_text
    from fluxgate.middleware.api_key import ApiKeyMiddleware
    from fluxgate.proxy.protocol import RequestState
    from tests.support.keys import KeyState

    state = KeyState(tmp_path / "state")
    _, reader = state.generate("reader", scopes=["orders:read"])
    _, writer = state.generate("writer", scopes=["orders:write"])
    state.table()
    config = load_config_text(f"""
state_dir: {tmp_path / "state"}
routes:
  - route: /orders
    upstream: http://127.0.0.1:9
    middleware:
      - api_key: {{}}
scope_map:
  orders:write: ["POST /orders/**", "PUT /orders/*"]
""")
    middleware = ApiKeyMiddleware.from_config(config.routes[0].middleware[0], _Gateway(config))

    def call(key: str, method: bytes, path: bytes):
        req = RequestState(0.0)
        req.headers, req.method, req.path, req.client_ip = [(b"X-API-Key", key.encode())], method, path, "1.2.3.4"
        return middleware(req), req

    try:
        assert call(reader, b"GET", b"/orders/7")[0] is None  # no rule covers GET
        refusal, _ = call(reader, b"POST", b"/orders/7/items")
        assert refusal.status == 403 and refusal.code == "insufficient_scope"
        assert b'scope="orders:write"' in refusal.headers[0][1]
        assert call(writer, b"PUT", b"/orders/7")[0] is None
        error, req = call(writer, b"GET", b"/orders/7")
        assert error is None and req.principal.id == "key:writer"
    finally:
        middleware.shared.table.release()
        state.close()
