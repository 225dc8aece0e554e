"""Cluster mode: an api_key + quota route on three nodes and one Redis, with quota leasing,
against the same route on one node without Redis, and against one Redis call per request.

Three sides run at once on this machine (loopback), each with its own nodes, one worker a
node, behind the same fixed-response upstream:

* ``leasing``: 3 nodes, ``lease: auto`` (chunks from Redis, spent locally);
* ``per-request``: 3 nodes, ``lease: 0`` (one script call per request: the Kong-style
  baseline, counting in Redis request by request), its own key prefix;
* ``single``: the same route in single-node mode (``store`` the embedded SQLite, the quota
  file alone), on 3 independent nodes under the same load, so that the three sides differ by
  how quotas are counted, not by how many processes share the machine's cores.

The route is ``api_key`` (one key, its own quota 4,000,000,000/d) then ``quota: by key`` (the
same budget): each request spends two quotas. Rounds interleave the sides (the order rotates
each round, as bench/support/rounds.py does); a side's run is one wrk (one thread,
``--connections`` connections) per node at the same time, for ``--seconds``. Per run: req/s,
p99, CPU of the nodes' process trees and of redis-server from /proc, Redis commands executed
(INFO commandstats, the commands run inside scripts included, INFO itself excluded) per
1,000 requests. Reported: medians over rounds; req/s per gateway core, and per core counting
Redis's CPU too; the ratios against ``single``.

    .venv/bin/python -m bench.bench_cluster_quota [--rounds 3] [--seconds 5] [--connections 16]
    .venv/bin/python -m pytest bench/bench_cluster_quota.py     (the defaults)

The machine is shared (2 cores, other work running): every figure comes with the CPU other
processes took meanwhile. Processes are stopped by PID at the end.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from bench.support.cpu import cpu_seconds, tree
from bench.support.measure import _busy_seconds
from bench.support.upstream import start_upstream
from tests.support.cluster_keys import PATH, admin, wait_answer
from tests.support.gateway import GatewayProcess
from tests.support.redis_server import RedisServer, redis_unavailable
from tools.loadgen.wrk import run_wrk

pytestmark = pytest.mark.e2e

SECRET = "bench-cluster-quota-signing-secret-0123456789"
QUOTA = "4000000000/d"
HEADER = "## Cluster mode: quotas with leasing (bench/bench_cluster_quota.py)"
GOAL_COMMANDS = 20  # Redis commands per 1,000 requests, with leasing
GOAL_PER_CORE = 0.9  # leasing's req/s per core over the single node's

CONFIG = """\
access_log: null
{store}
api_keys: {{signing_secret: '{secret}'}}
routes:
  - route: /keyed
    upstream: {upstream}
    middleware:
      - api_key: {{}}
      - quota: {{limit: {quota}, by: key}}
