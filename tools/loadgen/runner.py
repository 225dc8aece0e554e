"""run_load(): check the parameters, start the worker processes, merge what they report.

Parent/worker exchange over one multiprocessing Pipe per worker:

    worker: warm up its connections      → ("ready", None)
    parent: once every worker is ready   → ("start", t0)      t0 on the shared time.monotonic()
    parent: on Ctrl-C (optional)         → ("stop", None)     workers stop generating and drain
    worker: when its run is over         → ("result", dict) or ("error", traceback text)

CLOCK_MONOTONIC is one clock for every process of a machine, so all workers start at the same
instant and the run's elapsed time is max(end) - t0.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import resource
import signal
import time
import traceback
from collections.abc import Iterable

from .engine import Engine, WorkerSpec
from .report import merge_results
from .target import parse_target
from .wire import build_requests, read_header_values

__all__ = ["MAX_CONNECTIONS", "MAX_DURATION", "MAX_PROCESSES", "run_load"]

MAX_DURATION = 600.0  # s, hard cap on --duration and --timeout
MAX_CONNECTIONS = 20_000
MAX_PROCESSES = 64
MAX_RATE = 2_000_000.0
_READY_TIMEOUT = 30.0  # s for every worker to start (plus --timeout to open its connections)
_START_DELAY = 0.02  # s between the "start" message and t0, so every worker gets it in time
_RESULT_GRACE = 10.0  # s past duration + timeout to wait for a worker's result


def _share(total: int, parts: int, index: int) -> int:
    return total // parts + (1 if index < total % parts else 0)


def _raise_fd_limit(needed: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        if target < needed:
            raise OSError(f"{needed} file descriptors needed, the hard limit is {hard}")


def _worker_main(spec: WorkerSpec, pipe) -> None:
    """Entry point of a worker process: its own uvloop loop, its share of the load."""
    import uvloop

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C and tells us
    loop = None
    try:
        _raise_fd_limit(spec.connections + 64)
        loop = uvloop.new_event_loop()
        asyncio.set_event_loop(loop)
        engine = Engine(spec, loop)
        loop.run_until_complete(engine.warm_up())
        pipe.send(("ready", None))
        verb, t0 = pipe.recv()
        if verb != "start":
            return

        def on_message() -> None:
            try:
                verb, _ = pipe.recv()
            except EOFError:
                verb = "stop"
            if verb == "stop":
                loop.remove_reader(pipe.fileno())
                engine.stop()

        loop.add_reader(pipe.fileno(), on_message)
        result = loop.run_until_complete(engine.run(t0))
        loop.remove_reader(pipe.fileno())
        pipe.send(("result", result))
    except BaseException:
        pipe.send(("error", traceback.format_exc()))
    finally:
        if loop is not None:
            loop.close()
        pipe.close()


def _receive(pipe, deadline: float, what: str):
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0 or not pipe.poll(min(remaining, 0.5)):
            if remaining <= 0:
                raise RuntimeError(f"loadgen worker did not report {what} in time")
            continue
        try:
            verb, value = pipe.recv()
        except EOFError:
            raise RuntimeError(f"loadgen worker exited before reporting {what}") from None
        if verb == "error":
            raise RuntimeError(f"loadgen worker failed:\n{value}")
        return value


def _validate(connections, duration, rate, requests, processes, timeout) -> None:
    if not 1 <= connections <= MAX_CONNECTIONS:
        raise ValueError(f"connections must be between 1 and {MAX_CONNECTIONS}")
    if not 0 < duration <= MAX_DURATION:
        raise ValueError(f"duration must be > 0 and <= {MAX_DURATION:g} s")
    if rate is not None and not 0 < rate <= MAX_RATE:
        raise ValueError(f"rate must be > 0 and <= {MAX_RATE:g} requests/s")
    if requests is not None and requests < 1:
        raise ValueError("requests must be >= 1")
    if not 1 <= processes <= MAX_PROCESSES:
        raise ValueError(f"processes must be between 1 and {MAX_PROCESSES}")
    if processes > connections:
        raise ValueError("each process needs at least one connection: processes <= connections")
    if not 0 < timeout <= MAX_DURATION:
        raise ValueError(f"timeout must be > 0 and <= {MAX_DURATION:g} s")


def run_load(
    url: str,
    *,
    connections: int = 10,
    duration: float = 10.0,
    rate: float | None = None,
    requests: int | None = None,
    method: str = "GET",
    headers: Iterable[str | tuple[str, str]] = (),
    header_file: str | os.PathLike | None = None,
    header_name: str | None = None,
    header_values: Iterable[str] | None = None,
    body: bytes = b"",
    processes: int = 1,
    timeout: float = 10.0,
    allow_non_loopback: bool = False,
    start_method: str = "spawn",
) -> dict:
    """Load ``url`` over HTTP/1.1 keep-alive and return the report (the ``--json`` object).

    * ``connections``: total connections, split across ``processes`` worker processes.
    * ``duration``: seconds of load (at most 600); ``requests``: optional total request limit;
      the run stops at whichever comes first, then waits for in-flight responses (at most
      ``timeout`` more seconds).
    * ``rate``: None for a closed loop (each connection sends as soon as its previous response
      is complete); requests/s in total for an open loop on a fixed schedule, with latency
      counted from each request's scheduled send time.
    * ``method``, ``headers`` (``"Name: value"`` strings or ``(name, value)`` pairs), ``body``.
    * Rotating header: ``header_name`` plus either ``header_file`` (one value per line) or
      ``header_values``; request *i* carries value ``i mod n``.
    * ``timeout``: seconds for one request (from its send, or its scheduled time in open loop)
      before it counts as an error of kind "timeout".
    * ``allow_non_loopback``: without it a host that is not 127.0.0.0/8, ::1 or localhost raises
      ``TargetRefused`` before any socket is opened.
    * ``start_method``: multiprocessing start method of the workers ("spawn" or "fork"; with
      "spawn" a calling script must guard its entry point with ``if __name__ == "__main__"``).

    The report holds url, method, mode, connections, processes, rate, duration_limit_s,
    requests_limit, header_values, duration_s (measured), requests (responses received), sent,
    rps (responses / duration_s), latency_us {p50, p90, p99, p99_9, max, min, mean},
    status {"code": count}, errors {connect, connection, timeout, parse}, bytes_received,
    connections_opened.  Raises ``ValueError`` for bad parameters, ``TargetRefused`` (a
    ValueError) for a refused host and ``RuntimeError`` when a worker process fails.
    """
    target = parse_target(url, allow_non_loopback=allow_non_loopback)
    _validate(connections, duration, rate, requests, processes, timeout)
    if header_file is not None and header_values is not None:
        raise ValueError("give header_file or header_values, not both")
    if (header_file is not None or header_values is not None) != (header_name is not None):
        raise ValueError("a rotating header needs both a header name and a header file")
    if header_file is not None:
        values = read_header_values(os.fspath(header_file))
    else:
        values = list(header_values) if header_values is not None else []
    payloads = tuple(
        build_requests(
            target, method=method, headers=headers, body=body,
            rotate_name=header_name, rotate_values=values,
        )
    )
    settings = {
        "url": url,
        "method": method.upper(),
        "mode": "closed" if rate is None else "open",
        "connections": connections,
        "processes": processes,
        "rate": rate,
        "duration_limit_s": duration,
        "requests_limit": requests,
        "header_values": len(payloads),
    }
    specs = [
        WorkerSpec(
            index=i,
            processes=processes,
            host=target.connect_host,
            port=target.port,
            payloads=payloads,
            head_only=method.upper() == "HEAD",
            connections=_share(connections, processes, i),
            rate=None if rate is None else rate / processes,
            phase=0.0 if rate is None else i / rate,
            requests=None if requests is None else _share(requests, processes, i),
            duration=duration,
            timeout=timeout,
        )
        for i in range(processes)
    ]
    return merge_results(_run_workers(specs, start_method), settings)


def _run_workers(specs: list[WorkerSpec], start_method: str) -> list[dict]:
    ctx = multiprocessing.get_context(start_method)
    workers = []
    try:
        for spec in specs:
            parent_end, child_end = ctx.Pipe()
            proc = ctx.Process(target=_worker_main, args=(spec, child_end), name=f"loadgen-{spec.index}", daemon=True)
            proc.start()
            child_end.close()
            workers.append((proc, parent_end))
        ready_by = time.monotonic() + _READY_TIMEOUT + specs[0].timeout
        for _, pipe in workers:
            _receive(pipe, ready_by, "readiness")
        t0 = time.monotonic() + _START_DELAY
        for _, pipe in workers:
            pipe.send(("start", t0))
        spec = specs[0]
        results_by = t0 + spec.duration + spec.timeout + _RESULT_GRACE
        results = []
        stopping = False
        for _, pipe in workers:
            while True:
                try:
                    results.append(_receive(pipe, results_by, "its result"))
                    break
                except KeyboardInterrupt:
                    if stopping:
                        raise
                    # First Ctrl-C: stop generating everywhere and report what was measured;
                    # a second one abandons the run.
                    stopping = True
                    for _, other in workers:
                        try:
                            other.send(("stop", None))
                        except OSError:
                            pass
        return results
    finally:
        for proc, pipe in workers:
            proc.join(timeout=2.0)
            if proc.is_alive():
                proc.terminate()
                proc.join(timeout=2.0)
            pipe.close()
