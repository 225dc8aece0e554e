"""oauth2 with ``login: true``: browser sessions for web apps (the backend-for-frontend
pattern), by the authorization code flow with PKCE and OpenID Connect.

    - oauth2: {issuer: https://login.example.com, client_id: web, client_secret: ${SECRET},
               login: true, redirect_uri: https://app.example.com/oauth2/callback}

Per request (the worker; every call to the authorization server is the master's,
``master/login.py``, asked over the side pool's socket without blocking the loop):

* the session cookie (an opaque id; the tokens stay in the server-side store,
  ``auth/sessions.py``) is looked up; a live session sets the principal (method oauth2,
  subject = the ID token's ``sub``, scopes = the access token's ``scope``);
* no session: a browser navigation gets 302 to the authorization endpoint (the master
  records the login's PKCE verifier, state and nonce; a ``__Host-`` transaction cookie
  binds the state to this browser); anything else (scripts, ``Accept:
  application/json``, unsafe methods, ``api_paths``) gets 401 ``login_required``;
* an access token close to expiry (``refresh_leeway``) is refreshed by the master, once
  however many requests and workers ask; an expired one waits for that refresh;
* unsafe methods and WebSocket upgrades need an ``Origin`` of this site (CSRF and
  cross-site WebSocket hijacking);
* the gateway's cookies never reach the upstream; it gets the principal's headers and,
  with ``forward_access_token``, ``Authorization: Bearer <access token>``.

The gateway's own endpoints (``endpoints()``): the callback (the path of
``redirect_uri``), ``logout_path`` and ``backchannel_logout_path``; each one always
answers itself and never reaches an upstream.
"""

from __future__ import annotations

import base64
import html
import logging
import time
from collections.abc import Hashable
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlsplit

import orjson

from fluxgate.auth import session_tunnels
from fluxgate.auth.failures import AuthFailures
from fluxgate.auth.login_flow import (
    SAFE_METHODS,
    TRANSACTION_COOKIE_PREFIX,
    clear_cookie,
    cookie_values,
    login_source,
    origin_of,
    page,
    redirect,
    safe_return_to,
    set_cookie,
    transaction_cookie_name,
    wants_redirect,
    without_cookies,
)
from fluxgate.auth.principal import Principal
from fluxgate.auth.runtime import worker_shared
from fluxgate.auth.scopes import ScopePolicy
from fluxgate.auth.session_db import well_formed
from fluxgate.auth.sessions import Session, SessionStore
from fluxgate.auth.sidepool_client import SidePoolClient
from fluxgate.cluster.connect import is_redis_url
from fluxgate.cluster.session_sync import STALE_AFTER
from fluxgate.errors import AuthServerUnavailable, ClientError, LocalReply
from fluxgate.proxy.suspend import Suspended

if TYPE_CHECKING:
    from fluxgate._core import RequestState
    from fluxgate.config.schema import OAuth2

log = logging.getLogger("fluxgate.auth")
_now = time.time

STEP_TIMEOUT = 15.0  # a login step the master has not answered by then is a 503
PRINCIPALS_LIMIT = 65536
RETRY_AFTER = ((b"Retry-After", b"5"),)


class LoginRequired(ClientError):
    """This route needs a signed-in browser session."""

    status, code = 401, "login_required"


class OriginRefused(ClientError):
    """An unsafe method or a WebSocket upgrade from another site (CSRF)."""

    status, code = 403, "origin_mismatch"


def _query(req: RequestState) -> dict[str, str]:
    """The request's query parameters (the first value of each)."""
    found: dict[str, str] = {}
    for name, value in parse_qsl(req.query.decode("latin-1"), keep_blank_values=True):
        found.setdefault(name, value)
    return found


def _header(req: RequestState, wanted: bytes) -> bytes | None:
    for name, value in req.headers:
        if len(name) == len(wanted) and name.lower() == wanted:
            return value.strip()
    return None