"""
CLUSTER = "store: '{url}'\ncluster: {{node: {node}, lease: {lease}, prefix: '{prefix}', timeout: 0.5}}"


@dataclass
class Side:
    name: str
    nodes: list[GatewayProcess]
    keys: list[str] = field(default_factory=list)  # the key each node is sent
    runs: list[dict] = field(default_factory=list)


def start_side(directory: Path, name: str, upstream: str, redis: RedisServer | None,
               count: int, started: list[GatewayProcess], lease: int | str = "auto") -> Side:
    """``count`` nodes, each also put in ``started`` as soon as it runs (stopped at the end
    whatever fails after)."""
    nodes = []
    for i in range(count):
        node_dir = directory / f"{name}-{i}"
        node_dir.mkdir()
        store = (CLUSTER.format(url=redis.url, node=f"{name}-{i}", lease=lease,
                                prefix=f"{name}:") if redis else "")
        config = CONFIG.format(store=store, secret=SECRET, upstream=upstream, quota=QUOTA)
        node = GatewayProcess(node_dir, config, workers=1)
        started.append(node)
        nodes.append(node.start())
    # A cluster's key is made once and reaches every node; independent nodes make their own.
    side = Side(name, nodes)
    for node in nodes[:1] if redis else nodes:
        code, doc = admin(node, "POST", "/admin/keys", {"name": "bench", "quota": QUOTA})
        assert code == 201, doc
        side.keys.append(doc["key"])
    if redis:
        side.keys *= len(nodes)
    for node, key in zip(nodes, side.keys, strict=True):
        wait_answer([node], key, 200, seconds=15, probes=2)
    return side


def redis_commands(redis: RedisServer) -> int:
    stats = redis.client().info("commandstats")
    return sum(v["calls"] for k, v in stats.items() if k not in ("cmdstat_info",))


def run_side(side: Side, redis: RedisServer, seconds: int, connections: int) -> dict:
    """One run: a wrk per node at once; the figures of the run."""
    pids = [p for node in side.nodes for p in tree(node.proc.pid)]
    redis_pid = [redis.process.pid]
    reports: list[dict] = [{}] * len(side.nodes)

    def load(i: int) -> None:
        reports[i] = run_wrk(f"{side.nodes[i].url}{PATH}", connections=connections,
                             duration=seconds, headers=[f"X-API-Key: {side.keys[i]}"])

    commands_before = redis_commands(redis)
    cpu_before, redis_before = cpu_seconds(pids), cpu_seconds(redis_pid)
    busy_before, wall_before = _busy_seconds(), time.monotonic()
    threads = [threading.Thread(target=load, args=(i,)) for i in range(len(side.nodes))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.monotonic() - wall_before
    busy = _busy_seconds() - busy_before
    gateway_cpu = cpu_seconds(pids) - cpu_before
    redis_cpu = cpu_seconds(redis_pid) - redis_before
    commands = redis_commands(redis) - commands_before - 1  # the INFO of the line above
    requests = sum(r["requests"] for r in reports)
    duration = max(r["duration_s"] for r in reports)
    generator = sum(r["generator_cpu_s"] for r in reports)
    return {
        "requests": requests,
        "rps": requests / duration,
        "refused": sum(r["errors"]["status"] for r in reports),
        "errors": sum(v for r in reports for k, v in r["errors"].items() if k != "status"),
        "p99_us": max(r["latency_us"]["p99"] for r in reports),
        "gateway_cores": gateway_cpu / duration,
        "redis_cores": redis_cpu / duration,
        "per_core": requests / gateway_cpu if gateway_cpu else 0.0,
        "per_core_with_redis": requests / (gateway_cpu + redis_cpu) if gateway_cpu else 0.0,
        "commands_per_1000": commands * 1000 / requests if requests else 0.0,
        "generator_cores": generator / duration,
        "others_cores": max(busy - gateway_cpu - redis_cpu - generator, 0.0) / wall,
    }


def measure(directory: Path, rounds: int, seconds: int, connections: int) -> dict:
    (directory / "redis").mkdir()
    redis = RedisServer(directory / "redis").start()
    upstream = start_upstream()
    sides: list[Side] = []
    started: list[GatewayProcess] = []
    try:
        sides.append(start_side(directory, "leasing", upstream.url, redis, 3, started))
        sides.append(start_side(directory, "per-request", upstream.url, redis, 3, started,
                                lease=0))
        sides.append(start_side(directory, "single", upstream.url, None, 3, started))
        for side in sides:  # warm-up: connections, first leases, rates measured
            run_side(side, redis, 1, connections)
        for r in range(rounds):
            order = sides[r % len(sides):] + sides[:r % len(sides)]
            for side in order:
                side.runs.append(run_side(side, redis, seconds, connections))
        return {side.name: side.runs for side in sides}
    finally:
        for node in started:
            node.stop()
        upstream.stop()
        redis.stop(save=False)


def median(runs: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in runs)


def summary(result: dict, rounds: int, seconds: int, connections: int) -> list[str]:
    single = result["single"]
    lines = [
        f"- {rounds} rounds x {seconds} s a side, interleaved; wrk: 1 thread, {connections} "
        "connections per node; 1 worker a node; one redis-server; all on this machine",
        "",
        "| side | req/s | req/s per gateway core | per core with Redis | vs single (per core) "
        "| Redis cmds / 1,000 req | p99 | gateway cores | Redis cores | others' cores "
        "| refused |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, runs in result.items():
        ratio = statistics.median(
            run["per_core"] / base["per_core"] for run, base in zip(runs, single, strict=True))
        lines.append(
            f"| {name} | {median(runs, 'rps'):,.0f} | {median(runs, 'per_core'):,.0f} | "
            f"{median(runs, 'per_core_with_redis'):,.0f} | {ratio:.2f}x | "
            f"{median(runs, 'commands_per_1000'):.1f} | {median(runs, 'p99_us') / 1000:.1f} ms "
            f"| {median(runs, 'gateway_cores'):.2f} | {median(runs, 'redis_cores'):.2f} | "
            f"{median(runs, 'others_cores'):.2f} | "
            f"{sum(r['refused'] + r['errors'] for r in runs)} |")
    leasing = result["leasing"]
    cmds = median(leasing, "commands_per_1000")
    ratio = statistics.median(
        run["per_core"] / base["per_core"] for run, base in zip(leasing, single, strict=True))
    lines += [
        "",
        f"- goal: Redis commands per 1,000 requests with leasing <= {GOAL_COMMANDS}: "
        f"{cmds:.1f} ({'met' if cmds <= GOAL_COMMANDS else 'NOT met'})",
        f"- goal: leasing's req/s per gateway core >= {GOAL_PER_CORE}x the single node's: "
        f"{ratio:.2f}x ({'met' if ratio >= GOAL_PER_CORE else 'NOT met'})",
    ]
    return lines


def test_cluster_quota(tmp_path, request, e2e_summary):
    why = redis_unavailable()
    if why:
        pytest.skip(why)
    from bench.support.results import command, results_path, update_results

    result = measure(tmp_path, 3, 5, 16)
    lines = summary(result, 3, 5, 16)
    text = "\n".join([f"### Run {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}", "",
                      f"- command: `{command(request.config)}` (from the repository root)",
                      *lines, ""])
    path = results_path("cluster_quota")
    update_results(path, text, HEADER, begin="<!-- cluster-quota-runs:begin -->",
                   end="<!-- cluster-quota-runs:end -->", keep=6)
    e2e_summary(text + f"\n(written to {path})")
    assert all(r["refused"] == 0 and r["errors"] == 0 for runs in result.values() for r in runs)


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--connections", type=int, default=16)
    args = parser.parse_args(argv)
    why = redis_unavailable()
    if why:
        raise SystemExit(why)
    with tempfile.TemporaryDirectory() as tmp:
        result = measure(Path(tmp), args.rounds, args.seconds, args.connections)
    print("\n".join(summary(result, args.rounds, args.seconds, args.connections)))


if __name__ == "__main__":
    main(sys.argv[1:])
