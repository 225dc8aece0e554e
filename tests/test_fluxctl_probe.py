"""`fluxctl auth verify --probe URL` against a real `fluxgate run`, a real identity provider
and a recording upstream (all on 127.0.0.1): every hostile probe is refused, none reaches the
upstream, a valid credential passes its sanity probe, and the judge fails what it must (a
public route, a server that answers 200 or 500 to anything, a 401 without its challenge)."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from fluxgate.auth.keyops import KeyOps
from fluxgate.cli import probe
from fluxgate.cli.fluxctl import main
from fluxgate.config import load_config
from tests.support.gateway import GatewayProcess, free_port, wait_until
from tests.support.idp import AUDIENCE, IdentityProvider
from tests.support.upstream import RecordingUpstream

CONFIG = """\
api_keys: {{query: api_key}}  # opted in: /either takes keys there, /metrics refuses them
upstreams:
  app: {{targets: ["{upstream}"], connect_timeout: 1s, read_timeout: 5s}}
routes:
  - route: /orders
    upstream: app
    websocket: false
    methods: [GET]
    middleware:
      - jwt: {{jwks_uri: "{jwks}", issuer: "{issuer}", audience: {audience},
               algorithms: [RS256]}}
      - quota: {{limit: 1000/s}}
  - route: /metrics
    upstream: app
    websocket: false
    middleware:
      - api_key: {{query: false}}
      - quota: {{limit: 1000/s, by: key}}
  - route: /either
    upstream: app
    websocket: false
    middleware:
      - any:
          - jwt: {{issuer: "{issuer}", audience: {audience}, algorithms: [RS256]}}
          - api_key: {{}}
      - quota: {{limit: 1000/s}}
  - route: /shared
    upstream: app
    websocket: false
    middleware:
      - jwt: {{secret: "probe-test-secret-0123456789abcdef", algorithms: [HS256],
               issuer: "{issuer}", audience: {audience}}}
      - quota: {{limit: 1000/s}}
  - route: /internal
    upstream: app
    websocket: false
    middleware:
      - ip_allow: [10.0.0.0/8]
      - api_key: {{query: false}}
      - quota: {{limit: 1000/s, by: key}}
  - route: /open
    upstream: app
    public: true
