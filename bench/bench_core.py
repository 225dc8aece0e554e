"""fluxgate._core against pure-Python / stdlib peers on the same inputs (``pytest bench/``)."""

from __future__ import annotations

import base64
import mmap
import multiprocessing
import posixpath
import random
import re
import string
from urllib.parse import unquote

import pytest

from fluxgate._core import Counters, b64url_decode, b64url_encode, normalize_path

TYPICAL_PATH = b"/api/v2/payments/charges/ch_3NqFdK2eZvKYlo2C1gqX7zXP/refunds"
MESSY_PATH = b"/api//v2/./payments/%7Euser/charges/../refunds/%3a%41/"
MESSY_EXPECTED = b"/api/v2/payments/~user/refunds/%3AA/"

JWT_SEGMENT_RAW = random.Random(7).randbytes(225)
JWT_SEGMENT = b64url_encode(JWT_SEGMENT_RAW)  # 300 characters, like a JWT payload
assert len(JWT_SEGMENT) == 300


# ---- the pure-Python peer: stdlib building blocks, with less validation than _core -------

_ESCAPE = re.compile(r"%[0-9A-Fa-f]{2}")
_UNRESERVED = frozenset(string.ascii_letters + string.digits + "-._~")


def _normalize_escape(match: re.Match[str]) -> str:
    char = unquote(match.group())
    return char if char in _UNRESERVED else match.group().upper()


def py_normalize_path(raw: bytes) -> bytes:
    path = raw.decode("ascii")
    if not path.startswith("/") or not path.isprintable() or any(c in path for c in " \\#"):
        raise ValueError("bad path")
    lowered = path.lower()
    if "%2f" in lowered or "%5c" in lowered:
        raise ValueError("ambiguous path")
    decoded = _ESCAPE.sub(_normalize_escape, path)
    normalized = posixpath.normpath(decoded)  # clamps "/.." to "/": no above-root check
    if normalized.startswith("//"):
        normalized = normalized[1:]
    if normalized != "/" and decoded.endswith(("/", "/.", "/..")):
        normalized += "/"
    return normalized.encode("ascii")


def py_b64url_decode(data: bytes) -> bytes:
    return base64.urlsafe_b64decode(data + b"=" * (-len(data) % 4))


# ---- benchmarks ---------------------------------------------------------------------------


@pytest.mark.benchmark(group="normalize_path: already normal")
def test_normalize_typical_fluxgate(benchmark, record_impl):
    assert benchmark(normalize_path, TYPICAL_PATH) is TYPICAL_PATH
    record_impl("fluxgate")


@pytest.mark.benchmark(group="normalize_path: already normal")
def test_normalize_typical_python(benchmark, record_impl):
    assert benchmark(py_normalize_path, TYPICAL_PATH) == TYPICAL_PATH
    record_impl("python")


@pytest.mark.benchmark(group="normalize_path: needs work")
def test_normalize_messy_fluxgate(benchmark, record_impl):
    assert benchmark(normalize_path, MESSY_PATH) == MESSY_EXPECTED
    record_impl("fluxgate")


@pytest.mark.benchmark(group="normalize_path: needs work")
def test_normalize_messy_python(benchmark, record_impl):
    assert benchmark(py_normalize_path, MESSY_PATH) == MESSY_EXPECTED
    record_impl("python")


@pytest.mark.benchmark(group="b64url_decode: 300 chars")
def test_b64url_decode_fluxgate(benchmark, record_impl):
    assert benchmark(b64url_decode, JWT_SEGMENT) == JWT_SEGMENT_RAW
    record_impl("fluxgate")


@pytest.mark.benchmark(group="b64url_decode: 300 chars")
def test_b64url_decode_python(benchmark, record_impl):
    assert benchmark(py_b64url_decode, JWT_SEGMENT) == JWT_SEGMENT_RAW
    record_impl("base64.urlsafe_b64decode")


@pytest.mark.benchmark(group="shared counter increment")
def test_counters_add_fluxgate(benchmark, record_impl):
    mm = mmap.mmap(-1, 4096)
    counters = Counters(mm)
    last = benchmark(counters.add, 3)
    assert last == counters.load(3) > 0
    record_impl("fluxgate")
    counters.release()
    mm.close()


@pytest.mark.benchmark(group="shared counter increment")
def test_counters_add_multiprocessing_value(benchmark, record_impl):
    # The stdlib way to share a counter with forked workers: a lock-protected Value.
    value = multiprocessing.get_context("fork").Value("Q", 0)

    def add() -> int:
        with value.get_lock():
            value.value += 1
            return value.value

    last = benchmark(add)
    assert last == value.value > 0
    record_impl("multiprocessing.Value")
