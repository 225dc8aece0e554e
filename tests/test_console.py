"""The console's HTTP surface (fluxgate/console): sign-in with the admin token, the session
cookie, its expiry, CSRF and Origin checks on state-changing calls, the Host check, and JSON
that carries hostile names as inert text. An AdminServer on its own loop, as the master runs
it, with a fake master whose clock the tests move."""

from __future__ import annotations

import asyncio
import html
import http.client
import json
import threading
from types import SimpleNamespace

import pytest
import uvloop

from fluxgate.console.app import MESSAGES, Console
from fluxgate.console.sessions import ConsoleSessions
from fluxgate.console.traffic import TrafficSampler, quantile
from fluxgate.errors import ClientError
from fluxgate.master.admin import AdminResponse, AdminRouter, AdminServer
from fluxgate.master.sockets import bind_admin, sock_address
from fluxgate.metrics import BUCKETS, MetricsTable, RouteSlots, RouteStats

TOKEN = "console-test-admin-token-0123456789"
HOSTILE_NAME = "<img src=x onerror=alert(1)>"
HOSTILE_ROUTE = "/<script>alert(1)</script>"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class BadKey(ClientError):
    status, code = 400, "invalid_request"


class KeyNotFound(ClientError):
    status, code = 404, "not_found"


class FakeMaster:
    """What the console reads of the arbiter, with hostile names in every place a name shows."""

    def __init__(self, tmp_path) -> None:
        self.metrics = MetricsTable.create(str(tmp_path / "metrics.bin"), capacity=8)
        self.route_slots = RouteSlots(self.metrics)
        self.slots = self.route_slots.assign(["/api", HOSTILE_ROUTE])
        self.services: list = []
        self.workers: dict = {}
        self.restarts = 0
        self.current = None
        self.config = SimpleNamespace(routes=[SimpleNamespace(
            route=HOSTILE_ROUTE, upstream="http://127.0.0.1:9/x", methods=None,
            public=True, websocket=False, middleware=[], shadow=True)])
        self.admin: AdminServer | None = None
        self.key_calls: list[tuple[str, bytes]] = []


