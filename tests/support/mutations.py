"""Byte-level mutations for the hypothesis tests of the HTTP parsers (the protocol fuzz and the
differential tests of the _core head parsers): one place for how well-formed messages are
bent into hostile ones."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from hypothesis import strategies as st

Draw = Callable[[st.SearchStrategy[Any]], Any]


def mutate_once(draw: Draw, data: bytearray, nasty: Sequence[bytes], max_delete: int) -> bytearray:
    """One mutation: flip a byte, insert a nasty piece, delete a few bytes, or truncate."""
    op = draw(st.integers(0, 3))
    pos = draw(st.integers(0, len(data)))
    if op == 0 and pos < len(data):
        data[pos] = draw(st.integers(0, 255))
    elif op == 1:
        data[pos:pos] = draw(st.sampled_from(nasty))
    elif op == 2 and pos < len(data):
        del data[pos : pos + draw(st.integers(1, max_delete))]
    else:
        data = data[: pos or len(data)]
    return data


def mutated(draw: Draw, seeds: Sequence[bytes], nasty: Sequence[bytes], *, most: int,
            max_delete: int) -> bytes:
    """A seed with up to `most` mutations."""
    data = bytearray(draw(st.sampled_from(seeds)))
    for _ in range(draw(st.integers(0, most))):
        data = mutate_once(draw, data, nasty, max_delete)
    return bytes(data)


def random_case(draw: Draw, name: bytes) -> bytes:
    """`name` with the case of each letter drawn (header names are case-insensitive)."""
    flips = draw(st.lists(st.booleans(), min_size=len(name), max_size=len(name)))
    return bytes(c ^ 0x20 if f and chr(c).isalpha() else c for c, f in zip(name, flips, strict=True))
