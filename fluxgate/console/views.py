"""The master's state as the console's panels show it: workers and browser sessions. Every
document is JSON-ready and holds no secret."""

from __future__ import annotations

import time
from collections import Counter
from typing import Any


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


def sessions_view(oauth2: Any) -> dict[str, Any]:
    """Live browser-login sessions by provider (``fluxctl oauth2 sessions list`` counts)."""
    store = getattr(getattr(oauth2, "logins", None), "store", None)
    if store is None:
        return {"configured": False, "active": 0, "by_provider": {}}
    by_provider = Counter(info.provider for info in store.list())
    return {"configured": True, "active": sum(by_provider.values()),
            "by_provider": dict(sorted(by_provider.items()))}
