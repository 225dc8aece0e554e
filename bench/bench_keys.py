"""API keys: the key check and quota consume in _core against stdlib peers, and end to end
(``pytest bench/``; ``-m "not e2e"`` leaves the end-to-end run out).

Micro (pytest-benchmark, medians; the peer is the same decision in plain Python with the
stdlib: ``hmac`` tag check, a dict lookup, ``hmac.compare_digest``, an expiry compare, and a
lock-protected ``multiprocessing.Value`` counter — the stdlib way to be exact across forked
workers). The table holds 10,000 keys; each round takes the next key.

End to end (``-k e2e_api_key``; needs haproxy, wrk and nginx: ``make bench-deps``): wrk →
FluxGate (one worker) api_key route with 10,000 distinct keys, each with a quota (a rotating
X-API-Key header, continuing its rotation from run to run), against wrk → HAProxy
(``nbthread 1``) doing the same job: ``hmac(sha256)`` of the key, a map lookup of its hex
(10,000 entries), a stick-table counter per consumer with a limit, the header removed. Per proxy
core, in paired rounds (bench/support/rounds.py; the rig in bench/support/e2e.py). Results:
bench/results/e2e-api-key.md (untracked) or ``$FLUXGATE_BENCH_RESULTS``, and the goals table
at the end of the session (goal: ≥ 1.2× HAProxy per proxy core).
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
import multiprocessing
import time
from pathlib import Path

import pytest

from bench.bench_memory import CONFIG
from fluxgate._core import KEY_FORMAT, b64url_decode
from fluxgate.auth.keystore import KeySpec, KeyStore
from tests.support.keys import KeyState

N_KEYS = 10_000
SECTION_HEADER = """\
## End-to-end: api_key + quota route — FluxGate vs HAProxy, per proxy core (bench/bench_keys.py)

