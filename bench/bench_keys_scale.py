"""The api_key route per proxy core with 1,000,000 keys in the table against 100 keys.

    .venv/bin/python -m bench.bench_keys_scale [--keys 1000000] [--small 100] [--rotate 100000]

Two one-worker gateways on loopback, the same config and the same fixed-response upstream:
one whose keys.db holds ``--keys`` keys, one with ``--small``. wrk sends a rotating
X-API-Key header: ``--rotate`` distinct keys of the large table (spread over it: a cache
holds few of their entries), all the keys of the small one. wrk builds as many
distinct requests on both sides (``--rotate``; each carries an ``X-Loadgen-Seq`` header, see
tools/loadgen/wrk.lua): the generator shares the last-level cache with the proxy here, and
100,000 requests of its own against 100 cost the proxy beside it up to about 3% per core
by themselves (0.97x per core in two 9-round runs, within the noise), which would be counted
against the large table. Method as the other
proxy comparisons (bench/support/rounds.py): both gateways pinned to one CPU, wrk and the
upstream to the other, per-core req/s from /proc, paired rounds A B, B A, ...; the ratio is
the median of the per-round ratios (large ÷ small). Goal: ≥ 0.95. The warm-up lasts long
enough for every rotating key to be sent once (a worker builds a key's principal at its
first request there: a one-time cost, printed apart as the warm-up's req/s per core), so the
rounds compare steady states. Printed: the comparison table, the warm-up figures, and the
time each gateway took to start (its first table built from keys.db).
Bounded: rounds × seconds from FLUXGATE_BENCH_ROUNDS / FLUXGATE_BENCH_ROUND_SECONDS.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
import time
from pathlib import Path

from bench.bench_memory import CONFIG, load_keys
from bench.support import cpu
from bench.support.e2e import binaries
from bench.support.measure import proxy_target
from bench.support.results import comparison_lines
from bench.support.rounds import WARMUP_SECONDS, Comparison, Goal, Side, run_comparison
from bench.support.upstream import start_fixed_upstream
from tests.support.gateway import GatewayProcess

GOAL = Goal("api_key, 1,000,000 keys vs 100 keys", 0.95, bench="keys_scale")
FIRST_SIGHTS_PER_SECOND = 20_000  # a worker's rate on keys it has not seen yet, at least


def gateway_with_keys(workdir: Path, port: int, keys: int, rotate: int
                      ) -> tuple[GatewayProcess, Path, float]:
    """A started one-worker gateway holding ``keys`` keys; the file of the ``rotate`` keys
    wrk sends (taken evenly over the table's rows), and the seconds its start took."""
    workdir.mkdir(parents=True)
    gateway = GatewayProcess(workdir, CONFIG.format(workers=1, port=port), workers=1)
    texts = load_keys(str(gateway.state_dir), keys, keys)  # texts kept: every key's
    step = max(len(texts) // rotate, 1)
    chosen = texts[::step][:rotate]
    del texts
    keys_file = workdir / "keys.txt"
    keys_file.write_text("".join(f"{k}\n" for k in chosen))
    started = time.monotonic()
    gateway.start(timeout=900)
    return gateway, keys_file, time.monotonic() - started


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--keys", type=int, default=1_000_000)
    parser.add_argument("--small", type=int, default=100)
    parser.add_argument("--rotate", type=int, default=100_000)
    args = parser.parse_args(argv)
    binaries()  # wrk (and haproxy, unused here) installed, or say how
    facts = cpu.machine_facts()
    client_cpus, proxy_cpus, plan = cpu.plan()
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        root = Path(tmp)
        stack.enter_context(cpu.pinned(client_cpus))  # wrk and the upstream inherit it
        upstream = start_fixed_upstream(root / "upstream")
        stack.callback(upstream.stop)
        sides = []
        for label, n in ((f"{args.keys:,} keys", args.keys), (f"{args.small:,} keys", args.small)):
            gateway, keys_file, start_s = gateway_with_keys(
                root / f"keys-{n}", upstream.port, n, min(args.rotate, n))
            stack.callback(gateway.stop)
            assert gateway.proc is not None
            target = proxy_target(label, gateway.proc.pid, gateway.url, proxy_cpus)
            sides.append(Side(label, target, "/keyed/hello", header_file=keys_file,
                              header_name="X-API-Key", spread=min(args.rotate, args.keys)))
            print(f"{label}: gateway started in {start_s:.1f} s", flush=True)
        warmup = max(WARMUP_SECONDS, -(-min(args.rotate, args.keys) // FIRST_SIGHTS_PER_SECOND) + 1)
        cmp = run_comparison(
            Comparison(GOAL.name, sides[0], sides[1], GOAL), upstream_pid=upstream.pid,
            client_cpu=min(client_cpus) if client_cpus else None,
            proxy_cpu=min(proxy_cpus) if proxy_cpus else None, warmup=warmup)
    print(f"machine: nproc {facts['nproc']}, {facts['model']}; {plan}; upstream: "
          f"{upstream.description}; {min(args.rotate, args.keys):,} keys rotating on the large "
          f"side, {args.small} on the small one; wrk builds {min(args.rotate, args.keys):,} "
          f"distinct requests on each")
    print("\n".join(comparison_lines(cmp)))
    for sample in cmp.warmups:
        print(f"warm-up ({warmup} s, every rotating key's first request among them), "
              f"{sample.label}: {sample.rps:,.0f} req/s, {sample.per_core or 0:,.0f} per proxy core")


if __name__ == "__main__":
    main(sys.argv[1:])
