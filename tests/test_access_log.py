"""The access log end to end: a real `fluxgate run`, both formats, one line per request."""

from __future__ import annotations

import http.client
import json
import re

import pytest

from fluxgate._core import Principal, RequestState
from fluxgate._proxy import Accounting, now
from fluxgate.config.loader import load_config_text
from fluxgate.errors import ConfigError
from fluxgate.proxy.access_log import AccessLog, access_log_settings
from tests.support.gateway import raw_request, wait_until

SECRET_QUERY = "api_key=fg_query_secret_value_123"
SECRET_BEARER = "Bearer eyJsecret.token.value"
SECRET_KEY = "fg_not_a_real_key_but_secret_456"
ONE_ROUTE = "routes: [{route: /, upstream: 'http://127.0.0.1:9', public: true}]\n"


def config(upstream_url: str, log_setting: str) -> str:
    return (
        f"access_log: {log_setting}\n"
        "routes:\n"
        f"  - route: /pub\n    upstream: {upstream_url}\n    public: true\n"
        f"  - route: /keyed\n    upstream: {upstream_url}\n    middleware:\n      - api_key: {{}}\n"
    )


def request(port: int, method: str, target: str, headers: dict[str, str] | None = None) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request(method, target, headers=headers or {})
        resp = conn.getresponse()
        resp.read()
        return resp.status
    finally:
        conn.close()


def drive(gw) -> None:
    """Six requests, each its own line: 200 (with a query and an Authorization header),
    404, 401 without a key, 401 with a bogus key, 400 malformed, 405."""
    assert request(gw.port, "GET", f"/pub/a?{SECRET_QUERY}",
                   {"Authorization": SECRET_BEARER, "X-Request-Id": "req-public-1"}) == 200
    assert request(gw.port, "GET", "/nowhere?x=1") == 404
    assert request(gw.port, "GET", "/keyed/x") == 401
    assert request(gw.port, "GET", "/keyed/x", {"X-API-Key": SECRET_KEY}) == 401
    reply = raw_request(gw.port, b"GET /pub/a HTTP/1.1\r\nHost: a\r\nContent-Length: x\r\n\r\n")
    assert reply.startswith(b"HTTP/1.1 400")
    assert request(gw.port, "POST", "/pub/b?" + SECRET_QUERY, {"Content-Length": "0"}) == 200


def lines_of(path, count: int) -> list[str]:
    assert wait_until(lambda: path.exists() and path.read_text().count("\n") >= count, 5), (
        path.read_text() if path.exists() else "no log file")
    text = path.read_text()
    for secret in (SECRET_QUERY, "fg_query_secret", SECRET_BEARER, "eyJsecret", SECRET_KEY):
        assert secret not in text
    return text.splitlines()


def test_json_lines_hold_every_field(gateway_factory, upstream, tmp_path):
    path = tmp_path / "access.jsonl"
    gw = gateway_factory(config(upstream.url, f"{{format: json, path: {path}}}"))
    drive(gw)
    lines = lines_of(path, 6)
    assert len(lines) == 6
    entries = [json.loads(line) for line in lines]
    ok, missing_route, no_key, bad_key, malformed, post = entries
    for e in entries:
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", e["time"])
        assert e["client"] == "127.0.0.1"
        assert e["duration_ms"] >= 0 and e["bytes"] > 0 and e["request_id"]
        assert "?" not in (e["path"] or "")
    assert ok | {"time": None, "duration_ms": None, "upstream_ms": None, "bytes": None} == {
        "time": None, "client": "127.0.0.1", "method": "GET", "path": "/pub/a",
        "route": "/pub", "status": 200, "duration_ms": None, "upstream_ms": None,
        "bytes": None, "request_id": "req-public-1", "principal": None, "reason": None,
    }
    assert 0 <= ok["upstream_ms"] <= ok["duration_ms"]
    assert (missing_route["status"], missing_route["route"], missing_route["reason"]) == (
        404, None, "no_route")
    assert missing_route["upstream_ms"] is None
    assert (no_key["status"], no_key["route"], no_key["reason"]) == (
        401, "/keyed", "missing_credentials")
    assert bad_key["status"] == 401 and bad_key["reason"] not in (None, "invalid_key")
    assert (malformed["status"], malformed["reason"], malformed["client"]) == (
        400, "bad_request", "127.0.0.1")
    assert (post["method"], post["path"], post["status"]) == ("POST", "/pub/b", 200)


def test_text_lines_are_one_readable_line_each(gateway_factory, upstream, tmp_path):
    path = tmp_path / "access.log"
    gw = gateway_factory(config(upstream.url, str(path)))
    drive(gw)
    lines = lines_of(path, 6)
    assert len(lines) == 6
    ok, missing_route, no_key, bad_key, malformed, post = lines
    assert re.fullmatch(
        r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z 127\.0\.0\.1 GET /pub/a 200 [\d.]+ms "
        r"upstream=[\d.]+ms bytes=\d+ route=/pub id=req-public-1 principal=- reason=-", ok)
    assert " GET /nowhere 404 " in missing_route and "upstream=- " in missing_route
    assert missing_route.endswith(" route=- id=" + missing_route.split(" id=")[1])
    assert "reason=no_route" in missing_route
    assert " 401 " in no_key and no_key.endswith("reason=missing_credentials")
    assert " 401 " in bad_key and "route=/keyed" in bad_key
    assert " 127.0.0.1 " in malformed and " 400 " in malformed
    assert malformed.endswith("reason=bad_request")
    assert " POST /pub/b 200 " in post


