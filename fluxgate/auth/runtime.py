"""Per-worker objects that several middleware instances share (one JWKS key source per
provider, one auth-failure table, ...), created on first use and kept for the worker's
Gateway's lifetime."""

from __future__ import annotations

import weakref
from collections.abc import Callable, Hashable
from typing import Any, TypeVar

_T = TypeVar("_T")
_SHARED: weakref.WeakKeyDictionary[Any, dict[Hashable, Any]] = weakref.WeakKeyDictionary()


def worker_shared(gateway: Any, key: Hashable, create: Callable[[], _T]) -> _T:
    """The object registered under ``key`` for ``gateway``, made by ``create()`` once."""
    registry = _SHARED.setdefault(gateway, {})
    try:
        return registry[key]
    except KeyError:
        value = registry[key] = create()
        return value