class LoginMiddleware:
    """One route's oauth2 login entry, compiled once per worker."""

    method = "oauth2"

    def __init__(self, config: OAuth2, gateway: Any, route: Any = None) -> None:
        self.config = config
        self.gateway = gateway
        self.source = login_source(config)
        self.store: SessionStore = worker_shared(
            gateway, "oauth2-sessions", lambda: SessionStore.open(gateway.state_dir))
        self.client: SidePoolClient = worker_shared(
            gateway, "oauth2-sidepool", lambda: SidePoolClient(gateway.loop, gateway.state_dir))
        self.scopes = ScopePolicy(config.scopes, gateway.config.scope_map)
        self.failures = AuthFailures.for_gateway(gateway)
        self.cookie = config.session.cookie
        self.cookie_names = frozenset({self.cookie})
        self.own_cookies = frozenset({self.cookie.encode()})
        self.redirect_uri = config.redirect_uri or ""
        self.callback_path = _path_of(self.redirect_uri)
        self.redirect_origin = origin_of(self.redirect_uri)
        self.redirect_scheme = urlsplit(self.redirect_uri).scheme.lower()
        self.authority = self.redirect_origin.partition("://")[2]
        self.origins = frozenset({origin_of(self.redirect_uri),
                                  *(origin_of(o) for o in config.allowed_origins)})
        self.return_origins = frozenset(origin_of(o) for o in config.allowed_return_origins)
        self.api_paths = tuple(p.encode() for p in config.api_paths)
        self.leeway = config.refresh_leeway
        # Cluster mode: sessions live in Redis; this node's file holds copies.
        self.shared_store = is_redis_url(gateway.config.store)
        # ... and with on_store_down: deny, copies the master could not compare with Redis
        # for STALE_AFTER are not served (checked at most once a second).
        self.deny_stale = self.shared_store and gateway.config.cluster.on_store_down == "deny"
        self.stale_checked_at = 0.0
        self.stale = False
        # Principals by session (digest, version): a request of a known session builds none.
        self.principals: dict[tuple[bytes, int], Principal] = {}
        # The upstream never sees a client-sent Authorization when the gateway sends its own.
        self.drop_headers = frozenset({b"authorization"} if config.forward_access_token else ())

    @classmethod
    def from_config(cls, config: OAuth2, gateway: Any, route: Any = None) -> LoginMiddleware:
        return cls(config, gateway, route)

    def carries(self, req: RequestState) -> bool:
        """Does the request carry this provider's session cookie? (for ``any``)"""
        return bool(cookie_values(req.headers, self.cookie_names))

    # ---- a request on a login route ---------------------------------------------------------

    def __call__(self, req: RequestState) -> ClientError | None:
        session_id = cookie_values(req.headers, self.cookie_names).get(self.cookie)
        now = _now()
        session = self.store.load(session_id, now) if session_id else None
        if session is None:
            if session_id and self.shared_store and well_formed(session_id):
                # Cluster mode: this node has no live copy; the session may have been
                # made or used on another node. The master copies it from the store.
                future = self.client.call("fetch", self.source,
                                          orjson.dumps({"session_id": session_id}),
                                          STEP_TIMEOUT)
                raise Suspended(future, lambda r: self._fetched(r, session_id, future.result()))
            return self._no_session(req, bool(session_id))
        return self._with_session(req, session_id, session, now)

    def _fetched(self, req: RequestState, session_id: str,
                 result: tuple[str, bytes]) -> ClientError | None:
        if result[0] == "unavailable":
            # The session may be live elsewhere; Redis cannot say now. Not a sign-in prompt.
            return self._store_unavailable()
        session = self.store.load(session_id, _now()) if result[0] == "ok" else None
        if session is None:
            return self._no_session(req, True)
        return self._with_session(req, session_id, session, _now())

    def _with_session(self, req: RequestState, session_id: str, session: Session,
                      now: float) -> ClientError | None:
        if self.deny_stale and self._copies_stale(now):
            return self._store_unavailable()
        refusal = self._check_origin(req)
        if refusal is not None:
            return refusal
        expires_at = session.access_expires_at
        remaining = float("inf") if expires_at is None else expires_at - now
        if remaining <= self.leeway:
            future = self.client.call("refresh", self.source,
                                      orjson.dumps({"session_id": session_id}), STEP_TIMEOUT)
            if remaining <= 1.0:
                # Expired (or about to be, on the way upstream): wait for the new token.
                raise Suspended(future, lambda r: self._refreshed(r, session_id, future.result()))
            # Still valid: the refresh happens meanwhile; this request goes on now.
        return self._admit(req, session, now)

    def _store_unavailable(self) -> ClientError:
        """503: the shared session store cannot vouch for sessions now (cluster mode)."""
        self._count("session_store_unavailable")
        return AuthServerUnavailable("Sessions cannot be checked right now; try again later.",
                                     headers=RETRY_AFTER)

    def _copies_stale(self, now: float) -> bool:
        """Whether this node's session copies went unchecked against Redis too long."""
        if now - self.stale_checked_at >= 1.0:
            self.stale_checked_at = now
            self.stale = now - self.store.synced_at() > STALE_AFTER
        return self.stale

    def _refreshed(self, req: RequestState, session_id: str,
                   result: tuple[str, bytes]) -> ClientError | None:
        outcome, _payload = result
        if outcome == "ended":
            return self._no_session(req, True)
        session = self.store.load(session_id, _now())
        if session is None:
            return self._no_session(req, True)
        expires_at = session.access_expires_at
        if outcome != "ok" and expires_at is not None and expires_at <= _now():
            self._count("refresh_unavailable")
            return AuthServerUnavailable("The session could not be refreshed; try again later.",
                                         headers=RETRY_AFTER)
        return self._admit(req, session, _now())

    def _admit(self, req: RequestState, session: Session, now: float) -> ClientError | None:
        principal = self._principal(session)
        if self.scopes.active:
            refusal = self.scopes.check(principal.scopes, req.method, req.path)
            if refusal is not None:
                self._count("insufficient_scope")
                return refusal
        self.store.touch(session.digest, now, session.last_seen_at)
        self._strip_own_cookies(req)
        req.principal = principal
        return None

    def _principal(self, session: Session) -> Principal:
        key = (session.digest, session.version)
        principal = self.principals.get(key)
        if principal is None:
            claims = session.claims
            issuer = claims.get("iss") or self.config.issuer or ""
            access_token = session.tokens.get("access_token")
            scope = claims.get("scope")
            scopes = set(scope.split()) if isinstance(scope, str) else set()
            scopes.update(access_token_scopes(access_token, self.config.scope_claims))
            principal = Principal(f"oauth2:{issuer}|{session.sub}", "oauth2", session.sub,
                                  frozenset(scopes))
            if self.config.forward_access_token and access_token:
                principal.upstream_lines += b"Authorization: Bearer %s\r\n" % access_token.encode(
                    "ascii", "replace")
            if len(self.principals) >= PRINCIPALS_LIMIT:
                self.principals.clear()
            self.principals[key] = principal
        return principal

    def _strip_own_cookies(self, req: RequestState) -> None:
        """The gateway's cookies are its own: the upstream gets the others only."""
        forward = req.forward_headers
        for index in range(len(forward) - 1, -1, -1):
            name, value = forward[index]
            if len(name) == 6 and name.lower() == b"cookie":
                kept = without_cookies(value, self.own_cookies, TRANSACTION_COOKIE_PREFIX.encode())
                if kept is None:
                    del forward[index]
                elif kept != value:
                    forward[index] = (name, kept)

    def _check_origin(self, req: RequestState) -> ClientError | None:
        if req.method in SAFE_METHODS and req.upgrade is None:
            return None
        origin = _header(req, b"origin")
        if origin is not None:
            if origin.decode("latin-1").lower() in self.origins:
                return None
        elif req.upgrade is None:
            # Browsers send Origin on every cross-origin and same-origin unsafe request;
            # without one, only Sec-Fetch-Site can vouch that the page was this site's.
            if _header(req, b"sec-fetch-site") in (b"same-origin", b"none"):
                return None
        self._count("origin_mismatch")
        return OriginRefused("This request must come from a page of this site.")

    def _no_session(self, req: RequestState, had_cookie: bool) -> ClientError:
        cookies = (clear_cookie(self.cookie),) if had_cookie else ()
        if not wants_redirect(req.method, req.headers, req.path, self.api_paths) or req.upgrade:
            self._count("login_required")
            return LoginRequired("Sign in first: this route needs a browser session.",
                                 headers=cookies)
        target = req.path.decode("latin-1")
        if req.query:
            target += "?" + req.query.decode("latin-1")
        if req.host is not None and _authority(req.host, self.redirect_scheme) != self.authority:
            # A login started on another host name than the callback's could never finish
            # (the transaction cookie stays with that host): go to the callback's origin
            # first. The origin is the configured one, never taken from the request.
            return redirect(self.redirect_origin + target, status=302, cookies=cookies)
        future = self.client.call("begin", self.source, orjson.dumps({"return_to": target}),
                                  STEP_TIMEOUT)
        raise Suspended(future, lambda r: self._begun(future.result(), cookies))

    def _begun(self, result: tuple[str, bytes], cookies: tuple[tuple[bytes, bytes], ...]
               ) -> ClientError:
        outcome, payload = result
        if outcome != "ok":
            self._count("login_unavailable")
            return page(503, "auth_server_unavailable", "Sign-in is unavailable",
                        "The sign-in service cannot be reached right now. Try again in a moment.",
                        cookies=cookies)
        begun = orjson.loads(payload)
        transaction = set_cookie(begun["cookie"], begun["transaction_id"], begun["max_age"])
        return redirect(begun["location"], status=302, cookies=(*cookies, transaction))

    def _count(self, reason: str) -> None:
        if self.failures is not None:
            self.failures.count("oauth2", reason)

    def websocket_binding(self, req: RequestState, principal: Principal
                          ) -> tuple[float, Hashable] | None:
        """A WebSocket this middleware admitted: its deadline (monotonic) and the key its
        session's tunnels share, so a refresh moves it and a logout closes it."""
        session_id = cookie_values(req.headers, self.cookie_names).get(self.cookie)
        if not session_id:
            return None
        session = self.store.load(session_id, _now())
        if session is None or session.sub != principal.subject:
            return None
        return session_tunnels.for_gateway(self.gateway, self.store).bind(
            self, session_id, session)

    # ---- the gateway's endpoints --------------------------------------------------------------

    def endpoints(self) -> list[tuple[str, tuple[str, ...], Any]]:
        """``(path, methods, step)`` of the paths this middleware answers itself."""
        found = [(self.callback_path, ("GET",), self.callback),
                 (self.config.logout_path, ("GET", "POST"), self.logout)]
        if self.config.backchannel_logout_path:
            found.append((self.config.backchannel_logout_path, ("POST",), self.backchannel))
        return found

    def callback(self, req: RequestState) -> ClientError:
        """The authorization server sends the browser back here with a code (or an error)."""
        params = _query(req)
        state = params.get("state", "")
        cookie_name = transaction_cookie_name(state) if state else ""
        transaction_id = cookie_values(req.headers, prefix=TRANSACTION_COOKIE_PREFIX).get(
            cookie_name) if state else None
        clear = (clear_cookie(cookie_name),) if transaction_id else ()
        if not state or not transaction_id:
            self._count("login_no_transaction")
            return page(400, "login_failed", "Sign-in could not be completed",
                        "This sign-in answer does not belong to a sign-in started in this "
                        "browser, or it has expired.", link="/", cookies=clear)
        request = {"transaction_id": transaction_id, "state": state,
                   "code": params.get("code"), "iss": params.get("iss"),
                   "error": params.get("error")}
        future = self.client.call("callback", self.source, orjson.dumps(request), STEP_TIMEOUT)
        raise Suspended(future, lambda r: self._called_back(future.result(), clear))

    def _called_back(self, result: tuple[str, bytes], clear: tuple[tuple[bytes, bytes], ...]
                     ) -> ClientError:
        outcome, payload = result
        body = orjson.loads(payload) if payload else {}
        if outcome == "ok":
            return_to = safe_return_to(body.get("return_to") or "/", self.return_origins) or "/"
            session = set_cookie(self.cookie, body["session_id"], body["max_age"])
            return redirect(return_to, status=303, cookies=(*clear, session), code="signed_in")
        if outcome == "refused":
            reason = body.get("reason", "refused")
            self._count(f"login_{reason}")
            if reason.startswith("as_"):
                return page(403, "login_refused", "Sign-in was not completed",
                            "The sign-in service did not sign you in "
                            f"({reason[3:]}).", link="/", cookies=clear)
            return page(400, "login_failed", "Sign-in could not be completed",
                        "This sign-in answer could not be accepted (it may have been used "
                        "already). Start again.", link="/", cookies=clear)
        self._count("login_unavailable")
        return page(503, "auth_server_unavailable", "Sign-in is unavailable",
                    "The sign-in service cannot be reached right now. Try again in a moment.",
                    link="/", cookies=clear)

    def logout(self, req: RequestState) -> ClientError:
        """End the session here and everywhere, then the server's session (RP logout)."""
        if req.method == b"POST":
            refusal = self._check_origin(req)
            if refusal is not None:
                return refusal
        elif _header(req, b"sec-fetch-site") == b"cross-site":
            # Another site may not sign users out by a link: ask for a click on this one.
            return LocalReply(200, "confirm_logout", _confirm_logout_page(req.path),
                              headers=((b"Cache-Control", b"no-store"),
                                       (b"Referrer-Policy", b"no-referrer")))
        session_id = cookie_values(req.headers, self.cookie_names).get(self.cookie, "")
        future = self.client.call("logout", self.source,
                                  orjson.dumps({"session_id": session_id}), STEP_TIMEOUT)
        raise Suspended(future, lambda r: self._logged_out(future.result()))

    def _logged_out(self, result: tuple[str, bytes]) -> ClientError:
        outcome, payload = result
        clear = (clear_cookie(self.cookie),)
        if outcome == "ok":
            return redirect(orjson.loads(payload)["location"], status=303, cookies=clear,
                            code="signed_out")
        return page(200, "signed_out", "Signed out",
                    "You are signed out of this site.", link="/", cookies=clear)

    def backchannel(self, req: RequestState) -> ClientError | None:
        """OpenID Connect back-channel logout: the server ends sessions (a form POST).
        None only while the body is still coming (then nothing goes upstream either)."""
        if req.has_body and not req.message_complete:
            # The body is still coming: the route holds the request (buffer_request_body)
            # and the connection calls this again with the whole body (route.body_step).
            return None
        body = b"".join(req.body_buffer)
        params = dict(parse_qsl(body.decode("latin-1"), keep_blank_values=True))
        token = params.get("logout_token", "")
        future = self.client.call("backchannel", self.source,
                                  orjson.dumps({"logout_token": token}), STEP_TIMEOUT)
        raise Suspended(future, lambda r: self._backchannel_done(future.result()))

    def _backchannel_done(self, result: tuple[str, bytes]) -> ClientError:
        outcome, payload = result
        headers = ((b"Cache-Control", b"no-store"),)
        if outcome == "ok":
            return LocalReply(200, "logged_out", b"", content_type=b"text/plain", headers=headers)
        if outcome == "refused":
            reason = orjson.loads(payload).get("reason", "invalid_request")
            self._count(f"backchannel_{reason}")
            return LocalReply(400, "invalid_request",
                              orjson.dumps({"error": "invalid_request"}),
                              content_type=b"application/json", headers=headers)
        return LocalReply(503, "auth_server_unavailable",
                          orjson.dumps({"error": "temporarily_unavailable"}),
                          content_type=b"application/json", headers=(*headers, *RETRY_AFTER))


