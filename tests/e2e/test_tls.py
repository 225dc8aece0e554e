"""TLS end to end: real `fluxgate run` processes with certificates from a trustme CA.

The listener (TLS 1.2+ with AEAD ciphers only, ALPN, SNI among several certificates, a
plain HTTP request refused, certificates re-read on SIGHUP while old connections finish),
https upstreams (verified against a CA bundle, wrong name or untrusted CA → 502, mTLS,
keep-alive pooling) and the expiry gauge.
"""

from __future__ import annotations

import http.client
import json
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.request
import warnings
from pathlib import Path

import pytest
import trustme
from cryptography import x509

from tests.support.certs import der, write_pair
from tests.support.gateway import REPO, wait_until
from tests.support.upstream import RecordingUpstream

pytestmark = pytest.mark.slow

ADMIN_TOKEN = "test-admin-token"  # what tests/support/gateway.py writes into the config


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


def not_after(leaf: trustme.LeafCert) -> float:
    return x509.load_der_x509_certificate(der(leaf)).not_valid_after_utc.timestamp()


def tls_listen(*pairs: tuple[Path, Path]) -> str:
    """The `listen:` value of a TLS listener on 127.0.0.1:0 (``cert``/``key`` for one pair)."""
    if len(pairs) == 1:
        (cert, key), = pairs
        return f"{{address: '127.0.0.1:0', tls: {{cert: '{cert}', key: '{key}'}}}}"
    items = ", ".join(f"{{cert: '{c}', key: '{k}'}}" for c, k in pairs)
    return f"{{address: '127.0.0.1:0', tls: {{certificates: [{items}]}}}}"


def public_route(upstream_url: str, prefix: str = "/api") -> str:
    return f"routes:\n  - {{route: {prefix}, upstream: '{upstream_url}', public: true}}\n"


