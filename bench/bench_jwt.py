"""The JWT core (fluxgate/_jwt.pxi) against PyJWT 2.x and joserfc on the same tokens and keys,
and against the bare signature verification of the same signature (the floor).

Groups (``pytest bench/ -k jwt``; ratios printed as peer / fluxgate):

* ``jwt cached``: a token FluxGate verified before (its verified-token cache), passed as a
  fresh bytes object each call, the way the middleware slices it from the header; the peers
  have no cache, so they verify it in full each time (``decode`` plus claim checks).
* ``jwt uncached RS256`` / ``ES256``: FluxGate with the cache off, PyJWT, joserfc; and two
  floors: ``openssl-bare`` (``JwtKey.verify_signature``: the same libcrypto call the core
  makes, no JWT parsing) and ``cryptography`` (``public_key.verify`` from the ``cryptography``
  package: what a core built on that package would pay for the math alone).

* ``test_paired_uncached``: the same three uncached verifies (FluxGate, the bare libcrypto
  call, PyJWT) timed in alternation, round after round, and the median of each round's
  ratio. The groups above time one implementation after another, so a change in the VM's
  speed between them shows up as a ratio (1.4x one run, 0.74x the next, on the same code);
  here a change hits all three alike.
* ``test_paired_miss_by_size``: the middleware's verifier (``build_verifier``, as a worker
  builds it) on 20,000 distinct RS256 tokens in turn (of the e2e bench's token files), beyond its 16,384-token cache, so every
  call is a full verification from the ``Authorization`` header; the bare libcrypto verify and
  PyJWT on the same tokens, in alternation. Three claim sets: the minimal ``claims`` of
  bench/support/jwt.py (~600-byte tokens) and its ``realistic_claims`` at 300 B and 1 kB of
  JSON (~820- and ~1,760-byte tokens, claims FluxGate never reads included), so what a
  token's size costs shows as the time above the bare verify. Also printed: the allocator
  blocks each cached token keeps, and the objects it adds to the cycle collector's lists.

Every benchmark asserts what it computed. Targets: cached <= 1.5 us; uncached
within 1.25x of the bare verify; >= 4x faster than PyJWT uncached, >= 50x cached.
"""

from __future__ import annotations

import gc
import statistics
import sys
import time

import jwt as pyjwt
import msgspec
import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding
from joserfc import jwt as jose_jwt
from joserfc.jwk import ECKey, RSAKey
from joserfc.jwt import JWTClaimsRegistry

from bench.support import jwt as bench_tokens
from fluxgate._core import JwtVerifier, b64url_decode
from fluxgate.auth.jwk import build_keyset
from fluxgate.config.schema import Jwt
from fluxgate.middleware.jwt import build_verifier
from tests.support.tokens import SigningKey

ISS = "https://idp.bench.test"
AUD = "orders-api"


@pytest.fixture(scope="module")
def material():
    keys = {"RS256": SigningKey.generate("RS256", "rsa-1"), "ES256": SigningKey.generate("ES256", "ec-1")}
    now = int(time.time())
    claims = {"iss": ISS, "aud": AUD, "sub": "user-42", "iat": now, "exp": now + 86400,
              "scope": "orders:read orders:write", "email": "user42@example.com"}
    tokens = {alg: key.mint(claims) for alg, key in keys.items()}
    keyset = build_keyset([k.jwk() for k in keys.values()], 1)
    return keys, tokens, keyset


def fluxgate_verifier(keyset, cache_size: int) -> JwtVerifier:
    v = JwtVerifier(algorithms=["RS256", "ES256"], issuer=ISS, audiences=[AUD],
                    cache_size=cache_size)
    v.set_keys(keyset)
    return v


def pyjwt_decode(token: str, key, alg: str) -> dict:
    return pyjwt.decode(token, key, algorithms=[alg], audience=AUD, issuer=ISS, leeway=60,
                        options={"require": ["exp"]})