class Harness:
    def __init__(self, tmp_path) -> None:
        self.clock = Clock()
        self.master = FakeMaster(tmp_path)
        router = AdminRouter()
        self._fake_key_api(router)
        self.console = Console(router, self.master, clock=self.clock,
                               sessions=ConsoleSessions(clock=self.clock))
        self.console.mount()
        self.server = AdminServer(router, TOKEN)
        self.master.admin = self.server
        self.sock = bind_admin("127.0.0.1:0")
        self.port = sock_address(self.sock)[1]
        self.origin = f"http://127.0.0.1:{self.port}"
        self.loop = uvloop.new_event_loop()
        self.errors: list[dict] = []
        self.loop.set_exception_handler(lambda loop, ctx: self.errors.append(ctx))
        started = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(self.loop)
            self.loop.run_until_complete(self.server.start(self.sock))
            started.set()
            self.loop.run_forever()

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()
        assert started.wait(5)

    def _fake_key_api(self, router: AdminRouter) -> None:
        master = self.master if hasattr(self, "master") else None

        async def list_keys(req):
            return AdminResponse.json(200, {"generation": 3, "keys": [{
                "name": HOSTILE_NAME, "key_id": "abc", "status": "active",
                "scopes": ["<script>alert(1)</script>"], "quota": None}]})

        async def create(req):
            master.key_calls.append((req.path, req.body))
            name = json.loads(req.body).get("name")
            if name == HOSTILE_NAME:
                raise BadKey(f"invalid key name {name!r}")
            return AdminResponse.json(201, {"key": "fg_secret", "name": name, "key_id": "k1"})

        async def revoke(req):
            master.key_calls.append((req.path, req.body))
            return AdminResponse.json(200, {"revoked": [{"name": "n", "key_id": "k1"}]})

        async def routes(req):
            return AdminResponse.json(200, {"routes": [{
                "prefix": HOSTILE_ROUTE, "upstream": "http://127.0.0.1:9/x", "methods": None,
                "public": True, "chain": [{"kind": "jwt", "summary": "jwt <b>"}]}]})

        async def jwks(req):
            return AdminResponse.json(200, {"providers": [{
                "source": "https://idp/<jwks>", "kids": ["a"], "expired": False,
                "last_success": 1.0, "failures": 0, "last_error": None}]})

        async def oauth2(req):
            return AdminResponse.json(200, {
                "providers": [{"provider": "as", "breaker": "open", "calls": {"ok": 2},
                               "last_error": "<b>timeout</b>"}],
                "logins": [{"provider": "corp", "discovered": False,
                            "discovery_error": "refused", "counts": {}}]})

        async def show(req):
            name = dict(p.split("=", 1) for p in req.query.split("&"))["name"]
            if name != "abc":
                raise KeyNotFound(f"no key named {name}")
            return AdminResponse.json(200, {"keys": [{"name": HOSTILE_NAME, "key_id": "abc"}]})

        router.add("GET", "/admin/keys/show", show)
        router.add("GET", "/admin/jwks", jwks)
        router.add("GET", "/admin/oauth2", oauth2)
        router.add("GET", "/admin/routes", routes)
        router.add("GET", "/admin/keys", list_keys)
        router.add("POST", "/admin/keys", create)
        router.add("POST", "/admin/keys/revoke", revoke)

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self.server.close(), self.loop).result(5)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()
        self.master.metrics.close()

    def request(self, method: str, path: str, *, body: bytes | str = b"",
                headers: dict | None = None, host: str | None = None):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
        h = {"Host": host or f"127.0.0.1:{self.port}", **(headers or {})}
        conn.request(method, path, body=body, headers=h)
        resp = conn.getresponse()
        data = resp.read()
        conn.close()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, data

    def sign_in(self, token: str = TOKEN, origin: str | None = None):
        return self.request("POST", "/console/login", body=f"token={token}", headers={
            "Origin": origin or self.origin,
            "Content-Type": "application/x-www-form-urlencoded"})

    def session(self) -> tuple[str, str]:
        """Sign in; returns (Cookie header value, CSRF token)."""
        status, headers, _ = self.sign_in()
        assert status == 303, status
        cookie = headers["set-cookie"].split(";")[0]
        status, _, body = self.request("GET", "/console/api/session", headers={"Cookie": cookie})
        assert status == 200
        return cookie, json.loads(body)["csrf_token"]

    def post(self, path: str, cookie: str, csrf: str | None, payload: dict,
             origin: str | None = "self"):
        headers = {"Cookie": cookie, "Content-Type": "application/json"}
        if csrf is not None:
            headers["X-CSRF-Token"] = csrf
        if origin is not None:
            headers["Origin"] = self.origin if origin == "self" else origin
        return self.request("POST", path, body=json.dumps(payload), headers=headers)


@pytest.fixture
def console(tmp_path):
    h = Harness(tmp_path)
    try:
        yield h
    finally:
        h.close()
    assert not h.errors, h.errors


# ---- sign-in ------------------------------------------------------------------------------


def test_the_right_token_opens_a_session_cookie_that_scripts_cannot_read(console):
    status, headers, body = console.sign_in()
    assert status == 303 and headers["location"] == "/console"
    cookie = headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/console" in cookie
    assert "Secure" not in cookie  # the admin listener is plain HTTP on loopback
    assert TOKEN not in cookie and TOKEN.encode() not in body
    status, headers, body = console.request("GET", "/console",
                                            headers={"Cookie": cookie.split(";")[0]})
    assert status == 200 and b'src="/console/static/console.js"' in body
    assert "script-src 'self'" in headers["content-security-policy"]
    assert "'unsafe-inline'" not in headers["content-security-policy"]
    assert headers["x-frame-options"] == "DENY" and headers["x-content-type-options"] == "nosniff"