def client_context(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    return context


def handshake(port: int, context: ssl.SSLContext, server_name: str | None = "127.0.0.1"):
    """Open a TLS connection; returns (version, cipher name, ALPN, peer certificate DER)."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        with context.wrap_socket(sock, server_hostname=server_name) as tls:
            return (tls.version(), tls.cipher()[0], tls.selected_alpn_protocol(),
                    tls.getpeercert(binary_form=True))


def get(conn: http.client.HTTPConnection, path: str) -> tuple[int, bytes, http.client.HTTPResponse]:
    conn.request("GET", path)
    response = conn.getresponse()
    return response.status, response.read(), response


def metrics(gw) -> str:
    request = urllib.request.Request(f"http://127.0.0.1:{gw.admin_port}/metrics",
                                     headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
    with urllib.request.urlopen(request, timeout=5) as response:
        return response.read().decode()


def generation(gw) -> int:
    return json.loads((gw.state_dir / "gateway.json").read_text())["generation"]


def legacy_client(ca: trustme.CA, maximum: ssl.TLSVersion) -> ssl.SSLContext:
    """A client that offers only TLS versions up to ``maximum`` (1.0/1.1 need SECLEVEL 0)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ca.configure_trust(context)
    context.set_ciphers("DEFAULT:@SECLEVEL=0")
    with warnings.catch_warnings():  # TLSv1 and TLSv1_1 are deprecated: that is the point
        warnings.simplefilter("ignore", DeprecationWarning)
        context.minimum_version = ssl.TLSVersion.TLSv1
        context.maximum_version = maximum
    return context


def offers(context: ssl.SSLContext, leaf: trustme.LeafCert, version: ssl.TLSVersion) -> bool:
    """Control: a server that accepts ``version`` completes a handshake with ``context``
    (so a refusal by the gateway is the gateway's doing, not a client that never offered)."""
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    leaf.configure_cert(server)
    server.set_ciphers("DEFAULT:@SECLEVEL=0")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        server.minimum_version = version
    result: dict[str, str] = {}
    with socket.create_server(("127.0.0.1", 0)) as listener:
        def accept() -> None:
            conn, _ = listener.accept()
            try:
                with server.wrap_socket(conn, server_side=True) as tls:
                    result["server"] = tls.version()
            except (ssl.SSLError, OSError):
                conn.close()

        thread = threading.Thread(target=accept, daemon=True)
        thread.start()
        try:
            handshake(listener.getsockname()[1], context)
        except (ssl.SSLError, OSError):
            return False
        finally:
            thread.join(5)
    return result.get("server") is not None


# ---- the listener ---------------------------------------------------------------------------


def test_tls_listener_serves_modern_tls_only(gateway_factory, upstream, ca, tmp_path):
    leaf = ca.issue_cert("127.0.0.1", "gateway.test", key_type=trustme.KeyType.RSA)
    gw = gateway_factory(public_route(upstream.url) + "limits: {header_timeout: 1s}\n",
                         listen=tls_listen(write_pair(leaf, tmp_path, "gw")))
    assert gw.url.startswith("https://")

    # A verified TLS 1.3 connection; keep-alive; the upstream hears the client came over https.
    context = client_context(ca)
    conn = http.client.HTTPSConnection("127.0.0.1", gw.port, context=context, timeout=5)
    assert get(conn, "/api/one")[0] == 200
    assert conn.sock.version() == "TLSv1.3"
    assert get(conn, "/api/two")[0] == 200
    conn.close()
    assert [r.header("X-Forwarded-Proto") for r in upstream.requests] == ["https", "https"]
    # A client's own X-Forwarded-Proto is not believed (no trusted_proxies).
    conn = http.client.HTTPSConnection("127.0.0.1", gw.port, context=context, timeout=5)
    conn.request("GET", "/api/three", headers={"X-Forwarded-Proto": "http"})
    assert conn.getresponse().status == 200
    conn.close()
    assert upstream.requests[-1].header("X-Forwarded-Proto") == "https"

    # ALPN: http/1.1 is what the gateway speaks, whatever else the client offers.
    alpn = client_context(ca)
    alpn.set_alpn_protocols(["h2", "http/1.1"])
    assert handshake(gw.port, alpn)[2] == "http/1.1"

    # TLS 1.2 with an AEAD cipher behind ECDHE is accepted ...
    tls12 = client_context(ca)
    tls12.maximum_version = ssl.TLSVersion.TLSv1_2
    version, cipher, _, _ = handshake(gw.port, tls12)
    assert version == "TLSv1.2" and cipher.startswith("ECDHE-") and ("GCM" in cipher or "CHACHA" in cipher)
    # ... CBC and RSA key transport are not, though the certificate is RSA.
    for weak in ("ECDHE-RSA-AES128-SHA", "AES128-GCM-SHA256", "AES256-SHA256"):
        legacy = client_context(ca)
        legacy.maximum_version = ssl.TLSVersion.TLSv1_2
        legacy.set_ciphers(weak + ":@SECLEVEL=0")
        with pytest.raises((ssl.SSLError, ConnectionError)):
            handshake(gw.port, legacy)

    # TLS 1.0 and 1.1: refused, by a client that demonstrably offers them.
    for maximum in (ssl.TLSVersion.TLSv1, ssl.TLSVersion.TLSv1_1):
        old = legacy_client(ca, maximum)
        assert offers(old, leaf, maximum)
        with pytest.raises((ssl.SSLError, ConnectionError)):
            handshake(gw.port, old)

    # Plain HTTP on the TLS port: the handshake fails, nothing is parsed or answered.
    seen = len(upstream.requests)
    with socket.create_connection(("127.0.0.1", gw.port), timeout=5) as sock:
        sock.sendall(b"GET /api/plain HTTP/1.1\r\nHost: a\r\n\r\n")
        received = b""
        try:
            while chunk := sock.recv(4096):
                received += chunk
        except ConnectionResetError:
            pass
    assert b"HTTP/" not in received
    assert len(upstream.requests) == seen

    # A peer that connects and never starts the handshake: cut after limits.header_timeout.
    with socket.create_connection(("127.0.0.1", gw.port), timeout=10) as sock:
        started = time.monotonic()
        try:
            assert sock.recv(4096) == b""
        except ConnectionResetError:
            pass
        assert 0.5 < time.monotonic() - started < 5

    # The expiry gauge, from the master.
    text = metrics(gw)
    line = next(x for x in text.splitlines()
                if x.startswith("fluxgate_tls_certificate_expiry_timestamp_seconds{"))
    assert 'listener="127.0.0.1:0"' in line and 'subject="gateway.test"' in line
    assert float(line.rsplit(" ", 1)[1]) == not_after(leaf)
    assert "# TYPE fluxgate_tls_certificate_expiry_timestamp_seconds gauge" in text


def test_sni_picks_the_certificate_that_names_the_host(gateway_factory, upstream, ca, tmp_path):
    first = ca.issue_cert("a.test", "127.0.0.1")
    second = ca.issue_cert("b.test", "*.wild.test")
    gw = gateway_factory(public_route(upstream.url), listen=tls_listen(
        write_pair(first, tmp_path, "a"), write_pair(second, tmp_path, "b")))
    context = client_context(ca)  # check_hostname: the right certificate or no handshake
    assert handshake(gw.port, context, "b.test")[3] == der(second)
    assert handshake(gw.port, context, "B.Test")[3] == der(second)  # names are case-insensitive
    assert handshake(gw.port, context, "x.wild.test")[3] == der(second)
    assert handshake(gw.port, context, "a.test")[3] == der(first)
    anything = client_context(ca)
    anything.check_hostname = False
    # An unknown name, a wildcard two labels deep, or no SNI at all: the first (default).
    assert handshake(gw.port, anything, "c.test")[3] == der(first)
    assert handshake(gw.port, anything, "x.y.wild.test")[3] == der(first)
    assert handshake(gw.port, anything, None)[3] == der(first)


def test_sighup_rereads_the_certificate_and_old_connections_finish(
    gateway_factory, upstream, ca, tmp_path
):
    old_leaf, new_leaf = ca.issue_cert("127.0.0.1"), ca.issue_cert("127.0.0.1")
    cert, key = write_pair(old_leaf, tmp_path, "live")
    gw = gateway_factory(public_route(upstream.url) + "limits: {drain_timeout: 10s}\n",
                         listen=tls_listen((cert, key)))
    context = client_context(ca)
    kept = http.client.HTTPSConnection("127.0.0.1", gw.port, context=context, timeout=10)
    assert get(kept, "/api/before")[0] == 200
    assert kept.sock.getpeercert(binary_form=True) == der(old_leaf)

    # A slow request is in flight on the kept-alive connection when the reload happens.
    result: dict[str, object] = {}

    def slow() -> None:
        try:
            status, body, response = get(kept, "/api/slow/1500")
            result["answer"] = (status, body, response.getheader("Connection"))
        except (OSError, http.client.HTTPException) as exc:
            result["error"] = repr(exc)

    client = threading.Thread(target=slow, daemon=True)
    client.start()
    assert wait_until(lambda: any("/slow/" in r.target for r in upstream.requests), 5)
    write_pair(new_leaf, tmp_path, "live")
    gw.signal(signal.SIGHUP)
    assert wait_until(lambda: generation(gw) == 2, 10), gw.log()
    assert handshake(gw.port, context)[3] == der(new_leaf)  # new connections: the new one
    client.join(10)
    assert "error" not in result, result
    status, body, connection = result["answer"]
    assert status == 200 and b"/slow/1500" in body
    assert connection == "close"  # the old worker drains: answered, then closed
    assert kept.sock is None or kept.sock.getpeercert(binary_form=True) == der(old_leaf)
    kept.close()

    # A certificate that cannot be loaded at reload: refused, the running one keeps serving.
    cert.write_text("not a certificate\n")
    gw.signal(signal.SIGHUP)
    assert wait_until(lambda: "reload rejected" in gw.log(), 10), gw.log()
    assert "listen.tls.cert" in gw.log()
    assert generation(gw) == 2
    assert handshake(gw.port, context)[3] == der(new_leaf)


# ---- https upstreams ------------------------------------------------------------------------


def upstream_tls_context(leaf: trustme.LeafCert, client_ca: trustme.CA | None = None) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    leaf.configure_cert(context)
    if client_ca is not None:
        context.verify_mode = ssl.CERT_REQUIRED
        client_ca.configure_trust(context)
    return context


def test_https_upstream_is_verified(gateway_factory, ca, tmp_path):
    ca_file = tmp_path / "upstream-ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    server = RecordingUpstream(ssl=upstream_tls_context(ca.issue_cert("127.0.0.1", "api.internal")))
    server.start()
    try:
        target = server.url
        assert target.startswith("https://")
        gw = gateway_factory(
            "upstreams:\n"
            f"  good: {{targets: ['{target}'], tls: {{ca: '{ca_file}'}}}}\n"
            f"  named: {{targets: ['{target}'], tls: {{ca: '{ca_file}', server_name: api.internal}}}}\n"
            f"  wrong: {{targets: ['{target}'], tls: {{ca: '{ca_file}', server_name: other.internal}}}}\n"
            f"  untrusted: {{targets: ['{target}']}}\n"
            "routes:\n"
            "  - {route: /good, upstream: good, public: true}\n"
            "  - {route: /named, upstream: named, public: true}\n"
            "  - {route: /wrong, upstream: wrong, public: true}\n"
            "  - {route: /untrusted, upstream: untrusted, public: true}\n"
        )
        conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=10)
        for i in range(3):
            status, body, _ = get(conn, f"/good/{i}")
            assert status == 200 and f"/good/{i}".encode() in body
        assert server.connections == 1  # keep-alive pooling over TLS
        assert get(conn, "/named/x")[0] == 200
        for path in ("/wrong/x", "/untrusted/x"):
            status, body, _ = get(conn, path)
            assert status == 502 and json.loads(body)["error"] == "upstream_unavailable"
        assert [r.target for r in server.requests] == ["/good/0", "/good/1", "/good/2", "/named/x"]
        log = gw.log()
        assert "TLS handshake failed (server name other.internal)" in log
        assert "Hostname mismatch" in log
        assert "TLS handshake failed (server name 127.0.0.1)" in log
        assert "unable to get local issuer certificate" in log
    finally:
        server.stop()


