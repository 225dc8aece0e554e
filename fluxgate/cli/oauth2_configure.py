"""``fluxctl oauth2 configure``: read an authorization server's metadata, say what it offers
and what is wrong with it, and add a route with an ``oauth2`` middleware to the config.

    fluxctl oauth2 configure --issuer URL --client-id ID --upstream NAME|URL
        [--client-secret-env VAR] [--route PATH] [--scope S ...]
        [--login --redirect URL] [--config FILE] [--dry-run] [--json]

The metadata is read as the gateway reads it (``master/as_client.py`` ``discover_provider``): the
OpenID Provider document and the RFC 8414 one, merged, each of whose ``issuer`` must be the
configured one exactly (RFC 8414 §3.3). Findings have a stable code and a severity; any
``error`` refuses the write. The route is inserted as text after the last entry of
``routes`` (created when missing), so every other line of the file, comments included,
stays as it was; the resulting file must load (``load_config_text``, the checks of
``fluxgate check``) or nothing is written. The client secret is only ever written as a
``${VAR}`` reference: a literal secret on the command line is refused without being echoed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import yaml

from fluxgate.cli.findings import SEVERITIES, Finding, worst
from fluxgate.cli.fluxctl import CommandError
from fluxgate.config import load_config_text
from fluxgate.config.parsers import is_loopback
from fluxgate.errors import ConfigError
from fluxgate.files import replace_file
from fluxgate.master.as_client import discover_provider
from fluxgate.master.fetch import FetchError

DISCOVERY_TIMEOUT = 10.0
DEFAULT_SECRET_ENV = "OAUTH_CLIENT_SECRET"
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")
# Members holding URLs a gateway or a browser is sent to, and who goes there.
ENDPOINTS = {
    "authorization_endpoint": "the browser",
    "token_endpoint": "the gateway (codes, refresh tokens, the client secret)",
    "jwks_uri": "the gateway (the keys that verify ID tokens)",
    "revocation_endpoint": "the gateway (refresh tokens at logout)",
    "end_session_endpoint": "the browser (RP-initiated logout)",
    "introspection_endpoint": "the gateway (tokens, the client secret)",
}
LOGIN_NEEDS = ("authorization_endpoint", "token_endpoint", "jwks_uri")
LOGIN_USES = (*LOGIN_NEEDS, "revocation_endpoint", "end_session_endpoint")
INTROSPECTION_NEEDS = INTROSPECTION_USES = ("introspection_endpoint",)


class ConfigureRefused(Exception):
    """Nothing is written; the message says why (never with a secret in it)."""


@dataclass
class Plan:
    """What ``configure`` found and would write."""

    issuer: str
    login: bool
    metadata: dict[str, Any] = field(default_factory=dict)
    findings: list[Finding] = field(default_factory=list)
    entry: dict[str, Any] = field(default_factory=dict)  # the route, as YAML data
    snippet: str = ""  # the text inserted into the config

    def to_dict(self) -> dict[str, Any]:
        endpoints = {name: self.metadata[name] for name in ENDPOINTS
                     if isinstance(self.metadata.get(name), str)}
        ordered = sorted(self.findings, key=lambda f: -SEVERITIES.index(f.severity))
        return {"issuer": self.issuer, "login": self.login, "endpoints": endpoints,
                "findings": [f.to_dict() for f in ordered], "route": self.entry,
                "snippet": self.snippet}


# ---- the metadata -------------------------------------------------------------------------


async def _read_metadata(issuer: str, timeout: float) -> tuple[dict[str, Any], list[Finding]]:
    """The metadata as the gateway's login reads it (``as_client.discover_provider``)."""
    found: list[Finding] = []
    try:
        document, other_failed = await discover_provider(issuer, timeout)
    except FetchError as exc:
        raise ConfigureRefused(_discovery_failure(issuer, exc)) from None
    if other_failed is not None and "names issuer" in str(other_failed):
        found.append(Finding(
            "issuer_mismatch", "warning",
            f"{other_failed}: the gateway ignores that document (RFC 8414 §3.3), so what only "
            "it lists (often revocation_endpoint) is not used"))
    return document, found


