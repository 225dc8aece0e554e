"""Replacing a file of state_dir or of the operator's config in one step.

A reader sees the old file or the new one, never half of either: the new bytes go to a
temporary file beside it, are synced to disk, and are renamed over the old name (rename is
atomic within a directory). A crash leaves at worst the temporary file, which is removed
when the write itself fails.
"""

from __future__ import annotations

import os
import tempfile


def replace_file(path: str, data: bytes, mode: int = 0o600) -> None:
    """Make ``path`` hold ``data`` with permissions ``mode``, atomically and durably."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, temporary = tempfile.mkstemp(prefix=".fluxgate-", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(temporary, mode)
        os.replace(temporary, path)
    except BaseException:
        try:
            os.unlink(temporary)
        except FileNotFoundError:
            pass
        raise