@pytest.mark.parametrize("token", ["wrong", "", TOKEN + "x", TOKEN[:-1], " ", "%00" + TOKEN])
def test_a_wrong_token_gets_the_sign_in_page_with_a_401_and_no_cookie(console, token):
    status, headers, body = console.sign_in(token)
    assert status == 401
    assert "set-cookie" not in headers
    assert html.escape(MESSAGES["invalid_token"]).encode() in body and b'name="token"' in body


def test_the_token_is_never_accepted_in_the_url(console):
    status, headers, _ = console.request("GET", f"/console?token={TOKEN}")
    assert status == 401 and "set-cookie" not in headers
    status, headers, _ = console.request(
        "POST", f"/console/login?token={TOKEN}", headers={"Origin": console.origin})
    assert status == 401 and "set-cookie" not in headers


def test_a_bearer_token_does_not_open_the_console(console):
    status, _, body = console.request("GET", "/console/api/live",
                                      headers={"Authorization": f"Bearer {TOKEN}"})
    assert status == 401 and json.loads(body)["error"] == "session_required"


@pytest.mark.parametrize("origin", [None, "http://evil.example", "null",
                                    "http://127.0.0.1:1", "https://127.0.0.1:{port}"])
def test_a_sign_in_from_another_origin_is_refused(console, origin):
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    if origin is not None:
        headers["Origin"] = origin.format(port=console.port)
    status, got, body = console.request("POST", "/console/login", body=f"token={TOKEN}",
                                        headers=headers)
    assert status == 403 and "set-cookie" not in got
    assert html.escape(MESSAGES["origin_mismatch"]).encode() in body


@pytest.mark.parametrize("host", ["evil.example:{port}", "127.0.0.1.nip.io:{port}", "",
                                  "10.0.0.1:{port}", "user@127.0.0.1:{port}", "[::1:{port}"])
def test_a_host_that_is_not_loopback_is_refused_dns_rebinding(console, host):
    host = host.format(port=console.port)
    status, _, body = console.request("GET", "/console/api/live", host=host or " ")
    assert status == 403 and json.loads(body)["error"] == "host_not_allowed"
    status, headers, _ = console.request(
        "POST", "/console/login", body=f"token={TOKEN}", host=host or " ",
        headers={"Origin": f"http://{host}", "Content-Type": "application/x-www-form-urlencoded"})
    assert status == 403 and "set-cookie" not in headers


def test_localhost_and_ipv6_loopback_names_are_accepted(console):
    for host in (f"localhost:{console.port}", f"[::1]:{console.port}"):
        status, headers, _ = console.request(
            "POST", "/console/login", body=f"token={TOKEN}", host=host,
            headers={"Origin": f"http://{host}",
                     "Content-Type": "application/x-www-form-urlencoded"})
        assert status == 303, host


def test_sign_in_failures_are_throttled(console):
    for _ in range(20):
        assert console.sign_in("wrong")[0] == 401
    assert console.sign_in(TOKEN)[0] == 429  # even the right token waits
    console.clock.now += 61
    assert console.sign_in(TOKEN)[0] == 303


# ---- the session --------------------------------------------------------------------------


def test_the_api_without_a_session_answers_401_json(console):
    for path in ("/console/api/live", "/console/api/keys", "/console/api/session"):
        status, headers, body = console.request("GET", path)
        assert status == 401 and headers["content-type"] == "application/json"
        assert json.loads(body)["error"] == "session_required"
    status, _, body = console.request("GET", "/console/api/live",
                                      headers={"Cookie": "fluxgate_console=" + "A" * 43})
    assert status == 401 and json.loads(body)["error"] == "session_expired"


def test_an_idle_session_expires_and_navigation_shows_the_sign_in_page(console):
    cookie, _ = console.session()
    console.clock.now += 29 * 60
    assert console.request("GET", "/console/api/live", headers={"Cookie": cookie})[0] == 200
    console.clock.now += 29 * 60  # used a minute ago: still alive
    assert console.request("GET", "/console/api/live", headers={"Cookie": cookie})[0] == 200
    console.clock.now += 30 * 60
    status, _, body = console.request("GET", "/console/api/live", headers={"Cookie": cookie})
    assert status == 401 and json.loads(body)["error"] == "session_expired"
    status, headers, body = console.request("GET", "/console", headers={"Cookie": cookie})
    assert status == 401 and headers["content-type"].startswith("text/html")
    assert html.escape(MESSAGES["session_expired"]).encode() in body


