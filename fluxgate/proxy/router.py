"""Longest-prefix route matching on the normalized path.

A route `/api` matches `/api`, `/api/` and `/api/x`, never `/apix`: prefixes end on a
segment boundary. The table is a dict keyed by prefix, so a match costs one dict lookup per
path segment, from the longest candidate down; the lookup is _core's PrefixTable.match, a C
method, so the per-request call costs no Python frame.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Generic, TypeVar

from fluxgate._core import PrefixTable

T = TypeVar("T")


class Router(PrefixTable, Generic[T]):
    """Maps normalized paths to the route of the longest matching prefix."""

    __slots__ = ()

    def __init__(self, routes: Iterable[tuple[str, T]]) -> None:
        table: dict[bytes, T] = {}
        root: T | None = None
        for prefix, route in routes:
            key = prefix.encode()
            if len(key) > 1 and key.endswith(b"/"):
                key = key.rstrip(b"/")
            if key == b"/" or key == b"":
                root = route
            else:
                table[key] = route
        super().__init__(table, root)

    if TYPE_CHECKING:

        def match(self, path: bytes) -> T | None:
            """Return the route for `path` (already normalized), or None."""
