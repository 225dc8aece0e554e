"""The hostile-token suite: tests/data/jwt/hostile/NNN_name.json, each a recipe for one token
and the reason the JWT core must give (gunicorn's tests/requests/invalid/ style: the cases
are data, this module only knows how to build them).

Recipe members:

* ``header`` (an object; ``"$rsa"`` / ``"$ec"`` stand for the identity provider's key ids,
  ``"$attacker_jwk"`` for the attacker's public JWK) or ``header_json`` (raw JSON text);
* ``claims`` (overrides of a valid claim set; null removes a claim; ``"$now+N"``,
  ``"$now-N"``, ``"$iss"``, ``"$padN"`` expand), or ``payload_json`` (raw text, ``"$nestN"``
  for N nested arrays) or ``payload_hex`` (raw bytes);
* ``sign``: ``rsa`` / ``ec`` (the provider's real keys), ``rsa_ps256``, ``attacker_rsa``,
  ``none`` (empty), ``hs256_rsa_public_pem`` / ``hs256_rsa_modulus`` (key confusion),
  ``ec_der``, ``ec_zero``, ``ec_order``, ``ec_short``;
* ``shape``: how the parts are joined (default ``"{h}.{p}.{s}"``);
* ``mutate``: ``bump_last_char``, ``standard_alphabet``, ``swap_payload``;
* ``reason``: the expected ``TokenError.reason``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from functools import cache
from pathlib import Path
from typing import Any

from tests.support.idp import IdentityProvider
from tests.support.tokens import SigningKey, b64, b64json

HOSTILE_DIR = Path(__file__).resolve().parents[1] / "data" / "jwt" / "hostile"
P256_ORDER = bytes.fromhex("ffffffff00000000ffffffffffffffffbce6faada7179e84f3b9cac2fc632551")
_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


def cases() -> list[tuple[str, dict[str, Any]]]:
    return [(p.stem, json.loads(p.read_text())) for p in sorted(HOSTILE_DIR.glob("*.json"))]


@cache
def attacker() -> SigningKey:
    return SigningKey.generate("RS256", "attacker")


def _expand(value: Any, idp: IdentityProvider) -> Any:
    if isinstance(value, dict):
        return {k: _expand(v, idp) for k, v in value.items()}
    if isinstance(value, list):
        return [_expand(v, idp) for v in value]
    if not isinstance(value, str) or not value.startswith("$"):
        return value
    now = int(time.time())
    if value == "$rsa":
        return idp.key("RS256").kid
    if value == "$ec":
        return idp.key("ES256").kid
    if value == "$attacker_jwk":
        return attacker().jwk()
    if value.startswith("$now+"):
        return now + int(value[5:])
    if value.startswith("$now-"):
        return now - int(value[5:])
    if value.startswith("$iss"):
        return idp.issuer + value[4:]
    if value.startswith("$pad"):
        return "x" * int(value[4:])
    raise ValueError(f"unknown placeholder {value}")


def build(case: dict[str, Any], idp: IdentityProvider) -> str:
    """The token a recipe describes, signed with ``idp``'s keys where it says so."""
    if "header_json" in case:
        h = b64(case["header_json"].encode())
    else:
        h = b64json(_expand(case["header"], idp))
    if "payload_json" in case:
        text = case["payload_json"]
        if text.startswith("$nest"):
            depth = int(text[5:])
            text = "[" * depth + "]" * depth
        p = b64(text.encode())
    elif "payload_hex" in case:
        p = b64(bytes.fromhex(case["payload_hex"]))
    else:
        p = b64json(idp.claims(**_expand(case.get("claims", {}), idp)))
    signing_input = f"{h}.{p}".encode()
    sig = _signature(case["sign"], signing_input, idp)
    token = case.get("shape", "{h}.{p}.{s}").format(h=h, p=p, s=b64(sig))
    mutate = case.get("mutate")
    if mutate == "bump_last_char":
        token = token[:-1] + _ALPHABET[_ALPHABET.index(token[-1]) + 1]
    elif mutate == "standard_alphabet":
        swapped = token.replace("-", "+").replace("_", "/")
        token = swapped if swapped != token else token[:-2] + "+/"
    elif mutate == "swap_payload":
        other = b64json(idp.claims(sub="admin", scope="admin"))
        token = f"{h}.{other}.{b64(sig)}"
    return token


def _signature(mode: str, signing_input: bytes, idp: IdentityProvider) -> bytes:
    if mode == "none":
        return b""
    if mode == "rsa":
        return idp.key("RS256").sign(signing_input)
    if mode == "rsa_ps256":
        return idp.key("RS256").sign(signing_input, "PS256")
    if mode == "ec":
        return idp.key("ES256").sign(signing_input)
    if mode == "attacker_rsa":
        return attacker().sign(signing_input)
    if mode == "hs256_rsa_public_pem":
        return hmac.new(idp.key("RS256").public_pem(), signing_input, hashlib.sha256).digest()
    if mode == "hs256_rsa_modulus":
        n = idp.key("RS256").jwk()["n"]
        modulus = base64.urlsafe_b64decode(n + "=" * (-len(n) % 4))
        return hmac.new(modulus, signing_input, hashlib.sha256).digest()
    if mode == "ec_der":
        return idp.key("ES256").sign(signing_input, der=True)
    if mode == "ec_zero":
        return bytes(64)
    if mode == "ec_order":
        return P256_ORDER + P256_ORDER
    if mode == "ec_short":
        return idp.key("ES256").sign(signing_input)[:63]
    raise ValueError(f"unknown signing mode {mode}")
