"""Value parsers of fluxgate.yaml: addresses, URLs, CIDRs, route paths, methods, scope rules,
header and parameter names, and how a key path is spelled for the user.

The ``parse_*`` and ``check_*`` functions raise ``ValueError`` with a message meant for the
user (like ``ipaddress`` does) and know nothing of where the value sits in the config: the
checker (``resolve.check_config``) and each middleware kind's own checks report the key path,
the loader adds the user's spelling and the line.
"""

from __future__ import annotations

import difflib
import ipaddress
import re
from collections.abc import Iterable
from urllib.parse import urlsplit

from fluxgate.config import schema

Path = tuple[str | int, ...]  # a key path: ("routes", 2, "middleware", 0)

# RFC 1123 §2.1 host names: dot-separated labels of letters, digits and hyphens.
_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")
_PORT = re.compile(r"[0-9]{1,5}")
# RFC 3986 §3.3 pchar and '/', minus '%' (routes are matched on decoded paths).
_PATH_CHAR = re.compile(r"[A-Za-z0-9\-._~!$&'()*+,;=:@/]")
# RFC 9110 §5.6.2 token: header and cookie names.
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_QUERY_NAME = re.compile(r"[A-Za-z0-9._~-]+")  # unreserved: no percent-encoding
# RFC 6749 §3.3 scope-token: printable ASCII except space, '"' and '\'.
_SCOPE = re.compile(r'[\x21\x23-\x5b\x5d-\x7e]{1,128}')

MIN_SECRET_CHARS = 32  # api_keys.signing_secret
JWT_ALGORITHMS = (
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA",
    "HS256", "HS384", "HS512",
)  # fmt: skip
JWKS_MIN_REFRESH = 30.0
# Upstream request headers a forward_claims entry may not write: framing, hop-by-hop, and
# those the gateway itself sets (X-Forwarded-*, X-Request-Id, X-FluxGate-*).
RESERVED_CLAIM_HEADERS = frozenset({
    "host", "content-length", "transfer-encoding", "connection", "keep-alive", "upgrade",
    "te", "trailer", "proxy-authorization", "proxy-connection", "authorization", "cookie",
    "expect", "x-forwarded-for", "x-forwarded-proto", "x-forwarded-host", "x-request-id",
})  # fmt: skip


def parse_listen(value: str) -> tuple[str, int]:
    """Split ``host:port`` or ``[v6]:port`` into ``(host, port)``; port 0 means "any".

    The host is an IPv4 address, a bracketed IPv6 address or a host name. Raises
    ``ValueError``.
    """
    return _split_host_port(value, default_port=None, min_port=0)


def parse_upstream_url(value: str) -> tuple[str, int]:
    """Split an upstream URL ``http://host[:port]`` or ``https://host[:port]`` into
    ``(host, port)``; the port defaults to 80 or 443 (``is_https_url`` tells which).

    A path, query, fragment or user info is refused: a target names a server, not a
    resource. Raises ``ValueError``.
    """
    if any(ch.isspace() or ord(ch) < 0x20 or ord(ch) == 0x7F for ch in value):
        # urlsplit silently deletes tabs and newlines (WHATWG behaviour); refuse instead.
        raise ValueError(f"invalid upstream URL {value!r}: contains whitespace")
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"invalid upstream URL {value!r}: expected http(s)://host:port")
    if "@" in parts.netloc:
        raise ValueError(f"upstream {value!r}: user info (user@) is not allowed in a target")
    if parts.path not in ("", "/") or parts.query or parts.fragment or value.endswith(("?", "#")):
        raise ValueError(
            f"upstream {value!r}: a target is http(s)://host:port without a path, query or "
            "fragment"
        )
    default_port = 443 if parts.scheme == "https" else 80
    try:
        return _split_host_port(parts.netloc, default_port=default_port, min_port=1)
    except ValueError as exc:
        raise ValueError(f"upstream {value!r}: {exc}") from None


def is_https_url(value: str) -> bool:
    """True for an ``https://`` upstream URL (any case, as urlsplit reads the scheme)."""
    return value[:8].lower() == "https://"


def parse_host_name(value: str) -> str:
    """Check a DNS host name (RFC 1123 §2.1) or an IP address, e.g. an upstream's TLS
    server_name; returns it. Raises ``ValueError``."""
    try:
        ipaddress.ip_address(value)
        return value
    except ValueError:
        pass
    labels = value.rstrip(".").split(".")
    if len(value) > 253 or not all(_LABEL.fullmatch(label) for label in labels):
        raise ValueError(f"invalid host name {value!r}")
    return value