def test_a_session_ends_after_eight_hours_however_busy(console):
    cookie, _ = console.session()
    for _ in range(16):
        console.clock.now += 29 * 60
        assert console.request("GET", "/console/api/live", headers={"Cookie": cookie})[0] == 200
    console.clock.now += 29 * 60  # 8 h 13 min after sign-in
    assert console.request("GET", "/console/api/live", headers={"Cookie": cookie})[0] == 401


def test_changing_the_admin_token_ends_the_sessions_opened_with_the_old_one(console):
    cookie, _ = console.session()
    console.server.set_token("a-new-admin-token-after-a-leak-000")
    assert console.request("GET", "/console/api/live", headers={"Cookie": cookie})[0] == 401


def test_sign_out_ends_the_session_on_the_server(console):
    cookie, csrf = console.session()
    status, headers, _ = console.post("/console/logout", cookie, csrf, {})
    assert status == 200 and "Max-Age=0" in headers["set-cookie"]
    assert console.request("GET", "/console/api/live", headers={"Cookie": cookie})[0] == 401


# ---- CSRF and Origin on state-changing calls -------------------------------------------------


@pytest.mark.parametrize("csrf", [None, "", "forged", "A" * 43])
def test_a_state_changing_call_without_this_sessions_csrf_token_is_refused(console, csrf):
    cookie, _ = console.session()
    status, _, body = console.post("/console/api/keys/revoke", cookie, csrf, {"name": "n"})
    assert status == 403 and json.loads(body)["error"] == "csrf_token_invalid"
    assert console.master.key_calls == []


def test_another_sessions_csrf_token_is_refused(console):
    cookie, _ = console.session()
    _, other_csrf = console.session()
    status, _, _ = console.post("/console/api/keys/revoke", cookie, other_csrf, {"name": "n"})
    assert status == 403 and console.master.key_calls == []


@pytest.mark.parametrize("origin", [None, "http://evil.example", "null",
                                    "http://127.0.0.1:1"])
def test_a_state_changing_call_from_another_origin_is_refused(console, origin):
    cookie, csrf = console.session()
    status, _, body = console.post("/console/api/keys/revoke", cookie, csrf, {"name": "n"},
                                   origin=origin)
    assert status == 403 and json.loads(body)["error"] == "origin_mismatch"
    assert console.master.key_calls == []


def test_a_cross_site_fetch_is_refused_by_its_fetch_metadata(console):
    cookie, csrf = console.session()
    status, _, _ = console.request("POST", "/console/api/keys/revoke", body="{}", headers={
        "Cookie": cookie, "X-CSRF-Token": csrf, "Origin": console.origin,
        "Sec-Fetch-Site": "same-site"})
    assert status == 403 and console.master.key_calls == []


def test_key_operations_go_through_the_admin_api_and_show_the_key_once(console):
    cookie, csrf = console.session()
    status, _, body = console.post("/console/api/keys", cookie, csrf,
                                   {"name": "alice", "scopes": ["read"], "quota": "",
                                    "routes": ["/admin"], "allow_ips": ["0.0.0.0/0"]})
    assert status == 201 and json.loads(body)["key"] == "fg_secret"
    # Only the fields the console offers reach the key API; empty ones are dropped.
    assert json.loads(console.master.key_calls[-1][1]) == {"name": "alice", "scopes": ["read"]}
    status, _, body = console.post("/console/api/keys/revoke", cookie, csrf, {"name": "k1"})
    assert status == 200 and json.loads(body)["revoked"][0]["key_id"] == "k1"
    status, _, body = console.request("GET", "/console/api/keys", headers={"Cookie": cookie})
    assert b"fg_secret" not in body  # a listing never holds a key


