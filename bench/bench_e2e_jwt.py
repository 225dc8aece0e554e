"""End to end, JWT: loadgen → FluxGate (1 worker) jwt route, with one token repeated and with
100,000 distinct RS256 tokens (beyond the verified-token cache of 16,384), against FluxGate's
public route and against HAProxy verifying the same tokens with ``jwt_verify`` (RS256
pinned, ``iss`` and ``exp`` checked; ``nbthread 1``), same machine, same upstream.

``pytest bench/ -k e2e_jwt`` runs it (``-m "not e2e"`` skips it). Method as bench_e2e.py:
the fixed-response upstream (bench/support/upstream.py) in its own process; closed loop, 50
connections, one loadgen process; proxies pinned to the last CPU, loadgen and upstream to
the first; a 1 s warm-up per target, then the measured time in two halves interleaved
A B C D E E D C B A. The distinct tokens rotate through loadgen's ``--header-file``; they are
made once and cached (bench/support/jwt.py). The identity provider (tests/support/idp.py)
serves the JWKS FluxGate fetches at start.

Asserted: every run had no transport error and only 200s (all tokens valid for both
proxies). The ratios against the issue's targets are reported, not asserted.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import platform
import re
import shlex
import sys
from pathlib import Path

import pytest

from bench.support import cpu, peers
from bench.support.jwt import AUDIENCE, ISSUER, bench_key, haproxy_jwt, token_file
from bench.support.measure import Measurement, Target, combine, measure
from bench.support.results import table
from bench.support.upstream import start_upstream
from tests.support.gateway import GatewayProcess
from tests.support.idp import IdentityProvider

pytestmark = pytest.mark.e2e

BENCH_DIR = Path(__file__).resolve().parent
# A trial run can write elsewhere: FLUXGATE_BENCH_JWT_RESULTS=/tmp/r.md pytest bench/ -k e2e_jwt
RESULTS = Path(os.environ.get("FLUXGATE_BENCH_JWT_RESULTS", BENCH_DIR / "RESULTS.md"))
SECONDS = float(os.environ.get("FLUXGATE_BENCH_E2E_SECONDS", "8"))  # measured, per target
WARMUP_SECONDS = 1.0
CONNECTIONS = 50
DISTINCT = 100_000
BEGIN = "<!-- jwt-e2e-runs:begin (written by bench/bench_e2e_jwt.py; newest first) -->"
END = "<!-- jwt-e2e-runs:end -->"
KEEP_RUNS = 4

FLUXGATE_CONFIG = """\
workers: 1
access_log: null
routes:
  - route: /public
    upstream: http://127.0.0.1:{port}
    public: true
  - route: /jwt
    upstream: http://127.0.0.1:{port}
    middleware:
      - jwt:
          issuer: {issuer}
          audience: {audience}
          jwks_uri: {jwks_uri}
          algorithms: [RS256]
"""

SECTION_HEADER = """\
## End-to-end: JWT route — FluxGate vs HAProxy jwt_verify (bench/bench_e2e_jwt.py)

Closed loop, 1 FluxGate worker, HAProxy `nbthread 1` with `jwt_verify` (RS256 pinned, `iss`
and `exp` checked), the same fixed-response upstream; method in the docstring of
bench/bench_e2e_jwt.py. `1 token`: one valid RS256 token on every request (FluxGate's
verified-token cache hits; HAProxy has none and verifies each time). `100k tokens`: 100,000
distinct RS256 tokens in rotation (beyond FluxGate's 16,384-token cache: every request is
verified in full). Columns as in the public-route section above.

Targets (issue 3): repeated token ≥ 2.5× HAProxy's req/s; distinct tokens ≥ 1.2× HAProxy;
cached JWT route ≥ 0.9× FluxGate's public route.
"""


def _cpu_plan() -> tuple[set[int] | None, set[int] | None, str]:
    usable = sorted(cpu.usable_cpus())
    if len(usable) < 2:
        return None, None, f"no pinning (only CPU {usable} usable)"
    return {usable[0]}, {usable[-1]}, (
        f"proxy pinned to CPU {usable[-1]}; loadgen and upstream pinned to CPU {usable[0]}"
    )


def _command(config: pytest.Config) -> str:
    python = os.path.relpath(sys.executable, config.rootpath)
    if python.startswith(".."):
        python = sys.executable
    return shlex.join([python, "-m", "pytest", *config.invocation_params.args])


def _ratio(a: Measurement, b: Measurement) -> str:
    line = f"{a.rps / b.rps:.2f}x req/s"
    if a.rps_per_proxy_core and b.rps_per_proxy_core:
        line += f", {a.rps_per_proxy_core / b.rps_per_proxy_core:.2f}x req/s per proxy core"
    return line


def ratio_lines(rows: dict[str, Measurement]) -> list[str]:
    fg1, fgn = rows["fluxgate jwt, 1 token"], rows["fluxgate jwt, 100k tokens"]
    ha1, han = rows["haproxy jwt, 1 token"], rows["haproxy jwt, 100k tokens"]
    public = rows["fluxgate public"]
    return [
        f"repeated token, fluxgate/haproxy: {_ratio(fg1, ha1)} (target >= 2.5x)",
        f"distinct tokens, fluxgate/haproxy: {_ratio(fgn, han)} (target >= 1.2x)",
        f"cached jwt route / public route (fluxgate): {_ratio(fg1, public)} (target >= 0.9x)",
    ]


def update_results(path: Path, run_text: str) -> None:
    """Insert ``run_text`` as the newest run of this bench's own section."""
    text = path.read_text() if path.exists() else "# FluxGate benchmark results\n"
    if BEGIN not in text:
        text = text.rstrip("\n") + "\n\n" + SECTION_HEADER.rstrip("\n") + f"\n\n{BEGIN}\n{END}\n"
    before, rest = text.split(BEGIN, 1)
    runs_text, after = rest.split(END, 1)
    runs = [r for r in re.split(r"(?m)^(?=### Run )", runs_text.strip("\n")) if r.strip()]
    runs = [run_text.strip("\n") + "\n"] + [r.rstrip("\n") + "\n" for r in runs]
    path.write_text(f"{before}{BEGIN}\n" + "\n".join(runs[:KEEP_RUNS]) + f"{END}{after}")


