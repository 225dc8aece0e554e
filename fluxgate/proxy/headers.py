"""Header hygiene in both directions (DESIGN §4, RFC 9110 §7.6.1).

Hop-by-hop headers, and every header named in `Connection`, are never forwarded. Framing
(Content-Length / Transfer-Encoding) is re-created by the proxy, never copied, so the two
sides cannot disagree about where a message ends. Client-sent `X-FluxGate-*` headers are
dropped so only the gateway can speak with that prefix.
"""

from __future__ import annotations

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

# Headers the gateway sets itself on the way up; client values are replaced, not merged,
# except X-Forwarded-* from a trusted proxy, which are extended.
_REQUEST_OWNED: frozenset[bytes] = HOP_BY_HOP | {
    b"content-length",
    b"expect",
    b"x-forwarded-for",
    b"x-forwarded-proto",
    b"x-forwarded-host",
    b"x-request-id",
}

FLUXGATE_PREFIX = b"x-fluxgate-"
_REQUEST_ID_CHARS = frozenset(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.:")


def connection_tokens(value: bytes | None) -> frozenset[bytes]:
    """The lower-cased header names listed in a Connection header value."""
    if not value:
        return frozenset()
    return frozenset(t.strip().lower() for t in value.split(b",") if t.strip())


def acceptable_request_id(value: bytes | None) -> bool:
    """A client-sent X-Request-Id is kept only when short and plainly spelled."""
    return bool(value) and len(value) <= 128 and all(c in _REQUEST_ID_CHARS for c in value)  # type: ignore[arg-type]


def build_request_head(
    method: bytes,
    target: bytes,
    headers: list[tuple[bytes, bytes]],
    *,
    drop: frozenset[bytes],
    forwarded_for: bytes,
    forwarded_proto: bytes,
    forwarded_host: bytes | None,
    request_id: bytes,
    framing: bytes,
    extra: list[tuple[bytes, bytes]] | None = None,
    upgrade: bytes | None = None,
) -> bytes:
    """Serialize the request head sent upstream.

    `drop` holds the lower-cased names to remove (Connection-listed ones, the API key
    header...); `framing` is the already-formatted Content-Length/Transfer-Encoding line(s).
    """
    out = [b"%s %s HTTP/1.1\r\n" % (method, target)]
    append = out.append
    owned = _REQUEST_OWNED
    for name, value in headers:
        lname = name.lower()
        if lname in owned or lname in drop or lname.startswith(FLUXGATE_PREFIX):
            continue
        append(b"%s: %s\r\n" % (name, value))
    append(b"X-Forwarded-For: %s\r\n" % forwarded_for)
    append(b"X-Forwarded-Proto: %s\r\n" % forwarded_proto)
    if forwarded_host is not None:
        append(b"X-Forwarded-Host: %s\r\n" % forwarded_host)
    append(b"X-Request-Id: %s\r\n" % request_id)
    if extra:
        for name, value in extra:
            append(b"%s: %s\r\n" % (name, value))
    if upgrade is not None:
        append(b"Connection: Upgrade\r\nUpgrade: %s\r\n" % upgrade)
    append(framing)
    append(b"\r\n")
    return b"".join(out)
