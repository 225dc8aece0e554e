"""The ``--probe`` battery for an oauth2 route with ``login: true`` (the browser login),
which ``probe_oauth2.oauth2_probes`` hands login entries to.

Each probe sends its own requests (the route, the callback, the logout path; cookies and
``Origin`` as a browser or an attacker would) and judges what comes back:

* a script (``Accept: application/json``, ``X-Requested-With``) without a session gets
  401 ``login_required``, never a redirect;
* a navigation gets 302 to the server's ``authorization_endpoint`` with PKCE S256, a
  ``state`` and a ``nonce`` of at least 128 bits (fresh each time), the configured
  ``redirect_uri`` whatever ``Host`` says, and a ``__Host-`` transaction cookie;
* callbacks that do not belong to a login this client started — unknown state, a
  tampered state, no transaction cookie, the same answer twice — get 400 and no session;
* no answer sends the browser off-site except to the server (return paths such as
  ``//evil.example``, hostile logout parameters);
* an unsafe request and a WebSocket upgrade from another site (``Origin``) with a session
  cookie get 401/403 and reach nothing.

Without credentials the session cookie is a forged one; pass a real session cookie's value
with ``--token`` (copied from a signed-in browser) to see the cross-site requests refused
for the Origin alone (403 ``origin_mismatch``) and the session let through (a sanity
probe). Completing a login needs a user's password, which the probe never has: the replay
probe uses the server's refusal (``error=access_denied``) as the first answer.
"""

from __future__ import annotations

import asyncio
import base64
import http.client
import secrets
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode, urlsplit

import orjson

from fluxgate.auth.login_flow import TRANSACTION_COOKIE_PREFIX, origin_of, safe_return_to
from fluxgate.cli.probe import REQUEST_TIMEOUT, Answer, Battery, Expect, Probe, Target
from fluxgate.cli.probe_jws import fingerprint
from fluxgate.config import schema
from fluxgate.master.as_client import discover
from fluxgate.master.fetch import FetchError

EVIL_ORIGIN = "https://fluxctl-probe.invalid"  # a site that is not this one (RFC 6761 name)
MIN_RANDOM_CHARS = 22  # base64url characters that carry 128 bits
NAVIGATION = (("Accept", "text/html,application/xhtml+xml"), ("Sec-Fetch-Mode", "navigate"),
              ("Sec-Fetch-Dest", "document"))
LOGIN_REQUIRED = Expect((401,), ("login_required",))
REDIRECT = Expect((302,), ("login_redirect",))
CALLBACK_REFUSED = Expect((400,), ("login_failed",))
CROSS_SITE = Expect((401, 403), ("login_required", "origin_mismatch"))
SESSION_SANITY = Expect((), ())

Judged = list[tuple[Answer, "str | None"]]


@dataclass
class Reply:
    """One answer as the login probes read it."""

    status: int | None
    headers: list[tuple[str, str]]
    body: bytes
    failure: str | None = None

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers if k.lower() == name), None)

    def cookies(self) -> dict[str, str]:
        """``Set-Cookie`` name -> the whole header value."""
        return {v.split("=", 1)[0].strip(): v for k, v in self.headers
                if k.lower() == "set-cookie"}

    def answer(self) -> Answer:
        error = None
        if self.body[:1] == b"{":
            try:
                doc = orjson.loads(self.body)
                error = doc.get("error") if isinstance(doc, dict) else None
            except orjson.JSONDecodeError:
                pass
        return Answer(self.status, error if isinstance(error, str) else None,
                      failure=self.failure)


@dataclass
class LoginSetup:
    """What the login battery is built from."""

    entry: schema.OAuth2
    metadata: dict[str, Any]  # the server's, as the gateway discovers it ({} if unreachable)
    metadata_error: str | None
    session: str | None  # a real session cookie's value (--token), if any

    @property
    def authorization_endpoint(self) -> str | None:
        value = self.metadata.get("authorization_endpoint")
        return value if isinstance(value, str) else None

    def allowed_location(self, location: str) -> bool:
        """May the gateway send a browser there? A path of this site, the server's login
        and logout endpoints, the configured logout landing page, an allowed origin."""
        e = self.entry
        for prefix in (self.authorization_endpoint, self.metadata.get("end_session_endpoint")):
            if isinstance(prefix, str) and prefix and location.startswith(prefix):
                return True
        if e.post_logout_redirect_uri and location == e.post_logout_redirect_uri:
            return True
        if not self.metadata and e.issuer and origin_of(location) == origin_of(e.issuer):
            return True  # the metadata could not be read here: the server's own origin
        origins = frozenset(origin_of(o) for o in e.allowed_return_origins)
        return safe_return_to(location, origins) is not None


