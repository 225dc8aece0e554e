"""tools/loadgen against a real HTTP server in a subprocess, on 127.0.0.1, port 0.

The server (``TestServer`` below, started as ``python tests/test_loadgen.py --serve``) picks its
behaviour from the request path and counts what it receives per request target, so every test
checks the load generator's figures against the server's own:

    /ok       200, Content-Length           /chunked  200, chunked body
    /mixed    200, every 3rd one chunked    /close    503 + Connection: close, then closes
    /drop     every 2nd request: close without answering
    /garbage  an invalid status line        /slow     answers after ?ms=N milliseconds
    /eof      200 without Content-Length; the body ends when the server closes
    /_stats   JSON: {target: {"count": n, "tokens": [distinct X-Token values]}}
"""

from __future__ import annotations

import asyncio
import collections
import http.client
import json
import math
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


# --------------------------------------------------------------------------------------------
# The server
# --------------------------------------------------------------------------------------------


class TestServer(asyncio.Protocol):
    __test__ = False  # not a pytest class

    stats: dict[str, dict] = collections.defaultdict(
        lambda: {"count": 0, "tokens": set(), "seqs": set(), "body_bytes": 0})
    mixed_count = 0
    drop_count = 0

    def __init__(self) -> None:
        import httptools

        self.parser = httptools.HttpRequestParser(self)
        self.transport = None
        self.url = b""
        self.token = None
        self.seq = None
        self.body_bytes = 0

    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        import httptools

        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.transport.close()

    def on_message_begin(self) -> None:
        self.url = b""
        self.token = None
        self.seq = None
        self.body_bytes = 0

    def on_body(self, body: bytes) -> None:
        self.body_bytes += len(body)

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        if name.lower() == b"x-token":
            self.token = value.decode("latin-1")
        elif name.lower() == b"x-loadgen-seq":
            self.seq = value.decode("latin-1")

    def on_message_complete(self) -> None:
        target = self.url.decode("latin-1")
        path = urlsplit(target).path
        if path == "/_stats":
            body = json.dumps(
                {k: {**v, "tokens": sorted(v["tokens"]), "seqs": sorted(v["seqs"])}
                 for k, v in self.stats.items()}
            ).encode()
            self._reply(b"200 OK", body)
            return
        entry = self.stats[target]
        entry["count"] += 1
        entry["body_bytes"] += self.body_bytes
        if self.token is not None:
            entry["tokens"].add(self.token)
        if self.seq is not None:
            entry["seqs"].add(f"{self.seq} {self.token}")
        cls = type(self)
        if path == "/ok":
            self._reply(b"200 OK", b"hello")
        elif path == "/chunked":
            self._chunked()
        elif path == "/mixed":
            cls.mixed_count += 1
            if cls.mixed_count % 3 == 0:
                self._chunked()
            else:
                self._reply(b"200 OK", b"hello")
        elif path == "/close":
            self.transport.write(
                b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 4\r\nConnection: close\r\n\r\nbusy"
            )
            self.transport.close()
        elif path == "/drop":
            cls.drop_count += 1
            if cls.drop_count % 2 == 0:
                self.transport.close()
            else:
                self._reply(b"200 OK", b"ok")
        elif path == "/garbage":
            self.transport.write(b"NOT HTTP AT ALL\r\n\r\n")
        elif path == "/slow":
            ms = int(parse_qs(urlsplit(target).query).get("ms", ["1000"])[0])
            asyncio.get_running_loop().call_later(ms / 1000, self._reply, b"200 OK", b"late")
        elif path == "/eof":
            self.transport.write(b"HTTP/1.1 200 OK\r\n\r\nuntil-eof")
            self.transport.close()
        else:
            self._reply(b"404 Not Found", b"")

    def _reply(self, status: bytes, body: bytes) -> None:
        if not self.transport.is_closing():
            head = b"HTTP/1.1 " + status + b"\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n"
            # RFC 9110 §9.3.2: a response to HEAD carries no content.
            self.transport.write(head if self.parser.get_method() == b"HEAD" else head + body)

    def _chunked(self) -> None:
        self.transport.write(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
        )


