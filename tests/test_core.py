"""fluxgate._core: request paths, base64url, shared counters (see the _core.pyx docstring)."""

from __future__ import annotations

import ast
import base64
import codecs
import mmap
import os
import random
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from fluxgate import _core, errors
from fluxgate._core import (
    B64Error,
    Counters,
    PathError,
    b64url_decode,
    b64url_encode,
    normalize_path,
)
from tests.support.gateway import run_in_children

ROOT = Path(__file__).resolve().parents[1]
PATH_CASES = Path(__file__).with_name("data") / "paths.txt"

# Keyword in tests/data/paths.txt -> a fragment of the PathError message it must carry,
# so a case fails if a different rule than the intended one rejects it.
REASONS = {
    "empty": "empty path",
    "absolute": "must start with '/'",
    "byte": "non-ASCII byte",
    "backslash": "backslash in path",
    "encoded-backslash": "(%5C)",
    "fragment": "'#'",
    "escape": "invalid percent-escape",
    "slash": "(%2F)",
    "control": "encoded control",
    "dot-segment": "spelled with %2E",
    "dot-params": "';' parameters",
    "above-root": "above the root",
    "double-encoded": "(%25XX)",
}


# ---- request paths: data-driven cases ---------------------------------------------------


def _unescape(text: str) -> bytes:
    return b"" if text == "<empty>" else codecs.escape_decode(text.encode("ascii"))[0]


