"""A minimal RFC 6455 WebSocket for tests: frame encoding, a frame reader that takes bytes
in any split, a blocking client, and the server side of an echo session (the recording
upstream's ``/ws``).

Deliberately small and strict: it masks what a client must mask (RFC 6455 §5.3), reports
what it reads as it is on the wire (opcode, FIN, mask bit, payload), and can also write
frames no conforming endpoint would (unmasked client frames, oversize control frames), so
tests can send them.
"""

from __future__ import annotations

import base64
import hashlib
import os
import socket
import struct
from dataclasses import dataclass

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"  # RFC 6455 §1.3

OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0, 1, 2, 8, 9, 10


@dataclass
class Frame:
    opcode: int
    payload: bytes
    fin: bool = True
    masked: bool = False

    @property
    def close_code(self) -> int | None:
        """A Close frame's status code (RFC 6455 §5.5.1), None without one."""
        if self.opcode != OP_CLOSE or len(self.payload) < 2:
            return None
        return struct.unpack("!H", self.payload[:2])[0]


def apply_mask(data: bytes, key: bytes) -> bytes:
    """XOR with the 4-byte masking key (RFC 6455 §5.3), fast for large payloads."""
    if not data:
        return data
    repeated = (key * (len(data) // 4 + 1))[: len(data)]
    return (int.from_bytes(data, "big") ^ int.from_bytes(repeated, "big")).to_bytes(len(data), "big")


def encode(opcode: int, payload: bytes = b"", *, mask: bool, fin: bool = True,
           length: int | None = None, rsv: int = 0) -> bytes:
    """One frame; ``length`` overrides the encoded payload length (hostile frames)."""
    size = len(payload) if length is None else length
    first = (0x80 if fin else 0) | (rsv << 4) | opcode
    mask_bit = 0x80 if mask else 0
    if size < 126:
        head = bytes([first, mask_bit | size])
    elif size < 1 << 16:
        head = bytes([first, mask_bit | 126]) + struct.pack("!H", size)
    else:
        head = bytes([first, mask_bit | 127]) + struct.pack("!Q", size)
    if not mask:
        return head + payload
    key = os.urandom(4)
    return head + key + apply_mask(payload, key)


def close_payload(code: int, reason: bytes = b"") -> bytes:
    return struct.pack("!H", code) + reason


class FrameReader:
    """Frames out of a byte stream fed in arbitrary pieces."""

    def __init__(self) -> None:
        self.buffer = bytearray()

    def feed(self, data: bytes) -> list[Frame]:
        self.buffer += data
        frames = []
        while True:
            frame = self._one()
            if frame is None:
                return frames
            frames.append(frame)

    def _one(self) -> Frame | None:
        buf = self.buffer
        if len(buf) < 2:
            return None
        b0, b1 = buf[0], buf[1]
        masked, size, at = bool(b1 & 0x80), b1 & 0x7F, 2
        if size == 126:
            if len(buf) < 4:
                return None
            size, at = struct.unpack("!H", buf[2:4])[0], 4
        elif size == 127:
            if len(buf) < 10:
                return None
            size, at = struct.unpack("!Q", buf[2:10])[0], 10
        key = b""
        if masked:
            if len(buf) < at + 4:
                return None
            key, at = bytes(buf[at : at + 4]), at + 4
        if len(buf) < at + size:
            return None
        payload = bytes(buf[at : at + size])
        del buf[: at + size]
        if masked:
            payload = apply_mask(payload, key)
        return Frame(b0 & 0x0F, payload, bool(b0 & 0x80), masked)


def accept_value(key: str) -> str:
    return base64.b64encode(hashlib.sha1(key.encode() + GUID).digest()).decode()


class WsClient:
    """A blocking WebSocket client over a plain TCP connection."""

    def __init__(self, sock: socket.socket, response_head: bytes, rest: bytes) -> None:
        self.sock = sock
        self.response_head = response_head
        self.reader = FrameReader()
        self.frames: list[Frame] = []
        self.eof = False
        if rest:
            self.frames.extend(self.reader.feed(rest))

    @classmethod
    def connect(cls, port: int, path: str = "/ws", headers: dict[str, str] | None = None,
                timeout: float = 5.0) -> WsClient:
        """Open a TCP connection and do the opening handshake; raises on anything but 101."""
        sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        return cls.handshake(sock, path, headers)

    @classmethod
    def handshake(cls, sock: socket.socket, path: str, headers: dict[str, str] | None = None,
                  host: str = "gateway.test") -> WsClient:
        """The opening handshake (RFC 6455 §4.1) on a connected socket (a TLS one too);
        closes it and raises ConnectionError on anything but 101."""
        key = base64.b64encode(os.urandom(16)).decode()
        lines = [f"GET {path} HTTP/1.1", f"Host: {host}", "Connection: Upgrade",
                 "Upgrade: websocket", "Sec-WebSocket-Version: 13", f"Sec-WebSocket-Key: {key}"]
        lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                sock.close()
                raise ConnectionError(f"closed during the handshake: {data!r}")
            data += chunk
        head, _, rest = data.partition(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 101 "):
            sock.close()
            raise ConnectionError(f"handshake refused: {head!r}")
        return cls(sock, head, rest)

    def send(self, opcode: int, payload: bytes = b"", **options) -> None:
        options.setdefault("mask", True)
        self.sock.sendall(encode(opcode, payload, **options))

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def recv_frame(self) -> Frame | None:
        """The next frame, or None at end of stream (raises TimeoutError on the socket's)."""
        while not self.frames:
            if self.eof:
                return None
            try:
                chunk = self.sock.recv(1 << 20)
            except ConnectionResetError:
                chunk = b""
            if not chunk:
                self.eof = True
                return None
            self.frames.extend(self.reader.feed(chunk))
        return self.frames.pop(0)

    def recv_until_close(self) -> tuple[list[Frame], Frame | None]:
        """Frames up to the peer's Close frame (that frame apart; None if the stream ended
        without one)."""
        before = []
        while True:
            frame = self.recv_frame()
            if frame is None or frame.opcode == OP_CLOSE:
                return before, frame
            before.append(frame)

    def read_eof(self) -> bool:
        """True when the peer closes the TCP connection (no more bytes)."""
        while True:
            try:
                chunk = self.sock.recv(65536)
            except ConnectionResetError:
                return True
            if not chunk:
                return True
            self.frames.extend(self.reader.feed(chunk))

    def close(self) -> None:
        self.sock.close()


class EchoSession:
    """The server side of the recording upstream's ``/ws`` after its 101: data frames come
    back unmasked with the same opcode and FIN; a Close is answered with the same code and
    the connection closed. ``events`` records what arrived: ("message", opcode, size,
    masked, digest of the payload) per data frame, ("close", code, masked) per Close."""

    def __init__(self, send, close, events: list, *, echo: bool = True) -> None:
        self.send = send  # the transport's write and close, or a wrapper that queues
        self.close = close
        self.reader = FrameReader()
        self.events = events
        self.echo = echo
        self.closed = False
        self.last_text = b""  # the payload of the last text frame (commands for the upstream)

    def feed(self, data: bytes) -> None:
        for frame in self.reader.feed(data):
            if self.closed:
                return
            if frame.opcode == OP_CLOSE:
                self.events.append(("close", frame.close_code, frame.masked))
                self.closed = True
                self.send(encode(OP_CLOSE, frame.payload[:2], mask=False))
                self.close()
                return
            if frame.opcode == OP_PING:
                self.send(encode(OP_PONG, frame.payload, mask=False))
                continue
            if frame.opcode == OP_TEXT:
                self.last_text = frame.payload
            digest = hashlib.sha256(frame.payload).hexdigest()
            self.events.append(("message", frame.opcode, len(frame.payload), frame.masked, digest))
            if self.echo:
                self.send(encode(frame.opcode, frame.payload, mask=False, fin=frame.fin))