def serve() -> None:
    import uvloop

    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(TestServer, "127.0.0.1", 0, backlog=1024)
        print(server.sockets[0].getsockname()[1], flush=True)
        stop = loop.create_future()
        loop.add_signal_handler(signal.SIGTERM, stop.set_result, None)
        if stat.S_ISFIFO(os.fstat(sys.stdin.fileno()).st_mode):
            # Never outlive the test run: the parent's end of our stdin closes when it goes away.
            loop.add_reader(sys.stdin.fileno(), lambda: stop.done() or stop.set_result(None))
        await asyncio.wait_for(stop, 600)
        server.close()

    uvloop.run(main())



# --------------------------------------------------------------------------------------------
# Fixtures and helpers
# --------------------------------------------------------------------------------------------

from tests.support.gateway import free_port  # noqa: E402
from tools.loadgen import Histogram, TargetRefused, run_load  # noqa: E402
from tools.loadgen.target import parse_target  # noqa: E402

REPORT_KEYS = {
    "url", "method", "mode", "connections", "processes", "rate", "duration_limit_s",
    "requests_limit", "header_values", "duration_s", "requests", "sent", "rps", "latency_us",
    "status", "errors", "bytes_received", "connections_opened",
}
LATENCY_KEYS = {"p50", "p90", "p99", "p99_9", "max", "min", "mean"}
ERROR_KINDS = {"connect", "connection", "timeout", "parse"}


@pytest.fixture(scope="module")
def server():
    proc = subprocess.Popen(
        [sys.executable, __file__, "--serve"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=ROOT,
    )
    try:
        line = proc.stdout.readline()
        assert line.strip().isdigit(), f"test server did not start: {line!r}"
        yield f"http://127.0.0.1:{int(line)}"
    finally:
        proc.stdin.close()
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


def server_stats(base: str) -> dict:
    parts = urlsplit(base)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=5)
    try:
        conn.request("GET", "/_stats")
        return json.loads(conn.getresponse().read())
    finally:
        conn.close()


def received(base: str, target: str) -> dict:
    return server_stats(base).get(target, {"count": 0, "tokens": [], "body_bytes": 0})


def accounted(report: dict) -> int:
    """Every request sent ends as a response or an error of a per-request kind."""
    errors = report["errors"]
    return report["requests"] + errors["connection"] + errors["timeout"] + errors["parse"]


# --------------------------------------------------------------------------------------------
# Histogram
# --------------------------------------------------------------------------------------------


def test_histogram_percentiles_within_one_percent():
    import random

    rng = random.Random(7)
    values = [int(rng.lognormvariate(7, 1.5)) for _ in range(20000)] + [0, 1, 255, 256, 10**9]
    hist = Histogram()
    for v in values:
        hist.record(v)
    values.sort()
    for p in (50, 90, 99, 99.9):
        exact = values[max(0, math.ceil(len(values) * p / 100) - 1)]
        got = hist.percentile(p)
        assert exact <= got <= exact * 1.01 + 1, (p, exact, got)
    assert hist.max == 10**9 and hist.min == 0 and hist.count == len(values)
    assert hist.mean() == pytest.approx(sum(values) / len(values))


def test_histogram_merge_equals_recording_everything():
    a, b, both = Histogram(), Histogram(), Histogram()
    for v in range(0, 50000, 7):
        (a if v % 2 else b).record(v)
        both.record(v)
    merged = Histogram.from_state(a.to_state())
    merged.merge(Histogram.from_state(b.to_state()))
    assert merged.counts == both.counts
    assert (merged.count, merged.total, merged.min, merged.max) == (both.count, both.total, both.min, both.max)
    assert merged.percentile(99) == both.percentile(99)


# --------------------------------------------------------------------------------------------
# Target checks: nothing is ever sent to a non-loopback address
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("url, connect_host", [
    ("http://127.0.0.1:8080/x?y=1", "127.0.0.1"),
    ("http://127.200.3.4/", "127.200.3.4"),
    ("http://[::1]:81/", "::1"),
    ("http://localhost:9/", "127.0.0.1"),
    ("http://LocalHost./", "127.0.0.1"),
    ("http://[::ffff:127.0.0.1]/", "127.0.0.1"),
])
def test_loopback_targets_accepted(url, connect_host):
    assert parse_target(url).connect_host == connect_host


