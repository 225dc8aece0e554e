"""fluxgate.proxy hot-path helpers against naive pure-Python peers (``pytest bench/``).

* ``Router.match``: one dict lookup per path segment, against the obvious linear scan of the
  prefixes sorted longest first, on a 50-route table (deep hit, deep path on a short route,
  shallow hit, miss).
* ``upstream_head``: the upstream request head for a 10-header browser request (the client's
  lines as the head parser formats them, then ``_core.upstream_head``), against a dict-based
  rewrite (lower-case keyed dict, delete what must not be forwarded, add ours).

Both peers return exactly what fluxgate returns on these inputs (asserted); they are not
complete implementations (the dict peer merges repeated headers, for one).
``fluxgate._core.normalize_path`` is in bench_core.py.
"""

from __future__ import annotations

import pytest

from fluxgate._core import parse_request_head, upstream_head
from fluxgate.proxy.headers import REQUEST_SPECIAL, connection_tokens
from fluxgate.proxy.router import Router

# ---- Router.match -------------------------------------------------------------------------

SERVICES = ("users", "orders", "payments", "invoices", "catalog", "search", "inventory", "shipping")
ROUTE_PREFIXES = (
    ["/healthz", "/metrics", "/static", "/login", "/logout", "/oauth2/callback"]
    + [f"/api/v1/{s}" for s in SERVICES]
    + [f"/api/v2/{s}" for s in SERVICES]
    + [f"/api/v2/{s}/admin" for s in SERVICES]
    + [f"/api/v2/{s}/{sub}" for s in SERVICES[:4] for sub in ("search", "export", "batch")]
    + ["/api/v2/payments/charges", "/api/v2/payments/charges/disputes", "/internal/debug",
       "/internal/flags", "/ws/notifications", "/graphql", "/docs", "/api/v3/beta"]
)
assert len(ROUTE_PREFIXES) == 50 == len(set(ROUTE_PREFIXES))
ROUTES = [(prefix, f"route:{prefix}") for prefix in ROUTE_PREFIXES]

DEEP_PATH = b"/api/v2/payments/charges/ch_3NqFdK2eZvKYlo2C1gqX7zXP/refunds/re_1Nq8a2eZvKYlo2C"
DEEP_SHORT_PATH = b"/static/js/vendor/chunk-3f2a9c/app.min.js"
SHALLOW_PATH = b"/healthz"
MISS_PATH = b"/api/v2/unknown/service/with/a/few/segments/left/to/try"

# "deep hit" matches one of the longest prefixes, which the linear scan tries first; "deep
# path, short route" is the linear scan's bad case (every longer prefix is tried first).
CASES = {  # name -> (path, expected route)
    "deep hit": (DEEP_PATH, "route:/api/v2/payments/charges"),
    "deep path, short route": (DEEP_SHORT_PATH, "route:/static"),
    "shallow hit": (SHALLOW_PATH, "route:/healthz"),
    "miss": (MISS_PATH, None),
}


class LinearRouter:
    """The naive peer: try every prefix, longest first, with a segment-boundary check."""

    def __init__(self, routes):
        table = sorted(((p.encode(), r) for p, r in routes), key=lambda pr: -len(pr[0]))
        self._table = [(prefix, prefix + b"/", route) for prefix, route in table]

    def match(self, path: bytes):
        for prefix, with_slash, route in self._table:
            if path == prefix or path.startswith(with_slash):
                return route
        return None


FLUXGATE_ROUTER = Router(ROUTES)
LINEAR_ROUTER = LinearRouter(ROUTES)


@pytest.mark.parametrize("case", list(CASES))
def test_router_match_fluxgate(benchmark, record_impl, case):
    path, expected = CASES[case]
    benchmark.group = f"Router.match: {case}, 50 routes"
    assert benchmark(FLUXGATE_ROUTER.match, path) == expected
    record_impl("fluxgate")


@pytest.mark.parametrize("case", list(CASES))
def test_router_match_linear(benchmark, record_impl, case):
    path, expected = CASES[case]
    benchmark.group = f"Router.match: {case}, 50 routes"
    assert benchmark(LINEAR_ROUTER.match, path) == expected
    record_impl("linear scan")


# ---- upstream_head -----------------------------------------------------------------------

