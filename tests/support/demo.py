"""A real `fluxgate demo` for the demo tests: started in a temporary directory on free ports,
stopped as Ctrl-C stops it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.support.gateway import REPO, wait_until


@contextmanager
def running_demo(tmp_path: Path, ready: Callable[[Path, str], bool],
                 timeout: float = 30) -> Iterator[tuple[Path, Path]]:
    """Run ``fluxgate demo --dir tmp_path/demo`` until the block ends; yields (its state
    dir, its log file) once ``ready(state dir, log text)`` holds."""
    state = tmp_path / "demo"
    log_path = tmp_path / "demo.log"
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "fluxgate.cli.fluxgate", "demo", "--dir", str(state),
             "--port", "0", "--admin-port", "0"],
            cwd=REPO, env=dict(os.environ, PYTHONUNBUFFERED="1"), stdout=log,
            stderr=subprocess.STDOUT)
    try:
        def started() -> bool:
            assert proc.poll() is None, log_path.read_text()
            return ready(state, log_path.read_text())

        assert wait_until(started, timeout=timeout), log_path.read_text()
        yield state, log_path
    finally:
        proc.send_signal(signal.SIGINT)  # the demo's own stop: its master, workers, child
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