@pytest.mark.parametrize("url", [
    "http://10.1.2.3/", "http://192.168.0.1:80/", "http://0.0.0.0:8080/", "http://example.com/",
    "http://127.1/", "http://[::ffff:10.1.2.3]/", "http://[fe80::1]/", "http://localhost.example.com/",
])
def test_non_loopback_targets_refused(url):
    with pytest.raises(TargetRefused, match="not a loopback address"):
        parse_target(url)


def test_https_only_where_the_engine_speaks_it():
    # The Python engine speaks plain HTTP: an https URL is refused, not sent in clear.
    with pytest.raises(ValueError, match="only http://"):
        parse_target("https://127.0.0.1:8443/")
    for url in ("ftp://127.0.0.1/", "ws://127.0.0.1/", "127.0.0.1:80/"):
        with pytest.raises(ValueError, match="unsupported URL scheme"):
            parse_target(url, schemes=("http", "https"))
    target = parse_target("https://localhost/x", schemes=("http", "https"))
    assert (target.port, target.host_header) == (443, "localhost")
    assert parse_target("https://127.0.0.1:80/", schemes=("https",)).host_header == "127.0.0.1:80"
    with pytest.raises(TargetRefused):
        parse_target("https://10.1.2.3/", schemes=("https",))


def test_non_loopback_refused_before_any_socket_or_process(monkeypatch):
    import multiprocessing
    import socket

    def forbidden(*args, **kwargs):
        raise AssertionError("a socket, a name lookup or a process was attempted")

    monkeypatch.setattr(socket, "socket", forbidden)
    monkeypatch.setattr(socket, "getaddrinfo", forbidden)
    monkeypatch.setattr(socket, "create_connection", forbidden)
    monkeypatch.setattr(multiprocessing, "get_context", forbidden)
    for url in ("http://10.1.2.3:8080/", "http://example.com/"):
        with pytest.raises(TargetRefused):
            run_load(url, duration=1)
    # Allowed explicitly, the name is still not resolved by the check itself.
    assert parse_target("http://example.com/", allow_non_loopback=True).connect_host == "example.com"


def test_cli_refuses_non_loopback_with_exit_code_2():
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "tools.loadgen", "http://10.1.2.3:8080/", "-d", "5", "--json"],
        cwd=ROOT, capture_output=True, text=True, timeout=20,
    )
    assert proc.returncode == 2
    assert "not a loopback address" in proc.stderr and "--allow-non-loopback" in proc.stderr
    assert proc.stdout == ""
    assert time.monotonic() - started < 5  # refused up front, not after a run


def test_bad_parameters_rejected():
    url = "http://127.0.0.1:9/"
    for kwargs in (
        {"connections": 0}, {"duration": 0}, {"duration": 601}, {"processes": 3, "connections": 2},
        {"rate": 0}, {"requests": 0}, {"timeout": 0}, {"header_name": "X-Token"},
        {"headers": ["Bad Name: x"]}, {"headers": ["X-A: a\r\nX-B: b"]}, {"headers": ["Content-Length: 5"]},
    ):
        with pytest.raises(ValueError):
            run_load(url, **kwargs)
    with pytest.raises(ValueError, match="only http://"):
        run_load("https://127.0.0.1/")


# --------------------------------------------------------------------------------------------
# Load against the test server
# --------------------------------------------------------------------------------------------


def test_closed_loop_counts_match_server(server):
    report = run_load(f"{server}/ok?t=closed", connections=4, duration=0.6)
    seen = received(server, "/ok?t=closed")["count"]
    assert report["requests"] > 200
    assert report["requests"] == report["sent"] == seen
    assert report["status"] == {"200": seen}
    assert report["errors"] == dict.fromkeys(ERROR_KINDS, 0)
    assert report["connections_opened"] == 4
    assert report["rps"] == pytest.approx(report["requests"] / report["duration_s"], rel=1e-3)
    assert 0.5 < report["duration_s"] < 1.5
    lat = report["latency_us"]
    assert 0 < lat["min"] <= lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["p99_9"] <= lat["max"]


