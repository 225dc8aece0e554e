"""How much load each generator can make: wrk (tools/loadgen/wrk.py) and the Python engine
(tools.loadgen.run_load), straight to the fixed-response upstream, with the generator's own
CPU. The figures behind the choice argued in tools/loadgen/README.md.

``python -m bench.support.generators [--seconds 5] [--tokens FILE]`` (from the repository
root; needs nginx and wrk). Three layouts: the generator alone on the first CPU with nginx on
the second (the generator's ceiling); generator and nginx on the first CPU (the client side of
bench/'s comparisons); generator and the Python upstream (bench/support/upstream.py) on the
first CPU (the client side before). Each generator runs with one fixed request and with a
rotating header from ``--tokens`` (default: bench/support/jwt.py's 100,000 ~1,750-byte
tokens, made if missing). The upstream's CPU per request is reported too: it shares the
client CPU in bench/'s layout.

The generator's CPU per request is its marginal cost: for wrk the CPU over the load only
(wrk.lua's ready mark); for the Python engine, whose worker process also starts an
interpreter and builds every request, the difference between a long and a short run divided
by the difference in requests.
"""

from __future__ import annotations

import argparse
import contextlib
import resource
import tempfile
from pathlib import Path

from tools.loadgen import run_load
from tools.loadgen.wrk import run_wrk

from . import cpu
from .upstream import start_fixed_upstream, start_upstream


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def python_engine(url: str, seconds: int, load: dict) -> dict:
    """(req/s, cores, µs of CPU per request) of run_load, one worker process, 32 connections."""
    runs = []
    for t in (max(1, seconds // 4), seconds):
        before = _children_cpu()
        report = run_load(url, connections=32, duration=t, processes=1, timeout=5.0, **load)
        runs.append((report["requests"], _children_cpu() - before, report))
    (n1, c1, _), (n2, c2, long) = runs
    per_request = (c2 - c1) / max(1, n2 - n1)
    return {"rps": long["rps"], "cores": per_request * long["rps"], "us": per_request * 1e6,
            "requests": n1 + n2}


def wrk_engine(url: str, seconds: int, load: dict) -> dict:
    report = run_wrk(url, connections=32, duration=seconds, **load)
    return {"rps": report["rps"], "cores": report["generator_cores"],
            "us": report["generator_cpu_s"] / max(1, report["requests"]) * 1e6,
            "requests": report["requests"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--tokens", type=Path, default=None)
    args = parser.parse_args()
    if args.tokens is None:
        from .jwt import token_file

        args.tokens = token_file(100_000, 1000)
    values = [line.strip() for line in args.tokens.read_text().splitlines() if line.strip()]
    loads = {
        "one request": ({}, {}),
        f"rotating {len(values):,} values": (
            {"header_name": "Authorization", "header_values": values},
            {"header_name": "Authorization", "header_file": args.tokens},
        ),
    }
    usable = sorted(cpu.usable_cpus())
    first, second = {usable[0]}, {usable[-1]}
    layouts = (("generator alone on its CPU (nginx on the other)", "nginx", second),
               ("generator + nginx upstream on one CPU", "nginx", first),
               ("generator + Python upstream on one CPU", "python", first))
    print("| layout | generator | load | req/s | generator CPU (cores) | generator µs CPU "
          "per request | upstream µs CPU per request |")
    print("|---|---|---|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as tmp:
        for index, (layout, kind, upstream_cpus) in enumerate(layouts):
            with contextlib.ExitStack() as stack:
                stack.enter_context(cpu.pinned(upstream_cpus))
                upstream = (start_fixed_upstream(Path(tmp) / f"upstream-{index}")
                            if kind == "nginx" else start_upstream())
                stack.callback(upstream.stop)
                stack.enter_context(cpu.pinned(first))  # the generators' processes inherit it
                for load_name, (py_load, wrk_load) in loads.items():
                    for name, run, load in (("wrk", wrk_engine, wrk_load),
                                            ("tools.loadgen (Python)", python_engine, py_load)):
                        up_before = cpu.cpu_seconds([upstream.pid])
                        r = run(upstream.url + "/direct", args.seconds, load)
                        up = (cpu.cpu_seconds([upstream.pid]) - up_before) / max(1, r["requests"])
                        print(f"| {layout} | {name} | {load_name} | {r['rps']:,.0f} "
                              f"| {r['cores']:.2f} | {r['us']:.1f} | {up * 1e6:.1f} |", flush=True)

if __name__ == "__main__":
    main()
