"""Longest-prefix route matching on the normalized path (DESIGN §4).

A route `/api` matches `/api`, `/api/` and `/api/x`, never `/apix`: prefixes end on a
segment boundary. The table is a dict keyed by prefix, so a match costs one dict lookup per
path segment, from the longest candidate down.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Generic, TypeVar

from fluxgate._core import longest_prefix

T = TypeVar("T")


class Router(Generic[T]):
    """Maps normalized paths to the route of the longest matching prefix."""

    __slots__ = ("_table", "_root", "_longest")

    def __init__(self, routes: Iterable[tuple[str, T]]) -> None:
        self._table: dict[bytes, T] = {}
        self._root: T | None = None
        for prefix, route in routes:
            key = prefix.encode()
            if len(key) > 1 and key.endswith(b"/"):
                key = key.rstrip(b"/")
            if key == b"/" or key == b"":
                self._root = route
            else:
                self._table[key] = route
        self._longest = max(map(len, self._table), default=0)

    def match(self, path: bytes) -> T | None:
        """Return the route for `path` (already normalized), or None."""
        # In C: one dict lookup per segment no longer than the longest prefix, then the root.
        return longest_prefix(self._table, path, self._longest, self._root)
