"""End to end, JWT: wrk → FluxGate (1 worker) jwt route against wrk → HAProxy verifying the
same tokens with ``jwt_verify`` (``nbthread 1``; RS256 pinned, iss, aud, exp and nbf checked as
FluxGate checks them), per proxy core, same machine, same upstream.

``pytest bench/ -k e2e_jwt`` runs it (``-m "not e2e"`` skips it). Needs haproxy, wrk and
nginx (``make bench-deps``); the method is in bench/support/rounds.py, the rig in
bench/support/e2e.py.

Tokens: RS256 (RSA-2048) with realistic claims (bench/support/jwt.py: iss, sub, aud, iat, nbf,
exp, jti, three scopes, tenant, roles, email, plan) at ~300 and ~1,000 bytes of claims, i.e.
~810- and ~1,750-byte tokens (the exact sizes are in the output). Four comparisons:

* ``jwt 1 token, …``: one valid token on every request. FluxGate's verified-token cache
  answers after the first; HAProxy has no cache and verifies every time.
* ``jwt 100k tokens, …``: 100,000 distinct tokens rotating through wrk (wrk.lua), each side's
  rotation continuing from run to run: a 100,000-request cycle, beyond FluxGate's 16,384-token
  cache, so every request is verified in full on both sides.

The tokens are made once and cached (``~/.cache/fluxgate-bench``); the identity provider
(tests/support/idp.py) serves the JWKS FluxGate fetches at start. Results:
bench/results/e2e-jwt.md (untracked) or ``$FLUXGATE_BENCH_RESULTS``, and the goals table at
the end of the session. Asserted: every run answered, with no transport error and no status
≥ 400 (every token is valid for both proxies); the ratios are reported, not asserted.
"""

from __future__ import annotations

import pytest

from bench.support.e2e import report, rig
from bench.support.jwt import AUDIENCE, ISSUER, PAYLOAD_SIZES, bench_key, haproxy_jwt, token_file
from bench.support.rounds import GOAL_BY_NAME, Comparison, Side
from tests.support.idp import IdentityProvider

pytestmark = pytest.mark.e2e

DISTINCT = 100_000
PATH = "/jwt/hello"

FLUXGATE_CONFIG = """\
workers: 1
access_log: null
routes:
  - route: /jwt
    upstream: http://127.0.0.1:{port}
    middleware:
      - jwt:
          issuer: {issuer}
          audience: {audience}
          jwks_uri: {jwks_uri}
          algorithms: [RS256]
"""

HEADER = """\
## End-to-end: JWT route — FluxGate vs HAProxy jwt_verify, per proxy core (bench/bench_e2e_jwt.py)

wrk → proxy → fixed-response upstream; HAProxy `nbthread 1` with `jwt_verify` (RS256 pinned,
iss, aud, exp, nbf checked); RS256 tokens with realistic claims; method in
bench/support/rounds.py. `1 token`: FluxGate's verified-token cache hits, HAProxy verifies
every time. `100k tokens`: a 100,000-token rotation, beyond FluxGate's 16,384-token cache.
"""


def test_e2e_jwt(benchmark, tmp_path, request, e2e_summary, e2e_comparisons):
    benchmark.group = "e2e: jwt route"
    key = bench_key()
    files = {label: token_file(DISTINCT, size) for label, size in PAYLOAD_SIZES.items()}
    first = {}
    for label, path in files.items():
        with open(path) as f:
            first[label] = f.readline().strip()  # "Bearer ..."
    idp = IdentityProvider(keys=[key]).start()
    try:
        def config(port: int) -> str:
            return FLUXGATE_CONFIG.format(port=port, issuer=ISSUER, audience=AUDIENCE,
                                          jwks_uri=idp.jwks_uri)

        def peer(binary, workdir, port):
            return haproxy_jwt(binary, workdir, port, key)

        with rig(tmp_path, config, peer) as r:
            comparisons = []
            for label in PAYLOAD_SIZES:
                name = f"jwt 1 token, {label} claims"
                one = (f"Authorization: {first[label]}",)
                comparisons.append(Comparison(name, Side("fluxgate", r.fluxgate, PATH, one),
                                              Side("haproxy", r.haproxy, PATH, one),
                                              GOAL_BY_NAME[name]))
            for label in PAYLOAD_SIZES:
                name = f"jwt 100k tokens, {label} claims"
                rotating = {"header_file": files[label], "header_name": "Authorization"}
                comparisons.append(Comparison(name, Side("fluxgate", r.fluxgate, PATH, **rotating),
                                              Side("haproxy", r.haproxy, PATH, **rotating),
                                              GOAL_BY_NAME[name]))

            def run():
                return [r.run(c) for c in comparisons]

            benchmark.pedantic(run, rounds=1, iterations=1)
            sizes = ", ".join(f"{label} claims → {len(first[label]) - len('Bearer ')}-byte tokens"
                              for label in PAYLOAD_SIZES)
            report(request, benchmark, r, name="e2e-jwt", header=HEADER, comparisons=comparisons,
                   notes=[f"tokens: RS256, {sizes}; {DISTINCT:,} distinct per size"],
                   e2e_summary=e2e_summary, e2e_comparisons=e2e_comparisons)
    finally:
        idp.stop()
