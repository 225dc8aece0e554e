"""One worker process: a fresh uvloop loop serving the inherited listening socket.

Forked by the master (fluxgate/master/arbiter.py). SIGTERM/SIGINT drain: stop accepting,
answer what is in flight with `Connection: close`, exit when the last connection is gone
or `limits.drain_timeout` passes. SIGQUIT exits at once. A worker whose master died exits
too, so no orphan keeps serving a stale config.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import ssl
from dataclasses import dataclass
from typing import Any

import uvloop

from fluxgate.config.schema import Config
from fluxgate.proxy.app import Gateway
from fluxgate.proxy.protocol import ClientConnection, TlsClientConnection

log = logging.getLogger("fluxgate.worker")

EXIT_OK = 0
EXIT_BOOT_ERROR = 3  # reserved: the master must not respawn such a worker forever
TLS_SHUTDOWN_TIMEOUT = 5.0  # seconds to wait for a TLS peer's close_notify



@dataclass(frozen=True)
class WorkerSpec:
    """What the master hands a worker at fork time."""

    worker_id: int
    config: Config
    listen_socket: socket.socket
    metrics: Any
    route_slots: tuple[int, ...]
    ready_fd: int
    # The listener's TLS context (built by the master for this generation), or None.
    ssl_context: ssl.SSLContext | None = None


def run_worker(spec: WorkerSpec) -> int:
    """Serve until told to stop; returns the process exit code."""
    loop = uvloop.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        try:
            gateway = Gateway(
                loop,
                spec.config,
                metrics=spec.metrics,
                route_slots=spec.route_slots,
                worker_id=spec.worker_id,
            )
            server = loop.run_until_complete(_listen(loop, spec, gateway))
        except Exception:
            log.exception("worker %d could not boot", spec.worker_id)
            return EXIT_BOOT_ERROR
        return loop.run_until_complete(_serve(loop, spec, gateway, server))
    finally:
        try:
            loop.close()
        except Exception:  # noqa: BLE001 - exiting anyway; never mask the exit code
            pass


async def _listen(loop: asyncio.AbstractEventLoop, spec: WorkerSpec, gateway: Gateway) -> Any:
    """Serve the listen socket: plain HTTP, or TLS terminated by uvloop's SSL transport
    (one context for the socket, so a request pays nothing for it)."""
    tls = spec.ssl_context
    if tls is None:
        return await loop.create_server(
            lambda: ClientConnection(gateway), sock=spec.listen_socket, backlog=2048
        )
    limits = spec.config.limits
    return await loop.create_server(
        lambda: TlsClientConnection(gateway),
        sock=spec.listen_socket,
        backlog=2048,
        ssl=tls,
        # The handshake is part of sending the request head: a peer that stalls in it is
        # the slowloris header_timeout is for. (The protocol's own clock starts after it.)
        ssl_handshake_timeout=limits.header_timeout,
        # A peer that never answers close_notify must not hold a draining worker.
        ssl_shutdown_timeout=TLS_SHUTDOWN_TIMEOUT,
    )


async def _serve(loop: asyncio.AbstractEventLoop, spec: WorkerSpec, gateway: Gateway, server: Any) -> int:
    stop = asyncio.Event()
    graceful = True

    def request_stop(is_graceful: bool) -> None:
        nonlocal graceful
        graceful = graceful and is_graceful
        stop.set()

    loop.add_signal_handler(signal.SIGTERM, request_stop, True)
    loop.add_signal_handler(signal.SIGINT, request_stop, True)
    loop.add_signal_handler(signal.SIGQUIT, request_stop, False)
    loop.add_signal_handler(signal.SIGHUP, lambda: None)  # the master reloads, not us
    parent = os.getppid()

    def watch_parent(now: float) -> None:
        # A worker whose master died must not keep serving a stale config.
        if os.getppid() != parent and not stop.is_set():
            log.warning("master %d is gone; worker exiting", parent)
            request_stop(True)

    gateway.periodic.append(watch_parent)
    gateway.start()
    _signal_ready(spec.ready_fd)
    await stop.wait()
    server.close()
    if graceful:
        timeout = spec.config.limits.drain_timeout
        gateway.begin_drain(timeout)
        deadline = loop.time() + timeout
        while gateway.connections and loop.time() < deadline:
            await asyncio.sleep(0.05)
    for conn in list(gateway.connections):
        conn.abort()
    gateway.close()
    return EXIT_OK


def _signal_ready(fd: int) -> None:
    if fd < 0:
        return
    try:
        os.write(fd, b"1")
    except OSError:
        pass
    finally:
        os.close(fd)
