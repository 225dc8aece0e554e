"""`fluxctl auth verify --probe` on a browser-login route: a real `fluxgate run` on TLS,
django-oauth-toolkit as the OpenID Provider and a recording upstream. Every login probe
passes and none reaches the upstream; with a live session (``--token``) the cross-site
requests are refused for their Origin alone; a gateway weakened by config
(``allowed_origins`` naming the attacker) and a fake login that does everything wrong are
reported probe by probe."""

from __future__ import annotations

import json
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import trustme

from fluxgate.cli import probe
from fluxgate.cli.fluxctl import main
from fluxgate.cli.probe_login import EVIL_ORIGIN
from fluxgate.config import load_config_text
from tests.support.browserless import Browserless
from tests.support.certs import write_pair
from tests.support.gateway import GatewayProcess, free_port

pytestmark = pytest.mark.slow

SESSION_COOKIE = "__Host-fluxgate"
LOGIN_PROBES = {
    "no_credential", "navigation_redirect", "redirect_uri_ignores_host",
    "callback_unknown_state", "callback_tampered_state", "callback_without_transaction",
    "callback_replayed", "open_redirect", "cross_site_post", "cross_site_websocket",
}


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def trusted(ca, tmp_path, monkeypatch):
    """fluxctl's https client trusts the test CA (the default context reads SSL_CERT_FILE)."""
    pem = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(pem))
    monkeypatch.setenv("SSL_CERT_FILE", str(pem))
    return ca


@pytest.fixture
def login_gateway(tmp_path, ca, upstream, django_auth_server):
    started: list[GatewayProcess] = []

    def start(**options: object) -> tuple[GatewayProcess, str]:
        port = free_port()
        origin = f"https://127.0.0.1:{port}"
        client = django_auth_server.register_client([f"{origin}/oauth2/callback"],
                                                    [f"{origin}/app/signed-out"])
        extra = "".join(f"          {k}: {json.dumps(v)}\n" for k, v in options.items())
        config = (
            "routes:\n"
            f"  - route: /app\n    upstream: {upstream.url}\n    middleware:\n"
            "      - oauth2:\n"
            f"          issuer: {django_auth_server.issuer}\n"
            f"          client_id: {client.client_id}\n"
            f"          client_secret: '{client.client_secret}'\n"
            "          login: true\n"
            f"          redirect_uri: {origin}/oauth2/callback\n"
            f"          post_logout_redirect_uri: {origin}/app/signed-out\n"
            "          login_scopes: [openid, read]\n"
            f"{extra}"
        )
        cert, key = write_pair(ca.issue_cert("127.0.0.1"), tmp_path, f"gw{port}")
        directory = tmp_path / f"gw{port}"
        directory.mkdir()
        listen = f"{{address: '127.0.0.1:{port}', tls: {{cert: '{cert}', key: '{key}'}}}}"
        gw = GatewayProcess(directory, config, listen=listen)
        started.append(gw)
        gw.start()
        return gw, origin

    try:
        yield start
    finally:
        for gw in started:
            gw.stop()


def verify(capsys, gw: GatewayProcess, origin: str, *argv: str) -> tuple[int, dict, str]:
    code = main(["--config", str(gw.config_path), "auth", "verify", "--endpoint", "/app/page",
                 "--mode", "strict", "--probe", origin, "--json", *argv])
    out, err = capsys.readouterr()
    return code, json.loads(out), out + err


def rows(doc: dict) -> dict[str, dict]:
    return {row["name"]: row for row in doc["probe"]["probes"]}


def sign_in(ca: trustme.CA, origin: str, server) -> str:
    browser = Browserless(ca=ca)
    hops = browser.login(origin + "/app/page", "alice", server.password("alice"))
    assert hops[-1].status == 200, hops[-1].body
    session = browser.cookie(SESSION_COOKIE)
    assert session
    return session


def test_every_login_probe_passes_and_none_reaches_the_upstream(
        capsys, trusted, login_gateway, upstream):
    gw, origin = login_gateway(backchannel_logout_path="/.fluxgate/backchannel-logout")
    code, doc, _ = verify(capsys, gw, origin)
    found = rows(doc)
    assert set(found) == LOGIN_PROBES
    failing = {name: row["why"] for name, row in found.items() if row["result"] != "pass"}
    assert failing == {}
    assert upstream.requests == []  # nothing of the battery reached the application
    assert found["navigation_redirect"]["got"][0]["status"] == 302
    assert {g["status"] for g in found["callback_unknown_state"]["got"]} == {400}
    replay = found["callback_replayed"]["got"]
    assert [g["status"] for g in replay] == [403, 400]  # refused, then no login left
    assert code == 1  # strict: the findings (no quota...) fail it, not the probes