def _discovery_failure(issuer: str, exc: FetchError) -> str:
    if "names issuer" in str(exc):
        return (f"issuer mismatch: {exc}. The issuer must be exactly what the server calls "
                "itself (RFC 8414 §3.3; a trailing slash counts): the gateway would refuse "
                "this metadata and every token and ID token it vouches for")
    return f"no usable metadata for {issuer}: {exc}"


def metadata_findings(metadata: dict[str, Any], *, login: bool) -> list[Finding]:
    """What the metadata means for the gateway: endpoints, PKCE, RFC 9207 ``iss``."""
    found: list[Finding] = []
    for name in LOGIN_NEEDS if login else INTROSPECTION_NEEDS:
        if not isinstance(metadata.get(name), str) or not metadata[name]:
            what = "the browser login" if login else "token introspection"
            found.append(Finding(f"no_{name}", "error",
                                 f"the metadata lists no {name}: {what} cannot work"))
    loopback = []
    for name in LOGIN_USES if login else INTROSPECTION_USES:
        finding = _endpoint_finding(name, metadata.get(name))
        if finding is not None:
            found.append(finding)
        elif str(metadata.get(name, "")).startswith("http://"):
            loopback.append(name)
    if loopback:
        found.append(Finding(
            "endpoint_plain_http_loopback", "info",
            f"{', '.join(loopback)} {'is' if len(loopback) == 1 else 'are'} plain http on "
            "loopback: only for a server on this machine"))
    if login:
        found += _login_findings(metadata)
    elif not metadata.get("revocation_endpoint"):
        found.append(Finding("no_revocation_endpoint", "info",
                             "the metadata lists no revocation_endpoint (not needed to "
                             "introspect tokens)"))
    return found


def _endpoint_finding(name: str, url: Any) -> Finding | None:
    """An error for an endpoint the gateway or the browser cannot safely use, else None."""
    if url is None:
        return None
    if not isinstance(url, str):
        return Finding(f"bad_{name}", "error", f"{name} is not a string")
    parts = urlsplit(url)
    try:
        host = parts.hostname
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError:
        host = None
    if parts.scheme not in ("http", "https") or not host or parts.fragment:
        return Finding(f"bad_{name}", "error", f"{name} {url!r} is not an absolute http(s) URL")
    if parts.scheme == "http" and not is_loopback(host):
        return Finding("endpoint_plain_http", "error",
                       f"{name} {url} is plain http to {host}: what {ENDPOINTS[name]} sends "
                       "there crosses the network in clear text (https, or http on loopback "
                       "only)")
    return None


def _login_findings(metadata: dict[str, Any]) -> list[Finding]:
    found: list[Finding] = []
    methods = metadata.get("code_challenge_methods_supported")
    if not isinstance(methods, list):
        found.append(Finding(
            "pkce_not_advertised", "warning",
            "code_challenge_methods_supported is missing: the server does not say it "
            "supports PKCE S256 (the gateway sends S256 anyway; check the server enforces it)"))
    elif "S256" not in methods:
        only = "only plain" if methods == ["plain"] else f"only {methods!r}"
        found.append(Finding(
            "pkce_s256_unsupported", "error",
            f"code_challenge_methods_supported lists {only}: the gateway uses PKCE S256 "
            "alone (plain protects nothing against a stolen code, RFC 7636 §4.2)"))
    if metadata.get("authorization_response_iss_parameter_supported") is True:
        found.append(Finding(
            "iss_parameter_supported", "info",
            "authorization_response_iss_parameter_supported: every callback must carry "
            "iss (RFC 9207), and the gateway checks it"))
    else:
        found.append(Finding(
            "iss_parameter_not_supported", "warning",
            "authorization_response_iss_parameter_supported is not true: callbacks carry no "
            "iss (RFC 9207), so a mix-up between several servers of one client goes "
            "unnoticed (harmless with a single server)"))
    if not metadata.get("end_session_endpoint"):
        found.append(Finding(
            "no_end_session_endpoint", "info",
            "the metadata lists no end_session_endpoint: logout ends the gateway's session "
            "only, and the user stays signed in at the server"))
    if not metadata.get("revocation_endpoint"):
        found.append(Finding(
            "no_revocation_endpoint", "info",
            "the metadata lists no revocation_endpoint: a logout cannot revoke the refresh "
            "token (it stays valid at the server until it expires)"))
    if not metadata.get("backchannel_logout_supported"):
        found.append(Finding(
            "no_backchannel_logout", "info",
            "backchannel_logout_supported is not true: a logout at the server does not end "
            "the gateway's sessions (they last until session.idle or session.absolute)"))
    return found


