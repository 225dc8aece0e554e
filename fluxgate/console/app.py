"""The console's endpoints on the admin listener: the sign-in page, the single page and its
assets, and the JSON API the page polls (``/console/api/...``).

Authentication is the console's own (the admin router's bearer check is off for these paths):
the admin token typed into the sign-in form opens a session held in the master's memory
(``sessions.py``); the browser keeps only a random id in an HttpOnly, SameSite=Strict cookie
scoped to ``/console``. ``guard.py`` holds the Host, Origin and CSRF rules every request
goes through. Key operations call the admin API's own ``/admin/keys`` handlers, so the
console and ``fluxctl keys`` can never disagree on what an operation does.
"""

from __future__ import annotations

import collections
import html
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from importlib import resources
from typing import Any
from urllib.parse import parse_qs, urlencode

import orjson

from fluxgate.console import guard
from fluxgate.console.guard import json_error, json_response, page_response
from fluxgate.console.sessions import ConsoleSession, ConsoleSessions
from fluxgate.console.traffic import TrafficSampler
from fluxgate.console.views import sessions_view, workers_view
from fluxgate.errors import ClientError, NoRoute
from fluxgate.master.admin import AdminRequest, AdminResponse, AdminRouter
from fluxgate.master.shadow_metrics import shadowed_routes

log = logging.getLogger("fluxgate.console")

MAX_KEYS_SHOWN = 500
# Above this many keys in the shared table the console does not list them all (every listing
# describes each key on the master's loop): it looks keys up by name or id instead.
MAX_KEYS_LISTED = 5000
SESSIONS_EVERY = 5.0  # s: the browser-session count is a query of sessions.db, not polled faster
LOGIN_FAILURE_WINDOW = 60.0  # s
MAX_LOGIN_FAILURES = 20  # per window, from anyone: then sign-in answers 429 for a while

STATIC_TYPES = {
    ".js": b"text/javascript; charset=utf-8",
    ".css": b"text/css; charset=utf-8",
    ".svg": b"image/svg+xml",
    ".html": b"text/html; charset=utf-8",
}

# What the sign-in page may say; chosen by the server, never taken from the request.
MESSAGES = {
    "signed_out": "You are signed out.",
    "session_required": "Sign in with the admin token to open the console.",
    "session_expired": "Your console session has ended; sign in again.",
    "invalid_token": "The admin token is not valid.",
    "origin_mismatch": "Refused: the sign-in did not come from this console's own page.",
    "host_not_allowed": "Refused: open the console through a loopback address "
                        "(127.0.0.1, [::1] or localhost).",
    "too_many_failures": "Too many failed sign-ins: wait a minute and try again.",
}

ApiHandler = Callable[[AdminRequest, ConsoleSession], Awaitable[AdminResponse]]


def _static_files() -> dict[str, tuple[bytes, bytes]]:
    folder = resources.files("fluxgate.console") / "static"
    files = {}
    for item in folder.iterdir():
        suffix = "." + item.name.rpartition(".")[2]
        if item.is_file() and suffix in STATIC_TYPES:
            files[item.name] = (item.read_bytes(), STATIC_TYPES[suffix])
    return files


