"""run_wrk(): closed-loop load through wrk (C, epoll), with loadgen's rotating header and a
report that says what the generator itself cost.

wrk is what bench/ drives its proxy comparisons with: a C generator whose cost per request is
wrk's syscalls and little else, the tool independent checks of FluxGate use, and one whose own
CPU can be read and reported with every run (README.md has the measurements). This module keeps
what bench/ needs from loadgen and adds what wrk lacks:

* the loopback-only rule (``target.parse_target``) and loadgen's header checks;
* a rotating header (``header_file`` + ``header_name``): every distinct request is built
  once by wrk.lua, and ``start`` picks the first value, so consecutive runs continue one
  rotation (``report["next_start"]``) instead of replaying the file's beginning;
* latency percentiles, errors and per-thread counts as JSON (wrk.lua's ``done()``);
* the generator's own CPU over the load only: wrk.lua reports when its file is loaded, the CPU
  read from /proc at that moment is subtracted from the total that ``wait4`` returns.
  ``generator_cores`` near 1.0 per wrk thread means the generator set the pace;
* the generator's read() calls over the load (``syscr`` of /proc/PID/io, read before wrk is
  reaped), per request: about 1 over plain keep-alive, a few over TLS, 10-20 for a new TLS
  connection per request, and ten times that when wrk busy-polls its handshakes (wrk 4.1
  waits for a handshake on a writable socket, so every pass of its event loop retries
  SSL_connect on every handshaking connection and fails reading). Then its CPU fills what
  is spare and is no measure of its work.

wrk runs in the caller's CPU affinity (bench/ pins it), is ended by its own pid when it
overruns ``duration + timeout + 30`` s, and is never started for a refused target.
"""

from __future__ import annotations

import argparse
import json
import os
import selectors
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterable
from pathlib import Path

from .target import parse_target
from .wire import parse_header

__all__ = ["WrkUnavailable", "find_wrk", "parse_output", "run_wrk", "wrk_argv"]

SCRIPT = Path(__file__).with_name("wrk.lua")
READY = "fluxgate-wrk-ready"
JSON_PREFIX = "fluxgate-wrk-json "
MAX_DURATION = 600
_TICK = os.sysconf("SC_CLK_TCK")
_START_TIMEOUT = 60.0  # s to read a large header file and build its requests
_EXIT_GRACE = 30.0  # s past duration + timeout before wrk is ended by its pid


class WrkUnavailable(RuntimeError):
    """wrk is not installed (Debian/Ubuntu: ``apt-get install wrk``; ``make bench-deps``)."""


def find_wrk() -> str | None:
    return shutil.which("wrk")


def wrk_argv(binary: str, url: str, *, connections: int, duration: int, threads: int,
             timeout: float, headers: Iterable[tuple[str, str]] = ()) -> list[str]:
    """The wrk command line (closed loop, our script, fixed headers as ``-H``)."""
    argv = [binary, "-t", str(threads), "-c", str(connections), "-d", f"{duration}s",
            "--timeout", f"{max(1, round(timeout))}s", "-s", str(SCRIPT)]
    for name, value in headers:
        argv += ["-H", f"{name}: {value}"]
    return argv + [url]


def parse_output(stdout: str) -> dict:
    """The JSON object wrk.lua's ``done()`` printed; RuntimeError when it is missing."""
    for line in stdout.splitlines():
        if line.startswith(JSON_PREFIX):
            return json.loads(line[len(JSON_PREFIX):])
    raise RuntimeError(f"wrk printed no result line:\n{stdout[-2000:]}")


def _proc_cpu(pid: int) -> float:
    """user + system seconds of ``pid`` (all threads) so far, from /proc."""
    with open(f"/proc/{pid}/stat") as f:
        stat = f.read()
    fields = stat[stat.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / _TICK


def _proc_reads(pid: int) -> int | None:
    """read()-family syscalls of ``pid`` (all its threads, a zombie's too) so far, from
    /proc/PID/io; None where the kernel does not account them."""
    try:
        with open(f"/proc/{pid}/io") as f:
            for line in f:
                if line.startswith("syscr:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def _read_ready(proc: subprocess.Popen, threads: int, deadline: float) -> tuple[int, int]:
    """Read wrk's stderr until every thread's init() said it is ready; the number of header
    values and of the distinct requests wrk.lua built from them. RuntimeError if wrk exits
    or the deadline passes first. Raw reads of the pipe, so that nothing the selector should
    see sits in a Python buffer."""
    assert proc.stderr is not None
    fd = proc.stderr.fileno()
    buf = b""
    ready, count, requests = 0, 0, 0
    with selectors.DefaultSelector() as sel:
        sel.register(fd, selectors.EVENT_READ)
        while ready < threads:
            if b"\n" not in buf:
                left = deadline - time.monotonic()
                if left <= 0 or not sel.select(left):
                    raise RuntimeError(f"wrk did not start in time: {buf[-500:]!r}")
                chunk = os.read(fd, 65536)
                if not chunk:
                    raise RuntimeError(f"wrk exited before starting: {buf.decode(errors='replace')[-1000:]}")
                buf += chunk
                continue
            line, buf = buf.split(b"\n", 1)
            if line.startswith(READY.encode()):
                ready += 1
                count, requests = (int(word) for word in line.split()[2:4])
    return count, requests


def _reap(pid: int, deadline: float) -> tuple[int, float, int | None]:
    """Wait for ``pid`` until ``deadline`` (then SIGKILL it); (exit code, CPU seconds, read
    syscalls). The reads are taken when it has exited and before it is reaped."""
    while True:
        if os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT | os.WNOHANG) is not None:
            reads = _proc_reads(pid)
            _, status, usage = os.wait4(pid, 0)
            return os.waitstatus_to_exitcode(status), usage.ru_utime + usage.ru_stime, reads
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)  # still our unreaped child: the pid cannot be reused
            _, status, usage = os.wait4(pid, 0)
            raise RuntimeError(f"wrk overran its time and was killed (cpu {usage.ru_utime:.1f} s)")
        time.sleep(0.02)


