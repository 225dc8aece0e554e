"""OAuth 2.0 token introspection (RFC 7662) as workers and the master share it.

The master's side pool (``master/sidepool.py``) asks the authorization server about a
token and publishes the answer; workers only read. Per provider — one introspection
endpoint and client id, however many routes use it — ``state_dir/oauth2/`` holds:

``<id>.cache``  the shared result table (``_core.IntrospectionCache``): slots keyed by
                SHA-256 of the token, each with its cache expiry and an msgpack
                ``TokenRecord``. The token itself is never written anywhere.
``<id>.ctl``    shared counters (``_core.Counters``): cache hits and misses counted by
                workers, misses refused by the per-client rate limit.
``sidepool.addr`` the name of the master's abstract Unix socket, which workers connect
                to with a miss (``auth/sidepool_client.py``).

A ``TokenRecord`` is what the gateway keeps of an introspection response: the members it
checks or forwards, never the rest. ``IntrospectedToken`` is a worker's decoded view of
one, with the principal built once and shared by every request that presents the token.
"""

from __future__ import annotations

import hashlib
import os
import struct
from typing import Any

import msgspec

from fluxgate.auth.principal import Principal
from fluxgate.config import schema

OAUTH2_DIR = "oauth2"
ADDRESS_FILE = "sidepool.addr"
CACHE_SLOT_BYTES = 1024

# <id>.ctl slots (uint64, shared by the master and every worker).
CTL_MAGIC = 0x4647_4F41_5554_4801  # "FGOAUTH" v1
CTL_SLOTS = 8
SLOT_MAGIC, SLOT_HITS, SLOT_MISSES, SLOT_RATE_LIMITED = 0, 1, 2, 3

# RFC 6750 §1 / RFC 7662 §2.2 token_type values that name an access token.
ACCESS_TOKEN_TYPES = frozenset({"bearer", "access_token"})


class TokenRecord(msgspec.Struct, array_like=True, omit_defaults=True, frozen=True):
    """The introspection answer the gateway keeps (RFC 7662 §2.2 members)."""

    active: bool
    sub: str | None = None
    username: str | None = None
    client_id: str | None = None
    scope: str | None = None
    iss: str | None = None
    aud: tuple[str, ...] = ()
    exp: int | None = None
    nbf: int | None = None
    iat: int | None = None
    token_type: str | None = None


INACTIVE = TokenRecord(active=False)
_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(TokenRecord)


def record_from_response(document: dict[str, Any]) -> TokenRecord:
    """Keep what the gateway uses of a validated introspection response.

    ``document`` has passed the client's checks (``active`` a real boolean, members of the
    right types); ``ValueError`` for anything still unusable."""
    if document.get("active") is not True:
        return INACTIVE
    aud = document.get("aud")
    audiences: tuple[str, ...] = (aud,) if isinstance(aud, str) else tuple(aud or ())
    fields: dict[str, Any] = {"active": True, "aud": audiences}
    for name in ("sub", "username", "client_id", "scope", "iss", "token_type"):
        value = document.get(name)
        if value is not None:
            if not isinstance(value, str):
                raise ValueError(f"{name} is not a string")
            fields[name] = value
    for name in ("exp", "nbf", "iat"):
        value = document.get(name)
        if value is not None:
            if type(value) is not int:
                raise ValueError(f"{name} is not an integer")
            fields[name] = value
    return TokenRecord(**fields)


def encode_record(record: TokenRecord) -> bytes:
    return _encoder.encode(record)


def decode_record(payload: bytes) -> TokenRecord:
    """Raises ``msgspec.DecodeError`` for a payload that is not a record."""
    return _decoder.decode(payload)


def token_digest(token: bytes) -> bytes:
    """SHA-256 of the token: the only form of it that is stored or shown."""
    return hashlib.sha256(token).digest()


# ---- providers ------------------------------------------------------------------------------


def provider_source(config: schema.OAuth2) -> str:
    """What identifies one provider: where tokens are introspected, and as which client."""
    where = config.introspection_endpoint or f"discovery:{config.issuer}"
    return f"{where}#{config.client_id}"


