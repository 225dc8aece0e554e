"""TLS contexts: the listener's (terminating client TLS) and the https upstreams' (verifying).

Contexts are built once — the listener's by the master for each generation of workers, an
upstream's by a worker at boot — and handed to uvloop (``create_server(ssl=...)``,
``create_connection(ssl=...)``), so a request never pays for TLS setup, and a plain HTTP
listener does not pay for it at all.

The listener speaks TLS 1.2 and 1.3 only (RFC 8996 deprecates 1.0 and 1.1) with AEAD
ciphers behind an ephemeral ECDH key exchange (forward secrecy; no CBC, no RSA key
transport: RFC 9325 §4.2), and offers ALPN ``http/1.1`` (RFC 7301), the only protocol the
gateway serves. Several certificates are chosen by SNI (RFC 6066 §3) against each one's DNS
subjectAltNames; a client that names none of them, or sends no SNI, gets the first.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from typing import TYPE_CHECKING

from cryptography import x509
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from cryptography.x509.oid import NameOID

if TYPE_CHECKING:  # the config checker imports this module: no cycle at run time
    from fluxgate.config import schema

MIN_VERSION = ssl.TLSVersion.TLSv1_2
# TLS 1.2 suites: ECDHE with AES-GCM or ChaCha20-Poly1305. TLS 1.3's own suites are all
# AEAD with (EC)DHE already (RFC 8446 §9.1) and are left at OpenSSL's defaults.
TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20:!aNULL"
ALPN = ["http/1.1"]
# Let's Encrypt renews 30 days ahead: a certificate closer than this to its end has missed its
# renewal, and an operator should hear of it (the master's log, `fluxctl auth verify`).
EXPIRING_SOON = 14 * 86400.0


class TlsConfigError(ValueError):
    """A TLS file that cannot be used; ``path`` is where it sits under the TLS block
    (``("cert",)``, ``("certificates", 1, "key")``, ``("ca",)``)."""

    def __init__(self, path: tuple[str | int, ...], message: str) -> None:
        super().__init__(message)
        self.path = path
        self.message = message


@dataclass(frozen=True)
class CertificateInfo:
    """What the gateway reports about a certificate it presents."""

    path: str
    subject: str  # the CN, else the first DNS name, else the whole RFC 4514 subject
    dns_names: tuple[str, ...]  # subjectAltName dNSNames, lower case
    not_after: float  # Unix time the certificate expires


@dataclass(frozen=True)
class ListenerTls:
    """The listener's context and the certificates it may present (the default first)."""

    context: ssl.SSLContext
    certificates: tuple[CertificateInfo, ...]


def read_certificate(path: str) -> CertificateInfo:
    """Read the leaf (first) certificate of the PEM file ``path``; ``TlsConfigError`` if the
    file cannot be read or holds no PEM certificate."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise TlsConfigError((), f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        cert = x509.load_pem_x509_certificate(data)
    except ValueError:
        raise TlsConfigError((), f"{path} holds no PEM certificate") from None
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names = tuple(n.lower() for n in san.get_values_for_type(x509.DNSName))
    except x509.ExtensionNotFound:
        names = ()
    common = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if common:
        subject = str(common[0].value)
    else:
        subject = names[0] if names else cert.subject.rfc4514_string()
    return CertificateInfo(path, subject, names, cert.not_valid_after_utc.timestamp())


def listener_certificates(tls: schema.ListenTls) -> list[tuple[str, str]]:
    """The listener's (cert, key) paths in order (``cert``/``key`` is a list of one)."""
    if tls.cert is not None and tls.key is not None:
        return [(tls.cert, tls.key)]
    return [(entry.cert, entry.key) for entry in tls.certificates]


def listener_tls(tls: schema.ListenTls) -> ListenerTls:
    """Build the listener's context from ``tls`` (reading every file now).

    Raises ``TlsConfigError`` naming the first file that cannot be used (a missing file, no
    PEM certificate, an encrypted or mismatched key), or a certificate after the first with
    no DNS name that SNI could ever select.
    """
    if (tls.cert is None) != (tls.key is None):
        missing = "key" if tls.key is None else "cert"
        raise TlsConfigError((missing,), "cert and key go together")
    if tls.cert is not None and tls.certificates:
        raise TlsConfigError(("certificates",), "give cert and key, or certificates, not both")
    entries = listener_certificates(tls)
    if not entries:
        raise TlsConfigError((), "needs cert and key (or certificates: [{cert, key}, ...])")
    single = tls.cert is not None
    contexts: list[ssl.SSLContext] = []
    infos: list[CertificateInfo] = []
    for i, (cert, key) in enumerate(entries):
        where: tuple[str | int, ...] = () if single else ("certificates", i)
        context = _server_context()
        infos.append(_load_pair(context, cert, key, where))
        contexts.append(context)
        if i > 0 and not infos[-1].dns_names:
            raise TlsConfigError(
                (*where, "cert"),
                f"{cert} has no DNS subjectAltName: SNI could never select it "
                "(only the first certificate serves clients that name no certificate)",
            )
    if len(contexts) > 1:
        contexts[0].sni_callback = _sni_selector(contexts, infos)
    return ListenerTls(contexts[0], tuple(infos))


