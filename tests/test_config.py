"""fluxgate.config: YAML → Structs, ${VAR}, units, addresses, and errors that name the key.

Good and bad configs are data files (tests/data/config/{good,bad}/*.yaml), in the manner of
gunicorn's tests/requests/invalid: each bad file starts with ``# expect: <fragment>`` that
the error must contain (the path, ``(line N)`` and message), and may set ``# env: NAME=value``.
"""

from __future__ import annotations

import ipaddress
import os
import typing
from pathlib import Path

import msgspec
import pytest
import yaml

from fluxgate.config import (
    ConfigError,
    UpstreamSpec,
    load_config,
    load_config_text,
    loader,
    parse_duration,
    parse_listen,
    parse_network,
    parse_size,
    parse_upstream_url,
    resolve_upstream,
    schema,
    worker_count,
)
from fluxgate.config.loader import MIDDLEWARE_FORMS
from fluxgate.config.resolve import check_config, format_path, is_loopback, parse_route_path

ROOT = Path(__file__).resolve().parent.parent
DATA = Path(__file__).resolve().parent / "data" / "config"
GOOD = sorted(p.name for p in (DATA / "good").glob("*.yaml"))
BAD = sorted(p.name for p in (DATA / "bad").glob("*.yaml"))
BASE_ENV = {"FLUXGATE_TEST_TOKEN": "s3cret-token-value"}
ROUTE = '\nroutes: [{route: /a, upstream: "http://127.0.0.1:9000", public: true}]\n'


def load(text: str, **env: str) -> schema.Config:
    return load_config_text(text, env=env)


def error_of(text: str, **env: str) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load_config_text(text, env=env)
    return info.value


def read_case(path: Path) -> tuple[str, dict[str, str]]:
    expect, env = "", dict(BASE_ENV)
    for line in path.read_text().splitlines():
        if line.startswith("# expect: "):
            expect = line.removeprefix("# expect: ")
        elif line.startswith("# env: "):
            name, _, value = line.removeprefix("# env: ").partition("=")
            env[name] = value
    return expect, env


# --- the data-file cases ---------------------------------------------------------------------


def test_there_are_enough_cases():
    assert len(GOOD) >= 5
    assert len(BAD) >= 25


def plain_values(value: object):
    """Every leaf of a loaded config (Struct fields, list items, dict keys and values)."""
    if isinstance(value, msgspec.Struct):
        for item in msgspec.structs.astuple(value):
            yield from plain_values(item)
    elif isinstance(value, list | tuple):
        for item in value:
            yield from plain_values(item)
    elif isinstance(value, dict):
        for key, item in value.items():
            yield key
            yield from plain_values(item)
    else:
        yield value


@pytest.mark.parametrize("name", GOOD)
def test_good_config_loads(name):
    config = load_config(DATA / "good" / name, env=BASE_ENV)
    assert isinstance(config, schema.Config)
    assert config.routes
    # No loader-internal type (the ${VAR} marker str subclass) leaks into the result.
    leaves = list(plain_values(config))
    assert all(type(v) in (str, int, float, bool, type(None)) for v in leaves), leaves


@pytest.mark.parametrize("name", BAD)
def test_bad_config_is_refused(name):
    path = DATA / "bad" / name
    expect, env = read_case(path)
    assert expect, f"{name} has no '# expect:' line"
    with pytest.raises(ConfigError) as info:
        load_config(path, env=env)
    assert expect in str(info.value)
    if "(line " in expect:  # the line claimed in the fragment is the one on the exception
        claimed = int(expect.split("(line ", 1)[1].split(")", 1)[0])
        assert info.value.line == claimed


