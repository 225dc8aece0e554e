"""Gateway nodes of a cluster on one Redis, for the API key tests and the revocation bench:
their config, admin calls, and probes that tell whether a key works on a node.

A probe opens a new connection per request, so that several land on every worker of the node
(the kernel spreads new connections over the workers' listening sockets).
"""

from __future__ import annotations

import http.client
import json
import time
from pathlib import Path

SIGNING_SECRET = "cluster-keys-test-signing-secret-0123456789"
TOKEN = "test-admin-token"
PATH = "/keyed/x"

NODE_CONFIG = """\
access_log: null
store: '{store}'
cluster: {{node: {node}, timeout: 0.5}}
api_keys: {{signing_secret: '{secret}'}}
routes:
  - route: /keyed
    upstream: {upstream}
    middleware:
      - api_key: {{}}
"""


def node_config(store: str, node: str, upstream: str, secret: str = SIGNING_SECRET) -> str:
    """The config of one node (its listen, admin and state_dir come from GatewayProcess)."""
    return NODE_CONFIG.format(store=store, node=node, upstream=upstream, secret=secret)


def admin(gw, method: str, path: str, body: dict | None = None, timeout: float = 10.0
          ) -> tuple[int, dict]:
    """Call a node's admin API; (status, JSON document)."""
    conn = http.client.HTTPConnection("127.0.0.1", gw.admin_port, timeout=timeout)
    try:
        payload = json.dumps(body).encode() if body is not None else None
        conn.request(method, path, body=payload, headers={
            "Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"})
        resp = conn.getresponse()
        data = resp.read()
        return resp.status, (json.loads(data) if data.startswith(b"{") else {})
    finally:
        conn.close()


def status(gw, key: str, timeout: float = 5.0) -> int:
    """The status a node answers for ``key``, on a new connection."""
    conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=timeout)
    try:
        conn.request("GET", PATH, headers={"X-API-Key": key})
        resp = conn.getresponse()
        resp.read()
        return resp.status
    finally:
        conn.close()


def answers(gw, key: str, probes: int = 6) -> set[int]:
    """The statuses of ``probes`` requests with ``key`` on new connections."""
    return {status(gw, key) for _ in range(probes)}


def wait_answer(nodes, key: str, expected: int, seconds: float, probes: int = 6) -> float:
    """Wait until every node answers ``expected`` to every probe; the seconds it took.
    AssertionError after ``seconds``."""
    start = time.monotonic()
    pending = list(nodes)
    while True:
        pending = [gw for gw in pending if answers(gw, key, probes) != {expected}]
        elapsed = time.monotonic() - start
        if not pending:
            return elapsed
        if elapsed > seconds:
            raise AssertionError(
                f"after {elapsed:.2f} s, nodes still answer otherwise than {expected}: "
                + ", ".join(f"{gw.dir.name}: {sorted(answers(gw, key, probes))}" for gw in pending))
        time.sleep(0.01)


def import_generated(node, tmp_path: Path, rows: list[dict]) -> dict:
    """``fluxctl keys import --generate`` of ``rows`` on ``node`` (a ClusterKeyOps), the
    new keys written to ``tmp_path/keys.csv``; the import's summary document."""
    from fluxgate.cli.keys_import import import_into_cluster

    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return import_into_cluster(node, str(path), fmt=None, generate=True, skip_bad=False,
                               out_path=str(tmp_path / "keys.csv"), progress=False)
