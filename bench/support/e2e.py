"""The rig the paired e2e benches share (bench_e2e.py, bench_e2e_jwt.py, bench_keys.py).

``rig()`` pins this process (and so wrk and the upstream it starts) to the client CPU, starts
the fixed-response upstream (nginx when installed), FluxGate with one worker and the HAProxy
peer (``nbthread 1``), and pins both proxies' process trees to the proxy CPU; everything is
stopped by its own pid on the way out. Missing binaries skip the test with the install hint:
bench/ installs nothing. ``report()`` writes the run to its untracked results file, hands the
comparisons to the end-of-session goals table and asserts that every run was clean.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.support.gateway import GatewayProcess
from tools.loadgen.wrk import find_wrk

from . import cpu, peers
from .measure import Target, proxy_target
from .results import results_path, rounds_run_text, update_results
from .rounds import Comparison, Sample, run_comparison, run_direct
from .upstream import start_fixed_upstream

# The public route both proxies serve in the plain and the TLS comparisons (bench_e2e.py,
# bench_e2e_tls.py): FluxGate's config for ``upstream_port``, and the path wrk asks for.
PUBLIC_PATH = "/bench/hello"
PUBLIC_CONFIG = """\
workers: 1
access_log: null
routes:
  - route: /bench
    upstream: http://127.0.0.1:{port}
    public: true
"""


def public_config(upstream_port: int) -> str:
    return PUBLIC_CONFIG.format(port=upstream_port)


@dataclass
class Rig:
    upstream: Any  # .pid, .port, .url, .description
    gateway: GatewayProcess
    fluxgate: Target
    haproxy: Target
    client_cpu: int | None
    proxy_cpu: int | None
    plan: str
    versions: list[str]
    facts: dict[str, str]  # read before pinning: nproc is the machine's

    def run(self, cmp: Comparison) -> Comparison:
        return run_comparison(cmp, upstream_pid=self.upstream.pid, client_cpu=self.client_cpu,
                              proxy_cpu=self.proxy_cpu)

    def direct(self) -> Sample:
        return run_direct(self.upstream.url, upstream_pid=self.upstream.pid,
                          client_cpu=self.client_cpu, proxy_cpu=self.proxy_cpu)


def binaries() -> tuple[str, str]:
    """(haproxy, wrk), or skip the test saying how to install them."""
    try:
        haproxy = peers.require("haproxy")
        wrk = find_wrk() or peers.require("wrk")
    except peers.PeerUnavailable as exc:
        pytest.skip(str(exc))
    return haproxy, wrk


@contextlib.contextmanager
def rig(tmp_path: Path, fluxgate_config: Callable[[int], str],
        haproxy: Callable[[str, Path, int], peers.PeerProcess],
        before_start: Callable[[GatewayProcess], None] | None = None, *,
        listen: str = "127.0.0.1:0", gateway_env: dict[str, str] | None = None) -> Iterator[Rig]:
    """``fluxgate_config(upstream_port)``: the gateway's routes; ``haproxy(binary, workdir,
    upstream_port)``: the unstarted peer; ``before_start(gateway)``: state to write before
    the gateway starts (API keys); ``listen``: the gateway's ``listen:`` value (a TLS
    listener: bench/support/tls.py); ``gateway_env``: added to the gateway's environment."""
    haproxy_bin, wrk_bin = binaries()
    facts = cpu.machine_facts()
    client_cpus, proxy_cpus, plan = cpu.plan()
    client_cpu = min(client_cpus) if client_cpus else None
    proxy_cpu = min(proxy_cpus) if proxy_cpus else None
    with contextlib.ExitStack() as stack:
        stack.enter_context(cpu.pinned(client_cpus))  # wrk and the upstream inherit it
        upstream = start_fixed_upstream(tmp_path / "upstream")
        stack.callback(upstream.stop)
        (tmp_path / "fluxgate").mkdir()
        gateway = GatewayProcess(tmp_path / "fluxgate", fluxgate_config(upstream.port), workers=1,
                                 env=gateway_env, listen=listen)
        if before_start is not None:
            before_start(gateway)
        stack.callback(gateway.stop)
        gateway.start()
        assert gateway.proc is not None
        fluxgate = proxy_target("fluxgate", gateway.proc.pid, gateway.url, proxy_cpus)
        assert len(fluxgate.proxy_pids) == 2, f"expected master + 1 worker: {fluxgate.proxy_pids}"
        peer = haproxy(haproxy_bin, tmp_path / "haproxy", upstream.port)
        stack.callback(peer.stop)
        peer.start()
        versions = [peers.version(haproxy_bin), peers.version(wrk_bin).split(" Copyright")[0]]
        yield Rig(upstream, gateway, fluxgate, proxy_target("haproxy", peer.pid, peer.url, proxy_cpus),
                  client_cpu, proxy_cpu, plan, versions, facts)


def report(request: Any, benchmark: Any, rig: Rig, *, name: str, header: str,
           comparisons: list[Comparison], notes: list[str], e2e_summary: Callable,
           e2e_comparisons: Callable) -> str:
    """Results file (bench/results/<name>.md unless FLUXGATE_BENCH_RESULTS says otherwise),
    terminal summary, goals table, pytest-benchmark's extra_info; then the checks: every run
    answered, with no transport error and no status >= 400 (wrk's only status count)."""
    text = rounds_run_text(request.config, versions=rig.versions, plan=rig.plan,
                           upstream=rig.upstream.description, comparisons=comparisons, notes=notes,
                           facts=rig.facts)
    path = results_path(name)
    update_results(path, text, header, begin=f"<!-- {name}-runs:begin (newest first) -->",
                   end=f"<!-- {name}-runs:end -->", keep=6)
    e2e_summary(text + f"\n(written to {path})")
    for cmp in comparisons:
        e2e_comparisons(cmp)
    benchmark.extra_info["comparisons"] = {
        c.name: {"per_core_ratio": c.per_core_ratio, "rps_ratio": c.rps_ratio,
                 "p99_ratio": c.p99_ratio, "verdict": c.verdict(), "flags": c.flags(),
                 "generator_peak": c.generator_peak}
        for c in comparisons
    }
    for cmp in comparisons:
        for s in cmp.samples():
            assert s.requests > 0, f"{cmp.name}, {s.label}: no response at all"
            assert s.error_count == 0, f"{cmp.name}, {s.label}: errors {s.errors}"
    return text
