"""Header hygiene in both directions (README "HTTP behaviour", RFC 9110 §7.6.1).

Hop-by-hop headers, and every header named in `Connection`, are never forwarded. Framing
(Content-Length / Transfer-Encoding) is re-created by the proxy, never copied, so the two
sides cannot disagree about where a message ends. Client-sent `X-FluxGate-*` headers are
dropped so only the gateway can speak with that prefix, and so are path overrides
(`X-Original-URL`, `X-Rewrite-URL`), the `strip_request_headers` lists and, unless
`limits.allow_underscores_in_headers`, names with `_` (see _core.classify_header).
"""

from __future__ import annotations

import functools

from fluxgate._core import (
    H_CONNECTION,
    H_CONTENT_LENGTH,
    H_DROP,
    H_EXPECT,
    H_FLUXGATE,  # noqa: F401 - the x-fluxgate-* kind, which REQUEST_SPECIAL cannot list
    H_FORWARDED_FOR,
    H_FORWARDED_PROTO,
    H_HOST,
    H_REQUEST_ID,
    H_TRANSFER_ENCODING,
    H_UPGRADE,
)

# RFC 9110 §7.6.1 plus the de-facto ones every proxy drops (Proxy-Connection, Keep-Alive).
HOP_BY_HOP: frozenset[bytes] = frozenset(
    {
        b"connection",
        b"proxy-connection",
        b"keep-alive",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"proxy-authorization",
        b"proxy-authenticate",
    }
)

# Path overrides some frameworks and servers honour (IIS URL Rewrite, Symfony, Laravel):
# the upstream would serve a path the gateway never routed nor authorized. Always dropped.
PATH_OVERRIDES: frozenset[bytes] = frozenset({b"x-original-url", b"x-rewrite-url"})

# Request headers the gateway reads or sets itself, by kind (the H_* numbers and the
# classifier live in _core, shared by the fast head parser and the llhttp path). Everything
# else is forwarded as the client wrote it (req.forward_headers, the parser's own pairs).
# Client values of X-Forwarded-* and X-Request-Id are replaced, or extended when they come
# from a trusted proxy; a client-sent X-FluxGate-* is dropped (only the gateway speaks with
# that prefix).
REQUEST_SPECIAL: dict[bytes, int] = {
    **{name: H_DROP for name in HOP_BY_HOP},
    **{name: H_DROP for name in PATH_OVERRIDES},
    b"host": H_HOST,
    b"content-length": H_CONTENT_LENGTH,
    b"transfer-encoding": H_TRANSFER_ENCODING,
    b"expect": H_EXPECT,
    b"x-forwarded-for": H_FORWARDED_FOR,
    b"x-forwarded-proto": H_FORWARDED_PROTO,
    b"x-forwarded-host": H_DROP,
    b"x-request-id": H_REQUEST_ID,
    b"connection": H_CONNECTION,
    b"upgrade": H_UPGRADE,
}


def connection_tokens(value: bytes | None) -> frozenset[bytes]:
    """The lower-cased header names listed in a Connection header value."""
    if not value:
        return frozenset()
    return frozenset(t.strip().lower() for t in value.split(b",") if t.strip())


# Connection options that are not header names (RFC 9112 §9.3, §9.6).
_CONNECTION_OPTIONS = frozenset({b"close", b"keep-alive", b"upgrade"})


@functools.lru_cache(maxsize=256)
def named_by_connection(value: bytes) -> frozenset[bytes]:
    """Header names a Connection header declares hop-by-hop (its options left out).

    Called for every request and response carrying Connection, whose values repeat
    ("keep-alive", "close"): each value is split once per worker (a bounded cache)."""
    return connection_tokens(value) - _CONNECTION_OPTIONS


def drop_lines(lines: list[bytes], names: frozenset[bytes]) -> list[bytes]:
    """Formatted header lines without those whose (lower-cased) name is in `names`."""
    return [ln for ln in lines if ln.split(b":", 1)[0].lower() not in names]


@functools.lru_cache(maxsize=256)
def dropped_by_connection(value: bytes) -> frozenset[bytes]:
    """named_by_connection for a request, each ``_`` read as ``-``: upstream_head compares
    the client's header names that way (a CGI-style upstream reads them alike)."""
    return frozenset(name.replace(b"_", b"-") for name in named_by_connection(value))

