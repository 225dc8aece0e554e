"""TLS for the e2e benches: one certificate and key for both proxies, the same OpenSSL
settings for both, and a probe that says what a handshake negotiated and whether a session
was resumed.

* ``tls_files(directory, key_type)``: a trustme CA and a leaf for 127.0.0.1 / localhost,
  ECDSA P-256 (trustme's default) or RSA-2048, as FluxGate's ``cert``/``key`` and as the one
  PEM HAProxy's ``crt`` takes; and the OpenSSL config both proxies start with
  (``OPENSSL_CONF``). The key type decides which side of a full handshake pays most: with
  ECDSA P-256 the client's verification of the CertificateVerify costs about three times the
  server's signature, so the load generator saturates before the proxy; with RSA-2048 the
  server's private-key operation dominates and the client's verification is cheap.
* The OpenSSL config's ``system_default`` section applies to every SSL_CTX a process makes,
  Python's ``ssl`` module and HAProxy alike: ``NumTickets = 0`` (no TLS 1.3 session ticket is
  ever sent, so no client can resume: every connection is a full handshake, ECDHE and the
  certificate's signature) and one list of TLS 1.3 ciphersuites (OpenSSL's default order).
  wrk resumes whenever a server lets it (it keeps the session of a cleanly closed
  connection for the next one), so without this a new-connection run would measure
  resumed handshakes on whichever side issues tickets.
* ``probe(port)``: three connections in a row, each offering the previous one's session, each
  sending one request with ``Connection: close`` and reading to the end as wrk does; says the
  version, the ciphersuite, the key-exchange group and the signature (from
  ``openssl s_client`` when the binary is there) and whether any connection was resumed.
  Against a server that issues tickets the second and third are resumed
  (bench/test_support.py checks the probe sees it).
* ``haproxy_tls``: HAProxy (``nbthread 1``) terminating TLS with the same files, the same
  TLS 1.2 ciphers and TLS 1.3 suites as FluxGate's listener, ALPN http/1.1, and a stats
  socket whose ``show info`` counts its TLS connections and full handshakes.
"""

from __future__ import annotations

import os
import shutil
import socket
import ssl
import subprocess
from dataclasses import dataclass
from pathlib import Path

import trustme

from fluxgate.tls import ALPN, TLS12_CIPHERS
from tests.support.certs import write_pair

from .peers import HAPROXY_COMMON, PeerProcess, free_port

# OpenSSL's default TLS 1.3 list, named so that both proxies hold the same one whatever the
# library's default becomes (FluxGate's listener leaves TLS 1.3 suites at the default).
TLS13_CIPHERSUITES = "TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256:TLS_AES_128_GCM_SHA256"

OPENSSL_CONF = f"""\
# Written by bench/support/tls.py for both proxies of the TLS bench.
openssl_conf = fluxgate_bench

[fluxgate_bench]
ssl_conf = fluxgate_bench_ssl

[fluxgate_bench_ssl]
system_default = fluxgate_bench_tls

[fluxgate_bench_tls]
NumTickets = 0
Ciphersuites = {TLS13_CIPHERSUITES}
"""


@dataclass(frozen=True)
class TlsFiles:
    cert: Path  # leaf + chain, PEM
    key: Path
    combined: Path  # cert chain then key: HAProxy's crt
    openssl_conf: Path
    description: str

    @property
    def env(self) -> dict[str, str]:
        """The environment both proxies start with."""
        return {"OPENSSL_CONF": str(self.openssl_conf)}

    def fluxgate_listen(self) -> str:
        """``listen:`` for FluxGate's config (``GatewayProcess(listen=...)``)."""
        return f"{{address: '127.0.0.1:0', tls: {{cert: '{self.cert}', key: '{self.key}'}}}}"


# trustme's key types as the bench names them (trustme makes RSA keys of 2048 bits).
KEY_TYPES = {"ECDSA P-256": trustme.KeyType.ECDSA, "RSA-2048": trustme.KeyType.RSA}


def tls_files(directory: Path, key_type: str = "ECDSA P-256") -> TlsFiles:
    """The CA, leaf and OpenSSL config in ``directory``; ``key_type``: a key of KEY_TYPES
    for the CA and the leaf alike."""
    directory.mkdir(parents=True, exist_ok=True)
    kind = KEY_TYPES[key_type]
    ca = trustme.CA(key_type=kind)
    leaf = ca.issue_cert("127.0.0.1", "localhost", common_name="localhost", key_type=kind)
    cert, key = write_pair(leaf, directory, "bench")
    combined = directory / "bench.pem"
    combined.write_bytes(cert.read_bytes() + key.read_bytes())
    combined.chmod(0o600)
    conf = directory / "openssl.cnf"
    conf.write_text(OPENSSL_CONF)
    return TlsFiles(cert, key, combined, conf,
                    f"{key_type} leaf and CA (trustme), the same files for both proxies")


