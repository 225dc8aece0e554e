"""``fluxctl keys import``: 1,000,000 generated keys into a fresh state_dir in under a minute.

``pytest bench/ -k keys_import`` runs it (``-m "not e2e"`` skips it; ``FLUXGATE_BENCH_KEYS=N``
runs it with fewer keys for a trial). A JSON-lines file of N consumers (two scopes and a
quota each) is written, then ``fluxctl keys import FILE --generate --out KEYS`` runs as its
own process on a fresh state_dir, timed from its start to its exit (and the time it held
keys.db's write lock, which it prints); the key file and keys.db are checked to hold N keys. Bounded: the run is killed after 5 minutes.

Results: bench/results/keys_import.md (untracked) or ``$FLUXGATE_BENCH_RESULTS``, and a row in
the goals table at the end of the session. The goal is reported, not asserted: the machine
may be shared, so the time is indicative.
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
import subprocess
import sys
import time

import pytest

from bench.support.results import command, results_path, update_results
from bench.support.rounds import CHECK_GOALS, Check

pytestmark = pytest.mark.e2e

N_KEYS = int(os.environ.get("FLUXGATE_BENCH_KEYS", "1000000"))
GOAL_SECONDS = 60.0
TIMEOUT_S = 300
GOAL = next(goal for goal in CHECK_GOALS if goal.bench == "keys_import")
HEADER = "## fluxctl keys import (bench/bench_keys_import.py)"


def test_keys_import_a_million(tmp_path, request, e2e_summary, e2e_checks):
    state_dir = tmp_path / "state"
    config = tmp_path / "fluxgate.yaml"
    config.write_text(f"state_dir: {state_dir}\nroutes:\n  - route: /api\n"
                      "    upstream: http://127.0.0.1:9\n    middleware:\n      - api_key: {}\n")
    source = tmp_path / "consumers.jsonl"
    with open(source, "w") as f:
        for i in range(N_KEYS):
            f.write(json.dumps({"name": f"consumer-{i}", "scopes": ["orders", "read"],
                                "quota": "1000/d"}) + "\n")
    out = tmp_path / "keys.jsonl"
    argv = [sys.executable, "-m", "fluxgate.cli.fluxctl", "--config", str(config), "keys",
            "import", str(source), "--generate", "--out", str(out), "--json"]
    started = time.monotonic()
    done = subprocess.run(argv, capture_output=True, text=True, timeout=TIMEOUT_S)
    seconds = time.monotonic() - started
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout)["imported"] == N_KEYS
    with open(out) as f:
        written = sum(1 for _ in f)
    db = sqlite3.connect(state_dir / "keys.db")
    stored = db.execute("SELECT COUNT(*) FROM keys").fetchone()[0]
    db.close()
    assert written == stored == N_KEYS
    db_size = sum(os.path.getsize(state_dir / name) for name in os.listdir(state_dir)
                  if name.startswith("keys.db"))
    lock = re.search(r"write lock held ([0-9.]+)s", done.stderr)
    goal_seconds = GOAL_SECONDS * N_KEYS / 1_000_000
    check = Check(GOAL.name, met=seconds < goal_seconds,
                  detail=f"{N_KEYS:,} keys in {seconds:.1f} s ({N_KEYS / seconds:,.0f} keys/s)")
    text = "\n".join([
        f"### Run {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
        "",
        f"- command: `{command(request.config)}` (from the repository root)",
        f"- timed: `fluxctl keys import consumers.jsonl --generate --out keys.jsonl` "
        f"({N_KEYS:,} rows, {os.path.getsize(source) / 2**20:,.0f} MiB of JSON lines) on a "
        f"fresh state_dir: {seconds:.1f} s, {N_KEYS / seconds:,.0f} keys/s; keys.db "
        f"{db_size / 2**20:,.0f} MiB; keys.db's write lock held "
        f"{lock.group(1) + ' s' if lock else '(not reported)'} of it",
        f"- goal ({goal_seconds:.0f} s for {N_KEYS:,}): **{check.verdict()}**",
        "",
    ])
    path = results_path("keys_import")
    update_results(path, text, HEADER, begin="<!-- keys-import-runs:begin (newest first) -->",
                   end="<!-- keys-import-runs:end -->", keep=6)
    e2e_summary(text + f"\n(written to {path})")
    e2e_checks(check)
