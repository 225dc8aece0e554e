"""The browser-login part of ``fluxgate demo``: a small OpenID Provider on 127.0.0.1 and an
``/app`` route whose browsers sign in there (``oauth2`` with ``login: true``).

The provider knows one client (the gateway) and one user (``demo``, with a password made
at each start and printed by the demo). It does what the gateway's login needs and checks
what a real provider checks:

* discovery (``/.well-known/openid-configuration``) and the JWKS of an RSA key made at each
  start (ID tokens are RS256);
* the authorization endpoint: only the registered ``redirect_uri`` (anything else gets an
  error page, never a redirect), ``response_type=code``, PKCE S256 required; a plain HTML
  sign-in form whose hidden field is a random, single-use id of the pending request, so a
  form cannot be posted without first being shown; the answer carries ``code``, ``state``
  and the RFC 9207 ``iss``;
* the token endpoint (``client_secret_basic``): ``authorization_code`` (the code is single
  use, spent by its first presentation whatever the outcome, lives a minute, and only
  answers to the verifier of its challenge and the same ``redirect_uri``; presented again,
  it also revokes the refresh token it was exchanged for), and
  ``refresh_token`` with rotation: each refresh returns a new refresh token, and an old one
  presented again is ``invalid_grant`` and ends the sign-in it belongs to (OAuth 2.0
  Security BCP, refresh token replay);
* RP-initiated logout (``end_session_endpoint``: to a registered
  ``post_logout_redirect_uri`` only) and RFC 7009 revocation.

Access tokens last two minutes, so a page reloaded after a minute and a half shows the
gateway refreshing in the log. Each step is one log line; codes and tokens are never
logged (a sign-in is named by the first characters of its ``sid``). Everything lives in
the memory of the process that serves it (the echo upstream's child) and dies with the demo.
"""

from __future__ import annotations

import hashlib
import html
import http.server
import logging
import re
import secrets
import threading
import time
import urllib.parse
from dataclasses import dataclass
from typing import Any

import orjson
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from fluxgate._core import b64url_decode
from fluxgate.cli.demo_http import JsonHandler, basic_credentials, serve_in_thread
from fluxgate.cli.jws import b64, compact, public_jwk, thumbprint
from fluxgate.echo import bind_loopback

CLIENT_ID = "fluxgate-demo-web"  # the gateway, as the provider's one client
USERNAME = "demo"
SUBJECT = "demo-user"  # the ID token's sub: what the upstream sees as X-FluxGate-Subject
DISPLAY_NAME = "Demo User"
SCOPES = ("openid", "profile")
ROUTE = "/app"

DISCOVERY_PATH = "/.well-known/openid-configuration"
AUTHORIZE_PATH = "/authorize"
TOKEN_PATH = "/token"
JWKS_PATH = "/jwks"
END_SESSION_PATH = "/logout"
REVOCATION_PATH = "/revoke"

ACCESS_TOKEN_SECONDS = 120
ID_TOKEN_SECONDS = 300
CODE_SECONDS = 60
FORM_SECONDS = 600
REFRESH_TOKEN_SECONDS = 8 * 3600
MAX_FORMS = 256  # sign-in forms shown and not yet posted; the oldest goes first
MAX_BODY = 16384

# RFC 7636 §4.1 (verifier: 43-128 unreserved characters) and §4.2 (an S256 challenge is
# the base64url of a SHA-256 digest: 43 characters).
VERIFIER = re.compile(r"[A-Za-z0-9._~-]{43,128}")
S256_CHALLENGE = re.compile(r"[A-Za-z0-9_-]{43}")

# The pages load nothing but their inline style (and an empty icon, so the browser does not
# ask for /favicon.ico); no page of the provider may be framed (clickjacking the form).
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; img-src data:; "
                               "frame-ancestors 'none'; base-uri 'none'",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
}
NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}  # RFC 6749 §5.1

log = logging.getLogger("fluxgate.demo")


class OAuthError(Exception):
    """An OAuth error answer (RFC 6749 §5.2): ``error`` code, ``description``, HTTP status."""

    def __init__(self, error: str, description: str, status: int = 400) -> None:
        super().__init__(description)
        self.error = error
        self.status = status


