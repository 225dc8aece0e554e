"""OAuth login sessions in Redis: the authoritative record of every session in cluster mode.

One hash per session, ``<prefix>session:<hex SHA-256 of the id>`` (the id itself is never
stored), with what finding and expiring it needs in clear (provider, sub, sid, times,
version, how it ended) and the tokens and claims in ``secrets``: one AES-GCM blob sealed
under the keys every node derives from ``cluster.session_secret``
(``cluster/session_keys.py``), bound to the record's digest and provider. The hash expires
with the session (its idle expiry, moved by each touch, never past the absolute one); an
ended record loses its secrets and is kept ``ENDED_KEEP`` seconds so that every node
learns why it ended.

Every change of a record is one Lua script on that one key (so it works on Redis Cluster
too): the token update is a compare-and-set on the record's version, an end is final.
The refresh lock (``<prefix>session-lock:<hex>``, a random token, an expiry, released
only by its holder) makes a refresh single-flight across every node. Login transactions
(single use: GETDEL) and back-channel logout ``jti``s (SET NX until their expiry) live
here too, so a login begun on one node may finish on another and a logout token is
accepted once by the whole cluster. Index sets by ``sub`` and ``sid`` (hashed) let a
back-channel logout find the sessions it ends.

Changes are announced on ``<prefix>sessions:events``; ``cluster/session_sync.py`` keeps
each node's local copy current from them. Nothing here logs a token or a session id.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import secrets
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import orjson

from fluxgate.auth.login_state import MAX_TRANSACTION_TTL, Transaction
from fluxgate.auth.session_backend import StoreUnavailable
from fluxgate.auth.session_crypto import SessionStoreError
from fluxgate.auth.session_db import (
    new_id,
    new_session,
    seal_document,
    session_digest,
    unseal_document,
    well_formed,
)
from fluxgate.auth.sessions import Session
from fluxgate.cluster.session_keys import DerivedKeyRing

ENDED_KEEP = 300  # seconds an ended record stays, secrets erased, so nodes see why
LOCK_POLL = 0.05
EVENTS = "sessions:events"

# KEYS[1] the record; ARGV: now, last_seen_at. Moves the idle expiry (never past the
# absolute one) and the key's TTL with it; 0 when the record is not live.
_TOUCH = """
local f = redis.call('HMGET', KEYS[1], 'ended_at', 'idle_expires_at', 'absolute_expires_at',
                     'idle_seconds', 'last_seen_at')
if not f[3] or f[1] ~= '' then return 0 end
local now, seen = tonumber(ARGV[1]), tonumber(ARGV[2])
local absolute = tonumber(f[3])
if tonumber(f[2]) <= now or absolute <= now then return 0 end
if seen <= tonumber(f[5]) then return tonumber(f[2]) end
local idle_at = math.min(seen + tonumber(f[4]), absolute)
redis.call('HSET', KEYS[1], 'last_seen_at', seen, 'idle_expires_at', idle_at)
redis.call('EXPIREAT', KEYS[1], idle_at + 1)
return idle_at
"""

# KEYS[1] the record; ARGV: expected version, now, secrets, access_expires_at ('' for
# none). Returns the new version, or 0 when another writer won or the record is not live.
_UPDATE = """
local f = redis.call('HMGET', KEYS[1], 'version', 'ended_at', 'idle_expires_at',
                     'absolute_expires_at')
if not f[1] or f[1] ~= ARGV[1] or f[2] ~= '' then return 0 end
local now = tonumber(ARGV[2])
if tonumber(f[3]) <= now or tonumber(f[4]) <= now then return 0 end
local version = tonumber(f[1]) + 1
redis.call('HSET', KEYS[1], 'version', version, 'secrets', ARGV[3],
           'access_expires_at', ARGV[4])