def test_with_a_live_session_the_origin_alone_is_refused(
        capsys, trusted, login_gateway, upstream, django_auth_server):
    gw, origin = login_gateway()
    session = sign_in(trusted, origin, django_auth_server)
    seen = len(upstream.requests)
    code, doc, out = verify(capsys, gw, origin, "--token", session)
    found = rows(doc)
    assert found["valid_session"]["result"] == "pass"
    for name in ("cross_site_post", "cross_site_websocket"):
        assert found[name]["result"] == "pass", found[name]
        assert {g["status"] for g in found[name]["got"]} == {403}
    # Only the sanity probe's request reached the upstream.
    assert len(upstream.requests) == seen + 1
    assert session not in out


def test_a_gateway_that_trusts_the_attackers_origin_is_reported(
        capsys, trusted, login_gateway, django_auth_server):
    gw, origin = login_gateway(allowed_origins=[EVIL_ORIGIN])
    session = sign_in(trusted, origin, django_auth_server)
    code, doc, _ = verify(capsys, gw, origin, "--token", session)
    found = rows(doc)
    assert code == 1
    assert found["cross_site_post"]["result"] == "fail"
    assert found["cross_site_websocket"]["result"] == "fail"
    assert found["navigation_redirect"]["result"] == "pass"


def test_without_a_gateway_the_probe_cannot_run(capsys, trusted, login_gateway):
    gw, origin = login_gateway()
    code = main(["--config", str(gw.config_path), "auth", "verify", "--endpoint", "/app",
                 "--mode", "audit", "--probe", f"https://127.0.0.1:{free_port()}", "--json"])
    out, _ = capsys.readouterr()
    assert code == 2 and "cannot reach" in json.loads(out)["error_description"]


# ---- a login that does everything wrong ----------------------------------------------------


class CarelessLogin(BaseHTTPRequestHandler):
    """Redirects scripts, builds redirect_uri from Host, plain PKCE, a fixed short state, a
    session for any callback, logout to wherever asked, and lets cross-site requests in."""

    def log_message(self, *args: object) -> None:
        pass

    def _reply(self, status: int, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_GET(self) -> None:  # noqa: N802 - http.server's spelling
        path, _, query = self.path.partition("?")
        params = dict(urllib.parse.parse_qsl(query))
        if self.headers.get("Upgrade"):
            self.send_response(101)
            self.send_header("Upgrade", "websocket")
            self.send_header("Connection", "Upgrade")
            self.end_headers()
            return
        if path == "/oauth2/callback":
            self._reply(200, {"Set-Cookie": f"{SESSION_COOKIE}=abc; Path=/"})
        elif path == "/.fluxgate/logout":
            self._reply(302, {"Location": params.get("next", "/")})
        else:
            redirect = f"http://{self.headers['Host']}/oauth2/callback"
            location = "http://127.0.0.1:9/authorize?" + urllib.parse.urlencode({
                "response_type": "code", "client_id": "web", "redirect_uri": redirect,
                "code_challenge": "x" * 43, "code_challenge_method": "plain",
                "state": "short", "nonce": "short", "scope": "openid"})
            self._reply(302, {"Location": location,
                              "Set-Cookie": "__Host-fluxgate-tx-1=t; Path=/"})

    def do_POST(self) -> None:  # noqa: N802
        if self.path.startswith("/.fluxgate/logout"):
            self._reply(303, {"Location": EVIL_ORIGIN})
        else:
            self._reply(200)


def test_the_judge_fails_a_careless_login():
    server = ThreadingHTTPServer(("127.0.0.1", 0), CarelessLogin)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    config = load_config_text(
        "routes:\n  - route: /app\n    upstream: http://127.0.0.1:9\n    middleware:\n"
        "      - oauth2: {issuer: 'http://127.0.0.1:9/o', client_id: web, client_secret: s,"
        f" login: true, redirect_uri: '{url}/oauth2/callback'}}\n")
    try:
        probes = probe.battery(config, config.routes[0])
        doc = probe.run(probe.Target(url, "GET", "/app/page"), probes)
    finally:
        server.shutdown()
        server.server_close()
    found = {row["name"]: row for row in doc["probes"]}
    assert set(found) == LOGIN_PROBES
    assert {n for n, r in found.items() if r["result"] == "fail"} == LOGIN_PROBES
    assert "redirect" in found["no_credential"]["why"]
    assert "S256" in found["navigation_redirect"]["why"]
    assert "Host" in found["redirect_uri_ignores_host"]["why"]
    assert "session cookie was set" in found["callback_unknown_state"]["why"]
    assert "off-site" in found["open_redirect"]["why"]
    assert found["cross_site_post"]["why"] == "let through"
