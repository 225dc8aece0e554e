"""`fluxctl oauth2 configure` against the real django-oauth-toolkit server and against
deliberately broken metadata (tests/support/bad_authserver.py): what it finds, what it
refuses, and that what it writes loads, keeps the rest of the file and never holds a secret."""

from __future__ import annotations

import json
import os

import pytest

from fluxgate.cli import oauth2_configure
from fluxgate.cli.fluxctl import main
from fluxgate.config import load_config
from tests.support.bad_authserver import BadAuthServer

UPSTREAM = "http://127.0.0.1:9"
REDIRECT = "https://127.0.0.1:8443/oauth2/callback"
EXISTING = """\
# The team's gateway: keep this comment.
admin: {token: configure-test-token}
routes:
  - route: /healthz   # probes from the load balancer
    upstream: http://127.0.0.1:9
    public: true
  # more routes go above this line

scope_map: {}   # none yet
"""


@pytest.fixture
def config_file(tmp_path):
    path = tmp_path / "fluxgate.yaml"
    path.write_text(EXISTING)
    return path


def configure(capsys, config_file, *argv: str) -> tuple[int, dict, str]:
    code = main(["--config", str(config_file), "oauth2", "configure", "--json",
                 "--upstream", UPSTREAM, *argv])
    out, err = capsys.readouterr()
    return code, (json.loads(out) if out.strip() else {}), out + err


def codes(doc: dict) -> dict[str, str]:
    return {f["code"]: f["severity"] for f in doc["findings"]}


def login_args(issuer: str, *more: str) -> list[str]:
    return ["--issuer", issuer, "--client-id", "web-app", "--client-secret-env", "WEB_SECRET",
            "--route", "/app", "--login", "--redirect", REDIRECT, "--scope", "read", *more]


# ---- against django-oauth-toolkit -----------------------------------------------------------


def test_login_route_written_loads_and_keeps_the_file(capsys, config_file, django_auth_server):
    server = django_auth_server
    code, doc, _ = configure(capsys, config_file, *login_args(server.issuer))
    assert code == 0, doc
    assert doc["written"] and doc["refused"] is None
    assert doc["endpoints"]["authorization_endpoint"] == server.authorization_endpoint
    assert doc["endpoints"]["token_endpoint"] == server.token_endpoint
    # The RFC 8414 document completes the OpenID one (DOT lists introspection only there).
    assert doc["endpoints"]["introspection_endpoint"] == server.introspection_endpoint
    found = codes(doc)
    assert "issuer_mismatch" not in found and "pkce_s256_unsupported" not in found
    assert found.get("iss_parameter_supported") == "info"
    assert found.get("endpoint_plain_http_loopback") == "info"
    assert all(severity != "error" for severity in found.values())

    text = config_file.read_text()
    # Every line of the file as it was, in order, with the route added after the last one.
    assert text.startswith(EXISTING.split("  # more routes")[0])
    assert "# The team's gateway: keep this comment." in text and "# none yet" in text
    assert text.index("route: /app") < text.index("# more routes go above this line")
    assert "${WEB_SECRET}" in text
    config = load_config(config_file, env={"WEB_SECRET": "from-the-environment"})
    route = next(r for r in config.routes if r.route == "/app")
    entry = route.middleware[0]
    assert entry.login and entry.redirect_uri == REDIRECT and entry.issuer == server.issuer
    assert entry.login_scopes == ["openid", "read"] and entry.client_id == "web-app"
    assert entry.client_secret == "from-the-environment"
    assert [r.route for r in config.routes] == ["/healthz", "/app"]


def test_introspection_route_gets_scopes_not_login_keys(capsys, config_file, django_auth_server):
    server = django_auth_server
    code, doc, _ = configure(capsys, config_file, "--issuer", server.issuer, "--client-id",
                             "gateway", "--route", "/api/orders", "--scope", "orders:read")
    assert code == 0, doc
    entry = doc["route"]["middleware"][0]["oauth2"]
    assert entry == {"issuer": server.issuer, "client_id": "gateway",
                     "client_secret": "${OAUTH_CLIENT_SECRET}", "scopes": ["orders:read"]}
    os.environ.pop("OAUTH_CLIENT_SECRET", None)
    config = load_config(config_file, env={"OAUTH_CLIENT_SECRET": "x"})
    assert not config.routes[-1].middleware[0].login
    assert "pkce_not_advertised" not in codes(doc)  # PKCE is the login's business


