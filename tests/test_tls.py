"""fluxgate/tls.py and what surrounds it in-process: context building and its errors, the SNI
choice, X-Forwarded-Proto on a TLS connection, the expiry gauge and warnings, and the audit
findings (plain_http_listener, tls_certificate_expiring / _expired), also through fluxctl."""

from __future__ import annotations

import asyncio
import datetime
import logging
import ssl
import subprocess
import sys
from pathlib import Path

import pytest
import trustme
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from fluxgate import tls
from fluxgate.cli import audit
from fluxgate.config import load_config_text, schema
from fluxgate.master.certificates import EXPIRY_METRIC, expiry_metrics, log_expiry
from fluxgate.proxy.protocol import TlsClientConnection
from tests.support.certs import write_pair
from tests.support.gateway import REPO
from tests.support.inprocess import CollectingTransport, wire_gateway

DAY = 86400.0
ROUTES = "routes:\n  - {route: /, upstream: 'http://127.0.0.1:9', public: true}\n"


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


def pair(leaf: trustme.LeafCert, directory: Path, name: str) -> tuple[str, str]:
    cert, key = write_pair(leaf, directory, name)
    return str(cert), str(key)


def listen(**fields) -> schema.ListenTls:
    return schema.ListenTls(**fields)


# ---- building contexts ----------------------------------------------------------------------


def test_listener_context_is_modern(ca, tmp_path):
    cert, key = pair(ca.issue_cert("gw.test", common_name="gw.test"), tmp_path, "gw")
    built = tls.listener_tls(listen(cert=cert, key=key))
    context = built.context
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2
    assert context.options & ssl.OP_NO_RENEGOTIATION
    names = {c["name"] for c in context.get_ciphers()}
    tls12 = {c["name"] for c in context.get_ciphers() if c["protocol"] == "TLSv1.2"}
    assert tls12 and all(n.startswith("ECDHE-") and ("GCM" in n or "CHACHA20" in n) for n in tls12)
    assert {"TLS_AES_128_GCM_SHA256", "TLS_CHACHA20_POLY1305_SHA256"} <= names
    assert context.sni_callback is None  # one certificate: no per-handshake callback
    (info,) = built.certificates
    assert info.subject == "gw.test" and info.dns_names == ("gw.test",)


@pytest.mark.parametrize(
    ("fields", "path", "message"),
    [
        ({"cert": "{missing}", "key": "{key}"}, ("cert",), "cannot read"),
        ({"cert": "{key}", "key": "{key}"}, ("cert",), "holds no PEM certificate"),
        ({"cert": "{cert}", "key": "{other_key}"}, ("key",), "is not the private key of"),
        ({"cert": "{cert}", "key": "{encrypted}"}, ("key",), "is encrypted"),
        ({"cert": "{cert}", "key": "{cert_only}"}, ("key",), "holds no PEM private key"),
        ({"cert": "{cert}"}, ("key",), "cert and key go together"),
        ({}, (), "needs cert and key"),
        ({"cert": "{cert}", "key": "{key}", "certificates": [{"cert": "{cert}", "key": "{key}"}]},
         ("certificates",), "not both"),
        ({"certificates": [{"cert": "{cert}", "key": "{key}"}, {"cert": "{nosan}", "key": "{nosan_key}"}]},
         ("certificates", 1, "cert"), "no DNS subjectAltName"),
    ],
)
def test_listener_errors_name_the_file(ca, tmp_path, fields, path, message):
    leaf = ca.issue_cert("a.test")
    cert, key = pair(leaf, tmp_path, "a")
    cert_only = tmp_path / "cert-only.pem"
    leaf.cert_chain_pems[0].write_to_path(str(cert_only))
    _, other_key = pair(ca.issue_cert("b.test"), tmp_path, "b")
    nosan, nosan_key = pair(ca.issue_cert("127.0.0.1"), tmp_path, "nosan")  # an IP, no DNS name
    encrypted = tmp_path / "encrypted.key"
    private = load_pem_private_key(Path(key).read_bytes(), None)
    encrypted.write_bytes(private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"passphrase")))
    values = {"cert": cert, "key": key, "other_key": other_key, "nosan": nosan,
              "nosan_key": nosan_key, "encrypted": str(encrypted),
              "missing": str(tmp_path / "missing.crt"), "cert_only": str(cert_only)}

    def fill(value):
        if isinstance(value, str):
            return value.format(**values)
        if isinstance(value, list):
            return [schema.Certificate(**{k: fill(v) for k, v in item.items()}) for item in value]
        return value

    with pytest.raises(tls.TlsConfigError) as info:
        tls.listener_tls(listen(**{k: fill(v) for k, v in fields.items()}))
    assert info.value.path == path and message in info.value.message