def test_mtls_upstream_gets_the_client_certificate(gateway_factory, ca, tmp_path):
    ca_file = tmp_path / "upstream-ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    client_ca = trustme.CA()
    cert, key = write_pair(client_ca.issue_cert("gateway.client", common_name="gateway.client"),
                           tmp_path, "client")
    server = RecordingUpstream(ssl=upstream_tls_context(ca.issue_cert("127.0.0.1"), client_ca))
    server.start()
    try:
        gw = gateway_factory(
            "upstreams:\n"
            f"  mtls: {{targets: ['{server.url}'], tls: {{ca: '{ca_file}', cert: '{cert}', key: '{key}'}}}}\n"
            f"  anonymous: {{targets: ['{server.url}'], tls: {{ca: '{ca_file}'}}}}\n"
            "routes:\n"
            "  - {route: /mtls, upstream: mtls, public: true}\n"
            "  - {route: /anonymous, upstream: anonymous, public: true}\n"
        )
        conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=10)
        assert get(conn, "/mtls/x")[0] == 200
        subject = dict(pair for rdn in server.peer_certs[0]["subject"] for pair in rdn)
        assert subject["commonName"] == "gateway.client"
        assert get(conn, "/anonymous/x")[0] == 502
        assert [r.target for r in server.requests] == ["/mtls/x"]
        assert wait_until(lambda: "refuse the client certificate" in gw.log(), 5), gw.log()
    finally:
        server.stop()