BROWSER_HEADERS: list[tuple[bytes, bytes]] = [
    (b"Host", b"api.example.com"),
    (b"User-Agent", b"Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0"),
    (b"Accept", b"text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"),
    (b"Accept-Language", b"en-US,en;q=0.5"),
    (b"Accept-Encoding", b"gzip, deflate, br, zstd"),
    (b"Referer", b"https://app.example.com/dashboard/payments?tab=recent"),
    (b"Cookie", b"session=9f86d081884c7d659a2feaa0c55ad015; theme=dark; _ga=GA1.2.1234567890"),
    (b"Connection", b"keep-alive"),
    (b"Upgrade-Insecure-Requests", b"1"),
    (b"Sec-Fetch-Mode", b"navigate"),
]
assert len(BROWSER_HEADERS) == 10
HEAD_ARGS = dict(
    drop=connection_tokens(b"keep-alive"),
    forwarded_for=b"203.0.113.7",
    forwarded_proto=b"http",
    forwarded_host=b"api.example.com",
    request_id=b"b3f1c2d4-5e6f-4a7b-8c9d-0e1f2a3b4c5d",
    framing=b"",
)
HEAD_TARGET = b"/api/v2/payments/charges?limit=20&starting_after=ch_3NqFdK2eZvKYlo2C"
EXPECTED_HEAD = (
    b"GET /api/v2/payments/charges?limit=20&starting_after=ch_3NqFdK2eZvKYlo2C HTTP/1.1\r\n"
    b"Host: api.example.com\r\n"
    b"User-Agent: Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0\r\n"
    b"Accept: text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8\r\n"
    b"Accept-Language: en-US,en;q=0.5\r\n"
    b"Accept-Encoding: gzip, deflate, br, zstd\r\n"
    b"Referer: https://app.example.com/dashboard/payments?tab=recent\r\n"
    b"Cookie: session=9f86d081884c7d659a2feaa0c55ad015; theme=dark; _ga=GA1.2.1234567890\r\n"
    b"Upgrade-Insecure-Requests: 1\r\n"
    b"Sec-Fetch-Mode: navigate\r\n"
    b"X-Forwarded-For: 203.0.113.7\r\n"
    b"X-Forwarded-Proto: http\r\n"
    b"X-Forwarded-Host: api.example.com\r\n"
    b"X-Request-Id: b3f1c2d4-5e6f-4a7b-8c9d-0e1f2a3b4c5d\r\n"
    b"\r\n"
)

# The peer's own copy of what must not go upstream (RFC 9110 §7.6.1 and the gateway's own).
NAIVE_NOT_FORWARDED = {
    b"connection", b"proxy-connection", b"keep-alive", b"te", b"trailer", b"transfer-encoding",
    b"upgrade", b"proxy-authorization", b"proxy-authenticate", b"content-length", b"expect",
    b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host", b"x-request-id",
}


def naive_request_head(method, target, headers, *, drop, forwarded_for, forwarded_proto,
                       forwarded_host, request_id, framing):
    """The dict-based rewrite: index by lower-case name, delete, add ours, serialize."""
    kept = {name.lower(): (name, value) for name, value in headers}
    for lname in list(kept):
        if lname in NAIVE_NOT_FORWARDED or lname in drop or lname.startswith(b"x-fluxgate-"):
            del kept[lname]
    kept[b"x-forwarded-for"] = (b"X-Forwarded-For", forwarded_for)
    kept[b"x-forwarded-proto"] = (b"X-Forwarded-Proto", forwarded_proto)
    if forwarded_host is not None:
        kept[b"x-forwarded-host"] = (b"X-Forwarded-Host", forwarded_host)
    kept[b"x-request-id"] = (b"X-Request-Id", request_id)
    head = method + b" " + target + b" HTTP/1.1\r\n"
    for name, value in kept.values():
        head += name + b": " + value + b"\r\n"
    return head + framing + b"\r\n"


@pytest.mark.benchmark(group="upstream head: 10 browser headers")
def test_upstream_head_fluxgate(benchmark, record_impl):
    # What the worker does per request, from the raw bytes: parse and classify the head
    # (parse_request_head), then write the upstream head. The dict peer starts from headers
    # already parsed, so FluxGate's figure carries the parse on top.
    raw = b"GET " + HEAD_TARGET + b" HTTP/1.1\r\n" + b"".join(
        name + b": " + value + b"\r\n" for name, value in BROWSER_HEADERS
    ) + b"\r\n"
    kinds: dict[bytes, int] = {}

    def parse_and_build() -> bytes:
        req = parse_request_head(raw, kinds, REQUEST_SPECIAL, 16384, 1 << 20, 0.0)
        req.request_id = HEAD_ARGS["request_id"]
        return upstream_head(req, HEAD_ARGS["drop"], -1, HEAD_ARGS["forwarded_for"], b"api_key")

    head = benchmark(parse_and_build)
    assert head == EXPECTED_HEAD
    record_impl("fluxgate")


@pytest.mark.benchmark(group="upstream head: 10 browser headers")
def test_upstream_head_dict_rewrite(benchmark, record_impl):
    head = benchmark(naive_request_head, b"GET", HEAD_TARGET, BROWSER_HEADERS, **HEAD_ARGS)
    assert head == EXPECTED_HEAD
    record_impl("dict rewrite")
