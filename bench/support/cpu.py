"""CPU pinning and accounting for benchmark processes, read from /proc (Linux only).

The e2e benchmark gives the proxy under test one core and the load generator plus the
upstream the other; ``pin_tree`` pins a process, all its threads and all its descendants
(FluxGate's master forks the worker, nginx's master forks its worker), and ``cpu_seconds``
sums user + system time over such a tree, so a run can report req/s per core actually used.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

_TICK = os.sysconf("SC_CLK_TCK")


def usable_cpus() -> set[int]:
    return set(os.sched_getaffinity(0))


def plan() -> tuple[set[int] | None, set[int] | None, str]:
    """(client CPUs, proxy CPUs, a line saying so): the proxy under test on the last usable
    CPU, the load generator and the upstream on the first; no pinning with a single CPU."""
    usable = sorted(usable_cpus())
    if len(usable) < 2:
        return None, None, f"no pinning (only CPU {usable} usable)"
    return {usable[0]}, {usable[-1]}, (
        f"proxy pinned to CPU {usable[-1]}; loadgen and upstream pinned to CPU {usable[0]}"
    )


@contextlib.contextmanager
def pinned(cpus: set[int] | None) -> Iterator[None]:
    """This process on ``cpus`` (None: unchanged) until the block ends; the processes it
    starts meanwhile (the upstream, loadgen) inherit it."""
    if not cpus:
        yield
        return
    own = os.sched_getaffinity(0)
    os.sched_setaffinity(0, cpus)
    try:
        yield
    finally:
        os.sched_setaffinity(0, own)


def children(pid: int) -> list[int]:
    """Direct children of ``pid`` (from /proc/PID/task/*/children)."""
    found: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return found
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                found += [int(c) for c in f.read().split()]
        except OSError:
            continue
    return found


def tree(pid: int) -> list[int]:
    """``pid`` and all its descendants."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += children(p)
    return out


def pin_tree(pid: int, cpus: set[int]) -> None:
    """Pin every thread of ``pid`` and of its descendants to ``cpus``."""
    for p in tree(pid):
        try:
            tids = [int(t) for t in os.listdir(f"/proc/{p}/task")]
        except OSError:
            continue
        for tid in tids:
            try:
                os.sched_setaffinity(tid, cpus)
            except OSError:  # the thread exited meanwhile
                pass


def cpu_seconds(pids: list[int]) -> float:
    """user + system CPU seconds consumed so far by ``pids`` (all their threads)."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15)
    return total / _TICK


def machine_facts() -> dict[str, str]:
    """nproc, the CPU model name (lscpu / /proc/cpuinfo), the kernel."""
    model = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {
        "nproc": str(len(os.sched_getaffinity(0))),
        "cpu_count": str(os.cpu_count()),
        "model": model,
        "kernel": os.uname().release,
    }