def test_e2e_jwt(benchmark, tmp_path, request, e2e_summary):
    benchmark.group = "e2e: jwt route"
    try:
        haproxy_bin = peers.ensure_installed("haproxy")
    except peers.PeerUnavailable as exc:
        pytest.skip(f"HAProxy peer unavailable: {exc}")
    key = bench_key()
    tokens = token_file(DISTINCT)
    with open(tokens) as f:
        one_token = f.readline().strip()  # "Bearer ..."
    client_cpus, proxy_cpus, plan = _cpu_plan()
    facts = cpu.machine_facts()

    with contextlib.ExitStack() as stack:
        if client_cpus:
            own = os.sched_getaffinity(0)
            os.sched_setaffinity(0, client_cpus)
            stack.callback(os.sched_setaffinity, 0, own)
        upstream = start_upstream()
        stack.callback(upstream.stop)
        idp = IdentityProvider(keys=[key]).start()
        stack.callback(idp.stop)

        def proxied(name: str, pid: int, url: str) -> Target:
            if proxy_cpus:
                cpu.pin_tree(pid, proxy_cpus)
            return Target(name, url, cpu.tree(pid))

        (tmp_path / "fluxgate").mkdir()
        gateway = GatewayProcess(tmp_path / "fluxgate", FLUXGATE_CONFIG.format(
            port=upstream.port, issuer=ISSUER, audience=AUDIENCE, jwks_uri=idp.jwks_uri))
        stack.callback(gateway.stop)
        gateway.start()
        assert gateway.proc is not None
        fluxgate = proxied("fluxgate", gateway.proc.pid, gateway.url)
        haproxy = haproxy_jwt(haproxy_bin, tmp_path / "haproxy", upstream.port, key)
        stack.callback(haproxy.stop)
        ha = proxied("haproxy", haproxy.start().pid, haproxy.url)

        repeated = {"headers": (f"Authorization: {one_token}",)}
        distinct = {"header_file": str(tokens), "header_name": "Authorization"}
        runs = [
            ("fluxgate public", fluxgate, "/public/hello", None),
            ("fluxgate jwt, 1 token", fluxgate, "/jwt/hello", repeated),
            ("fluxgate jwt, 100k tokens", fluxgate, "/jwt/hello", distinct),
            ("haproxy jwt, 1 token", ha, "/jwt/hello", repeated),
            ("haproxy jwt, 100k tokens", ha, "/jwt/hello", distinct),
        ]

        def run() -> tuple[list[Measurement], dict[str, Measurement]]:
            def one(name: str, target: Target, path: str, load, seconds: float) -> Measurement:
                return measure(Target(name, target.url, target.proxy_pids), path=path,
                               seconds=seconds, connections=CONNECTIONS,
                               upstream_pid=upstream.pid, load=load)

            warmups = [one(*r, WARMUP_SECONDS) for r in runs]
            halves: dict[str, list[Measurement]] = {r[0]: [] for r in runs}
            for r in runs + runs[::-1]:
                halves[r[0]].append(one(*r, SECONDS / 2))
            return warmups, {name: combine(parts) for name, parts in halves.items()}

        warmups, rows = benchmark.pedantic(run, rounds=1, iterations=1)

    lines = ratio_lines(rows)
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    run_text = "\n".join([
        f"### Run {now}",
        "",
        f"- command: `{_command(request.config)}` (from the repository root)",
        f"- machine: nproc {facts['nproc']} ({facts['cpu_count']} CPUs), {facts['model']}, "
        f"Linux {facts['kernel']}",
        f"- software: Python {platform.python_version()}; {peers.version(haproxy_bin)}",
        f"- load: closed loop, {CONNECTIONS} connections, 1 loadgen process, "
        f"{WARMUP_SECONDS:g} s warm-up then 2 × {SECONDS / 2:g} s interleaved per target; {plan}",
        "",
        *table(list(rows.values())),
        "",
        *(f"- {line}" for line in lines),
        "",
    ])
    update_results(RESULTS, run_text)
    e2e_summary(run_text)
    benchmark.extra_info.update({
        "rows": {name: {"rps": round(m.rps), "p50_us": m.p50_us, "p99_us": m.p99_us,
                        "proxy_cores": round(m.proxy_cores, 3)} for name, m in rows.items()},
        "ratios": lines,
    })
    for m in warmups + list(rows.values()):
        assert m.requests > 0, f"{m.target}: no response at all"
        assert m.error_count == 0, f"{m.target}: errors {m.errors}"
        assert set(m.status) == {"200"}, f"{m.target}: statuses {m.status}"