def joserfc_decoder(signing_key: SigningKey, alg: str):
    key = (RSAKey if alg == "RS256" else ECKey).import_key(signing_key.jwk())
    registry = JWTClaimsRegistry(leeway=60, iss={"essential": True, "value": ISS},
                                 aud={"essential": True, "value": AUD}, exp={"essential": True})

    def decode(token: str) -> dict:
        claims = jose_jwt.decode(token, key, algorithms=[alg]).claims
        registry.validate(claims)
        return claims

    return decode


# ---- cached ------------------------------------------------------------------------------


@pytest.mark.benchmark(group="jwt cached (RS256 token seen before)")
def test_cached_fluxgate(benchmark, material, record_impl):
    _, tokens, keyset = material
    v = fluxgate_verifier(keyset, cache_size=16384)
    header = b"Bearer " + tokens["RS256"].encode()
    now = time.time()
    v.verify(header[7:], now)
    claims = benchmark(lambda: v.verify(header[7:], now))  # a new bytes object per call
    record_impl("fluxgate")
    assert claims["sub"] == "user-42" and v.cached == 1


@pytest.mark.benchmark(group="jwt cached (RS256 token seen before)")
def test_cached_pyjwt(benchmark, material, record_impl):
    keys, tokens, _ = material
    claims = benchmark(pyjwt_decode, tokens["RS256"], keys["RS256"].public, "RS256")
    record_impl("pyjwt")
    assert claims["sub"] == "user-42"


@pytest.mark.benchmark(group="jwt cached (RS256 token seen before)")
def test_cached_joserfc(benchmark, material, record_impl):
    keys, tokens, _ = material
    claims = benchmark(joserfc_decoder(keys["RS256"], "RS256"), tokens["RS256"])
    record_impl("joserfc")
    assert claims["sub"] == "user-42"


# ---- uncached ----------------------------------------------------------------------------


@pytest.mark.parametrize("alg", ["RS256", "ES256"])
class TestUncached:
    @pytest.fixture(autouse=True)
    def _group(self, benchmark, alg):
        benchmark.group = f"jwt uncached {alg}"

    def test_fluxgate(self, benchmark, material, record_impl, alg):
        _, tokens, keyset = material
        v = fluxgate_verifier(keyset, cache_size=0)
        token = tokens[alg].encode()
        claims = benchmark(v.verify, token, time.time())
        record_impl("fluxgate")
        assert claims["sub"] == "user-42" and v.cached == 0

    def test_pyjwt(self, benchmark, material, record_impl, alg):
        keys, tokens, _ = material
        claims = benchmark(pyjwt_decode, tokens[alg], keys[alg].public, alg)
        record_impl("pyjwt")
        assert claims["sub"] == "user-42"

    def test_joserfc(self, benchmark, material, record_impl, alg):
        keys, tokens, _ = material
        claims = benchmark(joserfc_decoder(keys[alg], alg), tokens[alg])
        record_impl("joserfc")
        assert claims["sub"] == "user-42"

    def test_openssl_bare(self, benchmark, material, record_impl, alg):
        key, signing_input, signature = _bare(material, alg)
        ok = benchmark(key.verify_signature, alg, signing_input, signature)
        record_impl("openssl-bare")
        assert ok is True

    def test_cryptography_bare(self, benchmark, material, record_impl, alg):
        _, signing_input, signature = _bare(material, alg)
        public = material[0][alg].public
        if alg == "RS256":
            def verify():
                public.verify(signature, signing_input, padding.PKCS1v15(), hashes.SHA256())
                return True
        else:
            from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

            def verify():
                der = encode_dss_signature(int.from_bytes(signature[:32], "big"),
                                           int.from_bytes(signature[32:], "big"))
                public.verify(der, signing_input, ec.ECDSA(hashes.SHA256()))
                return True

        assert benchmark(verify) is True
        record_impl("cryptography")


