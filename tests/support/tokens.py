"""Minting JWTs for tests, including the malformed and hostile ones a library would refuse
to produce: any header, any payload bytes, any signature bytes.

Signatures are made with `cryptography` directly (not with FluxGate's code), so the tests
check FluxGate against an independent implementation.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

_HASHES = {"256": hashes.SHA256, "384": hashes.SHA384, "512": hashes.SHA512}
_HMAC = {"HS256": hashlib.sha256, "HS384": hashlib.sha384, "HS512": hashlib.sha512}


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64json(obj: Any) -> str:
    """A header/payload part: compact JSON, or the bytes/str given as they are."""
    if isinstance(obj, bytes):
        return b64(obj)
    if isinstance(obj, str):
        return b64(obj.encode())
    return b64(json.dumps(obj, separators=(",", ":")).encode())


def _uint(n: int, size: int) -> bytes:
    return n.to_bytes(size, "big")


@dataclass
class SigningKey:
    """A private key with its kid and the JWK of its public half."""

    alg: str
    kid: str | None
    private: Any = field(repr=False)

    @classmethod
    def generate(cls, alg: str, kid: str | None = None, bits: int = 2048) -> SigningKey:
        if alg.startswith(("RS", "PS")):
            private: Any = rsa.generate_private_key(65537, bits)
        elif alg == "ES256":
            private = ec.generate_private_key(ec.SECP256R1())
        elif alg == "ES384":
            private = ec.generate_private_key(ec.SECP384R1())
        elif alg == "EdDSA":
            private = ed25519.Ed25519PrivateKey.generate()
        elif alg == "Ed448":
            private, alg = ed448.Ed448PrivateKey.generate(), "EdDSA"
        else:
            raise ValueError(alg)
        return cls(alg, kid, private)

    @property
    def public(self) -> Any:
        return self.private.public_key()

    def public_pem(self) -> bytes:
        return self.public.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def jwk(self, *, with_alg: bool = True, **extra: Any) -> dict[str, Any]:
        pub = self.public
        if isinstance(pub, rsa.RSAPublicKey):
            nums = pub.public_numbers()
            out: dict[str, Any] = {
                "kty": "RSA",
                "n": b64(_uint(nums.n, (nums.n.bit_length() + 7) // 8)),
                "e": b64(_uint(nums.e, (nums.e.bit_length() + 7) // 8)),
            }
        elif isinstance(pub, ec.EllipticCurvePublicKey):
            size = (pub.curve.key_size + 7) // 8
            nums = pub.public_numbers()
            crv = {"secp256r1": "P-256", "secp384r1": "P-384"}[pub.curve.name]
            out = {"kty": "EC", "crv": crv, "x": b64(_uint(nums.x, size)), "y": b64(_uint(nums.y, size))}
        else:
            raw = pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
            crv = "Ed25519" if isinstance(pub, ed25519.Ed25519PublicKey) else "Ed448"
            out = {"kty": "OKP", "crv": crv, "x": b64(raw)}
        if self.kid is not None:
            out["kid"] = self.kid
        if with_alg:
            out["alg"] = self.alg
        out["use"] = "sig"
        out.update(extra)
        return out

    def sign(self, signing_input: bytes, alg: str | None = None, *, der: bool = False) -> bytes:
        return sign(self.private, alg or self.alg, signing_input, der=der)

    def mint(
        self,
        claims: dict[str, Any] | None = None,
        *,
        header: dict[str, Any] | None = None,
        alg: str | None = None,
        **overrides: Any,
    ) -> str:
        """A signed compact JWT; claims default to a valid one-hour token."""
        alg = alg or self.alg
        now = int(time.time())
        body = {"iat": now, "exp": now + 3600, "sub": "user-1"} if claims is None else dict(claims)
        body.update(overrides)
        head: dict[str, Any] = {"alg": alg, "typ": "JWT"}
        if self.kid is not None:
            head["kid"] = self.kid
        if header is not None:
            head.update(header)
            head = {k: v for k, v in head.items() if v is not None}
        signing_input = f"{b64json(head)}.{b64json(body)}".encode()
        return f"{signing_input.decode()}.{b64(self.sign(signing_input, alg))}"


def sign(private: Any, alg: str, signing_input: bytes, *, der: bool = False) -> bytes:
    """Signature bytes as JWS puts them (ECDSA raw r||s unless ``der``)."""
    if alg.startswith("HS"):
        key = private if isinstance(private, bytes) else private.encode()
        return hmac.new(key, signing_input, _HMAC[alg]).digest()
    digest = _HASHES[alg[2:]]() if alg != "EdDSA" else None
    if alg.startswith("RS"):
        return private.sign(signing_input, padding.PKCS1v15(), digest)
    if alg.startswith("PS"):
        pss = padding.PSS(mgf=padding.MGF1(digest), salt_length=digest.digest_size)
        return private.sign(signing_input, pss, digest)
    if alg.startswith("ES"):
        sig = private.sign(signing_input, ec.ECDSA(digest))
        if der:
            return sig
        r, s = decode_dss_signature(sig)
        size = (private.curve.key_size + 7) // 8
        return _uint(r, size) + _uint(s, size)
    if alg == "EdDSA":
        return private.sign(signing_input)
    raise ValueError(alg)


def compact(header: Any, payload: Any, signature: bytes | str = b"") -> str:
    """Assemble a token from raw parts (no signing): for malformed and unsigned cases."""
    sig = signature if isinstance(signature, str) else b64(signature)
    return f"{b64json(header)}.{b64json(payload)}.{sig}"
