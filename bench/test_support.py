"""The arithmetic and bookkeeping of the e2e benches, without running any load: medians of
per-round ratios, goals, flags, the summary table, where results go, and that nothing installs
packages. Collected by ``pytest bench/`` (also with ``-m "not e2e"``)."""

from __future__ import annotations

import pytest

from bench.support import peers, results
from bench.support.measure import Target
from bench.support.rounds import CHECK_GOALS, GOAL_BY_NAME, Check, Comparison, Sample, Side


def sample(label: str, rps: float, cores: float, p99: int, *, gen: float = 0.3,
           busy: float = 0.5, others: float = 0.0, reads: float | None = 1.0) -> Sample:
    return Sample(label=label, seconds=5.0, requests=int(rps * 5), rps=rps, p50_us=100,
                  p99_us=p99, errors={}, proxy_cores=cores, generator_cores=gen,
                  client_busy=busy, others_on_client_cpu=0.0, others_on_proxy_cpu=others,
                  others_cores=0.0, generator_reads_per_request=reads)


def comparison(name: str, rounds: list[tuple[Sample, Sample]]) -> Comparison:
    t = Target("x", "http://127.0.0.1:1")
    cmp = Comparison(name, Side("fluxgate", t, "/a"), Side("haproxy", t, "/a"), GOAL_BY_NAME.get(name))
    cmp.rounds = rounds
    return cmp


def test_ratio_is_the_median_of_per_round_per_core_ratios():
    cmp = comparison("public", [
        (sample("fluxgate", 40_000, 1.0, 900), sample("haproxy", 40_000, 1.0, 1000)),  # 1.00
        (sample("fluxgate", 30_000, 0.5, 900), sample("haproxy", 45_000, 1.0, 1000)),  # 1.33
        (sample("fluxgate", 20_000, 1.0, 900), sample("haproxy", 40_000, 1.0, 1000)),  # 0.50
    ])
    assert cmp.per_core_ratios == pytest.approx([1.0, 60_000 / 45_000, 0.5])
    assert cmp.per_core_ratio == pytest.approx(1.0)
    assert cmp.rps_ratio == pytest.approx(30_000 / 45_000)
    assert cmp.p99_ratio == pytest.approx(0.9)
    assert cmp.verdict() == "met" and cmp.flags() == []


def test_p99_goal_can_miss_a_met_throughput_goal():
    rounds = [(sample("fluxgate", 30_000, 1.0, 4000), sample("haproxy", 20_000, 1.0, 2000))] * 3
    cmp = comparison("jwt 100k tokens, 300 B claims", rounds)
    assert cmp.per_core_ratio == pytest.approx(1.5) and cmp.p99_ratio == pytest.approx(2.0)
    assert cmp.verdict() == "missed"


def test_saturated_generator_busy_client_and_noisy_proxy_cpu_are_flagged():
    cmp = comparison("public", [
        (sample("fluxgate", 1, 1.0, 1, gen=0.95), sample("haproxy", 1, 1.0, 1, busy=0.99)),
        (sample("fluxgate", 1, 1.0, 1, others=0.3), sample("haproxy", 1, 1.0, 1)),
    ])
    flags = " | ".join(cmp.flags())
    assert "generator saturated in 1 run(s)" in flags
    assert "client CPU saturated in 1 run(s)" in flags
    assert "proxy's CPU in 1 run(s)" in flags
    lines = results.summary_lines([cmp])
    assert any(line.startswith("| public |") and line.endswith("met ⚑ |") for line in lines)


def test_summary_lists_every_goal_measured_or_not():
    lines = results.summary_lines([])
    text = "\n".join(lines)
    for name in GOAL_BY_NAME:
        assert f"| {name} |" in text
    assert "not measured in this run (`pytest bench/ -k e2e_jwt`)" in text
    assert "not measured in this run (`pytest bench/ -k e2e_tls`)" in text
    for goal in CHECK_GOALS:
        assert f"| {goal.name} |" in text and f"`pytest bench/ -k {goal.bench}`" in text


def test_checks_are_rows_with_their_verdict_and_flags():
    name = CHECK_GOALS[0].name
    missed = results.summary_lines([], [Check(name, False, "2.0x its size", ("loaded",))])
    assert any(line.startswith(f"| {name} |") and line.endswith("missed ⚑: 2.0x its size |")
               for line in missed)
    met = results.summary_lines([], [Check(name, True, "1.0x")])
    assert any(line.endswith("| met: 1.0x |") for line in met)


def test_tls_probe_sees_resumption_and_its_absence(tmp_path):
    """The probe the TLS bench trusts to say "no resumption" must see one when it happens:
    a server that issues tickets (OpenSSL's default) resumes the 2nd and 3rd connection."""
    import socket
    import ssl
    import threading

    from bench.support.tls import probe, tls_files

    files = tls_files(tmp_path)

    def serve(context: ssl.SSLContext) -> int:
        listener = socket.create_server(("127.0.0.1", 0))

        def run() -> None:
            with listener:
                for _ in range(3):
                    conn, _ = listener.accept()
                    with context.wrap_socket(conn, server_side=True) as tls:
                        while b"\r\n\r\n" not in tls.recv(4096):
                            pass
                        tls.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n"
                                    b"Connection: close\r\n\r\n")

        threading.Thread(target=run, daemon=True).start()
        return listener.getsockname()[1]

    for tickets, resumed in ((2, 2), (0, 0)):
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(files.cert, files.key)
        context.num_tickets = tickets
        seen = probe(serve(context), "/")
        assert seen.resumed == resumed, seen
        assert [c[0] for c in seen.connections] == ["TLSv1.3"] * 3