# ---- the route ----------------------------------------------------------------------------


def secret_reference(env_name: str) -> str:
    """``${VAR}``; refuses anything that is not an environment variable's name (a secret
    pasted there is not echoed)."""
    if not ENV_NAME.fullmatch(env_name):
        raise ConfigureRefused(
            "--client-secret-env takes the NAME of an environment variable (letters, digits, "
            "_), e.g. OAUTH_CLIENT_SECRET; the value given is not one and is not shown")
    return "${" + env_name + "}"


def route_entry(*, route: str, upstream: str, issuer: str, client_id: str, secret_env: str,
                scopes: list[str], login: bool, redirect_uri: str | None) -> dict[str, Any]:
    """The route as YAML data: an ``oauth2`` middleware for the login or for introspection."""
    middleware: dict[str, Any] = {"issuer": issuer, "client_id": client_id,
                                  "client_secret": secret_reference(secret_env)}
    if login:
        wanted = scopes if "openid" in scopes else ["openid", *scopes]
        middleware.update(login=True, redirect_uri=redirect_uri, login_scopes=wanted)
    elif scopes:
        middleware["scopes"] = scopes
    return {"route": route, "upstream": upstream, "middleware": [{"oauth2": middleware}]}


def _entry_lines(entry: dict[str, Any], dash: int, indent: int) -> str:
    """``entry`` as one block-sequence item: the dash at column ``dash``, its keys at
    column ``indent``."""
    body = yaml.safe_dump(entry, default_flow_style=False, sort_keys=False, width=1000,
                          allow_unicode=True).splitlines()
    first = " " * dash + "-" + " " * max(1, indent - dash - 1) + body[0]
    return "\n".join([first, *(" " * indent + line for line in body[1:])]) + "\n"