def access_token_scopes(token: str | None, claim_paths: list[str]) -> set[str]:
    """Scopes read from a JWT access token's claims (``scope``, ``scp``, ``permissions``,
    ``realm_access.roles``...): a space-separated string or an array of strings. The token
    came from the token endpoint over a verified connection, so its payload is read, not
    verified again; an opaque token adds nothing."""
    found: set[str] = set()
    if not token or token.count(".") != 2 or not claim_paths:
        return found
    try:
        payload = token.split(".")[1]
        claims = orjson.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (ValueError, orjson.JSONDecodeError):
        return found
    for path in claim_paths:
        value: Any = claims
        for part in path.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        if isinstance(value, str):
            found.update(value.split())
        elif isinstance(value, list):
            found.update(v for v in value if isinstance(v, str) and v and not any(
                c.isspace() for c in v))
    return found


def _authority(host: bytes, scheme: str) -> str:
    """A Host header's value as origin_of spells an authority (lower case, no default port)."""
    value = host.decode("latin-1").strip().lower()
    default = ":443" if scheme == "https" else ":80"
    return value[: -len(default)] if value.endswith(default) else value


def _path_of(url: str) -> str:
    return urlsplit(url).path or "/"


def _confirm_logout_page(path: bytes) -> bytes:
    action = html.escape(path.decode("latin-1"), quote=True)
    return (
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>Sign out</title></head>"
        f"<body><form method=\"post\" action=\"{action}\"><p>Sign out of this site?</p>"
        "<button type=\"submit\">Sign out</button></form></body></html>"
    ).encode()
