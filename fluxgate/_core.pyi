"""What Python sees of fluxgate._core (the Cython hot path; rules in its module docstring)."""

from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

from typing_extensions import Buffer  # collections.abc.Buffer from 3.12

from fluxgate.errors import B64Error as B64Error
from fluxgate.errors import PathError as PathError
from fluxgate.errors import TokenError as TokenError

_T = TypeVar("_T")

__all__ = (
    "IntrospectionCache",
    "sha256",
    "KeyTable",
    "QuotaCounters",
    "extract_api_key",
    "merge_ratelimit",
    "strip_query_param",
    "B64Error",
    "Counters",
    "RequestRecorder",
    "JwtKey",
    "JwtKeySet",
    "JwtPrincipals",
    "JwtVerifier",
    "Principal",
    "PathError",
    "TokenError",
    "b64url_decode",
    "b64url_encode",
    "bearer_token",
    "gc_untrack",
    "jwt_alg_mask",
    "jwt_alg_names",
    "normalize_path",
    "ResponseHead",
    "parse_response_head",
    "response_header_kind",
    "parse_request_head",
    "classify_header",
    "valid_host",
    "ChunkedBody",
    "RequestIds",
    "RequestState",
    "PrefixTable",
    "response_head",
    "upstream_head",
)

def normalize_path(raw: bytes, /) -> bytes:
    """Normalized request path (the same object when unchanged); raises PathError."""

def b64url_decode(data: bytes, /) -> bytes:
    """Strict, unpadded, canonical base64url (RFC 4648 §5); raises B64Error."""

def b64url_encode(data: bytes, /) -> bytes:
    """base64url without padding."""

class Counters:
    """Atomic uint64 slots over a writable, 8-byte aligned buffer (e.g. a shared mmap)."""

    def __init__(self, buffer: Buffer, /) -> None: ...
    def __len__(self) -> int: ...
    def add(self, slot: int, delta: int = 1) -> int: ...
    def load(self, slot: int) -> int: ...
    def store(self, slot: int, value: int) -> None: ...
    def compare_exchange(self, slot: int, expected: int, new: int) -> bool: ...
    def release(self) -> None: ...

class RequestRecorder:
    """The metrics table's per-request update (status, latency bucket, sum) in one C call."""

    def __init__(
        self,
        counters: Counters,
        *,
        header_slots: int,
        block_slots: int,
        capacity: int,
        status_min: int,
        status_max: int,
        buckets: tuple[float, ...],
        buckets_offset: int,
        sum_offset: int,
    ) -> None: ...
    def record(self, route_slot: int, status: int, seconds: float, /) -> None: ...

# ---- JWT verification (rules in fluxgate/_jwt.pxi) ---------------------------------------

def bearer_token(headers: list[tuple[bytes, bytes]], /) -> bytes | None | bool:
    """The Authorization: Bearer token (b"" if empty); None: none; False: several headers."""

def jwt_alg_mask(names: Iterable[str], /) -> int:
    """Bit mask of JWS algorithm names (RS256 ... EdDSA, HS*); ValueError for others."""

def jwt_alg_names(mask: int, /) -> tuple[str, ...]:
    """The algorithm names in a mask."""

class JwtKey:
    """One public key (DER SubjectPublicKeyInfo) prepared for the algorithms in ``algs``."""

    kid: str | None
    algs: int

    def __init__(self, kid: str | None, algs: int, spki_der: bytes) -> None: ...
    def verify_signature(self, alg: str, signing_input: bytes, signature: bytes, /) -> bool:
        """Bare libcrypto verification, no JWT parsing (the benchmark floor)."""

class JwtKeySet:
    """The keys of one JWKS generation, by kid."""

    generation: int

    def __init__(self, keys: Iterable[JwtKey] = (), generation: int = 0) -> None: ...
    def __len__(self) -> int: ...
    def __iter__(self) -> Iterator[JwtKey]: ...
    def __contains__(self, kid: object) -> bool: ...

def gc_untrack(obj: _T, /) -> _T:
    """``obj`` taken out of the cycle collector; only for objects in no reference cycle."""