def test_client_context_verifies_and_presents_a_certificate(ca, tmp_path):
    default = tls.client_context(None)
    assert default.verify_mode == ssl.CERT_REQUIRED and default.check_hostname
    assert default.minimum_version == ssl.TLSVersion.TLSv1_2
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    cert, key = pair(ca.issue_cert("gateway.client"), tmp_path, "client")
    own = tls.client_context(schema.UpstreamTls(ca=str(ca_file), cert=cert, key=key))
    assert own.verify_mode == ssl.CERT_REQUIRED and own.check_hostname
    assert len(own.get_ca_certs()) == 1  # only the bundle given, not the system CAs as well
    with pytest.raises(tls.TlsConfigError) as info:
        tls.client_context(schema.UpstreamTls(ca=str(tmp_path / "nope.pem")))
    assert info.value.path == ("ca",)
    with pytest.raises(tls.TlsConfigError) as info:
        tls.client_context(schema.UpstreamTls(cert=cert))
    assert info.value.path == ("key",)


def test_upstream_tls_config_checks():
    base = "upstreams:\n  app: {targets: ['https://127.0.0.1:9'], %s}\n" + ROUTES
    config = load_config_text(base % "tls: {server_name: api.internal}")
    assert config.upstreams["app"].tls.server_name == "api.internal"
    with pytest.raises(Exception, match=r"upstreams.app.tls.server_name .*invalid host name"):
        load_config_text(base % "tls: {server_name: 'bad name'}")
    with pytest.raises(Exception, match=r"upstreams.app.tls.key .*cert and key go together"):
        load_config_text(base % "tls: {cert: /x.pem}")


# ---- SNI ------------------------------------------------------------------------------------


class _Handshake:
    """What the SNI callback sees of a connection: a context it may replace."""

    def __init__(self, context: ssl.SSLContext) -> None:
        self.context = context


def test_sni_selection_rules(ca, tmp_path):
    first = pair(ca.issue_cert("a.test", "shared.test"), tmp_path, "a")
    second = pair(ca.issue_cert("b.test", "*.wild.test", "shared.test"), tmp_path, "b")
    third = pair(ca.issue_cert("*.b.test", "x.wild.test"), tmp_path, "c")
    built = tls.listener_tls(listen(certificates=[
        schema.Certificate(cert=c, key=k) for c, k in (first, second, third)]))
    default = built.context
    contexts = {}

    def chosen(name):
        conn = _Handshake(default)
        assert default.sni_callback(conn, name, default) is None
        return conn.context

    contexts = {name: chosen(name) for name in (
        "a.test", "b.test", "B.TEST.", "y.wild.test", "x.wild.test", "q.b.test",
        "shared.test", "wild.test", "a.b.wild.test", "unknown.test", None)}
    assert contexts["a.test"] is default and contexts["unknown.test"] is default
    assert contexts[None] is default and contexts["wild.test"] is default
    assert contexts["a.b.wild.test"] is default  # a wildcard covers one label only
    assert contexts["shared.test"] is default  # the first listed wins a tie
    second_context = contexts["b.test"]
    assert second_context is not default
    assert contexts["B.TEST."] is second_context and contexts["y.wild.test"] is second_context
    third_context = contexts["q.b.test"]
    assert third_context not in (default, second_context)
    assert contexts["x.wild.test"] is third_context  # an exact name beats a wildcard


# ---- X-Forwarded-Proto ----------------------------------------------------------------------


def forwarded_proto(config: str, request: bytes) -> bytes:
    loop = asyncio.new_event_loop()
    try:
        wired = wire_gateway(loop, config)
        client = TlsClientConnection(wired.gateway)
        client.connection_made(CollectingTransport())
        client.data_received(request)
        head = wired.upstream_transport.out
    finally:
        loop.close()
    line = next(x for x in head.split(b"\r\n") if x.startswith(b"X-Forwarded-Proto:"))
    assert head.count(b"X-Forwarded-Proto") == 1
    return line.split(b": ", 1)[1]


