"""Forking a worker from the master's running uvloop loop.

The child shares the master's epoll fd, wakeup fd and signal handlers until it lets go of
them; ``fork_worker`` makes that hand-over safe and the child never returns into the master's
code: it runs ``run_worker`` and ``os._exit``s with its code.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from collections.abc import Iterable

from fluxgate.worker import worker as worker_module
from fluxgate.worker.worker import EXIT_BOOT_ERROR, WorkerSpec

log = logging.getLogger("fluxgate.master")


def fork_worker(
    spec: WorkerSpec, master_fds: list[int], handled_signals: Iterable[signal.Signals]
) -> int:
    """Fork a worker for ``spec``; returns its pid in the master (raises OSError if the fork
    fails). In the child, ``master_fds`` are dropped and ``handled_signals`` reset to default
    before the worker runs."""
    handled = tuple(handled_signals)
    # Blocked across fork: a signal sent to the new child before it drops the master's
    # wakeup fd would otherwise be written into the master's loop as the master's own.
    old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, handled)
    try:
        pid = os.fork()
        if pid == 0:
            _child_main(spec, master_fds, old_mask, handled)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
    return pid


def _child_main(
    spec: WorkerSpec, master_fds: list[int], mask: set[int], handled: tuple[signal.Signals, ...]
) -> None:
    code = EXIT_BOOT_ERROR
    try:
        # The master's loop must not be touched: its epoll fd is shared with the master.
        # Detach from it instead: no wakeup writes, no inherited handlers, no running loop.
        signal.set_wakeup_fd(-1)
        for sig in handled:
            signal.signal(sig, signal.SIG_DFL)
        asyncio.events._set_running_loop(None)  # 3.11 does not reset it at fork
        asyncio.set_event_loop(None)
        # dup2 over the master-only fds rather than close them: the numbers stay taken, so
        # nothing the worker opens can land on a number that a stale master object in this
        # process might close later.
        devnull = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
        for fd in master_fds:
            os.dup2(devnull, fd, inheritable=False)
        os.close(devnull)
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        code = worker_module.run_worker(spec)  # via the module: tests substitute run_worker
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException:
        log.exception("worker %s crashed", spec.worker_id)
        code = 1
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)