class Unredirectable(Exception):
    """An authorization request that must not be redirected anywhere (unknown client or
    redirect_uri, RFC 6749 §4.1.2.1): the browser gets an error page instead."""


@dataclass(frozen=True)
class AuthorizationRequest:
    """A checked authorization request, waiting for the user to sign in."""

    redirect_uri: str
    state: str | None
    nonce: str | None
    code_challenge: str
    scope: str


@dataclass(frozen=True)
class CodeGrant:
    """What an authorization code stands for, kept under the code's digest."""

    request: AuthorizationRequest
    sid: str
    auth_time: int
    expires_at: float


@dataclass(frozen=True)
class RefreshGrant:
    """What a refresh token stands for, kept under the token's digest."""

    sid: str
    scope: str
    auth_time: int
    expires_at: float


def digest(secret: str) -> bytes:
    """The key codes and tokens are kept under: the provider never keeps their text."""
    return hashlib.sha256(secret.encode("utf-8", "replace")).digest()


def s256(verifier: str) -> str:
    """The RFC 7636 §4.2 S256 challenge of ``verifier``."""
    return b64(hashlib.sha256(verifier.encode("ascii")).digest())


def single_values(query: str) -> dict[str, str]:
    """Form or query parameters, one value each; a repeated one is ``invalid_request``
    (RFC 6749 §3.1: "Request and response parameters MUST NOT be included more than
    once")."""
    found: dict[str, str] = {}
    for name, value in urllib.parse.parse_qsl(query, keep_blank_values=True):
        if name in found:
            raise OAuthError("invalid_request", f"the parameter {name} is repeated")
        found[name] = value
    return found


def with_query(uri: str, params: dict[str, str | None]) -> str:
    """``uri`` with ``params`` (the ones that are not None) added to its query."""
    query = urllib.parse.urlencode({k: v for k, v in params.items() if v is not None})
    return uri + ("&" if "?" in uri else "?") + query