wrk → proxy → fixed-response upstream, 10,000 keys rotating, each with a quota; HAProxy: hmac,
map, stick-table counter. Method in bench/support/rounds.py.
"""
REASONS = KEY_FORMAT["reasons"]
BIG_QUOTA = (4_000_000_000, 86400)  # never reached: every consume is counted and passes


# ---- micro ----------------------------------------------------------------------------------


class PythonKeyCheck:
    """The peer: the same format and decision in stdlib Python."""

    def __init__(self, signing_key: bytes, records) -> None:
        self.signing_key = signing_key
        self.by_id = {
            b64url_decode(r.key_id.encode()): (r.digest, r.valid_until, r.revoked_at is not None)
            for r in records
        }
        ctx = multiprocessing.get_context("fork")
        self.count = ctx.Value("Q", 0)

    def check(self, key: bytes, now: float, consume: bool = False) -> str:
        if len(key) != 63 or not key.startswith(b"fg_"):
            return "malformed"
        try:
            raw = b64url_decode(key[3:])
        except ValueError:
            return "malformed"
        mac = hmac.digest(self.signing_key, b"fgk1" + raw[:33], hashlib.sha256)
        if not hmac.compare_digest(mac[:12], raw[33:]):
            return "bad_tag"
        found = self.by_id.get(raw[:9])
        if found is None or not hmac.compare_digest(found[0], mac):
            return "unknown_key"
        if found[2]:
            return "revoked"
        if now >= found[1]:
            return "expired"
        if consume:
            with self.count.get_lock():
                self.count.value += 1
        return "ok"


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    state = KeyState(tmp_path_factory.mktemp("bench-keys") / "state", quota_capacity=1 << 15)
    plain, quota = [], []
    store = state.store
    for i in range(N_KEYS):
        plain.append(state.generate(f"plain-{i}")[1].encode())
    for i in range(N_KEYS):
        quota.append(state.generate(f"quota-{i}", quota=BIG_QUOTA)[1].encode())
    _, revoked = state.generate("revoked")
    store.revoke("revoked")
    table = state.table()
    peer = PythonKeyCheck(state.signing_key, store.all())
    forged = [k[:-2] + (b"AA" if k[-2:] != b"AA" else b"BB") for k in plain[:1000]]
    yield {"table": table, "plain": plain, "quota": quota, "revoked": revoked.encode(),
           "forged": forged, "peer": peer, "state": state}
    state.close()


def _cycle(items):
    return itertools.cycle(items).__next__


@pytest.mark.benchmark(group="api key check: valid (10,000 keys)")
def test_check_valid_fluxgate(benchmark, keys, record_impl):
    check, nxt, now = keys["table"].check, _cycle(keys["plain"]), time.time()
    assert benchmark(lambda: check(nxt(), now, b"/api", (), None, "10.0.0.1"))[0] == 0
    record_impl("fluxgate")


@pytest.mark.benchmark(group="api key check: valid (10,000 keys)")
def test_check_valid_python(benchmark, keys, record_impl):
    check, nxt, now = keys["peer"].check, _cycle(keys["plain"]), time.time()
    assert benchmark(lambda: check(nxt(), now)) == "ok"
    record_impl("python (hmac + dict)")


@pytest.mark.benchmark(group="api key check + quota consume (10,000 keys)")
def test_check_quota_fluxgate(benchmark, keys, record_impl):
    check, nxt, now = keys["table"].check, _cycle(keys["quota"]), time.time()
    code, _, limit, remaining, _ = benchmark(lambda: check(nxt(), now, b"/api", (), None, "10.0.0.1"))
    assert code == 0 and limit == BIG_QUOTA[0] and remaining < limit
    record_impl("fluxgate")


@pytest.mark.benchmark(group="api key check + quota consume (10,000 keys)")
def test_check_quota_python(benchmark, keys, record_impl):
    check, nxt, now = keys["peer"].check, _cycle(keys["quota"]), time.time()
    assert benchmark(lambda: check(nxt(), now, True)) == "ok"
    record_impl("python (hmac + dict + multiprocessing.Value)")


@pytest.mark.benchmark(group="api key check: forged (bad tag)")
def test_check_forged_fluxgate(benchmark, keys, record_impl):
    check, nxt, now = keys["table"].check, _cycle(keys["forged"]), time.time()
    assert benchmark(lambda: check(nxt(), now, b"/api", (), None, "10.0.0.1"))[0] == 2
    record_impl("fluxgate")


@pytest.mark.benchmark(group="api key check: forged (bad tag)")
def test_check_forged_python(benchmark, keys, record_impl):
    check, nxt, now = keys["peer"].check, _cycle(keys["forged"]), time.time()
    assert benchmark(lambda: check(nxt(), now)) == "bad_tag"
    record_impl("python (hmac + dict)")


@pytest.mark.benchmark(group="api key check: revoked")
def test_check_revoked_fluxgate(benchmark, keys, record_impl):
    check, key, now = keys["table"].check, keys["revoked"], time.time()
    assert benchmark(check, key, now, b"/api", (), None, "10.0.0.1")[0] == REASONS.index("revoked")
    record_impl("fluxgate")


@pytest.mark.benchmark(group="api key check: revoked")
def test_check_revoked_python(benchmark, keys, record_impl):
    check, key, now = keys["peer"].check, keys["revoked"], time.time()
    assert benchmark(check, key, now) == "revoked"
    record_impl("python (hmac + dict)")


@pytest.mark.benchmark(group="quota consume (one bucket)")
def test_quota_consume_fluxgate(benchmark, keys, record_impl):
    quotas = keys["state"].quotas
    tag, now = quotas.tag(b"bench"), time.time()
    assert benchmark(quotas.consume, tag, BIG_QUOTA[0], 86400, now)[0] == 0
    record_impl("fluxgate")


@pytest.mark.benchmark(group="quota consume (one bucket)")
def test_quota_consume_multiprocessing_value(benchmark, record_impl):
    value = multiprocessing.get_context("fork").Value("Q", 0)
    limit = BIG_QUOTA[0]

    def consume() -> bool:
        with value.get_lock():
            if value.value >= limit:
                return False
            value.value += 1
            return True

    assert benchmark(consume) is True
    record_impl("multiprocessing.Value")


# ---- end to end -----------------------------------------------------------------------------

HAPROXY_SECRET = b"haproxy-bench-secret-0123456789ab"
E2E_NAME = "api_key + quota, 10k keys"


def haproxy_keys_config(port: int, upstream_port: int, map_path: Path) -> str:
    """HAProxy as an API-key gateway: HMAC-SHA256 of the key (its ``hmac`` converter, 2.5+),
    map lookup of the hex digest to the consumer, a stick-table request counter per consumer
    with a limit (never reached, as FluxGate's quota), the key header removed."""
    from bench.support.peers import HAPROXY_COMMON

    secret = __import__("base64").b64encode(HAPROXY_SECRET).decode()
    return HAPROXY_COMMON + f"""\

frontend bench
    bind 127.0.0.1:{port}
    stick-table type string len 64 size 20k expire 1d store http_req_cnt
    http-request set-var(txn.mac) req.hdr(X-API-Key),hmac(sha256,{secret}),hex
    http-request set-var(txn.name) var(txn.mac),map({map_path})
    http-request deny deny_status 401 unless {{ var(txn.name) -m found }}
    http-request track-sc0 var(txn.name)
    http-request deny deny_status 429 if {{ sc_http_req_cnt(0) gt 4000000000 }}
    http-request del-header X-API-Key
    default_backend upstream

backend upstream
    http-reuse safe
    server up1 127.0.0.1:{upstream_port} maxconn 1000
"""


def haproxy_keys(binary: str, workdir: Path, upstream_port: int, keys: list[str]):
    """The HAProxy peer (unstarted) with the map of ``keys``' HMACs."""
    from bench.support.peers import PeerProcess, free_port

    workdir.mkdir(parents=True, exist_ok=True)
    map_path = workdir / "keys.map"
    map_path.write_text("".join(  # HAProxy's hex converter writes upper case
        f"{hmac.new(HAPROXY_SECRET, k.encode(), hashlib.sha256).hexdigest().upper()} consumer-{i}\n"
        for i, k in enumerate(keys)
    ))
    port = free_port()
    (workdir / "haproxy.cfg").write_text(haproxy_keys_config(port, upstream_port, map_path))
    return PeerProcess("haproxy", [binary, "-db", "-f", str(workdir / "haproxy.cfg")], port,
                       workdir / "haproxy.log")


@pytest.mark.e2e
def test_e2e_api_key_route(benchmark, tmp_path, request, e2e_summary, e2e_comparisons):
    from bench.support.e2e import report, rig
    from bench.support.rounds import GOAL_BY_NAME, Comparison, Side
    from fluxgate.auth.keys import load_signing_key

    benchmark.group = "e2e: api_key route"
    keys: list[str] = []
    keys_file = tmp_path / "keys.txt"

    def issue(gateway) -> None:
        """10,000 keys with a quota, issued before the start (as fluxctl would)."""
        signing = load_signing_key(None, str(gateway.state_dir))
        store = KeyStore.open(str(gateway.state_dir))
        store.check_signing_key(signing)
        keys.extend(store.generate(f"consumer-{i}", KeySpec(quota=BIG_QUOTA), expires_in=86400,
                                   signing_key=signing)[1] for i in range(N_KEYS))
        store.close()
        keys_file.write_text("".join(f"{k}\n" for k in keys))

    def peer(binary, workdir, port):
        return haproxy_keys(binary, workdir, port, keys)

    with rig(tmp_path, lambda port: CONFIG.format(workers=1, port=port), peer, issue) as r:
        rotating = {"header_file": keys_file, "header_name": "X-API-Key"}
        cmp = Comparison(E2E_NAME, Side("fluxgate", r.fluxgate, "/keyed/hello", **rotating),
                         Side("haproxy", r.haproxy, "/keyed/hello", **rotating),
                         GOAL_BY_NAME[E2E_NAME])
        benchmark.pedantic(r.run, args=(cmp,), rounds=1, iterations=1)
        report(request, benchmark, r, name="e2e-api-key", header=SECTION_HEADER,
               comparisons=[cmp], notes=[f"{N_KEYS:,} keys rotating, each with a quota of "
                                         f"{BIG_QUOTA[0]:,} per {BIG_QUOTA[1]} s (never reached)"],
               e2e_summary=e2e_summary, e2e_comparisons=e2e_comparisons)
