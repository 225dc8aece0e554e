"""Many nodes asking the quota grant script for units at once, each from its own thread."""

from __future__ import annotations

import threading
from collections.abc import Callable

from fluxgate.cluster.lease_store import LeaseStore


def grant_concurrently(store: Callable[[str], LeaseStore], nodes: int, identity: bytes,
                       end: int, chunk: int, limit: int, join: float) -> list[int]:
    """Runs ``nodes`` threads, each with its own ``store(name)``, asking ``chunk`` units at a
    time until the script gives none; returns every grant given. Each grant's reported use
    must stay within ``limit``."""
    given: list[int] = []
    lock = threading.Lock()

    def node(name: str) -> None:
        leases = store(name)
        mine = 0
        while True:
            got, used, _ = leases.grant(identity, end, chunk, limit, mine)
            assert used <= limit
            if not got:
                return
            mine += got
            with lock:
                given.append(got)

    threads = [threading.Thread(target=node, args=(f"n{i}",)) for i in range(nodes)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(join)
    return given
