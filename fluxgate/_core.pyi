"""What Python sees of fluxgate._core (the Cython hot path; rules in its module docstring)."""

from typing_extensions import Buffer  # collections.abc.Buffer from 3.12

from fluxgate.errors import B64Error as B64Error
from fluxgate.errors import PathError as PathError

__all__ = (
    "B64Error",
    "Counters",
    "PathError",
    "b64url_decode",
    "b64url_encode",
    "normalize_path",
)

def normalize_path(raw: bytes, /) -> bytes:
    """Normalized request path (the same object when unchanged); raises PathError."""

def b64url_decode(data: bytes, /) -> bytes:
    """Strict, unpadded, canonical base64url (RFC 4648 §5); raises B64Error."""

def b64url_encode(data: bytes, /) -> bytes:
    """base64url without padding."""

class Counters:
    """Atomic uint64 slots over a writable, 8-byte aligned buffer (e.g. a shared mmap)."""

    def __init__(self, buffer: Buffer, /) -> None: ...
    def __len__(self) -> int: ...
    def add(self, slot: int, delta: int = 1) -> int: ...
    def load(self, slot: int) -> int: ...
    def store(self, slot: int, value: int) -> None: ...
    def compare_exchange(self, slot: int, expected: int, new: int) -> bool: ...
    def release(self) -> None: ...