def test_tls_connection_forwards_https_unless_a_trusted_proxy_says_otherwise():
    config = "routes:\n  - {route: /, upstream: 'http://127.0.0.1:9', public: true}\n"
    trusting = "trusted_proxies: [127.0.0.1]\n" + config
    plain = b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n"
    claims = b"GET /x HTTP/1.1\r\nHost: a\r\nX-Forwarded-Proto: http\r\n\r\n"
    proxied = b"GET /x HTTP/1.1\r\nHost: a\r\nX-Forwarded-For: 10.1.1.1\r\nX-Forwarded-Proto: http\r\n\r\n"
    proxied_silent = b"GET /x HTTP/1.1\r\nHost: a\r\nX-Forwarded-For: 10.1.1.1\r\n\r\n"
    assert forwarded_proto(config, plain) == b"https"
    assert forwarded_proto(config, claims) == b"https"  # an untrusted peer's claim is ignored
    assert forwarded_proto(config, proxied) == b"https"
    assert forwarded_proto(trusting, proxied) == b"http"  # the trusted proxy knows its client
    assert forwarded_proto(trusting, proxied_silent) == b"https"


# ---- expiry: metrics, log, audit ------------------------------------------------------------


def expiring(ca: trustme.CA, tmp_path: Path, days: float, name: str = "soon.test") -> tuple[str, str]:
    end = datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=days)
    start = end - datetime.timedelta(days=90)
    return pair(ca.issue_cert(name, common_name=name, not_before=start, not_after=end),
                tmp_path, name)


def test_expiry_gauge_and_log(ca, tmp_path, caplog):
    cert, key = expiring(ca, tmp_path, 3)
    built = tls.listener_tls(listen(cert=cert, key=key))
    (metric,) = expiry_metrics("0.0.0.0:8443", built)
    assert metric.name == EXPIRY_METRIC and metric.kind == "gauge"
    assert metric.labels == (("listener", "0.0.0.0:8443"), ("subject", "soon.test"))
    assert metric.value == built.certificates[0].not_after
    assert expiry_metrics("0.0.0.0:8080", None) == []
    with caplog.at_level(logging.WARNING, "fluxgate.master"):
        log_expiry(built)
        log_expiry(built, now=built.certificates[0].not_after + 1)
    assert "expires in 3.0 days" in caplog.text and "has expired" in caplog.text


def tls_config(cert: str, key: str) -> schema.Config:
    return load_config_text(
        f"listen: {{address: '0.0.0.0:8443', tls: {{cert: '{cert}', key: '{key}'}}}}\n" + ROUTES)


def test_listener_findings(ca, tmp_path):
    codes = lambda found: {f.code: f.severity for f in found}  # noqa: E731
    exposed = load_config_text("listen: 0.0.0.0:8080\n" + ROUTES)
    (finding,) = audit.listener_findings(exposed)
    assert (finding.code, finding.severity) == ("plain_http_listener", "info")
    assert "0.0.0.0:8080" in finding.message
    assert audit.listener_findings(load_config_text(
        "listen: 0.0.0.0:8080\ntrusted_proxies: [10.0.0.0/8]\n" + ROUTES)) == []
    assert audit.listener_findings(load_config_text("listen: 127.0.0.1:8080\n" + ROUTES)) == []
    config = tls_config(*expiring(ca, tmp_path, 60, "fine.test"))
    end = tls.read_certificate(config.listen.tls.cert).not_after
    assert audit.listener_findings(config) == []
    assert codes(audit.listener_findings(config, now=end - 13 * DAY)) == {
        "tls_certificate_expiring": "warning"}
    expired = audit.listener_findings(config, now=end + 1)
    assert codes(expired) == {"tls_certificate_expired": "error"}
    assert "fine.test" in expired[0].message


def test_fluxctl_auth_verify_reports_an_expiring_certificate(ca, tmp_path):
    cert, key = expiring(ca, tmp_path, 5)
    config = tmp_path / "fluxgate.yaml"
    config.write_text(
        f"listen: {{address: '0.0.0.0:8443', tls: {{cert: '{cert}', key: '{key}'}}}}\n"
        f"state_dir: {tmp_path / 'state'}\nadmin: {{token: audit-test-token}}\n"
        "routes:\n  - route: /api\n    upstream: http://127.0.0.1:9\n    middleware:\n"
        "      - api_key: {query: false}\n      - quota: {limit: 10/s, by: key}\n"
        "    websocket: false\n")
    run = subprocess.run(
        [sys.executable, "-m", "fluxgate.cli.fluxctl", "--config", str(config), "auth", "verify",
         "--endpoint", "/api/x", "--mode", "strict"],
        cwd=REPO, capture_output=True, text=True, timeout=30)
    assert run.returncode == 1, (run.stdout, run.stderr)
    assert "tls_certificate_expiring" in run.stdout and "soon.test" in run.stdout
