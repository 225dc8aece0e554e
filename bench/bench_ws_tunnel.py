"""Bulk transfer through a WebSocket tunnel: MB/s each way through a 1-worker gateway.

The gateway follows frame boundaries in both directions of a tunnel (fluxgate/_proxy.pyx,
FrameTracker); this measures what that costs on a large transfer. The client sends
pre-masked binary frames (64 KiB unless said) to an upstream that only counts bytes
(upload), and reads frames of the same size an upstream writes as fast as it can
(download). Neither end parses frames, so the figure is the gateway's. Small frames are
the tracker's worst case: many headers per read, some split across two reads.

    .venv/bin/python -m bench.bench_ws_tunnel [MiB] [rounds] [frame bytes]
    .venv/bin/python -m bench.bench_ws_tunnel tracker


prints the median MB/s of each direction and the worker's CPU-seconds per GiB moved (the
steadier figure on a shared machine); ``pytest bench/bench_ws_tunnel.py`` runs a short
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

import pytest

from bench.support.cpu import cpu_seconds
from fluxgate._proxy import FrameTracker
from tests.support.gateway import GatewayProcess, child_pids
from tests.support.websocket import OP_BINARY, WsClient, encode

FRAME = 64 * 1024  # payload bytes per frame (a command-line argument may change it)
CONFIG = """\
workers: 1
access_log: null
routes:
  - route: /ws
    upstream: http://127.0.0.1:{port}
    public: true
"""


def header_size(payload: int, masked: bool) -> int:
    """RFC 6455 §5.2: 2 bytes, the extended length, the masking key."""
    return 2 + (0 if payload < 126 else 2 if payload < 1 << 16 else 8) + (4 if masked else 0)


def _serve(port_out, frame_size: int) -> None:
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
                    per_write = max(1, FRAME // frame_size)
                    frames = encode(OP_BINARY, b"s" * frame_size, mask=False) * per_write
                    for _ in range(self.want // (per_write * frame_size)):
                        self.transport.write(frames)
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


def upload(port: int, size: int, frame_size: int) -> float:
    """Payload bytes per second pushed through the tunnel, once the upstream has them all."""
    per_block = max(1, (1 << 20) // frame_size)
    block = encode(OP_BINARY, b"u" * frame_size, mask=True) * per_block
    blocks = size // (per_block * frame_size)
    client = WsClient.connect(port, f"/ws/sink/{blocks * len(block)}", timeout=60)
    try:
        start = time.perf_counter()
        for _ in range(blocks):
            client.send_raw(block)
        sent = blocks * per_block * frame_size
        answer = client.recv_frame()
        elapsed = time.perf_counter() - start
        assert answer is not None and answer.payload == b"ok", answer
        return sent / elapsed
    finally:
        client.close()


def download(port: int, size: int, frame_size: int) -> float:
    per_write = max(1, FRAME // frame_size)
    writes = size // (per_write * frame_size)
    header = header_size(frame_size, False)
    client = WsClient.connect(port, f"/ws/source/{writes * per_write * frame_size}", timeout=60)
    expected = writes * per_write * (frame_size + header)
    try:
        start = time.perf_counter()
        # What the handshake's read already held: whole frames, and a partial one.
        got = sum(len(f.payload) + header for f in client.frames) + len(client.reader.buffer)
        client.frames.clear()
        while got < expected:
            chunk = client.sock.recv(1 << 20)
            assert chunk, "the tunnel closed early"
            got += len(chunk)
        elapsed = time.perf_counter() - start
        assert got == expected
        return writes * per_write * frame_size / elapsed
    finally:
        client.close()


def measure(mib: int, rounds: int, frame_size: int = FRAME) -> dict[str, list[float]]:
    parent, child = multiprocessing.Pipe()
    upstream = multiprocessing.get_context("fork").Process(target=_serve, args=(child, frame_size),
                                                           daemon=True)
    upstream.start()
    port = parent.recv()
    rates: dict[str, list[float]] = {"upload": [], "download": [],
                                     "upload CPU": [], "download CPU": []}
    with tempfile.TemporaryDirectory() as tmp:
        gw = GatewayProcess(Path(tmp), CONFIG.format(port=port)).start()
        worker = sorted(child_pids(gw.proc.pid))
        try:
            for _ in range(rounds):
                for direction, run in (("upload", upload), ("download", download)):
                    # The worker's CPU per GiB moved: what the tunnel costs, whatever else
                    # the machine runs meanwhile (the MB/s depend on that too).
                    before = cpu_seconds(worker)
                    rates[direction].append(run(gw.port, mib << 20, frame_size))
                    rates[direction + " CPU"].append((cpu_seconds(worker) - before) * 1024 / mib)
        finally:
            gw.stop()
            upstream.terminate()
            upstream.join(5)
    return rates


def tracker_cost(frame_size: int, mib: int = 64, repeat: int = 7) -> tuple[float, int]:
    """(best seconds, frames) for FrameTracker.feed_bytes over ``mib`` MiB of masked frames
    in 64 KiB reads, without the network. An upper bound of the tracker's cost: feed_bytes
    copies a read that ends inside a header, where the tunnel passes a memoryview."""
    frame = encode(OP_BINARY, b"x" * frame_size, mask=True)
    stream = frame * ((mib << 20) // len(frame))
    reads = [stream[i : i + FRAME] for i in range(0, len(stream), FRAME)]
    best = float("inf")
    for _ in range(repeat):
        tracker = FrameTracker(True)
        start = time.perf_counter()
        for data in reads:
            tracker.feed_bytes(data)
        best = min(best, time.perf_counter() - start)
    assert not tracker.violation
    return best, len(stream) // len(frame)


@pytest.mark.parametrize("frame_size", [FRAME, 200])
def test_ws_tunnel_bulk_transfer(frame_size):
    rates = measure(16, 1, frame_size)
    assert all(r > 0 for r in rates["upload"] + rates["download"])  # every byte arrived


def print_tracker_cost() -> None:
    for frame_size in (FRAME, 200):
        seconds, frames = tracker_cost(frame_size)
        print(f"FrameTracker, 64 MiB in {frame_size}-byte frames ({frames} frames), 64 KiB reads: "
              f"{seconds * 1e3:.2f} ms, {seconds / frames * 1e9:.1f} ns per frame, "
              f"{(64 << 20) / seconds / 1e9:.1f} GB/s")


if __name__ == "__main__" and sys.argv[1:] == ["tracker"]:
    print_tracker_cost()
elif __name__ == "__main__":
    mib = int(sys.argv[1]) if len(sys.argv) > 1 else 256
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 5
    frame_size = int(sys.argv[3]) if len(sys.argv) > 3 else FRAME
    for name, values in measure(mib, rounds, frame_size).items():
        if name.endswith("CPU"):
            print(f"{name}: median {statistics.median(values):.2f} worker CPU-seconds per GiB "
                  f"({', '.join(f'{v:.2f}' for v in values)})")
        else:
            print(f"{name}: median {statistics.median(values) / 1e6:.0f} MB/s over {rounds} rounds "
                  f"of {mib} MiB in {frame_size}-byte frames "
                  f"({', '.join(f'{v / 1e6:.0f}' for v in values)})")
