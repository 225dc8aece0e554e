"""What every console request goes through: the Host and Origin checks, the session cookie,
the CSRF token, and the security headers and escaping of every answer.

The console is served on the admin listener, which binds loopback only. A browser still sends
requests there on behalf of any page it shows, so:

* the Host must name loopback (``localhost``, ``127.0.0.0/8``, ``::1``): a DNS-rebinding page
  reaches the listener under its own host name and is refused;
* a state-changing call (any method but GET and HEAD) must carry an ``Origin`` equal to the
  console's own (``http://`` + Host) and, from a signed-in page, the session's CSRF token in
  ``X-CSRF-Token``: a page on another port of the same host is same-site for cookies, so
  ``SameSite=Strict`` alone would not stop it;
* answers carry a strict Content-Security-Policy (scripts only from the console itself, no
  inline script), forbid framing and sniffing, and JSON has ``<``, ``>`` and ``&`` escaped.
"""

from __future__ import annotations

import hmac
import ipaddress
from urllib.parse import urlsplit

import orjson

from fluxgate.master.admin import AdminRequest, AdminResponse

COOKIE = "fluxgate_console"
CSRF_HEADER = "x-csrf-token"
SAFE_METHODS = ("GET", "HEAD")

CSP = (
    b"default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    b"connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
SECURITY_HEADERS: tuple[tuple[bytes, bytes], ...] = (
    (b"Content-Security-Policy", CSP),
    (b"X-Content-Type-Options", b"nosniff"),
    (b"X-Frame-Options", b"DENY"),
    # Not no-referrer: under that policy chromium sends "Origin: null" with the sign-in form,
    # which the Origin check must refuse. same-origin keeps referrers inside the console.
    (b"Referrer-Policy", b"same-origin"),
    (b"Cross-Origin-Opener-Policy", b"same-origin"),
    (b"Cross-Origin-Resource-Policy", b"same-origin"),
)


def json_body(payload: object) -> bytes:
    """JSON with ``<``, ``>`` and ``&`` as ``\\u`` escapes: inert even if something ever
    rendered it as HTML. They occur only inside strings in JSON, so the text stays valid."""
    return (orjson.dumps(payload).replace(b"<", b"\\u003c").replace(b">", b"\\u003e")
            .replace(b"&", b"\\u0026"))


def json_response(status: int, payload: object,
                  headers: tuple[tuple[bytes, bytes], ...] = ()) -> AdminResponse:
    """A console JSON answer with the security headers."""
    return AdminResponse(status, json_body(payload), b"application/json",
                         SECURITY_HEADERS + headers)


def json_error(status: int, code: str, description: str) -> AdminResponse:
    """A console API refusal, shaped like every other FluxGate error body."""
    return json_response(status, {"error": code, "error_description": description})


def page_response(status: int, body: bytes, content_type: bytes = b"text/html; charset=utf-8",
                  headers: tuple[tuple[bytes, bytes], ...] = ()) -> AdminResponse:
    """A page or static asset with the security headers."""
    return AdminResponse(status, body, content_type, SECURITY_HEADERS + headers)


def is_loopback_host(host: str | None) -> bool:
    """True when a Host header names loopback (``localhost``, 127.0.0.0/8, ``::1``)."""
    if not host:
        return False
    try:
        parts = urlsplit("//" + host)
        name, _port = parts.hostname, parts.port  # .port raises on a malformed port
    except ValueError:
        return False
    if name is None or parts.username is not None or parts.path or parts.query:
        return False
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def console_origin(req: AdminRequest, *, secure: bool = False) -> str:
    """The console's own origin as the browser names it (scheme + Host)."""
    return ("https://" if secure else "http://") + req.headers.get("host", "").lower()


def same_origin(req: AdminRequest, *, secure: bool = False) -> bool:
    """True when the request's Origin is the console's own. Fetch metadata, when the
    browser sends it, must agree."""
    origin = req.headers.get("origin")
    if origin is None or not hmac.compare_digest(origin.lower().encode(),
                                                 console_origin(req, secure=secure).encode()):
        return False
    site = req.headers.get("sec-fetch-site")
    return site is None or site == "same-origin"


def cookie_values(req: AdminRequest, name: str = COOKIE) -> list[str]:
    """Every value of cookie ``name`` in the request (a browser may send several)."""
    values = []
    for part in req.headers.get("cookie", "").split(";"):
        key, sep, value = part.strip().partition("=")
        if sep and key == name:
            values.append(value.strip().strip('"'))
    return values


def csrf_matches(req: AdminRequest, expected: str) -> bool:
    """The X-CSRF-Token header equals the session's token (constant time)."""
    sent = req.headers.get(CSRF_HEADER, "")
    return hmac.compare_digest(sent.encode("latin-1", "replace"), expected.encode())


def session_cookie(value: str, *, secure: bool = False, max_age: int | None = None) -> bytes:
    """The Set-Cookie value of the console session (``max_age=0`` clears it)."""
    parts = [f"{COOKIE}={value}", "Path=/console", "HttpOnly", "SameSite=Strict"]
    if max_age is not None:
        parts.append(f"Max-Age={max_age}")
    if secure:
        parts.append("Secure")
    return "; ".join(parts).encode()