@pytest.mark.parametrize("name", BAD)
def test_bad_config_same_path_and_line_with_pure_python_yaml(name, monkeypatch):
    """Without libyaml the loader falls back to SafeLoader; errors point at the same place."""
    path = DATA / "bad" / name
    _, env = read_case(path)
    with pytest.raises(ConfigError) as c_info:
        load_config(path, env=env)
    monkeypatch.setattr(loader, "_Loader", yaml.SafeLoader)
    with pytest.raises(ConfigError) as py_info:
        load_config(path, env=env)
    assert (py_info.value.path, py_info.value.line) == (c_info.value.path, c_info.value.line)


def test_full_config_values():
    config = load_config(DATA / "good" / "full.yaml", env=BASE_ENV)
    assert config.workers == 4
    assert config.admin.token == "s3cret-token-value"
    assert config.limits == schema.Limits(
        max_header_bytes=32 * 1024,
        max_body_bytes=10 * 1024 * 1024,
        header_timeout=10.0,
        idle_timeout=60.0,
        drain_timeout=90.0,
    )
    assert config.api_keys.default_expiry == 90 * 86400
    assert config.api_keys.rotation_grace == 86400
    payments = config.upstreams["payments"]
    assert (payments.connect_timeout, payments.pool_idle_timeout, payments.pool_size) == (
        0.5,
        45.0,
        16,
    )
    assert config.routes[0].methods == ["GET", "POST"]
    assert config.routes[1].middleware == [
        schema.IpAllow(cidrs=["192.168.0.0/16"]),
        schema.IpAllow(cidrs=["127.0.0.1"]),
    ]
    assert config.scope_map["write:orders"] == ["POST /api/orders", "PUT /api/orders/*"]


def test_keys_are_taken_as_written_not_as_yaml_11_booleans():
    config = load_config(DATA / "good" / "yaml_keys_as_written.yaml")
    assert list(config.upstreams) == ["on", "no", "1"]


def test_durations_and_sizes_file():
    config = load_config(DATA / "good" / "durations_sizes.yaml")
    assert config.limits.max_body_bytes == 1024**3
    assert config.limits.idle_timeout == 0.5
    assert config.limits.header_timeout == 2.5
    assert config.api_keys.rotation_grace == 5400
    assert config.upstreams["a"].read_timeout == 300
    assert config.upstreams["a"].pool_idle_timeout == 30


# --- the example config ---------------------------------------------------------------------


def test_example_config_shows_the_default_strip_list():
    config = load_config(ROOT / "fluxgate.example.yaml", env={})
    assert tuple(config.strip_request_headers) == schema.DEFAULT_STRIP_REQUEST_HEADERS
    assert load_config_text(ROUTE).strip_request_headers == list(
        schema.DEFAULT_STRIP_REQUEST_HEADERS
    )


def test_example_config_loads_and_stays_on_loopback():
    config = load_config(ROOT / "fluxgate.example.yaml", env={})
    hosts = [parse_listen(config.listen)[0], parse_listen(config.admin.listen)[0]]
    for name in config.upstreams:
        route = schema.Route(route="/", upstream=name, public=True)
        hosts += [host for host, _ in resolve_upstream(config, route).targets]
    hosts += [host for r in config.routes for host, _ in resolve_upstream(config, r).targets]
    assert hosts and all(is_loopback(h) for h in hosts), hosts
    nets = [parse_network(c) for c in config.trusted_proxies]
    nets += [parse_network(c) for r in config.routes for m in r.middleware
             if isinstance(m, schema.IpAllow) for c in m.cidrs]
    assert all(n.is_loopback for n in nets), nets
    assert any(r.public and not r.middleware for r in config.routes)
    assert any(isinstance(m, schema.IpAllow) for r in config.routes for m in r.middleware)


# --- ${VAR} substitution --------------------------------------------------------------------


def test_env_set_is_substituted():
    config = load("admin: {token: '${TOK}'}" + ROUTE, TOK="abc")
    assert config.admin.token == "abc"
    assert type(config.admin.token) is str  # the marker subclass never leaks out


def test_env_unset_is_an_error_naming_key_and_variable():
    err = error_of("state_dir: /x\nadmin:\n  token: ${TOK}" + ROUTE)
    assert err.path == "admin.token" and err.line == 3
    assert "environment variable TOK is not set" in str(err)


