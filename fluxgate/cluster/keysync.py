"""API keys in Redis: the authoritative copy in cluster mode, and keys.db kept in step with it.

Redis holds, under one hash tag (so that one Lua script may touch them all, Redis Cluster too):

    {prefix keys}:records     hash, key id -> JSON record (keyrecords.encode)
    {prefix keys}:generation  the number of the last change, only ever growing
    {prefix keys}:epoch       a random name for this copy of the data: a Redis that lost it
                              (restarted empty) has none, or another one
    {prefix keys}:log         stream, one entry per change, id ``<generation>-0``, field
                              ``ids``: the key ids it wrote, or ``*`` (read everything again);
                              trimmed to about LOG_LENGTH entries
    {prefix keys}:names       hash, key name -> generation of the last change to that name
    {prefix keys}:secret      a fingerprint of the signing secret (nodes with another refuse)
    {prefix}keys:changes      pub/sub channel: each new generation is announced on it

Every change (create, rotate, renew, revoke, an import batch) is ONE script (WRITE_SCRIPT):
check that no name it touches changed after the generation the writer's keys.db is in step
with (else the writer catches up and computes its change again: two nodes cannot both create
the same name, while changes to different names never wait for each other), write the
records, bump the generation, log, publish. A node brings keys.db in step (``catch_up``) by generation,
not by the messages it happened to receive: it reads the log after its own generation, or every
record when the log no longer reaches back. When Redis's epoch is not the one keys.db was last
in step with (Redis restarted empty, or replaced), the node first merges its keys.db into Redis
(MERGE_SCRIPT: a key Redis lacks is added; a key revoked on the node is revoked in Redis;
nothing is ever un-revoked), then reads everything back: the union of what the nodes hold,
revocations winning, is what Redis holds afterwards.

Everything here is synchronous and meant for one thread: ``fluxctl`` calls it directly, the
gateway's master from one thread of its own (fluxgate/cluster/keys.py).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from fluxgate.auth.keyops import KeyOps
from fluxgate.auth.keys import is_key_id
from fluxgate.auth.keystore import KeyRecord
from fluxgate.cluster.connect import hash_tagged, parse_store_url, redis_client
from fluxgate.cluster.keyrecords import (
    Applied,
    BadRecord,
    apply_records,
    cluster_mark,
    decode,
    encode,
    set_cluster_mark,
    set_unpushed,
    unpushed,
)
from fluxgate.errors import ConfigError, FluxGateError, KeyStoreError

log = logging.getLogger("fluxgate.cluster.keys")

LOG_LENGTH = 100_000  # log entries kept: a node behind by more reads every record again
READ_BATCH = 1000  # log entries or records read per call
WRITE_BATCH = 500  # records per script call (an import, a merge)
WRITE_ATTEMPTS = 8  # a write computed again after another node's change came first
PUSH_SLOTS = 20_000  # keys.db rows read, then written to Redis, at a time (an import)

WRITE_SCRIPT = """
-- KEYS: records, generation, epoch, log, names
-- ARGV: epoch, generation the writer has seen, channel, log length, mode ('set', or 'add':
--       only keys Redis lacks), count of names, name1, ..., id1, record1, ...
if redis.call('GET', KEYS[3]) ~= ARGV[1] then return {0, -1} end
local seen = tonumber(ARGV[2])
local names = tonumber(ARGV[6])
for i = 7, 6 + names do
  local changed = tonumber(redis.call('HGET', KEYS[5], ARGV[i]) or '0') or 0
  if changed > seen then return {0, changed} end
