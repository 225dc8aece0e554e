"""fluxgate/cli/demo_oauth2.py: the demo's authorization server answers RFC 7662
introspection for its client only, its route loads as config, and the oauth2 lines a real
`fluxgate demo` prints answer what they say, with one introspection for the demo token."""

from __future__ import annotations

import base64
import http.client
import json
import os
import re
import shlex
import subprocess
import time
import urllib.parse
from pathlib import Path

import pytest

from fluxgate.cli.demo import demo_config
from fluxgate.cli.demo_oauth2 import CLIENT_ID, INTROSPECTION_PATH, SCOPE, DemoAuthServer
from fluxgate.config import load_config_text
from tests.support.demo import running_demo
from tests.support.gateway import REPO


def introspect(server: DemoAuthServer, token: str, secret: str | None = None,
               method: str = "POST") -> tuple[int, dict]:
    """One introspection request, as the gateway sends it (HTTP Basic client auth)."""
    pair = f"{CLIENT_ID}:{server.client_secret if secret is None else secret}"
    conn = http.client.HTTPConnection("127.0.0.1", server.sock.getsockname()[1], timeout=5)
    try:
        conn.request(method, INTROSPECTION_PATH,
                     body=urllib.parse.urlencode({"token": token,
                                                  "token_type_hint": "access_token"}),
                     headers={"Authorization": "Basic " + base64.b64encode(pair.encode()).decode(),
                              "Content-Type": "application/x-www-form-urlencoded"})
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read())
    finally:
        conn.close()


def test_demo_auth_server(tmp_path):
    server = DemoAuthServer(str(tmp_path))
    http_server = server.serve_in_thread()
    try:
        token_path = server.write_token()
        assert os.stat(token_path).st_mode & 0o777 == 0o600
        assert open(token_path).read() == server.token
        status, answer = introspect(server, server.token)
        assert status == 200
        assert answer == {"active": True, "scope": SCOPE, "sub": "demo-user",
                          "client_id": "demo-app", "exp": server.expires_at,
                          "token_type": "Bearer", "iss": server.issuer,
                          "aud": "inventory-api"}
        assert abs(answer["exp"] - (time.time() + 3600)) < 60
        assert introspect(server, "x" + server.token) == (200, {"active": False})
        assert server.calls == 2
        # Only the gateway's client may ask, and it is not told anything otherwise.
        status, answer = introspect(server, server.token, secret="wrong")
        assert status == 401 and answer == {"error": "invalid_client"}
        assert introspect(server, server.token, method="GET")[0] == 405
        assert server.calls == 2
        config = load_config_text(demo_config(str(tmp_path), 8080, 9901, 9000,
                                              server.route_yaml("echo")))
        route = next(r for r in config.routes if r.route == "/inventory")
        entry = route.middleware[0]
        assert (entry.client_id, entry.client_secret) == (CLIENT_ID, server.client_secret)
        assert entry.introspection_endpoint == server.issuer + INTROSPECTION_PATH
        assert entry.issuer == server.issuer and entry.scopes == [SCOPE]
    finally:
        http_server.shutdown()
        server.sock.close()


def _expand(word: str) -> str:
    """The shell's ``$(cat FILE)`` in a printed line (nothing else is substituted there)."""
    return re.sub(r"\$\(cat ([^)]+)\)", lambda m: Path(m.group(1)).read_text(), word)


def _get(url: str, headers: dict[str, str]) -> int:
    parts = urllib.parse.urlsplit(url)
    assert parts.hostname == "127.0.0.1"
    conn = http.client.HTTPConnection("127.0.0.1", parts.port, timeout=10)
    try:
        conn.request("GET", parts.path, headers=headers)
        resp = conn.getresponse()
        resp.read()
        return resp.status
    finally:
        conn.close()


def _curl_lines(banner: str) -> list[tuple[dict[str, str], str, int]]:
    """The printed ``curl`` lines for /inventory: (headers, URL, the status its comment
    announces, on the same line or the next)."""
    lines = banner.splitlines()
    found = []
    for i, line in enumerate(lines):
        if not line.strip().startswith("curl") or "/inventory" not in line:
            continue
        command, _, comment = line.partition("#")
        comment = comment or lines[i + 1].strip().lstrip("#")
        words = shlex.split(command)
        headers = dict(_expand(words[k + 1]).split(": ", 1)
                       for k, w in enumerate(words) if w == "-H")
        status = re.match(r"\s*(\d{3})\b", comment)
        assert status, line
        found.append((headers, words[-1], int(status.group(1))))
    return found


@pytest.mark.slow
def test_demo_prints_oauth2_lines_that_work(tmp_path):
    def ready(state: Path, log: str) -> bool:
        if "Ctrl-C stops it." not in log:
            return False
        try:
            port = json.loads((state / "gateway.json").read_text())["listen"][1]
            return _get(f"http://127.0.0.1:{port}/public/x", {}) == 200
        except (OSError, ValueError, KeyError):
            return False

    with running_demo(tmp_path, ready) as (state, log_path):
        banner = log_path.read_text()
        lines = _curl_lines(banner)
        assert [status for _h, _u, status in lines] == [200, 401, 401]
        for headers, url, status in lines:
            assert _get(url, headers) == status, (headers, url)
        (valid_headers, url, _), (_, _, _), (unknown_headers, _, _) = lines
        for _ in range(5):  # answered from the gateway's shared table, not asked again
            assert _get(url, valid_headers) == 200
        assert _get(url, unknown_headers) == 401
        # The printed fluxctl line: audit + the probe battery at the live route.
        command = next(line for line in banner.splitlines()
                       if "fluxctl" in line and "/inventory" in line)
        following = banner.splitlines()[banner.splitlines().index(command) + 1]
        words = [_expand(w) for w in shlex.split(command.rstrip("\\") + following)]
        # The venv's fluxctl by absolute path: a fresh shell finds it without activation.
        assert os.path.isabs(words[0]) and words[0].endswith("/fluxctl"), words[0]
        assert "--probe" in words and "--token" in words
        probe = subprocess.run(words, cwd=REPO, capture_output=True, text=True, timeout=60)
        assert probe.returncode == 0, probe.stdout + probe.stderr
        assert re.search(r"probes: \d+ passed, 0 failed", probe.stdout), probe.stdout
        assert "valid_token" in probe.stdout
    log_text = log_path.read_text()
    asked = re.findall(r"demo authorization server: introspection #\d+, (the demo|an unknown) "
                       r"token", log_text)
    assert asked.count("the demo") == 1, log_text  # seven 200s, one question
    token = (state / "demo-oauth2.token").read_text()
    assert token not in log_text  # printed as $(cat FILE), logged as a digest prefix
