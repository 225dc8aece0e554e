"""`fluxctl auth verify` and `fluxctl routes explain` as scripts (python -m
fluxgate.cli.fluxctl): exit codes, --json, a key issued by `fluxctl keys generate`, and tokens
verified against a JWKS snapshot published by the master's JWKS service code."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys

import pytest

from fluxgate.config import load_config
from fluxgate.master.jwks import JwksService
from tests.support.gateway import REPO
from tests.support.idp import AUDIENCE, IdentityProvider

CONFIG = """\
state_dir: {state}
admin: {{token: audit-cli-token}}
routes:
  - route: /healthz
    upstream: http://127.0.0.1:9
    public: true
  - route: /metrics
    upstream: http://127.0.0.1:9
    websocket: false
    middleware:
      - api_key: {{scopes: [read:metrics], query: false}}
      - quota: {{limit: 100/s, by: key}}
  - route: /orders
    upstream: http://127.0.0.1:9
    websocket: false
    middleware:
      - jwt: {{jwks_uri: "{jwks}", issuer: "{issuer}", audience: {audience},
               algorithms: [RS256]}}
      - quota: {{limit: 100/s}}
scope_map:
  write:orders: ["POST /orders"]
"""


@pytest.fixture
def setup(tmp_path):
    idp = IdentityProvider(("RS256",)).start()
    path = tmp_path / "fluxgate.yaml"
    path.write_text(CONFIG.format(state=tmp_path / "state", jwks=idp.jwks_uri,
                                  issuer=idp.issuer, audience=AUDIENCE))
    yield path, idp
    idp.stop()


def fluxctl(config, *argv: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "fluxgate.cli.fluxctl", "--config", str(config), *argv],
        cwd=REPO, capture_output=True, text=True, timeout=20,
    )


def test_strict_fails_on_a_public_route_audit_does_not(setup):
    config, _ = setup
    strict = fluxctl(config, "auth", "verify", "--endpoint", "/healthz", "--mode", "strict")
    assert strict.returncode == 1, strict.stderr
    # The verdict says what failed, not only that something did.
    verdict = "result: fail: 2 warning findings: public_route, no_quota"
    assert strict.stdout.splitlines()[-1] == verdict + " (strict mode)", strict.stdout
    audit = fluxctl(config, "auth", "verify", "--endpoint", "/healthz", "--mode", "audit")
    assert audit.returncode == 0 and audit.stdout.splitlines()[-1] == verdict + " (audit mode)"
    clean = fluxctl(config, "auth", "verify", "--endpoint", "/metrics/x", "--mode", "strict")
    assert clean.returncode == 0, clean.stdout
    assert "findings: none" in clean.stdout
    assert clean.stdout.splitlines()[-1] == "result: pass (strict mode)"


def test_verdict_names_every_cause_by_severity():
    from fluxgate.cli.audit_commands import render_verify, what_failed

    doc = {
        "request": {"method": "GET", "path": "/x", "normalized": "/x"}, "route": None,
        "refusal": None, "mode": "audit", "credential": {
            "method": "api_key", "decision": "deny", "status": 401, "code": "invalid_key",
            "reason": "bad_tag"},
        "findings": [
            {"code": "no_quota", "severity": "warning", "message": "m"},
            {"code": "websocket_authenticated", "severity": "info", "message": "m"},
            {"code": "jwt_plain_http", "severity": "error", "message": "m"},
            {"code": "public_route", "severity": "warning", "message": "m"},
        ],
        "probe": {"probes": [{"name": "forged_key", "result": "fail"},
                             {"name": "empty_key", "result": "pass"},
                             {"name": "two_keys", "result": "fail"}]},
    }
    assert what_failed(doc) == [
        "1 error finding: jwt_plain_http", "2 warning findings: no_quota, public_route",
        "credential refused: 401 invalid_key", "2 probes failed: forged_key, two_keys",
    ]
    # Info findings alone pass.
    passing = {**doc, "credential": None, "findings": [doc["findings"][1]]}
    del passing["probe"]
    assert what_failed(passing) == []
    assert render_verify({**passing, "result": "pass", "failed": []})[-1] == (
        "result: pass (audit mode)")


def test_json_shape_and_command_failures(setup, tmp_path):
    config, _ = setup
    run = fluxctl(config, "auth", "verify", "--endpoint", "/healthz", "--mode", "strict", "--json")
    doc = json.loads(run.stdout)
    assert run.returncode == 1
    assert doc["mode"] == "strict" and doc["result"] == "fail" and doc["credential"] is None
    assert doc["route"] == {"index": 0, "prefix": "/healthz", "upstream": "http://127.0.0.1:9",
                            "methods": None, "public": True, "websocket": True,
                            "strip_prefix": False}
    assert {"code": "public_route", "severity": "warning"}.items() <= doc["findings"][0].items()

    explain = fluxctl(config, "routes", "explain", "POST", "/orders/./", "--scopes", "write:orders",
                      "--json")
    doc = json.loads(explain.stdout)
    assert explain.returncode == 0 and doc["request"]["normalized"] == "/orders/"
    assert doc["scopes"][0]["decision"]["authorized"]
    assert doc["scopes"][0]["covering"] == [{"scope": "write:orders", "rule": "POST /orders"}]
    text = fluxctl(config, "routes", "explain", "GET", "/nowhere")
    assert text.returncode == 0 and "404 no_route" in text.stdout

    # Usage and config errors, and an endpoint no route serves: exit 2, even in audit mode.
    assert fluxctl(config, "auth", "verify", "--endpoint", "/x", "--mode", "lax").returncode == 2
    nowhere = fluxctl(config, "auth", "verify", "--endpoint", "/nowhere", "--mode", "audit")
    assert nowhere.returncode == 2 and "404" in nowhere.stderr
    missing = fluxctl(tmp_path / "absent.yaml", "auth", "verify", "--endpoint", "/healthz",
                      "--mode", "audit")
    assert missing.returncode == 2 and "no config file" in missing.stderr


def test_api_key_allow_and_deny(setup):
    config, _ = setup
    # No key issued yet: no signing secret to check against.
    early = fluxctl(config, "auth", "verify", "--endpoint", "/metrics", "--mode", "audit",
                    "--api-key", "fg_" + "A" * 60)
    assert early.returncode == 2 and "no key has been issued" in early.stderr
    issued = fluxctl(config, "keys", "generate", "--name", "scraper", "--scope", "read:metrics",
                     "--quota", "10/m", "--json")
    key, key_id = json.loads(issued.stdout)["key"], json.loads(issued.stdout)["key_id"]

    ok = fluxctl(config, "auth", "verify", "--endpoint", "/metrics", "--mode", "strict",
                 "--api-key", key, "--json")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert key not in ok.stdout
    cred = json.loads(ok.stdout)["credential"]
    assert cred["decision"] == "allow" and cred["key_id"] == key_id
    assert cred["principal"] == {"subject": "scraper", "scopes": ["read:metrics"]}
    assert cred["quota"]["remaining"] == 10  # the check spends nothing
    again = json.loads(fluxctl(config, "auth", "verify", "--endpoint", "/metrics", "--mode",
                               "audit", "--api-key", key, "--json").stdout)
    assert again["credential"]["quota"]["used"] == 0

    forged = key[:20] + ("B" if key[20] != "B" else "C") + key[21:]
    bad = fluxctl(config, "auth", "verify", "--endpoint", "/metrics", "--mode", "strict",
                  "--api-key", forged)
    assert bad.returncode == 1 and "deny, 401 invalid_key" in bad.stdout and forged not in bad.stdout

    fluxctl(config, "keys", "revoke", "scraper")
    revoked = fluxctl(config, "auth", "verify", "--endpoint", "/metrics", "--mode", "audit",
                      "--api-key", key, "--json")
    cred = json.loads(revoked.stdout)["credential"]
    assert revoked.returncode == 0 and (cred["decision"], cred["reason"]) == ("deny", "revoked")

    wrong_route = fluxctl(config, "auth", "verify", "--endpoint", "/orders", "--mode", "audit",
                          "--api-key", key, "--json")
    assert json.loads(wrong_route.stdout)["credential"]["reason"] == "route_takes_no_api_key"


def test_token_allow_and_deny_against_the_published_snapshot(setup):
    config_path, idp = setup
    verify = ("auth", "verify", "--endpoint", "/orders", "--mode", "strict", "--json")

    none = fluxctl(config_path, *verify, "--token", idp.mint())
    assert none.returncode == 2 and "must be running and have fetched the keys" in none.stdout

    async def scenario():
        service = JwksService(type("Master", (), {"state_dir": str(config_path.parent / "state"),
                                                  "loop": None})())
        await service.start(load_config(str(config_path)))
        try:
            return [
                await asyncio.to_thread(fluxctl, config_path, *verify, "--token", token)
                for token in (idp.mint(scope="write:orders"), idp.mint(aud="other-api"),
                              idp.mint(exp=1000))
            ]
        finally:
            await service.stop()

    ok, wrong_aud, expired = asyncio.run(scenario())
    assert ok.returncode == 0, ok.stdout + ok.stderr
    cred = json.loads(ok.stdout)["credential"]
    assert cred["decision"] == "allow" and "generation 1" in cred["keys"]
    assert cred["principal"] == {"subject": "user-42", "scopes": ["write:orders"]}
    assert cred["scopes"][0]["covering"] == []  # GET /orders: no rule covers it
    for run, reason in ((wrong_aud, "wrong_audience"), (expired, "expired")):
        cred = json.loads(run.stdout)["credential"]
        assert run.returncode == 1
        assert (cred["decision"], cred["status"], cred["reason"]) == ("deny", 401, reason)
