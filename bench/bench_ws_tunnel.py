"""Bulk transfer through a WebSocket tunnel: MB/s each way through a 1-worker gateway.

The gateway follows frame boundaries in both directions of a tunnel (fluxgate/_proxy.pyx,
FrameTracker); this measures what that costs on a large transfer. The client sends
pre-masked 64 KiB binary frames to an upstream that only counts bytes (upload), and reads
64 KiB frames an upstream writes as fast as it can (download). Neither end parses frames,
so the figure is the gateway's.

    .venv/bin/python -m bench.bench_ws_tunnel [MiB] [rounds]

prints the median MB/s of each direction; ``pytest bench/bench_ws_tunnel.py`` runs a short
version and asserts every byte arrived (the rates are reported, not asserted).
"""

from __future__ import annotations

import asyncio
import multiprocessing
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

from tests.support.gateway import GatewayProcess
from tests.support.websocket import OP_BINARY, WsClient, encode

FRAME = 64 * 1024
CONFIG = """\
workers: 1
access_log: null
routes:
  - route: /ws
    upstream: http://127.0.0.1:{port}
    public: true
"""


def _serve(port_out) -> None:
    import uvloop

    class Peer(asyncio.Protocol):
        def connection_made(self, transport):
            self.transport, self.head, self.count, self.want = transport, b"", 0, -1

        def data_received(self, data):
            if self.want < 0:
                self.head += data
                if b"\r\n\r\n" not in self.head:
                    return
                head, _, rest = self.head.partition(b"\r\n\r\n")
                target = head.split(b" ", 2)[1].decode()
                self.transport.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                                     b"Connection: Upgrade\r\n\r\n")
                _, _, kind, size = target.split("/")
                self.want = int(size)
                if kind == "source":
                    frame = encode(OP_BINARY, b"s" * FRAME, mask=False)
                    for _ in range(self.want // FRAME):
                        self.transport.write(frame)
                    return
                data = rest
            self.count += len(data)
            if self.count >= self.want > 0:
                self.transport.write(encode(OP_BINARY, b"ok", mask=False))
                self.want = 0

    async def main():
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        server = await asyncio.get_running_loop().create_server(Peer, sock=sock)
        port_out.send(sock.getsockname()[1])
        await server.serve_forever()

    uvloop.run(main())


def upload(port: int, size: int) -> float:
    """Seconds to push ``size`` bytes of frames through the tunnel and hear they arrived."""
    client = WsClient.connect(port, f"/ws/sink/{size + size // FRAME * 14}", timeout=60)
    frame = encode(OP_BINARY, b"u" * FRAME, mask=True)
    block = frame * 16
    try:
        start = time.perf_counter()
        for _ in range(size // FRAME // 16):
            client.send_raw(block)
        sent = size
        answer = client.recv_frame()
        elapsed = time.perf_counter() - start
        assert answer is not None and answer.payload == b"ok", answer
        return sent / elapsed
    finally:
        client.close()


def download(port: int, size: int) -> float:
    client = WsClient.connect(port, f"/ws/source/{size}", timeout=60)
    expected = size // FRAME * (FRAME + 10)  # 64 KiB unmasked: a 10-byte header
    try:
        start = time.perf_counter()
        # What the handshake's read already held: whole frames, and a partial one.
        got = sum(len(f.payload) + 10 for f in client.frames) + len(client.reader.buffer)
        client.frames.clear()
        while got < expected:
            chunk = client.sock.recv(1 << 20)
            assert chunk, "the tunnel closed early"
            got += len(chunk)
        elapsed = time.perf_counter() - start
        assert got == expected
        return size // FRAME * FRAME / elapsed
    finally:
        client.close()


def measure(mib: int, rounds: int) -> dict[str, list[float]]:
    parent, child = multiprocessing.Pipe()
    upstream = multiprocessing.get_context("fork").Process(target=_serve, args=(child,), daemon=True)
    upstream.start()
    port = parent.recv()
    rates: dict[str, list[float]] = {"upload": [], "download": []}
    with tempfile.TemporaryDirectory() as tmp:
        gw = GatewayProcess(Path(tmp), CONFIG.format(port=port)).start()
        try:
            for _ in range(rounds):
                rates["upload"].append(upload(gw.port, mib << 20))
                rates["download"].append(download(gw.port, mib << 20))
        finally:
            gw.stop()
            upstream.terminate()
            upstream.join(5)
    return rates


def test_ws_tunnel_bulk_transfer():
    rates = measure(32, 1)
    assert all(r > 0 for r in rates["upload"] + rates["download"])


if __name__ == "__main__":
    mib = int(sys.argv[1]) if len(sys.argv) > 1 else 256
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 5
    for direction, values in measure(mib, rounds).items():
        print(f"{direction}: median {statistics.median(values) / 1e6:.0f} MB/s over {rounds} rounds "
              f"of {mib} MiB ({', '.join(f'{v / 1e6:.0f}' for v in values)})")