def _metadata(entry: schema.OAuth2) -> tuple[dict[str, Any], str | None]:
    try:
        return asyncio.run(discover(entry.issuer or "", REQUEST_TIMEOUT, oidc_first=True)), None
    except (FetchError, ValueError, OSError) as exc:
        return {}, str(exc)


# ---- sending --------------------------------------------------------------------------------


def send(target: Target, method: str, path: str, headers: list[tuple[str, str]] | tuple = (),
         ) -> Reply:
    """One request on a connection of its own (cookies are the probe's to send)."""
    cls = http.client.HTTPSConnection if target.https else http.client.HTTPConnection
    conn = cls(target.host, target.port, timeout=target.timeout)
    try:
        conn.putrequest(method, path, skip_host=any(k.lower() == "host" for k, _ in headers),
                        skip_accept_encoding=True)
        conn.putheader("User-Agent", "fluxctl-probe")
        for name, value in headers:
            conn.putheader(name, value)
        if method in ("POST", "PUT", "PATCH", "DELETE"):
            conn.putheader("Content-Type", "application/x-www-form-urlencoded")
            conn.putheader("Content-Length", "3")
            conn.endheaders(b"x=1")
        else:
            conn.endheaders()
        resp = conn.getresponse()
        body = resp.read() if resp.status != 101 else b""
        return Reply(resp.status, resp.getheaders(), body)
    except (OSError, http.client.HTTPException) as exc:
        return Reply(None, [], b"", str(exc) or type(exc).__name__)
    finally:
        conn.close()


def _base(target: Target) -> str:
    """The probe URL's own path prefix (a gateway behind a path)."""
    return urlsplit(target.url).path.rstrip("/")


def _cookie(name: str, value: str) -> tuple[str, str]:
    return ("Cookie", f"{name}={value}")


def _forged_session() -> str:
    return secrets.token_urlsafe(32)


def _sets_session(reply: Reply, cookie: str) -> bool:
    """Did the answer set a (non-empty) session cookie?"""
    value = reply.cookies().get(cookie)
    return value is not None and not value.startswith(cookie + "=;")


def _refused(reply: Reply, expect: Expect, *, exact: bool = True) -> str | None:
    """Why ``reply`` is not the refusal ``expect`` names (any 4xx will do without
    ``exact``), or None."""
    if reply.status is None:
        return f"no answer: {reply.failure}"
    if 200 <= reply.status < 300 or reply.status == 101:
        return "let through"
    if reply.status >= 500:
        return "a server error for what a client sent (fail closed with a 4xx)"
    if exact and reply.status not in expect.statuses:
        return f"expected {expect.describe()}, got {reply.status}"
    if not exact and not 400 <= reply.status < 500:
        return f"expected a 4xx refusal, got {reply.status}"
    return None


# ---- the probes ---------------------------------------------------------------------------