def test_dry_run_writes_nothing(capsys, config_file, django_auth_server):
    code, doc, out = configure(capsys, config_file, *login_args(django_auth_server.issuer),
                               "--dry-run")
    assert code == 0 and not doc["written"]
    assert config_file.read_text() == EXISTING
    assert "route: /app" in doc["snippet"]


def test_a_config_that_would_not_load_is_not_written(capsys, config_file, django_auth_server):
    # The route exists already: the config check refuses duplicate routes.
    code, doc, _ = configure(capsys, config_file, *login_args(django_auth_server.issuer),
                             "--route", "/healthz")
    assert code == 1 and not doc["written"]
    assert "would not load" in doc["refused"] and "/healthz" in doc["refused"]
    assert config_file.read_text() == EXISTING
    # An upstream that is neither a name of the config nor a URL.
    code, doc, _ = configure(capsys, config_file, *login_args(django_auth_server.issuer),
                             "--upstream", "no-such-upstream")
    assert code == 1 and config_file.read_text() == EXISTING


def test_human_output_names_the_findings_and_the_file(capsys, config_file, django_auth_server):
    code = main(["--config", str(config_file), "oauth2", "configure", "--upstream", UPSTREAM,
                 *login_args(django_auth_server.issuer)])
    out = capsys.readouterr().out
    assert code == 0
    assert "authorization_endpoint" in out and "iss_parameter_supported" in out
    assert f"written to {config_file}" in out and "WEB_SECRET" in out


# ---- the secret -------------------------------------------------------------------------------


def test_a_literal_secret_is_refused_and_never_echoed(capsys, config_file):
    secret = "hunter2-literal-secret-value"
    code, _, out = configure(capsys, config_file, "--issuer", "https://as.example",
                             "--client-id", "x", "--client-secret", secret)
    assert code == 1 and secret not in out and "--client-secret-env" in out
    code, _, out = configure(capsys, config_file, "--issuer", "https://as.example",
                             "--client-id", "x", "--client-secret-env", secret + "!")
    assert code == 1 and secret not in out and "NAME of an environment variable" in out
    assert config_file.read_text() == EXISTING


def test_secret_reference_accepts_names_only():
    assert oauth2_configure.secret_reference("OAUTH_SECRET_2") == "${OAUTH_SECRET_2}"
    for bad in ("", "2X", "A-B", "${X}", "X Y", "a" * 200):
        with pytest.raises(oauth2_configure.ConfigureRefused):
            oauth2_configure.secret_reference(bad)


# ---- broken metadata ----------------------------------------------------------------------------


@pytest.fixture
def bad_server():
    with BadAuthServer() as server:
        base = server.url
        server.extra_metadata = {
            "authorization_endpoint": f"{base}/authorize",
            "jwks_uri": f"{base}/jwks",
            "code_challenge_methods_supported": ["S256"],
            "authorization_response_iss_parameter_supported": True,
        }
        yield server


def test_issuer_mismatch_is_refused(capsys, config_file, bad_server):
    bad_server.discovery_issuer = bad_server.issuer + "/"  # one slash is another issuer
    code, doc, out = configure(capsys, config_file, *login_args(bad_server.issuer))
    assert code == 1 and "issuer mismatch" in out
    assert config_file.read_text() == EXISTING


def test_no_s256_listed_is_a_warning_and_is_written(capsys, config_file, bad_server):
    bad_server.extra_metadata["code_challenge_methods_supported"] = None
    code, doc, _ = configure(capsys, config_file, *login_args(bad_server.issuer))
    assert code == 0 and doc["written"]
    assert codes(doc)["pkce_not_advertised"] == "warning"