def _bare(material, alg):
    """The bench token's key in the set, signing input and raw signature: what a bare
    signature check takes."""
    keys, tokens, keyset = material
    key = next(k for k in keyset if k.kid == keys[alg].kid)
    signing_input, _, sig = tokens[alg].encode().rpartition(b".")
    return key, signing_input, b64url_decode(sig)


# ---- uncached, in alternation --------------------------------------------------------------

PAIRED_ROUNDS = 101
PAIRED_BUDGET_S = 0.003  # about this long per implementation per round


def _per_call(fn, calls: int) -> float:
    started = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - started) / calls


@pytest.mark.parametrize("alg", ["RS256", "ES256"])
def test_paired_uncached(material, record_paired, alg):
    keys, tokens, keyset = material
    v = fluxgate_verifier(keyset, cache_size=0)
    token = tokens[alg].encode()
    key, signing_input, signature = _bare(material, alg)
    public, now = keys[alg].public, time.time()
    impls = {
        "fluxgate": lambda: v.verify(token, now),
        "bare": lambda: key.verify_signature(alg, signing_input, signature),
        "pyjwt": lambda: pyjwt_decode(tokens[alg], public, alg),
    }
    assert impls["fluxgate"]()["sub"] == "user-42" and v.cached == 0
    assert impls["bare"]() is True and impls["pyjwt"]()["sub"] == "user-42"
    calls = {name: max(1, round(PAIRED_BUDGET_S / _per_call(fn, 20))) for name, fn in impls.items()}
    rounds: dict[str, list[float]] = {name: [] for name in impls}
    names = list(impls)
    for r in range(PAIRED_ROUNDS):
        for name in names[r % 3:] + names[: r % 3]:  # each goes first in a third of the rounds
            rounds[name].append(_per_call(impls[name], calls[name]))
    fg_bare = statistics.median(f / b for f, b in zip(rounds["fluxgate"], rounds["bare"], strict=True))
    pyjwt_fg = statistics.median(p / f for p, f in zip(rounds["pyjwt"], rounds["fluxgate"], strict=True))
    fg_us = statistics.median(rounds["fluxgate"]) * 1e6
    record_paired(f"jwt uncached {alg}: fluxgate {fg_us:.1f} us = {fg_bare:.3f}x the bare "
                  f"libcrypto verify; pyjwt / fluxgate {pyjwt_fg:.2f}x "
                  f"(medians of {PAIRED_ROUNDS} rounds' ratios)")
    assert fg_bare > 0 and pyjwt_fg > 0


# ---- misses, by token size ---------------------------------------------------------------

MISS_TOKENS = 20_000  # distinct tokens in turn: more than the cache holds, so each call misses
E2E_TOKENS = 100_000  # the e2e bench's token files, made once (bench/support/jwt.py)
MISS_ROUNDS = 41
CACHE_FILL = 16_384  # the default cache_size


def _middleware_verifier(public_jwk: dict) -> JwtVerifier:
    """The verifier a worker builds for the e2e bench's jwt route, with its key set."""
    config = msgspec.convert({"issuer": bench_tokens.ISSUER, "audience": bench_tokens.AUDIENCE,
                              "jwks_uri": "http://127.0.0.1:9/jwks.json",
                              "algorithms": ["RS256"]}, Jwt)
    verifier = build_verifier(config)
    verifier.set_keys(build_keyset([public_jwk], 1))
    return verifier


def _per_cached_token(verifier: JwtVerifier, headers: list) -> tuple[float, float]:
    """Allocator blocks kept, and objects added to the cycle collector's lists (after the
    young collections, as in a worker), per token of an empty cache filled with
    ``CACHE_FILL`` distinct tokens."""
    verifier.flush()
    gc.collect()
    gc.disable()
    try:
        objects, blocks = len(gc.get_objects()), sys.getallocatedblocks()
        now = time.time()
        for h in headers[:CACHE_FILL]:
            verifier.authenticate_bearer(h, now)
        assert verifier.cached == CACHE_FILL
        # The young collections a worker's tokens go through before the oldest generation:
        # each takes one level of nested tuples of strings off the collector's lists.
        gc.collect(0)
        gc.collect(1)
        return ((sys.getallocatedblocks() - blocks) / CACHE_FILL,
                (len(gc.get_objects()) - objects) / CACHE_FILL)
    finally:
        gc.enable()


