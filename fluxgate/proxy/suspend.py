"""A middleware that cannot decide yet: the request waits, the worker's loop does not.

A middleware raises ``Suspended`` when its answer depends on work elsewhere (the
introspection side pool asking an authorization server). The client connection stops
reading from that client, and when ``future`` is done calls ``resume(req)``, which
returns what the middleware's call would have: None to go on with the rest of the chain,
or the ``ClientError`` to answer. Other connections of the worker are served meanwhile.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any


class Suspended(Exception):
    """Control flow, not an error: "ask again when ``future`` is done"."""

    def __init__(self, future: asyncio.Future[Any], resume: Callable[[Any], Any]) -> None:
        super().__init__()
        self.future = future
        self.resume = resume
