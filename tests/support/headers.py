"""Reference helpers for header tests: the gateway's request-header classification applied
to a whole header list, the way ClientConnection.on_header applies it one header at a time."""

from __future__ import annotations

from fluxgate._core import H_FORWARD, H_HOST, classify_header
from fluxgate.proxy.headers import REQUEST_SPECIAL


def header_kind(lname: bytes, special: dict[bytes, int] = REQUEST_SPECIAL) -> int:
    """What the gateway does with a request header, by its lower-cased name."""
    return classify_header(lname, {}, special)


def forwardable_headers(headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """The headers forwarded as written (``req.forward_headers``)."""
    return [
        (name, value) for name, value in headers if header_kind(name.lower()) in (H_FORWARD, H_HOST)
    ]