def run_wrk(
    url: str,
    *,
    connections: int = 32,
    duration: int = 5,
    threads: int = 1,
    headers: Iterable[str | tuple[str, str]] = (),
    header_file: str | os.PathLike | None = None,
    header_name: str | None = None,
    start: int = 0,
    spread: int = 0,
    timeout: float = 5.0,
    binary: str | None = None,
    allow_non_loopback: bool = False,
) -> dict:
    """Closed-loop load on ``url`` through wrk for ``duration`` whole seconds; the report.

    ``headers``: fixed ``"Name: value"`` strings or pairs. ``header_file`` + ``header_name``:
    a rotating header, value ``start + i`` (mod the count) on request *i*. ``spread``: with
    a rotating header, build at least that many distinct requests, each with an
    ``X-Loadgen-Seq`` header, so that the generator's memory does not depend on how many
    values the file holds (wrk.lua). Raises
    ``TargetRefused`` / ``ValueError`` before starting anything for a refused host or bad
    parameters, ``WrkUnavailable`` when wrk is missing, ``RuntimeError`` when wrk fails.

    The report: url, engine, connections, threads, duration_limit_s, header_values,
    duration_s, requests, rps, latency_us {p50, p90, p99, p99_9, max, min, mean},
    errors {connect, read, write, timeout, status} (wrk counts a status > 399 as ``status``),
    bytes_received, sent (rotating header only), next_start, generator_cpu_s (the load only),
    generator_init_cpu_s (loading the file), generator_cores (generator_cpu_s / duration_s),
    generator_reads and generator_reads_per_request (its read() calls over the load; None
    without /proc/PID/io).
    """
    parse_target(url, allow_non_loopback=allow_non_loopback, schemes=("http", "https"))
    if isinstance(duration, float) and not duration.is_integer():
        raise ValueError(f"wrk runs whole seconds, got duration {duration}")
    duration = int(duration)
    if not 1 <= duration <= MAX_DURATION:
        raise ValueError(f"duration must be 1..{MAX_DURATION} s, got {duration}")
    if threads < 1 or connections < threads:
        raise ValueError(f"need 1 <= threads <= connections, got {threads} and {connections}")
    if not 0 < timeout <= MAX_DURATION:
        raise ValueError(f"timeout must be > 0 and <= {MAX_DURATION} s, got {timeout}")
    if (header_file is None) != (header_name is None):
        raise ValueError("header_file and header_name go together")
    if spread and header_file is None:
        raise ValueError("spread needs a rotating header")
    if not 0 <= spread <= 1_000_000:
        raise ValueError(f"spread must be 0..1000000, got {spread}")
    fixed = [parse_header(h) if isinstance(h, str) else (h[0], h[1]) for h in headers]
    if header_name is not None:
        parse_header(f"{header_name}: x")
        if not os.path.isfile(header_file):
            raise ValueError(f"header file {header_file!r} does not exist")
    binary = binary or find_wrk()
    if binary is None:
        raise WrkUnavailable("wrk is not installed (Debian/Ubuntu: apt-get install wrk; "
                             "`make bench-deps` prints the line)")

    env = dict(os.environ, FLUXGATE_WRK_THREADS=str(threads), FLUXGATE_WRK_START=str(max(0, start)))
    env.pop("FLUXGATE_WRK_HEADER_FILE", None)
    env.pop("FLUXGATE_WRK_HEADER_NAME", None)
    env.pop("FLUXGATE_WRK_SPREAD", None)
    if spread:
        env["FLUXGATE_WRK_SPREAD"] = str(spread)
    if header_file is not None:
        env.update(FLUXGATE_WRK_HEADER_FILE=os.fspath(header_file), FLUXGATE_WRK_HEADER_NAME=header_name)
    argv = wrk_argv(binary, url, connections=connections, duration=duration, threads=threads,
                    timeout=timeout, headers=fixed)
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env)
    try:
        count, requests = _read_ready(proc, threads, time.monotonic() + _START_TIMEOUT)
        init_cpu = _proc_cpu(proc.pid)
        init_reads = _proc_reads(proc.pid)
        code, total_cpu, total_reads = _reap(proc.pid, time.monotonic() + duration + timeout + _EXIT_GRACE)
        proc.returncode = code  # reaped by wait4 above, for its rusage
    except BaseException:
        if proc.returncode is None and proc.poll() is None:
            proc.kill()
            proc.wait()
        raise
    finally:
        out = proc.stdout.read().decode(errors="replace") if proc.stdout else ""
        err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()
    if code != 0:
        raise RuntimeError(f"wrk exited with {code}: {err.strip()[-1000:]}")
    raw = parse_output(out)
    seconds = raw["duration_us"] / 1e6
    sent = sum(t["sent"] for t in raw["threads"])
    lat = raw["latency_us"]
    load_cpu = max(0.0, total_cpu - init_cpu)
    reads = None if total_reads is None or init_reads is None else max(0, total_reads - init_reads)
    return {
        "url": url,
        "engine": "wrk",
        "connections": connections,
        "threads": threads,
        "duration_limit_s": duration,
        "header_values": count or 1,
        "duration_s": round(seconds, 6),
        "requests": raw["requests"],
        "rps": round(raw["requests"] / seconds, 3) if seconds > 0 else 0.0,
        "latency_us": {k: lat[k] for k in ("p50", "p90", "p99", "p99_9", "max", "min")}
        | {"mean": round(lat["mean"], 3)},
        "errors": dict(raw["errors"]),
        "bytes_received": raw["bytes"],
        "sent": sent,
        "next_start": (max(0, start) + sent) % requests if requests else 0,
        "generator_cpu_s": round(load_cpu, 3),
        "generator_init_cpu_s": round(init_cpu, 3),
        "generator_cores": round(load_cpu / seconds, 3) if seconds > 0 else 0.0,
        "generator_reads": reads,
        "generator_reads_per_request": (round(reads / raw["requests"], 2)
                                        if reads is not None and raw["requests"] else None),
    }


