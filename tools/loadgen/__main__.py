"""Command line: ``python -m tools.loadgen URL [options]`` (run from the repository root).

Exit status: 0 when the run completed (whatever the server answered), 2 for bad arguments or a
refused (non-loopback) target, 1 when a worker process failed, 130 when interrupted twice.
"""

from __future__ import annotations

import argparse
import sys

import orjson

from .report import format_summary
from .runner import MAX_DURATION, run_load

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _seconds(text: str) -> float:
    value = float(text)
    if not 0 < value <= MAX_DURATION:
        raise argparse.ArgumentTypeError(f"must be > 0 and <= {MAX_DURATION:g} seconds, got {text}")
    return value


def _rate(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m tools.loadgen",
        description="HTTP/1.1 keep-alive load generator (closed or open loop) for loopback targets.",
    )
    p.add_argument("url", help="http://HOST[:PORT][/PATH]; HOST must be loopback unless --allow-non-loopback")
    load = p.add_argument_group("load")
    load.add_argument("-c", "--connections", type=_positive_int, default=10,
                      help="connections in total (open loop: the most it may open); default 10")
    load.add_argument("-d", "--duration", type=_seconds, default=10.0,
                      help=f"seconds of load, at most {MAX_DURATION:g}; default 10")
    load.add_argument("-r", "--rate", type=_rate, default=None,
                      help="open loop: requests/s in total on a fixed schedule; default: closed loop")
    load.add_argument("-n", "--requests", type=_positive_int, default=None,
                      help="stop after this many requests in total (or at --duration, whichever first)")
    load.add_argument("-p", "--processes", type=_positive_int, default=1,
                      help="worker processes, each with its own event loop; default 1")
    load.add_argument("-t", "--timeout", type=_seconds, default=10.0,
                      help="seconds before a request counts as an error of kind timeout; default 10")
    req = p.add_argument_group("request")
    req.add_argument("-m", "--method", default="GET", help="default GET")
    req.add_argument("-H", "--header", action="append", default=[], metavar="'NAME: VALUE'",
                     help="add a header; repeatable")
    req.add_argument("--header-file", metavar="FILE",
                     help="rotating header values, one per line: request i carries line i mod n")
    req.add_argument("--header-name", metavar="NAME", help="name of the rotating header (with --header-file)")
    body = req.add_mutually_exclusive_group()
    body.add_argument("--body", help="request body (text, sent as UTF-8)")
    body.add_argument("--body-file", metavar="FILE", help="request body read from FILE")
    out = p.add_argument_group("output and safety")
    out.add_argument("--json", action="store_true", help="print one JSON object instead of the summary")
    out.add_argument("--allow-non-loopback", action="store_true",
                     help="allow a target outside 127.0.0.0/8, ::1 and localhost")
    out.add_argument("--start-method", choices=("spawn", "fork", "forkserver"), default="spawn",
                     help="multiprocessing start method of the workers; default spawn")
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if (args.header_file is None) != (args.header_name is None):
        parser.error("--header-file and --header-name go together")
    try:
        if args.body_file is not None:
            with open(args.body_file, "rb") as f:
                body = f.read()
        else:
            body = (args.body or "").encode()
        report = run_load(
            args.url,
            connections=args.connections,
            duration=args.duration,
            rate=args.rate,
            requests=args.requests,
            method=args.method,
            headers=args.header,
            header_file=args.header_file,
            header_name=args.header_name,
            body=body,
            processes=args.processes,
            timeout=args.timeout,
            allow_non_loopback=args.allow_non_loopback,
            start_method=args.start_method,
        )
    except (ValueError, OSError) as exc:  # TargetRefused is a ValueError
        print(f"loadgen: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except RuntimeError as exc:
        print(f"loadgen: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print("loadgen: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    if args.json:
        sys.stdout.buffer.write(orjson.dumps(report) + b"\n")
    else:
        print(format_summary(report))
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
