"""What a newcomer types first, through the installed scripts: `--version` on both
commands, `fluxctl routes list`, and output piped into a reader that stops early
(`fluxctl ... | head`), which must end quietly rather than with "Broken pipe"."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import fluxgate
from fluxgate.cli.routes_list import render

BIN = Path(sys.executable).parent

ROUTES = """\
state_dir: {state}
upstreams:
  app: {{targets: ["http://127.0.0.1:9"]}}
routes:
  - route: /api
    upstream: app
    methods: [get, POST]
    middleware:
      - jwt: {{jwks_uri: "http://127.0.0.1:9/jwks", issuer: "https://idp", audience: api}}
      - quota: {{limit: 10/s}}
  - route: /partners
    upstream: app
    middleware:
      - any:
          - jwt: {{jwks_uri: "http://127.0.0.1:9/jwks", issuer: "https://idp", audience: api}}
          - api_key: {{}}
  - route: /healthz
    upstream: http://127.0.0.1:9000
    public: true
"""


def script(name: str, *argv: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / name), *argv], capture_output=True, text=True,
                          timeout=60, **kwargs)


@pytest.mark.parametrize("name", ["fluxgate", "fluxctl"])
def test_version(name):
    done = script(name, "--version")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"{name} {fluxgate.__version__}"


@pytest.fixture
def config(tmp_path):
    path = tmp_path / "fluxgate.yaml"
    path.write_text(ROUTES.format(state=tmp_path / "state"))
    return path


def test_routes_list_table(config):
    done = script("fluxctl", "--config", str(config), "routes", "list")
    assert done.returncode == 0, done.stderr
    header, *rows = done.stdout.splitlines()
    assert header.split() == ["PATH", "METHODS", "UPSTREAM", "MIDDLEWARE", "PUBLIC"]
    assert [r.split() for r in rows] == [
        ["/api", "GET,HEAD,POST", "app", "jwt,quota", "no"],
        ["/partners", "*", "app", "any(jwt|api_key)", "no"],
        ["/healthz", "*", "http://127.0.0.1:9000", "-", "yes"],
    ]


def test_routes_list_json(config):
    done = script("fluxctl", "--config", str(config), "routes", "list", "--json")
    assert done.returncode == 0, done.stderr
    rows = json.loads(done.stdout)["routes"]
    assert rows[0] == {"path": "/api", "methods": ["GET", "HEAD", "POST"], "upstream": "app",
                       "middleware": ["jwt", "quota"], "public": False}
    assert rows[2]["methods"] is None and rows[2]["public"] is True


def test_routes_list_bad_config_is_refused(tmp_path):
    path = tmp_path / "fluxgate.yaml"
    path.write_text("routes: []\n")
    done = script("fluxctl", "--config", str(path), "routes", "list")
    assert done.returncode == 1 and "routes" in done.stderr and done.stdout == ""


def test_render_escapes_nothing_and_aligns():
    lines = render([{"path": "/a", "methods": None, "upstream": "u", "middleware": [],
                     "public": True}])
    assert lines[1].split() == ["/a", "*", "u", "-", "yes"]
    assert lines[0].index("METHODS") == lines[1].index("*")


@pytest.mark.parametrize("argv", [
    ["routes", "list"],
    ["routes", "list", "--json"],
])
def test_output_into_a_closed_pipe_ends_quietly(tmp_path, argv):
    # Enough routes that the output outgrows the pipe's buffer after `head` has gone.
    routes = "".join(
        f"  - route: /r{i}\n    upstream: http://127.0.0.1:9\n    public: true\n"
        for i in range(3000))
    path = tmp_path / "fluxgate.yaml"
    path.write_text(f"state_dir: {tmp_path / 'state'}\nroutes:\n{routes}")
    proc = subprocess.Popen([str(BIN / "fluxctl"), "--config", str(path), *argv],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.readline()
    proc.stdout.close()  # what `| head -1` does once it has its line
    err = proc.stderr.read().decode()
    code = proc.wait(timeout=60)
    assert "Broken pipe" not in err and "Traceback" not in err and "Exception" not in err, err
    assert code in (0, 141)


def test_both_entry_points_end_a_broken_pipe_quietly(capsys):
    from fluxgate.cli import fluxctl
    from fluxgate.cli import fluxgate as fluxgate_cli
    from fluxgate.cli.fluxgate import EXIT_BROKEN_PIPE, exit_quietly_on_broken_pipe

    @exit_quietly_on_broken_pipe
    def writes_into_a_closed_pipe() -> int:
        raise BrokenPipeError(32, "Broken pipe")

    assert writes_into_a_closed_pipe() == EXIT_BROKEN_PIPE == 141
    # Both scripts' main are wrapped.
    assert fluxctl.main.__wrapped__ and fluxgate_cli.main.__wrapped__


def test_fluxctl_reports_every_config_error_with_the_file(tmp_path):
    path = tmp_path / "fluxgate.yaml"
    path.write_text("listen: '127.0.0.1:99999'\nroutes:\n"
                    "  - {route: /a, upstream: nowhere, public: true}\n")
    done = script("fluxctl", "--config", str(path), "routes", "list")
    assert done.returncode == 1
    lines = done.stderr.splitlines()
    assert lines[0].startswith(f"fluxctl: error: {path}: listen (line 1): ")
    assert lines[1].startswith(f"{path}: routes[0].upstream (line 3): unknown upstream")
    assert len(lines) == 2