def test_request_limit_is_exact_and_ends_the_run(server):
    report = run_load(f"{server}/ok?t=limit", connections=3, duration=20, requests=500)
    assert report["requests"] == report["sent"] == 500
    assert received(server, "/ok?t=limit")["count"] == 500
    assert report["duration_s"] < 5


@pytest.mark.parametrize("path", ["/chunked", "/mixed", "/eof"])
def test_chunked_and_eof_delimited_responses(server, path):
    target = f"{path}?t=framing"
    report = run_load(f"{server}{target}", connections=2, duration=0.3)
    seen = received(server, target)["count"]
    assert report["requests"] > 20
    assert report["requests"] == report["sent"] == seen
    assert report["status"] == {"200": seen}
    assert report["errors"] == dict.fromkeys(ERROR_KINDS, 0)
    if path == "/eof":  # the body ends with the connection, so every response needs a new one
        assert report["connections_opened"] >= seen


def test_head_and_post_with_body(server):
    head = run_load(f"{server}/ok?t=head", method="HEAD", connections=2, requests=300, duration=5)
    assert head["status"] == {"200": 300} and head["errors"]["parse"] == 0
    body = b'{"amount": 42}'
    post = run_load(f"{server}/ok?t=post", method="POST", body=body, requests=50, connections=2, duration=5)
    assert post["status"] == {"200": 50}
    assert received(server, "/ok?t=post")["body_bytes"] == 50 * len(body)


@pytest.mark.parametrize("processes", [1, 2])
def test_open_loop_sends_rate_times_duration(server, processes):
    target = f"/ok?t=open{processes}"
    report = run_load(f"{server}{target}", connections=4, duration=1.0, rate=400, processes=processes)
    seen = received(server, target)["count"]
    assert report["mode"] == "open" and report["rate"] == 400 and report["processes"] == processes
    assert seen == 400
    assert report["requests"] == report["sent"] == seen
    assert report["rps"] == pytest.approx(400, rel=0.1)
    assert report["connections_opened"] <= 4


def test_open_loop_latency_counts_from_the_intended_time(server):
    # One connection, a 50 ms server and 50 requests/s due every 20 ms: requests queue up, so
    # the k-th is answered around (k+1)*50 ms while due at k*20 ms.  Measured from the send, every
    # latency would be ~50 ms; measured from the schedule, the tail grows to ~450 ms.
    report = run_load(f"{server}/slow?ms=50&t=co", connections=1, duration=0.3, rate=50, timeout=5)
    assert report["requests"] == 15
    lat = report["latency_us"]
    assert lat["min"] >= 45_000
    assert lat["p50"] >= 150_000
    assert lat["max"] >= 350_000
    assert report["rps"] < 25  # 15 responses over ~0.75 s, not the scheduled 50/s


def test_open_loop_opens_connections_on_demand(server):
    report = run_load(f"{server}/slow?ms=100&t=grow", connections=8, duration=0.3, rate=100, timeout=5)
    # A request every 10 ms, 100 ms each: 10 would be in flight at once, so all 8 connections are
    # opened (starting from 1) and never more; the rest wait for a free one.
    assert report["connections_opened"] == 8
    assert report["requests"] == report["sent"] == 30
    assert report["latency_us"]["max"] > 120_000  # the waiting counts


def test_rotating_headers_reach_server_with_every_value(server, tmp_path):
    tokens = [f"tok-{i:04d}" for i in range(250)]
    header_file = tmp_path / "tokens.txt"
    header_file.write_text("\n".join(tokens) + "\n\n")
    report = run_load(
        f"{server}/ok?t=rotate", connections=4, processes=2, requests=250, duration=10,
        header_file=header_file, header_name="X-Token", headers=["X-Fixed: 1"],
    )
    assert report["header_values"] == 250
    assert report["requests"] == 250
    seen = received(server, "/ok?t=rotate")
    assert seen["count"] == 250
    assert seen["tokens"] == tokens  # one request per value: no value skipped or repeated