class Principal:
    """An authenticated caller (fluxgate/auth/principal.py); treat as immutable."""

    id: str
    method: str
    subject: str
    scopes: frozenset[str]
    key_name: str | None
    claims_headers: tuple[tuple[bytes, bytes], ...]
    upstream_lines: bytes
    """The X-FluxGate-* headers, formatted as the upstream request head carries them."""

    def __init__(
        self,
        id: str,  # noqa: A002 - the stable identity quotas count by
        method: str,
        subject: str,
        scopes: frozenset[str] = ...,
        key_name: str | None = None,
        claims_headers: tuple[tuple[bytes, bytes], ...] = (),
    ) -> None: ...
    def upstream_headers(self) -> list[tuple[bytes, bytes]]:
        """The X-FluxGate-* headers the upstream receives."""

class JwtPrincipals:
    """A jwt route's ``prepare``: the shared Principal of a verified token's claims."""

    def __init__(
        self,
        forward: Iterable[tuple[str, bytes]],
        scopes_of: Callable[[dict[str, Any]], frozenset[str]],
        header_value: Callable[[Any], bytes | None],
        limit: int = 4096,
    ) -> None: ...
    def __call__(self, claims: dict[str, Any], /) -> Principal: ...

class JwtVerifier:
    """Verifies tokens for one jwt middleware config; raises TokenError(reason)."""

    keys: JwtKeySet | None
    algorithms: tuple[str, ...]
    claims: tuple[str, ...] | None
    """The claim names parsed out of a token (exp, nbf, iat, iss, aud, sub and those asked
    for), or None for every claim."""
    cached: int

    def __init__(
        self,
        *,
        algorithms: Iterable[str],
        issuer: str | None = None,
        audiences: Iterable[str] | None = None,
        leeway: float = 60.0,
        require_exp: bool = True,
        max_token_bytes: int = 8192,
        cache_size: int = 16384,
        secret: bytes | None = None,
        prepare: Callable[[dict[str, Any]], Any] | None = None,
        claims: Iterable[str] | None = None,
    ) -> None: ...
    def set_keys(self, keys: JwtKeySet | None) -> None: ...
    def flush(self) -> None: ...
    def verify(self, token: bytes, now: float) -> dict[str, Any]: ...
    def authenticate(self, token: bytes, now: float) -> Any: ...
    def authenticate_bearer(self, headers: list[tuple[bytes, bytes]], now: float) -> Any: ...

class JwtStep:
    """The jwt middleware's compiled per-request entry (fluxgate/_jwt_step.pxi): a bearer
    token verified here, every other case handed to the subclass's ``_slow_call``,
    ``_refuse``, ``_failed`` and ``_check_scopes``."""

    verifier: JwtVerifier | None
    scopes: Any
    def __call__(self, req: Any) -> Any: ...

# ---- API keys and quota counters (fluxgate/_keys.pxi) ---------------------------------

KEY_FORMAT: dict[str, Any]
"""prefix, mac_domain, id/secret/tag/digest byte counts, text_len, reasons (by KeyCode)."""
KEY_LAYOUT: dict[str, int]
"""Magics, versions and struct sizes of keys.table, keys.usage and quotas.bin."""

class QuotaCounters:
    """Quota buckets over a writable mapping of the quota file (fluxgate/auth/quotas.py)."""

    capacity: int

    def __init__(self, buffer: Buffer, /) -> None: ...
    def tag(self, identity: bytes, /) -> int:
        """Keyed 64-bit hash of whose quota it is (never 0)."""
    def consume(self, tag: int, limit: int, period: int, now: float, /) -> tuple[int, int, int]:
        """(code 0 counted | 1 exceeded | 2 table full, remaining, window_end)."""
    def peek(self, tag: int, period: int, now: float, /) -> tuple[int, int]:
        """(spent in the current window, window_end), counting nothing."""
    def release(self) -> None: ...

class LeaseSpender:
    """Spends units in hand of a node's quota leases (fluxgate/cluster/quotas.py)."""

    ahead_tag: int  # set when the key table spent a unit and half a chunk is left

    def __init__(self, words: Counters, quotas: QuotaCounters, /) -> None: ...
    def spend(
        self, req: RequestState, base: int, tag: int, limit: int, window: int, now: float, /
    ) -> int:
        """0 spent, 1 spent and time to ask ahead, -1 nothing spent (no unit in hand)."""

