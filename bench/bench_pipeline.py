"""The gateway's own CPU per proxied request, without the kernel.

One worker's real objects (Gateway, ClientConnection, UpstreamConnection, pool, the shared
metrics table) are driven in-process with transports that only collect bytes
(bench/support/pipeline.py), so the figure is the Python + Cython cost of parsing, routing,
authenticating, rewriting both heads, pooling and counting — the part FluxGate controls.
Three routes: public; jwt with one RS256 token (a verified-token cache hit, the e2e "1 token"
case) and with 100,000 distinct ~820-byte ones (each a full verification, the e2e "100k
tokens" case); api_key over 1,000 keys with quotas, taken in turn. The e2e benches add the two reads
and two writes per request the kernel does for any proxy (strace shows HAProxy makes the
same four calls).

The same scenarios under callgrind, instructions per request (deterministic, unlike time on
this VM): ``.venv/bin/python tools/pipeline_instructions.py``.
"""

from __future__ import annotations

import pytest

from bench.support.pipeline import SCENARIOS, scenario


@pytest.fixture(scope="module", params=SCENARIOS)
def route(request, tmp_path_factory):
    built = scenario(request.param, tmp_path_factory.mktemp(request.param))
    yield request.param, built
    built.close()


@pytest.mark.benchmark(group="pipeline: one proxied GET, in-process")
def test_pipeline_one_request(benchmark, route):
    name, built = route
    benchmark(built.one)
    upstream_head = built.upstream_out.writes[-1]
    assert upstream_head.startswith(b"GET /")
    assert b"X-Forwarded-For: 127.0.0.1\r\n" in upstream_head
    assert b"X-API-Key" not in upstream_head
    if name != "public":
        assert b"X-FluxGate-Principal: " in upstream_head or b"X-FluxGate-" in upstream_head
    reply = built.client_out.writes[-1]
    assert reply.startswith(b"HTTP/1.1 200 OK\r\n") and reply.endswith(b"hello, world\n")
    if name == "api_key":
        assert b"RateLimit-Remaining: " in reply