def parse_network(value: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    """Parse an address or CIDR, IPv4 or IPv6 (``"10.0.0.5"`` is ``10.0.0.5/32``).

    Host bits must be clear: ``"10.0.0.1/8"`` is refused, not widened to ``10.0.0.0/8``, because
    a wrong prefix in an allowlist is a typo to fix, never something to guess about.
    Raises ``ValueError``.
    """
    try:
        return ipaddress.ip_network(value, strict=True)
    except ValueError:
        try:
            network = ipaddress.ip_network(value, strict=False)
        except ValueError:
            raise ValueError(f"invalid CIDR {value!r}") from None
    raise ValueError(f"CIDR {value!r} has host bits set; did you mean {network}?")


def parse_route_path(value: str) -> str:
    """Check a route path and return the prefix the router matches on (``/api/`` → ``/api``).

    Requests are matched after percent-decoding, ``//`` collapse and dot-segment removal
    (README, "HTTP behaviour"), so a route spelled with ``%``, ``//``, ``.`` or ``..`` could never match;
    ``?`` and ``#`` are not part of a path. Raises ``ValueError``.
    """
    if not value.startswith("/"):
        raise ValueError(f"a route must start with '/', got {value!r}")
    for char, why in (
        ("?", "a query string is not part of a route"),
        ("#", "a fragment is never sent to a server"),
        ("%", "routes match decoded paths; write the character itself"),
        ("\\", "backslash is not a path separator"),
    ):
        if char in value:
            raise ValueError(f"route {value!r} must not contain {char!r} ({why})")
    bad = next((c for c in value if not _PATH_CHAR.fullmatch(c)), None)
    if bad is not None:
        raise ValueError(f"route {value!r} contains {bad!r}, which is not allowed in a path")
    if "//" in value:
        raise ValueError(f"route {value!r} must not contain '//'")
    if any(segment in (".", "..") for segment in value.split("/")):
        raise ValueError(f"route {value!r} must not contain '.' or '..' segments")
    return value.rstrip("/") or "/"


def parse_method(value: str) -> str:
    """Return the HTTP method ``value`` in upper case (input is case-insensitive)."""
    method = value.upper()
    if method not in schema.HTTP_METHODS:
        raise ValueError(
            f"unknown HTTP method {value!r}; expected one of {', '.join(schema.HTTP_METHODS)}"
        )
    return method


def parse_scope_rule(value: str) -> tuple[str, str]:
    """Split a ``scope_map`` rule ``"METHOD /path/pattern"`` into (METHOD, pattern)."""
    method, _, pattern = value.strip().partition(" ")
    pattern = pattern.strip()
    if (
        method.upper() not in schema.HTTP_METHODS
        or not pattern.startswith("/")
        or any(c.isspace() for c in pattern)
    ):
        raise ValueError(f"expected 'METHOD /path' (e.g. 'GET /api/items/**'), got {value!r}")
    return method.upper(), pattern


def parse_redirect_uri(value: str) -> str:
    """Check a browser-facing URL of the login (redirect_uri, post_logout_redirect_uri):
    https, or plain http only to a loopback host (a development machine); no user info or
    fragment (RFC 6749 §3.1.2). Returns the URL; raises ``ValueError``."""
    return _checked_url(value, "must be https (plain http only on loopback): a code or a "
                               "session cookie sent in clear text is stolen")


def parse_key_url(value: str) -> str:
    """Check a URL keys are fetched from (jwks_uri, or an issuer for OIDC discovery).

    https, or plain http only to a loopback host (an identity provider on the same machine):
    keys fetched in clear text could be swapped by anyone on the path. No user info or
    fragment. Returns the URL; raises ``ValueError``.
    """
    return _checked_url(value, "keys must be fetched over https (plain http only on loopback)")


def _checked_url(value: str, plain_http: str) -> str:
    """An absolute https URL (http to loopback only; ``plain_http`` says why otherwise)
    without whitespace, user info or fragment, with a valid port."""
    if any(ch.isspace() or ord(ch) < 0x20 or ord(ch) == 0x7F for ch in value):
        raise ValueError(f"invalid URL {value!r}: contains whitespace")
    parts = urlsplit(value)
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise ValueError(f"invalid URL {value!r}: expected https://host/path")
    if "@" in parts.netloc or parts.fragment:
        raise ValueError(f"URL {value!r}: user info and fragments are not allowed")
    try:
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError:
        raise ValueError(f"invalid port in {value!r}") from None
    if parts.scheme == "http" and not is_loopback(parts.hostname):
        raise ValueError(f"URL {value!r}: {plain_http}")
    return value


def is_loopback(host: str) -> bool:
    """True for ``localhost``, 127.0.0.0/8, ``::1`` (and ``::ffff:127.x.x.x``)."""
    if host.lower() == "localhost":
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback


def check_scope(scope: str) -> str:
    """A scope token (RFC 6749 §3.3: no spaces, quotes or backslashes); ValueError if not."""
    if not _SCOPE.fullmatch(scope):
        raise ValueError(
            f"invalid scope {scope!r}: a scope is 1-128 printable characters without "
            "spaces, '\"' or '\\'"
        )
    return scope


def is_header_name(name: str) -> bool:
    """True for an RFC 9110 token, which header and cookie names are."""
    return bool(_TOKEN.fullmatch(name))


def is_query_name(name: str) -> bool:
    """True for a query parameter name that needs no percent-encoding."""
    return bool(_QUERY_NAME.fullmatch(name))


def is_reserved_header(name: str) -> bool:
    """True for a header HTTP or the gateway itself relies on (framing, hop-by-hop,
    X-Forwarded-*, X-FluxGate-*): a config may neither drop nor write it."""
    lower = name.lower()
    return lower in RESERVED_CLAIM_HEADERS or lower.startswith("x-fluxgate-")


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """``" (did you mean 'x'?)"`` for a near miss among ``choices``, else ``""``."""
    close = difflib.get_close_matches(word, list(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def format_path(path: Path) -> str:
    """Spell a key path as a user reads it: ``routes[2].middleware[0].ip_allow[1]``."""
    out: list[str] = []
    for part in path:
        if isinstance(part, int):
            out.append(f"[{part}]")
        elif re.fullmatch(r"[A-Za-z_][A-Za-z0-9_-]*", part):
            out.append(f".{part}" if out else part)
        else:  # upstream names and scopes may hold ':' or '.'; quote them
            out.append(f"[{_quote(part)}]")
    return "".join(out)


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _split_host_port(value: str, *, default_port: int | None, min_port: int) -> tuple[str, int]:
    """Parse ``host:port`` / ``[v6]:port`` (port optional when ``default_port`` is set)."""
    if value.startswith("["):
        end = value.find("]")
        if end < 0:
            raise ValueError(f"invalid address {value!r}: missing ']'")
        host, rest = value[1:end], value[end + 1 :]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"invalid IPv6 address {host!r} in {value!r}") from None
        if rest and not rest.startswith(":"):
            raise ValueError(f"invalid address {value!r}: expected ':port' after ']'")
        port_text = rest[1:] if rest else None
    else:
        if value.count(":") > 1:
            raise ValueError(
                f"invalid address {value!r}: write IPv6 addresses in brackets, e.g. [::1]:8080"
            )
        host, sep, port_text_or_host = value.partition(":")
        port_text = port_text_or_host if sep else None
        _check_host(host, value)
    if port_text is None:
        if default_port is None:
            raise ValueError(f"invalid address {value!r}: expected host:port")
        return host, default_port
    if not _PORT.fullmatch(port_text) or not min_port <= int(port_text) <= 65535:
        raise ValueError(f"invalid port {port_text!r} in {value!r}: expected {min_port}-65535")
    return host, int(port_text)


def _check_host(host: str, value: str) -> None:
    """Refuse an empty host, a malformed IPv4 address and a malformed host name."""
    if not host:
        raise ValueError(
            f"invalid address {value!r}: the host is missing (0.0.0.0 listens on every interface)"
        )
    labels = host.rstrip(".").split(".")
    if all(label.isdigit() for label in labels):
        # All-numeric is an IPv4 address or nothing ("999.1.1.1" is not a host name).
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            raise ValueError(f"invalid IPv4 address {host!r} in {value!r}") from None
        return
    if len(host) > 253 or not all(_LABEL.fullmatch(label) for label in labels):
        raise ValueError(f"invalid host name {host!r} in {value!r}")