def _server_context() -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = MIN_VERSION
    context.set_ciphers(TLS12_CIPHERS)
    context.set_alpn_protocols(ALPN)
    # Client-initiated renegotiation costs the server a handshake for a few client bytes
    # (a DoS lever) and HTTP/1.1 never needs it; TLS 1.3 has none (RFC 8446 §4.6).
    context.options |= ssl.OP_NO_RENEGOTIATION | ssl.OP_NO_COMPRESSION
    return context


def _load_pair(context: ssl.SSLContext, cert: str, key: str,
               where: tuple[str | int, ...]) -> CertificateInfo:
    """Load ``cert`` and ``key`` into ``context``; errors name the file that is wrong."""
    try:
        info = read_certificate(cert)
    except TlsConfigError as exc:
        raise TlsConfigError((*where, "cert"), exc.message) from None
    try:
        with open(key, "rb") as f:
            load_pem_private_key(f.read(), None)
    except OSError as exc:
        raise TlsConfigError((*where, "key"), f"cannot read {key}: {exc.strerror or exc}") from None
    except TypeError:  # "password was not given but private key is encrypted"
        raise TlsConfigError(
            (*where, "key"),
            f"{key} is encrypted: the gateway cannot prompt for a passphrase; give an "
            "unencrypted key readable only by the gateway's user",
        ) from None
    except ValueError:
        raise TlsConfigError((*where, "key"), f"{key} holds no PEM private key") from None
    try:
        context.load_cert_chain(cert, key, password=_no_passphrase)
    except (ssl.SSLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", None)
        if reason == "KEY_VALUES_MISMATCH":
            raise TlsConfigError(
                (*where, "key"), f"{key} is not the private key of {cert}") from None
        raise TlsConfigError((*where, "cert"), f"cannot load {cert}: {reason or exc}") from None
    return info


def _no_passphrase() -> bytes:
    # Checked above; without a callback OpenSSL would prompt on the terminal.
    raise ValueError("encrypted key")


def _sni_selector(contexts: list[ssl.SSLContext], infos: list[CertificateInfo]):
    """The default context's SNI callback: switch to the certificate that names the host.

    Exact names win over wildcards; among equals the first certificate listed wins. A
    wildcard covers exactly one left-most label (RFC 6125 §6.4.3: ``*.example.com`` matches
    ``a.example.com``, not ``example.com`` nor ``a.b.example.com``).
    """
    exact: dict[str, ssl.SSLContext] = {}
    wildcard: dict[str, ssl.SSLContext] = {}
    for context, info in zip(contexts, infos, strict=True):
        for name in info.dns_names:
            if name.startswith("*."):
                wildcard.setdefault(name[2:], context)
            elif "*" not in name:
                exact.setdefault(name, context)
    default = contexts[0]

    def select(sslobj: ssl.SSLObject, server_name: str | None, _current: ssl.SSLContext) -> None:
        if not server_name:
            return None  # no SNI: the default certificate
        # Python hands the name over as an IDNA A-label, which is how SANs spell it.
        name = server_name.lower().rstrip(".")
        context = exact.get(name)
        if context is None:
            _, dot, parent = name.partition(".")
            context = wildcard.get(parent) if dot else None
        if context is not None and context is not default:
            sslobj.context = context
        return None

    return select


def client_context(tls: schema.UpstreamTls | None) -> ssl.SSLContext:
    """A verifying client context for https upstreams: the certificate must chain to
    ``tls.ca`` (else the system CAs) and name the server; ``tls.cert``/``key`` are presented
    when the upstream asks for a client certificate (mTLS).

    Raises ``TlsConfigError`` (path ``("ca",)``, ``("cert",)`` or ``("key",)``).
    """
    ca = tls.ca if tls is not None else None
    try:
        context = ssl.create_default_context(cafile=ca)
    except (OSError, ssl.SSLError) as exc:
        why = getattr(exc, "strerror", None) or getattr(exc, "reason", None) or exc
        raise TlsConfigError(("ca",), f"cannot load the CA bundle {ca}: {why}") from None
    # create_default_context verifies the chain and the host name already; never relaxed.
    context.minimum_version = MIN_VERSION
    context.set_alpn_protocols(ALPN)
    if tls is not None and (tls.cert is not None or tls.key is not None):
        if tls.cert is None or tls.key is None:
            raise TlsConfigError(("key" if tls.key is None else "cert",),
                                 "cert and key go together")
        _load_pair(context, tls.cert, tls.key, ())
    return context


def describe_error(exc: BaseException) -> str:
    """A TLS failure in words for the log: OpenSSL's reason and, for a certificate, what
    was wrong with it (``CERTIFICATE_VERIFY_FAILED: Hostname mismatch, ...``)."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"{exc.reason}: {exc.verify_message}"
    if isinstance(exc, ssl.SSLError):
        return str(exc.reason or exc)
    return str(exc) or type(exc).__name__