@pytest.mark.parametrize("body", [b"not json", b"[]", b'"x"', b"\xff\xfe"])
def test_a_malformed_body_is_a_400_not_a_500(console, body):
    cookie, csrf = console.session()
    status, _, got = console.request("POST", "/console/api/keys", body=body, headers={
        "Cookie": cookie, "X-CSRF-Token": csrf, "Origin": console.origin})
    assert status == 400 and json.loads(got)["error"] == "invalid_request"


# ---- escaping ---------------------------------------------------------------------------------


def test_hostile_names_travel_as_inert_json_text(console):
    cookie, csrf = console.session()
    responses = [
        console.request("GET", "/console/api/keys", headers={"Cookie": cookie}),
        console.request("GET", "/console/api/routes", headers={"Cookie": cookie}),
        console.request("GET", "/console/api/live", headers={"Cookie": cookie}),
        console.post("/console/api/keys", cookie, csrf, {"name": HOSTILE_NAME}),
    ]
    for _status, headers, body in responses:
        assert headers["content-type"] == "application/json"
        assert headers["x-content-type-options"] == "nosniff"
        assert b"<" not in body and b">" not in body and b"&" not in body.replace(b"\\u0026", b"")
    keys = json.loads(responses[0][2])["keys"]
    assert keys[0]["name"] == HOSTILE_NAME
    assert keys[0]["scopes"] == ["<script>alert(1)</script>"]
    routes = json.loads(responses[1][2])["routes"]
    assert routes[0]["prefix"] == HOSTILE_ROUTE and routes[0]["chain"][0]["summary"] == "jwt <b>"
    assert routes[0]["shadow"] is True  # from the config in force
    live = json.loads(responses[2][2])
    assert HOSTILE_ROUTE in [r["route"] for r in live["traffic"]["routes"]]
    status, _, body = responses[3]
    assert status == 400 and HOSTILE_NAME in json.loads(body)["error_description"]


def test_the_page_and_its_script_write_no_html_from_data():
    from importlib import resources

    static = resources.files("fluxgate.console") / "static"
    script = (static / "console.js").read_text()
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(",
                 "new Function"):
        assert sink not in script, sink
    for page in ("console.html", "login.html"):
        text = (static / page).read_text()
        assert "<script>" not in text and " on" not in text.replace("\n", " ").split(">")[0]
        assert "http://" not in text and "https://" not in text  # nothing from elsewhere


# ---- traffic ----------------------------------------------------------------------------------


def _stats(statuses: dict[int, int], per_bucket: list[int]) -> RouteStats:
    cumulative, total = [], 0
    for n in per_bucket:
        total += n
        cumulative.append(total)
    return RouteStats(statuses, tuple(cumulative), 0)


def test_quantiles_interpolate_inside_the_bucket_like_prometheus():
    counts = [0] * (len(BUCKETS) + 1)
    counts[0] = 50  # <= 5 ms
    counts[2] = 50  # 10..25 ms
    cumulative = _stats({}, counts).buckets
    assert quantile(0.5, cumulative) == pytest.approx(0.005)
    assert quantile(0.75, cumulative) == pytest.approx(0.0175)
    assert quantile(0.99, cumulative) == pytest.approx(0.0247)
    assert quantile(0.5, (0,) * len(counts)) is None
    only_inf = [0] * len(BUCKETS) + [10]
    assert quantile(0.99, _stats({}, only_inf).buckets) == BUCKETS[-1]