def test_env_default_covers_unset_and_empty():
    assert load("state_dir: ${D:-/srv}" + ROUTE).state_dir == "/srv"
    assert load("state_dir: ${D:-/srv}" + ROUTE, D="").state_dir == "/srv"
    assert load("state_dir: ${D:-/srv}" + ROUTE, D="/opt").state_dir == "/opt"
    assert load("state_dir: ${D}x" + ROUTE, D="").state_dir == "x"  # set but empty, no default


def test_env_escape_and_lone_dollars():
    config = load("state_dir: /a/$${HOME}/$5/$x" + ROUTE, HOME="/root")
    assert config.state_dir == "/a/${HOME}/$5/$x"


def test_env_uses_os_environ_by_default(monkeypatch):
    monkeypatch.setenv("FLUXGATE_TEST_STATE", "/from/environ")
    assert load_config_text("state_dir: ${FLUXGATE_TEST_STATE}" + ROUTE).state_dir == (
        "/from/environ"
    )


@pytest.mark.parametrize(
    "value",
    ["x\nroutes: []", "{listen: '0.0.0.0:1'}", "[1, 2]", "*alias", "!!python/object x", "${OTHER}"],
)
def test_env_value_cannot_inject_yaml(value):
    config = load("state_dir: ${TOK}" + ROUTE, TOK=value, OTHER="no")
    assert config.state_dir == value  # taken literally, never parsed, never re-substituted
    assert len(config.routes) == 1


def test_env_in_integer_and_boolean_fields():
    config = load(
        "workers: ${W}\nroutes: [{route: /a, upstream: 'http://127.0.0.1:1', public: '${P}'}]",
        W="8",
        P="true",
    )
    assert config.workers == 8 and config.routes[0].public is True
    auto = load("workers: ${W:-auto}" + ROUTE).workers
    assert auto == "auto" and type(auto) is str
    assert "workers" in str(error_of("workers: ${W}" + ROUTE, W="lots"))
    assert "lots" not in str(error_of("workers: ${W}" + ROUTE, W="lots"))  # values not echoed


def test_env_not_substituted_in_keys():
    err = error_of("${KEY}: 1" + ROUTE, KEY="workers")
    assert err.path == '["${KEY}"]' and "unknown key" in str(err)


@pytest.mark.parametrize("ref", ["${}", "${1X}", "${X:-a${B}}", "${X-default}", "${X", "${ X }"])
def test_env_malformed_reference(ref):
    err = error_of(f"state_dir: '{ref}'" + ROUTE, X="x", B="b")
    assert err.path == "state_dir" and "malformed variable reference" in str(err)


