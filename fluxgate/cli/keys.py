"""``fluxctl keys``: generate, import, list, show, rotate, renew, revoke, usage.

Locally (keys.db of the config's state_dir) or through ``--admin-url``; both return the same
documents (``fluxgate.auth.keyops``), printed as tables or, with ``--json``, as JSON. A new
key is printed once, by ``generate`` and ``rotate``, and is never stored or logged.
"""

from __future__ import annotations

import argparse
import datetime
import json
import time
from typing import Any

from fluxgate.auth.keyops import KeyOps
from fluxgate.cluster.connect import is_redis_url
from fluxgate.errors import KeyStoreError


def add_parser(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    keys = sub.add_parser("keys", help="API keys", parents=[common],
                          description="Manage API keys.")
    cmds = keys.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = cmds.add_parser("generate", parents=[common], help="issue a key for a new consumer",
                        description="Issue a key; it is printed once and never stored.")
    p.add_argument("--name", required=True, help="the consumer (quotas belong to it)")
    p.add_argument("--scope", action="append", default=[], metavar="SCOPE",
                   help="a scope the key holds (repeat for several)")
    p.add_argument("--quota", metavar="N/WINDOW", help="e.g. 1000/m or 50000/d (s, m, h, d)")
    p.add_argument("--expiry", metavar="DURATION",
                   help="e.g. 90d (default: api_keys.default_expiry)")
    p.add_argument("--allow-ip", action="append", default=[], metavar="CIDR",
                   help="accept the key only from this network (repeat for several)")
    p.add_argument("--route", action="append", default=[], metavar="PATH",
                   help="accept the key only under this path (repeat for several)")
    p.set_defaults(func=cmd_generate)

    p = cmds.add_parser("import", parents=[common], help="load many keys from a file",
                        description="Load keys from JSON lines or CSV (columns: name, scopes, "
                        "quota, expiry, allow_ip, routes, key) in one transaction. A bad row "
                        "imports nothing unless --skip-bad; see docs/api-keys.md.")
    p.add_argument("file", metavar="FILE")
    p.add_argument("--format", choices=("jsonl", "csv"),
                   help="default: csv for a .csv file, else jsonl")
    p.add_argument("--generate", action="store_true",
                   help="mint the keys (the rows have no key column); they go to --out")
    p.add_argument("--out", metavar="FILE",
                   help="with --generate: a new file (mode 0600) for the names and keys")
    p.add_argument("--skip-bad", action="store_true",
                   help="import the good rows and list the bad ones (default: import nothing)")
    p.set_defaults(func=cmd_import)

    p = cmds.add_parser("list", parents=[common], help="list keys (never their secrets)")
    p.add_argument("--all", action="store_true", help="include revoked and expired keys")
    p.set_defaults(func=cmd_list)

    p = cmds.add_parser("show", parents=[common], help="every key of a name")
    p.add_argument("name", metavar="NAME|ID")
    p.set_defaults(func=cmd_show)

    p = cmds.add_parser("rotate", parents=[common],
                        help="issue a new key; the old one works for a grace period")
    p.add_argument("name", metavar="NAME")
    p.add_argument("--grace", metavar="DURATION",
                   help="how long the old key keeps working (default: api_keys.rotation_grace)")
    p.add_argument("--expiry", metavar="DURATION",
                   help="lifetime of the new key (default: the old key's)")
    p.set_defaults(func=cmd_rotate)

    p = cmds.add_parser("renew", parents=[common], help="extend the current key's expiry")
    p.add_argument("name", metavar="NAME")
    p.add_argument("--expiry", metavar="DURATION",
                   help="from now (default: api_keys.default_expiry)")
    p.set_defaults(func=cmd_renew)

    p = cmds.add_parser("revoke", parents=[common],
                        help="revoke every key of a name, or one key by id")
    p.add_argument("name", metavar="NAME|ID")
    p.set_defaults(func=cmd_revoke)

    p = cmds.add_parser("usage", parents=[common], help="quota window and use of a name")
    p.add_argument("name", metavar="NAME")
    p.set_defaults(func=cmd_usage)


# ---- commands -------------------------------------------------------------------------------


def _local(ctx) -> KeyOps:
    config = ctx.config()
    if is_redis_url(config.store):  # cluster mode: changes go to Redis, then to keys.db
        from fluxgate.cluster.keyops import ClusterKeyOps

        return ClusterKeyOps(config)
    return KeyOps(config)


def cmd_generate(ctx) -> int:
    a = ctx.args
    if ctx.remote:
        doc = ctx.admin().call("POST", "/admin/keys", body={
            "name": a.name, "scopes": a.scope, "quota": a.quota, "expiry": a.expiry,
            "allow_ips": a.allow_ip, "routes": a.route,
        })
    else:
        with _local(ctx) as ops:
            doc = ops.generate(a.name, scopes=a.scope, quota=a.quota, expiry=a.expiry,
                               allow_ips=a.allow_ip, routes=a.route)
    return _print(ctx, doc, _render_new)


def cmd_import(ctx) -> int:
    from fluxgate.cli.keys_import import import_into_cluster, render, run_import

    a = ctx.args
    if ctx.remote:
        raise KeyStoreError("keys import writes the local state_dir's keys.db: run it on the "
                            "gateway's host, without --admin-url")
    with _local(ctx) as ops:
        options = {"fmt": a.format, "generate": a.generate, "skip_bad": a.skip_bad,
                   "out_path": a.out}
        if isinstance(ops, KeyOps):
            doc = run_import(ops, a.file, **options)
        else:
            doc = import_into_cluster(ops, a.file, **options)
    _print(ctx, doc, render)
    return 0 if doc["committed"] else 1


def cmd_rotate(ctx) -> int:
    a = ctx.args
    if ctx.remote:
        doc = ctx.admin().call("POST", "/admin/keys/rotate",
                               body={"name": a.name, "grace": a.grace, "expiry": a.expiry})
    else:
        with _local(ctx) as ops:
            doc = ops.rotate(a.name, grace=a.grace, expiry=a.expiry)
    return _print(ctx, doc, _render_new)


def cmd_list(ctx) -> int:
    if ctx.remote:
        doc = ctx.admin().call("GET", "/admin/keys", query={"all": "1"} if ctx.args.all else None)
        keys = doc["keys"]
    else:
        with _local(ctx) as ops:
            keys = ops.list(include_dead=ctx.args.all)
    return _print(ctx, {"keys": keys}, lambda d: _render_list(d["keys"], ctx.args.all))


def cmd_show(ctx) -> int:
    if ctx.remote:
        keys = ctx.admin().call("GET", "/admin/keys/show", query={"name": ctx.args.name})["keys"]
    else:
        with _local(ctx) as ops:
            keys = ops.show(ctx.args.name)
    return _print(ctx, {"keys": keys}, lambda d: _render_show(d["keys"]))


def cmd_renew(ctx) -> int:
    a = ctx.args
    if ctx.remote:
        doc = ctx.admin().call("POST", "/admin/keys/renew",
                               body={"name": a.name, "expiry": a.expiry})
    else:
        with _local(ctx) as ops:
            doc = ops.renew(a.name, expiry=a.expiry)
    return _print(ctx, doc, lambda d: [
        f"Renewed key {d['key_id']} of {d['name']}: valid until {_when(d['valid_until'])}."
    ])


def cmd_revoke(ctx) -> int:
    if ctx.remote:
        revoked = ctx.admin().call("POST", "/admin/keys/revoke",
                                   body={"name": ctx.args.name})["revoked"]
    else:
        with _local(ctx) as ops:
            revoked = ops.revoke(ctx.args.name)
    return _print(ctx, {"revoked": revoked}, lambda d: [
        *(f"Revoked key {k['key_id']} of {k['name']}." for k in d["revoked"]),
        "A running gateway refuses it within a second.",
    ])


def cmd_usage(ctx) -> int:
    if ctx.remote:
        doc = ctx.admin().call("GET", "/admin/keys/usage", query={"name": ctx.args.name})
    else:
        with _local(ctx) as ops:
            doc = ops.usage(ctx.args.name)
    return _print(ctx, doc, _render_usage)


# ---- rendering ------------------------------------------------------------------------------


def _print(ctx, doc: dict[str, Any], render) -> int:
    if ctx.json:
        print(json.dumps(doc, indent=2))
    else:
        print("\n".join(render(doc)))
    return 0


def _parse(ts: str | None) -> float | None:
    if ts is None:
        return None
    return datetime.datetime.strptime(ts, "%Y-%m-%dT%H:%M:%SZ").replace(
        tzinfo=datetime.UTC).timestamp()


def _span(seconds: float) -> str:
    seconds = round(abs(seconds))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{round(seconds / size)}{unit}"
    return f"{seconds}s"


def _when(ts: str | None) -> str:
    """``2027-02-26 19:02 UTC (in 89d)``."""
    at = _parse(ts)
    if at is None:
        return "-"
    delta = at - time.time()
    rel = f"in {_span(delta)}" if delta >= 0 else f"{_span(delta)} ago"
    return f"{ts[:10]} {ts[11:16]} UTC ({rel})"


def _ago(ts: str | None) -> str:
    at = _parse(ts)
    return "never" if at is None else f"{_span(time.time() - at)} ago"


def _quota_line(q: dict[str, Any] | None) -> str:
    """``50000/d: 120 used, 49880 left, resets 2026-11-29 00:00 UTC (in 4h)``."""
    if not q:
        return "none"
    return (f"{q['rate']}: {q['used']} used, {q['remaining']} left, "
            f"resets {_when(q['resets_at'])}")


def _quota(q: dict[str, Any] | None) -> str:
    if not q:
        return "none"
    return f"{q['used']}/{q['limit']} per {_WINDOWS.get(q['window_s'], str(q['window_s']) + 's')}"


_WINDOWS = {1: "second", 60: "minute", 3600: "hour", 86400: "day (UTC)"}


def _table(rows: list[list[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip()
            for r in rows]


def _render_new(d: dict[str, Any]) -> list[str]:
    lines = [
        f"New key for {d['name']} (id {d['key_id']}). It is shown this once and never stored:",
        "",
        f"    {d['key']}",
        "",
        *_fields(d),
    ]
    for old in d.get("previous", []):
        lines.append(
            f"Old key {old['key_id']} keeps working until {_when(old['valid_until'])}; "
            "its responses carry Deprecation and Sunset headers meanwhile."
        )
    lines.append("Send it as the X-API-Key header (or the api_key query parameter).")
    return lines


def _fields(d: dict[str, Any]) -> list[str]:
    last = "never" if not d["last_used_at"] else (
        f"{_ago(d['last_used_at'])} from {d['last_used_from'] or 'unknown'}")
    rows = [
        ("status", d["status"]),
        ("scopes", " ".join(d["scopes"]) or "none"),
        ("quota", _quota_line(d["quota"])),
        ("allowed IPs", " ".join(d["allow_ips"]) or "any"),
        ("routes", " ".join(d["routes"]) or "any"),
        ("created", _when(d["created_at"])),
        ("valid until", _when(d["valid_until"])),
        ("last used", last),
        ("requests", str(d["requests"])),
    ]
    if d["revoked_at"]:
        rows.append(("revoked", _when(d["revoked_at"])))
    if d["successor"]:
        rows.append(("replaced by", d["successor"]))
    return [f"  {k:<12}{v}" for k, v in rows]


def _render_list(keys: list[dict[str, Any]], include_dead: bool) -> list[str]:
    if not keys:
        return ["No keys" + ("" if include_dead else " (--all shows revoked and expired ones)")
                + ". Issue one: fluxctl keys generate --name NAME --scope SCOPE"]
    rows = [["NAME", "KEY ID", "STATUS", "SCOPES", "QUOTA USED", "VALID UNTIL", "LAST USED"]]
    for k in keys:
        last = "never" if not k["last_used_at"] else (
            f"{_ago(k['last_used_at'])} from {k['last_used_from'] or '?'}")
        rows.append([
            k["name"], k["key_id"], k["status"], ",".join(k["scopes"]) or "-", _quota(k["quota"]),
            _when(k["valid_until"]), last,
        ])
    return _table(rows)


def _render_show(keys: list[dict[str, Any]]) -> list[str]:
    lines: list[str] = []
    for k in keys:
        if lines:
            lines.append("")
        lines.append(f"{k['name']}  key {k['key_id']}")
        lines += _fields(k)
    return lines


def _render_usage(d: dict[str, Any]) -> list[str]:
    lines = [f"{d['name']}:", f"  quota       {_quota_line(d['quota'])}"]
    lines.append(f"  requests    {d['requests']}")
    last = "never" if not d["last_used_at"] else (
        f"{_ago(d['last_used_at'])} from {d['last_used_from'] or 'unknown'}")
    lines.append(f"  last used   {last}")
    for k in d["keys"]:
        lines.append(f"  key {k['key_id']}  {k['status']:<8} {k['requests']} requests, "
                     f"last used {_ago(k['last_used_at'])}")
    return lines