class DemoOpenIdProvider:
    """The demo's OpenID Provider: its key, client, user, and what is pending or issued."""

    def __init__(self, gateway_port: int, access_token_seconds: int = ACCESS_TOKEN_SECONDS
                 ) -> None:
        self.sock = bind_loopback()
        self.access_token_seconds = access_token_seconds
        self.issuer = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.client_secret = secrets.token_urlsafe(32)
        self.password = secrets.token_urlsafe(9)  # 12 characters, typed by a person
        # localhost, not 127.0.0.1, in what the browser is sent to: Chromium and Firefox
        # both keep the session's Secure __Host- cookie on http://localhost.
        gateway = f"http://localhost:{gateway_port}"
        self.app_url = f"{gateway}{ROUTE}/"
        self.logout_url = f"{gateway}/.fluxgate/logout"  # the gateway's default logout_path
        self.redirect_uri = f"{gateway}/oauth2/callback"
        self.post_logout_redirect_uri = self.app_url  # signed out: /app asks to sign in again
        self.key = rsa.generate_private_key(65537, 2048)
        self.jwk = public_jwk(self.key.public_key())
        self.kid = thumbprint(self.jwk)
        self._lock = threading.Lock()
        self._forms: dict[str, tuple[AuthorizationRequest, float]] = {}
        self._codes: dict[bytes, CodeGrant] = {}
        # Codes already presented: digest -> (their sign-in, when to forget them).
        self._spent_codes: dict[bytes, tuple[str, float]] = {}
        self._refresh: dict[bytes, RefreshGrant] = {}
        self._rotated: dict[bytes, RefreshGrant] = {}  # replaced refresh tokens

    # ---- what is published ------------------------------------------------------------------

    def metadata(self) -> dict[str, Any]:
        """The OpenID Connect Discovery document."""
        return {
            "issuer": self.issuer,
            "authorization_endpoint": self.issuer + AUTHORIZE_PATH,
            "token_endpoint": self.issuer + TOKEN_PATH,
            "jwks_uri": self.issuer + JWKS_PATH,
            "end_session_endpoint": self.issuer + END_SESSION_PATH,
            "revocation_endpoint": self.issuer + REVOCATION_PATH,
            "response_types_supported": ["code"],
            "grant_types_supported": ["authorization_code", "refresh_token"],
            "subject_types_supported": ["public"],
            "scopes_supported": list(SCOPES),
            "claims_supported": ["iss", "sub", "aud", "exp", "iat", "auth_time", "nonce",
                                 "sid", "name", "preferred_username"],
            "code_challenge_methods_supported": ["S256"],
            "authorization_response_iss_parameter_supported": True,
            "id_token_signing_alg_values_supported": ["RS256"],
            "token_endpoint_auth_methods_supported": ["client_secret_basic"],
            "revocation_endpoint_auth_methods_supported": ["client_secret_basic"],
        }

    def jwks(self) -> dict[str, Any]:
        return {"keys": [{**self.jwk, "kid": self.kid, "use": "sig", "alg": "RS256"}]}

    # ---- the authorization endpoint -----------------------------------------------------------

    def authorization_request(self, params: dict[str, str]) -> AuthorizationRequest:
        """Check an authorization request (RFC 6749 §4.1.1, RFC 7636 §4.3, OIDC Core
        §3.1.2.1). Raises Unredirectable for a wrong client or redirect_uri, OAuthError for
        what may be answered at the redirect_uri."""
        if params.get("client_id") != CLIENT_ID:
            raise Unredirectable("This application is not registered here.")
        if params.get("redirect_uri") != self.redirect_uri:
            raise Unredirectable("This redirect_uri is not registered for the application.")
        if params.get("response_type") != "code":
            raise OAuthError("unsupported_response_type", "only response_type=code")
        scopes = (params.get("scope") or "").split()
        if "openid" not in scopes:
            raise OAuthError("invalid_scope", "openid is required")
        unknown = [s for s in scopes if s not in SCOPES]
        if unknown:
            raise OAuthError("invalid_scope", f"unknown scope {unknown[0]}")
        if params.get("code_challenge_method") != "S256" or not S256_CHALLENGE.fullmatch(
                params.get("code_challenge") or ""):
            raise OAuthError("invalid_request", "PKCE with code_challenge_method=S256 is required")
        return AuthorizationRequest(self.redirect_uri, params.get("state"), params.get("nonce"),
                                    params["code_challenge"], " ".join(dict.fromkeys(scopes)))

    def error_redirect(self, params: dict[str, str], error: OAuthError) -> str:
        """RFC 6749 §4.1.2.1: the error, the state and (RFC 9207) the issuer, at the
        registered redirect_uri."""
        return with_query(self.redirect_uri, {"error": error.error,
                                              "error_description": str(error),
                                              "state": params.get("state"), "iss": self.issuer})

    def open_form(self, request: AuthorizationRequest) -> str:
        """Keep ``request`` under a new random form id, which the sign-in form posts back."""
        form_id = secrets.token_urlsafe(32)
        now = time.monotonic()
        with self._lock:
            self._forms = {k: v for k, v in self._forms.items() if v[1] > now}
            while len(self._forms) >= MAX_FORMS:
                del self._forms[next(iter(self._forms))]
            self._forms[form_id] = (request, now + FORM_SECONDS)
        return form_id

    def sign_in(self, form: dict[str, str]) -> tuple[str | None, str | None]:
        """A posted sign-in form: ``(redirect location, None)`` when the user signed in, or
        ``(None, a new form id)`` for a wrong user or password (the form is shown again).
        Raises Unredirectable for a form id that was never shown, expired or was used."""
        with self._lock:
            pending = self._forms.pop(form.get("form", ""), None)
        if pending is None or pending[1] < time.monotonic():
            raise Unredirectable("This sign-in form has expired or was already used. "
                                 "Go back to the application and start again.")
        request = pending[0]
        # Both compared whatever the first gives, in constant time.
        same_user = secrets.compare_digest(form.get("username", "").encode(), USERNAME.encode())
        same_password = secrets.compare_digest(form.get("password", "").encode(),
                                               self.password.encode())
        if not (same_user and same_password):
            log.info("demo OpenID Provider: sign-in refused (wrong user or password)")
            return None, self.open_form(request)
        sid = secrets.token_urlsafe(16)
        code = secrets.token_urlsafe(32)
        with self._lock:
            self._codes[digest(code)] = CodeGrant(request, sid, int(time.time()),
                                                  time.monotonic() + CODE_SECONDS)
        log.info("demo OpenID Provider: %s signed in (sid %s…); code sent to %s", USERNAME,
                 sid[:6], request.redirect_uri)
        return with_query(request.redirect_uri, {"code": code, "state": request.state,
                                                 "iss": self.issuer}), None

    # ---- the token endpoint -------------------------------------------------------------------

    def client_authenticated(self, authorization: str | None) -> bool:
        """True for HTTP Basic with the gateway's client id and secret."""
        credentials = basic_credentials(authorization)
        if credentials is None:
            return False
        same_id = secrets.compare_digest(credentials[0].encode(), CLIENT_ID.encode())
        same_secret = secrets.compare_digest(credentials[1].encode(), self.client_secret.encode())
        return same_id and same_secret

    def token(self, form: dict[str, str]) -> dict[str, Any]:
        """A token request of the authenticated client; the RFC 6749 §5.1 answer, or
        OAuthError."""
        grant_type = form.get("grant_type")
        if grant_type == "authorization_code":
            return self._exchange_code(form)
        if grant_type == "refresh_token":
            return self._refresh_tokens(form)
        raise OAuthError("unsupported_grant_type", "authorization_code or refresh_token")

    def _exchange_code(self, form: dict[str, str]) -> dict[str, Any]:
        code_digest = digest(form.get("code", ""))
        now = time.monotonic()
        with self._lock:
            # Spent by its first presentation, right or wrong (RFC 6749 §4.1.2: single use).
            grant = self._codes.pop(code_digest, None)
            self._spent_codes = {k: v for k, v in self._spent_codes.items() if v[1] > now}
            spent = self._spent_codes.get(code_digest)
            if grant is not None:
                self._spent_codes[code_digest] = (grant.sid, now + FORM_SECONDS)
            elif spent is not None:
                # RFC 6749 §4.1.2: a code used twice revokes what it was exchanged for.
                self._end_sid(spent[0])
        if grant is None:
            if spent is not None:
                log.warning("demo OpenID Provider: code refused (already used); sign-in "
                            "sid %s… ended", spent[0][:6])
            else:
                log.info("demo OpenID Provider: code refused (unknown)")
            raise OAuthError("invalid_grant", "the code is unknown, expired or already used")
        if grant.expires_at < now:
            log.info("demo OpenID Provider: code refused (expired)")
            raise OAuthError("invalid_grant", "the code has expired")
        if form.get("redirect_uri") != grant.request.redirect_uri:
            log.info("demo OpenID Provider: code refused (another redirect_uri)")
            raise OAuthError("invalid_grant", "redirect_uri differs from the authorization's")
        verifier = form.get("code_verifier", "")
        if not VERIFIER.fullmatch(verifier) or not secrets.compare_digest(
                s256(verifier).encode(), grant.request.code_challenge.encode()):
            log.info("demo OpenID Provider: code refused (wrong PKCE verifier)")
            raise OAuthError("invalid_grant", "the code_verifier does not match the challenge")
        tokens = self._issue(grant.sid, grant.request.scope, grant.auth_time)
        tokens["id_token"] = self.id_token(grant.sid, grant.request.nonce, grant.auth_time)
        log.info("demo OpenID Provider: code exchanged (sid %s…): ID token, access token "
                 "(%d s), refresh token", grant.sid[:6], self.access_token_seconds)
        return tokens

    def _refresh_tokens(self, form: dict[str, str]) -> dict[str, Any]:
        token_digest = digest(form.get("refresh_token", ""))
        asked = form.get("scope", "").split()
        now = time.monotonic()
        rotated = False
        with self._lock:
            grant = self._refresh.get(token_digest)
            replayed = self._rotated.get(token_digest) if grant is None else None
            if replayed is not None:
                # A replaced token presented again: a copy is in someone else's hands. The
                # whole sign-in ends, its current refresh token too.
                self._end_sid(replayed.sid)
            elif grant is not None and grant.expires_at > now and all(
                    s in grant.scope.split() for s in asked):
                # Rotation: this token is spent now, in the same step that read it.
                del self._refresh[token_digest]
                self._rotated[token_digest] = grant
                rotated = True
        if replayed is not None:
            log.warning("demo OpenID Provider: refresh refused (a replaced refresh token was "
                        "presented again); sign-in sid %s… ended", replayed.sid[:6])
            raise OAuthError("invalid_grant", "this refresh token was already used")
        if grant is None or grant.expires_at <= now:
            log.info("demo OpenID Provider: refresh refused (unknown or expired refresh token)")
            raise OAuthError("invalid_grant", "the refresh token is unknown or expired")
        if not rotated:  # the token stays good for a request within its scope
            raise OAuthError("invalid_scope", "more scope than was granted")
        tokens = self._issue(grant.sid, " ".join(asked) or grant.scope, grant.auth_time)
        log.info("demo OpenID Provider: refreshed (sid %s…): new access token (%d s), "
                 "refresh token rotated", grant.sid[:6], self.access_token_seconds)
        return tokens

    def _issue(self, sid: str, scope: str, auth_time: int) -> dict[str, Any]:
        """A new access token and refresh token for the sign-in ``sid``."""
        refresh_token = secrets.token_urlsafe(32)
        now = time.monotonic()
        with self._lock:
            self._rotated = {k: g for k, g in self._rotated.items() if g.expires_at > now}
            self._refresh[digest(refresh_token)] = RefreshGrant(
                sid, scope, auth_time, now + REFRESH_TOKEN_SECONDS)
        return {"access_token": secrets.token_urlsafe(32), "token_type": "Bearer",
                "expires_in": self.access_token_seconds, "refresh_token": refresh_token,
                "scope": scope}

    def id_token(self, sid: str, nonce: str | None, auth_time: int) -> str:
        """An RS256 ID token for the demo user (OIDC Core §2)."""
        now = int(time.time())
        claims: dict[str, Any] = {"iss": self.issuer, "sub": SUBJECT, "aud": CLIENT_ID,
                                  "exp": now + ID_TOKEN_SECONDS, "iat": now,
                                  "auth_time": auth_time, "sid": sid, "name": DISPLAY_NAME,
                                  "preferred_username": USERNAME}
        if nonce is not None:
            claims["nonce"] = nonce
        return compact({"alg": "RS256", "typ": "JWT", "kid": self.kid}, claims, self.key,
                       "RS256")

    def _end_sid(self, sid: str) -> int:
        """Forget every refresh token of the sign-in ``sid`` (the lock is held)."""
        ended = [k for k, g in self._refresh.items() if g.sid == sid]
        for key in ended:
            del self._refresh[key]
        return len(ended)

    # ---- logout and revocation ----------------------------------------------------------------

    def id_token_claims(self, token: str) -> dict[str, Any] | None:
        """The claims of an ID token this provider signed (an expired one too: OIDC
        RP-Initiated Logout §2 lets an id_token_hint be expired), else None."""
        pieces = token.split(".")
        if len(pieces) != 3:
            return None
        try:
            header = orjson.loads(b64url_decode(pieces[0].encode()))
            claims = orjson.loads(b64url_decode(pieces[1].encode()))
            if not isinstance(header, dict) or header.get("alg") != "RS256":
                return None
            self.key.public_key().verify(b64url_decode(pieces[2].encode()),
                                         f"{pieces[0]}.{pieces[1]}".encode(),
                                         padding.PKCS1v15(), hashes.SHA256())
        except (ValueError, InvalidSignature, orjson.JSONDecodeError):
            return None
        if not isinstance(claims, dict) or claims.get("iss") != self.issuer:
            return None
        return claims

    def end_session(self, params: dict[str, str]) -> str | None:
        """RP-initiated logout: the sign-in named by ``id_token_hint`` ends; the answer is
        where to send the browser (the registered post_logout_redirect_uri with ``state``),
        or None to show a "signed out" page. Raises Unredirectable for a
        post_logout_redirect_uri that is not registered."""
        hint = params.get("id_token_hint")
        claims = self.id_token_claims(hint) if hint else None
        if hint and (claims is None or claims.get("aud") != CLIENT_ID):
            raise Unredirectable("The id_token_hint was not issued by this provider.")
        client_id = params.get("client_id")
        if client_id is not None and client_id != CLIENT_ID:
            raise Unredirectable("This application is not registered here.")
        target = params.get("post_logout_redirect_uri")
        if target is not None and target != self.post_logout_redirect_uri:
            raise Unredirectable("This post_logout_redirect_uri is not registered.")
        if target is not None and claims is None and client_id is None:
            raise Unredirectable("A post_logout_redirect_uri needs id_token_hint or client_id.")
        sid = claims.get("sid") if claims else None
        if isinstance(sid, str):
            with self._lock:
                self._end_sid(sid)
            log.info("demo OpenID Provider: signed out (sid %s…)%s", sid[:6],
                     f"; back to {target}" if target else "")
        else:
            log.info("demo OpenID Provider: sign-out without a known sign-in")
        return with_query(target, {"state": params.get("state")}) if target else None

    def revoke(self, form: dict[str, str]) -> None:
        """RFC 7009: a refresh token of the client is forgotten (an access token, or a
        token this provider does not know, is answered the same: 200)."""
        with self._lock:
            grant = self._refresh.pop(digest(form.get("token", "")), None)
        if grant is not None:
            log.info("demo OpenID Provider: refresh token revoked (sid %s…)", grant.sid[:6])
        else:
            log.info("demo OpenID Provider: revocation of a token it does not hold")

    # ---- the demo config ------------------------------------------------------------------

    def route_yaml(self, upstream: str) -> str:
        """The demo config's ``/app`` route (an item of its `routes:` list)."""
        return (
            f"  - route: {ROUTE}                    # oauth2 login: browsers sign in at the "
            "demo's OpenID Provider\n"
            f"    upstream: {upstream}\n"
            "    middleware:\n"
            "      - oauth2:\n"
            "          login: true\n"
            f"          issuer: {self.issuer}\n"
            f"          client_id: {CLIENT_ID}\n"
            f'          client_secret: "{self.client_secret}"   # made at this start\n'
            f"          redirect_uri: {self.redirect_uri}\n"
            f"          post_logout_redirect_uri: {self.post_logout_redirect_uri}\n"
            f"          login_scopes: [{', '.join(SCOPES)}]\n"
            "      - quota: {limit: 600/m}        # per subject (fluxctl auth verify asks for one)\n"
        )

    # ---- HTTP -----------------------------------------------------------------------------

    def serve_in_thread(self) -> http.server.ThreadingHTTPServer:
        """Serve the provider from a daemon thread of the calling process (the echo
        upstream); returns the server."""
        return serve_in_thread(self.sock, _handler(self))


