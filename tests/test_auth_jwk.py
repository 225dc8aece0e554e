"""fluxgate/auth/jwk.py: which JWKs may verify signatures, and for which algorithms."""

from __future__ import annotations

import pytest

from fluxgate._core import jwt_alg_names
from fluxgate.auth.jwk import JwkError, build_keyset, parse_jwk, usable_keys
from tests.support.tokens import SigningKey, b64


@pytest.fixture(scope="module")
def keys():
    return {alg: SigningKey.generate(alg, f"k-{alg}") for alg in ("RS256", "ES256", "ES384", "EdDSA")}


def test_algorithms_follow_the_key_type(keys):
    assert jwt_alg_names(parse_jwk(keys["RS256"].jwk(with_alg=False))[1]) == (
        "RS256", "RS384", "RS512", "PS256", "PS384", "PS512")
    assert jwt_alg_names(parse_jwk(keys["RS256"].jwk())[1]) == ("RS256",)  # pinned by alg
    assert jwt_alg_names(parse_jwk(keys["ES256"].jwk(with_alg=False))[1]) == ("ES256",)
    assert jwt_alg_names(parse_jwk(keys["ES384"].jwk(with_alg=False))[1]) == ("ES384",)
    assert jwt_alg_names(parse_jwk(keys["EdDSA"].jwk(with_alg=False))[1]) == ("EdDSA",)
    assert parse_jwk(keys["RS256"].jwk())[0] == "k-RS256"


@pytest.mark.parametrize(
    "change,message",
    [
        ({"use": "enc"}, "use is 'enc'"),
        ({"key_ops": ["encrypt"]}, "key_ops"),
        ({"alg": "ES256"}, "does not fit"),
        ({"alg": "HS256"}, "does not fit"),
        ({"alg": "none"}, "does not fit"),
        ({"kty": "oct", "k": "c2VjcmV0"}, "never taken from a JWKS"),
        ({"kty": "OKP", "crv": "X25519"}, "not supported"),
        ({"d": "AAAA"}, "private key members"),
        ({"kid": "a b"}, "printable"),
        ({"kid": 5}, "printable"),
        ({"e": "AAE"}, "exponent"),  # e = 1
        ({"e": "Aw="}, "not base64url"),
        ({"n": b64(b"\xff" * 128)}, "1024 bits"),
        ({"kty": "RSA", "n": None}, "missing"),
    ],
)
def test_rsa_jwk_refusals(keys, change, message):
    jwk = {**keys["RS256"].jwk(), **change}
    jwk = {k: v for k, v in jwk.items() if v is not None}
    with pytest.raises(JwkError, match=message):
        parse_jwk(jwk)


def test_ec_jwk_refusals(keys):
    jwk = keys["ES256"].jwk()
    with pytest.raises(JwkError, match="not on P-256"):
        parse_jwk({**jwk, "y": jwk["x"]})
    with pytest.raises(JwkError, match="32 bytes"):
        parse_jwk({**jwk, "x": b64(b"\x01" * 31)})
    with pytest.raises(JwkError, match="not supported"):
        parse_jwk({**jwk, "crv": "secp256k1"})
    with pytest.raises(JwkError, match="not a JSON object"):
        parse_jwk(["kty", "EC"])


def test_usable_keys_keeps_the_good_ones(keys):
    good = [keys["RS256"].jwk(), keys["ES256"].jwk()]
    bad = {"kty": "oct", "k": "c2VjcmV0", "kid": "hmac"}
    found, problems = usable_keys({"keys": [good[0], bad, good[1], "junk"]})
    assert found == good
    assert problems[0].startswith("kid 'hmac'") and problems[1].startswith("keys[3]")
    with pytest.raises(JwkError):
        usable_keys({"keys": "nope"})
    with pytest.raises(JwkError):
        usable_keys([])
    many, problems = usable_keys({"keys": [keys["ES256"].jwk()] * 70})
    assert len(many) == 64 and "more than 64" in problems[-1]
    keyset = build_keyset(good + [bad], 7)
    assert keyset.generation == 7 and len(keyset) == 2 and "k-ES256" in keyset
