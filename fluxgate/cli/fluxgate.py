"""The ``fluxgate`` command: ``run``, ``check`` and ``demo``.

The config is found as fluxctl finds it: ``--config``, else ``$FLUXGATE_CONFIG``, else
``./fluxgate.yaml``.
"""

from __future__ import annotations

import argparse
import functools
import logging
import os
import sys
from collections.abc import Callable, Sequence

import fluxgate
from fluxgate.config import load_config
from fluxgate.config.schema import Config
from fluxgate.errors import ConfigError

DEFAULT_CONFIG = "fluxgate.yaml"
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s"


def resolve_config_path(arg: str | None) -> str:
    """``--config`` if given, else ``$FLUXGATE_CONFIG``, else ``./fluxgate.yaml``."""
    return arg or os.environ.get("FLUXGATE_CONFIG") or DEFAULT_CONFIG


def setup_logging(level: int = logging.INFO) -> None:
    """One line per event on stderr, with the process id (master and workers share stderr)."""
    logging.basicConfig(stream=sys.stderr, level=level, format=LOG_FORMAT)


def add_version_option(parser: argparse.ArgumentParser) -> None:
    """``--version``: the program's name and the package version, then exit 0."""
    parser.add_argument("--version", action="version",
                        version=f"%(prog)s {fluxgate.__version__}")


# What a closed stdout raises inside print() is BrokenPipeError (Python ignores SIGPIPE).
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE, as a shell reports a command killed by it


def exit_quietly_on_broken_pipe(main: Callable[..., int]) -> Callable[..., int]:
    """Wrap a CLI entry point so that ``command | head`` ends without a traceback.

    When the reader of stdout goes away, the rest of the output has nowhere to go: stdout
    is pointed at /dev/null (else the interpreter's final flush raises again, printing
    "Exception ignored ... BrokenPipeError") and the exit code is the one a shell gives a
    command killed by SIGPIPE."""

    @functools.wraps(main)
    def wrapper(*args: object, **kwargs: object) -> int:
        try:
            code = main(*args, **kwargs)
            sys.stdout.flush()  # a pipe closed after the last print shows here
            return code
        except BrokenPipeError:
            devnull = os.open(os.devnull, os.O_WRONLY)
            try:
                os.dup2(devnull, sys.stdout.fileno())
            except (OSError, ValueError):  # stdout is no file (tests capture it)
                pass
            finally:
                os.close(devnull)
            return EXIT_BROKEN_PIPE

    return wrapper


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _load_or_report(path: str) -> Config | None:
    """The validated config at ``path``, or None after printing why it is invalid."""
    try:
        return load_config(path)
    except ConfigError as exc:
        for line in str(exc).splitlines():  # several errors: one line each
            print(f"{path}: {line}", file=sys.stderr)
        return None


def cmd_run(args: argparse.Namespace) -> int:
    """Start the master, which forks the workers; returns when the gateway has stopped."""
    from fluxgate.master.arbiter import Arbiter

    path = resolve_config_path(args.config)
    config = _load_or_report(path)
    if config is None:
        return 1
    return Arbiter(config, path, workers_override=args.workers).run()


def cmd_check(args: argparse.Namespace) -> int:
    """Validate the config with the same code ``run`` uses; exit 1 on any error."""
    config = _load_or_report(resolve_config_path(args.config))
    if config is None:
        return 1
    n = len(config.routes)
    print(f"config OK: {n} route{'' if n == 1 else 's'}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser: one sub-parser per subcommand, each bound to its ``cmd_*``."""
    parser = argparse.ArgumentParser(prog="fluxgate", description="FluxGate API gateway")
    add_version_option(parser)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="run the gateway (master + workers)")
    run.add_argument("--config", help="config file (default: $FLUXGATE_CONFIG or ./fluxgate.yaml)")
    run.add_argument("--workers", type=_positive_int, help="number of workers (overrides config)")
    run.set_defaults(func=cmd_run)

    check = sub.add_parser("check", help="validate the config and exit")
    check.add_argument("--config", help="config file (default: $FLUXGATE_CONFIG or ./fluxgate.yaml)")
    check.set_defaults(func=cmd_check)

    from fluxgate.cli.demo import add_parser as add_demo_parser

    add_demo_parser(sub)
    return parser


@exit_quietly_on_broken_pipe
def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``fluxgate`` script; returns the exit code."""
    args = build_parser().parse_args(argv)
    setup_logging()
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