class Console:
    """The console of one master. ``master`` is the arbiter (workers, metrics, services,
    config, and ``admin``, the AdminServer whose token signs in)."""

    def __init__(self, router: AdminRouter, master: Any, *, sessions: ConsoleSessions | None = None,
                 secure: bool = False, clock: Callable[[], float] = time.monotonic) -> None:
        self.router = router
        self.master = master
        self.sessions = sessions or ConsoleSessions(clock=clock)
        self.secure = secure  # the admin listener speaks TLS: cookies get Secure
        self.clock = clock
        self.static = _static_files()
        self.traffic = TrafficSampler(self._read_counters, clock=clock)
        self._login_failures: collections.deque[float] = collections.deque()
        self._sessions_doc: tuple[float, dict[str, Any]] | None = None

    # ---- mounting -----------------------------------------------------------------------------

    def mount(self) -> None:
        """Register every console path on the admin router (the console checks its own
        sessions, so the router's bearer check is off for them)."""
        def add(method: str, path: str, handler: Callable[[AdminRequest], Awaitable[AdminResponse]]
                ) -> None:
            self.router.add(method, path, handler, auth=False)

        add("GET", "/console", self.page)
        add("GET", "/console/", self.page)
        add("GET", "/console/login", self.login_page)
        add("POST", "/console/login", self.login)
        add("POST", "/console/logout", self.api(self.logout, unsafe=True))
        for name in self.static:
            if not name.endswith(".html"):  # pages are served by their own paths
                add("GET", f"/console/static/{name}", self.asset)
        for path, handler in (
            ("/console/api/session", self.session_info),
            ("/console/api/live", self.live),
            ("/console/api/keys", self.keys),
            ("/console/api/health", self.health),
            ("/console/api/routes", self.routes),
        ):
            add("GET", path, self.api(handler))
        for path, handler in (
            ("/console/api/keys", self.generate_key),
            ("/console/api/keys/rotate", self.rotate_key),
            ("/console/api/keys/revoke", self.revoke_key),
        ):
            add("POST", path, self.api(handler, unsafe=True))

    # ---- sessions -----------------------------------------------------------------------------

    def _token_valid(self, token: str) -> bool:
        admin = getattr(self.master, "admin", None)
        if admin is None or not token:
            return False
        return admin.check_token("Bearer " + token) is None

    def _session(self, req: AdminRequest) -> tuple[str, ConsoleSession] | None:
        for session_id in guard.cookie_values(req):
            session = self.sessions.find(session_id)
            if session is None:
                continue
            if not self._token_valid(session.token):  # admin.token changed since sign-in
                self.sessions.end(session_id)
                continue
            return session_id, session
        return None

    def api(self, handler: ApiHandler, *, unsafe: bool = False
            ) -> Callable[[AdminRequest], Awaitable[AdminResponse]]:
        """``handler`` behind the console's checks: loopback Host; for ``unsafe`` calls the
        console's own Origin; a live session; for ``unsafe`` calls its CSRF token."""
        async def guarded(req: AdminRequest) -> AdminResponse:
            if not guard.is_loopback_host(req.headers.get("host")):
                return json_error(403, "host_not_allowed", MESSAGES["host_not_allowed"])
            if unsafe and not guard.same_origin(req, secure=self.secure):
                return json_error(403, "origin_mismatch",
                                  "state-changing console calls must come from the console's "
                                  "own page (Origin)")
            found = self._session(req)
            if found is None:
                expired = bool(guard.cookie_values(req))
                return json_error(401, "session_expired" if expired else "session_required",
                                  MESSAGES["session_expired" if expired else "session_required"])
            if unsafe and not guard.csrf_matches(req, found[1].csrf):
                return json_error(403, "csrf_token_invalid",
                                  "the X-CSRF-Token header is missing or not this session's")
            return await handler(req, found[1])
        return guarded

    # ---- pages --------------------------------------------------------------------------------

    def _login_html(self, status: int, message: str | None) -> AdminResponse:
        body = self.static["login.html"][0]
        if message is not None:
            note = f'<p class="message" role="alert">{html.escape(MESSAGES[message])}</p>'
            body = body.replace(b"<!--message-->", note.encode())
        return page_response(status, body)

    async def page(self, req: AdminRequest) -> AdminResponse:
        if not guard.is_loopback_host(req.headers.get("host")):
            return self._login_html(403, "host_not_allowed")
        if self._session(req) is None:
            expired = bool(guard.cookie_values(req))
            return self._login_html(401, "session_expired" if expired else "session_required")
        return page_response(200, self.static["console.html"][0])

    async def login_page(self, req: AdminRequest) -> AdminResponse:
        if not guard.is_loopback_host(req.headers.get("host")):
            return self._login_html(403, "host_not_allowed")
        if self._session(req) is not None:
            return page_response(303, b"", headers=((b"Location", b"/console"),))
        message = "signed_out" if "signed_out" in parse_qs(req.query) else None
        return self._login_html(200, message)

    async def login(self, req: AdminRequest) -> AdminResponse:
        if not guard.is_loopback_host(req.headers.get("host")):
            return self._login_html(403, "host_not_allowed")
        if not guard.same_origin(req, secure=self.secure):
            return self._login_html(403, "origin_mismatch")
        now = self.clock()
        while self._login_failures and now - self._login_failures[0] > LOGIN_FAILURE_WINDOW:
            self._login_failures.popleft()
        if len(self._login_failures) >= MAX_LOGIN_FAILURES:
            return self._login_html(429, "too_many_failures")
        try:
            form = parse_qs(req.body.decode("utf-8"), max_num_fields=4)
        except (UnicodeDecodeError, ValueError):
            form = {}
        token = (form.get("token") or [""])[0].strip()
        if not self._token_valid(token):
            self._login_failures.append(now)
            log.warning("console: sign-in refused (the admin token typed was not valid)")
            return self._login_html(401, "invalid_token")
        session_id, _ = self.sessions.open(token)
        log.info("console: signed in (%s sessions)", len(self.sessions))
        cookie = guard.session_cookie(session_id, secure=self.secure)
        return page_response(303, b"", headers=((b"Location", b"/console"),
                                                (b"Set-Cookie", cookie)))

    async def logout(self, req: AdminRequest, session: ConsoleSession) -> AdminResponse:
        for session_id in guard.cookie_values(req):
            self.sessions.end(session_id)
        clear = guard.session_cookie("", secure=self.secure, max_age=0)
        return json_response(200, {"signed_out": True}, headers=((b"Set-Cookie", clear),))

    async def asset(self, req: AdminRequest) -> AdminResponse:
        name = req.path.rpartition("/")[2]
        body, content_type = self.static[name]
        return page_response(200, body, content_type)

    # ---- the JSON API -------------------------------------------------------------------------

    def _service(self, name: str) -> Any:
        return next((s for s in getattr(self.master, "services", ()) if s.name == name), None)

    def _read_counters(self) -> tuple[dict, dict, dict]:
        labels = self.master.route_slots.labels()
        stats = self.master.metrics.snapshot(sorted(labels))
        routes = {labels[slot]: st for slot, st in stats.items()}
        auth = getattr(self._service("auth_metrics"), "table", None)
        failures = auth.snapshot() if auth is not None else {}
        shadow: dict[tuple[str, str, str, str], int] = {}
        service = self._service("shadow_metrics")
        if getattr(service, "table", None) is not None:
            slots = {path: slot for slot, path in labels.items()}
            for path in service.routes:  # every path shadowed by a config this master ran
                if path in slots:
                    for (method, decision, reason), n in service.table.snapshot(
                            slots[path]).items():
                        shadow[(path, method, decision, reason)] = n
        return routes, failures, shadow

    async def session_info(self, req: AdminRequest, session: ConsoleSession) -> AdminResponse:
        return json_response(200, {"csrf_token": session.csrf,
                                   "expires_in_s": round(self.sessions.expires_in(session)),
                                   "idle_timeout_s": self.sessions.idle_timeout})

    async def live(self, req: AdminRequest, session: ConsoleSession) -> AdminResponse:
        return json_response(200, {
            "traffic": self.traffic.view(),
            "workers": workers_view(self.master),
            "sessions": self._browser_sessions(),
            "console_sessions": len(self.sessions),
        })

    def _browser_sessions(self) -> dict[str, Any]:
        now = self.clock()
        if self._sessions_doc is None or now - self._sessions_doc[0] >= SESSIONS_EVERY:
            self._sessions_doc = (now, sessions_view(self._service("oauth2")))
        return self._sessions_doc[1]

    async def routes(self, req: AdminRequest, session: ConsoleSession) -> AdminResponse:
        doc = await self._admin_json("GET", "/admin/routes")
        routes = doc.get("routes", []) if doc else []
        shadowed = set(shadowed_routes(self.master.config))
        for route in routes:
            route["shadow"] = route.get("prefix") in shadowed
        return json_response(200, {"routes": routes})

    async def health(self, req: AdminRequest, session: ConsoleSession) -> AdminResponse:
        jwks = await self._admin_json("GET", "/admin/jwks")
        oauth2 = await self._admin_json("GET", "/admin/oauth2")
        return json_response(200, {
            "jwks": jwks.get("providers", []) if jwks else [],
            "introspection": oauth2.get("providers", []) if oauth2 else [],
            "logins": oauth2.get("logins", []) if oauth2 else [],
        })

    async def keys(self, req: AdminRequest, session: ConsoleSession) -> AdminResponse:
        name = (parse_qs(req.query).get("name") or [""])[0].strip()
        if name:  # one name (its keys, rotated ones included) or one key id
            resp = await self._admin_call("GET", "/admin/keys/show", query=urlencode({"name": name}))
            found = orjson.loads(resp.body).get("keys", []) if resp.status == 200 else []
            return json_response(200, {"available": True, "keys": found, "total": len(found),
                                       "search": name})
        in_table = getattr(self._service("keys"), "keys", 0)
        if in_table > MAX_KEYS_LISTED:
            return json_response(200, {"available": True, "keys": [], "total": in_table,
                                       "too_many": True})
        doc = await self._admin_json("GET", "/admin/keys", query="all=1")
        if doc is None:
            return json_response(200, {"available": False, "keys": [], "total": 0})
        keys = doc.get("keys", [])
        return json_response(200, {"available": True, "keys": keys[:MAX_KEYS_SHOWN],
                                   "total": len(keys), "generation": doc.get("generation")})

    async def generate_key(self, req: AdminRequest, session: ConsoleSession) -> AdminResponse:
        return await self._key_operation(req, "/admin/keys",
                                         ("name", "scopes", "quota", "expiry"))

    async def rotate_key(self, req: AdminRequest, session: ConsoleSession) -> AdminResponse:
        return await self._key_operation(req, "/admin/keys/rotate", ("name", "grace"))

    async def revoke_key(self, req: AdminRequest, session: ConsoleSession) -> AdminResponse:
        return await self._key_operation(req, "/admin/keys/revoke", ("name",))

    # ---- the admin API's own handlers ---------------------------------------------------------

    async def _key_operation(self, req: AdminRequest, path: str,
                             fields: tuple[str, ...]) -> AdminResponse:
        try:
            body = orjson.loads(req.body or b"{}")
        except orjson.JSONDecodeError:
            body = None
        if not isinstance(body, dict):
            return json_error(400, "invalid_request", "the body must be a JSON object")
        # Only the fields the console offers; empty inputs mean "the default".
        body = {k: v for k, v in body.items() if k in fields and v not in ("", [], None)}
        return await self._admin_call("POST", path, orjson.dumps(body))

    async def _admin_call(self, method: str, path: str, body: bytes = b"",
                          query: str = "") -> AdminResponse:
        try:
            endpoint = self.router.resolve(method, path)
        except NoRoute:
            return json_error(404, "not_available", f"{path} is not served by this gateway")
        request = AdminRequest(method, path, query, {}, body, secrets.token_hex(8), True)
        try:
            resp = await endpoint.handler(request)
        except ClientError as exc:
            return json_error(exc.status, exc.code, exc.description)
        # Re-encoded: the console's JSON escapes <, > and &.
        return json_response(resp.status, orjson.loads(resp.body))

    async def _admin_json(self, method: str, path: str, query: str = "") -> dict | None:
        resp = await self._admin_call(method, path, query=query)
        if resp.status != 200:
            return None
        return orjson.loads(resp.body)