class PrincipalCache:
    """The principals a worker built for one table's keys, by entry index."""
    def __init__(self, slots: int = 1024, /) -> None: ...
    def __setitem__(self, index: int, principal: Principal) -> None: ...
    def get(self, index: int, default: Any = None, /) -> Principal | Any: ...
    def __len__(self) -> int: ...

class KeyTable:
    """One generation of the shared key table (layout: fluxgate/auth/keytable.py)."""

    generation: int
    capacity: int  # entries this generation has room for

    def __init__(
        self,
        table: Buffer,
        signing_key: bytes,
        usage: Buffer | None = None,
        quotas: QuotaCounters | None = None,
        /,
    ) -> None: ...
    def use_leases(self, leases: LeaseSpender, /) -> None:
        """Cluster mode: keys' quotas spend the node's leases (quota_exceeded: none)."""
    def __len__(self) -> int: ...
    def check(
        self,
        key: bytes,
        now: float,
        path: bytes,
        scopes: tuple[bytes, ...],
        any_scopes: tuple[bytes, ...] | None,
        ip: str,
        /,
    ) -> tuple[int, int, int, int, int]:
        """(code, entry index, quota limit, remaining, window_end); code indexes
        KEY_FORMAT["reasons"], 0 = accepted."""
    def authorize(
        self,
        req: RequestState,
        lname: bytes,
        qname: bytes,
        scopes: tuple[bytes, ...],
        any_scopes: tuple[bytes, ...] | None,
        now: float,
        principals: PrincipalCache,
        /,
    ) -> tuple[int, int, int, int] | None:
        """``check`` for one request, the key found as ``extract_api_key`` finds it and an
        accepted key's quota merged into ``req``'s RateLimit-*. None: accepted, not in a
        grace period, and ``req.principal`` set from what ``principals`` holds for the
        entry. Otherwise (code, entry index, quota limit, reset seconds); code as
        ``check``'s (ok: the caller sets the principal) or "missing_credentials" /
        "ambiguous_credentials"."""
    def verify(self, key: bytes, now: float, /) -> tuple[int, int]:
        """(code, entry index) for the credential alone: no usage stamp, no quota."""
    def find(self, key_id: str, /) -> int: ...
    def entry(self, index: int, /) -> dict[str, Any]: ...
    def release(self) -> None: ...

def keytab_home_region(entries: bytes | bytearray, n_buckets: int, /) -> tuple[bytes, bytes]:
    """(buckets, home region) of a key table: each of ``entries`` (whole 128-byte entries)
    placed at the index of the bucket that names it."""

def extract_api_key(
    headers: list[tuple[bytes, bytes]], lname: bytes, query: bytes, qname: bytes, /
) -> tuple[int, bytes | None]:
    """(0, None) none | (1, key) one | (2, None) several: from header ``lname`` or query
    parameter ``qname`` (names percent-decoded)."""

def strip_query_param(query: bytes, name: bytes, /) -> bytes:
    """``query`` without every ``name`` parameter (the same object when there is none)."""

# ---- token-introspection results (fluxgate/_introspect.pxi; RFC 7662) -----------------------

INTROSPECT_LAYOUT: dict[str, int]
"""Magic, version, header/slot-header sizes, ways, digest bytes, slot size bounds, max
buckets and the active flag of the shared introspection-result file."""

def sha256(data: bytes, /) -> bytes:
    """SHA-256 (FIPS 180-4) of ``data``: the 32-byte digest, the key of IntrospectionCache."""

