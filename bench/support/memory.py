"""What a process tree holds in memory, from /proc (Linux): each process's totals from
``smaps_rollup`` and one file mapping's share from ``smaps``.

PSS (proportional set size) charges each resident page to the processes that map it in
equal parts: a file mapped by 9 processes costs each a ninth of its resident pages, so the
sum of one mapping's PSS over every process that maps it is what the machine holds of it,
once. Sizes are in bytes.
"""

from __future__ import annotations

from dataclasses import dataclass

_ROLLUP_FIELDS = ("Rss", "Pss", "Shared_Clean", "Shared_Dirty", "Private_Clean", "Private_Dirty")


@dataclass(frozen=True)
class ProcessMemory:
    pid: int
    rss: int
    pss: int
    shared: int  # Shared_Clean + Shared_Dirty
    private: int  # Private_Clean + Private_Dirty


@dataclass(frozen=True)
class MappingMemory:
    """One file's mappings in one process (every generation mapped, old ones "(deleted)")."""

    pid: int
    mappings: int  # how many VMAs map the file
    size: int  # virtual size of those VMAs
    rss: int
    pss: int


def _kb(line: str) -> int:
    return int(line.split()[1]) * 1024


def process_memory(pid: int) -> ProcessMemory:
    """Rss, Pss, shared and private bytes of ``pid`` (/proc/PID/smaps_rollup)."""
    values = dict.fromkeys(_ROLLUP_FIELDS, 0)
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            name = line.split(":", 1)[0]
            if name in values:
                values[name] = _kb(line)
    return ProcessMemory(pid, values["Rss"], values["Pss"],
                         values["Shared_Clean"] + values["Shared_Dirty"],
                         values["Private_Clean"] + values["Private_Dirty"])


def mapping_memory(pid: int, path: str) -> MappingMemory:
    """Size, Rss and Pss of the mappings of the file ``path`` in ``pid`` (/proc/PID/smaps);
    a mapping of a replaced generation counts too (its name ends in " (deleted)")."""
    count = size = rss = pss = 0
    inside = False
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            head = line.split(None, 1)[0]
            if "-" in head and not head.endswith(":"):  # a mapping's first line
                name = line.split(None, 5)[5].strip() if len(line.split(None, 5)) > 5 else ""
                inside = name == path or name == f"{path} (deleted)"
                count += inside
            elif inside:
                if head == "Size:":
                    size += _kb(line)
                elif head == "Rss:":
                    rss += _kb(line)
                elif head == "Pss:":
                    pss += _kb(line)
    return MappingMemory(pid, count, size, rss, pss)


def mib(n: float) -> str:
    return f"{n / 2**20:,.1f} MiB"
