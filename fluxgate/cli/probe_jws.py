"""Token material for ``fluxctl auth verify --probe`` (``fluxgate.cli.probe``): a key the
gateway never trusted, JWS signatures made with it, and the public keys the route's identity
provider publishes (for the HS/RS key-confusion probe).

Signatures are made with ``cryptography`` directly, as any client would make them; nothing
here verifies anything. Nothing here prints, and no token is returned anywhere but to the
probe that sends it.
"""

from __future__ import annotations

import asyncio
import base64  # x5c is the one standard-alphabet base64 in JOSE
import datetime
import hashlib
import secrets
import time
from dataclasses import dataclass
from typing import Any

import orjson
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import NameOID

from fluxgate._core import b64url_decode
from fluxgate.auth.jwk import JwkError, parse_jwk, usable_keys
from fluxgate.auth.jwks import provider_source
from fluxgate.cli.jws import compact, public_jwk
from fluxgate.config import schema
from fluxgate.master.fetch import FetchError, fetch
from fluxgate.master.jwks import MAX_JWKS_BYTES, discover_jwks_uri


def fingerprint(secret: str) -> str:
    """What a report may say about a token or key: a short digest, never the text."""
    return "sha256:" + hashlib.sha256(secret.encode("utf-8", "replace")).hexdigest()[:10]


def decode_payload(token: str) -> dict[str, Any] | None:
    """The claims of a compact JWS (unverified), or None when it is not one."""
    pieces = token.split(".")
    if len(pieces) != 3:
        return None
    try:
        claims = orjson.loads(b64url_decode(pieces[1].encode()))
    except ValueError:  # B64Error and orjson.JSONDecodeError are both ValueErrors
        return None
    return claims if isinstance(claims, dict) else None


def generate_key(alg: str) -> Any:
    """A fresh private key for ``alg`` (bytes for HS*)."""
    if alg.startswith("HS"):
        return secrets.token_bytes(32)
    if alg.startswith(("RS", "PS")):
        return rsa.generate_private_key(65537, 2048)
    if alg == "ES256":
        return ec.generate_private_key(ec.SECP256R1())
    if alg == "ES384":
        return ec.generate_private_key(ec.SECP384R1())
    if alg == "EdDSA":
        return ed25519.Ed25519PrivateKey.generate()
    raise ValueError(f"no key for algorithm {alg!r}")


@dataclass
class Forger:
    """A key the gateway has never trusted, of an algorithm the route accepts (so a probe
    reaches the signature check instead of stopping at the algorithm list)."""

    alg: str
    private: Any

    @classmethod
    def for_route(cls, jwt: schema.Jwt) -> Forger:
        asymmetric = [a for a in jwt.algorithms if not a.startswith("HS")]
        alg = asymmetric[0] if asymmetric else jwt.algorithms[0]
        return cls(alg, generate_key(alg))

    def token(self, header: dict[str, Any], claims: dict[str, Any], *,
              alg: str | None = None, key: Any = None) -> str:
        """A compact JWS of ``claims`` signed by this key (or ``key``) under ``header``."""
        alg = alg or self.alg
        return compact({"alg": alg, "typ": "JWT", **header}, claims,
                       self.private if key is None else key, alg)

    def public_jwk(self) -> dict[str, Any]:
        """The public half as a JWK (for the embedded ``jwk`` header probe)."""
        return public_jwk(self.private.public_key())

    def self_signed_cert(self) -> str:
        """A one-day self-signed certificate of the public half, DER in standard base64 as
        ``x5c`` carries it (RFC 7515 §4.1.6)."""
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fluxctl probe")])
        now = datetime.datetime.now(datetime.UTC)
        digest = None if self.alg == "EdDSA" else hashes.SHA256()
        cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
                .public_key(self.private.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
                .sign(self.private, digest))
        return base64.b64encode(cert.public_bytes(serialization.Encoding.DER)).decode()


def claims_for(jwt: schema.Jwt, **overrides: Any) -> dict[str, Any]:
    """A claim set the route would accept from a trusted key: its issuer and audience, valid
    for five minutes; ``None`` in ``overrides`` removes a claim."""
    now = int(time.time())
    body: dict[str, Any] = {"sub": "fluxctl-probe", "iat": now, "exp": now + 300}
    if jwt.issuer:
        body["iss"] = jwt.issuer
    audience = jwt.audience[0] if isinstance(jwt.audience, list) else jwt.audience
    if audience:
        body["aud"] = audience
    body.update(overrides)
    return {k: v for k, v in body.items() if v is not None}


# ---- the provider's public keys -------------------------------------------------------------


@dataclass
class ProviderKeys:
    """What the route's identity provider publishes, as the gateway's master fetches it."""

    keys: list[dict[str, Any]]
    origin: str  # where they came from, or why there are none

    @property
    def kid(self) -> str | None:
        """A kid the gateway knows (the first key's), for probes that must get past the
        key lookup to the signature check."""
        return next((k["kid"] for k in self.keys if isinstance(k.get("kid"), str)), None)

    def confusion_secrets(self) -> tuple[str | None, bytes, bytes, str]:
        """``(kid, PEM, DER, note)``: a published public key as the HMAC secrets of the
        classic RS/HS confusion, an RSA key first. With nothing published, a generated
        key's (the note says so: then the probe proves refusal only)."""
        for jwk in sorted(self.keys, key=lambda k: k.get("kty") != "RSA"):
            try:
                kid, _, der = parse_jwk(jwk)
            except JwkError:
                continue
            return kid, _pem(serialization.load_der_public_key(der)), der, ""
        public = rsa.generate_private_key(65537, 2048).public_key()
        der = public.public_bytes(serialization.Encoding.DER,
                                  serialization.PublicFormat.SubjectPublicKeyInfo)
        return None, _pem(public), der, f"MACed with a generated key: {self.origin}"


def _pem(public: Any) -> bytes:
    return public.public_bytes(serialization.Encoding.PEM,
                               serialization.PublicFormat.SubjectPublicKeyInfo)


def provider_keys(jwt: schema.Jwt, timeout: float) -> ProviderKeys:
    """Fetch the route's JWKS from its ``jwks_uri``, or through OIDC discovery from its
    ``issuer``, the way the master does (``fluxgate.master.fetch``: https verified, plain
    http only where the config allowed it, bounded). Never raises: a failed fetch is said in
    ``origin`` and the probes that needed the keys fall back to a generated key."""
    if provider_source(jwt) is None:
        return ProviderKeys([], "the route verifies a shared secret (HS*): no JWKS")

    async def get() -> ProviderKeys:
        uri = jwt.jwks_uri or await discover_jwks_uri(jwt.issuer or "", timeout)
        response = await fetch(uri, timeout=timeout, max_bytes=MAX_JWKS_BYTES)
        if response.status != 200:
            raise FetchError(f"{uri} answered HTTP {response.status}")
        keys, _ = usable_keys(orjson.loads(response.body))
        return ProviderKeys(keys, uri)

    try:
        return asyncio.run(get())
    except (FetchError, ValueError) as exc:  # JwkError and bad JSON are ValueErrors
        return ProviderKeys([], f"JWKS not fetched ({exc})")
