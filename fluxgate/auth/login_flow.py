"""The pieces of the browser login (OAuth 2.0 authorization code flow with PKCE, OpenID
Connect) that the worker and the master share: PKCE, cookies, return paths, pages.

Nothing here does I/O. The flow itself: the worker's ``middleware/oauth2_login.py``
(redirects, the session cookie, the gateway's endpoints) and the master's
``master/login.py`` (discovery, the token endpoint, ID tokens, the session store).
"""

from __future__ import annotations

import base64
import hashlib
import html
import secrets
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from fluxgate.errors import LocalReply

if TYPE_CHECKING:
    from fluxgate.config import schema

# The transaction cookie of one login in progress: the prefix, then a short digest of the
# login's state, so several logins (tabs) can be in progress at once.
TRANSACTION_COOKIE_PREFIX = "__Host-fluxgate-tx-"
TRANSACTION_TTL = 600  # seconds a login may take at the authorization server
SAFE_METHODS = frozenset({b"GET", b"HEAD", b"OPTIONS"})


def b64url(raw: bytes) -> str:
    """Unpadded base64url (RFC 7636 Appendix A)."""
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def random_value(nbytes: int = 32) -> str:
    """A random base64url value with ``nbytes`` of entropy (state, nonce, verifier)."""
    return b64url(secrets.token_bytes(nbytes))


def pkce_challenge(verifier: str) -> str:
    """The S256 code challenge of ``verifier`` (RFC 7636 §4.2)."""
    return b64url(hashlib.sha256(verifier.encode("ascii")).digest())


def transaction_cookie_name(state: str) -> str:
    """The cookie that binds one login's ``state`` to the browser that started it."""
    return TRANSACTION_COOKIE_PREFIX + hashlib.sha256(state.encode()).hexdigest()[:12]


def origin_of(url: str) -> str:
    """``scheme://host[:port]`` of an absolute URL, lower-cased (the default port dropped)."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").lower()
    if ":" in host:
        host = f"[{host}]"
    port = parts.port
    if port is None or (scheme, port) in (("http", 80), ("https", 443)):
        return f"{scheme}://{host}"
    return f"{scheme}://{host}:{port}"


def safe_return_to(target: str, allowed_origins: frozenset[str]) -> str | None:
    """Where the browser may go after login: a path of this site, or an absolute http(s)
    URL whose origin is allow-listed; None for anything else (no open redirect)."""
    if not target or len(target) > 2048:
        return None
    if any(c < " " or c == "\\" or c == "\x7f" for c in target):
        return None  # browsers read "\\" as "/" and drop tabs and newlines
    if target.startswith("/"):
        # "//evil.example" and "/\\evil.example" are other hosts to a browser.
        return target if not target.startswith("//") else None
    try:
        parts = urlsplit(target)
        origin = origin_of(target)
    except ValueError:
        return None
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname or parts.username:
        return None
    return target if origin in allowed_origins else None


def cookie_values(headers: list[tuple[bytes, bytes]], wanted: frozenset[str] | None = None,
                  prefix: str | None = None) -> dict[str, str]:
    """Cookies of the request's ``Cookie`` headers whose names are in ``wanted`` or start
    with ``prefix``; a name sent twice keeps its first value (RFC 6265 §5.4 order)."""
    found: dict[str, str] = {}
    for name, value in headers:
        if len(name) != 6 or name.lower() != b"cookie":
            continue
        for pair in value.decode("latin-1").split(";"):
            key, sep, val = pair.strip().partition("=")
            if not sep:
                continue
            if (wanted is not None and key in wanted) or (prefix is not None
                                                          and key.startswith(prefix)):
                found.setdefault(key, val.strip())
    return found


def without_cookies(value: bytes, names: frozenset[bytes], prefix: bytes) -> bytes | None:
    """A ``Cookie`` header value without the gateway's own cookies (None: nothing left)."""
    kept = []
    for pair in value.split(b";"):
        key = pair.strip().partition(b"=")[0]
        if key in names or key.startswith(prefix):
            continue
        if pair.strip():
            kept.append(pair.strip())
    return b"; ".join(kept) if kept else None


def set_cookie(name: str, value: str, max_age: int) -> tuple[bytes, bytes]:
    """A ``__Host-`` cookie: Secure, HttpOnly, SameSite=Lax, Path=/, no Domain."""
    return (b"Set-Cookie", f"{name}={value}; Path=/; Max-Age={max(0, int(max_age))}; "
                          f"Secure; HttpOnly; SameSite=Lax".encode("latin-1"))


def clear_cookie(name: str) -> tuple[bytes, bytes]:
    """Delete a cookie set by ``set_cookie``."""
    return set_cookie(name, "", 0)


_PAGE_HEADERS = (
    (b"Cache-Control", b"no-store"),
    (b"Referrer-Policy", b"no-referrer"),
    (b"Content-Security-Policy", b"default-src 'none'; style-src 'unsafe-inline'"),
    (b"X-Content-Type-Options", b"nosniff"),
)


def redirect(location: str, *, status: int = 302, cookies: tuple[tuple[bytes, bytes], ...] = (),
             code: str = "login_redirect") -> LocalReply:
    """A redirect of the login flow; never cached, never leaking the URL as a referrer."""
    body = page_html("Redirecting", f"Continue to {location}", link=location)
    return LocalReply(status, code, body,
                      headers=((b"Location", location.encode("latin-1")), *cookies,
                               *_PAGE_HEADERS))


def page(status: int, code: str, title: str, message: str, *, link: str | None = None,
         cookies: tuple[tuple[bytes, bytes], ...] = ()) -> LocalReply:
    """A small HTML page saying what went wrong and what to do (never a loop)."""
    return LocalReply(status, code, page_html(title, message, link=link),
                      headers=(*cookies, *_PAGE_HEADERS))


def page_html(title: str, message: str, *, link: str | None = None) -> bytes:
    """The page's bytes; every value is escaped."""
    anchor = ""
    if link is not None:
        anchor = f'<p><a href="{html.escape(link, quote=True)}">Continue</a></p>'
    return (
        "<!doctype html><html><head><meta charset=\"utf-8\">"
        f"<title>{html.escape(title)}</title>"
        "<style>body{font-family:system-ui,sans-serif;max-width:40em;margin:4em auto;"
        "padding:0 1em;color:#222}</style></head><body>"
        f"<h1>{html.escape(title)}</h1><p>{html.escape(message)}</p>{anchor}</body></html>"
    ).encode()


def wants_redirect(method: bytes, headers: list[tuple[bytes, bytes]], path: bytes,
                   api_paths: tuple[bytes, ...]) -> bool:
    """Is this a browser navigation (send it to the login page) rather than a script or
    an API call (answer 401)? Only a GET or HEAD that asks for HTML is."""
    if method not in (b"GET", b"HEAD"):
        return False
    for prefix in api_paths:
        if path == prefix or path.startswith(prefix.rstrip(b"/") + b"/"):
            return False
    accept = b""
    for name, value in headers:
        lower = name.lower()
        if lower == b"x-requested-with":
            return False
        if lower == b"sec-fetch-mode" and value.strip().lower() not in (b"navigate",
                                                                         b"nested-navigate"):
            return False
        if lower == b"accept":
            accept += value.lower() + b","
    if not accept:
        return True  # a bare client asking for a page, e.g. a link followed by a tool
    return b"text/html" in accept or b"*/*" in accept and b"application/json" not in accept


def login_source(config: schema.OAuth2) -> str:
    """What identifies one login provider: the server, the client and the callback."""
    return f"login:{config.issuer}#{config.client_id}#{config.redirect_uri}"
