"""JWK → prepared key: which public keys a JWKS may contribute, and for which algorithms.

Cold path (once per JWKS generation, in the master to validate and in each worker to
build ``_core.JwtKey`` objects). ``cryptography`` checks the numbers (an EC point must lie
on its curve) and produces the DER SubjectPublicKeyInfo that ``_core`` hands to libcrypto.

Rules (RFC 7517 §4, RFC 7518 §6, RFC 8037 §2):

* ``kty`` RSA (``n``, ``e``; at least 2048 bits, RFC 7518 §3.3), EC (``crv`` P-256 or P-384,
  ``x`` and ``y`` of the full coordinate length, §6.2.1.2), OKP (``crv`` Ed25519 or Ed448).
  ``oct`` keys are never taken from a JWKS: a shared secret is configured, not fetched.
* ``use``, when present, must be ``sig``; ``key_ops``, when present, must include ``verify``.
* ``alg``, when present, pins the key to that one algorithm; it must fit the key type.
  Without it an RSA key may verify RS256/384/512 and PS256/384/512, a P-256 key ES256, a
  P-384 key ES384, an OKP key EdDSA.
* A JWK carrying private members (``d``, ``p``, ...) is refused: a key set that publishes
  private keys is broken, and nothing from it should be trusted by accident.
* ``x5c``, ``x5u``, ``x5t`` are ignored: the key is the JWK's own numbers.
"""

from __future__ import annotations

from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa

from fluxgate._core import B64Error, JwtKey, JwtKeySet, b64url_decode, jwt_alg_mask

MAX_KID = 256
MAX_KEYS = 64  # usable keys kept from one JWKS; real ones hold 2-5

_RSA_ALGS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512")
_CURVES: dict[str, tuple[ec.EllipticCurve, int, str]] = {
    "P-256": (ec.SECP256R1(), 32, "ES256"),
    "P-384": (ec.SECP384R1(), 48, "ES384"),
}
_OKP: dict[str, tuple[Any, int]] = {
    "Ed25519": (ed25519.Ed25519PublicKey, 32),
    "Ed448": (ed448.Ed448PublicKey, 57),
}
_PRIVATE = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth", "k"})


class JwkError(ValueError):
    """This JWK cannot be used to verify signatures (the message says why)."""


def _b64(jwk: dict[str, Any], name: str) -> bytes:
    value = jwk.get(name)
    if not isinstance(value, str) or not value:
        raise JwkError(f"member {name!r} missing or not a string")
    try:
        return b64url_decode(value.encode("ascii"))
    except (B64Error, UnicodeEncodeError):
        raise JwkError(f"member {name!r} is not base64url") from None


def parse_jwk(jwk: object) -> tuple[str | None, int, bytes]:
    """``(kid, alg mask, DER SubjectPublicKeyInfo)`` of a verification JWK, or JwkError."""
    if not isinstance(jwk, dict):
        raise JwkError("not a JSON object")
    kid = jwk.get("kid")
    if kid is not None and (
        not isinstance(kid, str)
        or not 0 < len(kid) <= MAX_KID
        or any(not 0x21 <= ord(c) <= 0x7E for c in kid)
    ):
        raise JwkError("kid is not a short printable string")
    if jwk.get("kty") == "oct":
        raise JwkError("symmetric (oct) keys are never taken from a JWKS")
    if _PRIVATE & jwk.keys():
        raise JwkError("the JWK holds private key members")
    use = jwk.get("use")
    if use is not None and use != "sig":
        raise JwkError(f"use is {use!r}, not 'sig'")
    ops = jwk.get("key_ops")
    if ops is not None and (not isinstance(ops, list) or "verify" not in ops):
        raise JwkError("key_ops does not include 'verify'")
    kty = jwk.get("kty")
    if kty == "RSA":
        n = int.from_bytes(_b64(jwk, "n"), "big")
        e = int.from_bytes(_b64(jwk, "e"), "big")
        if n.bit_length() < 2048 or n.bit_length() > 16384:
            raise JwkError(f"RSA modulus of {n.bit_length()} bits (2048 to 16384 are accepted)")
        if e < 3 or e % 2 == 0 or e.bit_length() > 64:
            raise JwkError("RSA exponent is not a small odd number")
        try:
            key: Any = rsa.RSAPublicNumbers(e, n).public_key()
        except ValueError as exc:
            raise JwkError(f"invalid RSA key: {exc}") from None
        allowed: tuple[str, ...] = _RSA_ALGS
    elif kty == "EC":
        crv = jwk.get("crv")
        if crv not in _CURVES:
            raise JwkError(f"EC curve {crv!r} is not supported (P-256, P-384)")
        curve, size, alg_name = _CURVES[crv]
        x, y = _b64(jwk, "x"), _b64(jwk, "y")
        if len(x) != size or len(y) != size:
            raise JwkError(f"EC coordinates must be {size} bytes for {crv}")
        try:
            key = ec.EllipticCurvePublicNumbers(
                int.from_bytes(x, "big"), int.from_bytes(y, "big"), curve
            ).public_key()
        except ValueError:
            raise JwkError(f"the point is not on {crv}") from None
        allowed = (alg_name,)
    elif kty == "OKP":
        crv = jwk.get("crv")
        if crv not in _OKP:
            raise JwkError(f"OKP curve {crv!r} is not supported (Ed25519, Ed448)")
        cls, size = _OKP[crv]
        x = _b64(jwk, "x")
        if len(x) != size:
            raise JwkError(f"{crv} public key must be {size} bytes")
        try:
            key = cls.from_public_bytes(x)
        except ValueError:
            raise JwkError(f"invalid {crv} public key") from None
        allowed = ("EdDSA",)
    else:
        raise JwkError(f"kty {kty!r} is not supported")
    alg = jwk.get("alg")
    if alg is not None:
        if alg not in allowed:
            raise JwkError(f"alg {alg!r} does not fit a {kty} key")
        allowed = (alg,)
    der = key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return kid, jwt_alg_mask(allowed), der


def usable_keys(document: object) -> tuple[list[dict[str, Any]], list[str]]:
    """The JWKs of a JWKS document that verify signatures, and why the others do not.

    Raises JwkError when the document is not ``{"keys": [...]}`` at all.
    """
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise JwkError('a JWKS is a JSON object with a "keys" array')
    keys: list[dict[str, Any]] = []
    problems: list[str] = []
    for i, jwk in enumerate(document["keys"]):
        try:
            parse_jwk(jwk)
        except JwkError as exc:
            kid = jwk.get("kid") if isinstance(jwk, dict) else None
            label = f"kid {kid!r}" if isinstance(kid, str) and len(kid) <= MAX_KID else f"keys[{i}]"
            problems.append(f"{label}: {exc}")
            continue
        if len(keys) >= MAX_KEYS:
            problems.append(f"more than {MAX_KEYS} usable keys; the rest are ignored")
            break
        keys.append(jwk)
    return keys, problems


def build_keyset(jwks: list[dict[str, Any]], generation: int) -> JwtKeySet:
    """A JwtKeySet of already-vetted JWKs (``usable_keys``); unusable ones are skipped."""
    keys = []
    for jwk in jwks:
        try:
            kid, algs, der = parse_jwk(jwk)
            keys.append(JwtKey(kid, algs, der))
        except (JwkError, ValueError):
            continue
    return JwtKeySet(keys, generation)
