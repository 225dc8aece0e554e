"""The middleware registry: every kind's record agrees with the schema, and the loader, the
config checker, ``routes explain`` / ``auth verify`` and the ``--probe`` battery reach every
kind through it (none of them names a kind)."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import typing
from collections import defaultdict

import msgspec
import pytest

from fluxgate.cli import audit, probe
from fluxgate.config import ConfigError, load_config_text, schema
from fluxgate.middleware import _BY_STRUCT, KINDS, auth_methods, kind_of
from fluxgate.middleware.kind import MiddlewareKind

# A route using every kind (`any` holding the others that authenticate): a new kind joins it.
EVERY_KIND = """
routes:
  - route: /all
    upstream: http://127.0.0.1:9
    middleware:
      - ip_allow: [127.0.0.0/8]
      - jwt: {jwks_uri: "http://127.0.0.1:9/jwks.json", audience: api}
      - any: [api_key: [read], jwt: {issuer: "http://127.0.0.1:9", audience: api},
              oauth2: {client_id: gw, client_secret: s, issuer: "http://127.0.0.1:9"}]
      - quota: 10/m
"""


def sample(struct: type[msgspec.Struct]) -> msgspec.Struct:
    """An instance with every required field filled (unchecked: only describe reads it)."""
    values = {}
    for field in msgspec.structs.fields(struct):
        if field.required:
            tp = field.type
            while typing.get_origin(tp) is typing.Annotated:
                tp = typing.get_args(tp)[0]
            values[field.name] = [] if typing.get_origin(tp) is list else "x"
    return struct(**values)


@pytest.mark.parametrize("name", list(KINDS))
def test_a_record_agrees_with_the_schema(name):
    kind = KINDS[name]
    assert isinstance(kind, MiddlewareKind)
    assert kind.struct.__struct_config__.tag == name
    assert kind.struct in typing.get_args(schema.Middleware)
    fields = {f.encode_name: f for f in msgspec.structs.fields(kind.struct)}
    if kind.shorthand is not None:
        assert kind.shorthand in fields
    if kind.nested:
        assert typing.get_origin(typing.get_args(fields[kind.shorthand].type)[0]) is list
    in_any = kind.struct in typing.get_args(schema.AuthMethod)
    assert in_any == (kind.authenticates and not kind.nested)
    assert kind_of(sample(kind.struct)) is kind
    summary = kind.describe(sample(kind.struct))
    assert summary.startswith(name) and "\n" not in summary


def test_the_registry_is_the_union_and_the_derived_sets_follow_it():
    assert set(KINDS) == schema.AVAILABLE_KINDS
    assert schema.AVAILABLE_KINDS <= schema.KNOWN_KINDS
    assert not schema.PLANNED_KINDS & set(KINDS)
    assert "oauth2" in schema.KNOWN_KINDS
    assert schema.AUTH_KINDS == {name for name, kind in KINDS.items() if kind.authenticates}


def test_a_struct_outside_the_registry_has_no_kind():
    with pytest.raises(ValueError, match="no middleware implementation for Route"):
        kind_of(schema.Route(route="/", upstream="x"))


def test_the_config_package_imports_no_middleware_and_no_core():
    code = (
        "import sys, fluxgate.config.loader, fluxgate.config.resolve\n"
        "bad = [m for m in sys.modules if m.startswith(('fluxgate._core', 'fluxgate.auth', "
        "'fluxgate.middleware'))]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.fixture
def calls(monkeypatch):
    """Every record replaced (in place, where every module finds it) by one that notes which
    kinds the generic code asked for what; batteries are stubbed (nothing is sent)."""
    seen: dict[str, set[str]] = defaultdict(set)

    def noted(what, name, function):
        def call(*args, **kwargs):
            seen[what].add(name)
            return function(*args, **kwargs)

        return call

    for name, kind in list(KINDS.items()):
        spy = dataclasses.replace(
            kind,
            check=noted("check", name, kind.check),
            describe=noted("describe", name, kind.describe),
            findings=noted("findings", name, kind.findings),
            probes=None if kind.probes is None else noted("probes", name, lambda battery: []),
        )
        monkeypatch.setitem(KINDS, name, spy)
        monkeypatch.setitem(_BY_STRUCT, kind.struct, spy)
    return seen


def test_the_sample_route_uses_every_kind():
    route = load_config_text(EVERY_KIND).routes[0]
    used = {kind_of(m).name for m in route.middleware}
    used |= {kind_of(m).name for m in auth_methods(route)}
    assert used == set(KINDS)


def test_loader_checker_audit_and_probe_ask_the_records(calls):
    config = load_config_text(EVERY_KIND)
    assert calls["check"] == set(KINDS)
    route = config.routes[0]
    doc = audit.explain(config, "GET", "/all")
    assert [entry["kind"] for entry in doc["chain"]] == ["ip_allow", "jwt", "any", "quota"]
    assert calls["describe"] == set(KINDS)
    assert [d["method"] for d in doc["scopes"]] == ["jwt", "api_key", "jwt", "oauth2"]
    audit.findings(config, route)
    methods = {name for name, kind in KINDS.items() if kind.authenticates and not kind.nested}
    assert calls["findings"] == methods
    assert [p.name for p in probe.battery(config, route)] == ["no_credential"]
    assert calls["probes"] == {name for name, kind in KINDS.items() if kind.probes is not None}


def test_the_any_member_check_names_the_methods_from_the_registry():
    config = EVERY_KIND.replace("api_key: [read]", "quota: 1/s")
    with pytest.raises(ConfigError, match=r"combines authentication methods \(api_key, jwt, oauth2\); "
                                        "'quota' is not one"):
        load_config_text(config)
