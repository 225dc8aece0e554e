"""The master's state as the console's panels show it: workers, routes and their chains,
browser sessions. Every document is JSON-ready and holds no secret (no token, no key, no
password of an upstream URL)."""

from __future__ import annotations

import time
from collections import Counter
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from fluxgate.middleware import kind_of
from fluxgate.proxy.app import route_methods


def workers_view(master: Any) -> dict[str, Any]:
    """The worker processes (the current generation's and those still draining)."""
    now = time.monotonic()
    current = getattr(master, "current", None)
    rows = []
    for w in sorted(master.workers.values(), key=lambda w: (w.generation.number, w.worker_id)):
        rows.append({
            "worker_id": w.worker_id,
            "pid": w.pid,
            "generation": w.generation.number,
            "state": "draining" if w.kill_at is not None else ("ready" if w.ready else "booting"),
            "uptime_s": round(now - w.started_at, 1),
        })
    return {
        "generation": current.number if current is not None else None,
        "size": current.size if current is not None else 0,
        "restarts": master.restarts,
        "workers": rows,
    }


def _public_url(url: str) -> str:
    """``url`` without a password (an upstream may carry one)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return url
    if parts.password is None and parts.username is None:
        return url
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = host + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def describe_entry(entry: Any) -> dict[str, str]:
    """One chain entry as ``{"kind", "summary"}`` (its kind's ``describe``, the line
    ``fluxctl routes explain`` prints)."""
    try:
        kind = kind_of(entry)
    except ValueError:
        return {"kind": type(entry).__name__, "summary": type(entry).__name__}
    return {"kind": kind.name, "summary": kind.describe(entry)}


def routes_view(config: Any) -> list[dict[str, Any]]:
    """The routes of the config in force, in config order, with their middleware chains."""
    out = []
    for route in config.routes:
        methods = route_methods(route)
        out.append({
            "route": route.route,
            "upstream": _public_url(route.upstream),
            "methods": sorted(m.decode() for m in methods) if methods is not None else None,
            "public": route.public,
            "shadow": getattr(route, "shadow", False),
            "websocket": route.websocket,
            "chain": [describe_entry(m) for m in route.middleware],
        })
    return out


def sessions_view(oauth2: Any) -> dict[str, Any]:
    """Live browser-login sessions by provider (``fluxctl oauth2 sessions list`` counts)."""
    store = getattr(getattr(oauth2, "logins", None), "store", None)
    if store is None:
        return {"configured": False, "active": 0, "by_provider": {}}
    by_provider = Counter(info.provider for info in store.list())
    return {"configured": True, "active": sum(by_provider.values()),
            "by_provider": dict(sorted(by_provider.items()))}
