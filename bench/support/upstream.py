"""A minimal fixed-response HTTP/1.1 upstream for end-to-end benchmarks.

Every request gets the same ~100-byte ``200 OK`` (keep-alive unless the client asks to
close), so the upstream costs as little CPU as possible and every proxy under test forwards
the same bytes. httptools (llhttp) frames requests, so bodies and pipelining are handled;
only ``on_message_complete`` is defined, the callbacks for URL and headers are never made.

Run as its own process (it must not share a core-time slice with the load generator inside
one interpreter): ``python -m bench.support.upstream [--port N]`` prints
``listening 127.0.0.1:PORT`` once ready. ``start_upstream()`` does that and returns a handle.

The proxy comparisons use ``start_fixed_upstream()`` instead: nginx answering the same body
with ``return 200`` when nginx is installed, as independent wrk + nginx checks of FluxGate
do. On the development VM both upstreams cost about the same CPU per request (7-11 µs, most
of it in the kernel; ``python -m bench.support.generators`` measures it); nginx's cost does
not depend on the interpreter's build or version, which keeps the client side the same
from machine to machine.
"""

from __future__ import annotations

import argparse
import asyncio
import selectors
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import TypeVar

import httptools

REPO = Path(__file__).resolve().parents[2]

BODY = b"fixed response body\n"
RESPONSE = (
    b"HTTP/1.1 200 OK\r\n"
    b"Content-Type: text/plain\r\n"
    b"Content-Length: %d\r\n"
    b"Server: bench-upstream\r\n"
    b"\r\n%s" % (len(BODY), BODY)
)
CLOSE_RESPONSE = RESPONSE.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n", 1)
BAD_REQUEST = b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"


class FixedResponse(asyncio.Protocol):
    """Answers every complete request with RESPONSE; one write per read."""

    __slots__ = ("transport", "parser", "done", "close")

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.done = 0
        self.close = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def on_message_complete(self) -> None:
        self.done += 1
        if not self.parser.should_keep_alive():
            self.close = True

    def data_received(self, data: bytes) -> None:
        transport = self.transport
        assert transport is not None
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            transport.write(BAD_REQUEST)
            transport.close()
            return
        n, self.done = self.done, 0
        if self.close:
            transport.write(RESPONSE * (n - 1) + CLOSE_RESPONSE)
            transport.close()
        elif n:
            transport.write(RESPONSE * n if n > 1 else RESPONSE)


def serve(port: int) -> None:
    import uvloop

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(4096)

    async def main() -> None:
        server = await asyncio.get_running_loop().create_server(FixedResponse, sock=sock)
        host, bound = sock.getsockname()[:2]
        print(f"listening {host}:{bound}", flush=True)
        async with server:
            await server.serve_forever()

    uvloop.run(main())


class UpstreamProcess:
    """The upstream as a child process; ``stop()`` ends it by pid."""

    def __init__(self, proc: subprocess.Popen, port: int) -> None:
        self.proc = proc
        self.port = port
        self.description = "Python upstream (bench/support/upstream.py)"

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self, timeout: float = 5.0) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


def start_upstream(timeout: float = 10.0) -> UpstreamProcess:
    """Start ``python -m bench.support.upstream`` on 127.0.0.1:0 and wait for its port.

    The child inherits the caller's CPU affinity (the e2e bench pins itself first)."""
    return start_child("bench.support.upstream", UpstreamProcess, "upstream", timeout)


_Handle = TypeVar("_Handle", bound=UpstreamProcess)


def start_child(module: str, handle_type: type[_Handle], what: str,
                timeout: float = 10.0) -> _Handle:
    """Start ``python -m <module>``, a server that prints ``listening 127.0.0.1:PORT`` once
    ready, and return its handle with the port; the child is stopped if it never says so."""
    proc = subprocess.Popen(
        [sys.executable, "-m", module],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
    )
    handle = handle_type(proc, 0)
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + timeout
        with selectors.DefaultSelector() as sel:
            sel.register(proc.stdout, selectors.EVENT_READ)
            while time.monotonic() < deadline:
                if sel.select(max(0.0, deadline - time.monotonic())):
                    line = proc.stdout.readline().decode().strip()
                    if not line.startswith("listening "):
                        raise RuntimeError(f"{what} said {line!r} (exit {proc.poll()})")
                    handle.port = int(line.rsplit(":", 1)[1])
                    return handle
        raise RuntimeError(f"{what} did not start in time")
    except BaseException:
        handle.stop()
        raise


NGINX_UPSTREAM = """\
worker_processes 1;
daemon off;
master_process off;
pid {workdir}/nginx.pid;
error_log {workdir}/error.log warn;

events {{
    worker_connections 4096;
}}

http {{
    access_log off;
    client_body_temp_path {workdir}/tmp/body;
    proxy_temp_path {workdir}/tmp/proxy;
    fastcgi_temp_path {workdir}/tmp/fastcgi;
    uwsgi_temp_path {workdir}/tmp/uwsgi;
    scgi_temp_path {workdir}/tmp/scgi;
    keepalive_requests 100000000;
    keepalive_timeout 60s;

    server {{
        listen 127.0.0.1:{port};
        location / {{
            default_type text/plain;
            return 200 "{body}";
        }}
    }}
}}
"""


def start_fixed_upstream(workdir: Path):
    """The fixed-response upstream for proxy comparisons: nginx (one process: no master, so
    its pid is all its CPU, and it inherits the caller's CPU affinity) answering ``BODY``, or
    the Python server above when nginx is not installed. The handle has ``pid``, ``port``,
    ``url``, ``stop()`` and ``description`` (what answered, for the results)."""
    from .peers import PeerProcess, PeerUnavailable, free_port, require, version

    try:
        binary = require("nginx")
    except PeerUnavailable as exc:
        handle = start_upstream()
        handle.description = f"Python upstream (bench/support/upstream.py; {exc})"
        return handle
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "tmp").mkdir(exist_ok=True)
    port = free_port()
    conf = workdir / "nginx-upstream.conf"
    body = BODY.decode().replace("\n", "\\n")
    conf.write_text(NGINX_UPSTREAM.format(workdir=workdir, port=port, body=body))
    proc = PeerProcess("nginx upstream",
                       [binary, "-p", str(workdir), "-c", str(conf), "-e", str(workdir / "error.log")],
                       port, workdir / "nginx.log")
    proc.start()
    proc.description = f"nginx fixed response ({version(binary)}, one process)"
    return proc


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    serve(parser.parse_args().port)