def test_multi_process_results_are_merged(server):
    report = run_load(f"{server}/ok?t=multi", connections=4, processes=2, duration=0.5)
    seen = received(server, "/ok?t=multi")["count"]
    assert report["processes"] == 2
    assert report["connections_opened"] == 4
    assert report["requests"] == report["sent"] == seen > 200
    assert report["status"] == {"200": seen}
    assert report["duration_s"] < 1.5


# --------------------------------------------------------------------------------------------
# Errors, by kind
# --------------------------------------------------------------------------------------------


def test_connection_close_and_503_are_responses_not_errors(server):
    report = run_load(f"{server}/close?t=e", connections=2, duration=0.3)
    seen = received(server, "/close?t=e")["count"]
    assert report["status"] == {"503": seen} and seen > 20
    assert report["errors"] == dict.fromkeys(ERROR_KINDS, 0)
    assert report["connections_opened"] >= seen  # one connection per request, reconnecting


def test_dropped_connections_count_as_connection_errors(server):
    report = run_load(f"{server}/drop?t=e", connections=2, duration=0.3)
    seen = received(server, "/drop?t=e")["count"]
    assert report["sent"] == seen == accounted(report)
    assert report["errors"]["connection"] > 10
    assert report["status"]["200"] > 10
    assert abs(report["errors"]["connection"] - report["status"]["200"]) <= 2  # every 2nd dropped


def test_invalid_responses_count_as_parse_errors(server):
    report = run_load(f"{server}/garbage?t=e", connections=2, duration=0.3)
    assert report["requests"] == 0
    assert report["errors"]["parse"] == report["sent"] == received(server, "/garbage?t=e")["count"] > 5


def test_slow_responses_count_as_timeouts(server):
    report = run_load(f"{server}/slow?ms=3000&t=e", connections=3, duration=0.3, timeout=0.2)
    assert report["requests"] == 0
    assert report["errors"]["timeout"] == report["sent"] >= 3
    assert report["duration_s"] < 1.5  # timed-out requests do not hold the run


def test_refused_connections_count_as_connect_errors():
    report = run_load(f"http://127.0.0.1:{free_port()}/", connections=2, duration=0.3)
    assert report["sent"] == 0 and report["requests"] == 0
    assert report["errors"]["connect"] >= 2
    assert report["duration_s"] < 1.0


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------


