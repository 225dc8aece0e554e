"""Parse the target URL and enforce the loopback-only rule.

The load generator talks to loopback addresses only, unless the caller says otherwise out loud
(``allow_non_loopback=True`` / ``--allow-non-loopback``).  The check is made on the URL itself,
before any socket exists: an IP literal must be in 127.0.0.0/8 or be ::1, and the only name that is
accepted is ``localhost`` (mapped to 127.0.0.1, never looked up).  Any other name is refused without
being resolved, so a mistyped host never leaks a DNS query or a packet.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from urllib.parse import urlsplit

__all__ = ["Target", "TargetRefused", "parse_target"]


class TargetRefused(ValueError):
    """The target is not a loopback address and non-loopback traffic was not allowed."""


@dataclass(frozen=True, slots=True)
class Target:
    url: str
    connect_host: str  # what the socket connects to (an IP literal unless non-loopback allowed)
    port: int
    host_header: str  # RFC 9110 §7.2: uri-host [ ":" port ], IPv6 literals in brackets
    path: str  # origin-form request target (RFC 9112 §3.2.1): absolute-path [ "?" query ]


def _loopback_ip(host: str) -> str | None:
    """Return the address to connect to if ``host`` is a loopback IP literal or localhost."""
    if host.rstrip(".").lower() == "localhost":
        return "127.0.0.1"
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return str(addr) if addr.is_loopback else None


DEFAULT_PORTS = {"http": 80, "https": 443}


def parse_target(url: str, *, allow_non_loopback: bool = False,
                 schemes: tuple[str, ...] = ("http",)) -> Target:
    """Split ``url`` into what a connection and a request line need.

    Raises ``ValueError`` for a URL that is not ``<scheme>://host[:port][/path]`` with a
    scheme in ``schemes`` (the Python engine speaks plain HTTP only; wrk also speaks https)
    and ``TargetRefused`` for a host that is not loopback (unless ``allow_non_loopback``).
    """
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in schemes:
        allowed = " or ".join(f"{s}://" for s in schemes)
        raise ValueError(f"unsupported URL scheme {parts.scheme!r} in {url!r}: only {allowed} "
                         "is supported")
    host = parts.hostname
    if not host:
        raise ValueError(f"no host in URL {url!r}")
    if parts.username is not None or parts.password is not None:
        raise ValueError(f"credentials in the URL are not supported: {url!r}")
    try:
        port = parts.port or DEFAULT_PORTS[scheme]
    except ValueError as exc:
        raise ValueError(f"bad port in URL {url!r}: {exc}") from None
    if parts.fragment:
        raise ValueError(f"a fragment is never sent to a server: {url!r}")

    connect_host = _loopback_ip(host)
    if connect_host is None:
        if not allow_non_loopback:
            raise TargetRefused(
                f"refusing target {host!r}: not a loopback address (127.0.0.0/8, ::1, localhost); "
                "names other than localhost are not resolved. "
                "Pass --allow-non-loopback (allow_non_loopback=True) to load a remote host."
            )
        connect_host = host

    host_text = f"[{host}]" if ":" in host else host
    host_header = host_text if port == DEFAULT_PORTS[scheme] else f"{host_text}:{port}"
    path = parts.path or "/"
    if parts.query:
        path = f"{path}?{parts.query}"
    if any(c in path for c in " \r\n\t"):
        raise ValueError(f"whitespace in the request target of {url!r}; percent-encode it")
    return Target(url=url, connect_host=connect_host, port=port, host_header=host_header, path=path)