def test_results_go_to_an_untracked_file_unless_told(monkeypatch, tmp_path):
    monkeypatch.delenv(results.RESULTS_ENV, raising=False)
    monkeypatch.setattr(results, "RESULTS_DIR", tmp_path / "results")
    assert results.results_path("e2e-jwt") == tmp_path / "results" / "e2e-jwt.md"
    monkeypatch.setenv(results.RESULTS_ENV, str(tmp_path / "one.md"))
    assert results.results_path("e2e-jwt") == tmp_path / "one.md"
    ignored = (results.Path(__file__).resolve().parents[1] / ".gitignore").read_text()
    assert "bench/results/" in ignored.split()


def test_missing_binaries_are_reported_not_installed(monkeypatch):
    monkeypatch.setattr(peers.shutil, "which", lambda *a, **k: None)
    with pytest.raises(peers.PeerUnavailable, match="make bench-deps"):
        peers.require("haproxy")


def test_memory_of_a_file_mapping_and_of_a_process(tmp_path):
    """``mapping_memory`` finds a mapped file (also once it is replaced: "(deleted)") and
    charges its resident pages; ``process_memory`` reads this process's totals."""
    import mmap
    import os

    from bench.support.memory import mapping_memory, process_memory

    path = tmp_path / "table"
    path.write_bytes(b"\1" * (1 << 20))
    with open(path, "rb") as f:
        mapping = mmap.mmap(f.fileno(), 0, mmap.MAP_SHARED, mmap.PROT_READ)
    try:
        assert sum(mapping[i] for i in range(0, 1 << 20, 4096)) == 256  # every page resident
        seen = mapping_memory(os.getpid(), str(path))
        assert (seen.mappings, seen.size, seen.rss) == (1, 1 << 20, 1 << 20)
        assert 0 < seen.pss <= seen.rss
        os.unlink(path)
        assert mapping_memory(os.getpid(), str(path)).rss == 1 << 20
        assert mapping_memory(os.getpid(), str(tmp_path / "other")).mappings == 0
    finally:
        mapping.close()
    me = process_memory(os.getpid())
    assert 0 < me.pss <= me.rss and me.shared + me.private == me.rss


def test_where_wrk_busy_polls_the_proxy_cpu_decides_the_flags():
    """wrk busy-polling (its read() calls per request) makes its CPU no flag; a proxy short
    of a full core on a quiet CPU is, and noise stays a flag."""
    name = "tls new connection per request, RSA-2048"
    held = comparison(name, [
        (sample("fluxgate", 1000, 0.97, 1, gen=0.95, busy=1.0, reads=210),
         sample("haproxy", 1200, 0.80, 1, gen=0.95, busy=1.0, reads=125)),
    ])
    assert held.generator_polls and len(held.polling_runs) == 2
    flags = " | ".join(held.flags())
    assert "generator saturated" not in flags and "client CPU saturated" not in flags
    assert "proxy below 0.9 core in 1 run(s)" in flags and "lowest 0.80" in flags
    assert "wrk busy-polled in 2 run(s) (up to 210 read() calls" in "\n".join(
        results.comparison_lines(held))
    saturated = comparison(name, [
        (sample("fluxgate", 1000, 0.97, 1, gen=0.95, busy=1.0, reads=210),
         sample("haproxy", 1200, 0.96, 1, gen=0.95, busy=1.0, reads=15)),
    ])
    assert saturated.flags() == []
    assert any("| 0.95 (polls) | met |" in line for line in results.summary_lines([saturated]))
    noisy = comparison(name, [
        (sample("fluxgate", 1000, 0.5, 1, others=0.4, reads=200),
         sample("haproxy", 1200, 0.5, 1, others=0.4, reads=200)),
    ])
    assert [f for f in noisy.flags() if "proxy's CPU in 2 run(s)" in f]
    assert not [f for f in noisy.flags() if "proxy below" in f]


def test_a_wrk_that_waits_for_its_handshakes_is_judged_by_its_cpu():
    """15 reads per new connection is work, not polling: wrk's CPU flags as usual; without a
    read count (no /proc/PID/io) nothing is taken to poll either."""
    for reads in (15, None):
        cmp = comparison("tls new connection per request, RSA-2048", [
            (sample("fluxgate", 1000, 0.97, 1, gen=0.95, reads=reads),
             sample("haproxy", 1200, 0.80, 1, gen=0.5, reads=reads)),
        ])
        assert not cmp.generator_polls
        flags = " | ".join(cmp.flags())
        assert "generator saturated in 1 run(s)" in flags and "proxy below" not in flags
