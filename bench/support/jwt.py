"""What the JWT end-to-end bench needs: a signing key and many distinct RS256 tokens (cached
on disk between runs: 100,000 RSA-2048 signatures take a minute or two), and HAProxy
configured with ``jwt_verify`` (RS256 pinned; ``iss``, ``aud``, ``exp`` and ``nbf`` checked, as
FluxGate's jwt middleware checks them).

Token sizes: ``realistic_claims`` builds the claims an identity provider issues to an API
client (iss, sub, aud, iat, nbf, exp, jti, three scopes, tenant, a roles array, email, plan) at
two payload sizes, ~300 and ~1,000 bytes of JSON. Signed with RSA-2048 (a 342-character
signature) they make ~820- and ~1,760-byte tokens: the ``Authorization`` values that
bench_e2e_jwt.py sends. The exact sizes are in its output.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import uuid
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from cryptography.hazmat.primitives import serialization

from fluxgate._core import b64url_decode
from tests.support.tokens import SigningKey

from .peers import HAPROXY_COMMON, PeerProcess, free_port

ISSUER = "https://idp.bench.fluxgate.test"  # fixed, so cached tokens stay valid across runs
AUDIENCE = "orders-api"
KID = "bench-rsa-1"
VALIDITY = 30 * 86400  # cached tokens are remade when less than a day of this is left


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    path = Path(base) / "fluxgate-bench"
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    return path


def bench_key() -> SigningKey:
    """The benchmark's RSA-2048 signing key (made once, kept in the cache directory)."""
    pem = cache_dir() / "jwt-rs256.pem"
    if pem.exists():
        private = serialization.load_pem_private_key(pem.read_bytes(), None)
        return SigningKey("RS256", KID, private)
    key = SigningKey.generate("RS256", KID)
    data = key.private.private_bytes(serialization.Encoding.PEM,
                                     serialization.PrivateFormat.PKCS8,
                                     serialization.NoEncryption())
    fd = os.open(pem, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    return key


def claims(i: int, exp: int) -> dict:
    return {"iss": ISSUER, "aud": AUDIENCE, "sub": f"user-{i % 1000}", "jti": f"t{i}",
            "iat": exp - VALIDITY, "exp": exp, "scope": "orders:read"}


# Payload sizes (bytes of claims JSON) of bench_e2e_jwt.py's tokens, by name.
PAYLOAD_SIZES = {"300 B": 300, "1 kB": 1000}
_ROLES = ("orders-reader", "orders-writer", "invoices-reader", "catalog-reader", "support-agent",
          "reports-viewer", "billing-admin", "inventory-reader", "shipping-reader", "audit-viewer")
_REGIONS = ("eu", "us", "apac", "latam")


def _id(i: int, salt: str, chars: int) -> str:
    """A fixed-length, deterministic id for token ``i`` (sizes must not depend on ``i``): a
    UUID for 36 characters, else that many hex digits."""
    digest = hashlib.blake2b(f"{salt}:{i}".encode(), digest_size=16).digest()
    return str(uuid.UUID(bytes=digest)) if chars == 36 else digest.hex()[:chars]


def realistic_claims(i: int, exp: int, size: int) -> dict:
    """The claims of token ``i``: the usual registered claims plus what an API gateway's
    policies read, at about ``size`` bytes of JSON. Small tokens carry short ids and one
    role; larger ones UUIDs and a roles array grown to the size (the part of real tokens that
    varies most: group and role lists); ``plan`` pads to the byte."""
    iat = exp - VALIDITY
    small = size < 500
    body = {
        "iss": ISSUER, "sub": _id(i, "sub", 8 if small else 36), "aud": AUDIENCE, "iat": iat,
        "nbf": iat, "exp": exp, "jti": _id(i, "jti", 8 if small else 36),
        "scope": "orders:read orders:write profile", "tenant": f"t{i % 97:02d}", "roles": [],
        "email": f"u{i:06d}@ex.io" if small else f"user{i:07d}@customer-{i % 97:04d}.example",
        "plan": "pro",
    }

    def length() -> int:
        return len(json.dumps(body, separators=(",", ":")))

    n = 0
    while True:
        role = _ROLES[n % len(_ROLES)] + ("" if small else f":{_REGIONS[n // len(_ROLES) % 4]}")
        if body["roles"] and length() + len(role) + 3 > size:
            break
        body["roles"].append(role)
        n += 1
    body["plan"] += "x" * max(0, size - length())
    return body


def _sign_range(args: tuple[int, int, int, int]) -> list[str]:
    start, stop, exp, size = args
    key = bench_key()
    if size:
        return [key.mint(realistic_claims(i, exp, size)) for i in range(start, stop)]
    return [key.mint(claims(i, exp)) for i in range(start, stop)]


def token_file(count: int, size: int = 0) -> Path:
    """``Authorization`` header values (``Bearer <token>``), one per line, ``count`` distinct
    RS256 tokens (``size``: realistic claims of about that many bytes; 0: the minimal
    ``claims``); made in parallel the first time, then reused while valid."""
    path = cache_dir() / (f"jwt-rs256-{count}.txt" if not size else f"jwt-rs256-{count}-{size}b.txt")
    if path.exists():
        with open(path) as f:
            first = f.readline().split(" ", 1)[1].strip()
        exp = json.loads(b64url_decode(first.split(".")[1].encode()))["exp"]
        with open(path) as f:
            lines = sum(1 for _ in f)
        if exp > time.time() + 86400 and lines == count:
            return path
    bench_key()  # create it once, before the workers read it
    exp = int(time.time()) + VALIDITY
    step = 2000
    chunks = [(i, min(i + step, count), exp, size) for i in range(0, count, step)]
    workers = max(1, min(len(os.sched_getaffinity(0)), 4))
    tmp = path.with_suffix(".tmp")
    with ProcessPoolExecutor(workers) as pool, open(tmp, "w") as out:
        for tokens in pool.map(_sign_range, chunks):
            out.writelines(f"Bearer {t}\n" for t in tokens)
    os.replace(tmp, path)
    return path


def haproxy_jwt_config(port: int, upstream_port: int, public_key: Path) -> str:
    """HAProxy 2.6 verifying bearer JWTs itself: RS256 pinned, iss and aud exact, exp and nbf
    checked (FluxGate checks the same), then ``jwt_verify`` with the PEM public key; one
    thread, keep-alive both sides, no log."""
    return HAPROXY_COMMON + f"""\

frontend bench
    bind 127.0.0.1:{port}
    http-request set-var(txn.bearer) http_auth_bearer
    http-request set-var(txn.jwt_alg) var(txn.bearer),jwt_header_query('$.alg')
    http-request deny status 401 unless {{ var(txn.jwt_alg) -m str RS256 }}
    http-request deny status 401 unless {{ var(txn.bearer),jwt_payload_query('$.iss') -m str {ISSUER} }}
    http-request deny status 401 unless {{ var(txn.bearer),jwt_payload_query('$.aud') -m str {AUDIENCE} }}
    http-request set-var(txn.exp) var(txn.bearer),jwt_payload_query('$.exp','int')
    http-request set-var(txn.nbf) var(txn.bearer),jwt_payload_query('$.nbf','int')
    http-request set-var(txn.now) date()
    http-request deny status 401 unless {{ var(txn.exp),sub(txn.now) -m int gt 0 }}
    http-request deny status 401 unless {{ var(txn.now),sub(txn.nbf) -m int ge 0 }}
    http-request deny status 401 unless {{ var(txn.bearer),jwt_verify(txn.jwt_alg,"{public_key}") -m int 1 }}
    default_backend upstream

backend upstream
    http-reuse safe
    server up1 127.0.0.1:{upstream_port} maxconn 1000
"""


def haproxy_jwt(binary: str, workdir: Path, upstream_port: int, key: SigningKey) -> PeerProcess:
    workdir.mkdir(parents=True, exist_ok=True)
    pem = workdir / "jwt-public.pem"
    pem.write_bytes(key.public_pem())
    port = free_port()
    cfg = workdir / "haproxy-jwt.cfg"
    cfg.write_text(haproxy_jwt_config(port, upstream_port, pem))
    return PeerProcess("haproxy-jwt", [binary, "-db", "-f", str(cfg)], port,
                       workdir / "haproxy.log")
