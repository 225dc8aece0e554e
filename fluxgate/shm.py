"""Shared-memory files: the mmaps the master creates in state_dir and workers map.

One place for the file hygiene every table needs: a fresh file is created mode 0600 with
O_EXCL after unlinking any old one, so a stale table or a file (or symlink) raced into place
is never written through; the fd is closed once mapped (the mapping keeps the pages).
"""

from __future__ import annotations

import mmap
import os
from collections.abc import Callable

_PROT = mmap.PROT_READ | mmap.PROT_WRITE


def create_mapping(path: str, size: int) -> mmap.mmap:
    """A new zero-filled shared mapping of `size` bytes at `path` (any old file replaced)."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        os.ftruncate(fd, size)
        return mmap.mmap(fd, size, mmap.MAP_SHARED, _PROT)
    finally:
        os.close(fd)


def create_kept_file(path: str, size: int, header: bytes) -> bool:
    """Create a shared file of `size` zero bytes starting with `header`, mode 0600, unless
    one exists: True when it was created. For files that outlive the master (counts kept
    across restarts), so an existing one is left as it is."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    except FileExistsError:
        return False
    try:
        os.ftruncate(fd, size)
        os.pwrite(fd, header, 0)
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        os.unlink(path)
        raise
    os.close(fd)
    return True


def open_mapping(path: str, check_size: Callable[[int], None] | None = None) -> mmap.mmap:
    """Map an existing shared file read-write; `check_size(size)` may refuse it first."""
    fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    try:
        size = os.fstat(fd).st_size
        if check_size is not None:
            check_size(size)
        return mmap.mmap(fd, size, mmap.MAP_SHARED, _PROT)
    finally:
        os.close(fd)