def test_rates_come_from_successive_snapshots_and_survive_a_counter_reset():
    clock = Clock()
    zero = [0] * (len(BUCKETS) + 1)
    state = {"/a": _stats({}, zero)}
    shadow = {("/a", "jwt", "deny", "expired"): 3}
    sampler = TrafficSampler(lambda: (dict(state), {("jwt", "expired"): 0}, dict(shadow)),
                             clock=clock)
    first = sampler.view()
    assert first["total"]["rps"] is None and first["window_s"] is None
    busy = list(zero)
    busy[1] = 100
    state["/a"] = _stats({200: 90, 503: 10}, busy)
    shadow[("/a", "jwt", "deny", "expired")] = 5
    clock.now += 2.0
    view = sampler.view()
    assert view["shadow"] == [{"route": "/a", "method": "jwt", "decision": "deny",
                               "reason": "expired", "total": 5, "per_minute": 60.0}]
    assert view["auth_failures"][0]["per_minute"] == 0.0
    route = view["routes"][0]
    assert route["rps"] == 50.0 and route["recent"]["5xx"] == 10 and route["recent"]["2xx"] == 90
    assert 5.0 <= route["p50"] <= 10.0
    state["/a"] = _stats({}, zero)  # the slot went to another path and started again
    clock.now += 2.0
    assert sampler.view()["routes"][0]["rps"] == 0.0


def test_every_page_asset_is_package_data_so_a_wheel_ships_it():
    import tomllib
    from fnmatch import fnmatch
    from importlib import resources
    from pathlib import Path

    pyproject = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    globs = pyproject["tool"]["setuptools"]["package-data"]["fluxgate.console"]
    static = resources.files("fluxgate.console") / "static"
    names = [item.name for item in static.iterdir() if item.is_file()]
    assert {"console.html", "login.html", "console.js", "console.css"} <= set(names)
    for name in names:
        assert any(fnmatch(f"static/{name}", g) for g in globs), name


def test_browser_sessions_are_counted_by_provider(console):
    infos = [SimpleNamespace(provider="corp"), SimpleNamespace(provider="corp"),
             SimpleNamespace(provider="<b>x</b>")]
    store = SimpleNamespace(list=lambda: infos)
    console.master.services.append(SimpleNamespace(name="oauth2",
                                                   logins=SimpleNamespace(store=store)))
    cookie, _ = console.session()
    status, _, body = console.request("GET", "/console/api/live", headers={"Cookie": cookie})
    doc = json.loads(body)["sessions"]
    assert status == 200 and doc == {"configured": True, "active": 3,
                                     "by_provider": {"<b>x</b>": 1, "corp": 2}}


def test_health_passes_on_what_the_jwks_and_oauth2_services_report(console):
    cookie, _ = console.session()
    status, _, body = console.request("GET", "/console/api/health", headers={"Cookie": cookie})
    assert status == 200 and b"<" not in body
    doc = json.loads(body)
    assert doc["jwks"][0]["source"] == "https://idp/<jwks>"
    assert doc["introspection"][0]["breaker"] == "open"
    assert doc["introspection"][0]["last_error"] == "<b>timeout</b>"
    assert doc["logins"][0]["discovery_error"] == "refused"


def test_health_without_jwks_or_oauth2_services_is_empty_not_an_error(tmp_path):
    master = FakeMaster(tmp_path)
    try:
        console = Console(AdminRouter(), master)  # no /admin/jwks, no /admin/oauth2
        resp = asyncio.run(console.health(None, None))
        assert resp.status == 200
        assert json.loads(resp.body) == {"jwks": [], "introspection": [], "logins": []}
    finally:
        master.metrics.close()


def test_keys_are_looked_up_by_name_and_not_listed_when_there_are_too_many(console):
    cookie, _ = console.session()

    def keys(query: str = "") -> dict:
        status, _, body = console.request("GET", "/console/api/keys" + query,
                                          headers={"Cookie": cookie})
        assert status == 200
        return json.loads(body)

    assert keys()["keys"][0]["name"] == HOSTILE_NAME  # few keys: all listed
    found = keys("?name=abc")
    assert found["search"] == "abc" and [k["key_id"] for k in found["keys"]] == ["abc"]
    assert keys("?name=%3Cnone%3E")["keys"] == []  # unknown: an empty answer, not an error
    console.master.services.append(SimpleNamespace(name="keys", keys=1_000_000))
    many = keys()
    assert many["too_many"] and many["total"] == 1_000_000 and many["keys"] == []
    assert keys("?name=abc")["total"] == 1
