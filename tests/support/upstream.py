"""A recording upstream for tests: runs its own uvloop loop in a thread on 127.0.0.1:0.

Every request it receives is recorded (method, target, headers, body size, raw head), so a
test can assert what reached the upstream — and that a hostile request never did.
Behaviour is chosen by path:
  /slow/<ms>        answer after <ms> milliseconds
  /chunked/<n>      chunked response of n chunks
  /close/<bytes>    close-delimited response of <bytes> bytes
  /big/<bytes>      Content-Length response of <bytes> bytes
  /status/<code>    empty response with that status
  /ws               WebSocket upgrade: 101, then an RFC 6455 echo (tests/support/websocket.py)
                    recording what arrived in `ws_events`; a text message "drip:<bytes>:<pieces>:<ms>"
                    makes it send one binary frame of <bytes> in <pieces> writes <ms> apart,
                    "masked" a masked frame (which no server may send)
  /drop             closes the connection without answering
  /dropreused       answers on a fresh connection, closes a reused one without answering
  anything else     200 JSON echo of what was received
"""

from __future__ import annotations

import asyncio
import json
import threading
from dataclasses import dataclass, field

import httptools

from fluxgate.echo import bind_loopback
from tests.support.websocket import OP_BINARY, OP_TEXT, EchoSession, accept_value, encode


@dataclass
class Received:
    method: str
    target: str
    headers: list[tuple[str, str]]
    body_bytes: int = 0
    complete: bool = False

    def header(self, name: str) -> str | None:
        for key, value in self.headers:
            if key.lower() == name.lower():
                return value
        return None

    def header_names(self) -> set[str]:
        return {k.lower() for k, _ in self.headers}


@dataclass
class RecordingUpstream:
    port: int = 0
    requests: list[Received] = field(default_factory=list)
    connections: int = 0
    raw_bytes: int = 0
    ssl: object = None  # an ssl.SSLContext (server side): the upstream speaks https
    peer_certs: list[dict] = field(default_factory=list)  # client certificates seen (mTLS)
    ws_events: list[tuple] = field(default_factory=list)  # EchoSession's record, all sessions

    def start(self) -> RecordingUpstream:
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        self._ready.wait(5)
        return self

    @property
    def url(self) -> str:
        return f"{'https' if self.ssl else 'http'}://127.0.0.1:{self.port}"

    def _run(self) -> None:
        import uvloop

        self.loop = uvloop.new_event_loop()
        sock = bind_loopback()
        self.port = sock.getsockname()[1]
        self.server = self.loop.run_until_complete(
            self.loop.create_server(lambda: _UpstreamProtocol(self), sock=sock, ssl=self.ssl)
        )
        self._ready.set()
        self.loop.run_forever()

    def stop(self) -> None:
        def _stop() -> None:
            self.server.close()
            self.loop.stop()

        self.loop.call_soon_threadsafe(_stop)
        self._thread.join(5)


_KINDS = {"slow", "chunked", "close", "big", "status", "drop", "dropreused"}


