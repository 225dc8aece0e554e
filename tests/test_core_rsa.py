"""fluxgate/_rsa.pxi: RS256/RS384/RS512 signatures verified on libcrypto's bignum primitives
accept exactly what RSASSA-PKCS1-v1_5 (RFC 8017 §8.2.2) and `cryptography` accept.

Hostile signatures: out-of-range representatives (0, 1, n - 1, n, n + 1, all ones, a valid
signature plus n), bit
flips, the wrong length, and encoded messages signed raw with the private key that differ
from the one valid encoding (DigestInfo without its NULL parameters, another hash's
DigestInfo, block type 2, trailing bytes after the hash, a short padding, a zero inside the
padding). Keys of several sizes and public exponents, including the ones that go through
EVP_PKEY_verify (an exponent longer than 64 bits)."""

from __future__ import annotations

import math
import os
import random

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from fluxgate._core import JwtKey, jwt_alg_mask

HASHES = {"RS256": hashes.SHA256(), "RS384": hashes.SHA384(), "RS512": hashes.SHA512()}
# RFC 8017 §9.2 note 1.
DIGEST_INFO = {
    "RS256": bytes.fromhex("3031300d060960864801650304020105000420"),
    "RS384": bytes.fromhex("3041300d060960864801650304020205000430"),
    "RS512": bytes.fromhex("3051300d060960864801650304020305000440"),
}


class Signer:
    """A private key with a given modulus size and public exponent, and its JwtKey."""

    def __init__(self, bits: int, e: int) -> None:
        if e in (3, 65537):
            private = rsa.generate_private_key(public_exponent=e, key_size=bits)
        else:  # cryptography generates only 3 and 65537: derive d for e from a fresh p, q
            while True:
                base = rsa.generate_private_key(public_exponent=65537, key_size=bits)
                p, q = base.private_numbers().p, base.private_numbers().q
                if math.gcd(e, math.lcm(p - 1, q - 1)) == 1:
                    break
            d = pow(e, -1, math.lcm(p - 1, q - 1))
            private = rsa.RSAPrivateNumbers(
                p, q, d, rsa.rsa_crt_dmp1(d, p), rsa.rsa_crt_dmq1(d, q),
                rsa.rsa_crt_iqmp(p, q), rsa.RSAPublicNumbers(e, p * q),
            ).private_key()  # fmt: skip
        self.private = private
        self.public = private.public_key()
        numbers = private.private_numbers()
        self.n, self.d = numbers.public_numbers.n, numbers.d
        self.k = (self.n.bit_length() + 7) // 8
        der = self.public.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        self.key = JwtKey("k", jwt_alg_mask(["RS256", "RS384", "RS512", "PS256"]), der)

    def sign(self, alg: str, message: bytes) -> bytes:
        return self.private.sign(message, padding.PKCS1v15(), HASHES[alg])

    def sign_raw(self, em: bytes) -> bytes:
        """The signature whose encoded message is ``em`` (whatever it holds)."""
        return pow(int.from_bytes(em, "big"), self.d, self.n).to_bytes(self.k, "big")

    def accepts(self, alg: str, message: bytes, signature: bytes) -> bool:
        """What `cryptography` (OpenSSL's RSA_verify) decides."""
        try:
            self.public.verify(signature, message, padding.PKCS1v15(), HASHES[alg])
        except (InvalidSignature, ValueError):
            return False
        return True


@pytest.fixture(
    scope="module",
    params=[(2048, 65537), (2048, 3), (3072, 65537), (2056, 65537), (2048, (1 << 64) - 59),
            (2048, (1 << 64) + 13)],
    ids=["2048-e65537", "2048-e3", "3072", "2056-bits", "e-64-bits", "e-65-bits-evp"],
)  # fmt: skip
def signer(request) -> Signer:
    return Signer(*request.param)


@pytest.mark.parametrize("alg", sorted(HASHES))
def test_valid_signatures_verify_and_hostile_ones_do_not(signer, alg):
    rng = random.Random(7)
    n, k = signer.n, signer.k
    for _ in range(20):
        message = os.urandom(rng.randrange(0, 1200))
        good = signer.sign(alg, message)
        assert signer.key.verify_signature(alg, message, good)
        flipped = bytearray(good)
        flipped[rng.randrange(k)] ^= 1 << rng.randrange(8)
        hostile = [
            (message + b".", good),
            (message, bytes(flipped)),
            (message, good[:-1]),
            (message, b"\x00" + good),
            *((message, v.to_bytes(k, "big"))
              for v in (0, 1, n - 1, n, n + 1, (1 << 8 * k) - 1, rng.randrange(n))),
        ]  # fmt: skip
        plus_n = int.from_bytes(good, "big") + n  # the same value mod n, out of range
        if plus_n < 1 << 8 * k:
            hostile.append((message, plus_n.to_bytes(k, "big")))
        for other in HASHES:
            if other != alg:
                hostile.append((message, signer.sign(other, message)))
        for m, s in hostile:
            assert signer.key.verify_signature(alg, m, s) is False
            assert signer.accepts(alg, m, s) is False


@pytest.mark.parametrize("alg", sorted(HASHES))
def test_only_the_one_encoding_verifies(signer, alg):
    message = b"header.payload"
    h = hashes.Hash(HASHES[alg])
    h.update(message)
    digest = h.finalize()
    t = DIGEST_INFO[alg] + digest
    k = signer.k

    def em(block: bytes, tail: bytes) -> bytes:
        return b"\x00" + block + b"\xff" * (k - len(tail) - 3) + b"\x00" + tail

    without_null = (
        DIGEST_INFO[alg][:1]
        + bytes([DIGEST_INFO[alg][1] - 2])
        + DIGEST_INFO[alg][2:3]
        + bytes([DIGEST_INFO[alg][3] - 2])
        + DIGEST_INFO[alg][4:15]
        + DIGEST_INFO[alg][17:]
    )
    valid = em(b"\x01", t)
    variants = {
        "no NULL parameters": em(b"\x01", without_null + digest),
        "another hash's DigestInfo": em(
            b"\x01",
            DIGEST_INFO["RS512" if alg != "RS512" else "RS256"][:-1]
            + bytes([len(digest)])
            + digest,
        ),
        "block type 2": em(b"\x02", t),
        "bytes after the hash": em(b"\x01", t + b"\x00" * 8),
        "short padding": b"\x00\x01" + b"\xff" * 7 + b"\x00" + b"\x00" * (k - len(t) - 10) + t,
        "zero in the padding": valid[:20] + b"\x00" + valid[21:],
        "hash's last byte": valid[:-1] + bytes([valid[-1] ^ 1]),
        "no leading zero": b"\x01" + valid[1:],  # may exceed n: refused either way
    }
    assert signer.key.verify_signature(alg, message, signer.sign_raw(valid))
    for name, encoded in variants.items():
        signature = (
            signer.sign_raw(encoded[-k:]) if int.from_bytes(encoded, "big") < signer.n else encoded
        )
        assert signer.key.verify_signature(alg, message, signature) is False, name
        assert signer.accepts(alg, message, signature) is False, name


def test_pss_still_verifies_on_an_rsa_key_that_also_takes_rs256():
    signer = Signer(2048, 65537)
    message = b"signing input"
    pss = signer.private.sign(
        message,
        padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32),
        hashes.SHA256(),
    )
    assert signer.key.verify_signature("PS256", message, pss)
    assert not signer.key.verify_signature("RS256", message, pss)
    assert not signer.key.verify_signature("PS256", message, signer.sign("RS256", message))
