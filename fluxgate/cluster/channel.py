"""A pub/sub subscription that lasts: subscribe, hand each message on, and after any failure
(Redis restarted, a partition, a stale connection) subscribe again a second later.

With Sentinel, a subscription left on a former primary is made again on the new one.
Messages sent while a node was not subscribed are lost (Redis pub/sub keeps nothing): each
user says how it catches up (``on_subscribed`` runs after every subscription).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

from fluxgate.cluster.connect import primary_moved

RESUBSCRIBE_AFTER = 1.0
POLL = 1.0  # a quiet connection is checked for ``stale`` this often


async def subscribe_forever(client: Any, channel: str,
                            on_message: Callable[[bytes], Awaitable[None] | None], *,
                            on_subscribed: Callable[[], Awaitable[None] | None] | None = None,
                            on_error: Callable[[BaseException], None] | None = None,
                            stale: Callable[[], bool] | None = None) -> None:
    """Run until cancelled. ``stale()`` true on a quiet connection drops it and subscribes
    again (its owner learned elsewhere that Redis went away: the socket may be dead)."""
    while True:
        pubsub = client.pubsub(ignore_subscribe_messages=True)
        try:
            await pubsub.subscribe(channel)
            if on_subscribed is not None:
                await _maybe_await(on_subscribed())
            next_check = time.monotonic() + POLL
            while True:
                message = await pubsub.get_message(timeout=POLL)
                if message is not None and message.get("type") == "message":
                    await _maybe_await(on_message(message.get("data")))
                elif message is None and stale is not None and stale():
                    break
                if time.monotonic() >= next_check:
                    next_check = time.monotonic() + POLL
                    # After a Sentinel failover the old primary hears nothing published on
                    # the new one until Sentinel makes it a replica (about 10 s later).
                    if await primary_moved(client, pubsub.connection):
                        break
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - any failure: subscribe again
            if on_error is not None:
                on_error(exc)
        finally:
            try:
                await pubsub.aclose()
            except Exception:  # noqa: BLE001 - the connection is gone anyway
                pass
        await asyncio.sleep(RESUBSCRIBE_AFTER)


async def _maybe_await(result: Awaitable[None] | None) -> None:
    if result is not None:
        await result