# ---- config errors --------------------------------------------------------------------------


def check(config: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fluxgate.cli.fluxgate", "check", "--config",
                           str(config)], cwd=REPO, capture_output=True, text=True, timeout=30)


def test_fluxgate_check_names_the_tls_key(ca, tmp_path):
    cert, key = write_pair(ca.issue_cert("127.0.0.1"), tmp_path, "gw")
    _, other_key = write_pair(ca.issue_cert("127.0.0.1"), tmp_path, "other")
    routes = "routes:\n  - {route: /a, upstream: 'http://127.0.0.1:9', public: true}\n"
    config = tmp_path / "fluxgate.yaml"
    cases = {
        f"listen: {{address: '127.0.0.1:8443', tls: {{cert: '{tmp_path}/missing.crt', key: '{key}'}}}}\n":
            "listen.tls.cert (line 1): cannot read",
        f"listen: {{address: '127.0.0.1:8443', tls: {{cert: '{cert}', key: '{other_key}'}}}}\n":
            "listen.tls.key (line 1): ",
        f"listen:\n  address: '127.0.0.1:8443'\n  tls:\n    certificates:\n"
        f"      - {{cert: '{cert}', key: '{key}'}}\n      - {{cert: '{cert}', key: '{tmp_path}/nokey'}}\n":
            "listen.tls.certificates[1].key (line 6): cannot read",
        "upstreams:\n  app: {targets: ['https://127.0.0.1:9'], tls: {ca: '/nonexistent/ca.pem'}}\n":
            "upstreams.app.tls.ca (line 2): cannot load the CA bundle /nonexistent/ca.pem",
    }
    for text, expected in cases.items():
        config.write_text(text + routes)
        run = check(config)
        assert run.returncode == 1, (text, run.stdout, run.stderr)
        assert expected in run.stderr, (expected, run.stderr)
    config.write_text(f"listen: {{address: '127.0.0.1:8443', tls: {{cert: '{cert}', key: '{key}'}}}}\n"
                      + routes)
    assert check(config).returncode == 0