"""

JWT_PROBES = {
    "no_credential", "alg_none", "alg_None", "alg_NONE", "alg_nOnE", "alg_none_signed",
    "alg_None_signed", "alg_NONE_signed",
    "alg_nOnE_signed", "hs256_public_key_pem", "hs256_public_key_der", "forged_key_known_kid",
    "forged_key_new_kid", "expired", "not_yet_valid", "wrong_issuer", "wrong_audience",
    "jku_loopback", "x5u_loopback", "jwk_embedded", "x5c_embedded", "crit_unknown",
    "kid_path_traversal", "kid_dev_null_hmac", "two_parts", "four_parts", "five_parts",
    "padded_signature", "standard_base64", "non_canonical_base64", "oversized",
    "two_bearer_tokens", "token_in_query", "random_kid_flood",
}
KEY_PROBES = {
    "no_credential", "forged_key", "truncated_key", "garbage_key", "empty_key", "two_keys",
    "unknown_key_valid_tag", "key_in_refused_query", "forged_key_as_bearer",
}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """An identity provider, a recording upstream, a one-worker gateway and one API key."""
    idp = IdentityProvider(("RS256",)).start()
    upstream = RecordingUpstream().start()
    gw = GatewayProcess(tmp_path_factory.mktemp("probe"), CONFIG.format(
        upstream=upstream.url, jwks=idp.jwks_uri, issuer=idp.issuer, audience=AUDIENCE))
    try:
        gw.start()
        with KeyOps(load_config(str(gw.config_path))) as ops:
            key = ops.generate("prober")["key"]
        # The master publishes keys.db changes within a second: wait until the key works.
        assert wait_until(lambda: _status(gw, "/metrics", {"X-API-Key": key}) == 200, 5)
        yield idp, upstream, gw, key
    finally:
        gw.stop()
        upstream.stop()
        idp.stop()


def _status(gw: GatewayProcess, path: str, headers: dict[str, str]) -> int:
    target = probe.Target(gw.url, "GET", path)
    try:
        return target.send(probe.Request(list(headers.items()))).status or 0
    finally:
        target.close()


def fluxctl(capsys, config, *argv: str) -> tuple[int, str, str]:
    code = main(["--config", str(config), "auth", "verify", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def probe_json(capsys, gw: GatewayProcess, endpoint: str, *argv: str, url: str | None = None,
               mode: str = "strict") -> tuple[int, dict]:
    code, out, err = fluxctl(capsys, gw.config_path, "--endpoint", endpoint, "--mode", mode,
                             "--probe", url or gw.url, "--flood", "10", "--json", *argv)
    return code, json.loads(out)


def by_name(doc: dict) -> dict[str, dict]:
    return {row["name"]: row for row in doc["probe"]["probes"]}


def test_jwt_route_refuses_every_probe_and_the_upstream_sees_none(world, capsys):
    idp, upstream, gw, _ = world
    before = len(upstream.requests)
    code, doc = probe_json(capsys, gw, "/orders")
    rows = by_name(doc)
    assert code == 0, [r for r in rows.values() if r["result"] != "pass"]
    assert JWT_PROBES <= rows.keys()
    assert {r["result"] for r in rows.values()} == {"pass"}
    assert doc["result"] == "pass" and doc["credential"] is None
    assert doc["probe"]["summary"] == {"pass": len(rows), "fail": 0, "skip": 0,
                                       "requests": len(rows) - 1 + 10}
    assert rows["random_kid_flood"]["got"] == [
        {"status": 401, "error": "invalid_token", "failure": None, "count": 10}]
    assert rows["no_credential"]["expected"] == "401 missing_credentials"
    assert rows["two_parts"]["expected"] == "401 invalid_token or 400 bad_request"
    # The HS/RS confusion used the provider's real key, fetched from its jwks_uri.
    assert rows["hs256_public_key_pem"]["note"] is None
    assert "proves refusal, not the claim check" in rows["expired"]["note"]
    assert len(upstream.requests) == before


def test_a_valid_token_passes_its_sanity_probe_and_is_never_printed(world, capsys):
    idp, upstream, gw, _ = world
    token = idp.mint()
    before = len(upstream.requests)
    code, out, _ = fluxctl(capsys, gw.config_path, "--endpoint", "/orders", "--mode", "strict",
                           "--probe", gw.url, "--flood", "5", "--token", token)
    assert code == 0, out
    assert token not in out and token.split(".")[2] not in out
    lines = {line.split()[1]: line for line in out.splitlines() if line.startswith("  pass")}
    assert {"valid_token", "tampered_exp", "tampered_aud"} <= lines.keys()
    assert "2xx" in lines["valid_token"] and " 200 " in lines["valid_token"]
    assert "the valid token without its signature part" in lines["two_parts"]
    assert "probes: 37 passed, 0 failed, 0 skipped (41 requests)" in out and "result: pass (strict mode)" in out
    # Only the sanity probe was let through, and it carried the token given.
    reached = upstream.requests[before:]
    assert [r.header("Authorization") for r in reached] == [f"Bearer {token}"]


def test_api_key_route_with_a_valid_key(world, capsys):
    _, upstream, gw, key = world
    before = len(upstream.requests)
    code, doc = probe_json(capsys, gw, "/metrics", "--api-key", key)
    rows = by_name(doc)
    assert code == 0, rows
    assert KEY_PROBES | {"valid_key", "flipped_key"} == rows.keys()
    assert rows["valid_key"]["got"][0]["status"] == 200
    assert rows["key_in_refused_query"]["expected"] == "401 missing_credentials"
    assert key not in json.dumps(doc)
    assert len(upstream.requests) == before + 1  # the sanity probe alone


def test_any_route_gets_both_batteries_and_no_credential_once(world, capsys):
    _, upstream, gw, _ = world
    before = len(upstream.requests)
    code, doc = probe_json(capsys, gw, "/either")
    names = [row["name"] for row in doc["probe"]["probes"]]
    # Every probe passes, yet strict mode fails: findings count as they do without --probe.
    assert doc["probe"]["summary"]["fail"] == 0
    assert code == 1 and doc["findings"][0]["code"] == "api_key_in_query"
    assert names.count("no_credential") == 1
    # No jwks_uri: the keys came through the issuer's OIDC discovery.
    assert by_name(doc)["hs256_public_key_pem"]["note"] is None
    assert set(names) == JWT_PROBES | KEY_PROBES - {"key_in_refused_query"} | {
        "forged_key_in_query"}
    assert len(upstream.requests) == before


def test_a_shared_secret_route_and_an_ip_allowed_one(world, capsys):
    _, upstream, gw, _ = world
    before = len(upstream.requests)
    code, doc = probe_json(capsys, gw, "/shared", mode="audit")
    rows = by_name(doc)
    assert doc["probe"]["summary"]["fail"] == 0 and JWT_PROBES <= rows.keys()
    assert "the route verifies a shared secret" in rows["hs256_public_key_pem"]["note"]
    # The ip_allow refusal comes first: a pass, said to prove nothing about the key check.
    code, doc = probe_json(capsys, gw, "/internal")
    rows = by_name(doc)
    assert code == 0 and rows["forged_key"]["got"][0]["error"] == "ip_not_allowed"
    assert rows["forged_key"]["note"].startswith("refused by ip_allow before authentication")
    assert len(upstream.requests) == before


def test_admin_url_adds_the_jwks_fetches_the_battery_cost(world, capsys):
    idp, _, gw, _ = world
    code, doc = probe_json(capsys, gw, "/orders", "--admin-url",
                           f"http://127.0.0.1:{gw.admin_port}")
    flood = by_name(doc)["random_kid_flood"]
    assert code == 0 and flood["result"] == "pass"
    spent = flood["jwks_fetches"]["after"] - flood["jwks_fetches"]["before"]
    assert 0 <= spent <= probe.MAX_BATTERY_FETCHES
    assert f"JWKS fetches during the battery: {spent}" in flood["note"]


def test_a_public_route_fails_every_probe(world, capsys):
    _, _, gw, _ = world
    code, doc = probe_json(capsys, gw, "/open")
    rows = by_name(doc)
    assert code == 1 and doc["result"] == "fail"
    assert {r["result"] for r in rows.values()} == {"fail"}
    assert rows["alg_none"]["why"] == "let through to the upstream"
    assert rows["hs256_public_key_pem"]["note"].startswith("MACed with a generated key")
    audit, _ = probe_json(capsys, gw, "/open", mode="audit")
    assert audit == 0


class FakeGateway:
    """Answers every request with one canned response, counting them."""

    def __init__(self, status: int, body: bytes = b"{}", headers: dict | None = None) -> None:
        fake = self
        self.count = 0

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            wbufsize = 65536  # one write per response (flushed by http.server): no Nagle wait

            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802 - http.server's spelling
                fake.count += 1
                self.send_response(status)
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,),
                                       daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


@pytest.mark.parametrize(("status", "body", "headers", "why"), [
    (200, b"ok", {}, "let through to the upstream"),
    (500, b'{"error":"internal_error"}', {},
     "a server error for what a client sent (fail closed with a 4xx)"),
    (401, b'{"error":"invalid_token"}', {}, "a 401 without WWW-Authenticate: "
     'error="invalid_token" (RFC 6750 §3)'),
    (403, b'{"error":"insufficient_scope"}', {}, "expected 401 invalid_token"),
])
def test_the_judge_fails_a_gateway_that_does_not_refuse(world, capsys, status, body, headers, why):
    _, _, gw, _ = world
    fake = FakeGateway(status, body, headers)
    try:
        code, doc = probe_json(capsys, gw, "/orders", url=fake.url)
    finally:
        fake.stop()
    rows = by_name(doc)
    assert code == 1 and doc["result"] == "fail"
    assert rows["alg_none"]["result"] == "fail" and rows["alg_none"]["why"] == why
    assert fake.count == doc["probe"]["summary"]["requests"]


def test_a_401_with_the_right_challenge_but_a_2xx_sanity_is_judged_apart():
    challenge = 'Bearer realm="fluxgate", error="invalid_token"'
    refused = probe.Answer(401, "invalid_token", challenge)
    assert probe.judge(probe.INVALID_TOKEN, refused) is None
    assert probe.judge(probe.MALFORMED, probe.Answer(400, "bad_request")) is None
    assert probe.judge(probe.MALFORMED, probe.Answer(400, "invalid_token")) is not None
    assert probe.judge(probe.SANITY, refused) == "a valid credential was not let through"
    assert probe.judge(probe.SANITY, probe.Answer(204)) is None
    assert probe.judge(probe.MISSING, probe.Answer(401, "missing_credentials",
                                                   'Bearer realm="fluxgate"')) is None
    # An API-key refusal's challenge names the key's scheme, not a bearer token's error.
    assert probe.judge(probe.INVALID_KEY, probe.Answer(
        401, "invalid_key", 'ApiKey realm="fluxgate", header="X-API-Key", error="invalid_key"')) is None
    assert probe.judge(probe.INVALID_KEY, probe.Answer(401, "invalid_key", challenge)) is not None
    ip = probe.INVALID_KEY.or_ip_refused()
    assert probe.judge(ip, probe.Answer(403, "ip_not_allowed")) is None
    assert probe.judge(probe.INVALID_KEY, probe.Answer(403, "ip_not_allowed")) is not None
    assert probe.judge(probe.INVALID_KEY, probe.Answer(None, failure="timed out")) == \
        "no answer: timed out"


def test_cannot_probe_exits_2(world, capsys):
    _, _, gw, _ = world
    verify = ("--endpoint", "/orders", "--mode", "audit")
    started = time.monotonic()
    code, _, err = fluxctl(capsys, gw.config_path, *verify, "--probe",
                           f"http://127.0.0.1:{free_port()}")
    assert code == 2 and "cannot reach http://127.0.0.1:" in err
    assert time.monotonic() - started < 5  # refused at once: no retries
    code, _, err = fluxctl(capsys, gw.config_path, *verify, "--probe", "ftp://127.0.0.1/")
    assert code == 2 and "--probe must be the gateway's base URL" in err
    code, _, err = fluxctl(capsys, gw.config_path, "--endpoint", "/orders", "--method", "POST",
                           "--mode", "audit", "--probe", gw.url)
    assert code == 2 and "405 method_not_allowed" in err and "nothing to probe" in err
    code, _, err = fluxctl(capsys, gw.config_path, "--endpoint", "/nowhere", "--mode", "audit",
                           "--probe", gw.url)
    assert code == 2 and "no route" in err
    with pytest.raises(SystemExit) as usage:
        fluxctl(capsys, gw.config_path, *verify, "--probe", gw.url, "--flood", "0")
    assert usage.value.code == 2


def test_a_credential_that_cannot_be_a_header_exits_2_without_showing_it(world, capsys):
    # A token pasted with a line break (two files cat'ed together, a stray space) would make
    # http.client raise with the value in its message: refused first, and never echoed.
    idp, upstream, gw, key = world
    token = idp.mint()
    before = len(upstream.requests)
    for option, value in (("--token", f"{token}\n{token}"), ("--token", f"{token} x"),
                          ("--api-key", f"{key}\r\nX-Injected: 1")):
        code, out, err = fluxctl(capsys, gw.config_path, "--endpoint", "/orders", "--mode",
                                 "strict", "--probe", gw.url, option, value)
        assert code == 2 and f"{option} must be the credential alone" in err
        assert token not in out + err and key not in out + err
    assert len(upstream.requests) == before
    # And should a header value ever fail inside http.client, the probe reports no answer.
    target = probe.Target(gw.url, "GET", "/orders")
    try:
        answer = target.send(probe.Request([("Authorization", f"Bearer {token}\nX: 1")]))
    finally:
        target.close()
    assert answer.status is None and token not in (answer.failure or "")


def test_the_heading_names_a_path_prefixed_url_once():
    from fluxgate.cli.audit_commands import render_probe

    summary = {"pass": 0, "fail": 0, "skip": 0, "requests": 0}
    probed = {"url": "http://127.0.0.1:8080/gw/", "request": "GET /gw/orders",
              "probes": [], "summary": summary}
    assert render_probe(probed)[0] == "probe GET http://127.0.0.1:8080/gw/orders:"
