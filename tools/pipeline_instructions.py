"""Instructions per proxied request, in-process, under callgrind: a figure this noisy VM
cannot move, for judging a change to the request path before any timed run.

    .venv/bin/python tools/pipeline_instructions.py [public jwt jwt_distinct jwt_distinct_1k
        api_key api_key_distinct api_key_few] [--requests N] [--warm N] [--cache-sim]

Each scenario of bench/support/pipeline.py runs twice under ``valgrind --tool=callgrind``,
with a few and with N more requests; the difference of the two instruction totals over N is
the cost of one request (set-up, imports and the first requests cancel out). The same
difference of the calls to the allocators gives the allocations per request: ``pymalloc``
counts every Python object and PyMem block (``_PyObject_Malloc``/``Calloc``/``Realloc``),
``malloc`` the C library's (pymalloc's blocks over 512 bytes, OpenSSL's own). Needs valgrind
(Debian: ``apt-get install valgrind``); not part of the test suite.

``--warm`` sets the requests of the first run (api_key_distinct's 100,000 keys each need a
first request before the steady state); ``--cache-sim`` adds callgrind's simulated cache:
first-level data misses (D1) and last-level data misses (LL) per request, a figure of what
touching more memory costs that instruction counts miss (no TLB is simulated).
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WARM = 2_000
PYMALLOC = frozenset({"_PyObject_Malloc", "_PyObject_Calloc", "_PyObject_Realloc"})
LIBC_MALLOC = frozenset({"malloc", "calloc", "realloc"})


def run_scenario(name: str, requests: int) -> None:
    """Child mode: build the scenario and proxy ``requests`` requests."""
    sys.path.insert(0, str(ROOT))
    from bench.support.pipeline import scenario

    with tempfile.TemporaryDirectory() as workdir:
        built = scenario(name, Path(workdir))
        for _ in range(requests):
            built.one()
        built.close()


def allocator_calls(path: Path) -> tuple[int, int]:
    """Calls into pymalloc and into the C library's allocator, from a callgrind output file
    (its ``cfn=`` lines name the callee of the ``calls=`` line that follows)."""
    names: dict[str, str] = {}
    pymalloc = libc = 0
    callee = ""
    with open(path) as f:
        for line in f:
            if line.startswith(("fn=", "cfn=")):
                ref, _, name = line.partition("=")[2].strip().partition(" ")
                if name:
                    names[ref] = name.split("'")[0]  # "f'2": f in recursion
                if line.startswith("cfn="):
                    callee = names.get(ref, "")
            elif line.startswith("calls="):
                count = int(line[6:].split()[0])
                if callee in PYMALLOC:
                    pymalloc += count
                elif callee in LIBC_MALLOC:
                    libc += count
    return pymalloc, libc


def instructions(name: str, requests: int, cache_sim: bool = False) -> tuple[int, ...]:
    """Total instructions (callgrind's Ir) of one child run, and its allocator calls; with
    ``cache_sim``, its D1 and LL data misses (reads and writes) too."""
    with tempfile.TemporaryDirectory() as out:
        done = subprocess.run(
            ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}/cg.out",
             f"--cache-sim={'yes' if cache_sim else 'no'}",
             sys.executable, __file__, "--child", name, "--requests", str(requests)],
            capture_output=True, text=True, timeout=3600, check=False,
        )  # fmt: skip
        found = re.search(r"Collected\s*:\s*([\d ]+)", done.stderr)
        if done.returncode != 0 or found is None:
            raise SystemExit(f"callgrind run of {name} failed:\n{done.stderr[-2000:]}")
        totals = [int(n) for n in found.group(1).split()]
        counts = (totals[0], *allocator_calls(Path(out) / "cg.out"))
        if not cache_sim:
            return counts
        # Ir Dr Dw I1mr D1mr D1mw ILmr DLmr DLmw
        return (*counts, totals[4] + totals[5], totals[7] + totals[8])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("scenarios", nargs="*", default=["public", "jwt", "api_key"])
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--warm", type=int, default=WARM)
    parser.add_argument("--cache-sim", action="store_true")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        run_scenario(args.child, args.requests)
        return
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind is not installed (apt-get install valgrind)")
    print(f"instructions per request (callgrind, {args.requests:,} requests after "
          f"{args.warm:,}), {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    misses = f" {'D1 misses':>9s} {'LL misses':>9s}" if args.cache_sim else ""
    print(f"  {'':16s} {'instructions':>12s} {'pymalloc':>9s} {'malloc':>7s}{misses}")
    for name in args.scenarios:
        few = instructions(name, args.warm, args.cache_sim)
        many = instructions(name, args.warm + args.requests, args.cache_sim)
        per = [(m - f) / args.requests for m, f in zip(many, few, strict=True)]
        line = f"  {name:16s} {per[0]:12,.0f} {per[1]:9.1f} {per[2]:7.1f}"
        print(line + "".join(f" {n:9.1f}" for n in per[3:]))


if __name__ == "__main__":
    main()
