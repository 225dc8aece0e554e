"""Creates per second through ``POST /admin/keys`` with a large key table.

    .venv/bin/python -m bench.bench_admin_creates [--keys 100000] [--clients 64] [--seconds 10]

keys.db is filled with ``--keys`` keys in one transaction (as bench/bench_memory.py does), a
one-worker gateway starts on loopback, then ``--clients`` threads, each on its own kept-alive
admin connection, create keys for ``--seconds``. Printed: the creates answered 201, creates/s,
the table generations published meanwhile, the time one table build takes with these keys
(what a single create cost when each write rebuilt the table), and how long five
``POST /admin/keys/revoke`` calls, made while the creates run, take to answer (a revoked key
is refused by every worker when answered). Then, the creates over, five revocations as
``fluxctl keys revoke`` makes them (a commit on keys.db by another connection): the time from
the commit to the gateway's first 401 for the key (polled every 5 ms). Bounded in time and
count.
"""

from __future__ import annotations

import argparse
import http.client
import json
import sys
import tempfile
import threading
import time
from pathlib import Path

from bench.bench_memory import load_keys, master_phases
from fluxgate.auth.keystore import KeyStore
from tests.support.gateway import GatewayProcess

CONFIG = """\
workers: 1
access_log: null
routes:
  - route: /keyed
    upstream: http://127.0.0.1:9
    middleware:
      - api_key: {}
"""
TOKEN = "test-admin-token"


def generation(port: int, metric: str = "fluxgate_api_key_table_generation") -> int:
    """The published key table's generation (or another of its metrics), from /metrics."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    conn.request("GET", "/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
    text = conn.getresponse().read().decode()
    conn.close()
    for line in text.splitlines():
        if line.startswith(metric):
            return int(float(line.split()[-1]))
    return -1


def revoke(port: int, name: str) -> float:
    """Milliseconds ``POST /admin/keys/revoke`` of ``name`` takes to answer 200."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    started = time.perf_counter()
    conn.request("POST", "/admin/keys/revoke", body=json.dumps({"name": name}),
                 headers={"Authorization": f"Bearer {TOKEN}"})
    resp = conn.getresponse()
    resp.read()
    elapsed = (time.perf_counter() - started) * 1000
    conn.close()
    if resp.status != 200:
        raise RuntimeError(f"revoke {name}: {resp.status}")
    return elapsed


def creator(port: int, index: int, until: float, counts: list[int], errors: list[int]) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    n = 0
    while time.monotonic() < until:
        body = json.dumps({"name": f"bench-{index}-{n}"})
        n += 1
        try:
            conn.request("POST", "/admin/keys", body=body,
                         headers={"Authorization": f"Bearer {TOKEN}",
                                  "Content-Type": "application/json"})
            resp = conn.getresponse()
            resp.read()
        except OSError:  # a timeout: counted, and a new connection
            errors[index] += 1
            conn.close()
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            continue
        if resp.status == 201:
            counts[index] += 1
        else:
            errors[index] += 1
    conn.close()


def revoker(port: int, started: float, out: list[float]) -> None:
    """Five revocations while the creates run (one a second from the second second)."""
    for i in range(5):
        time.sleep(max(0.0, started + 2 + i - time.monotonic()))
        out.append(revoke(port, f"consumer-{i}"))


def status(port: int, key: str) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("GET", "/keyed/x", headers={"X-API-Key": key})
        resp = conn.getresponse()
        resp.read()
        return resp.status
    finally:
        conn.close()


def fluxctl_revocations(state_dir: str, port: int, keys: list[str]) -> list[float]:
    """Milliseconds from a revocation committed on keys.db (as fluxctl does) to the gateway's
    first 401 for the key; consumer-5... were loaded with ``keys``' texts."""
    out = []
    with KeyStore.open(state_dir) as store:
        for i, key in enumerate(keys):
            if status(port, key) == 401:
                raise RuntimeError(f"consumer-{5 + i} refused before its revocation")
            store.revoke(f"consumer-{5 + i}")
            committed = time.perf_counter()
            deadline = committed + 10
            while status(port, key) != 401:
                if time.perf_counter() > deadline:
                    raise RuntimeError(f"consumer-{5 + i} still accepted 10 s after revocation")
                time.sleep(0.005)
            out.append((time.perf_counter() - committed) * 1000)
    return out


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--keys", type=int, default=100_000)
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        gateway = GatewayProcess(Path(tmp), CONFIG, workers=1)
        state_dir = str(gateway.state_dir)
        started = time.perf_counter()
        kept = load_keys(state_dir, args.keys, 10)[5:]  # consumer-5..9, revoked by fluxctl
        print(f"{args.keys:,} keys loaded in {time.perf_counter() - started:.1f} s")
        build = sum(master_phases(state_dir).values())
        print(f"one table build from records (rows -> records -> bytes): {build * 1000:.0f} ms")
        started = time.perf_counter()
        gateway.start(timeout=900)
        print(f"gateway started (first table built from keys.db) in "
              f"{time.perf_counter() - started:.1f} s")
        try:
            first = generation(gateway.admin_port)
            builds = generation(gateway.admin_port, "fluxgate_api_key_table_builds_total")
            counts, errors = [0] * args.clients, [0] * args.clients
            started = time.monotonic()
            until = started + args.seconds
            threads = [threading.Thread(target=creator,
                                        args=(gateway.admin_port, i, until, counts, errors))
                       for i in range(args.clients)]
            revokes: list[float] = []
            threads.append(threading.Thread(target=revoker,
                                            args=(gateway.admin_port, started, revokes)))
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            elapsed = time.monotonic() - started
            published = generation(gateway.admin_port) - first
            builds = generation(gateway.admin_port, "fluxgate_api_key_table_builds_total") - builds
            by_fluxctl = fluxctl_revocations(state_dir, gateway.port, kept)
        finally:
            gateway.stop()
    done = sum(counts)
    print(f"{args.clients} clients, {elapsed:.1f} s: {done:,} creates answered 201 "
          f"({sum(errors)} other), {done / elapsed:.0f} creates/s, {published} generations, "
          f"{builds} full table builds in the background")
    print("revocations answered in (ms): " + ", ".join(f"{ms:.1f}" for ms in revokes))
    print("fluxctl revocations, commit to the first 401 (ms): "
          + ", ".join(f"{ms:.1f}" for ms in by_fluxctl))


if __name__ == "__main__":
    main(sys.argv[1:])
