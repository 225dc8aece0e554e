"""Compact JWS for the command line's own tokens: the demo's issuer (``demo_jwt``) and the
probe's forger (``probe_jws``) sign with these. Nothing here verifies anything; the gateway's
verification is ``_core.JwtVerifier``.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Any

import orjson
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from fluxgate._core import b64url_encode

_HASHES = {"256": hashes.SHA256, "384": hashes.SHA384, "512": hashes.SHA512}
_HMAC = {"HS256": hashlib.sha256, "HS384": hashlib.sha384, "HS512": hashlib.sha512}


def b64(data: bytes) -> str:
    """base64url without padding (RFC 7515 §2), as text."""
    return b64url_encode(data).decode()


def b64_uint(n: int) -> str:
    """A JWK integer (RFC 7518 §2 Base64urlUInt): big-endian, no leading zero bytes."""
    return b64(n.to_bytes((n.bit_length() + 7) // 8, "big"))


def part(obj: Any) -> str:
    """A header or payload segment: compact JSON, base64url."""
    return b64(orjson.dumps(obj))


def public_jwk(public: Any) -> dict[str, Any]:
    """The required members of ``public``'s JWK (RSA, EC P-256/P-384, Ed25519)."""
    if isinstance(public, rsa.RSAPublicKey):
        nums = public.public_numbers()
        return {"kty": "RSA", "n": b64_uint(nums.n), "e": b64_uint(nums.e)}
    if isinstance(public, ec.EllipticCurvePublicKey):
        size = (public.curve.key_size + 7) // 8
        nums = public.public_numbers()
        crv = "P-256" if size == 32 else "P-384"
        return {"kty": "EC", "crv": crv, "x": b64(nums.x.to_bytes(size, "big")),
                "y": b64(nums.y.to_bytes(size, "big"))}
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return {"kty": "OKP", "crv": "Ed25519", "x": b64(raw)}


def thumbprint(jwk: dict[str, Any]) -> str:
    """The RFC 7638 SHA-256 thumbprint of a JWK holding only its required members:
    sorted keys, no whitespace (§3.3), base64url."""
    return b64(hashlib.sha256(orjson.dumps(jwk, option=orjson.OPT_SORT_KEYS)).digest())


def sign(private: Any, alg: str, signing_input: bytes) -> bytes:
    """The JWS signature of ``signing_input`` (RFC 7518 §3; ECDSA as raw r||s, §3.4)."""
    if alg.startswith("HS"):
        return hmac.new(private, signing_input, _HMAC[alg]).digest()
    if alg == "EdDSA":
        return private.sign(signing_input)
    digest = _HASHES[alg[2:]]()
    if alg.startswith("RS"):
        return private.sign(signing_input, padding.PKCS1v15(), digest)
    if alg.startswith("PS"):
        pss = padding.PSS(mgf=padding.MGF1(digest), salt_length=digest.digest_size)
        return private.sign(signing_input, pss, digest)
    r, s = decode_dss_signature(private.sign(signing_input, ec.ECDSA(digest)))
    size = (private.curve.key_size + 7) // 8
    return r.to_bytes(size, "big") + s.to_bytes(size, "big")


def compact(header: dict[str, Any], claims: dict[str, Any], private: Any, alg: str) -> str:
    """``header.claims.signature``, signed with ``private`` under ``alg`` (the header is
    sent as given: it names its own alg)."""
    signing_input = f"{part(header)}.{part(claims)}"
    return f"{signing_input}.{b64(sign(private, alg, signing_input.encode()))}"
