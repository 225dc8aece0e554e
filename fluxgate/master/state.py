"""The master's state_dir: one master per directory, and how tools find it.

``gateway.lock`` is flocked for the master's lifetime; ``gateway.json`` publishes the bound
addresses for fluxctl and tests, and goes away at exit with the master's other runtime files.
"""

from __future__ import annotations

import fcntl
import os

import orjson

from fluxgate.files import replace_file

STATE_FILE = "gateway.json"
LOCK_FILE = "gateway.lock"


def lock_state_dir(state_dir: str) -> int:
    """Take the exclusive lock of ``state_dir`` (held while the returned fd stays open).

    Two masters on one state_dir would overwrite each other's gateway.json and metrics; a
    flock, unlike a pid file, cannot go stale when a master is killed.
    """
    fd = os.open(os.path.join(state_dir, LOCK_FILE), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise OSError(f"another gateway is running with state_dir {state_dir}") from None
    return fd


def write_gateway_json(
    state_dir: str, *, listen: tuple[str, int], admin: tuple[str, int], workers: int,
    generation: int,
) -> None:
    """Publish the actual addresses (port 0 resolved) in ``state_dir/gateway.json``, mode
    0600, replaced atomically: fluxctl and tests find the admin API through it."""
    data = orjson.dumps({"pid": os.getpid(), "listen": list(listen), "admin": list(admin),
                         "workers": workers, "generation": generation})
    replace_file(os.path.join(state_dir, STATE_FILE), data)


def remove_state_files(state_dir: str, *others: str) -> None:
    """Remove gateway.json (and ``others``) at exit; the token and the lock file stay."""
    for name in (STATE_FILE, *others):
        try:
            os.unlink(os.path.join(state_dir, name))
        except FileNotFoundError:
            pass