@pytest.mark.parametrize("size", [0, *bench_tokens.PAYLOAD_SIZES.values()],
                         ids=["minimal", *bench_tokens.PAYLOAD_SIZES])
def test_paired_miss_by_size(record_paired, size):
    key = bench_tokens.bench_key()
    with open(bench_tokens.token_file(E2E_TOKENS, size)) as f:
        tokens = [line.split(" ", 1)[1].strip() for _, line in zip(range(MISS_TOKENS), f, strict=False)]
    raw = [t.encode() for t in tokens]
    verifier = _middleware_verifier(key.jwk())
    jwt_key = next(iter(verifier.keys))
    headers = [[(b"Host", b"bench"), (b"Authorization", b"Bearer " + t)] for t in raw]
    bare = [(t.rpartition(b".")[0], b64url_decode(t.rpartition(b".")[2])) for t in raw]
    public = key.public
    principal = verifier.authenticate_bearer(headers[0], time.time())
    assert principal.subject and jwt_key.verify_signature("RS256", *bare[0])
    assert pyjwt_decode_ok(tokens[0], public)
    blocks, tracked = _per_cached_token(verifier, headers)
    verifier.flush()  # from here on, every call of the rotation misses

    def rotation(fn, items):
        # Each call takes the next token, across rounds: FluxGate never meets a cached one.
        position = [0]

        def call() -> None:
            fn(items[position[0]])
            position[0] = (position[0] + 1) % len(items)

        return call

    impls = {
        "fluxgate": rotation(lambda h: verifier.authenticate_bearer(h, time.time()), headers),
        "bare": rotation(lambda b: jwt_key.verify_signature("RS256", *b), bare),
        "pyjwt": rotation(lambda t: pyjwt.decode(
            t, public, algorithms=["RS256"], audience=bench_tokens.AUDIENCE,
            issuer=bench_tokens.ISSUER, leeway=60, options={"require": ["exp"]}), tokens),
    }
    calls = {name: max(1, round(PAIRED_BUDGET_S / _per_call(fn, 20))) for name, fn in impls.items()}
    rounds: dict[str, list[float]] = {name: [] for name in impls}
    names = list(impls)
    for r in range(MISS_ROUNDS):
        for name in names[r % 3:] + names[: r % 3]:
            rounds[name].append(_per_call(impls[name], calls[name]))
    above = statistics.median(f - b for f, b in zip(rounds["fluxgate"], rounds["bare"], strict=True))
    pyjwt_fg = statistics.median(p / f for p, f in zip(rounds["pyjwt"], rounds["fluxgate"], strict=True))
    fg_us = statistics.median(rounds["fluxgate"]) * 1e6
    claims_label = f"{size} B of claims" if size else "minimal claims"
    record_paired(f"jwt miss, {len(raw[0])}-byte RS256 token ({claims_label}): "
                  f"fluxgate {fg_us:.1f} us, {above * 1e6:.2f} us above the bare libcrypto "
                  f"verify; pyjwt / fluxgate {pyjwt_fg:.2f}x; per cached token "
                  f"{blocks:.1f} allocator blocks, {tracked:.2f} objects the cycle collector "
                  f"tracks (medians of {MISS_ROUNDS} rounds)")
    assert fg_us > 0 and pyjwt_fg > 0 and verifier.cached <= CACHE_FILL


def pyjwt_decode_ok(token: str, public) -> bool:
    return pyjwt.decode(token, public, algorithms=["RS256"], audience=bench_tokens.AUDIENCE,
                        issuer=bench_tokens.ISSUER, leeway=60)["iss"] == bench_tokens.ISSUER
