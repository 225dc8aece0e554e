"""The tunnel's frame tracker (fluxgate/_proxy.pyx, FrameTracker) on its own: bytes pass
unchanged whatever the split of reads, a stop falls on a frame boundary, broken framing
stops everything at the start of the bad frame."""

from __future__ import annotations

import random
import struct

import pytest

from fluxgate._proxy import FrameTracker
from tests.support.websocket import OP_BINARY, OP_CLOSE, OP_CONT, OP_PING, OP_TEXT, encode


def stream(from_client: bool, rng: random.Random, count: int = 60) -> tuple[bytes, list[int]]:
    """Valid frames (fragmented messages, pings in between, all length encodings) and the
    offsets where each frame ends."""
    out, ends = b"", []
    for _ in range(count):
        size = rng.choice([0, 1, 125, 126, 127, 300, 65535, 65536, 70000])
        kind = rng.random()
        if kind < 0.2:
            parts = [(OP_TEXT, False), (OP_PING, True), (OP_CONT, False), (OP_CONT, True)]
        else:
            parts = [(OP_BINARY, True)]
        for opcode, fin in parts:
            payload = bytes(rng.getrandbits(8) for _ in range(min(size, 125) if opcode >= 8 else 0))
            payload = payload if opcode >= 8 else rng.randbytes(size)
            out += encode(opcode, payload, mask=from_client, fin=fin)
            ends.append(len(out))
    return out, ends


def splits(data: bytes, rng: random.Random) -> list[bytes]:
    pieces, at = [], 0
    while at < len(data):
        step = rng.choice([1, 2, 3, 7, 13, 14, 100, 4096, 65536])
        pieces.append(data[at : at + step])
        at += step
    return pieces


@pytest.mark.parametrize("from_client", [True, False], ids=["client", "upstream"])
@pytest.mark.parametrize("seed", range(4))
def test_bytes_pass_unchanged_in_any_split(from_client, seed):
    rng = random.Random(seed)
    data, _ = stream(from_client, rng)
    tracker = FrameTracker(from_client)
    forwarded = b"".join(tracker.feed_bytes(piece) for piece in splits(data, rng))
    assert forwarded == data
    assert not tracker.violation


@pytest.mark.parametrize("seed", range(4))
def test_a_drain_stops_at_the_next_frame_end(seed):
    rng = random.Random(seed)
    data, ends = stream(True, rng)
    pieces = splits(data, rng)
    cut = rng.randrange(len(pieces))
    tracker = FrameTracker(True)
    forwarded = b"".join(tracker.feed_bytes(p) for p in pieces[:cut])
    forwarded += b"".join(tracker.feed_bytes(p, True) for p in pieces[cut:])
    assert tracker.stopped
    # What passed is whole frames, as many as had begun to pass.
    assert len(forwarded) in [0, *ends]
    assert data.startswith(forwarded)
    assert len(forwarded) >= sum(len(p) for p in pieces[:cut]) - 13  # only a held header


def test_a_close_after_the_stop_is_seen_not_forwarded():
    tracker = FrameTracker(True)
    assert tracker.feed_bytes(encode(OP_TEXT, b"hi", mask=True)) != b""
    assert tracker.feed_bytes(encode(OP_CLOSE, struct.pack("!H", 1000), mask=True), True) == b""
    assert tracker.stopped and tracker.close_seen and not tracker.close_forwarded


HOSTILE = {
    "unmasked client frame": (True, encode(OP_TEXT, b"hello", mask=False)),
    "masked server frame": (False, encode(OP_TEXT, b"hello", mask=True)),
    "reserved opcode 3": (True, encode(3, b"x", mask=True)),
    "reserved control opcode 11": (True, encode(11, b"", mask=True)),
    "64-bit length with the top bit set": (True, encode(OP_BINARY, b"", mask=True, length=1 << 63)),
    "control frame over 125 bytes": (True, encode(OP_PING, b"p" * 126, mask=True)),
    "fragmented control frame": (True, encode(OP_PING, b"p", mask=True, fin=False)),
    "continuation without a message": (True, encode(OP_CONT, b"c", mask=True)),
    "new message inside a fragmented one": (
        True, encode(OP_TEXT, b"a", mask=True, fin=False) + encode(OP_TEXT, b"b", mask=True)),
}


@pytest.mark.parametrize("name", list(HOSTILE))
@pytest.mark.parametrize("split", [False, True], ids=["one-read", "byte-by-byte"])
def test_broken_framing_stops_before_the_bad_frame(name, split):
    from_client, bad = HOSTILE[name]
    good = encode(OP_BINARY, b"fine", mask=from_client)
    tracker = FrameTracker(from_client)
    data = good + bad + encode(OP_BINARY, b"after", mask=from_client)
    pieces = [data[k : k + 1] for k in range(len(data))] if split else [data]
    forwarded = b"".join(tracker.feed_bytes(p) for p in pieces)
    assert tracker.violation
    # Everything before the bad frame, nothing of it (a fragment's first frame is fine).
    expected_end = len(good) + (len(encode(OP_TEXT, b"a", mask=True, fin=False))
                                if name == "new message inside a fragmented one" else 0)
    assert forwarded == data[:expected_end]