# --- durations and sizes --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        (0, 0.0),
        (30, 30.0),
        (2.5, 2.5),
        ("30", 30.0),
        ("60s", 60.0),
        ("5m", 300.0),
        ("24h", 86400.0),
        ("90d", 7776000.0),
        ("500ms", 0.5),
        ("1.5s", 1.5),
        ("1h30m", 5400.0),
        (" 10s ", 10.0),
    ],
)
def test_parse_duration(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(
    "text", ["", "s", "-5s", "5 s", "5M", "5sec", "1w", "1e3s", "inf", "s5", True, None, [5]]
)
def test_parse_duration_refuses(text):
    with pytest.raises(ValueError):
        parse_duration(text)


@pytest.mark.parametrize("value", [-1, float("inf"), float("nan"), -0.5])
def test_parse_duration_refuses_numbers(value):
    with pytest.raises(ValueError):
        parse_duration(value)


@pytest.mark.parametrize(
    ("text", "size"),
    [
        (16384, 16384),
        (1024.0, 1024),
        ("16384", 16384),
        ("16KiB", 16384),
        ("10MiB", 10 * 1024**2),
        ("1GiB", 1024**3),
        ("10MB", 10_000_000),
        ("64kb", 64_000),
        ("64 KB", 64_000),
        ("1.5MiB", 1572864),
        ("512B", 512),
        ("2TiB", 2 * 1024**4),
    ],
)
def test_parse_size(text, size):
    assert parse_size(text) == size


@pytest.mark.parametrize(
    "text", ["", "KiB", "10m", "10k", "10 megs", "-1", "1.5B", "0.1KiB", "1e3", True, 1.5, -3, None]
)
def test_parse_size_refuses(text):
    with pytest.raises(ValueError):
        parse_size(text)


def test_every_duration_and_size_field_takes_units():
    """Units are found from the schema annotations, so every such field accepts them."""
    config = load(
        "limits: {max_header_bytes: 2KiB, max_body_bytes: 1KB, header_timeout: 1m,"
        " idle_timeout: 2m, drain_timeout: 3m}\n"
        "api_keys: {default_expiry: 1d, rotation_grace: 1h}\n"
        "upstreams: {u: {targets: ['http://127.0.0.1:1'], connect_timeout: 100ms,"
        " read_timeout: 1m, pool_idle_timeout: 1h}}" + ROUTE
    )
    assert config.limits.max_header_bytes == 2048 and config.limits.max_body_bytes == 1000
    assert (config.limits.header_timeout, config.limits.drain_timeout) == (60.0, 180.0)
    assert (config.api_keys.default_expiry, config.api_keys.rotation_grace) == (86400.0, 3600.0)
    up = config.upstreams["u"]
    assert (up.connect_timeout, up.read_timeout, up.pool_idle_timeout) == (0.1, 60.0, 3600.0)


# --- addresses ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:8080", ("127.0.0.1", 8080)),
        ("0.0.0.0:0", ("0.0.0.0", 0)),
        ("localhost:65535", ("localhost", 65535)),
        ("gateway.internal:80", ("gateway.internal", 80)),
        ("[::1]:9901", ("::1", 9901)),
        ("[::]:8080", ("::", 8080)),
        ("[2001:db8::1]:443", ("2001:db8::1", 443)),
    ],
)
def test_parse_listen(text, expected):
    assert parse_listen(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "",
        "8080",
        ":8080",
        "127.0.0.1",
        "127.0.0.1:",
        "127.0.0.1:65536",
        "127.0.0.1:-1",
        "127.0.0.1:8o80",
        "127.0.0.1:８０",  # full-width digits are digits to str.isdigit, not to a socket
        "::1:8080",
        "[::1]",
        "[::1]8080",
        "[::1:8080",
        "[not-v6]:80",
        "999.0.0.1:80",
        "-bad-.host:80",
        "a b:80",
    ],
)
def test_parse_listen_refuses(text):
    with pytest.raises(ValueError):
        parse_listen(text)


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("http://127.0.0.1:9000", ("127.0.0.1", 9000)),
        ("http://app", ("app", 80)),
        ("http://app:8080/", ("app", 8080)),
        ("HTTP://App:1", ("App", 1)),
        ("http://[::1]:9000", ("::1", 9000)),
        ("https://app", ("app", 443)),
        ("HTTPS://app:8443", ("app", 8443)),
    ],
)
def test_parse_upstream_url(url, expected):
    assert parse_upstream_url(url) == expected


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("https://app:443/x", "without a path"),
        ("ftp://app:21", r"expected http\(s\)://host:port"),
        ("app:8080", r"expected http\(s\)://host:port"),
        ("http://app:8080/api", "without a path"),
        ("http://app:8080?x", "without a path, query"),
        ("http://app:8080#f", "fragment"),
        ("http://user:pw@app:80", "user info"),
        ("http://app:0", "invalid port"),
        ("http://app:99999", "invalid port"),
        ("http://ap\tp:80", "whitespace"),
        ("http://", r"expected http\(s\)://host:port"),
    ],
)
def test_parse_upstream_url_refuses(url, why):
    with pytest.raises(ValueError, match=why.replace("?", r"\?")):
        parse_upstream_url(url)