def _load_path_cases() -> list:
    cases = []
    for lineno, line in enumerate(PATH_CASES.read_text("ascii").splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        raw, sep, expected = line.partition(" -> ")
        assert sep and raw == raw.strip() and expected == expected.strip(), (lineno, line)
        cases.append(pytest.param(_unescape(raw), expected, id=f"L{lineno}:{raw}"))
    return cases


PATHS = _load_path_cases()


def test_path_case_file_is_substantial():
    assert len(PATHS) >= 60
    errors_ = [p for p in PATHS if p.values[1].startswith("ERROR")]
    assert {p.values[1].split()[1] for p in errors_} == set(REASONS)


@pytest.mark.parametrize(("raw", "expected"), PATHS)
def test_normalize_path_case(raw: bytes, expected: str):
    if expected.startswith("ERROR"):
        reason = REASONS[expected.split()[1]]
        with pytest.raises(PathError) as exc:
            normalize_path(raw)
        assert reason in str(exc.value)
        return
    out = normalize_path(raw)
    if expected == "=":
        assert out is raw  # unchanged: no new object
    else:
        assert out == _unescape(expected)
        assert out is not raw
    assert normalize_path(out) is out  # idempotent, and already-normal costs nothing


def test_path_error_is_a_client_facing_value_error():
    with pytest.raises(ValueError) as exc:
        normalize_path(b"/a%2Fb")
    err = exc.value
    assert isinstance(err, PathError) and isinstance(err, errors.BadRequest)
    assert (err.status, err.code) == (400, "bad_request")
    assert PathError is errors.PathError and B64Error is errors.B64Error


@pytest.mark.parametrize("bad", ["/a", None, bytearray(b"/a"), memoryview(b"/a"), 1])
def test_normalize_path_takes_bytes_only(bad):
    with pytest.raises(TypeError):
        normalize_path(bad)


def test_long_paths_beyond_the_stack_buffer():
    plain = b"/" + b"a" * 9000
    assert normalize_path(plain) is plain
    climb = b"/" + b"seg/" * 2000 + b"../" * 2000 + b"x%7e"
    assert normalize_path(climb) == b"/x~"
    with pytest.raises(PathError, match="above the root"):
        normalize_path(b"/a" * 3000 + b"/.." * 3001)
    with pytest.raises(PathError, match="percent-escape"):
        normalize_path(b"/" + b"b" * 5000 + b"%")


# ---- request paths: properties ----------------------------------------------------------

_PATH_TOKENS = st.sampled_from(
    b"/ // . .. %2e %2E %2f %5c %00 %41 %7e %3a %3B %c3%a9 %25 %252e 2f %32 % %g a b ~ ; x.y \\ #"
    .split()
    + [b" ", b"\x80"]
)
_PATHS = st.one_of(
    st.lists(_PATH_TOKENS, max_size=12).map(lambda t: b"/" + b"".join(t)),
    st.lists(_PATH_TOKENS, max_size=12).map(b"".join),
    st.binary(max_size=40),
    st.binary(max_size=40).map(lambda b: b"/" + b),
)
_UNRESERVED = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")


def _normalized_or_none(raw: bytes) -> bytes | None:
    try:
        return normalize_path(raw)
    except PathError:
        return None


def _assert_normal_form(out: bytes) -> None:
    assert out.startswith(b"/")
    assert all(0x21 <= c < 0x7F and c not in b"\\#" for c in out)
    for bad in (b"//", b"/./", b"/../"):
        assert bad not in out
    assert not out.endswith((b"/.", b"/.."))
    assert b"%2F" not in out.upper() and b"%5C" not in out.upper()
    i = out.find(b"%")
    while i != -1:
        escape = out[i + 1 : i + 3]
        assert escape == escape.upper() and len(escape) == 2
        assert int(escape, 16) not in _UNRESERVED
        if escape == b"25":  # no second decoding can make '.', '/', '\\', '%' or a control
            after = out[i + 3 : i + 5]
            assert not (len(after) == 2 and all(c in b"0123456789abcdefABCDEF" for c in after)
                        and (int(after, 16) in b"./\\%" or int(after, 16) < 0x20
                             or int(after, 16) == 0x7F))
        i = out.find(b"%", i + 3)


@settings(max_examples=3000, suppress_health_check=[HealthCheck.too_slow])
@given(_PATHS)
@example(b"/a/%2e%2e/..")
@example(b"/%2e./../")
def test_normalize_path_properties(raw: bytes):
    out = _normalized_or_none(raw)  # anything but PathError propagates and fails
    if out is None:
        return
    _assert_normal_form(out)
    assert normalize_path(out) is out


@st.composite
def _normal_paths(draw) -> bytes:
    segment = st.text(alphabet="abcXYZ019-._~:@!$&'()*+,=", min_size=1, max_size=6).filter(
        lambda s: s not in (".", "..")
    )
    parts = draw(st.lists(segment, max_size=5))
    return ("/" + "/".join(parts) + draw(st.sampled_from(["", "/"]))).replace("//", "/").encode()


@given(_normal_paths(), st.data())
def test_encoding_unreserved_characters_changes_nothing(path: bytes, data):
    assert normalize_path(path) is path
    out = bytearray()
    for c in path:
        if c in _UNRESERVED and c != ord(".") and data.draw(st.booleans()):
            hexed = f"%{c:02X}" if data.draw(st.booleans()) else f"%{c:02x}"
            out += hexed.encode()
        else:
            out.append(c)
    assert normalize_path(bytes(out)) == path


@given(_normal_paths(), st.data())
def test_inserting_dot_segments_and_slashes_changes_nothing(path: bytes, data):
    cuts = [i for i in range(1, len(path) + 1) if path[i - 1] == ord("/")]
    at = data.draw(st.sampled_from(cuts))
    insert = data.draw(st.sampled_from([b"./", b"/", b"x/../", b"a/b/../../", b".//"]))
    assert normalize_path(path[:at] + insert + path[at:]) == path


# ---- base64url ----------------------------------------------------------------------------

RFC4648_VECTORS = [  # RFC 4648 §10, padding removed (§3.2 allows omitting it)
    (b"", b""),
    (b"f", b"Zg"),
    (b"fo", b"Zm8"),
    (b"foo", b"Zm9v"),
    (b"foob", b"Zm9vYg"),
    (b"fooba", b"Zm9vYmE"),
    (b"foobar", b"Zm9vYmFy"),
    (b"\xfb\xff", b"-_8"),  # the two URL-alphabet characters (RFC 4648 §5)
    (b"\xfb\xff\xbf", b"-_-_"),
    (b"\x00\x00\x00", b"AAAA"),
    (b'{"alg":"RS256","typ":"JWT"}', b"eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCJ9"),
]


@pytest.mark.parametrize(("raw", "encoded"), RFC4648_VECTORS)
def test_b64url_known_answers(raw: bytes, encoded: bytes):
    assert b64url_encode(raw) == encoded
    assert b64url_decode(encoded) == raw


@pytest.mark.parametrize(
    ("bad", "reason"),
    [
        (b"Zg==", "character at offset 2"),  # padding is refused
        (b"Zm8=", "character at offset 3"),
        (b"Zg=", "character at offset 2"),
        (b"Zm9vYg==", "character at offset 6"),
        (b"+/8", "character at offset 0"),  # standard alphabet, not URL
        (b"Zm9+", "character at offset 3"),
        (b"Zm9/", "character at offset 3"),
        (b" Zm9v", "length"),
        (b"Zm9v\n", "length"),
        (b"Zm 9v", "length"),
        (b"Zm9v Zg", "character at offset 4"),
        (b"Zm9\tYg", "character at offset 3"),
        (b"Z", "length"),
        (b"Zm9vY", "length"),
        (b"Zm9vYmFyZ", "length"),
        (b"QR", "non-canonical"),  # b"A" is "QQ"
        (b"Zh", "non-canonical"),  # b"f" is "Zg"
        (b"Zm9", "non-canonical"),  # b"fo" is "Zm8"
        (b"-_9", "non-canonical"),  # b"\xfb\xff" is "-_8"
        (b"Zm9v\x00Zg", "character at offset 4"),
        (b"Zm9v\xffZg", "character at offset 4"),
        (b"Zm9v.Zg", "character at offset 4"),
    ],
)
def test_b64url_is_strict(bad: bytes, reason: str):
    with pytest.raises(B64Error) as exc:
        b64url_decode(bad)
    assert isinstance(exc.value, ValueError)
    assert reason in str(exc.value)


@pytest.mark.parametrize("fn", [b64url_decode, b64url_encode])
@pytest.mark.parametrize("bad", ["Zm9v", None, bytearray(b"Zm9v"), memoryview(b"Zm9v")])
def test_b64url_takes_bytes_only(fn, bad):
    with pytest.raises(TypeError):
        fn(bad)


def _reference_b64url_decode(s: bytes) -> bytes | None:
    """Python's strict decoder plus the URL-alphabet and canonical-form checks."""
    alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    if len(s) % 4 == 1 or any(c not in alphabet for c in s):
        return None
    decoded = base64.b64decode(s + b"=" * (-len(s) % 4), altchars=b"-_", validate=True)
    if base64.urlsafe_b64encode(decoded).rstrip(b"=") != s:
        return None  # non-zero unused bits
    return decoded


@settings(max_examples=2000)
@given(st.binary(max_size=400))
def test_b64url_round_trip_matches_python(raw: bytes):
    encoded = b64url_encode(raw)
    assert encoded == base64.urlsafe_b64encode(raw).rstrip(b"=")
    assert b64url_decode(encoded) == raw


_B64_JUNK = st.lists(st.sampled_from(list(b"AQgwZz09-_+/= \n.") + [0, 0xFF]), max_size=40).map(
    bytes
)


@settings(max_examples=3000)
@given(st.one_of(_B64_JUNK, st.binary(max_size=40)))
@example(b"QR")
@example(b"AB")
@example(b"AAA=")
def test_b64url_decode_matches_python_differentially(s: bytes):
    expected = _reference_b64url_decode(s)
    if expected is None:
        with pytest.raises(B64Error):
            b64url_decode(s)
    else:
        assert b64url_decode(s) == expected


def test_b64url_decode_every_byte_at_every_offset():
    # The decoder takes 16 characters a step where the CPU allows (SSSE3) and then 4 at
    # a time: every byte value at every position of a 74-character part (four blocks, two
    # quads and a 2-character tail) is accepted or refused as Python's strict decoder is.
    valid = base64.urlsafe_b64encode(random.Random(7).randbytes(54)) + b"Aw"
    assert len(valid) == 74 and b64url_decode(valid) == _reference_b64url_decode(valid)
    for offset in range(len(valid)):
        for byte in range(256):
            s = valid[:offset] + bytes([byte]) + valid[offset + 1:]
            expected = _reference_b64url_decode(s)
            if expected is None:
                with pytest.raises(B64Error):
                    b64url_decode(s)
            else:
                assert b64url_decode(s) == expected, (offset, byte)


# ---- shared counters ----------------------------------------------------------------------


@pytest.fixture
def shared_file(tmp_path):
    path = tmp_path / "counters.bin"
    path.write_bytes(b"\x00" * 4096)
    with path.open("r+b") as f:
        mm = mmap.mmap(f.fileno(), 4096)  # MAP_SHARED
    yield path, mm
    mm.close()


@pytest.fixture
def counters(shared_file):
    c = Counters(shared_file[1])
    yield c
    c.release()  # before shared_file closes the mapping, even when a test failed


def test_counters_exact_across_forked_processes(shared_file, counters):
    path, mm = shared_file
    slot, workers, per_worker = 5, 4, 100_000
    def count() -> bool:
        last = 0
        for _ in range(per_worker):
            new = counters.add(slot)
            if new <= last:  # a process sees its own increments in order
                return False
            last = new
        return True

    for code in run_in_children(workers, count):
        assert code == 0
    total = workers * per_worker
    assert counters.load(slot) == total
    assert counters.load(slot - 1) == counters.load(slot + 1) == 0
    counters.release()
    mm.flush()
    # The count is in the file itself, native-endian, at offset slot * 8.
    assert struct.unpack_from("=Q", path.read_bytes(), slot * 8)[0] == total


def test_counters_operations(shared_file, counters):
    _, mm = shared_file
    c = counters
    assert len(c) == 4096 // 8
    assert c.add(0) == 1 and c.add(0, 41) == 42 and c.load(0) == 42
    assert c.add(0, 0) == 42
    c.store(1, 10)
    assert c.load(1) == 10
    assert struct.unpack_from("=Q", mm, 8)[0] == 10  # a plain view sees the same bytes
    assert c.compare_exchange(1, 10, 20) is True and c.load(1) == 20
    assert c.compare_exchange(1, 10, 30) is False and c.load(1) == 20
    top = 2**64 - 1
    c.store(2, top)
    assert c.load(2) == top
    assert c.compare_exchange(2, top, 7) is True and c.load(2) == 7
    c.store(3, top)
    assert c.add(3) == 0  # wraps modulo 2**64
    last = len(c) - 1
    assert c.add(last, 3) == 3 and struct.unpack_from("=Q", mm, 4096 - 8)[0] == 3


def test_counters_bounds_and_value_ranges(counters):
    c = counters
    for slot in (-1, len(c), len(c) + 100, -len(c)):
        with pytest.raises(IndexError):
            c.add(slot)
        with pytest.raises(IndexError):
            c.load(slot)
        with pytest.raises(IndexError):
            c.store(slot, 1)
        with pytest.raises(IndexError):
            c.compare_exchange(slot, 0, 1)
    with pytest.raises(OverflowError):
        c.add(0, -1)
    with pytest.raises(OverflowError):
        c.store(0, 2**64)
    with pytest.raises(OverflowError):
        c.compare_exchange(0, -1, 0)
    assert c.load(0) == 0


def test_counters_refuse_unsuitable_buffers(tmp_path):
    path = tmp_path / "ro.bin"
    path.write_bytes(b"\x00" * 64)
    with path.open("rb") as f:
        ro = mmap.mmap(f.fileno(), 64, access=mmap.ACCESS_READ)
    with pytest.raises(BufferError):
        Counters(ro)
    ro.close()
    with pytest.raises(BufferError):
        Counters(b"\x00" * 64)
    anon = mmap.mmap(-1, 64)
    with pytest.raises(ValueError, match="aligned"):
        Counters(memoryview(anon)[4:36])
    with pytest.raises(ValueError, match="multiple of 8"):
        Counters(memoryview(anon)[:12])
    with pytest.raises(ValueError, match="multiple of 8"):
        Counters(bytearray())
    with pytest.raises(TypeError):
        Counters(42)
    assert len(Counters(memoryview(anon)[8:40])) == 4
    anon.close()  # the failed and finished constructions released their exports


def test_counters_pin_the_mapping_until_released(shared_file, counters):
    _, mm = shared_file
    c = counters
    c.store(0, 9)
    with pytest.raises(BufferError):
        mm.close()  # the export keeps the mapping alive under the raw pointer
    c.release()
    c.release()  # idempotent
    assert len(c) == 0
    with pytest.raises(IndexError):
        c.load(0)
    assert struct.unpack_from("=Q", mm, 0)[0] == 9


# ---- the module's contract --------------------------------------------------------------


def test_stub_matches_module():
    stub = ast.parse((ROOT / "fluxgate" / "_core.pyi").read_text())
    names = {node.name for node in stub.body if isinstance(node, ast.FunctionDef | ast.ClassDef)}
    assert names | {"B64Error", "PathError", "TokenError"} == set(_core.__all__)
    counters = next(n for n in stub.body if isinstance(n, ast.ClassDef))
    for method in counters.body:
        if isinstance(method, ast.FunctionDef):
            assert hasattr(Counters, method.name), method.name


def test_proxy_stub_matches_module():
    """fluxgate/_proxy.pyi names what the compiled data plane defines, members included."""
    from fluxgate import _proxy

    stub = ast.parse((ROOT / "fluxgate" / "_proxy.pyi").read_text())
    for node in stub.body:
        if isinstance(node, ast.ClassDef | ast.FunctionDef):
            assert hasattr(_proxy, node.name), node.name
        elif isinstance(node, ast.AnnAssign):
            assert hasattr(_proxy, node.target.id), node.target.id
        if isinstance(node, ast.ClassDef):
            for member in node.body:
                name = member.target.id if isinstance(member, ast.AnnAssign) else (
                    member.name if isinstance(member, ast.FunctionDef) else None)
                if name is not None:
                    assert hasattr(getattr(_proxy, node.name), name), f"{node.name}.{name}"


def test_c_api_is_exported_for_cimport():
    capi = _core.__pyx_capi__
    for name in ("normalize_path_into", "b64url_decode_into", "b64url_encode_into"):
        assert name in capi


def test_cython_lint_is_clean():
    pytest.importorskip("cython_lint")
    bindir = Path(sys.executable).parent  # cython-lint runs pycodestyle from PATH
    exe = shutil.which("cython-lint", path=str(bindir)) or shutil.which("cython-lint")
    assert exe, "cython-lint is in the test extra"
    env = {**os.environ, "PATH": f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}"}
    result = subprocess.run(
        [
            exe,
            "--max-line-length",
            "100",  # as ruff's line-length in pyproject.toml
            *sorted(
                str(p.relative_to(ROOT))
                for pattern in ("_*.pyx", "_*.pxd", "_*.pxi")  # _core, _proxy and their pieces
                for p in (ROOT / "fluxgate").glob(pattern)
            ),
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