def insert_route(text: str, entry: dict[str, Any]) -> tuple[str, str]:
    """``text`` with ``entry`` appended to its ``routes`` list, and the inserted text.

    Only text is added (after the last route's last line, in the list's own indentation),
    so comments and formatting elsewhere are kept byte for byte."""
    try:
        root = yaml.compose(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    except yaml.YAMLError as exc:
        raise ConfigureRefused(f"the config is not valid YAML: {exc}") from None
    if root is None:
        snippet = "routes:\n" + _entry_lines(entry, 2, 4)
        return (text + ("\n" if text and not text.endswith("\n") else "") + snippet), snippet
    if not isinstance(root, yaml.MappingNode):
        raise ConfigureRefused("the config is not a mapping of keys")
    routes = next((v for k, v in root.value if k.value == "routes"), None)
    if routes is None:
        snippet = "routes:\n" + _entry_lines(entry, 2, 4)
        sep = "\n" if text and not text.endswith("\n") else ""
        return text + sep + snippet, snippet
    empty = (isinstance(routes, yaml.SequenceNode) and not routes.value) or (
        isinstance(routes, yaml.ScalarNode) and routes.tag.endswith(":null"))
    if empty:
        # `routes: []` or `routes:` alone: the value becomes a block list.
        start, end = routes.start_mark.index, routes.end_mark.index
        snippet = "\n" + _entry_lines(entry, 2, 4)
        return text[:start].rstrip(" ") + snippet.rstrip("\n") + text[end:], snippet
    if not isinstance(routes, yaml.SequenceNode) or routes.flow_style:
        raise ConfigureRefused("routes is not written as a block list (one '- route:' per "
                               "entry): add the route printed above by hand")
    lines = text.splitlines(keepends=True)
    first = routes.value[0].start_mark
    dash = lines[first.line].rfind("-", 0, first.column)
    indent = first.column
    end = _last_line(routes.value[-1])
    snippet = _entry_lines(entry, dash, indent)
    before = "".join(lines[:end + 1])
    if not before.endswith("\n"):
        before += "\n"
    return before + snippet + "".join(lines[end + 1:]), snippet


def _last_line(node: yaml.Node) -> int:
    """The last line holding part of ``node`` (its end mark may sit on the next key's line,
    past comments: the deepest scalar's end tells the truth)."""
    if isinstance(node, yaml.ScalarNode) or getattr(node, "flow_style", False):
        mark = node.end_mark
        return mark.line - 1 if mark.column == 0 and mark.line > node.start_mark.line else mark.line
    children: list[yaml.Node] = []
    for item in node.value:
        children.extend(item if isinstance(item, tuple) else (item,))
    return max((_last_line(c) for c in children), default=node.start_mark.line)


def check_written(text: str, path: str, secret_env: str) -> None:
    """The new config must load as ``fluxgate check`` loads it; the secret's variable may
    be unset here (the gateway's environment has it), so a stand-in is used for the check."""
    env = dict(os.environ)
    env.setdefault(secret_env, "fluxctl-configure-check")
    try:
        load_config_text(text, path, env=env)
    except ConfigError as exc:
        raise ConfigureRefused(f"the config with this route would not load, so nothing is "
                               f"written: {exc}") from None


def write_atomically(path: str, text: str) -> None:
    """Replace ``path`` by ``text`` in one rename, keeping the file's mode."""
    try:
        mode = os.stat(path).st_mode & 0o7777
    except FileNotFoundError:
        mode = 0o644
    replace_file(path, text.encode("utf-8"), mode)


@dataclass
class Request:
    """What the operator asked for (``fluxctl oauth2 configure``'s options)."""

    issuer: str
    client_id: str
    upstream: str
    route: str = "/"
    secret_env: str = DEFAULT_SECRET_ENV
    scopes: list[str] = field(default_factory=list)
    login: bool = False
    redirect_uri: str | None = None
    timeout: float = DISCOVERY_TIMEOUT


def plan(request: Request, config_text: str, config_path: str) -> tuple[Plan, str]:
    """Read the metadata, judge it, and build the new config text (checked to load).
    ConfigureRefused when nothing can be planned (no metadata, a mismatched issuer)."""
    if request.login and not request.redirect_uri:
        raise ConfigureRefused("--login needs --redirect URL: the callback registered at the "
                               "server (e.g. https://app.example.com/oauth2/callback)")
    if not request.login and request.redirect_uri:
        raise ConfigureRefused("--redirect is only used with --login (the browser login)")
    secret_reference(request.secret_env)
    result = Plan(request.issuer, request.login)
    metadata, found = asyncio.run(_read_metadata(request.issuer, request.timeout))
    result.metadata = metadata
    result.findings = found + metadata_findings(metadata, login=request.login)
    result.entry = route_entry(route=request.route, upstream=request.upstream,
                               issuer=request.issuer, client_id=request.client_id,
                               secret_env=request.secret_env, scopes=request.scopes,
                               login=request.login, redirect_uri=request.redirect_uri)
    new_text, result.snippet = insert_route(config_text, result.entry)
    return result, new_text


def refusal(result: Plan) -> str | None:
    """Why the plan must not be written (an error finding), or None."""
    if worst(result.findings) != "error":
        return None
    codes = ", ".join(sorted({f.code for f in result.findings if f.severity == "error"}))
    return f"the authorization server's metadata has errors ({codes}): nothing written"


# ---- the command --------------------------------------------------------------------------


def add_parser(cmds: Any, common: Any) -> None:
    """``configure`` under ``fluxctl oauth2``."""
    p = cmds.add_parser(
        "configure", parents=[common],
        help="read an authorization server's metadata, check it, add an oauth2 route")
    p.add_argument("--issuer", required=True, metavar="URL",
                   help="the server's issuer, exactly as its metadata states it")
    p.add_argument("--client-id", required=True, metavar="ID")
    p.add_argument("--client-secret-env", default=DEFAULT_SECRET_ENV, metavar="VAR",
                   help="the environment variable holding the client secret (written as "
                   f"${{VAR}}, never inline; default {DEFAULT_SECRET_ENV})")
    # Declared only to refuse it without argparse echoing the value in its usage error.
    p.add_argument("--client-secret", help=argparse.SUPPRESS)
    p.add_argument("--upstream", required=True, metavar="NAME|URL",
                   help="where the route's requests go: an upstream's name, or a URL")
    p.add_argument("--route", default="/", metavar="PATH", help="the route's path (default /)")
    p.add_argument("--scope", nargs="+", default=[], metavar="S", dest="scopes",
                   help="with --login: the scopes asked for (openid is added); without: the "
                   "scopes every token must hold")
    p.add_argument("--login", action="store_true",
                   help="the browser login (authorization code + PKCE, server-side sessions)")
    p.add_argument("--redirect", metavar="URL",
                   help="with --login: the callback URL registered at the server")
    p.add_argument("--dry-run", action="store_true",
                   help="check and print, write nothing")
    p.set_defaults(func=cmd_configure)


def cmd_configure(ctx: Any) -> int:
    """Plan, print, refuse or write; exit 1 when refused."""
    a = ctx.args
    if a.client_secret is not None:
        raise CommandError("a client secret on the command line ends up in shell history and "
                           "process lists, and is never written into the config: put it in "
                           "an environment variable and pass --client-secret-env VAR")
    path = ctx.config_path
    try:
        with open(path, encoding="utf-8-sig") as f:
            text = f.read()
    except FileNotFoundError:
        text = ""  # a new config file holding this route
    request = Request(issuer=a.issuer, client_id=a.client_id, upstream=a.upstream,
                      route=a.route, secret_env=a.client_secret_env, scopes=list(a.scopes),
                      login=a.login, redirect_uri=a.redirect)
    try:
        result, new_text = plan(request, text, path)
    except ConfigureRefused as exc:
        raise CommandError(str(exc)) from None
    why = refusal(result)
    if why is None:
        try:
            check_written(new_text, path, a.client_secret_env)
        except ConfigureRefused as exc:
            why = str(exc)
    written = why is None and not a.dry_run
    if written:
        write_atomically(path, new_text)
    doc = {**result.to_dict(), "config": path, "written": written, "refused": why}
    _print(ctx, doc, a)
    return 1 if why else 0


def _print(ctx: Any, doc: dict[str, Any], a: Any) -> None:
    if ctx.json:
        print(json.dumps(doc, indent=2))
        return
    print(f"issuer     {doc['issuer']}")
    for name, url in doc["endpoints"].items():
        print(f"  {name:<24} {url}")
    for f in doc["findings"]:
        print(f"{f['severity']:<8} {f['code']}: {f['message']}")
    print(f"route for {doc['config']}:")
    print(doc["snippet"].rstrip("\n"))
    if doc["refused"]:
        print(f"refused: {doc['refused']}")
    elif doc["written"]:
        print(f"written to {doc['config']} (the rest of the file is unchanged); the gateway "
              f"needs {a.client_secret_env} in its environment")
    else:
        print("dry run: nothing written")