class IntrospectionCache:
    """One view of the shared introspection-result table (master writes, workers read)."""

    @property
    def writable(self) -> bool: ...
    @property
    def buckets(self) -> int: ...
    @property
    def capacity(self) -> int:
        """Slots in the table (buckets x 8): the most entries it can hold."""
    @property
    def slot_bytes(self) -> int: ...
    @property
    def payload_capacity(self) -> int:
        """The largest payload ``store`` accepts (slot_bytes - 64)."""
    def __init__(self, buffer: Buffer, *, writable: bool) -> None:
        """View a mapping of a formatted table; ValueError if its header is wrong."""
    @staticmethod
    def size_for(entries: int, slot_bytes: int = 1024) -> int:
        """Bytes of a table file with room for ``entries`` entries of ``slot_bytes`` (8-way
        buckets: keep it under half full, or full buckets evict live entries)."""
    @classmethod
    def format(cls, buffer: Buffer, entries: int, slot_bytes: int = 1024) -> IntrospectionCache:
        """Write the header into a fresh zero-filled mapping of exactly
        ``size_for(entries, slot_bytes)`` bytes; the writer's view of it."""
    def lookup(self, token: bytes, now: float, known: dict[int, Any] | None, /) -> Any:
        """The live entry for ``token``: ``known[stamp]`` when its stamp is there, else
        (stamp, active, expires_at, payload); None on a miss, expired or torn read."""
    def lookup_digest(self, digest: bytes, now: float, known: dict[int, Any] | None, /) -> Any:
        """``lookup`` for a token's SHA-256."""
    def live_entries(self, now: float) -> tuple[int, int]:
        """(positive, negative) entries whose expiry is after ``now``."""
    def store(
        self, digest: bytes, expires_at: float, active: bool, payload: bytes, now: float
    ) -> bool:
        """Publish a result; False (nothing written) when the payload does not fit or
        the bucket has no slot it may take (a negative never evicts a live positive)."""
    def purge(self, digest: bytes) -> bool:
        """Empty the slot holding ``digest``; whether there was one."""
    def clear(self) -> None:
        """Empty every slot."""
    def release(self) -> None: ...

# ---- the data plane's per-request state (fluxgate/_http.pxi) ------------------------------

class RequestState:
    """Everything about one request: filled by the head parser, read by every stage."""

    started: float
    method: bytes
    http_minor: int
    keep_alive: bool
    upgrade: bytes | None
    reparse: bool
    chunked: bool
    content_length: int
    has_body: bool
    body_bytes: int
    message_complete: bool
    response_done: bool
    exchange: Any
    close_after: bool
    status: int
    request_id: bytes
    route: Any
    path: bytes
    query: bytes
    client_ip: str
    peer_trusted: bool
    principal: Any
    refusal: str | None
    expect_continue: bool
    host: bytes | None
    forwarded_for: bytes | None
    forwarded_proto: bytes | None
    client_request_id: bytes | None
    connection: bytes | None
    hosts: int
    transfer_encoding: bytes | None
    upgrade_token: bytes | None
    finished: bool
    url: bytes
    header_bytes: int
    headers: list[tuple[bytes, bytes]]
    forward_headers: list[tuple[bytes, bytes]]
    body_buffer: list[bytes]
    response_headers: list[tuple[bytes, bytes]]
    def __init__(self, started: float = 0.0) -> None: ...
    def ratelimit_headers(self) -> list[tuple[bytes, bytes]]:
        """The RateLimit-* pairs of this request's response (empty without a quota)."""

def merge_ratelimit(req: RequestState, limit: int, remaining: int, reset: int) -> None:
    """Set ``req``'s RateLimit-Limit/Remaining/Reset (reset in seconds); when a stricter
    quota already set them (no more remaining), keep that one."""

def upstream_head(
    req: RequestState, drop: frozenset[bytes], strip: int, peer: bytes, api_key_query: bytes, /
) -> bytes:
    """The request head sent upstream, in one bytes object (rules in fluxgate/_http.pxi)."""

def response_head(
    status_line: bytes,
    lines: bytes,
    req: RequestState,
    extra: list[tuple[bytes, bytes]],
    content_length: bytes | None,
    chunked: bool,
    close: bool,
    data: bytes | None = None,
    body_start: int = 0,
    body_length: int = 0,
) -> bytes:
    """The response head sent to the client (and the body, when `data` holds it); X-Request-Id
    and RateLimit-* come from `req`."""

# ---- upstream response fast path (fluxgate/_resphead.pxi) ---------------------------------

class ResponseHead:
    """A complete, simple upstream response, parsed in one call (fields read-only)."""

    @property
    def status(self) -> int:
        """The status code, 200..599."""
    @property
    def lines(self) -> bytes:
        """Forwardable header lines, b"Name: value\r\n" each, in order (b"" when none):
        what UpstreamConnection.on_header keeps, hop-by-hop and framing headers left out."""
    @property
    def content_length(self) -> bytes | None:
        """The Content-Length digits as sent, None when absent."""
    @property
    def keep_alive(self) -> bool:
        """llhttp's should_keep_alive for this response."""
    @property
    def body_start(self) -> int:
        """Offset of the body in ``data`` (the head length)."""
    @property
    def body_length(self) -> int:
        """Body bytes, ``data[body_start:]`` to the end (0 after HEAD, 204 and 304)."""