def test_a_valid_key_logs_its_name_never_the_key(gateway_factory, upstream, tmp_path):
    path = tmp_path / "access.jsonl"
    gw = gateway_factory(config(upstream.url, f"{{format: json, path: {path}}}"))
    created = admin_post(gw, "/admin/keys", {"name": "billing-svc"})
    key = created["key"]
    # The workers pick the new key up from the shared table within a sweep or two.
    assert wait_until(lambda: request(gw.port, "GET", "/keyed/x", {"X-API-Key": key}) == 200, 5)
    assert wait_until(lambda: '"status":200' in path.read_text(), 5)
    entry = json.loads(lines_of(path, 1)[-1])
    assert entry["principal"] == "api_key:billing-svc"
    assert entry["status"] == 200 and entry["reason"] is None
    assert key not in path.read_text()


def admin_post(gw, path: str, body: dict) -> dict:
    conn = http.client.HTTPConnection("127.0.0.1", gw.admin_port, timeout=10)
    try:
        conn.request("POST", path, body=json.dumps(body), headers={
            "Authorization": "Bearer test-admin-token", "Content-Type": "application/json"})
        resp = conn.getresponse()
        data = json.loads(resp.read())
        assert resp.status in (200, 201), data
        return data
    finally:
        conn.close()


@pytest.mark.parametrize(("text", "expected"), [
    ('access_log: "-"\n', ("text", "-")),
    ("access_log: null\n", ("text", None)),
    ("access_log: /var/log/fg.log\n", ("text", "/var/log/fg.log")),
    ("access_log: {format: json}\n", ("json", "-")),
    ("access_log: {format: json, path: /tmp/a.jsonl}\n", ("json", "/tmp/a.jsonl")),
    ("access_log: {format: text, path: null}\n", ("text", None)),
    ("", ("text", "-")),
])
def test_both_spellings_of_the_key(text, expected):
    config = load_config_text(text + ONE_ROUTE)
    assert access_log_settings(config.access_log) == expected


@pytest.mark.parametrize("text", [
    "access_log: {format: xml}\n",
    "access_log: {format: json, file: a.log}\n",
    "access_log: 3\n",
])
def test_a_wrong_access_log_is_a_config_error(text):
    with pytest.raises(ConfigError, match="access_log"):
        load_config_text(text + ONE_ROUTE)


def line_for(log: AccessLog, *, method=b"GET", path=b"/x", request_id=b"rid", status=200,
             client="127.0.0.1", refusal=None, principal=None, sent=0) -> None:
    """One request as the worker counts it (fluxgate/_proxy.pyx, Accounting.record)."""
    req = RequestState(now() - 0.0015)
    req.method, req.path, req.request_id, req.status = method, path, request_id, status
    req.client_ip, req.refusal, req.principal = client, refusal, principal
    Accounting(None, log).record(req, sent)


HOSTILE = [b"/a b", b"/a\r\nforged 200 line", b"/caf\xc3\xa9", b'/q"uote', b"/\x00\x7f\\",
           b"/a?k=secret", b"/" + bytes(range(256))]


@pytest.mark.parametrize("path", HOSTILE)
def test_hostile_text_stays_on_one_line(tmp_path, path):
    log = AccessLog(str(tmp_path / "a.log"))
    line_for(log, method=b"G\nET", path=path, request_id=b"id\r\n", status=400,
             client="::1", refusal="bad_request")
    log.close()
    text = (tmp_path / "a.log").read_bytes()
    assert text.count(b"\n") == 1 and text.endswith(b"\n") and b"\r" not in text
    assert b"secret" not in text and text.isascii()
    fields = text.split(b" ")
    assert len(fields) == 12  # every field one token
    assert fields[1:3] == [b"::1", b"G\\x0aET"]
    assert fields[3].startswith(b"/") and b"\x00" not in text
    assert text.endswith(b" reason=bad_request\n")


@pytest.mark.parametrize("path", HOSTILE)
def test_json_lines_escape_and_drop_the_query(tmp_path, path):
    log = AccessLog(load_config_text(
        f"access_log: {{format: json, path: {tmp_path}/a.jsonl}}\n" + ONE_ROUTE).access_log)
    line_for(log, method=b"G\"ET", path=path, sent=12, principal=Principal(
        "key:k", "api_key", 'k"\\', frozenset(), key_name='k"\\'))
    log.close()
    text = (tmp_path / "a.jsonl").read_bytes()
    assert text.count(b"\n") == 1 and b"secret" not in text
    entry = json.loads(text)
    assert entry["path"] == path.partition(b"?")[0].decode("latin-1")
    assert entry["method"] == 'G"ET' and entry["principal"] == 'api_key:k"\\'
    assert entry["bytes"] == 12 and entry["upstream_ms"] is None and entry["route"] is None
    assert entry["duration_ms"] >= 1.5
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", entry["time"])


def test_a_reason_that_is_not_a_string_is_logged_not_raised(tmp_path):
    log = AccessLog(str(tmp_path / "a.log"))
    line_for(log, refusal=404, client="")  # a middleware's own error type may carry anything
    log.close()
    text = (tmp_path / "a.log").read_text()
    assert text.endswith(" reason=404\n") and " - GET /x " in text