def provider_id(source: str) -> str:
    """A file-name-safe id for a provider source."""
    return hashlib.sha256(source.encode()).hexdigest()[:20]


def oauth2_configs(config: schema.Config) -> list[schema.OAuth2]:
    """Every oauth2 middleware of a config, ``any`` members included."""
    found = []
    for route in config.routes:
        for middleware in route.middleware:
            if isinstance(middleware, schema.OAuth2):
                found.append(middleware)
            elif isinstance(middleware, schema.AnyOf):
                found.extend(m for m in middleware.methods if isinstance(m, schema.OAuth2))
    return found


def oauth2_dir(state_dir: str) -> str:
    return os.path.join(state_dir, OAUTH2_DIR)


def cache_path(state_dir: str, source: str) -> str:
    return os.path.join(oauth2_dir(state_dir), provider_id(source) + ".cache")


def ctl_path(state_dir: str, source: str) -> str:
    return os.path.join(oauth2_dir(state_dir), provider_id(source) + ".ctl")


def address_path(state_dir: str) -> str:
    return os.path.join(oauth2_dir(state_dir), ADDRESS_FILE)


# ---- what a worker keeps of a record -----------------------------------------------------


class IntrospectedToken:
    """A decoded record, shared by every request presenting the token (treat as immutable).

    ``verdicts`` memoizes, per middleware, the checks that do not depend on the time or
    the request (issuer, audience, token type): each middleware computes its verdict once.
    """

    __slots__ = ("active", "record", "principal", "exp", "nbf", "verdicts")

    def __init__(self, record: TokenRecord) -> None:
        self.active = record.active
        self.record = record
        self.exp = record.exp
        self.nbf = record.nbf
        self.verdicts: dict[int, Any] = {}
        self.principal = _principal(record) if record.active else None


def _principal(record: TokenRecord) -> Principal:
    # A token issued to a client for itself (client_credentials) has no sub: the client
    # is then who calls.
    subject = record.sub or record.username or record.client_id or ""
    headers = ()
    if record.client_id:
        headers = ((b"X-FluxGate-Client-Id", _header_value(record.client_id)),)
    scopes = frozenset(record.scope.split()) if record.scope else frozenset()
    return Principal(
        id=f"oauth2:{record.iss or ''}|{subject}",
        method="oauth2",
        subject=subject,
        scopes=scopes,
        claims_headers=headers,
    )


def _header_value(text: str) -> bytes:
    raw = text.encode("utf-8", "replace")
    return bytes(b for b in raw if b >= 0x20 and b != 0x7F).strip()[:256]


# ---- worker <-> side pool frames ----------------------------------------------------------
# A frame is a 4-byte big-endian length and an msgpack array:
#   worker -> master  [request_id, provider_source, token]
#   master -> worker  [request_id, outcome, stamp, payload]
# outcome: "active" / "inactive" (payload: the record), "unavailable" (the authorization
# server could not answer: down, slow, breaker open, queue full), "invalid" (it answered
# something that cannot be trusted), "unknown_provider".

FRAME_HEADER = struct.Struct(">I")
MAX_FRAME = 256 * 1024
OUTCOMES = ("active", "inactive", "unavailable", "invalid", "unknown_provider")
_frame_encoder = msgspec.msgpack.Encoder()
_frame_decoder = msgspec.msgpack.Decoder(list)


def encode_frame(items: list[Any]) -> bytes:
    body = _frame_encoder.encode(items)
    return FRAME_HEADER.pack(len(body)) + body


class FrameReader:
    """Splits a byte stream into decoded frames; ``ValueError`` for a broken stream."""

    __slots__ = ("_buffer",)

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[list[Any]]:
        self._buffer += data
        frames = []
        buffer = self._buffer
        while len(buffer) >= 4:
            (size,) = FRAME_HEADER.unpack_from(buffer)
            if size > MAX_FRAME:
                raise ValueError("frame too large")
            if len(buffer) < 4 + size:
                break
            try:
                frames.append(_frame_decoder.decode(bytes(buffer[4 : 4 + size])))
            except msgspec.DecodeError:
                raise ValueError("undecodable frame") from None
            del buffer[: 4 + size]
        return frames
