"""``fluxctl``: the operator's command line.

    fluxctl [--config FILE] [--admin-url URL] [--json] <group> <command> ...

The config is found as ``fluxgate`` finds it: ``--config``, else ``$FLUXGATE_CONFIG``, else
``./fluxgate.yaml``; commands work on that config's ``state_dir`` whether or not the gateway
runs. With ``--admin-url`` (e.g. ``http://127.0.0.1:9901``) they go through a running
gateway's admin API instead; the token comes from ``--admin-token``, else
``$FLUXGATE_ADMIN_TOKEN``, else the config's ``admin.token`` or ``state_dir/admin.token``.
Every command prints a human-readable answer, or with ``--json`` one JSON document. Exit
codes: 0 done, 1 refused (the message says why; an internal error too, without its message
unless ``FLUXCTL_TRACEBACK=1``), 2 bad usage.

Command groups register in ``GROUPS``: each module has ``add_parser(subparsers, common)``.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import sys
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlencode, urlsplit

from fluxgate.cli.fluxgate import (
    add_version_option,
    exit_quietly_on_broken_pipe,
    resolve_config_path,
)
from fluxgate.config import load_config
from fluxgate.config.schema import Config
from fluxgate.errors import ConfigError, FluxGateError

ADMIN_TIMEOUT = 10.0
EXIT_REFUSED = 1
TRACEBACK_ENV = "FLUXCTL_TRACEBACK"  # "1": let an internal error print its traceback


class CommandError(FluxGateError):
    """A command was refused; ``status`` is the admin API's status when it came from there."""

    def __init__(self, message: str, status: int | None = None) -> None:
        self.status = status
        super().__init__(message)


class Context:
    """What a command needs: the config (lazily) and, with --admin-url, an admin client."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.json = bool(getattr(args, "json", False))
        self._config: Config | None = None

    @property
    def config_path(self) -> str:
        return resolve_config_path(getattr(self.args, "config", None))

    def config(self) -> Config:
        if self._config is None:
            path = self.config_path
            if not os.path.exists(path):
                raise CommandError(
                    f"no config file at {path}: pass --config FILE or set FLUXGATE_CONFIG"
                )
            try:
                self._config = load_config(path)
            except ConfigError as exc:  # several errors: one line each, each with the file
                raise CommandError("\n".join(f"{path}: {line}" for line in str(exc).splitlines())
                                   ) from None
        return self._config

    @property
    def remote(self) -> bool:
        return bool(getattr(self.args, "admin_url", None))

    def admin(self) -> AdminClient:
        return AdminClient(self.args.admin_url, self._admin_token())

    def _admin_token(self) -> str:
        token = getattr(self.args, "admin_token", None) or os.environ.get("FLUXGATE_ADMIN_TOKEN")
        if token:
            return token
        config = self.config()
        if config.admin.token:
            return config.admin.token
        path = os.path.join(config.state_dir, "admin.token")
        try:
            with open(path) as f:
                return f.read().strip()
        except OSError as exc:
            raise CommandError(
                f"no admin token: pass --admin-token or set FLUXGATE_ADMIN_TOKEN ({path}: "
                f"{exc.strerror})"
            ) from None


class AdminClient:
    """A JSON client for the admin API (plain HTTP on loopback)."""

    def __init__(self, url: str, token: str) -> None:
        parts = urlsplit(url)
        if parts.scheme != "http" or not parts.hostname:
            raise CommandError(f"--admin-url must be http://host:port, got {url!r}")
        self.host = parts.hostname
        self.port = parts.port or 80
        self.token = token

    def call(self, method: str, path: str, *, query: dict[str, str] | None = None,
             body: dict[str, Any] | None = None) -> Any:
        if query:
            path += "?" + urlencode(query)
        headers = {"Authorization": f"Bearer {self.token}", "Accept": "application/json"}
        payload = None
        if body is not None:
            payload = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        conn = http.client.HTTPConnection(self.host, self.port, timeout=ADMIN_TIMEOUT)
        try:
            conn.request(method, path, body=payload, headers=headers)
            resp = conn.getresponse()
            data = resp.read()
        except OSError as exc:
            raise CommandError(f"admin API at {self.host}:{self.port}: {exc}") from None
        finally:
            conn.close()
        try:
            doc = json.loads(data) if data else {}
        except ValueError:
            doc = {}
        if resp.status >= 400:
            text = doc.get("error_description") or doc.get("error") or resp.reason
            raise CommandError(f"{text} (admin API: {resp.status})", resp.status)
        return doc


def _groups() -> list[Any]:
    from fluxgate.cli import audit_commands, keys, oauth2_commands

    return [keys, audit_commands, oauth2_commands]


def common_options(*, suppress: bool) -> argparse.ArgumentParser:
    """--config, --admin-url, --admin-token and --json, accepted before or after a command."""
    default = argparse.SUPPRESS if suppress else None
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", default=default,
                        help="config file (default: $FLUXGATE_CONFIG or ./fluxgate.yaml)")
    common.add_argument("--admin-url", default=default, metavar="URL",
                        help="use a running gateway's admin API, e.g. http://127.0.0.1:9901")
    common.add_argument("--admin-token", default=default, metavar="TOKEN",
                        help="admin token (default: $FLUXGATE_ADMIN_TOKEN, the config, "
                        "state_dir/admin.token)")
    common.add_argument("--json", action="store_true",
                        default=argparse.SUPPRESS if suppress else False,
                        help="print one JSON document")
    return common


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fluxctl", description="Operate a FluxGate gateway: API keys, routes, auth audits.",
        parents=[common_options(suppress=False)],
    )
    add_version_option(parser)
    sub = parser.add_subparsers(dest="group", required=True, metavar="GROUP")
    common = common_options(suppress=True)
    for group in _groups():
        group.add_parser(sub, common)
    from fluxgate.cli import routes_list

    routes_list.add_command(_subcommands(sub.choices["routes"]), common)
    return parser


def _subcommands(parser: argparse.ArgumentParser) -> Any:
    """The sub-command action of a group's parser, to add a command from another module."""
    return next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))


def fail(ctx: Context | None, message: str) -> int:
    if ctx is not None and ctx.json:
        print(json.dumps({"error": "refused", "error_description": message}))
    else:
        print(f"fluxctl: error: {message}", file=sys.stderr)
    return EXIT_REFUSED


@exit_quietly_on_broken_pipe
def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``fluxctl`` script; returns the exit code."""
    args = build_parser().parse_args(argv)
    ctx = Context(args)
    try:
        return args.func(ctx)
    except CommandError as exc:
        return fail(ctx, str(exc))
    except FluxGateError as exc:  # KeyStoreError, ConfigError: said for the operator
        return fail(ctx, str(exc))
    except BrokenPipeError:
        raise  # stdout went away (`fluxctl ... | head`): exit_quietly_on_broken_pipe
    except OSError as exc:
        return fail(ctx, f"{exc.filename or ''}{': ' if exc.filename else ''}{exc.strerror or exc}")
    except Exception as exc:
        # A bug. Its message and traceback can quote what was passed (http.client's
        # ValueError quotes a header value whole), and fluxctl is passed tokens and keys.
        if os.environ.get(TRACEBACK_ENV) == "1":
            raise
        return fail(ctx, f"internal error ({type(exc).__name__}); the message is left out, "
                         f"as it may quote a credential: rerun with {TRACEBACK_ENV}=1 to see it")


if __name__ == "__main__":
    sys.exit(main())
