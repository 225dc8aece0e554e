"""``fluxctl oauth2``: the introspection side pool and the login sessions.

    fluxctl oauth2 status                       providers, breaker, cache, calls by result
    fluxctl oauth2 purge --token-stdin          forget one token's cached answer
    fluxctl oauth2 purge --sha256 HEX           the same, by the token's SHA-256
    fluxctl oauth2 sessions list [--provider P] [--sub S] [--all]
    fluxctl oauth2 sessions revoke (--id-prefix HEX | --sub S | --all) [--provider P]
    fluxctl oauth2 configure --issuer URL --client-id ID --upstream U [--login ...]
                                                check a server's metadata, add a route
                                                (``oauth2_configure.py``)

``status`` and ``purge`` go through the admin API: ``--admin-url``, else the address the
running gateway wrote to ``state_dir/gateway.json``. A purge makes the next request with that
token ask the authorization server again, on every worker at once (a revoked token stops at
once rather than at the end of ``cache_ttl``). The token itself is read from standard input,
hashed here, and never sent anywhere nor printed.

``sessions`` works on the session store in the config's ``state_dir``
(``state_dir/oauth2/sessions.db``, ``auth/sessions.py``), whether or not the gateway runs:
every worker reads a session's row on each request, so a revoked session is refused by the
next request in every worker. No command prints a token, a claim or a session id: a session
is shown by the first hex digits of its id's SHA-256.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import sys
from typing import Any

from fluxgate.auth.keyops import iso
from fluxgate.auth.sessions import SessionInfo, SessionStore
from fluxgate.cli import oauth2_configure
from fluxgate.cli.fluxctl import AdminClient, CommandError, Context
from fluxgate.cli.keys import _ago, _table, _when

_HEX64 = re.compile(r"[0-9a-fA-F]{64}")
_HEX_PREFIX = re.compile(r"[0-9a-fA-F]{8,64}")


def add_parser(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    group = sub.add_parser("oauth2", help="OAuth 2.0 / OIDC: introspection, browser sessions, configure",
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
    _add_sessions_parser(cmds, common)
    oauth2_configure.add_parser(cmds, common)


def _add_sessions_parser(cmds: argparse._SubParsersAction,
                         common: argparse.ArgumentParser) -> None:
    sessions = cmds.add_parser("sessions", parents=[common],
                               help="browser login sessions (oauth2 login: true)")
    verbs = sessions.add_subparsers(dest="verb", required=True, metavar="VERB")
    p = verbs.add_parser("list", parents=[common], help="sessions (never their tokens)")
    p.add_argument("--provider", metavar="P", help="only this provider's sessions")
    p.add_argument("--sub", metavar="S", help="only this subject's sessions")
    p.add_argument("--all", action="store_true", help="include ended and expired sessions")
    p.set_defaults(func=cmd_sessions_list)
    p = verbs.add_parser("revoke", parents=[common],
                         help="end sessions now, in every worker")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--id-prefix", metavar="HEX",
                       help="the session shown by `sessions list` (at least 8 hex digits)")
    which.add_argument("--sub", metavar="S", help="every session of this subject")
    which.add_argument("--all", action="store_true", help="every session")
    p.add_argument("--provider", metavar="P", help="only this provider's sessions")
    p.set_defaults(func=cmd_sessions_revoke)


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


# ---- sessions -------------------------------------------------------------------------------


def _session_store(ctx: Context) -> SessionStore | None:
    """The config's session store, or None when it has none yet (nothing is created)."""
    if ctx.remote:
        raise CommandError("`oauth2 sessions` works on the config's state_dir, where the "
                           "gateway keeps its sessions: run it on the gateway's host, "
                           "without --admin-url")
    state_dir = ctx.config().state_dir
    if not SessionStore.exists(state_dir):
        return None
    return SessionStore.open(state_dir)


def _session_doc(info: SessionInfo) -> dict[str, Any]:
    doc = info.public()
    for name in ("created_at", "last_seen_at", "idle_expires_at", "absolute_expires_at",
                 "access_expires_at", "ended_at"):
        doc[name] = iso(doc[name])
    return doc


def cmd_sessions_list(ctx: Context) -> int:
    a = ctx.args
    store = _session_store(ctx)
    infos: list[SessionInfo] = []
    if store is not None:
        with store:
            infos = store.list(a.provider, a.sub, include_ended=a.all)
    docs = [_session_doc(info) for info in infos]
    if ctx.json:
        print(json.dumps({"sessions": docs}, indent=2))
        return 0
    if not docs:
        print("No sessions" + ("" if a.all else " (--all shows ended and expired ones)") + ".")
        return 0
    rows = [["SESSION", "PROVIDER", "SUB", "STATE", "CREATED", "LAST SEEN", "IDLE UNTIL",
             "ENDS"]]
    for d in docs:
        rows.append([d["digest_prefix"], d["provider"], d["sub"], d["state"],
                     _ago(d["created_at"]), _ago(d["last_seen_at"]),
                     _when(d["idle_expires_at"]), _when(d["absolute_expires_at"])])
    print("\n".join(_table(rows)))
    return 0


def cmd_sessions_revoke(ctx: Context) -> int:
    a = ctx.args
    if a.id_prefix is not None and not _HEX_PREFIX.fullmatch(a.id_prefix):
        raise CommandError("--id-prefix takes at least 8 hex digits, as `sessions list` "
                           "shows them")
    store = _session_store(ctx)
    ended = 0
    if store is not None:
        with store:
            ended = _revoke(store, a)
    if ctx.json:
        print(json.dumps({"revoked": ended}))
    elif ended:
        print(f"Revoked {ended} session{'s' if ended != 1 else ''}: every worker refuses "
              f"{'them' if ended != 1 else 'it'} from the next request on.")
    else:
        print("No live session matched (nothing revoked).")
    return 0


def _revoke(store: SessionStore, a: argparse.Namespace) -> int:
    if a.id_prefix is not None:
        digests = store.digests_with_prefix(a.id_prefix, a.provider)
        if len(digests) > 1:
            raise CommandError(f"{len(digests)} sessions start with {a.id_prefix}: "
                               "give more digits")
        return sum(store.end(d, "revoked") for d in digests)
    if a.sub is not None:
        return store.end_matching(a.provider, sub=a.sub, reason="revoked")
    return store.end_all("revoked", a.provider)