def format_summary(report: dict) -> str:
    lat = report["latency_us"]
    errors = ", ".join(f"{k}: {n}" for k, n in report["errors"].items() if n) or "none"
    rotating = f", {report['header_values']} rotating header values" if report["header_values"] > 1 else ""
    return "\n".join([
        f"Target    GET {report['url']} (wrk, {report['threads']} thread(s), "
        f"{report['connections']} connections{rotating})",
        f"Done      {report['requests']} responses in {report['duration_s']:.3f} s = {report['rps']:.1f} req/s",
        "Latency   " + "  ".join(f"{k} {lat[k] / 1000:.3f} ms" for k in ("p50", "p90", "p99", "p99_9", "max")),
        f"Errors    {errors}",
        f"Generator {report['generator_cores']:.2f} cores over the load "
        f"({report['generator_cpu_s']:.2f} s CPU; {report['generator_init_cpu_s']:.2f} s loading the header file"
        + (f"; {report['generator_reads_per_request']:g} read() calls per request"
           if report["generator_reads_per_request"] is not None else "") + ")",
    ])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tools.loadgen.wrk",
                                description="Closed-loop load through wrk, with a rotating header "
                                            "and the generator's own CPU.")
    p.add_argument("url")
    p.add_argument("-c", "--connections", type=int, default=32)
    p.add_argument("-d", "--duration", type=int, default=5, help="whole seconds; default 5")
    p.add_argument("-t", "--threads", type=int, default=1, help="wrk threads; default 1")
    p.add_argument("-H", "--header", action="append", default=[], metavar="'NAME: VALUE'")
    p.add_argument("--header-file", metavar="FILE")
    p.add_argument("--header-name", metavar="NAME")
    p.add_argument("--start", type=int, default=0, help="index of the first rotating value")
    p.add_argument("--timeout", type=float, default=5.0)
    p.add_argument("--json", action="store_true")
    p.add_argument("--allow-non-loopback", action="store_true")
    args = p.parse_args(argv)
    try:
        report = run_wrk(args.url, connections=args.connections, duration=args.duration,
                         threads=args.threads, headers=args.header, header_file=args.header_file,
                         header_name=args.header_name, start=args.start, timeout=args.timeout,
                         allow_non_loopback=args.allow_non_loopback)
    except (ValueError, OSError) as exc:  # TargetRefused is a ValueError
        print(f"loadgen.wrk: {exc}", file=sys.stderr)
        return 2
    except RuntimeError as exc:  # WrkUnavailable included
        print(f"loadgen.wrk: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(report) if args.json else format_summary(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