end
local ids = {}
for i = 7 + names, #ARGV, 2 do
  if ARGV[5] == 'set' then
    redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
    ids[#ids + 1] = ARGV[i]
  elseif redis.call('HSETNX', KEYS[1], ARGV[i], ARGV[i + 1]) == 1 then
    ids[#ids + 1] = ARGV[i]
  end
end
local gen = redis.call('INCR', KEYS[2])
for i = 7, 6 + names do
  redis.call('HSET', KEYS[5], ARGV[i], gen)
end
redis.call('XADD', KEYS[4], 'MAXLEN', '~', ARGV[4], gen .. '-0', 'ids', table.concat(ids, ','))
redis.call('PUBLISH', ARGV[3], gen)
return {1, gen}
"""

MERGE_SCRIPT = """
-- KEYS: records, generation, epoch, log
-- ARGV: epoch, seal (a generation, or ''), channel, log length, id1, record1, revoked1, ...
local epoch = redis.call('GET', KEYS[3])
if not epoch then
  redis.call('SET', KEYS[3], ARGV[1])
  epoch = ARGV[1]
end
if epoch ~= ARGV[1] then return {0, -1} end
for i = 5, #ARGV, 3 do
  local theirs = redis.call('HGET', KEYS[1], ARGV[i])
  if not theirs then
    redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
  elseif ARGV[i + 2] ~= '' then
    local ok, doc = pcall(cjson.decode, theirs)
    if not ok or type(doc) ~= 'table' or doc.revoked_at == nil or doc.revoked_at == cjson.null then
      redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
    end
  end
end
if ARGV[2] == '' then return {1, 0} end
local gen = tonumber(redis.call('GET', KEYS[2]) or '0') or 0
gen = math.max(gen, tonumber(ARGV[2])) + 1
redis.call('SET', KEYS[2], gen)
redis.call('XADD', KEYS[4], 'MAXLEN', '~', ARGV[4], gen .. '-0', 'ids', '*')
redis.call('PUBLISH', ARGV[3], gen)
return {1, gen}
"""


class StoreUnavailable(FluxGateError):
    """The cluster's store could not be reached: the change was not made anywhere."""


class StoreBusy(KeyStoreError):
    """Other nodes kept changing keys while this change was being made; try again."""


@dataclass(frozen=True)
class KeyNames:
    """The Redis keys and channel of the cluster's API keys under ``prefix``."""

    records: str
    generation: str
    epoch: str
    log: str
    secret: str
    names: str
    channel: str

    @classmethod
    def of(cls, prefix: str) -> KeyNames:
        return cls(*(hash_tagged(prefix, "keys", part) for part in
                     ("records", "generation", "epoch", "log", "secret", "names")),
                   prefix + "keys:changes")

    @property
    def script_keys(self) -> list[str]:
        return [self.records, self.generation, self.epoch, self.log, self.names]


def require_shared_secret(config) -> None:
    """Cluster mode needs ``api_keys.signing_secret``: a secret generated on each node would
    make every other node's keys invalid there."""
    if not (config.api_keys.signing_secret or "").strip():
        raise ConfigError(
            "cluster mode (store: redis://...) needs api_keys.signing_secret, the same on "
            "every node (e.g. ${FLUXGATE_KEY_SECRET}): keys are signed with it, and a secret "
            "generated on each node would make the other nodes' keys invalid",
            "api_keys.signing_secret",
        )


@dataclass
class Change:
    """What a key operation writes, and how its answer is made from the rows once applied."""

    records: list[KeyRecord]
    answer: Callable[[list[KeyRecord]], Any]


class KeyMirror:
    """keys.db of one node, in step with the cluster's keys in Redis. One thread only."""

    def __init__(self, config, *, client=None) -> None:
        require_shared_secret(config)
        self.config = config
        self.store_url = parse_store_url(config.store)
        self.names = KeyNames.of(config.cluster.prefix)
        self.ops = KeyOps(config)
        self.client = client or redis_client(self.store_url, config.cluster,
                                             asynchronous=False)
        self._write = self.client.register_script(WRITE_SCRIPT)
        self._merge = self.client.register_script(MERGE_SCRIPT)
        self.epoch, self.generation = cluster_mark(self.ops.store)
        self.refused = 0  # malformed records met (each logged once)
        self._refused_ids: set[str] = set()
        self._secret_checked = False
        self._pushing = False
        self.effects = Applied()  # what keys.db gained since the owner last took it

    def close(self) -> None:
        self.ops.close()
        self.client.close()

    def take_effects(self) -> Applied:
        """The changes applied to keys.db since the last call (for the table's publisher)."""
        effects, self.effects = self.effects, Applied()
        return effects

    def describe_store(self) -> str:
        return self.store_url.describe()

    # ---- reading the store --------------------------------------------------------------------

    def catch_up(self) -> bool:
        """Bring keys.db in step with Redis; True when Redis had changes this node lacked.
        Raises StoreUnavailable when Redis cannot be reached."""
        try:
            return self._catch_up()
        except _REDIS_ERRORS as exc:
            raise self.unavailable(exc) from None

    def _catch_up(self) -> bool:
        self._check_secret()
        epoch, generation = self.client.mget(self.names.epoch, self.names.generation)
        epoch = epoch.decode() if epoch is not None else None
        try:
            generation = int(generation or 0)
        except ValueError:
            log.error("the cluster's key generation in Redis is not a number; reading every key")
            generation = -1
        if epoch is None or epoch != self.epoch or generation < self.generation:
            self._merge_and_read_all(epoch)
            changed = True
        elif generation == self.generation:
            changed = False
        else:
            if not self._read_log():
                self._read_all()
            changed = True
        self._resume_push()
        return changed

    def _check_secret(self) -> None:
        """Refuse to work with a cluster whose keys were signed under another secret."""
        if self._secret_checked:
            return
        mine = hmac.new(self.ops.signing_key, b"fluxgate cluster keys", hashlib.sha256)
        mine_hex = mine.hexdigest()[:16]
        self.client.set(self.names.secret, mine_hex, nx=True)
        theirs = self.client.get(self.names.secret)
        if theirs is not None and not hmac.compare_digest(theirs, mine_hex.encode()):
            raise ConfigError(
                f"api_keys.signing_secret differs from the one the keys in "
                f"{self.describe_store()} were issued under: every node needs the same secret",
                "api_keys.signing_secret",
            )
        self._secret_checked = True

    def _read_log(self) -> bool:
        """Apply the log's entries after our generation; False when it does not reach back
        (or asks for everything to be read again)."""
        while True:
            start = self.generation + 1
            entries = self.client.xrange(self.names.log, min=f"{start}-0", count=READ_BATCH)
            if not entries:
                return False  # the generation grew but no entry: trimmed or lost
            ids: list[str] = []
            last = self.generation
            for number, (entry_id, fields) in enumerate(entries):
                generation = _entry_generation(entry_id)
                if generation is None or (number == 0 and generation != start):
                    return False
                listed = (fields.get(b"ids") or b"").decode("ascii", "replace")
                if listed == "*":
                    return False
                ids += [i for i in listed.split(",") if is_key_id(i)]
                last = generation
            records = self._fetch(ids)
            self._apply(records, last)
            # A revocation keys.db already had (fluxctl on this node writes keys.db itself)
            # is put in force in place too: the table may not have it yet.
            known = set(self.effects.revoked)  # thousands after a long gap: not a list scan
            self.effects.revoked += [r.key_id for r in records if r.revoked_at is not None
                                     and r.key_id not in known]
            if len(entries) < READ_BATCH:
                return True

    def _read_all(self) -> None:
        """Read every record of Redis into keys.db (after a gap in the log, or a merge)."""
        epoch, generation = self.client.mget(self.names.epoch, self.names.generation)
        if epoch is None:
            raise StoreUnavailable(f"{self.describe_store()} lost the cluster's keys meanwhile")
        generation = int(generation or 0)  # read before the records: later ones come again
        cursor = 0
        count = 0
        while True:
            cursor, batch = self.client.hscan(self.names.records, cursor, count=READ_BATCH)
            records = self._decode_all(batch.items())
            count += len(records)
            self._apply(records, None)
            if cursor == 0:
                break
        self.epoch = epoch.decode()
        self._apply([], generation)
        log.info("read every key of %s: %s keys, generation %s", self.describe_store(), count,
                 generation)

    def _merge_and_read_all(self, epoch: str | None) -> None:
        """Redis lost the keys (or holds another copy): add ours to it, then read it all."""
        records = self.ops.store.all()
        if not records:  # nothing to add: take Redis's copy as it is
            self.client.set(self.names.epoch, epoch or secrets.token_hex(8), nx=True)
            self._read_all()
            return
        if epoch is None:
            epoch = secrets.token_hex(8)
            log.warning("%s holds no API keys: seeding it from this node's keys.db",
                        self.describe_store())
        else:
            log.warning("%s holds another copy of the API keys than this node last saw "
                        "(restarted, replaced, or this node is new to it): merging this "
                        "node's keys.db into it", self.describe_store())
        for start in range(0, len(records), WRITE_BATCH):
            args: list = []
            for r in records[start:start + WRITE_BATCH]:
                args += [r.key_id, encode(r), "" if r.revoked_at is None else r.revoked_at]
            ok, _ = self._merge(keys=self.names.script_keys, args=[
                epoch, "", self.names.channel, LOG_LENGTH, *args])
            if not ok:
                raise StoreUnavailable(f"{self.describe_store()} changed its keys meanwhile")
        ok, _ = self._merge(keys=self.names.script_keys, args=[
            epoch, self.generation, self.names.channel, LOG_LENGTH])
        if not ok:
            raise StoreUnavailable(f"{self.describe_store()} changed its keys meanwhile")
        self._read_all()

    def _fetch(self, ids: list[str]) -> list[KeyRecord]:
        ids = list(dict.fromkeys(ids))
        records: list[KeyRecord] = []
        for start in range(0, len(ids), READ_BATCH):
            chunk = ids[start:start + READ_BATCH]
            raws = self.client.hmget(self.names.records, chunk)
            records += self._decode_all((i.encode(), raw) for i, raw in zip(chunk, raws,
                                                                           strict=True)
                                        if raw is not None)
        return records

    def _decode_all(self, items) -> list[KeyRecord]:
        out = []
        for key_id, raw in items:
            key_text = key_id.decode("ascii", "replace")
            try:
                out.append(decode(key_text, raw))
            except BadRecord as exc:
                self.refused += 1
                if key_text not in self._refused_ids and len(self._refused_ids) < 10_000:
                    self._refused_ids.add(key_text)
                    log.error("the cluster's record of key %r is refused (%s); this node keeps "
                              "its own copy of that key, if any", key_text[:40], exc)
        return out

    def _apply(self, records: list[KeyRecord], generation: int | None) -> None:
        mark = (self.epoch, generation) if generation is not None and self.epoch else None
        applied = apply_records(self.ops.store, records, mark)
        for key_id in applied.refused:
            if key_id not in self._refused_ids:
                self._refused_ids.add(key_id)
                log.error("the cluster's record of key %s has another digest than this node's; "
                          "refused", key_id)
        self.refused += len(applied.refused)
        self.effects.add(applied)
        if generation is not None:
            self.generation = generation

    # ---- writing ------------------------------------------------------------------------------

    def write(self, operation: Callable[[], Change]) -> Any:
        """Run ``operation`` (computed from keys.db) against the latest generation, write its
        records to Redis, then to keys.db; return its answer. Raises StoreUnavailable (nothing
        was written), StoreBusy, or the operation's own KeyStoreError."""
        try:
            for _ in range(WRITE_ATTEMPTS):
                if self.epoch is None:
                    self._catch_up()
                change = operation()
                ok, generation = self._write(keys=self.names.script_keys,
                                             args=self._write_args(change.records))
                if ok:
                    # keys.db holds every change up to our generation and this one; those
                    # between (other names) come with the next catch-up.
                    self._apply(change.records, generation if generation == self.generation + 1
                                else None)
                    return change.answer([self.ops.store.by_id(r.key_id) for r in change.records])
                self._catch_up()  # a change to one of these names came first (or Redis lost
                #                  the keys): computed again on the caught-up keys.db
        except _REDIS_ERRORS as exc:
            raise self.unavailable(exc) from None
        raise StoreBusy("other nodes kept changing keys meanwhile; try again")

    def push_slots(self, first: int, last: int) -> None:
        """Add keys.db's rows of slots (first, last] (an import's) to Redis, those it lacks
        only. Until done, keys.db notes the slots still to push, and the next catch-up (of
        the gateway's master or of fluxctl) resumes there."""
        self._pushing = True
        try:
            for start in range(first, last, PUSH_SLOTS):
                set_unpushed(self.ops.store, (start, last))
                self.write_records(self.ops.store.in_slots(start, min(start + PUSH_SLOTS, last)))
            set_unpushed(self.ops.store, None)
        finally:
            self._pushing = False

    def _resume_push(self) -> None:
        span = None if self._pushing else unpushed(self.ops.store)
        if span is not None:
            log.warning("keys imported on this node had not all reached %s: sending the rest",
                        self.describe_store())
            self.push_slots(*span)

    def write_records(self, records: list[KeyRecord]) -> None:
        """Add many new records (an import) by batches, pipelined, each to Redis unless it
        holds that key already (so a retry never overwrites a change made since)."""
        done = 0
        try:
            while done < len(records):
                if self.epoch is None:
                    self._catch_up()
                # A Redis Cluster pipeline does not load its scripts (a plain one does):
                # load it first, on every primary, in case Redis lost it.
                self.client.script_load(WRITE_SCRIPT)
                pipe = self.client.pipeline(transaction=False)
                expected = self.generation
                batches = []
                for start in range(done, len(records), WRITE_BATCH):
                    batch = records[start:start + WRITE_BATCH]
                    self._write(keys=self.names.script_keys,
                                args=self._write_args(batch, "add"), client=pipe)
                    batches.append(batch)
                    if len(batches) == 20:
                        break
                results = pipe.execute()
                for batch, (ok, generation) in zip(batches, results, strict=True):
                    if not ok:
                        break
                    if generation == expected + 1:  # nothing of another writer between
                        self.generation = expected = generation
                    done += len(batch)
                else:
                    continue
                self._catch_up()
            set_cluster_mark(self.ops.store, self.epoch, self.generation)
        except _REDIS_ERRORS as exc:
            raise self.unavailable(exc) from None

    def _write_args(self, records: list[KeyRecord], mode: str = "set") -> list:
        names = list(dict.fromkeys(r.name for r in records))
        args: list = [self.epoch, self.generation, self.names.channel, LOG_LENGTH, mode,
                      len(names), *names]
        for r in records:
            args += [r.key_id, encode(r)]
        return args

    def unavailable(self, exc: Exception) -> StoreUnavailable:
        return StoreUnavailable(
            f"the cluster's store {self.describe_store()} cannot be reached "
            f"({type(exc).__name__}); the key change was not made")


def _entry_generation(entry_id: bytes) -> int | None:
    try:
        major, _, minor = entry_id.decode("ascii").partition("-")
        return int(major) if minor == "0" else None
    except (UnicodeDecodeError, ValueError):
        return None


def _redis_errors() -> tuple[type[BaseException], ...]:
    try:
        from redis.exceptions import RedisError
    except ImportError:  # pragma: no cover - cluster mode needs redis-py
        return (OSError,)
    return (RedisError, OSError)


_REDIS_ERRORS = _redis_errors()


def now() -> int:
    return int(time.time())