class LoginProbes:
    """The runners of the login battery (each takes the Target, returns judged answers)."""

    def __init__(self, s: LoginSetup) -> None:
        self.s = s
        self.cookie = s.entry.session.cookie
        self.callback_path = urlsplit(s.entry.redirect_uri or "").path or "/"

    # -- scripts and navigations

    def no_session_script(self, target: Target) -> Judged:
        judged = []
        for headers in ([("Accept", "application/json")],
                        [("Accept", "*/*"), ("X-Requested-With", "XMLHttpRequest")],
                        [("Accept", "application/json"), _cookie(self.cookie, _forged_session())]):
            reply = send(target, "GET", target.path, headers)
            if reply.status is not None and 300 <= reply.status < 400:
                why = "a script was answered with a redirect (it cannot follow one to a login page)"
            else:
                why = _refused(reply, LOGIN_REQUIRED)
            judged.append((reply.answer(), why))
        return judged

    def begin(self, target: Target, path: str | None = None,
              extra: list[tuple[str, str]] | None = None) -> tuple[Reply, dict[str, str]]:
        """A navigation without a session: the reply and its Location's query."""
        reply = send(target, "GET", path or target.path, [*NAVIGATION, *(extra or [])])
        location = reply.header("location") or ""
        return reply, dict(parse_qsl(urlsplit(location).query, keep_blank_values=True))

    def navigation(self, target: Target) -> Judged:
        first, query = self.begin(target)
        second, again = self.begin(target)
        why = self._redirect_faults(first, query)
        if why is None and query.get("state") == again.get("state"):
            why = "two logins got the same state: it must be random and single use"
        if why is None and query.get("nonce") == again.get("nonce"):
            why = "two logins got the same nonce"
        return [(first.answer(), why), (second.answer(), self._redirect_faults(second, again))]

    def _redirect_faults(self, reply: Reply, query: dict[str, str]) -> str | None:
        e, s = self.s.entry, self.s
        if reply.status != 302:
            return _refused(reply, REDIRECT) or f"expected 302 to the login page, got {reply.status}"
        location = reply.header("location") or ""
        endpoint = s.authorization_endpoint
        if endpoint is not None and location.split("?", 1)[0] != endpoint.split("?", 1)[0]:
            return f"Location is not the server's authorization_endpoint ({endpoint})"
        if query.get("response_type") != "code" or query.get("client_id") != e.client_id:
            return "not an authorization code request for the configured client_id"
        if query.get("code_challenge_method") != "S256":
            return (f"code_challenge_method is {query.get('code_challenge_method')!r}, "
                    "not S256 (RFC 7636 §4.2)")
        if len(query.get("code_challenge", "")) != 43:
            return "code_challenge is not a base64url SHA-256 (43 characters)"
        for name in ("state", "nonce"):
            if len(query.get(name, "")) < MIN_RANDOM_CHARS:
                return f"{name} is missing or shorter than 128 bits"
        if query.get("redirect_uri") != e.redirect_uri:
            return f"redirect_uri is {query.get('redirect_uri')!r}, not the configured one"
        if "openid" not in query.get("scope", "").split():
            return "scope lacks openid"
        tx = [v for k, v in reply.cookies().items() if k.startswith(TRANSACTION_COOKIE_PREFIX)]
        if not tx:
            return "no transaction cookie binds the state to this browser"
        attributes = {a.strip().split("=")[0].lower() for a in tx[0].split(";")[1:]}
        if not {"secure", "httponly", "samesite", "path"} <= attributes or "domain" in attributes:
            return "the transaction cookie is not Secure, HttpOnly, SameSite, Path=/ without Domain"
        return None

    def host_header(self, target: Target) -> Judged:
        reply, query = self.begin(target, extra=[("Host", "fluxctl-probe.invalid"),
                                                 ("X-Forwarded-Host", "fluxctl-probe.invalid")])
        why = None
        location = reply.header("location") or ""
        own_origin = origin_of(self.s.entry.redirect_uri or "")
        if reply.status == 302 and "redirect_uri" not in query and origin_of(location) == own_origin:
            pass  # sent to the callback's own (configured) origin first: fine
        elif reply.status == 302 and query.get("redirect_uri") != self.s.entry.redirect_uri:
            why = "redirect_uri follows the request's Host: a code could be sent to another site"
        elif reply.status != 302:
            why = _refused(reply, REDIRECT, exact=False)
        return [(reply.answer(), why)]

    # -- callbacks

    def _callback(self, target: Target, params: dict[str, str],
                  cookies: list[tuple[str, str]]) -> Reply:
        path = _base(target) + self.callback_path + "?" + urlencode(params, quote_via=quote)
        headers = [("Accept", "text/html")]
        if cookies:
            headers.append(("Cookie", "; ".join(f"{k}={v}" for k, v in cookies)))
        return send(target, "GET", path, headers)

    def _judge_callback(self, reply: Reply) -> str | None:
        if _sets_session(reply, self.cookie):
            return "a session cookie was set for a callback that is not this browser's login"
        return _refused(reply, CALLBACK_REFUSED)

    def _transaction(self, target: Target) -> tuple[str, list[tuple[str, str]]] | None:
        """Start a login: its state and transaction cookie, or None."""
        reply, query = self.begin(target)
        tx = [(k, v.split(";", 1)[0].split("=", 1)[1]) for k, v in reply.cookies().items()
              if k.startswith(TRANSACTION_COOKIE_PREFIX)]
        if reply.status != 302 or "state" not in query or not tx:
            return None
        return query["state"], tx

    def unknown_state(self, target: Target) -> Judged:
        reply = self._callback(target, {"code": secrets.token_urlsafe(16),
                                        "state": secrets.token_urlsafe(32)}, [])
        return [(reply.answer(), self._judge_callback(reply))]

    def _with_transaction(self, target: Target, build) -> Judged:
        started = self._transaction(target)
        if started is None:
            return [(Answer(None, failure="no login could be started"),
                     "a navigation did not start a login (see navigation_redirect)")]
        state, tx = started
        judged = []
        for params, cookies in build(state, tx):
            reply = self._callback(target, params, cookies)
            judged.append((reply.answer(), self._judge_callback(reply)))
        return judged

    def tampered_state(self, target: Target) -> Judged:
        def build(state, tx):
            flipped = state[:-1] + ("A" if state[-1] != "A" else "B")
            return [({"code": "probe", "state": flipped}, tx)]
        return self._with_transaction(target, build)

    def no_transaction_cookie(self, target: Target) -> Judged:
        return self._with_transaction(target, lambda state, tx: [
            ({"code": "probe", "state": state}, [])])

    def replayed(self, target: Target) -> Judged:
        """The same callback twice: the first is the server's refusal (the probe has no
        password to sign in with), which uses up the login; the second must find nothing."""
        params = {"error": "access_denied", "iss": self.s.entry.issuer or ""}
        started = self._transaction(target)
        if started is None:
            return [(Answer(None, failure="no login could be started"),
                     "a navigation did not start a login (see navigation_redirect)")]
        state, tx = started
        first = self._callback(target, {**params, "state": state}, tx)
        why_first = None
        if _sets_session(first, self.cookie):
            why_first = "a session cookie was set for a refused login"
        elif first.status is None or not 400 <= first.status < 500:
            why_first = _refused(first, CALLBACK_REFUSED, exact=False)
        second = self._callback(target, {**params, "state": state}, tx)
        return [(first.answer(), why_first), (second.answer(), self._judge_callback(second))]

    # -- where browsers are sent

    def open_redirect(self, target: Target) -> Judged:
        base = _base(target)
        evil = EVIL_ORIGIN.split("//", 1)[1]
        hostile = urlencode({"return_to": f"//{evil}", "next": EVIL_ORIGIN,
                             "post_logout_redirect_uri": EVIL_ORIGIN,
                             "redirect_uri": EVIL_ORIGIN, "rd": f"/\\{evil}"})
        requests = [
            ("GET", f"{target.path.rstrip('/')}//{evil}/", NAVIGATION),
            ("GET", f"{target.path}?{hostile}", NAVIGATION),
            ("GET", f"{base}{self.s.entry.logout_path}?{hostile}", (("Accept", "text/html"),)),
            ("POST", f"{base}{self.s.entry.logout_path}?{hostile}",
             (("Origin", EVIL_ORIGIN), ("Sec-Fetch-Site", "cross-site"))),
        ]
        judged = []
        for method, path, headers in requests:
            reply = send(target, method, path, list(headers))
            location = reply.header("location")
            why = None
            if reply.status is None or reply.status >= 500:
                why = _refused(reply, REDIRECT, exact=False)
            elif location is not None and not self.s.allowed_location(location):
                why = f"Location sends the browser off-site: {location[:80]}"
            judged.append((reply.answer(), why))
        return judged

    # -- cross-site requests with a session cookie

    def _session_cookie(self) -> tuple[str, str]:
        return _cookie(self.cookie, self.s.session or _forged_session())

    def cross_site_post(self, target: Target) -> Judged:
        judged = []
        for headers in ([("Origin", EVIL_ORIGIN), ("Sec-Fetch-Site", "cross-site")],
                        [("Origin", "null")],
                        [("Sec-Fetch-Site", "cross-site")]):
            reply = send(target, "POST", target.path,
                         [*headers, self._session_cookie(), ("Accept", "application/json")])
            why = _refused(reply, CROSS_SITE)
            if why is None and self.s.session and reply.status != 403:
                why = f"with a live session the Origin alone must be refused (403), got {reply.status}"
            judged.append((reply.answer(), why))
        return judged

    def cross_site_websocket(self, target: Target) -> Judged:
        key = base64.b64encode(secrets.token_bytes(16)).decode()
        reply = send(target, "GET", target.path, [
            ("Connection", "Upgrade"), ("Upgrade", "websocket"), ("Sec-WebSocket-Version", "13"),
            ("Sec-WebSocket-Key", key), ("Origin", EVIL_ORIGIN), self._session_cookie()])
        why = _refused(reply, CROSS_SITE, exact=False)
        if why is None and self.s.session and reply.status != 403:
            why = f"with a live session the Origin alone must be refused (403), got {reply.status}"
        return [(reply.answer(), why)]

    def valid_session(self, target: Target) -> Judged:
        reply = send(target, "GET", target.path, [*NAVIGATION, self._session_cookie()])
        why = None
        if reply.status is None or not 200 <= reply.status < 400 or reply.header("location"):
            why = (f"the given session was not let through (got {reply.status}): is it live, "
                   "and the value of the session cookie alone?")
        return [(reply.answer(), why)]