def _page(title: str, body: str) -> bytes:
    return (
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">"
        "<meta name=\"viewport\" content=\"width=device-width\">"
        "<link rel=\"icon\" href=\"data:,\">"
        f"<title>{html.escape(title)}</title><style>"
        "body{font-family:system-ui,sans-serif;max-width:26rem;margin:4rem auto;padding:0 1rem}"
        "label,input,button{display:block;width:100%;box-sizing:border-box;margin:.3rem 0}"
        "input,button{padding:.5rem;font-size:1rem}.error{color:#a00}small{color:#555}"
        f"</style></head><body><h1>{html.escape(title)}</h1>{body}</body></html>"
    ).encode()


def _sign_in_page(provider: DemoOpenIdProvider, form_id: str, error: str = "") -> bytes:
    target = urllib.parse.urlsplit(provider.redirect_uri)
    notice = f"<p class=\"error\" id=\"error\">{html.escape(error)}</p>" if error else ""
    return _page("Sign in", (
        f"<p><b>{html.escape(CLIENT_ID)}</b> at {html.escape(target.netloc)} asks you to sign "
        "in.</p>" + notice +
        f"<form method=\"post\" action=\"{AUTHORIZE_PATH}\">"
        f"<input type=\"hidden\" name=\"form\" value=\"{html.escape(form_id, quote=True)}\">"
        "<label for=\"username\">User</label>"
        "<input id=\"username\" name=\"username\" autocomplete=\"username\" required autofocus>"
        "<label for=\"password\">Password</label>"
        "<input id=\"password\" name=\"password\" type=\"password\" "
        "autocomplete=\"current-password\" required>"
        "<button id=\"sign-in\" type=\"submit\">Sign in</button></form>"
        "<p><small>The demo's OpenID Provider: its user and password are printed by "
        "<code>fluxgate demo</code>.</small></p>"
    ))