def test_parse_network_is_strict_about_host_bits():
    assert parse_network("10.0.0.0/8") == ipaddress.ip_network("10.0.0.0/8")
    assert parse_network("10.0.0.5") == ipaddress.ip_network("10.0.0.5/32")
    assert parse_network("fd00::/8") == ipaddress.ip_network("fd00::/8")
    with pytest.raises(ValueError, match="did you mean 10.0.0.0/8"):
        parse_network("10.0.0.1/8")
    for bad in ("10.0.0.0/33", "::1/129", "10.0.0", "host.example", "", "010.0.0.1"):
        with pytest.raises(ValueError, match="invalid CIDR"):
            parse_network(bad)


def test_is_loopback():
    for host in ("127.0.0.1", "127.9.9.9", "::1", "localhost", "LOCALHOST", "::ffff:127.0.0.1"):
        assert is_loopback(host), host
    for host in ("0.0.0.0", "::", "10.0.0.1", "128.0.0.1", "localhost.evil.com", "::2"):
        assert not is_loopback(host), host


def test_admin_listen_accepts_every_loopback_spelling():
    for listen in ("127.0.0.1:9901", "127.1.2.3:9901", "localhost:9901", '"[::1]:9901"'):
        assert load(f"admin: {{listen: {listen}}}" + ROUTE).admin.listen == listen.strip('"')


def test_admin_and_proxy_may_both_use_port_zero():
    config = load("listen: 127.0.0.1:0\nadmin: {listen: '127.0.0.1:0'}" + ROUTE)
    assert config.admin.listen == "127.0.0.1:0"


# --- routes ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "prefix"), [("/", "/"), ("/api", "/api"), ("/api/", "/api"), ("/a/b:c@d", "/a/b:c@d")]
)
def test_parse_route_path(path, prefix):
    assert parse_route_path(path) == prefix


@pytest.mark.parametrize(
    "path", ["", "api", "/a?b", "/a#b", "/a%20b", "/a\\b", "/a//b", "/a/./b", "/a/..", "/a b", "/é"]
)
def test_parse_route_path_refuses(path):
    with pytest.raises(ValueError):
        parse_route_path(path)


def test_dots_inside_a_segment_are_fine():
    assert parse_route_path("/v1..2/.well-known") == "/v1..2/.well-known"


def test_methods_are_normalized_and_deduplicated():
    config = load(
        "routes: [{route: /a, upstream: 'http://127.0.0.1:1', public: true,"
        " methods: [get, GET, Delete]}]"
    )
    assert config.routes[0].methods == ["GET", "DELETE"]


def test_zero_trust_public_route_may_carry_ip_allow():
    config = load(
        "routes:\n  - route: /a\n    upstream: http://127.0.0.1:1\n    public: true\n"
        "    middleware:\n      - ip_allow: 127.0.0.1\n"
    )
    assert config.routes[0].middleware == [schema.IpAllow(cidrs=["127.0.0.1"])]


def test_empty_admin_token_means_none():
    config = load("admin: {token: '${T:-}'}" + ROUTE)
    assert config.admin.token is None


# --- msgspec path translation and unknown keys ----------------------------------------------


def test_unknown_top_level_key():
    err = error_of("listen: 127.0.0.1:8080\nlistne: 127.0.0.1:8081" + ROUTE)
    assert (err.path, err.line) == ("listne", 2)
    assert "unknown key (did you mean 'listen'?)" in str(err)


def test_unknown_nested_key_names_it():
    err = error_of("limits:\n  idle_timeout: 5s\n  max_hedaer_bytes: 9000" + ROUTE)
    assert (err.path, err.line) == ("limits.max_hedaer_bytes", 3)


