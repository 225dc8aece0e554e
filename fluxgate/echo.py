"""A small echo upstream for the demo and for trying a config: answers every request with
JSON describing what it received (method, path, headers, body size).

Loopback only. Not a production server; it exists so `fluxgate demo` needs nothing else.
"""

from __future__ import annotations

import asyncio
import socket

import httptools
import orjson


class EchoProtocol(asyncio.Protocol):
    """Answers each request with a JSON echo of it; keep-alive, streaming bodies counted."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.body_bytes = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            assert self.transport is not None
            self.transport.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            self.transport.close()

    def on_message_begin(self) -> None:
        self.url = b""
        self.headers = []
        self.body_bytes = 0

    def on_url(self, piece: bytes) -> None:
        self.url += piece

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_body(self, chunk: bytes) -> None:
        self.body_bytes += len(chunk)

    def on_message_complete(self) -> None:
        assert self.transport is not None
        body = orjson.dumps(
            {
                "echo": True,
                "method": self.parser.get_method().decode(),
                "url": self.url.decode("latin-1"),
                "headers": {k.decode("latin-1"): v.decode("latin-1") for k, v in self.headers},
                "body_bytes": self.body_bytes,
            },
            option=orjson.OPT_INDENT_2,
        ) + b"\n"
        keep_alive = self.parser.should_keep_alive()
        head_only = self.parser.get_method() == b"HEAD"
        self.transport.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n%s\r\n%s"
            % (len(body), b"" if keep_alive else b"Connection: close\r\n", b"" if head_only else body)
        )
        if not keep_alive:
            self.transport.close()


def bind_loopback(port: int = 0) -> socket.socket:
    """A listening socket on 127.0.0.1 (port 0 picks a free one)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(1024)
    return sock


def serve_forever(sock: socket.socket) -> None:
    """Run the echo upstream on `sock` until the process is stopped."""
    import uvloop

    async def main() -> None:
        server = await asyncio.get_running_loop().create_server(EchoProtocol, sock=sock)
        async with server:
            await server.serve_forever()

    uvloop.run(main())


if __name__ == "__main__":
    import sys

    listen = bind_loopback(int(sys.argv[1]) if len(sys.argv) > 1 else 0)
    print(f"echo upstream on http://127.0.0.1:{listen.getsockname()[1]}", flush=True)
    serve_forever(listen)
