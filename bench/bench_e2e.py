"""End to end, public route: wrk → FluxGate (1 worker, no access log) against wrk → HAProxy
(``nbthread 1``, a plain reverse proxy), per proxy core, same machine, same upstream.

``pytest bench/ -k e2e_public`` runs it; ``pytest bench/ -m "not e2e"`` skips every e2e
bench. Needs haproxy, wrk and (for the upstream) nginx: ``make bench-deps`` prints the install
line; a missing one skips the test, nothing is installed. The method (paired rounds, per-core
figures from /proc, medians of per-round ratios, the flags) is in bench/support/rounds.py; the
rig in bench/support/e2e.py.

Before the comparison, one run of wrk straight to the upstream shows what the client side
can do without a proxy, and at what CPU for wrk: every proxy row sits under that ceiling.

Results: bench/results/e2e-public.md (untracked) or ``$FLUXGATE_BENCH_RESULTS``, the terminal
summary, and the goals table at the end of the session (goal: ≥ 0.95× HAProxy's req/s per
proxy core). Asserted: every run answered, without a transport error or a status ≥ 400; the
ratios are reported, not asserted.
"""

from __future__ import annotations

import pytest

from bench.support import peers
from bench.support.e2e import PUBLIC_PATH, public_config, report, rig
from bench.support.results import direct_line
from bench.support.rounds import GOAL_BY_NAME, Comparison, Side

pytestmark = pytest.mark.e2e

PATH = PUBLIC_PATH

HEADER = """\
## End-to-end: public route — FluxGate vs HAProxy, per proxy core (bench/bench_e2e.py)

wrk → proxy → fixed-response upstream; method in bench/support/rounds.py. Per side: medians over
rounds of req/s, p50, p99, the proxy tree's CPU (cores) and req/s per proxy core; peaks of
wrk's CPU, of the client CPU's busy share and of what others took on the proxy's CPU.
"""


def test_e2e_public_route(benchmark, tmp_path, request, e2e_summary, e2e_comparisons):
    benchmark.group = "e2e: public route"
    with rig(tmp_path, public_config, peers.haproxy) as r:
        cmp = Comparison("public", Side("fluxgate", r.fluxgate, PATH),
                         Side("haproxy", r.haproxy, PATH), GOAL_BY_NAME["public"])

        def run():
            return r.direct(), r.run(cmp)

        direct, _ = benchmark.pedantic(run, rounds=1, iterations=1)
        report(request, benchmark, r, name="e2e-public", header=HEADER, comparisons=[cmp],
               notes=[direct_line(direct, r.upstream.description)],
               e2e_summary=e2e_summary, e2e_comparisons=e2e_comparisons)
    assert direct.error_count == 0, direct.errors