def test_plain_only_is_an_error(capsys, config_file, bad_server):
    bad_server.extra_metadata["code_challenge_methods_supported"] = ["plain"]
    code, doc, _ = configure(capsys, config_file, *login_args(bad_server.issuer))
    assert code == 1 and not doc["written"]
    assert codes(doc)["pkce_s256_unsupported"] == "error"
    assert "only plain" in json.dumps(doc["findings"])
    assert config_file.read_text() == EXISTING


def test_plain_http_endpoint_off_loopback_is_an_error(capsys, config_file, bad_server):
    bad_server.extra_metadata["authorization_endpoint"] = "http://login.example.com/authorize"
    code, doc, _ = configure(capsys, config_file, *login_args(bad_server.issuer))
    assert code == 1 and codes(doc)["endpoint_plain_http"] == "error"
    assert "login.example.com" in json.dumps(doc["findings"])
    assert config_file.read_text() == EXISTING
    # Token introspection never sends anyone to the authorization endpoint.
    code, doc, _ = configure(capsys, config_file, "--issuer", bad_server.issuer,
                             "--client-id", "gw", "--route", "/api")
    assert code == 0 and "endpoint_plain_http" not in codes(doc)
    bad_server.extra_metadata["introspection_endpoint"] = "http://as.example.com/introspect"
    code, doc, _ = configure(capsys, config_file, "--issuer", bad_server.issuer,
                             "--client-id", "gw", "--route", "/api2")
    assert code == 1 and codes(doc)["endpoint_plain_http"] == "error"


def test_missing_login_endpoints_and_no_iss_parameter(capsys, config_file, bad_server):
    bad_server.extra_metadata.update(jwks_uri=None,
                                     authorization_response_iss_parameter_supported=None)
    code, doc, _ = configure(capsys, config_file, *login_args(bad_server.issuer))
    found = codes(doc)
    assert code == 1 and found["no_jwks_uri"] == "error"
    assert found["iss_parameter_not_supported"] == "warning"
    assert found["no_end_session_endpoint"] == "info"
    # Without --login the same server is fine for introspection.
    code, doc, _ = configure(capsys, config_file, "--issuer", bad_server.issuer,
                             "--client-id", "gw", "--route", "/api")
    assert code == 0, doc


def test_unreachable_server_and_usage_errors(capsys, config_file, bad_server):
    bad_server.mode = "down"
    code, _, out = configure(capsys, config_file, "--issuer", "http://127.0.0.1:9/o",
                             "--client-id", "x")
    assert code == 1 and "no usable metadata" in out
    code, _, out = configure(capsys, config_file, "--issuer", bad_server.issuer,
                             "--client-id", "x", "--login")
    assert code == 1 and "--redirect" in out
    code, _, out = configure(capsys, config_file, "--issuer", bad_server.issuer,
                             "--client-id", "x", "--redirect", REDIRECT)
    assert code == 1 and "only used with --login" in out
    assert config_file.read_text() == EXISTING


@pytest.mark.parametrize("text", [
    "", "listen: 127.0.0.1:8080\n", "routes: []\n", "routes:\nlisten: 127.0.0.1:8080\n",
    "routes:\n- route: /x\n  upstream: http://127.0.0.1:9\n  public: true",
    "routes:\n  - route: /x\n    upstream: http://127.0.0.1:9\n    public: true\n"
    "    note: |\n      two\n      lines\nscope_map: {}\n",
])
def test_insert_route_keeps_the_text_and_loads(text):
    entry = oauth2_configure.route_entry(
        route="/app", upstream=UPSTREAM, issuer="https://as.example", client_id="web",
        secret_env="S", scopes=[], login=True, redirect_uri=REDIRECT)
    if "note:" in text:  # not a config key: only the YAML shape matters here
        new, _ = oauth2_configure.insert_route(text, entry)
        assert "note: |\n      two\n      lines\n  - route: /app" in new
        return
    new, snippet = oauth2_configure.insert_route(text, entry)
    assert snippet.strip() in new
    oauth2_configure.check_written(new, "<test>", "S")


def test_insert_route_refuses_a_flow_list():
    with pytest.raises(oauth2_configure.ConfigureRefused, match="block list"):
        oauth2_configure.insert_route("routes: [{route: /x, upstream: http://a, public: true}]\n",
                                      {"route": "/y"})
