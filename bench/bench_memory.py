"""Memory with 1,000,000 API keys: 8 workers hold one copy of the key table.

``pytest bench/ -k memory`` runs it (``-m "not e2e"`` skips it; ``FLUXGATE_BENCH_KEYS=N``
runs it with fewer keys for a trial). Needs nginx for the upstream (else the Python one).

1. 1,000,000 keys go into a state_dir's keys.db in one transaction through the store's own
   insert (``KeyStore._write`` + ``KeyStore._insert``, each key minted by ``mint_key``), as
   many ``fluxctl keys generate`` would leave them, but without a commit per key. Timed.
2. ``fluxgate run --workers 8`` on loopback with one api_key route: timed from the start of
   the process to /readyz answering 200 (the master compiles keys.db into keys.table before
   forking the workers, and each worker maps it).
3. A few hundred requests, each on a new connection and with another key, all answered 200,
   so that the workers have looked keys up in the table; memory is read (step 4); then wrk
   for 10 s over 100,000 of the keys, a new connection per request so that every worker
   takes its share, and memory is read again: a worker's private bytes
   grow there if it copies pages it inherited from the master (its cycle collector walking
   objects the master held at fork) or builds per-key state.
4. For the master and every worker: Rss, Pss, shared and private bytes (smaps_rollup) and the
   keys.table mappings' own Size, Rss and Pss (smaps). The table is held once when the sum
   of its mappings' Pss over all processes is no more than its size (×1.1 for rounding):
   goal met. Each worker's private bytes are reported too, and flagged when they reach the
   table's size: a worker that copied the table into its heap would show it there.
5. Where the master's start goes with this many keys: ``KeyStore.for_table`` (the rows as
   records) and ``build_table`` (the table's bytes) timed in this process on the same keys.db.

Results: bench/results/memory.md (untracked) or ``$FLUXGATE_BENCH_RESULTS``, a row in the
goals table at the end of the session. Asserted: every request answered 200 and every worker
maps the table; the goal is reported, not asserted. The machine may be shared: the times are
indicative.
"""

from __future__ import annotations

import http.client
import os
import time

import pytest

from bench.support import cpu
from bench.support.memory import (
    MappingMemory,
    ProcessMemory,
    mapping_memory,
    mib,
    process_memory,
)
from bench.support.results import command, results_path, update_results
from bench.support.rounds import CHECK_GOALS, Check
from bench.support.upstream import start_fixed_upstream
from fluxgate.auth.keys import load_signing_key, mint_key
from fluxgate.auth.keystore import KeySpec, KeyStore
from fluxgate.auth.keytable import RESERVED_SLOTS, TABLE_FILE, build_table
from fluxgate.master.keys import KEEP_DEAD
from tests.support.gateway import GatewayProcess
from tools.loadgen.wrk import run_wrk

pytestmark = pytest.mark.e2e

N_KEYS = int(os.environ.get("FLUXGATE_BENCH_KEYS", "1000000"))
WORKERS = 8
REQUESTS = 64 * WORKERS
KEEP = min(N_KEYS, 100_000)  # keys kept as text, rotated by wrk after the first requests
LOAD_SECONDS = 10
EXPIRES_IN = 30 * 86400
GOAL = CHECK_GOALS[0]
HELD_ONCE = 1.1  # the mappings' Pss summed over processes, at most this × the table's size

CONFIG = """\
workers: {workers}
access_log: null
routes:
  - route: /keyed
    upstream: http://127.0.0.1:{port}
    middleware:
      - api_key: {{}}
"""

HEADER = """\
## Memory: 8 workers, 1,000,000 API keys (bench/bench_memory.py)

keys.db filled in one transaction, `fluxgate run --workers 8`, a few hundred keyed requests,
then each process's smaps_rollup and the keys.table mappings from smaps. PSS splits a shared
page among the processes that map it: the mappings' PSS summed over processes is the table
as the machine holds it.
"""


def load_keys(state_dir: str, n: int, keep: int) -> list[str]:
    """``n`` keys in keys.db in one transaction; the text of the first ``keep``."""
    signing = load_signing_key(None, state_dir)
    kept: list[str] = []
    with KeyStore.open(state_dir) as store:
        store.check_signing_key(signing)
        spec, now = KeySpec(), int(time.time())

        def insert() -> None:
            for i in range(n):
                minted = mint_key(signing)
                store._insert(f"consumer-{i}", minted, spec, now, EXPIRES_IN)
                if i < keep:
                    kept.append(minted.text)

        store._write(insert)
    return kept


def master_phases(state_dir: str) -> dict[str, float]:
    """Seconds the master's first table takes with these keys, by phase."""
    with KeyStore.open(state_dir) as store:
        started = time.perf_counter()
        records = store.for_table(time.time(), KEEP_DEAD)
        read = time.perf_counter()
        slots = RESERVED_SLOTS + max(r.slot for r in records) + 1
        build_table(records, generation=1, usage_slots=slots, quota_tag=None)
        built = time.perf_counter()
    return {"for_table (keys.db rows → records)": read - started,
            "build_table (records → bytes)": built - read}


def snapshot(master: int, table: str) -> list[tuple[str, ProcessMemory, MappingMemory]]:
    """(label, the process's memory, its keys.table mappings) for the master and each worker."""
    rows = [("master", process_memory(master), mapping_memory(master, table))]
    rows += [(f"worker {i + 1}", process_memory(pid), mapping_memory(pid, table))
             for i, pid in enumerate(sorted(cpu.children(master)))]
    return rows