def test_cli_json_output_shape(server):
    proc = subprocess.run(
        [sys.executable, "-m", "tools.loadgen", f"{server}/mixed?t=cli", "-c", "2", "-d", "0.3",
         "-H", "X-Token: cli", "--json"],
        cwd=ROOT, capture_output=True, text=True, timeout=20,
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert set(report) == REPORT_KEYS
    assert set(report["latency_us"]) == LATENCY_KEYS
    assert set(report["errors"]) == ERROR_KINDS
    assert report["url"] == f"{server}/mixed?t=cli" and report["rate"] is None
    seen = received(server, "/mixed?t=cli")
    assert report["requests"] == seen["count"] > 20 and seen["tokens"] == ["cli"]
    assert report["status"] == {"200": seen["count"]}
    assert all(isinstance(v, int) for k, v in report["latency_us"].items() if k != "mean")


def test_cli_human_summary(server):
    proc = subprocess.run(
        [sys.executable, "-m", "tools.loadgen", f"{server}/ok?t=human", "-c", "1", "-n", "100", "-r", "1000"],
        cwd=ROOT, capture_output=True, text=True, timeout=20,
    )
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "open loop at 1000 req/s" in out and "100 responses" in out
    assert "p99.9" in out and "Status    200: 100" in out and "Errors    none" in out


# --------------------------------------------------------------------------------------------
# wrk driver (tools/loadgen/wrk.py + wrk.lua): the protocol with a stand-in binary always, the
# real wrk only when installed (tests/ must not need it)
# --------------------------------------------------------------------------------------------

from tools.loadgen import wrk as wrk_driver  # noqa: E402

WRK_REPORT_KEYS = {
    "url", "engine", "connections", "threads", "duration_limit_s", "header_values", "duration_s",
    "requests", "rps", "latency_us", "errors", "bytes_received", "sent", "next_start",
    "generator_cpu_s", "generator_init_cpu_s", "generator_cores", "generator_reads",
    "generator_reads_per_request",
}
needs_wrk = pytest.mark.skipif(wrk_driver.find_wrk() is None, reason="wrk is not installed")


def fake_wrk(tmp_path: Path, *, ready: bool = True, code: int = 0, sent: int = 7) -> str:
    """A stand-in for wrk speaking wrk.lua's protocol: the ready line on stderr (with the
    number of header values the script would have read), the result line on stdout."""
    result = {
        "duration_us": 1_000_000, "requests": 1000, "bytes": 5000,
        "errors": {"connect": 0, "read": 0, "write": 0, "status": 2, "timeout": 0},
        "latency_us": {"p50": 100, "p90": 200, "p99": 300, "p99_9": 400, "min": 50, "max": 500,
                       "mean": 120.5, "stdev": 3.0},
        "threads": [{"id": 0, "sent": sent}],
    }
    path = tmp_path / "wrk"
    path.write_text(
        f"#!{sys.executable}\n"
        "import os, sys, json\n"
        "f = os.environ.get('FLUXGATE_WRK_HEADER_FILE')\n"
        "n = sum(1 for line in open(f) if line.strip()) if f else 0\n"
        "reqs = max(n, int(os.environ.get('FLUXGATE_WRK_SPREAD', '0'))) if n else 0\n"
        f"if {ready!r}:\n"
        "    sys.stderr.write(f'fluxgate-wrk-ready 0 {n} {reqs}\\n'); sys.stderr.flush()\n"
        "print('Running 1s test @', sys.argv[-1])\n"
        f"print('fluxgate-wrk-json ' + json.dumps({result!r}))\n"
        f"sys.exit({code})\n"
    )
    path.chmod(0o755)
    return str(path)


def test_wrk_argv_and_script_options():
    argv = wrk_driver.wrk_argv("/usr/bin/wrk", "http://127.0.0.1:1/x", connections=32, duration=5,
                               threads=1, timeout=5.0, headers=[("X-A", "1")])
    assert argv == ["/usr/bin/wrk", "-t", "1", "-c", "32", "-d", "5s", "--timeout", "5s", "-s",
                    str(wrk_driver.SCRIPT), "-H", "X-A: 1", "http://127.0.0.1:1/x"]
    assert wrk_driver.SCRIPT.is_file()


def test_wrk_output_parsed_or_refused():
    line = 'noise\nfluxgate-wrk-json {"requests": 3}\n'
    assert wrk_driver.parse_output(line) == {"requests": 3}
    with pytest.raises(RuntimeError, match="no result line"):
        wrk_driver.parse_output("Running 1s test\n")


def test_wrk_refuses_bad_targets_and_parameters_before_starting(monkeypatch, tmp_path):
    def no_process(*a, **k):
        raise AssertionError("a process was started")

    monkeypatch.setattr(subprocess, "Popen", no_process)
    binary = fake_wrk(tmp_path)
    for url in ("http://10.1.2.3/x", "https://10.1.2.3/x", "https://example.com/x"):
        with pytest.raises(TargetRefused):
            wrk_driver.run_wrk(url, binary=binary)
    for kwargs in ({"duration": 1.5}, {"duration": 0}, {"threads": 4, "connections": 2},
                   {"header_name": "X-Token"}, {"header_file": tmp_path / "missing", "header_name": "X"},
                   {"headers": ["no colon"]}, {"timeout": 0}):
        with pytest.raises(ValueError):
            wrk_driver.run_wrk("http://127.0.0.1:1/x", binary=binary, **kwargs)


def test_wrk_missing_is_reported_with_the_install_hint(monkeypatch):
    monkeypatch.setattr(wrk_driver, "find_wrk", lambda: None)
    with pytest.raises(wrk_driver.WrkUnavailable, match="bench-deps"):
        wrk_driver.run_wrk("http://127.0.0.1:1/x")


def test_wrk_report_from_the_scripts_protocol(tmp_path):
    values = tmp_path / "values.txt"
    values.write_text("a\n\nb\nc\n")  # blank lines do not count
    report = wrk_driver.run_wrk("http://127.0.0.1:1/x", duration=1, binary=fake_wrk(tmp_path, sent=7),
                                header_file=values, header_name="X-Token", start=1)
    assert set(report) == WRK_REPORT_KEYS
    assert report["header_values"] == 3 and report["sent"] == 7
    assert report["next_start"] == (1 + 7) % 3  # the next run continues the rotation
    assert report["requests"] == 1000 and report["rps"] == 1000.0
    assert report["errors"]["status"] == 2
    assert report["latency_us"]["p99"] == 300 and "stdev" not in report["latency_us"]
    assert report["generator_cores"] >= 0 and report["generator_init_cpu_s"] >= 0


def test_wrk_failures_are_errors(tmp_path):
    with pytest.raises(RuntimeError, match="exited with 3"):
        wrk_driver.run_wrk("http://127.0.0.1:1/x", duration=1, binary=fake_wrk(tmp_path, code=3))
    with pytest.raises(RuntimeError, match="before starting"):
        wrk_driver.run_wrk("http://127.0.0.1:1/x", duration=1, binary=fake_wrk(tmp_path, ready=False))


@needs_wrk
def test_wrk_rotating_header_reaches_server_with_every_value(server, tmp_path):
    tokens = [f"wrk-{i:03d}" for i in range(40)]
    header_file = tmp_path / "tokens.txt"
    header_file.write_text("\n".join(tokens) + "\n")
    report = wrk_driver.run_wrk(f"{server}/ok?t=wrk-rotate", connections=4, duration=1,
                                header_file=header_file, header_name="X-Token", start=5,
                                headers=["X-Fixed: 1"])
    seen = received(server, "/ok?t=wrk-rotate")
    assert report["requests"] > 40 and sum(report["errors"].values()) == 0
    assert seen["tokens"] == tokens and seen["count"] >= report["requests"]
    assert report["next_start"] == (5 + report["sent"]) % 40
    assert report["sent"] >= report["requests"]
    lat = report["latency_us"]
    assert 0 < lat["min"] <= lat["p50"] <= lat["p99"] <= lat["max"]
    assert 0 < report["generator_cores"] <= 1.05  # one wrk thread
    # plain keep-alive: about one read() per response (the header file is read before the load)
    assert 0.5 <= report["generator_reads_per_request"] <= 3


@needs_wrk
def test_wrk_spread_builds_distinct_requests_over_few_values(server, tmp_path):
    tokens = ["a", "b", "c"]
    header_file = tmp_path / "tokens.txt"
    header_file.write_text("\n".join(tokens) + "\n")
    report = wrk_driver.run_wrk(f"{server}/ok?t=wrk-spread", connections=2, duration=1,
                                header_file=header_file, header_name="X-Token", spread=50)
    seen = received(server, "/ok?t=wrk-spread")
    assert report["requests"] > 50 and sum(report["errors"].values()) == 0
    assert report["header_values"] == 3 and report["next_start"] == report["sent"] % 50
    # request i (from 1) carries value i - 1 mod 3 and its own sequence number
    assert seen["seqs"] == sorted(f"{i:06d} {tokens[(i - 1) % 3]}" for i in range(1, 51))
    with pytest.raises(ValueError, match="rotating header"):
        wrk_driver.run_wrk(f"{server}/ok", duration=1, spread=10)


@needs_wrk
def test_wrk_static_request_and_error_statuses(server):
    report = wrk_driver.run_wrk(f"{server}/close?t=wrk", connections=2, duration=1)
    assert report["header_values"] == 1 and report["sent"] == 0  # wrk's static request path
    assert report["requests"] > 0 and report["errors"]["status"] == report["requests"]


def test_wrk_cli_refuses_non_loopback():
    proc = subprocess.run([sys.executable, "-m", "tools.loadgen.wrk", "http://10.0.0.1/x"],
                          cwd=ROOT, capture_output=True, text=True, timeout=20)
    assert proc.returncode == 2 and "allow-non-loopback" in proc.stderr


if __name__ == "__main__" and sys.argv[1:] == ["--serve"]:
    serve()
    sys.exit(0)