class _UpstreamProtocol(asyncio.Protocol):
    def __init__(self, owner: RecordingUpstream) -> None:
        self.owner = owner
        self.parser = httptools.HttpRequestParser(self)
        self.tunnel = False
        self.ws: EchoSession | None = None
        self.dripping = 0  # pieces of a slow frame still to write: other frames wait
        self.held: list[bytes | None] = []  # what waits (None: close the connection)
        self.served = 0
        self.current: Received | None = None
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.owner.connections += 1
        if self.owner.ssl is not None:
            cert = transport.get_extra_info("peercert")
            if cert:
                self.owner.peer_certs.append(cert)

    def data_received(self, data: bytes) -> None:
        self.owner.raw_bytes += len(data)
        if self.tunnel:
            self._ws_feed(data)
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            self.tunnel = True
            self.ws = EchoSession(self._ws_send, self._ws_close, self.owner.ws_events)
            rest = data[exc.args[0]:]
            if rest:
                self._ws_feed(rest)
        except httptools.HttpParserError:
            self.transport.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
            self.transport.close()

    def _ws_feed(self, data: bytes) -> None:
        assert self.ws is not None
        before = len(self.owner.ws_events)
        self.ws.feed(data)
        for event in self.owner.ws_events[before:]:
            if event[0] == "message" and event[1] == OP_TEXT and event[2] < 64:
                self._maybe_drip()

    def _maybe_drip(self) -> None:
        # The echo just wrote the text back; a "drip:" command also starts a slow frame.
        command = self.ws.last_text if self.ws is not None else b""
        if command == b"masked":  # a frame no server may send (RFC 6455 §5.1)
            self._ws_send(encode(OP_TEXT, b"from a broken server", mask=True))
            return
        if not command.startswith(b"drip:") or self.dripping:
            return
        size, pieces, ms = (int(x) for x in command[5:].split(b":"))
        frame = encode(OP_BINARY, b"d" * size, mask=False)
        step = -(-len(frame) // pieces)
        loop = asyncio.get_running_loop()
        self.dripping = pieces
        for k in range(pieces):
            loop.call_later(k * ms / 1000, self._drip, frame[k * step : (k + 1) * step])

    def _drip(self, piece: bytes) -> None:
        if not self.transport.is_closing():
            self.transport.write(piece)
        self.dripping -= 1
        if self.dripping == 0:
            # Like any WebSocket endpoint, frames never interleave: what waited goes now.
            held, self.held = self.held, []
            for data in held:
                self._ws_send(data) if data is not None else self._ws_close()

    def _ws_send(self, data: bytes) -> None:
        if self.dripping:
            self.held.append(data)
        elif not self.transport.is_closing():
            self.transport.write(data)

    def _ws_close(self) -> None:
        if self.dripping:
            self.held.append(None)
        else:
            self.transport.close()

    def on_message_begin(self) -> None:
        self.url = b""
        self.headers = []

    def on_url(self, piece: bytes) -> None:
        self.url += piece

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        self.current = Received(
            method=self.parser.get_method().decode(),
            target=self.url.decode("latin-1"),
            headers=[(k.decode("latin-1"), v.decode("latin-1")) for k, v in self.headers],
        )
        self.owner.requests.append(self.current)
        if self.current.target.startswith("/ws"):
            key = self.current.header("Sec-WebSocket-Key") or ""
            self.transport.write(
                b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                b"Sec-WebSocket-Accept: %s\r\n\r\n" % accept_value(key).encode()
            )

    def on_body(self, chunk: bytes) -> None:
        assert self.current is not None
        self.current.body_bytes += len(chunk)

    def on_message_complete(self) -> None:
        req = self.current
        assert req is not None
        req.complete = True
        if req.target.startswith("/ws"):
            return
        parts = req.target.split("?")[0].strip("/").split("/")
        kind, arg = "", ""
        for i, part in enumerate(parts):
            if part in _KINDS:
                kind, arg = part, (parts[i + 1] if i + 1 < len(parts) else "")
                break
        head = req.method == "HEAD"
        reused = self.served > 0
        self.served += 1
        if kind == "slow":
            asyncio.get_running_loop().call_later(int(arg) / 1000, self._echo, req, head)
        elif kind == "chunked" and head:
            self.transport.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        elif kind == "chunked":
            self.transport.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
            for i in range(int(arg or 3)):
                piece = b"chunk-%d;" % i
                self.transport.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            self.transport.write(b"0\r\n\r\n")
        elif kind == "close":
            self.transport.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n" + b"x" * int(arg or 10))
            self.transport.close()
        elif kind == "big":
            size = int(arg)
            self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size)
            if not head:
                block = b"y" * 65536
                sent = 0
                while sent < size:
                    n = min(len(block), size - sent)
                    self.transport.write(block[:n])
                    sent += n
        elif kind == "status":
            self.transport.write(b"HTTP/1.1 %s X\r\nContent-Length: 0\r\n\r\n" % arg.encode())
        elif kind == "drop" or (kind == "dropreused" and reused):
            self.transport.close()
        else:
            self._echo(req, head)

    def _echo(self, req: Received, head: bool) -> None:
        body = json.dumps(
            {"method": req.method, "target": req.target, "headers": req.headers, "body_bytes": req.body_bytes}
        ).encode()
        self.transport.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
            % (len(body), b"" if head else body)
        )
