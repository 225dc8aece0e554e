"""``fluxctl oauth2``: the introspection side pool of a running gateway.

    fluxctl oauth2 status                       providers, breaker, cache, calls by result
    fluxctl oauth2 purge --token-stdin          forget one token's cached answer
    fluxctl oauth2 purge --sha256 HEX           the same, by the token's SHA-256

Both go through the admin API: ``--admin-url``, else the address the running gateway wrote
to ``state_dir/gateway.json``. A purge makes the next request with that token ask the
authorization server again, on every worker at once (a revoked token stops at once rather
than at the end of ``cache_ttl``). The token itself is read from standard input, hashed
here, and never sent anywhere nor printed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import sys
from typing import Any

from fluxgate.cli.fluxctl import AdminClient, CommandError, Context

_HEX64 = re.compile(r"[0-9a-fA-F]{64}")


def add_parser(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    group = sub.add_parser("oauth2", help="OAuth 2.0 introspection (side pool)",
                           parents=[common])
    cmds = group.add_subparsers(dest="command", required=True, metavar="COMMAND")
    p = cmds.add_parser("status", parents=[common],
                        help="providers: endpoint, breaker, cache, calls by result")
    p.set_defaults(func=cmd_status)
    p = cmds.add_parser("purge", parents=[common],
                        help="forget a token's cached introspection answer")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--token-stdin", action="store_true",
                       help="read the token from standard input (it is hashed, never sent)")
    which.add_argument("--sha256", metavar="HEX", help="the token's SHA-256, 64 hex digits")
    p.set_defaults(func=cmd_purge)


def _admin(ctx: Context) -> AdminClient:
    if ctx.remote:
        return ctx.admin()
    path = os.path.join(ctx.config().state_dir, "gateway.json")
    try:
        with open(path) as f:
            host, port = json.load(f)["admin"][:2]
    except (OSError, ValueError, KeyError, TypeError):
        raise CommandError(f"no running gateway found ({path}); pass --admin-url") from None
    ctx.args.admin_url = f"http://{host if ':' not in host else f'[{host}]'}:{port}"
    return ctx.admin()


def token_sha256(text: str) -> str:
    """The hex SHA-256 of a token as read from standard input (one trailing newline off)."""
    token = text[:-1] if text.endswith("\n") else text
    if not token or any(c.isspace() for c in token):
        raise CommandError("standard input must hold the token alone, on one line")
    return hashlib.sha256(token.encode()).hexdigest()


def cmd_status(ctx: Context) -> int:
    doc: dict[str, Any] = _admin(ctx).call("GET", "/admin/oauth2")
    if ctx.json:
        print(json.dumps(doc, indent=2))
        return 0
    providers = doc.get("providers", [])
    if not providers:
        print("no oauth2 provider in this gateway's config")
    for p in providers:
        cache = p.get("cache", {})
        calls = ", ".join(f"{k} {v}" for k, v in sorted(p.get("calls", {}).items())) or "none"
        print(f"{p['provider']}")
        print(f"  endpoint   {p.get('introspection_endpoint') or '(not discovered yet)'}")
        if p.get("discovery_error"):
            print(f"  discovery  {p['discovery_error']}")
        print(f"  breaker    {p['breaker']}   in flight {p['in_flight']}")
        print(f"  cache      {cache.get('active', 0)} active, {cache.get('inactive', 0)} "
              f"inactive; hits {cache.get('hits', 0)}, misses {cache.get('misses', 0)}")
        print(f"  calls      {calls}")
        if p.get("last_error"):
            print(f"  last error {p['last_error']}")
    return 0


def cmd_purge(ctx: Context) -> int:
    if ctx.args.token_stdin:
        digest = token_sha256(sys.stdin.read())
    else:
        digest = ctx.args.sha256 or ""
        if not _HEX64.fullmatch(digest):
            raise CommandError("--sha256 must be 64 hex digits")
        digest = digest.lower()
    doc = _admin(ctx).call("POST", "/admin/oauth2/purge", body={"token_sha256": digest})
    if ctx.json:
        print(json.dumps({"token_sha256": digest, **doc}))
    elif doc.get("purged"):
        print(f"purged sha256:{digest[:10]}: the next request asks the authorization server")
    else:
        print(f"sha256:{digest[:10]} was not cached (nothing to purge)")
    return 0
