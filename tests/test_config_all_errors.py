"""`fluxgate check` reports every independent error of a config, one line each with its
path and line, and the one camelCase key (clockSkewTolerance) is also accepted in
snake_case."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from fluxgate.config import load_config_text
from fluxgate.config.loader import ConfigErrors
from fluxgate.errors import ConfigError

FLUXGATE = Path(sys.executable).parent / "fluxgate"

# Three errors that do not depend on each other, in three parts of the config: a key that
# does not exist, a route naming an upstream that does not, a duration that is no duration.
THREE_ERRORS = """\
listen: "127.0.0.1:8080"
upstreams:
  app: {targets: ["http://127.0.0.1:9000"]}
routes:
  - route: /a
    upstream: nowhere
    public: true
  - route: /b
    upstream: app
    middleware:
      - jwt: {jwks_uri: "https://idp.example/jwks", clockSkew: 5s}
limits: {idle_timeout: 5 parsecs}
"""


def error_of(text: str) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load_config_text(text)
    return info.value


def test_three_independent_errors_are_all_reported():
    err = error_of(THREE_ERRORS)
    assert isinstance(err, ConfigErrors)
    assert [(e.path, e.line) for e in err.errors] == [
        ("routes[0].upstream", 6),
        ("routes[1].middleware[0].jwt.clockSkew", 11),
        ("limits.idle_timeout", 12),
    ]
    assert "unknown upstream 'nowhere'" in str(err.errors[0])
    assert "did you mean 'clockSkewTolerance'" in str(err.errors[1])
    assert "invalid duration '5 parsecs'" in str(err.errors[2])
    assert str(err).splitlines() == [str(e) for e in err.errors]


def test_check_prints_one_line_per_error_and_exits_1(tmp_path):
    path = tmp_path / "fluxgate.yaml"
    path.write_text(THREE_ERRORS)
    done = subprocess.run([str(FLUXGATE), "check", "--config", str(path)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and done.stdout == ""
    lines = done.stderr.splitlines()
    assert len(lines) == 3, done.stderr
    assert lines[0].startswith(f"{path}: routes[0].upstream (line 6): unknown upstream")
    assert lines[1].startswith(f"{path}: routes[1].middleware[0].jwt.clockSkew (line 11): ")
    assert lines[2].startswith(f"{path}: limits.idle_timeout (line 12): invalid duration")


def test_one_error_stays_a_plain_config_error():
    err = error_of(THREE_ERRORS.replace("nowhere", "app").replace(", clockSkew: 5s", "")
                   .replace("5 parsecs", "5s").replace("public: true", "public: 7"))
    assert type(err) is ConfigError
    assert (err.path, err.line) == ("routes[0].public", 7)


def test_consequences_of_an_error_are_not_reported():
    # The route's only middleware is wrong: that the route is then unauthenticated, and
    # then has no middleware at all, follows from it and is not said again.
    err = error_of("""\
routes:
  - route: /a
    upstream: http://127.0.0.1:9000
    middleware:
      - jwt: {jwks_uri: "https://idp.example/jwks", nonsense: 1}
  - route: /b
    upstream: http://127.0.0.1:9000
    middleware:
      - rate_limitz: {}
""")
    assert [(e.path, e.line) for e in err.errors] == [
        ("routes[0].middleware[0].jwt.nonsense", 5),
        ("routes[1].middleware[0].rate_limitz", 9),
    ]


def test_a_broken_upstream_is_one_error_not_one_per_route():
    err = error_of("""\
upstreams:
  app: {targets: ["ftp://127.0.0.1:9000"]}
routes:
  - {route: /a, upstream: app, public: true}
  - {route: /b, upstream: app, public: true}
  - {route: /c, upstream: nope, public: true}
""")
    assert [e.path for e in err.errors] == ["upstreams.app.targets[0]", "routes[2].upstream"]


def test_yaml_syntax_errors_stay_single():
    err = error_of("routes: [\n  - a: b\nlisten: x: y\n")
    assert type(err) is ConfigError and "invalid YAML" in str(err)


def test_many_errors_are_bounded():
    routes = "".join(f"  - {{route: /r{i}, upstream: nope, public: true}}\n" for i in range(80))
    err = error_of(f"routes:\n{routes}")
    assert 1 < len(err.errors) <= 50


# ---- clockSkewTolerance / clock_skew_tolerance -----------------------------------------------

JWT = """\
routes:
  - route: /a
    upstream: http://127.0.0.1:9000
    middleware:
      - jwt: {{jwks_uri: "https://idp.example/jwks", {skew}}}
"""
OAUTH2 = """\
routes:
  - route: /a
    upstream: http://127.0.0.1:9000
    middleware:
      - oauth2:
          introspection_endpoint: https://as.example/introspect
          client_id: gateway
          client_secret: a-secret-that-is-long-enough
          {skew}