# ---- HAProxy --------------------------------------------------------------------------------


def haproxy_tls_config(port: int, upstream_port: int, files: TlsFiles, stats_socket: Path) -> str:
    """HAProxy terminating TLS as FluxGate's listener does, plain HTTP to the upstream."""
    common = HAPROXY_COMMON.replace(
        "global\n", f"global\n    stats socket {stats_socket} mode 600 level user\n", 1)
    return common + f"""\

frontend bench
    bind 127.0.0.1:{port} ssl crt {files.combined} alpn {",".join(ALPN)} ssl-min-ver TLSv1.2 ciphers {TLS12_CIPHERS} ciphersuites {TLS13_CIPHERSUITES}
    default_backend upstream

backend upstream
    http-reuse safe
    server up1 127.0.0.1:{upstream_port} maxconn 1000
"""


def haproxy_tls(files: TlsFiles):
    """The rig's peer factory: ``(binary, workdir, upstream_port) -> PeerProcess``."""

    def make(binary: str, workdir: Path, upstream_port: int) -> PeerProcess:
        workdir.mkdir(parents=True, exist_ok=True)
        port = free_port()
        cfg = workdir / "haproxy.cfg"
        cfg.write_text(haproxy_tls_config(port, upstream_port, files, workdir / "stats.sock"))
        peer = PeerProcess("haproxy", [binary, "-db", "-f", str(cfg)], port,
                           workdir / "haproxy.log", env=files.env, scheme="https")
        return peer

    return make


def haproxy_info(stats_socket: Path) -> dict[str, str]:
    """HAProxy's ``show info`` (CumSslConns, SslFrontendKeyRate, ...) from its stats socket."""
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(5)
        s.connect(str(stats_socket))
        s.sendall(b"show info\n")
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    out = {}
    for line in data.decode(errors="replace").splitlines():
        name, sep, value = line.partition(":")
        if sep:
            out[name.strip()] = value.strip()
    return out


# ---- the probe ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Handshakes:
    """What ``probe`` saw: per connection (version, ciphersuite, resumed), and the group and
    signature of one handshake as ``openssl s_client`` reports them ("" without it)."""

    connections: list[tuple[str, str, bool]]
    group: str
    signature: str

    @property
    def resumed(self) -> int:
        return sum(1 for c in self.connections if c[2])

    def describe(self) -> str:
        version, cipher, _ = self.connections[0]
        extra = ", ".join(x for x in (self.group, self.signature) if x)
        return (f"{version} {cipher}{', ' + extra if extra else ''}; "
                f"{self.resumed} of {len(self.connections)} connections resumed "
                "(each offered the previous one's session)")


def probe(port: int, path: str, attempts: int = 3) -> Handshakes:
    """Connect ``attempts`` times, each offering the last session; see the module doc."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # as wrk: the bench's own certificate
    session = None
    seen = []
    for _ in range(attempts):
        with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, \
                context.wrap_socket(raw, server_hostname="localhost", session=session) as conn:
            seen.append((conn.version(), conn.cipher()[0], conn.session_reused))
            conn.sendall(f"GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
                         .encode())
            answer = b""
            while chunk := conn.recv(65536):  # the tickets, if any, come with the answer
                answer += chunk
            if not answer.startswith(b"HTTP/1.1 200"):
                raise RuntimeError(f"probe of port {port}: {answer[:200]!r}")
            session = conn.session
    group, signature = _s_client(port)
    return Handshakes(seen, group, signature)


def _s_client(port: int) -> tuple[str, str]:
    binary = shutil.which("openssl")
    if binary is None:
        return "", ""
    env = {k: v for k, v in os.environ.items() if k != "OPENSSL_CONF"}
    done = subprocess.run([binary, "s_client", "-connect", f"127.0.0.1:{port}", "-brief"],
                          input=b"", capture_output=True, timeout=10, env=env)
    group = signature = ""
    for line in done.stderr.decode(errors="replace").splitlines():
        name, _, value = line.partition(":")
        if name.strip() in ("Server Temp Key", "Peer Temp Key", "Negotiated TLS1.3 group"):
            group = f"group {value.strip().split(',')[0]}"
        elif name.strip() == "Signature type":
            signature = f"{value.strip()} signature"
    return group, signature