def ask(port: int, key: str) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("GET", "/keyed/hello", headers={"X-API-Key": key, "Connection": "close"})
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()


def memory_table(rows: list[tuple[str, ProcessMemory, MappingMemory]]) -> list[str]:
    out = [
        "| process | Rss | Pss | shared | private | keys.table mappings | mapped size "
        "| table Rss | table Pss |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    out += [f"| {label} | {mib(p.rss)} | {mib(p.pss)} | {mib(p.shared)} | {mib(p.private)} "
            f"| {m.mappings} | {mib(m.size)} | {mib(m.rss)} | {mib(m.pss)} |"
            for label, p, m in rows]
    out.append(f"| **sum** | | **{mib(sum(p.pss for _, p, _ in rows))}** | | | | | "
               f"| **{mib(sum(m.pss for _, _, m in rows))}** |")
    return out


def test_memory_one_copy_of_the_key_table(tmp_path, request, e2e_summary, e2e_checks):
    upstream = start_fixed_upstream(tmp_path / "upstream")
    try:
        (tmp_path / "fluxgate").mkdir()
        gateway = GatewayProcess(tmp_path / "fluxgate",
                                 CONFIG.format(workers=WORKERS, port=upstream.port), workers=WORKERS)
        state_dir = str(gateway.state_dir)
        started = time.perf_counter()
        keys = load_keys(state_dir, N_KEYS, KEEP)
        load_s = time.perf_counter() - started
        started = time.perf_counter()
        try:
            gateway.start(timeout=900)
            ready_s = time.perf_counter() - started
            statuses = [ask(gateway.port, key) for key in keys[:REQUESTS]]
            table = os.path.join(state_dir, TABLE_FILE)
            table_size = os.path.getsize(table)
            rows = snapshot(gateway.proc.pid, table)
            keys_file = tmp_path / "keys.txt"
            keys_file.write_text("".join(f"{k}\n" for k in keys))
            # A new connection per request: kept-alive connections would all stay with the
            # worker that accepted them first.
            load = run_wrk(f"{gateway.url}/keyed/hello", connections=32, duration=LOAD_SECONDS,
                           headers=("Connection: close",), header_file=keys_file,
                           header_name="X-API-Key", timeout=10.0)
            after = snapshot(gateway.proc.pid, table)
        finally:
            gateway.stop()
    finally:
        upstream.stop()
    phases = master_phases(state_dir)

    mapped_pss = max(sum(m.pss for _, _, m in rows), sum(m.pss for _, _, m in after))
    total_pss = sum(p.pss for _, p, _ in rows)
    ratio = mapped_pss / table_size
    worker_rows = rows[1:]
    flags = []
    copies = [label for label, p, _ in after[1:] if p.private >= table_size]
    if copies:  # with few keys a worker's own heap alone is that large: a flag, no verdict
        flags.append(f"private bytes ≥ the table's size in {', '.join(copies)} after the load: "
                     "a copy in the heap (of the table, or of what the master's heap held at "
                     "fork), or a table smaller than the interpreter's own memory")
    check = Check(
        GOAL.name, met=ratio <= HELD_ONCE,
        detail=(f"{N_KEYS:,} keys: table {mib(table_size)}, its mappings' PSS over {len(rows)} processes "
                f"{mib(mapped_pss)} ({ratio:.2f}x its size); total PSS {mib(total_pss)}, "
                f"{mib(sum(p.pss for _, p, _ in after))} after {load['requests']:,} requests"),
        flags=tuple(flags))
    db_size = sum(os.path.getsize(os.path.join(state_dir, f)) for f in os.listdir(state_dir)
                  if f.startswith("keys.db"))
    lines = [
        f"### Run {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
        "",
        f"- command: `{command(request.config)}` (from the repository root)",
        f"- keys: {N_KEYS:,} loaded in {load_s:.1f} s ({N_KEYS / load_s:,.0f} keys/s, one "
        f"transaction); keys.db {mib(db_size)}; keys.table {mib(table_size)} on disk",
        f"- start to ready (`fluxgate run --workers {WORKERS}`, /readyz 200): {ready_s:.1f} s",
        "- the master's first table, timed in this process: "
        + "; ".join(f"{name} {s:.1f} s" for name, s in phases.items()),
        f"- requests: {len(statuses)}, each a new connection with another key: "
        f"{statuses.count(200)} answered 200; then wrk {LOAD_SECONDS} s, 32 connections, "
        "a new one per request, "
        f"{len(keys):,} keys rotating: {load['requests']:,} requests, "
        f"{sum(load['errors'].values())} errors or statuses ≥ 400",
        "",
        "After the first requests:",
        "",
        *memory_table(rows),
        "",
        f"After the wrk load ({load['requests']:,} requests over {len(keys):,} keys):",
        "",
        *memory_table(after),
        "",
        f"- goal ({GOAL.goal}): **{check.verdict()}**: {check.detail}",
        *(f"- ⚑ {flag}" for flag in flags),
        "",
    ]
    text = "\n".join(lines)
    path = results_path("memory")
    update_results(path, text, HEADER, begin="<!-- memory-runs:begin (newest first) -->",
                   end="<!-- memory-runs:end -->", keep=6)
    e2e_summary(text + f"\n(written to {path})")
    e2e_checks(check)
    assert statuses == [200] * REQUESTS
    assert sum(load["errors"].values()) == 0, load["errors"]
    assert len(worker_rows) == WORKERS
    assert all(m.mappings >= 1 for _, _, m in worker_rows), "a worker does not map keys.table"