"""


@pytest.mark.parametrize("template", [JWT, OAUTH2], ids=["jwt", "oauth2"])
@pytest.mark.parametrize("key", ["clockSkewTolerance", "clock_skew_tolerance"])
def test_clock_skew_both_spellings(template, key):
    config = load_config_text(template.format(skew=f"{key}: 2m"))
    assert config.routes[0].middleware[0].clockSkewTolerance == 120.0


@pytest.mark.parametrize("template", [JWT, OAUTH2], ids=["jwt", "oauth2"])
def test_clock_skew_both_spellings_at_once_is_an_error(template):
    text = template.format(skew="clockSkewTolerance: 1m, clock_skew_tolerance: 2m")
    if template is OAUTH2:
        text = text.replace("clockSkewTolerance: 1m, ", "clockSkewTolerance: 1m\n          ")
    err = error_of(text)
    assert "clockSkewTolerance and clock_skew_tolerance are one setting" in str(err)
    assert err.path.endswith(".clock_skew_tolerance")


def test_clock_skew_snake_case_errors_name_it_as_written():
    err = error_of(JWT.format(skew="clock_skew_tolerance: soon"))
    assert err.path == "routes[0].middleware[0].jwt.clock_skew_tolerance" and err.line == 5
    err = error_of(JWT.format(skew="clock_skew_tolerance: -5s"))
    assert err.path == "routes[0].middleware[0].jwt.clock_skew_tolerance"


def test_snake_case_alias_only_where_the_key_exists():
    err = error_of("clock_skew_tolerance: 5s\n" + JWT.format(skew="audience: x"))
    assert "unknown key" in str(err) and err.path == "clock_skew_tolerance"


@pytest.mark.parametrize("doc", ["fluxgate.example.yaml", "docs/jwt.md", "docs/oauth2.md"])
def test_clock_skew_snake_case_is_documented(doc):
    text = (Path(__file__).resolve().parents[1] / doc).read_text()
    assert "clock_skew_tolerance" in text and "clockSkewTolerance" in text


def test_a_misspelt_key_does_not_also_report_the_key_missing():
    err = error_of("rotues:\n  - {route: /a, upstream: 'http://127.0.0.1:9', public: true}\n")
    assert type(err) is ConfigError and err.path == "rotues"


def test_a_misspelt_key_beside_the_right_one_hides_nothing():
    err = error_of("rotues: 1\nroutes:\n  - {route: /a, upstream: nope, public: true}\n")
    assert [e.path for e in err.errors] == ["rotues", "routes[0].upstream"]


def test_an_upstream_with_a_bad_name_is_one_error():
    err = error_of('upstreams:\n  "pay ments": {targets: ["http://127.0.0.1:9"]}\n'
                   'routes:\n  - {route: /a, upstream: pay ments, public: true}\n'
                   '  - {route: /b, upstream: nope, public: true}\n')
    assert [e.path for e in err.errors] == ['upstreams["pay ments"]', "routes[1].upstream"]


# Errors found while reading the YAML itself (syntax, duplicate keys, aliases, tags) stop
# the reading: they stay single. A ${VAR} that cannot be substituted does not.
_READ_ERRORS = ("invalid YAML", "duplicate key", "YAML alias", "YAML merge", "YAML tag",
                "only one YAML document",
                "nested deeper than")
_BAD = sorted((Path(__file__).parent / "data" / "config" / "bad").glob("*.yaml"))


@pytest.mark.parametrize("path", _BAD, ids=[p.name for p in _BAD])
def test_every_bad_case_plus_an_independent_error_reports_exactly_both(path):
    from tests.test_config import read_case

    expect, env = read_case(path)
    text = path.read_text().rstrip("\n") + "\nzzz_unknown: 1\n"
    with pytest.raises(ConfigError) as info:
        load_config_text(text, env=env)
    lines = str(info.value).splitlines()
    if any(marker in lines[0] for marker in _READ_ERRORS):
        assert len(lines) == 1
        return
    assert len(lines) == 2, lines
    assert any(expect in line for line in lines), (expect, lines)
    assert any(line.startswith("zzz_unknown (line ") for line in lines), lines


def test_unset_variables_are_reported_with_the_rest():
    err = error_of("admin: {token: '${FG_TEST_UNSET_A}'}\nstate_dir: '${FG_TEST_UNSET_B}'\n"
                   "routes:\n  - {route: /a, upstream: nope, public: true}\n")
    assert [e.path for e in err.errors] == ["admin.token", "state_dir", "routes[0].upstream"]
    assert "environment variable FG_TEST_UNSET_A is not set" in str(err.errors[0])
