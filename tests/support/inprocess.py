"""One worker's real objects driven in-process, without sockets.

``wire_gateway`` builds a Gateway from config text and connects a ClientConnection and a warm
pooled UpstreamConnection (the first route's pool) to transports that only collect bytes, so a
test or a benchmark feeds bytes to both sides by hand.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from fluxgate.config.loader import load_config_text
from fluxgate.proxy.app import Gateway
from fluxgate.proxy.protocol import ClientConnection
from fluxgate.proxy.upstream import UpstreamConnection


class CollectingTransport:
    """Enough of asyncio.Transport for the protocols: keeps what is written, in order."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []

    @property
    def out(self) -> bytes:
        return b"".join(self.writes)

    def write(self, data: bytes) -> None:
        self.writes.append(data)

    def get_extra_info(self, name: str, default: object = None) -> object:
        return ("127.0.0.1", 40000) if name == "peername" else default

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def close(self) -> None:
        pass

    def abort(self) -> None:
        pass


@dataclass
class Wired:
    gateway: Gateway
    client: ClientConnection
    client_transport: CollectingTransport
    upstream: UpstreamConnection
    upstream_transport: CollectingTransport


def wire_gateway(
    loop: asyncio.AbstractEventLoop, config_text: str, *, metrics: object = None
) -> Wired:
    """A Gateway on ``config_text``, one client connection, and one idle upstream connection
    already in the first route's pool (a warm pooled connection, as under load); ``metrics``
    as a worker passes its shared table."""
    gateway = Gateway(loop, load_config_text(config_text), metrics=metrics)
    pool = gateway.routes[0].group.pools[0]
    upstream = UpstreamConnection(pool)
    upstream_transport = CollectingTransport()
    upstream.connection_made(upstream_transport)
    pool._members.add(upstream)
    pool.open_count = 1
    pool.idle.append(upstream)
    client = ClientConnection(gateway)
    client_transport = CollectingTransport()
    client.connection_made(client_transport)
    return Wired(gateway, client, client_transport, upstream, upstream_transport)
