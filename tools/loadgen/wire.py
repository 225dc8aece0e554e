"""Build the raw request bytes, once, before any load is generated.

Every request a run can send is prepared here as one ``bytes`` object: the request line, the
headers and the body.  With a rotating header (``--header-file F --header-name N``) there is one
prepared request per distinct value, and request *i* is ``requests[i % n]``, so rotation costs a
list index at run time.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

from .target import Target

__all__ = ["USER_AGENT", "build_requests", "parse_header", "read_header_values"]

USER_AGENT = "fluxgate-loadgen/0.1"

# RFC 9110 §5.1: field-name = token; §5.5: field-value is visible chars, SP and HTAB, no CR/LF/NUL.
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+\Z")
_BAD_VALUE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
_METHODS_WITH_BODY = frozenset({"POST", "PUT", "PATCH"})
_MANAGED = frozenset({"content-length", "transfer-encoding"})


def _check_name(name: str) -> str:
    if not _TOKEN.match(name):
        raise ValueError(f"invalid header name {name!r}")
    return name


def _check_value(name: str, value: str) -> str:
    if _BAD_VALUE.search(value):
        raise ValueError(f"invalid character (CR, LF or control) in the value of header {name!r}")
    return value


def parse_header(text: str) -> tuple[str, str]:
    """``'Name: value'`` → ``('Name', 'value')``, validated (RFC 9110 §5)."""
    name, sep, value = text.partition(":")
    if not sep:
        raise ValueError(f"header {text!r} is not of the form 'Name: value'")
    name = _check_name(name.strip())
    return name, _check_value(name, value.strip())


def read_header_values(path: str) -> list[str]:
    """One header value per line; blank lines are skipped, surrounding whitespace trimmed."""
    with open(path, encoding="latin-1") as f:
        values = [line.strip() for line in f]
    values = [v for v in values if v]
    if not values:
        raise ValueError(f"header file {path!r} holds no values")
    return values


def _encode(text: str, what: str) -> bytes:
    try:
        return text.encode("latin-1")
    except UnicodeEncodeError:
        raise ValueError(f"{what} is not representable in ISO-8859-1: {text!r}") from None


def build_requests(
    target: Target,
    *,
    method: str = "GET",
    headers: Iterable[tuple[str, str] | str] = (),
    body: bytes = b"",
    rotate_name: str | None = None,
    rotate_values: Sequence[str] = (),
) -> list[bytes]:
    """Return the prepared requests: one, or one per value of the rotating header.

    ``Host`` and ``User-Agent`` are added unless given; ``Content-Length`` is added when there is
    a body or the method is POST/PUT/PATCH (RFC 9110 §8.6).  ``Content-Length`` and
    ``Transfer-Encoding`` may not be set by hand, since the body framing is ours.
    """
    method = method.upper()
    if not _TOKEN.match(method):
        raise ValueError(f"invalid method {method!r}")
    parsed = [parse_header(h) if isinstance(h, str) else (_check_name(h[0]), _check_value(*h)) for h in headers]
    given = {name.lower() for name, _ in parsed}
    if given & _MANAGED:
        raise ValueError("Content-Length and Transfer-Encoding are set by the load generator")
    if rotate_name is not None:
        _check_name(rotate_name)
        if rotate_name.lower() in given:
            raise ValueError(f"header {rotate_name!r} is both fixed (--header) and rotating (--header-name)")
        if rotate_name.lower() in _MANAGED or rotate_name.lower() == "host":
            raise ValueError(f"header {rotate_name!r} cannot rotate")
        if not rotate_values:
            raise ValueError("a rotating header needs at least one value")
    elif rotate_values:
        raise ValueError("rotating header values were given without a header name")

    lines = [f"{method} {target.path} HTTP/1.1"]
    if "host" not in given:
        lines.append(f"Host: {target.host_header}")
    if "user-agent" not in given:
        lines.append(f"User-Agent: {USER_AGENT}")
    lines.extend(f"{name}: {value}" for name, value in parsed)
    if body or method in _METHODS_WITH_BODY:
        lines.append(f"Content-Length: {len(body)}")
    head = _encode("\r\n".join(lines) + "\r\n", "a header")
    tail = b"\r\n" + body

    if rotate_name is None:
        return [head + tail]
    prefix = head + _encode(rotate_name, "the header name") + b": "
    return [
        prefix + _encode(_check_value(rotate_name, value), f"header value #{i}") + b"\r\n" + tail
        for i, value in enumerate(rotate_values)
    ]