def test_msgspec_path_index_and_type():
    err = error_of(
        "routes:\n  - {route: /a, upstream: 'http://127.0.0.1:1', public: true}\n"
        "  - route: /b\n    upstream: http://127.0.0.1:1\n    public: true\n"
        "    methods: [GET, 7]\n"
    )
    assert (err.path, err.line) == ("routes[1].methods[1]", 6)
    assert "expected a string, got an integer" in str(err)


def test_msgspec_dict_key_is_recovered():
    # msgspec reports dict keys as "[...]"; the loader finds which entry failed.
    err = error_of(
        "upstreams:\n  good: {targets: ['http://127.0.0.1:1']}\n"
        "  'read:bad': {targets: ['http://127.0.0.1:2'], pool_size: 0}" + ROUTE
    )
    assert (err.path, err.line) == ('upstreams["read:bad"].pool_size', 3)
    assert "must be >= 1" in str(err)


def test_msgspec_path_inside_rewritten_middleware():
    err = error_of(
        "routes:\n  - route: /a\n    upstream: http://127.0.0.1:1\n    public: true\n"
        "    middleware:\n      - ip_allow: {cidrs: [127.0.0.1, {x: 1}]}\n"
    )
    assert (err.path, err.line) == ("routes[0].middleware[0].ip_allow.cidrs[1]", 6)
    assert "expected a string, got a mapping" in str(err)


def test_missing_required_key_reports_the_parent_line():
    err = error_of("routes:\n  - public: true\n    upstream: http://127.0.0.1:1\n")
    assert (err.path, err.line) == ("routes[0]", 2)
    assert "missing required key 'route'" in str(err)


def test_format_path():
    assert format_path(("routes", 2, "middleware", 0, "ip_allow", 1)) == (
        "routes[2].middleware[0].ip_allow[1]"
    )
    assert format_path(("scope_map", "read:x", 0)) == 'scope_map["read:x"][0]'
    assert format_path(("upstreams", 'a"b')) == 'upstreams["a\\"b"]'
    assert format_path(()) == ""


# --- errors are only ever ConfigError -------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "\x00",
        "[",
        "{a: [}",
        ":",
        "- - -",
        "a: !!binary aGVsbG8=",
        "? [a, b]\n: c",
        "a: !!int x",
        "\t- x",
        "routes: 5",
        "routes: [5]",
        "routes: [{}]",
        "routes: [{middleware: 5}]",
        "routes: [{middleware: [5]}]",
        "upstreams: [1]",
        "limits: [1]",
        "'%': 1",
        "workers: .inf",
        "workers: 1.5",
        "scope_map: {a: [1]}",
        "a: 2001-12-14",
        "---\n...\n---\n",
        "\ufeffroutes: []",
    ],
)
def test_only_config_errors_escape(text):
    with pytest.raises(ConfigError):
        load_config_text(text, env={})


def test_syntax_error_has_a_line():
    err = error_of("listen: 127.0.0.1:8080\nroutes:\n  - route: /a\n   upstream: x\n")
    assert err.line is not None and "invalid YAML" in str(err)


def test_alias_bomb_is_refused_before_expansion():
    lines = ["a: &a [x, x, x, x, x, x, x, x, x, x]"]
    lines += [
        f"{c}: &{c} [" + ", ".join([f"*{p}"] * 10) + "]"
        for p, c in zip("abcdefgh", "bcdefghi", strict=True)
    ]
    err = error_of("\n".join(lines))
    assert (err.path, err.line) == ("b[0]", 2) and "aliases are not supported" in str(err)


def test_load_config_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="cannot read the config file"):
        load_config(tmp_path / "nope.yaml")


