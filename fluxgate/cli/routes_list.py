"""``fluxctl routes list``: every route of the config in one table.

    fluxctl routes list [--json]

One row per route, in config order: its path prefix, the methods it accepts (``*`` for
every method), its upstream, the kinds of its middleware chain in order, and whether it is
public. Like ``routes explain`` it reads the config alone; the gateway need not run.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from fluxgate.config import schema
from fluxgate.errors import FluxGateError
from fluxgate.middleware import kind_of
from fluxgate.proxy.app import route_methods

COLUMNS = ("path", "methods", "upstream", "middleware", "public")


def add_command(routes_commands: Any, common: argparse.ArgumentParser) -> None:
    """Add ``list`` to the ``routes`` group's sub-commands."""
    p = routes_commands.add_parser("list", parents=[common],
                                   help="every route: path, methods, upstream, middleware, public")
    p.set_defaults(func=cmd_list)


def route_rows(config: schema.Config) -> list[dict[str, Any]]:
    """One JSON-ready dict per route, in config order."""
    rows = []
    for route in config.routes:
        methods = route_methods(route)
        rows.append({
            "path": route.route,
            "methods": None if methods is None else sorted(m.decode() for m in methods),
            "upstream": route.upstream,
            "middleware": [_kind_name(m) for m in route.middleware],
            "public": route.public,
        })
    return rows


def _kind_name(entry: Any) -> str:
    kind = kind_of(entry)
    members = kind.members(entry)
    if members:  # `any`: the methods it accepts, so the table says how a caller gets in
        return f"{kind.name}({'|'.join(kind_of(m).name for m in members)})"
    return kind.name


def render(rows: list[dict[str, Any]]) -> list[str]:
    """The rows as an aligned text table with a header line."""
    cells = [[c.upper() for c in COLUMNS]]
    for row in rows:
        cells.append([
            row["path"],
            ",".join(row["methods"]) if row["methods"] is not None else "*",
            row["upstream"],
            ",".join(row["middleware"]) or "-",
            "yes" if row["public"] else "no",
        ])
    widths = [max(len(line[i]) for line in cells) for i in range(len(COLUMNS))]
    return ["  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip()
            for line in cells]


def cmd_list(ctx: Any) -> int:
    from fluxgate.cli.fluxctl import fail

    try:
        config = ctx.config()
    except FluxGateError as exc:  # no config, or a bad one
        return fail(ctx, str(exc))
    rows = route_rows(config)
    if ctx.json:
        print(json.dumps({"routes": rows}, indent=2))
    else:
        print("\n".join(render(rows)))
    return 0