def _handler(provider: DemoOpenIdProvider) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(JsonHandler):
        def send_page(self, status: int, body: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            for name, value in PAGE_HEADERS.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def send_error_page(self, message: str) -> None:
            self.send_page(400, _page("Sign-in request refused", f"<p>{html.escape(message)}</p>"))

        def redirect(self, location: str) -> None:
            # 303: the browser follows with a GET, whatever the method it used here.
            self.send_response(303)
            self.send_header("Location", location)
            for name, value in PAGE_HEADERS.items():
                self.send_header(name, value)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def read_form(self) -> dict[str, str]:
            if self.headers.get_content_type() != "application/x-www-form-urlencoded":
                raise OAuthError("invalid_request", "a form body is expected")
            try:
                length = int(self.headers.get("Content-Length") or "")
            except ValueError:
                length = -1
            if not 0 <= length <= MAX_BODY:
                self.close_connection = True
                raise OAuthError("invalid_request", "a Content-Length up to 16 KiB is expected")
            return single_values(self.rfile.read(length).decode("utf-8", "replace"))

        def do_GET(self) -> None:  # noqa: N802 - http.server's spelling
            url = urllib.parse.urlsplit(self.path)
            if url.path == DISCOVERY_PATH:
                self.send_json(200, provider.metadata())
            elif url.path == JWKS_PATH:
                self.send_json(200, provider.jwks())
            elif url.path == AUTHORIZE_PATH:
                self.authorize(url.query)
            elif url.path == END_SESSION_PATH:
                self.end_session(url.query)
            elif url.path == "/favicon.ico":
                self.send_response(204)
                self.end_headers()
            elif url.path in (TOKEN_PATH, REVOCATION_PATH):
                self.send_json(405, {"error": "method_not_allowed"}, {"Allow": "POST"})
            else:
                self.send_json(404, {"error": "not_found"})

        def authorize(self, query: str) -> None:
            try:
                params = single_values(query)
            except OAuthError as exc:
                self.send_error_page(str(exc))
                return
            try:
                request = provider.authorization_request(params)
            except Unredirectable as exc:
                log.info("demo OpenID Provider: authorization request refused: %s", exc)
                self.send_error_page(str(exc))
                return
            except OAuthError as exc:
                log.info("demo OpenID Provider: authorization request refused (%s): %s",
                         exc.error, exc)
                self.redirect(provider.error_redirect(params, exc))
                return
            log.info("demo OpenID Provider: sign-in form shown (PKCE S256, scope %s)",
                     request.scope)
            self.send_page(200, _sign_in_page(provider, provider.open_form(request)))

        def end_session(self, query: str) -> None:
            try:
                location = provider.end_session(single_values(query))
            except (OAuthError, Unredirectable) as exc:
                self.send_error_page(str(exc))
                return
            if location is None:
                self.send_page(200, _page("Signed out", "<p>You are signed out.</p>"))
            else:
                self.redirect(location)

        def do_POST(self) -> None:  # noqa: N802 - http.server's spelling
            path = urllib.parse.urlsplit(self.path).path
            if path not in (AUTHORIZE_PATH, TOKEN_PATH, REVOCATION_PATH):
                self.send_json(404, {"error": "not_found"})
                return
            try:
                form = self.read_form()
            except OAuthError as exc:
                if path == AUTHORIZE_PATH:
                    self.send_error_page(str(exc))
                else:
                    self.send_json(exc.status, {"error": exc.error,
                                                "error_description": str(exc)}, NO_STORE)
                return
            if path == AUTHORIZE_PATH:
                self.sign_in(form)
            elif not provider.client_authenticated(self.headers.get("Authorization")):
                log.info("demo OpenID Provider: %s refused (client authentication failed)",
                         path)
                self.send_json(401, {"error": "invalid_client"},
                               {"WWW-Authenticate": 'Basic realm="demo"', **NO_STORE})
            elif path == TOKEN_PATH:
                try:
                    self.send_json(200, provider.token(form), NO_STORE)
                except OAuthError as exc:
                    self.send_json(exc.status, {"error": exc.error,
                                                "error_description": str(exc)}, NO_STORE)
            else:
                provider.revoke(form)
                self.send_json(200, {}, NO_STORE)

        def sign_in(self, form: dict[str, str]) -> None:
            try:
                location, form_id = provider.sign_in(form)
            except Unredirectable as exc:
                self.send_error_page(str(exc))
                return
            if location is not None:
                self.redirect(location)
            else:
                assert form_id is not None
                self.send_page(200, _sign_in_page(provider, form_id,
                                                  "Wrong user or password."))

    return Handler
