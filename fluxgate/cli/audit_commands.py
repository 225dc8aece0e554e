"""``fluxctl routes explain`` and ``fluxctl auth verify``; the logic is in
``fluxgate.cli.audit``, this module parses arguments and prints.

    fluxctl routes explain METHOD PATH [--scopes a,b]
    fluxctl auth verify --endpoint PATH [--method GET] --mode strict|audit
                        [--token T | --api-key K [--client-ip IP]]
                        [--probe URL [--flood N]]

Both work on the config and its state_dir alone. With ``--probe URL``, ``auth verify`` also
fires the hostile battery of ``fluxgate.cli.probe`` at the live route (``URL`` + endpoint)
and judges each answer; a ``--token``/``--api-key`` is then sent live as a sanity probe (and
tampered) instead of being checked offline, and ``--admin-url``, when given, reports what
the battery cost the identity provider in JWKS fetches. Exit codes: ``routes explain`` 0
whenever it could explain (a 404 or 405 is an answer, not a failure); ``auth verify`` 0 in
audit mode, 1 in strict mode when a finding of severity warning or higher exists, the
credential is refused or a probe fails, 2 when the command cannot answer (usage, config, no
route at the endpoint, no key snapshot or signing secret; with ``--probe``: a bad URL, a
gateway that does not answer, a route that refuses the method).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from fluxgate.auth.introspection import provider_source as oauth2_source
from fluxgate.auth.jwks import provider_source
from fluxgate.auth.keys import load_signing_key
from fluxgate.cli import audit, probe
from fluxgate.config import schema
from fluxgate.errors import FluxGateError
from fluxgate.middleware import auth_methods

EXIT_FAILED = 2


def add_parser(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    routes = sub.add_parser("routes", help="how requests are routed", parents=[common],
                            description="Explain routing and scope decisions.")
    cmds = routes.add_subparsers(dest="command", required=True, metavar="COMMAND")
    p = cmds.add_parser("explain", parents=[common],
                        help="which route, middleware and scope rule a request meets")
    p.add_argument("method", metavar="METHOD")
    p.add_argument("path", metavar="PATH")
    p.add_argument("--scopes", metavar="A,B",
                   help="scopes a caller holds: would they be authorized, and by which rule")
    p.set_defaults(func=cmd_explain)

    auth = sub.add_parser("auth", help="audit authentication", parents=[common],
                          description="Audit a route's authentication.")
    cmds = auth.add_subparsers(dest="command", required=True, metavar="COMMAND")
    p = cmds.add_parser("verify", parents=[common],
                        help="a route's chain and findings; with a credential, its decision")
    p.add_argument("--endpoint", required=True, metavar="PATH", help="e.g. /api/orders")
    p.add_argument("--method", default="GET", help="default: GET")
    p.add_argument("--mode", required=True, choices=("strict", "audit"),
                   help="strict exits 1 on a warning or worse, or a refused credential")
    cred = p.add_mutually_exclusive_group()
    cred.add_argument("--token", metavar="JWT", help="verify this bearer token")
    cred.add_argument("--api-key", metavar="KEY", help="check this API key")
    p.add_argument("--client-ip", default="127.0.0.1", metavar="IP",
                   help="client address for a key's IP allowlist (default: 127.0.0.1)")
    p.add_argument("--probe", metavar="URL",
                   help="fire hostile requests at the live route at URL + endpoint (URL: "
                   "the gateway, e.g. http://127.0.0.1:8080) and judge each answer; a "
                   "--token or --api-key is then sent live as a sanity check")
    p.add_argument("--flood", type=_flood_size, default=probe.FLOOD_DEFAULT, metavar="N",
                   help=f"with --probe: tokens in the random-kid flood (default "
                   f"{probe.FLOOD_DEFAULT}, at most {probe.FLOOD_MAX})")
    p.set_defaults(func=cmd_verify)


def _flood_size(text: str) -> int:
    n = int(text)
    if not 1 <= n <= probe.FLOOD_MAX:
        raise argparse.ArgumentTypeError(f"must be 1 to {probe.FLOOD_MAX}")
    return n


def _failed(ctx: Any, message: str) -> int:
    from fluxgate.cli.fluxctl import fail

    fail(ctx, message)
    return EXIT_FAILED


def cmd_explain(ctx: Any) -> int:
    a = ctx.args
    try:
        config = ctx.config()
    except FluxGateError as exc:  # fluxctl's CommandError: no config, or a bad one
        return _failed(ctx, str(exc))
    scopes = None if a.scopes is None else [s.strip() for s in a.scopes.split(",") if s.strip()]
    doc = audit.explain(config, a.method, a.path, scopes)
    _print(ctx, doc, render_explain)
    return 0


def cmd_verify(ctx: Any) -> int:
    a = ctx.args
    try:
        config = ctx.config()
    except FluxGateError as exc:  # fluxctl's CommandError: no config, or a bad one
        return _failed(ctx, str(exc))
    doc = audit.route_request(config, a.method, a.endpoint)
    if doc["route"] is None:
        r = doc["refusal"]
        return _failed(ctx, f"no route for {doc['request']['method']} {a.endpoint}: the "
                            f"gateway answers {r['status']} {r['code']} ({r['message']})")
    route = config.routes[doc["route"]["index"]]
    path = doc["request"]["normalized"]
    method = doc["request"]["method"]
    found = audit.findings(config, route)
    doc["mode"] = a.mode
    doc["findings"] = [f.to_dict() for f in found]
    doc["credential"] = None
    try:
        if a.probe is not None:
            doc["probe"] = _probe(ctx, config, route, doc)
        elif a.token is not None:
            doc["credential"] = audit.check_token(config, route, method, path, a.token)
        elif a.api_key is not None:
            doc["credential"] = audit.check_api_key(config, route, method, path, a.api_key,
                                                    a.client_ip)
    except (audit.AuditError, probe.ProbeError) as exc:
        return _failed(ctx, str(exc))
    doc["failed"] = what_failed(doc)
    failing = bool(doc["failed"])
    doc["result"] = "fail" if failing else "pass"
    _print(ctx, doc, render_verify)
    return 1 if failing and a.mode == "strict" else 0


def what_failed(doc: dict[str, Any]) -> list[str]:
    """Why ``auth verify`` fails, one phrase per cause (empty: it passes): findings of
    severity warning or higher by severity, a refused credential, failed probes."""
    failed = []
    for severity in ("error", "warning"):
        codes = [f["code"] for f in doc["findings"] if f["severity"] == severity]
        if codes:
            plural = "s" if len(codes) > 1 else ""
            failed.append(f"{len(codes)} {severity} finding{plural}: {', '.join(codes)}")
    cred = doc["credential"]
    if cred is not None and cred["decision"] != "allow":
        failed.append(f"credential refused: {cred['status']} {cred['code']}")
    if "probe" in doc:
        names = [r["name"] for r in doc["probe"]["probes"] if r["result"] == "fail"]
        if names:
            plural = "s" if len(names) > 1 else ""
            failed.append(f"{len(names)} probe{plural} failed: {', '.join(names)}")
    return failed


def _probe(ctx: Any, config: schema.Config, route: schema.Route,
           doc: dict[str, Any]) -> dict[str, Any]:
    """Run the probe battery against the live route (ProbeError when it cannot run)."""
    a = ctx.args
    refusal = doc["refusal"]
    if refusal is not None:  # a 405: every probe would get it, whatever it sent
        raise probe.ProbeError(f"the gateway answers {refusal['status']} {refusal['code']} to "
                               f"{doc['request']['method']} {a.endpoint} ({refusal['message']})"
                               ": nothing to probe")
    target = probe.Target(a.probe, doc["request"]["method"], a.endpoint)
    probes = probe.battery(config, route, token=a.token, api_key=a.api_key, flood=a.flood,
                           signing_key=_signing_key(config))
    return probe.run(target, probes, _jwks_counter(ctx, route),
                     _introspection_counter(ctx, route))


def _signing_key(config: schema.Config) -> bytes | None:
    # Lets the probe mint a key whose tag verifies (an unknown id gets past the tag check);
    # fluxctl may well run where the gateway's state_dir is not: then that probe is skipped.
    try:
        return load_signing_key(config.api_keys.signing_secret, config.state_dir, create=False)
    except (OSError, FluxGateError):
        return None


def _jwks_counter(ctx: Any, route: schema.Route) -> Callable[[], int | None] | None:
    """With --admin-url: a function counting the route's provider's JWKS fetches (the
    admin API's /admin/jwks), else None. Any admin failure only leaves the count out."""
    jwt = next(auth_methods(route, "jwt"), None)
    source = provider_source(jwt) if jwt is not None else None
    return _admin_counter(ctx, "/admin/jwks", "source", source, "results")


def _introspection_counter(ctx: Any, route: schema.Route) -> Callable[[], int | None] | None:
    """With --admin-url: a function counting the calls the route's oauth2 provider made to
    its authorization server (``/admin/oauth2``), else None."""
    entry = next(auth_methods(route, "oauth2"), None)
    source = oauth2_source(entry) if entry is not None else None
    return _admin_counter(ctx, "/admin/oauth2", "provider", source, "calls")


def _admin_counter(ctx: Any, path: str, key: str, source: str | None,
                   counts: str) -> Callable[[], int | None] | None:
    """A function summing ``counts`` of the provider whose ``key`` is ``source`` in the
    admin API's ``path`` document; None without --admin-url or a provider."""
    if not ctx.remote or source is None:
        return None
    try:
        client = ctx.admin()
    except FluxGateError:
        return None

    def count() -> int | None:
        try:
            providers = client.call("GET", path).get("providers", [])
        except FluxGateError:
            return None
        found = [p for p in providers if p.get(key) == source]
        return sum(found[0].get(counts, {}).values()) if found else None

    return count


# ---- rendering ------------------------------------------------------------------------------


def _print(ctx: Any, doc: dict[str, Any], render) -> None:
    if ctx.json:
        print(json.dumps(doc, indent=2))
    else:
        print("\n".join(render(doc)))


def _route_lines(doc: dict[str, Any]) -> list[str]:
    req = doc["request"]
    lines = [f"{req['method']} {req['path']}"]
    if req["normalized"] is not None and req["normalized"] != req["path"]:
        lines[0] += f"  (normalized: {req['normalized']})"
    route = doc["route"]
    if route is not None:
        methods = ", ".join(route["methods"]) if route["methods"] else "any"
        lines.append(f"  route       #{route['index']} {route['prefix']} -> {route['upstream']}")
        lines.append(f"  methods     {methods}")
        lines.append(f"  public      {'yes' if route['public'] else 'no'}")
        chain = doc["chain"]
        lines.append("  chain       " + (chain[0]["summary"] if chain else "(none)"))
        lines += [f"              {m['summary']}" for m in chain[1:]]
    refusal = doc["refusal"]
    if refusal is not None:
        lines.append(f"  answer      {refusal['status']} {refusal['code']}: {refusal['message']}")
    return lines


def _scope_lines(scopes: list[dict[str, Any]]) -> list[str]:
    lines = []
    for s in scopes:
        rules = "; ".join(f"{c['scope']} by \"{c['rule']}\"" for c in s["covering"]) or "none"
        lines.append(f"  {s['method']:<11} requires {' '.join(s['required']) or 'no scope'}; "
                     f"scope_map rules covering it: {rules}")
        if "decision" in s:
            d = s["decision"]
            verdict = "authorized" if d["authorized"] else f"refused ({d['status']})"
            lines.append(f"              {verdict}: {d['why']}")
    return lines


def render_explain(doc: dict[str, Any]) -> list[str]:
    lines = _route_lines(doc)
    if doc.get("scopes"):
        lines += _scope_lines(doc["scopes"])
    elif doc["route"] is not None:
        lines.append("  scopes      no authentication on this route")
    return lines


def render_verify(doc: dict[str, Any]) -> list[str]:
    lines = _route_lines(doc)
    if doc["findings"]:
        lines.append("findings:")
        width = max(len(f["code"]) for f in doc["findings"])
        lines += [f"  {f['severity']:<8} {f['code']:<{width}}  {f['message']}"
                  for f in doc["findings"]]
    else:
        lines.append("findings: none")
    cred = doc["credential"]
    if cred is not None:
        who = f" key {cred['key_id']}" if cred.get("key_id") else ""
        if cred["decision"] == "allow":
            p = cred["principal"]
            lines.append(f"credential ({cred['method']}{who}): allow, subject {p['subject']}, "
                         f"scopes {' '.join(p['scopes']) or '-'}")
            lines += _scope_lines(cred["scopes"])
        else:
            lines.append(f"credential ({cred['method']}{who}): deny, {cred['status']} "
                         f"{cred['code']}, reason {cred['reason']}")
        if cred.get("keys"):
            lines.append(f"  keys        {cred['keys']}")
        if cred.get("quota"):
            q = cred["quota"]
            lines.append(f"  quota       {q['rate']}: {q['used']} used, {q['remaining']} left "
                         "(not spent by this check)")
        if cred.get("note"):
            lines.append(f"  note        {cred['note']}")
    if doc.get("probe"):
        lines += render_probe(doc["probe"])
    # "result: fail: 1 warning finding: no_quota (audit mode)": what failed, not only that.
    verdict = doc["result"] + (": " + "; ".join(doc["failed"]) if doc["failed"] else "")
    lines.append(f"result: {verdict} ({doc['mode']} mode)")
    return lines


def _got(answers: list[dict[str, Any]]) -> str:
    """``401 invalid_token``, ``50x 401 invalid_token``, ``no answer (timed out)``."""
    labels = []
    for a in answers:
        if a["status"] is None:
            label = f"no answer ({a['failure']})"
        else:
            label = f"{a['status']} {a['error'] or ''}".rstrip()
        labels.append(label if a["count"] == 1 else f"{a['count']}x {label}")
    return ", ".join(labels) or "-"


def render_probe(probed: dict[str, Any]) -> list[str]:
    """The probe table: one row per probe, its why and note on lines below."""
    rows = [(r["result"] if r["result"] != "fail" else "FAIL", r["name"], r["expected"],
             _got(r["got"]), r["sent"]) for r in probed["probes"]]
    heads = ("result", "probe", "expected", "got", "sent")
    widths = [max(len(row[i]) for row in [heads, *rows]) for i in range(4)]
    method, path = probed["request"].split(" ", 1)  # the path holds the URL's own path
    origin = urlsplit(probed["url"])
    lines = [f"probe {method} {origin.scheme}://{origin.netloc}{path}:"]
    for row, r in zip([heads, *rows], [None, *probed["probes"]], strict=True):
        cells = [f"{cell:<{w}}" for cell, w in zip(row, widths, strict=False)]
        lines.append("  " + "  ".join([*cells, row[4]]))
        for label in ("why", "note"):
            if r is not None and r[label]:
                lines.append(f"  {'':<{widths[0]}}  {label}: {r[label]}")
    s = probed["summary"]
    lines.append(f"probes: {s['pass']} passed, {s['fail']} failed, {s['skip']} skipped "
                 f"({s['requests']} requests)")
    return lines

