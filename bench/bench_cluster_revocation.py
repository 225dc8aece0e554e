"""Cluster mode: how long a revocation takes to be refused by every worker of every node.

Three gateway nodes (two workers each) and one redis-server run on this machine (loopback).
N keys are made through the nodes' admin APIs and checked to work on every node; then each is
revoked in turn through ``POST /admin/keys/revoke`` on one node (taking the nodes in turn),
while one thread per node sends requests with the key, each on a new connection (so that they
land on every worker), until the node refuses it. The time of a revocation is from just before
the admin call to the last node's first refusal; after it, every node is probed again on
several new connections to check that no worker still accepts the key.

    .venv/bin/python -m bench.bench_cluster_revocation [--revocations 100]
    .venv/bin/python -m pytest bench/bench_cluster_revocation.py     (the same, 100)

Printed: median, p90 and max of the revocation times, and of the admin call's answer time.
Results also go to bench/results/cluster_revocation.md (or ``$FLUXGATE_BENCH_RESULTS``) under
pytest. Bounded: at most 5 s per revocation, the processes stopped by PID at the end.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from tests.support.cluster_keys import admin, answers, node_config, status, wait_answer
from tests.support.gateway import GatewayProcess
from tests.support.redis_server import RedisServer, redis_unavailable
from tests.support.upstream import RecordingUpstream

pytestmark = pytest.mark.e2e

NODES = ("a", "b", "c")
WORKERS = 2
PROBE_LIMIT_S = 5.0
HEADER = "## Cluster mode: revocation reaching every node (bench/bench_cluster_revocation.py)"


def _first_refusal(gw, key: str, until: float, out: dict, name: str) -> None:
    while time.perf_counter() < until:
        if status(gw, key) == 401:
            out[name] = time.perf_counter()
            return


def measure(directory: Path, revocations: int) -> dict:
    """Start Redis and the nodes in ``directory``, time ``revocations`` revocations."""
    redis = RedisServer(directory).start()
    upstream = RecordingUpstream().start()
    nodes: list[GatewayProcess] = []
    try:
        for name in NODES:
            node_dir = directory / f"node-{name}"
            node_dir.mkdir()
            nodes.append(GatewayProcess(node_dir, node_config(redis.url, name, upstream.url),
                                        workers=WORKERS).start())
        keys = []
        for i in range(revocations):
            code, doc = admin(nodes[i % len(nodes)], "POST", "/admin/keys",
                              {"name": f"consumer-{i}"})
            assert code == 201, doc
            keys.append(doc["key"])
        for key in keys:
            wait_answer(nodes, key, 200, seconds=10, probes=2)
        times, answered, stragglers = [], [], 0
        for i, key in enumerate(keys):
            via = nodes[i % len(nodes)]
            seen: dict[str, float] = {}
            started = time.perf_counter()
            probes = [threading.Thread(target=_first_refusal, args=(
                gw, key, started + PROBE_LIMIT_S, seen, gw.dir.name)) for gw in nodes]
            for t in probes:
                t.start()
            code, _ = admin(via, "POST", "/admin/keys/revoke", {"name": f"consumer-{i}"})
            answered.append(time.perf_counter() - started)
            for t in probes:
                t.join()
            assert code == 200 and len(seen) == len(nodes), (code, seen)
            times.append(max(seen.values()) - started)
            stragglers += sum(1 for gw in nodes if answers(gw, key, 4) != {401})
        return {"times": times, "answered": answered, "stragglers": stragglers,
                "revocations": revocations}
    finally:
        for gw in nodes:
            gw.stop()
        upstream.stop()
        redis.stop(save=False)


def summary(result: dict) -> list[str]:
    def ms(values: list[float]) -> str:
        ordered = sorted(values)
        p90 = ordered[int(len(ordered) * 0.9) - 1] if len(ordered) >= 10 else ordered[-1]
        return (f"median {statistics.median(values) * 1000:.1f} ms, p90 {p90 * 1000:.1f} ms, "
                f"max {max(values) * 1000:.1f} ms")

    return [
        f"- {result['revocations']} revocations, {len(NODES)} nodes x {WORKERS} workers, "
        "one redis-server, all on this machine",
        f"- admin call to refusal by every node: {ms(result['times'])}",
        f"- admin call answered (in force on its own node) in: {ms(result['answered'])}",
        f"- probes accepted after a node's first refusal: {result['stragglers']}",
    ]


def test_cluster_revocation(tmp_path, request, e2e_summary):
    why = redis_unavailable()
    if why:
        pytest.skip(why)
    from bench.support.results import command, results_path, update_results

    result = measure(tmp_path, 100)
    lines = summary(result)
    text = "\n".join([f"### Run {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}", "",
                      f"- command: `{command(request.config)}` (from the repository root)",
                      *lines, ""])
    path = results_path("cluster_revocation")
    update_results(path, text, HEADER, begin="<!-- cluster-revocation-runs:begin -->",
                   end="<!-- cluster-revocation-runs:end -->", keep=6)
    e2e_summary(text + f"\n(written to {path})")
    assert result["stragglers"] == 0


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--revocations", type=int, default=100)
    args = parser.parse_args(argv)
    why = redis_unavailable()
    if why:
        raise SystemExit(why)
    with tempfile.TemporaryDirectory() as tmp:
        result = measure(Path(tmp), args.revocations)
    print("\n".join(summary(result)))


if __name__ == "__main__":
    main(sys.argv[1:])
