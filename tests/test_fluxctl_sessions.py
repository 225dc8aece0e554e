"""`fluxctl oauth2 sessions list|revoke` (fluxgate/cli/oauth2_commands.py) on the session
store of the config's state_dir (fluxgate/auth/sessions.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from fluxgate.auth.session_db import session_digest
from fluxgate.auth.sessions import SessionStore
from fluxgate.cli.fluxctl import main
from tests.support.gateway import REPO

CONFIG = """\
state_dir: {state}
admin: {{listen: "127.0.0.1:0", token: cli-test-token}}
routes:
  - route: /api
    upstream: http://127.0.0.1:9
    middleware:
      - api_key: {{}}
"""
TOKENS = {"access_token": "AT-cli-9d1e-secret", "refresh_token": "RT-cli-77aa-secret",
          "id_token": "id-token-cli-secret"}


@pytest.fixture
def state(tmp_path, monkeypatch):
    path = tmp_path / "fluxgate.yaml"
    path.write_text(CONFIG.format(state=tmp_path / "state"))
    monkeypatch.setenv("FLUXGATE_CONFIG", str(path))
    return str(tmp_path / "state")


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def run_json(capsys, *argv: str):
    code, out, err = run(capsys, *argv, "--json")
    assert code == 0, (out, err)
    return json.loads(out)


def sessions(state: str, *people: tuple[str, str]) -> dict[str, str]:
    """A session per (provider, sub); returns {sub@provider: session id}."""
    with SessionStore.open(state) as store:
        return {f"{sub}@{provider}": store.create(provider, sub, f"sid-{sub}", dict(TOKENS),
                                                  {"email": f"{sub}@example.test"},
                                                  None, idle=3600, absolute=86400)
                for provider, sub in people}


def live(state: str) -> list[str]:
    with SessionStore.open(state) as store:
        return sorted(f"{i.sub}@{i.provider}" for i in store.list())


def test_list_is_a_table_without_secrets(state, capsys):
    made = sessions(state, ("idp", "alice"), ("idp", "bob"), ("corp", "alice"))
    code, out, _ = run(capsys, "oauth2", "sessions", "list")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split()[:4] == ["SESSION", "PROVIDER", "SUB", "STATE"]
    assert len(lines) == 4 and all("active" in line for line in lines[1:])
    for session_id in made.values():
        assert session_digest(session_id).hex()[:12] in out
        assert session_id not in out
    for secret in [*TOKENS.values(), "example.test", "sid-alice"]:
        assert secret not in out
    code, out, _ = run(capsys, "oauth2", "sessions", "list", "--provider", "corp")
    assert code == 0 and len(out.splitlines()) == 2 and "corp" in out and "bob" not in out
    code, out, _ = run(capsys, "oauth2", "sessions", "list", "--sub", "bob")
    assert len(out.splitlines()) == 2 and "bob" in out


def test_list_json(state, capsys):
    made = sessions(state, ("idp", "alice"))
    doc = run_json(capsys, "oauth2", "sessions", "list")
    (entry,) = doc["sessions"]
    assert entry["sub"] == "alice" and entry["provider"] == "idp"
    assert entry["state"] == "active" and entry["ended_at"] is None
    assert entry["digest_prefix"] == session_digest(made["alice@idp"]).hex()[:12]
    assert entry["created_at"].endswith("Z")
    text = json.dumps(doc)
    assert all(secret not in text for secret in [*TOKENS.values(), made["alice@idp"]])


def test_revoke_by_id_prefix(state, capsys):
    made = sessions(state, ("idp", "alice"), ("idp", "bob"))
    prefix = session_digest(made["alice@idp"]).hex()[:12]
    code, out, _ = run(capsys, "oauth2", "sessions", "revoke", "--id-prefix", prefix)
    assert code == 0 and "Revoked 1 session" in out and "every worker" in out
    assert live(state) == ["bob@idp"]
    with SessionStore.open(state) as store:  # what a worker sees on the next request
        assert store.load(made["alice@idp"]) is None
        (ended,) = [i for i in store.list(include_ended=True) if i.sub == "alice"]
        assert ended.state == "revoked"
    code, out, _ = run(capsys, "oauth2", "sessions", "revoke", "--id-prefix", prefix)
    assert code == 0 and "nothing revoked" in out
    code, out, _ = run(capsys, "oauth2", "sessions", "list", "--all")
    assert "revoked" in out and "alice" in out


def test_revoke_by_prefix_of_another_provider_is_nothing(state, capsys):
    made = sessions(state, ("idp", "alice"))
    prefix = session_digest(made["alice@idp"]).hex()[:8]
    doc = run_json(capsys, "oauth2", "sessions", "revoke", "--id-prefix", prefix,
                   "--provider", "corp")
    assert doc == {"revoked": 0} and live(state) == ["alice@idp"]


def test_revoke_by_sub_and_all(state, capsys):
    sessions(state, ("idp", "alice"), ("corp", "alice"), ("idp", "bob"), ("corp", "carol"))
    assert run_json(capsys, "oauth2", "sessions", "revoke", "--sub", "alice",
                    "--provider", "idp") == {"revoked": 1}
    assert live(state) == ["alice@corp", "bob@idp", "carol@corp"]
    assert run_json(capsys, "oauth2", "sessions", "revoke", "--sub", "alice") == {"revoked": 1}
    assert run_json(capsys, "oauth2", "sessions", "revoke", "--all",
                    "--provider", "corp") == {"revoked": 1}
    assert live(state) == ["bob@idp"]
    code, out, _ = run(capsys, "oauth2", "sessions", "revoke", "--all")
    assert code == 0 and "Revoked 1 session" in out
    assert live(state) == []


@pytest.mark.parametrize("argv, message", [
    (["--id-prefix", "abc"], "at least 8 hex digits"),
    (["--id-prefix", "zzzzzzzz"], "at least 8 hex digits"),
    (["--id-prefix", "0" * 65], "at least 8 hex digits"),
])
def test_revoke_refuses_bad_prefixes(state, capsys, argv, message):
    sessions(state, ("idp", "alice"))
    code, _, err = run(capsys, "oauth2", "sessions", "revoke", *argv)
    assert code == 1 and message in err
    assert live(state) == ["alice@idp"]


def test_revoke_refuses_an_ambiguous_prefix(state, capsys):
    made = sessions(state, ("idp", "alice"), ("idp", "bob"))
    alice, bob = (session_digest(made[k]) for k in ("alice@idp", "bob@idp"))
    with SessionStore.open(state) as store:  # bob's row made to share 4 bytes with alice's
        store._db.conn.execute("UPDATE sessions SET id = ? WHERE id = ?",
                               (alice[:4] + bob[4:], bob))
    code, _, err = run(capsys, "oauth2", "sessions", "revoke", "--id-prefix", alice[:4].hex())
    assert code == 1 and "2 sessions start with" in err and "more digits" in err
    assert live(state) == ["alice@idp", "bob@idp"]
    doc = run_json(capsys, "oauth2", "sessions", "revoke", "--id-prefix", alice[:6].hex())
    assert doc == {"revoked": 1} and live(state) == ["bob@idp"]


def test_without_a_store_nothing_is_created(state, capsys):
    code, out, _ = run(capsys, "oauth2", "sessions", "list")
    assert code == 0 and "No sessions" in out
    assert run_json(capsys, "oauth2", "sessions", "revoke", "--all") == {"revoked": 0}
    assert not os.path.exists(os.path.join(state, "oauth2"))


def test_admin_url_is_refused_with_a_reason(state, capsys):
    code, _, err = run(capsys, "oauth2", "sessions", "list", "--admin-url",
                       "http://127.0.0.1:9")
    assert code == 1 and "state_dir" in err


def test_the_script(state):
    sessions(state, ("idp", "alice"))
    env = {**os.environ, "PYTHONPATH": REPO}
    done = subprocess.run([sys.executable, "-m", "fluxgate.cli.fluxctl", "oauth2", "sessions",
                           "list"], capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 0 and "alice" in done.stdout
    done = subprocess.run([sys.executable, "-m", "fluxgate.cli.fluxctl", "oauth2", "sessions",
                           "revoke"], capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 2 and "one of the arguments" in done.stderr