RH_FORWARD: int
RH_CONTENT_LENGTH: int
RH_TRANSFER_ENCODING: int
RH_CONNECTION: int

def response_header_kind(name: bytes, /) -> int:
    """RH_* for an upstream response header name (any other value: hop-by-hop, dropped)."""

def parse_response_head(data: bytes, head_request: bool) -> ResponseHead | None:
    """The response in ``data`` (one read, from a message boundary) when it is complete and
    simple -- status 200..599, Content-Length framing or no body, no Transfer-Encoding, a
    Connection of close/keep-alive only, ending exactly at the end of ``data``; None means
    "feed the same bytes to httptools", whose result would be the same when both answer."""

# ---- the request-head fast path (fluxgate/_reqhead.pxi) ----------------------------------

# What the gateway does with a request header (fluxgate/_reqhead.pxi; proxy/headers.py).
H_FORWARD: int
H_HOST: int
H_CONTENT_LENGTH: int
H_TRANSFER_ENCODING: int
H_EXPECT: int
H_FORWARDED_FOR: int
H_FORWARDED_PROTO: int
H_REQUEST_ID: int
H_CONNECTION: int
H_UPGRADE: int
H_DROP: int
H_FLUXGATE: int
H_FRAMING_ALIAS: int
HEADER_KINDS_CACHE_MAX: int
FLUXGATE_PREFIX: bytes

def classify_header(
    name: bytes, kinds: dict[bytes, int], special: dict[bytes, int],
    allow_underscores: bool = False,
) -> int:
    """The H_* kind of a request header named `name` (as sent); `kinds` caches it (bounded).
    A name with `_`: H_FRAMING_ALIAS when it reads as Content-Length / Transfer-Encoding,
    else H_DROP unless `allow_underscores` (still H_DROP when it reads as a special name)."""

def valid_host(value: bytes, /) -> bool:
    """Is `value` a valid Host field value (RFC 9110 §7.2: uri-host [":" port])?"""

CHUNK_LINE_TOO_LONG: int
CHUNK_TRAILERS_TOO_LARGE: int

class ChunkedBody:
    """Follows one chunked request body beside llhttp (fluxgate/_chunked.pxi) to bound its
    chunk-size lines at `max_line` bytes and its trailer section at `max_trailers`."""

    def __init__(self, max_line: int, max_trailers: int) -> None: ...
    @property
    def done(self) -> bool:
        """The body's last byte has been seen."""
    def scan(self, data: bytes, start: int = 0) -> int:
        """The offset just past the body's end in `data`, else len(data); -1 / -2 when a
        chunk-size line / the trailer section passed its bound."""

def parse_request_head(
    data: bytes,
    kinds: dict[bytes, int],
    special: dict[bytes, int],
    max_header_bytes: int,
    max_body_bytes: int,
    started: float,
    max_header_count: int = 100,
    allow_underscores: bool = False,
) -> RequestState | None:
    """A filled RequestState when ``data`` is exactly one complete, simple request (head
    and Content-Length body, nothing after it); None otherwise: feed it to httptools.

    ``kinds`` is the per-worker {header name as sent: kind} cache (filled here too, up to
    4096 entries), ``special`` the gateway's {lower-case name: kind}. When a state comes
    back, llhttp would report exactly the same message; the grammar is in _reqhead.pxi.
    """

class RequestIds:
    """A worker's request ids: an acceptable client X-Request-Id, else prefix + hex counter."""

    def __init__(self, prefix: bytes, /) -> None: ...
    def take(self, client_value: bytes | None, /) -> bytes: ...

class PrefixTable:
    """Longest-prefix matching on segment boundaries (the body of proxy.router.Router)."""

    def __init__(self, table: dict[bytes, Any], root: Any = None) -> None: ...
    def match(self, path: bytes) -> Any:
        """The value of the longest key that is `path` or a segment-boundary prefix of it,
        else the root's."""