def login_battery(s: LoginSetup) -> list[Probe]:
    """Every login probe, the route's own no_credential first."""
    p = LoginProbes(s)
    endpoint = s.authorization_endpoint or "(the server's metadata could not be read)"
    session = (f"the given session cookie [{fingerprint(s.session)}]" if s.session
               else "a forged session cookie")

    def probe(name: str, sent: str, expect: Expect, runner, note: str = "") -> Probe:
        return Probe(name, "oauth2", sent, expect, [], note, runner=runner)

    probes = [
        probe("no_credential", "no session; Accept: application/json, X-Requested-With, a "
              "forged session cookie", LOGIN_REQUIRED, p.no_session_script),
        probe("navigation_redirect", f"a navigation without a session, twice: 302 to "
              f"{endpoint}, S256, state and nonce >= 128 bits, the configured redirect_uri",
              REDIRECT, p.navigation, note=s.metadata_error or ""),
        probe("redirect_uri_ignores_host", "a navigation with Host and X-Forwarded-Host of "
              "another site", REDIRECT, p.host_header),
        probe("callback_unknown_state", "the callback with a random state, no transaction "
              "cookie", CALLBACK_REFUSED, p.unknown_state),
        probe("callback_tampered_state", "a login's transaction cookie with its state "
              "changed", CALLBACK_REFUSED, p.tampered_state),
        probe("callback_without_transaction", "a login's state without its transaction "
              "cookie", CALLBACK_REFUSED, p.no_transaction_cookie),
        probe("callback_replayed", "the same callback (state, cookie, error=access_denied) "
              "twice", CALLBACK_REFUSED, p.replayed,
              note="the first answer is the server's refusal; the second must find no login"),
        probe("open_redirect", "return paths //host and /\\host, hostile return and logout "
              "parameters", Expect((302, 303), ("login_redirect", "signed_out")),
              p.open_redirect, note="the return path itself is followed only after a real "
              "sign-in; this checks every Location sent before it"),
        probe("cross_site_post", f"POST with Origin {EVIL_ORIGIN}, Origin null, or only "
              f"Sec-Fetch-Site: cross-site; {session}", CROSS_SITE, p.cross_site_post),
        probe("cross_site_websocket", f"a WebSocket upgrade with Origin {EVIL_ORIGIN}; "
              f"{session}", CROSS_SITE, p.cross_site_websocket),
    ]
    if s.session:
        probes.insert(1, probe("valid_session", f"a navigation with {session}",
                               SESSION_SANITY, p.valid_session))
    return probes


def login_probes(b: Battery, entry: schema.OAuth2) -> list[Probe]:
    """The login battery for ``entry``; ``--token`` is a real session cookie's value."""
    metadata, error = _metadata(entry) if b.authenticated else ({}, "no server configured")
    return login_battery(LoginSetup(entry, metadata, error, b.token))
