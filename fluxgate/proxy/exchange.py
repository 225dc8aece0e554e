"""One request proxied to one upstream connection, streaming both ways.

The exchange is the terminal stage of the chain (Envoy's router filter): it takes a pooled
connection, sends the rewritten head and then the body as the client sends it, and streams
the response back as it arrives. Neither body is ever buffered whole: when one side's write
buffer is full, reading from the other side pauses (back-pressure, as aiohttp does).

It runs once per request and calls both connections on every event, so it is compiled
whole: ``fluxgate/_proxy.pyx`` (contract: ``_proxy_exchange.pxd``). This module names it
where the layout says it is.
"""

from __future__ import annotations

from fluxgate._proxy import IDEMPOTENT, PENDING_BODY_LIMIT, Exchange

__all__ = ["IDEMPOTENT", "PENDING_BODY_LIMIT", "Exchange"]