return version
"""

# KEYS[1] the record; ARGV: now, reason, seconds to keep it. 1 when this call ended it.
_END = """
local ended = redis.call('HGET', KEYS[1], 'ended_at')
if not ended or ended ~= '' then return 0 end
redis.call('HSET', KEYS[1], 'ended_at', ARGV[1], 'end_reason', ARGV[2])
redis.call('HDEL', KEYS[1], 'secrets')
redis.call('EXPIRE', KEYS[1], ARGV[3])
return 1
"""

# KEYS[1] the lock; ARGV[1] the holder's token.
_UNLOCK = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

META_FIELDS = ("version", "ended_at", "end_reason", "idle_expires_at", "last_seen_at",
               "access_expires_at")


def _int(value: Any) -> int | None:
    if value in (None, b"", ""):
        return None
    return int(value)


async def _execute(pipe: Any, raise_on_error: bool = True) -> Any:
    """Run a pipeline; reset it even when the call is abandoned (a timeout)."""
    try:
        return await pipe.execute(raise_on_error=raise_on_error)
    finally:
        await pipe.reset()


def _hashed(value: str) -> str:
    return hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()


class RedisSessions:
    """Session records, login transactions, the logout replay cache and the refresh lock
    in Redis (``redis.asyncio`` client; every call bounded by the client's timeout)."""

    def __init__(self, client: Any, prefix: str, keys: DerivedKeyRing, *,
                 timeout: float = 1.0, describe: str = "redis",
                 clock: Callable[[], float] = time.time) -> None:
        self.client = client
        self.describe = describe  # the store URL without credentials, for logs
        self.timeout = timeout  # a whole call's bound (a partition may stall a socket)
        self.prefix = prefix
        self.keys = keys
        self.clock = clock
        self.channel = prefix + EVENTS
        self._touch = client.register_script(_TOUCH)
        self._update = client.register_script(_UPDATE)
        self._end = client.register_script(_END)
        self._unlock = client.register_script(_UNLOCK)

    # ---- key names ----------------------------------------------------------------------

    def record_key(self, digest: bytes) -> str:
        return f"{self.prefix}session:{digest.hex()}"

    def _lock_key(self, digest: bytes) -> str:
        return f"{self.prefix}session-lock:{digest.hex()}"

    def _index_key(self, what: str, provider: str, value: str) -> str:
        return f"{self.prefix}session-{what}:{_hashed(provider)[:20]}:{_hashed(value)}"

    def _seal(self, kind: bytes, digest: bytes, provider: str, doc: dict[str, Any]) -> bytes:
        return seal_document(self.keys, kind, digest, provider, doc)[1]

    def _unseal(self, kind: bytes, digest: bytes, provider: str,
                blob: bytes | None) -> dict[str, Any] | None:
        return unseal_document(self.keys, kind, digest, provider, blob)

    # ---- sessions -----------------------------------------------------------------------

    async def create(self, provider: str, sub: str, sid: str | None, tokens: dict[str, Any],
                     claims: dict[str, Any], access_expires_at: float | None, idle: float,
                     absolute: float) -> tuple[str, Session]:
        """Store a new session; returns its id (for the cookie only) and the session."""
        made = new_session(self.clock(), idle, absolute)
        session_id, digest, now = made.session_id, made.digest, made.now
        idle_at, absolute_at = made.idle_expires_at, made.absolute_expires_at
        access_at = None if access_expires_at is None else int(access_expires_at)
        blob = self._seal(b"session", digest, provider, {"tokens": tokens, "claims": claims})
        key = self.record_key(digest)
        pipe = self.client.pipeline(transaction=False)
        pipe.hset(key, mapping={
            "provider": provider, "sub": sub, "sid": sid or "", "created_at": now,
            "last_seen_at": now, "idle_seconds": int(idle), "idle_expires_at": idle_at,
            "absolute_expires_at": absolute_at, "version": 1, "ended_at": "",
            "end_reason": "", "access_expires_at": "" if access_at is None else access_at,
            "secrets": blob,
        })
        pipe.expireat(key, idle_at + 1)
        for what, value in (("sub", sub), ("sid", sid)):
            if value:
                index = self._index_key(what, provider, value)
                pipe.sadd(index, digest.hex())
                # The newest session of a provider lives longest (one absolute lifetime):
                # the set lasts as long as it (EXPIRE's GT would need Redis 7).
                pipe.expire(index, int(absolute) + ENDED_KEEP)
        await self._run(_execute(pipe))
        session = Session(digest, provider, sub, sid, 1, now, now, idle_at, absolute_at,
                          access_at, tokens, claims)
        return session_id, session

    async def record(self, digest: bytes) -> dict[str, Any] | None:
        """The raw record of a session (fields decoded, secrets still sealed), or None
        when Redis has none: never created, expired, or lost with a Redis restarted empty."""
        raw = await self._run(self.client.hgetall(self.record_key(digest)))
        if not raw or b"provider" not in raw:
            return None
        out: dict[str, Any] = {k.decode(): v for k, v in raw.items()}
        for name in ("provider", "sub", "sid", "end_reason"):
            out[name] = out.get(name, b"").decode("utf-8", "surrogatepass")
        for name in ("created_at", "last_seen_at", "idle_seconds", "idle_expires_at",
                     "absolute_expires_at", "version", "ended_at", "access_expires_at"):
            out[name] = _int(out.get(name))
        return out

    def open_record(self, digest: bytes, record: dict[str, Any],
                    now: float | None = None) -> Session | None:
        """The live session a raw record holds, or None (ended, expired, undecryptable)."""
        now = self.clock() if now is None else now
        if (record["ended_at"] is not None or record["idle_expires_at"] <= now
                or record["absolute_expires_at"] <= now):
            return None
        doc = self._unseal(b"session", digest, record["provider"], record.get("secrets"))
        if doc is None or not isinstance(doc.get("tokens"), dict):
            return None
        return Session(digest, record["provider"], record["sub"], record["sid"] or None,
                       record["version"], record["created_at"], record["last_seen_at"],
                       record["idle_expires_at"], record["absolute_expires_at"],
                       record["access_expires_at"], doc["tokens"], doc.get("claims") or {})

    async def load_digest(self, digest: bytes, now: float | None = None) -> Session | None:
        """The live session with this digest, or None."""
        record = await self.record(digest)
        return None if record is None else self.open_record(digest, record, now)

    async def load(self, session_id: str, now: float | None = None) -> Session | None:
        """The live session with this id, or None (malformed ids never reach Redis)."""
        if not well_formed(session_id):
            return None
        return await self.load_digest(session_digest(session_id), now)

    async def metas(self, digests: list[bytes]) -> list[dict[str, int | str | None] | None]:
        """What the sync compares of each session (one pipelined round trip): None for a
        session Redis does not have."""
        pipe = self.client.pipeline(transaction=False)
        for digest in digests:
            pipe.hmget(self.record_key(digest), *META_FIELDS)
        rows = await self._run(_execute(pipe))
        found: list[dict[str, int | str | None] | None] = []
        for row in rows:
            if row[0] is None:
                found.append(None)
                continue
            meta: dict[str, int | str | None] = {
                name: _int(value) for name, value in zip(META_FIELDS, row, strict=True)
                if name != "end_reason"}
            meta["end_reason"] = (row[2] or b"").decode() or None
            found.append(meta)
        return found

    async def update_tokens(self, digest: bytes, expected_version: int,
                            tokens: dict[str, Any], access_expires_at: float | None,
                            claims: dict[str, Any] | None = None) -> int:
        """Compare-and-set the session's tokens (merged into the stored ones as
        ``SessionStore.update_tokens`` does). Returns the new version, 0 when another
        writer won or the session is no longer live."""
        record = await self.record(digest)
        if record is None:
            return 0
        current = self.open_record(digest, record)
        if current is None or current.version != expected_version:
            return 0
        merged = {**current.tokens, **tokens}
        doc = {"tokens": {k: v for k, v in merged.items() if v is not None},
               "claims": current.claims if claims is None else claims}
        blob = self._seal(b"session", digest, current.provider, doc)
        access = "" if access_expires_at is None else int(access_expires_at)
        return int(await self._run(self._update(
            keys=[self.record_key(digest)],
            args=[expected_version, int(self.clock()), blob, access])))

    async def touch(self, seen: list[tuple[bytes, int]]) -> None:
        """Record activity seen on this node: each (digest, last_seen_at)."""
        if not seen:
            return
        from redis.exceptions import NoScriptError  # redis-py: only in cluster mode

        now = int(self.clock())
        for attempt in range(2):
            # EVALSHA by hand: a Redis Cluster pipeline does not load a script as a plain
            # one does, and a Redis restarted empty has lost it: load it on NOSCRIPT.
            pipe = self.client.pipeline(transaction=False)
            for digest, last_seen_at in seen:
                pipe.evalsha(self._touch.sha, 1, self.record_key(digest), now, last_seen_at)
            results = await self._run(_execute(pipe, raise_on_error=False))
            errors = [r for r in results if isinstance(r, Exception)]
            if not errors:
                return
            if attempt or not all(isinstance(e, NoScriptError) for e in errors):
                raise StoreUnavailable(str(errors[0]) or type(errors[0]).__name__)
            await self._run(self.client.script_load(_TOUCH))

    async def end(self, digest: bytes, reason: str) -> bool:
        """End one session (its secrets erased). False when it had already ended or is
        unknown."""
        ended = await self._run(self._end(keys=[self.record_key(digest)],
                                          args=[int(self.clock()), reason, ENDED_KEEP]))
        return bool(ended)

    async def matching(self, provider: str, *, sub: str | None = None,
                       sid: str | None = None) -> list[bytes]:
        """The sessions of ``provider`` with this sid (when given) and this sub (when
        given), by OIDC Back-Channel Logout 1.0 §2.7's rule."""
        if sub is None and sid is None:
            raise SessionStoreError("ending sessions by match needs a sub or a sid")
        what, value = ("sid", sid) if sid is not None else ("sub", sub)
        members = await self._run(self.client.smembers(self._index_key(what, provider, value)))
        digests = sorted(bytes.fromhex(m.decode()) for m in members)
        if sid is not None and sub is not None and digests:
            subs = await self._run(self._subs(digests))
            digests = [d for d, s in zip(digests, subs, strict=True) if s == sub]
        return digests

    async def _subs(self, digests: list[bytes]) -> list[str | None]:
        pipe = self.client.pipeline(transaction=False)
        for digest in digests:
            pipe.hget(self.record_key(digest), "sub")
        return [None if v is None else v.decode("utf-8", "surrogatepass")
                for v in await _execute(pipe)]

    # ---- the refresh lock ---------------------------------------------------------------

    @asynccontextmanager
    async def refresh_lock(self, digest: bytes, hold: float,
                           wait: float) -> AsyncIterator[None]:
        """Hold the session's refresh lock (at most ``hold`` seconds, then it expires on
        its own); waits up to ``wait`` seconds for another holder. StoreUnavailable when
        Redis cannot be asked or the lock stays taken."""
        key = self._lock_key(digest)
        token = secrets.token_hex(16)
        deadline = time.monotonic() + wait
        while not await self._run(self.client.set(key, token, nx=True,
                                                  px=max(1, int(hold * 1000)))):
            if time.monotonic() >= deadline:
                raise StoreUnavailable("the session's refresh lock stayed taken")
            await asyncio.sleep(LOCK_POLL)
        try:
            yield
        finally:
            try:
                await self._run(self._unlock(keys=[key], args=[token]))
            except StoreUnavailable:
                pass  # it expires on its own

    # ---- login transactions and the logout replay cache ----------------------------------

    async def begin_transaction(self, provider: str, state: str, nonce: str,
                                code_verifier: str, return_to: str, ttl: float = 600.0) -> str:
        """Store a login transaction; returns its id (for the transaction cookie)."""
        if not 0 < ttl <= MAX_TRANSACTION_TTL:
            raise SessionStoreError(
                f"a login transaction lives at most {MAX_TRANSACTION_TTL:.0f} s")
        transaction_id = new_id()
        digest = session_digest(transaction_id)
        now = int(self.clock())
        expires = now + math.ceil(ttl)
        blob = self._seal(b"transaction", digest, provider, {
            "state": state, "nonce": nonce, "code_verifier": code_verifier,
            "return_to": return_to, "created_at": now, "expires_at": expires,
        })
        value = provider.encode("utf-8", "surrogatepass") + b"\0" + blob
        await self._run(self.client.set(f"{self.prefix}login-tx:{digest.hex()}", value,
                                        ex=math.ceil(ttl)))
        return transaction_id

    async def take_transaction(self, transaction_id: str,
                               now: float | None = None) -> Transaction | None:
        """The transaction, deleted as it is read (GETDEL): single use cluster-wide."""
        if not well_formed(transaction_id):
            return None
        digest = session_digest(transaction_id)
        value = await self._run(self.client.getdel(f"{self.prefix}login-tx:{digest.hex()}"))
        if not value or b"\0" not in value:
            return None
        raw_provider, _, blob = value.partition(b"\0")
        provider = raw_provider.decode("utf-8", "surrogatepass")
        doc = self._unseal(b"transaction", digest, provider, blob)
        members = ("state", "nonce", "code_verifier", "return_to")
        if doc is None or not all(isinstance(doc.get(m), str) for m in members):
            return None
        now = self.clock() if now is None else now
        if doc.get("expires_at", 0) <= now:
            return None
        return Transaction(provider, int(doc["created_at"]), int(doc["expires_at"]),
                           *(doc[m] for m in members))

    async def remember_jti(self, provider: str, jti: str, expires_at: float) -> bool:
        """Record a logout token's ``jti`` until ``expires_at``; False when the cluster has
        already seen it (a replay)."""
        key = f"{self.prefix}logout-jti:{_hashed(provider)[:20]}:{_hashed(jti)}"
        at = max(math.ceil(expires_at), int(self.clock()) + 1)
        return bool(await self._run(self.client.set(key, b"1", nx=True, exat=at)))

    # ---- events -------------------------------------------------------------------------

    async def publish(self, event: dict[str, Any]) -> None:
        await self._run(self.client.publish(self.channel, orjson.dumps(event)))

    async def _run(self, awaitable: Any) -> Any:
        """Await one Redis call; any failure of the store is StoreUnavailable."""
        try:
            async with asyncio.timeout(self.timeout):
                return await awaitable
        except (TimeoutError, OSError) as exc:
            raise StoreUnavailable(str(exc) or type(exc).__name__) from None
        except Exception as exc:
            if type(exc).__module__.startswith("redis"):
                raise StoreUnavailable(str(exc) or type(exc).__name__) from None
            raise