def test_load_config_not_utf8(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_bytes(b"listen: 127.0.0.1:8080\nstate_dir: \xff\xfe\n")
    with pytest.raises(ConfigError, match="not valid UTF-8") as info:
        load_config(path)
    assert info.value.line == 2


def test_source_is_attached_as_a_note(tmp_path):
    path = tmp_path / "fluxgate.yaml"
    path.write_text("workers: 0" + ROUTE)
    with pytest.raises(ConfigError) as info:
        load_config(os.fspath(path))
    assert f"while loading {path}" in info.value.__notes__


# --- middleware table -----------------------------------------------------------------------


def test_middleware_table_matches_the_schema():
    members = typing.get_args(schema.Middleware) or (schema.Middleware,)
    assert set(MIDDLEWARE_FORMS) == set(schema.AVAILABLE_KINDS)
    assert schema.AVAILABLE_KINDS <= schema.KNOWN_KINDS
    for kind, form in MIDDLEWARE_FORMS.items():
        assert form.struct.__struct_config__.tag == kind
        assert form.struct in members
        if form.shorthand is not None:
            assert form.shorthand in {f.encode_name for f in msgspec.structs.fields(form.struct)}


@pytest.mark.parametrize("kind", sorted(schema.KNOWN_KINDS - schema.AVAILABLE_KINDS))
def test_known_but_unavailable_kinds(kind):
    err = error_of(
        "routes:\n  - route: /a\n    upstream: http://127.0.0.1:1\n    public: true\n"
        f"    middleware:\n      - {kind}: {{}}\n"
    )
    assert (err.path, err.line) == (f"routes[0].middleware[0].{kind}", 6)
    assert f"middleware '{kind}' is not available yet in this version" in str(err)


def test_ip_allow_tag_field_cannot_be_set_by_hand():
    err = error_of(
        "routes:\n  - route: /a\n    upstream: http://127.0.0.1:1\n    public: true\n"
        "    middleware:\n      - ip_allow: {kind: jwt, cidrs: [127.0.0.1]}\n"
    )
    assert err.path == "routes[0].middleware[0].ip_allow.kind" and "unknown key" in str(err)


# --- resolve_upstream and worker_count ------------------------------------------------------


def test_resolve_named_upstream():
    config = load_config(DATA / "good" / "full.yaml", env=BASE_ENV)
    spec = resolve_upstream(config, config.routes[0])
    assert spec == UpstreamSpec(
        name="payments",
        targets=(("10.0.0.5", 8080), ("10.0.0.6", 8080)),
        connect_timeout=0.5,
        read_timeout=30.0,
        pool_size=16,
        pool_idle_timeout=45.0,
    )
    assert resolve_upstream(config, config.routes[1]).targets == (("fd00::5", 8080),)


def test_resolve_url_upstream_takes_defaults():
    config = load_config(DATA / "good" / "minimal.yaml")
    spec = resolve_upstream(config, config.routes[0])
    defaults = schema.Upstream(targets=["x"])
    assert spec.name == "http://127.0.0.1:9000"
    assert spec.targets == (("127.0.0.1", 9000),)
    assert (spec.connect_timeout, spec.read_timeout, spec.pool_size, spec.pool_idle_timeout) == (
        defaults.connect_timeout,
        defaults.read_timeout,
        defaults.pool_size,
        defaults.pool_idle_timeout,
    )


def test_resolve_unknown_upstream_on_a_hand_built_config():
    config = schema.Config()
    with pytest.raises(ConfigError, match="unknown upstream 'nope'"):
        resolve_upstream(config, schema.Route(route="/", upstream="nope", public=True))


def test_worker_count(monkeypatch):
    auto = load(ROUTE)
    assert worker_count(auto, None) >= 1
    assert worker_count(auto, 3) == 3
    assert worker_count(load("workers: 5" + ROUTE), None) == 5
    assert worker_count(load("workers: 5" + ROUTE), 2) == 2
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(1000)), raising=False)
    assert worker_count(auto, None) == 256
    for bad in (0, 257, -1, True):
        with pytest.raises(ConfigError, match="--workers"):
            worker_count(auto, bad)


def test_check_config_on_a_hand_built_config():
    route = schema.Route(route="/x", upstream="http://127.0.0.1:1")
    with pytest.raises(ConfigError, match="no authentication middleware") as info:
        check_config(schema.Config(routes=[route]))
    assert info.value.path == "routes[0]"
