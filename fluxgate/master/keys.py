"""The master's API key service: keys.db → the shared key table, usage → keys.db, /admin/keys.

At start (before the workers fork) it makes sure state_dir holds the signing secret, keys.db
(migrated), the quota file and the usage file, and publishes a first table. Then, a few times
a second, it asks SQLite whether another connection (``fluxctl``) committed
(``PRAGMA data_version``) and publishes a new generation when one did: a new, revoked,
rotated or renewed key reaches every worker within a second. A write through the admin API
is committed to keys.db at once and answered once the generation that holds it is published:
writes within PUBLISH_DELAY of the first share one generation, so a burst of creates costs one
table build, not one per key; the build runs in a thread, so the admin API keeps answering.
A revocation is set in the published table in place (one flag byte per key, see
TableWriter.revoke) and answered at once, whatever the table's size. Every few seconds
it copies the workers' last-use stamps from the usage file into keys.db, a chunk of slots at
a time with pauses in between, so that copying a million keys' use never holds its loop for
long; at stop it copies them all one last time.

Admin API (bearer token), JSON in and out, the same operations as ``fluxctl keys``:

    GET  /admin/keys                     list (``?all=1``: revoked and expired too)
    POST /admin/keys                     create {name, scopes, quota, expiry, allow_ips, routes}
    GET  /admin/keys/show?name=NAME      every key of a name (or ``?name=KEY_ID``)
    GET  /admin/keys/usage?name=NAME     quota window and use of a name
    POST /admin/keys/rotate              {name, grace?, expiry?}
    POST /admin/keys/renew               {name, expiry?}
    POST /admin/keys/revoke              {name} (a name, or a key id)
"""

from __future__ import annotations

import asyncio
import logging
import os
import sqlite3
import time
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

import orjson

from fluxgate.auth.keyops import KeyOps
from fluxgate.auth.keys import load_signing_key, signing_key_from_config
from fluxgate.auth.keystore import ChangeMark, KeyStore, UnknownKey
from fluxgate.auth.keytable import (
    RESERVED_SLOTS,
    STAT_KEY_QUOTA,
    STAT_KEY_QUOTA_FULL,
    STAT_RULE_FULL,
    STAT_RULE_REJECTED,
    TABLE_FILE,
    USAGE_FILE,
    UsageFile,
    build_table,
    publish_table,
    read_generation,
    replace_table,
    usage_rows,
    usage_slot,
    write_table,
)
from fluxgate.auth.quotas import QUOTA_FILE, create_quota_file, open_quota_file
from fluxgate.auth.tablewriter import TableWriter
from fluxgate.errors import ClientError, ConfigError, KeyStoreError
from fluxgate.master.admin import AdminRequest, AdminResponse
from fluxgate.metrics import ProcessMetric

if TYPE_CHECKING:
    from fluxgate.config.schema import Config
    from fluxgate.master.admin import AdminRouter
    from fluxgate.master.services import ServiceContext

log = logging.getLogger("fluxgate.keys")

POLL_INTERVAL = 0.2  # s between PRAGMA data_version checks
FLUSH_INTERVAL = 5.0  # s between passes copying last-use stamps into keys.db
# A pass costs in proportion to the keys used since the last one (100,000 keys in use: ~0.6 s
# of CPU, on the proxy's cores). It goes FLUSH_CHUNK_SLOTS slots at a time, each chunk
# followed by a pause that keeps flushing at this share of a core, so a million keys in use
# never hold the master's loop (admin API, publications) for more than one chunk; pauses are
# shortened so that a pass takes at most FLUSH_PASS_MAX. Nothing waits on the copy: whoever
# reads a key's use (admin API, fluxctl) reads keys.usage itself over it, and keys.usage is a
# file of its own; the copy is what keys.usage is seeded from should it be lost. At 1% of a
# core it cost the api_key route 1.2-1.5% per core with 100,000 keys in turn.
FLUSH_CPU_SHARE = 0.0025
FLUSH_CHUNK_SLOTS = 32768  # 1 MiB of the usage file
FLUSH_PASS_MAX = 300.0

PUBLISH_DELAY = 0.005  # s the first admin write waits for others to share its generation
KEEP_DEAD = 7 * 86400.0  # revoked/expired keys stay in the table this long (refusal reasons)
SPARE_MIN = 4096  # entries of room a table is built with for keys added in place ...
SPARE_SHARE = 16  # ... or 1/16 of its keys, whichever is more
REBUILD_AT = 0.5  # share of that room taken when a full rebuild starts in the background
PREVIOUS_GRACE = 2.0  # s a replaced table still gets changes (workers map the new one by then)


def flush_pause(spent: float, chunks: int) -> float:
    """Seconds to wait after a chunk of a flush pass that took ``spent`` seconds of CPU, in a
    pass of ``chunks`` chunks."""
    return min(max(spent, 0.0) * (1 / FLUSH_CPU_SHARE - 1), FLUSH_PASS_MAX / max(chunks, 1))


class BadKeyRequest(ClientError):
    """The key operation was refused."""

    status, code = 400, "invalid_request"


class KeyNameNotFound(ClientError):
    """No key with that name or id."""

    status, code = 404, "not_found"


class KeyService:
    """keys.db, the shared key table and the usage file, for one master."""

    name = "keys"

    def __init__(self, master: ServiceContext) -> None:
        self.master = master
        self.ops: KeyOps | None = None
        self.usage: UsageFile | None = None
        self._quota_map: Any = None
        self.quotas: Any = None
        self.generation = 0
        self.keys = 0
        self.builds = 0  # full builds (changes in between are written in place)
        self._data_version = -1
        # The usage file's bytes as last copied into keys.db: one buffer, not an object per
        # key (a flush compares it with the file block by block).
        self._flushed = bytearray()
        self._task: asyncio.Task[None] | None = None
        self._flusher: asyncio.Task[None] | None = None  # the usage flush passes
        # The generation the admin writes committed since the last publish wait for, and the
        # timer that publishes it.
        self._pending: asyncio.Future[int] | None = None
        self._pending_timer: asyncio.TimerHandle | None = None
        # One publication at a time (in place, or waiting for a full rebuild).
        self._build_lock = asyncio.Lock()
        self._building: asyncio.Task[None] | None = None
        # The published table, written in place; what of keys.db it holds; the tables it
        # replaced lately (a worker may map one for another sweep), with when they go.
        self._writer: TableWriter | None = None
        self._mark = ChangeMark(0, 0)
        self._previous: list[tuple[TableWriter, float]] = []
        # A full rebuild, in a thread, while changes keep being published in place.
        self._rebuilding: asyncio.Task[None] | None = None
        self._next_prune = float("inf")  # when a key in the table has been dead KEEP_DEAD

    # ---- lifecycle --------------------------------------------------------------------------

    async def start(self, config: Config) -> None:
        state_dir = self.master.state_dir
        try:
            self.ops = KeyOps(config)
            self.ops.signing_key  # noqa: B018 - created or checked now, before any worker
        except KeyStoreError as exc:
            raise ConfigError(str(exc), "api_keys") from None
        create_quota_file(os.path.join(state_dir, QUOTA_FILE))
        self._quota_map, self.quotas = open_quota_file(os.path.join(state_dir, QUOTA_FILE))
        self.usage = UsageFile(os.path.join(state_dir, USAGE_FILE), create=True)
        if self.usage.created:
            self._seed_usage()
        self.generation = read_generation(state_dir)
        self.rebuild()
        loop = asyncio.get_running_loop()
        self._task = loop.create_task(self._watch())
        self._flusher = loop.create_task(self._flush_forever())

    async def reload(self, config: Config) -> None:
        """Refuse a config whose signing secret does not match the keys already issued."""
        assert self.ops is not None
        try:
            key = signing_key_from_config(config.api_keys.signing_secret)
            if key is None:
                key = load_signing_key(None, self.master.state_dir)
            self.ops.store.check_signing_key(key)
        except KeyStoreError as exc:
            raise ConfigError(str(exc), "api_keys.signing_secret") from None
        self.ops.config = config
        self.ops._signing_key = key

    async def stop(self) -> None:
        for task in (self._task, self._flusher):  # first: they start publications and flushes
            if task is not None:
                task.cancel()
                try:
                    await task
                except asyncio.CancelledError:
                    pass
        if self._pending_timer is not None:
            self._pending_timer.cancel()
            self._start_publish()  # the admin writes already committed are not left waiting
        if self._building is not None:
            await asyncio.gather(self._building, return_exceptions=True)
        if self._rebuilding is not None:
            await asyncio.gather(self._rebuilding, return_exceptions=True)
        self._close_writers(float("inf"))
        if self.ops is not None:
            try:
                self.flush_usage()
            except Exception:
                log.exception("last flush of key usage failed")
            self.ops.close()
        if self.usage is not None:
            self.usage.close()
        if self.quotas is not None:
            self.quotas.release()
            self._quota_map.close()

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(POLL_INTERVAL)
            try:
                now = time.monotonic()
                # Another connection's commit (fluxctl) is published as an admin write is:
                # in place when it fits, else by a full rebuild in a thread.
                if self._pending is None and not self._build_lock.locked() \
                        and self.ops.store.data_version() != self._data_version:
                    self._publish_soon()
                # Expiry needs no new table (workers compare it per request); a key that
                # has been dead for KEEP_DEAD leaves the table at the next full rebuild.
                if time.time() >= self._next_prune:
                    self._rebuild_soon()
                self._close_writers(now)
            except Exception:  # a locked or broken keys.db must not stop the watcher
                log.exception("key table watcher")

    # ---- the table --------------------------------------------------------------------------

    def rebuild(self) -> None:
        """Publish a new table generation from keys.db, in full, on the loop (at start)."""
        # Read before the rows: a commit after this point triggers another publication.
        version = self.ops.store.data_version()
        records, mark = self.ops.store.table_snapshot(time.time(), KEEP_DEAD)
        spare = _spare(len(records))
        self.usage.ensure(_usage_need(records) + spare)
        publish_table(self.master.state_dir, self._build(records, self.generation + 1, spare))
        self._swap(TableWriter(os.path.join(self.master.state_dir, TABLE_FILE)), mark)
        self._published(version, records)

    async def rebuild_off_loop(self) -> None:
        """``rebuild`` with the reading, building and writing in a thread.

        The rows are read on a connection of the thread's own (keys.db is in WAL mode, so it
        sees every commit made before, and blocks no writer). Changes published in place
        meanwhile (and every other commit since the rows were read) are written into the new
        file on the loop, with no await before the rename: nothing committed before the
        swap is missing from the new table."""
        state_dir = self.master.state_dir
        version = self.ops.store.data_version()
        # The change log up to the table's mark is in the table, and will be in every later
        # one: the thread drops it.
        records, mark = await asyncio.to_thread(_snapshot, self.ops.store.path, time.time(),
                                                self._mark)
        # Every pass over a million rows in a thread: the loop keeps answering.
        need, prune = await asyncio.to_thread(_needs, records)
        spare = _spare(len(records))
        self.usage.ensure(need + spare)
        data = await asyncio.to_thread(self._build, records, self.generation + 1, spare)
        del records
        tmp = await asyncio.to_thread(write_table, state_dir, data)
        del data
        writer = TableWriter(tmp)
        try:
            since, mark = self.ops.store.changed_since(mark)
            if not writer.room(since):
                raise OSError(f"{len(since)} keys changed during the key table's rebuild")
            writer.put(since, self.quotas.tag)
            replace_table(state_dir, tmp)
        except BaseException:
            writer.close()
            _unlink(tmp)
            raise
        self._swap(writer, mark)
        self._next_prune = prune
        self._published(version, since)

    def _swap(self, writer: TableWriter, mark: ChangeMark) -> None:
        """``writer``'s file is the published table now."""
        if self._writer is not None:
            self._previous.append((self._writer, time.monotonic() + PREVIOUS_GRACE))
        self._writer, self._mark = writer, mark
        self._next_prune = float("inf")
        self.builds += 1

    def _writers(self) -> list[TableWriter]:
        return [self._writer, *(w for w, _ in self._previous)] if self._writer else []

    def _close_writers(self, now: float) -> None:
        """Stop writing into replaced tables every worker has left by ``now``."""
        keep = []
        for writer, until in self._previous:
            if until <= now:
                writer.close()
            else:
                keep.append((writer, until))
        self._previous = keep
        if now == float("inf") and self._writer is not None:
            self._writer.close()
            self._writer = None

    def publish_in_place(self) -> bool:
        """Publish every change committed to keys.db since the table's mark into the table
        itself; False (nothing done) when they do not fit its room."""
        if self._writer is None:
            return False
        version = self.ops.store.data_version()
        room = self._writer.capacity - self._writer.n
        changed = self.ops.store.changed_since(self._mark, limit=room)
        if changed is None:
            return False
        records, mark = changed
        if not records:
            self._data_version = version
            return True
        if not self._writer.room(records):
            return False
        for writer in self._writers():
            if writer is self._writer or writer.room(records):
                writer.put(records, self.quotas.tag)
        self._mark = mark
        self._published(version, records)
        if self._writer.spare_used() >= REBUILD_AT:
            self._rebuild_soon()
        return True

    async def publish_changes(self) -> None:
        """Publish every change committed so far: in place, or by a full rebuild (joined
        when one is under way: it takes every commit made before its swap)."""
        if self.publish_in_place():
            return
        self._rebuild_soon()
        await asyncio.shield(self._rebuilding)

    def _rebuild_soon(self) -> None:
        """Start a full rebuild in the background unless one is under way."""
        if self._rebuilding is None or self._rebuilding.done():
            self._rebuilding = asyncio.get_running_loop().create_task(self._rebuild_logged())
            # Logged there; the writers waiting for it (if any) get the exception too.
            self._rebuilding.add_done_callback(_retrieved)

    async def _rebuild_logged(self) -> None:
        try:
            await self.rebuild_off_loop()
        except Exception as exc:
            log.warning("key table rebuild failed: %s; the watcher tries again", exc)
            self._data_version = -1
            self._next_prune = time.time() + POLL_INTERVAL * 5
            raise

    def _build(self, records: list, generation: int, spare: int = 0) -> bytes:
        return build_table(records, generation=generation, usage_slots=self.usage.slots,
                           quota_tag=self.quotas.tag, spare=spare)

    def _published(self, version: int, records: list) -> None:
        self._data_version = version
        self.generation += 1
        for writer in self._writers():
            writer.set_generation(self.generation)
        self._next_prune = min(self._next_prune, _prune_time(records))
        # The records are not kept (~550 MB of objects with a million keys, which every
        # worker would inherit at fork): the table is all later work needs.
        self.keys = self._writer.keys if self._writer is not None else len(records)
        log.debug("key table generation %s: %s keys", self.generation, self.keys)

    async def published(self) -> int:
        """Wait for a generation holding every write committed so far; return its number.

        The first caller arms a publish PUBLISH_DELAY ahead; callers until it runs share it.
        """
        # Shielded: a client that hangs up must not cancel the generation others wait for.
        return await asyncio.shield(self._publish_soon())

    def _publish_soon(self) -> asyncio.Future[int]:
        """The coming publication (armed now if none is), holding every committed write."""
        if self._pending is None:
            loop = asyncio.get_running_loop()
            self._pending = loop.create_future()
            self._pending_timer = loop.call_later(PUBLISH_DELAY, self._start_publish)
        return self._pending

    def _start_publish(self) -> None:
        self._pending_timer = None
        if self._pending is not None:
            self._building = asyncio.get_running_loop().create_task(self._publish())

    async def _publish(self) -> None:
        async with self._build_lock:
            # Taken once the build before is done: the writes committed while it ran all
            # share this one. Those committed from now on wait for the next.
            pending, self._pending = self._pending, None
            if pending is None:
                return
            try:
                await self.publish_changes()
            except Exception as exc:
                log.warning("key table publication failed: %s; the watcher tries again", exc)
                self._data_version = -1  # the watcher builds it again at its next look
                pending.set_exception(exc)
                pending.exception()  # retrieved: nobody awaiting it is not an error twice
            else:
                pending.set_result(self.generation)

    async def _flush_forever(self) -> None:
        while True:
            await asyncio.sleep(FLUSH_INTERVAL)
            try:
                await self.flush_usage_gradually()
            except Exception:  # a locked or broken keys.db must not stop the flushes
                log.exception("key usage flush")

    async def flush_usage_gradually(self) -> None:
        """One ``flush_usage`` pass over the usage file, FLUSH_CHUNK_SLOTS slots at a time,
        with a ``flush_pause`` after each chunk."""
        chunks = -(-self.usage.slots // FLUSH_CHUNK_SLOTS)
        for first in range(0, self.usage.slots, FLUSH_CHUNK_SLOTS):
            spent = time.thread_time()
            self.flush_usage(first, first + FLUSH_CHUNK_SLOTS)
            await asyncio.sleep(flush_pause(time.thread_time() - spent, chunks))

    def flush_usage(self, first_slot: int = 0, end_slot: int | None = None) -> None:
        """Copy changed last-use stamps and request counts of the usage slots
        [first_slot, end_slot) (default: all) into keys.db."""
        # On the master's loop: unchanged blocks of slots are compared whole; only the rows
        # of changed keys are built in Python.
        slots, raws = self.usage.changes(self._flushed, first_slot, end_slot)
        # The reserved slots are counters, not keys; a key's slot is RESERVED_SLOTS + its
        # keys.db slot (a key pruned from the table is no longer stamped by any worker).
        rows = [(slot - RESERVED_SLOTS, raw) for slot, raw in zip(slots, raws, strict=True)
                if slot >= RESERVED_SLOTS]
        self.ops.store.record_usage(usage_rows([k for k, _ in rows], [r for _, r in rows]))

    def _seed_usage(self) -> None:
        for slot, last_used_at, last_used_from, requests in self.ops.store.used():
            self.usage.seed(RESERVED_SLOTS + slot, last_used_at, last_used_from, requests)

    # ---- admin API --------------------------------------------------------------------------

    def admin_routes(self, router: AdminRouter) -> None:
        router.add("GET", "/admin/keys", self._list)
        router.add("POST", "/admin/keys", self._create)
        router.add("GET", "/admin/keys/show", self._show)
        router.add("GET", "/admin/keys/usage", self._usage)
        router.add("POST", "/admin/keys/rotate", self._rotate)
        router.add("POST", "/admin/keys/renew", self._renew)
        router.add("POST", "/admin/keys/revoke", self._revoke)

    async def _write(self, operation):
        """Run a key change (``operation(ops)``) on keys.db; return once its generation is
        published."""
        result = self._run(lambda: operation(self.ops))
        await self.published()  # the caller expects the change to be in force when answered
        return result

    async def _list(self, req: AdminRequest) -> AdminResponse:
        include_dead = _query(req).get("all", "") in ("1", "true", "yes")
        keys = self._run(lambda: self.ops.list(include_dead=include_dead))
        return AdminResponse.json(200, {"keys": keys, "generation": self.generation})

    async def _show(self, req: AdminRequest) -> AdminResponse:
        name = _query(req).get("name") or _missing("name")
        return AdminResponse.json(200, {"keys": self._run(lambda: self.ops.show(name))})

    async def _usage(self, req: AdminRequest) -> AdminResponse:
        name = _query(req).get("name") or _missing("name")
        return AdminResponse.json(200, self._run(lambda: self.ops.usage(name)))

    async def _create(self, req: AdminRequest) -> AdminResponse:
        result = await self._write(create_operation(req))
        log.info("admin API: key %s created for %s", result["key_id"], result["name"])
        return AdminResponse.json(201, result)

    async def _rotate(self, req: AdminRequest) -> AdminResponse:
        result = await self._write(rotate_operation(req))
        log.info("admin API: %s rotated to key %s", result["name"], result["key_id"])
        return AdminResponse.json(201, result)

    async def _renew(self, req: AdminRequest) -> AdminResponse:
        result = await self._write(renew_operation(req))
        log.info("admin API: key %s renewed until %s", result["key_id"], result["expires_at"])
        return AdminResponse.json(200, result)

    async def _revoke(self, req: AdminRequest) -> AdminResponse:
        operation = revoke_operation(req)
        result = self._run(lambda: operation(self.ops))
        await self.enforce_revocations([k["key_id"] for k in result])
        log.info("admin API: revoked %s", ", ".join(k["key_id"] for k in result))
        return AdminResponse.json(200, {"revoked": result})

    async def enforce_revocations(self, key_ids: list[str]) -> None:
        """Refuse ``key_ids`` (already revoked in keys.db, by this master or another writer
        such as the cluster's key service) in every worker before returning."""
        missing = self.revoke_in_place(key_ids)
        if missing:  # not published yet (a create still pending), or no table to flip
            await self.published()
        else:
            # In force in every worker now; the next generation, built without waiting for
            # it, carries the revocation from keys.db.
            self._publish_soon()

    def revoke_in_place(self, key_ids: list[str]) -> list[str]:
        """Set the revoked flag of ``key_ids`` (revoked in keys.db already) in the published
        table, and in those replaced lately; the ids it does not hold yet. In force in every
        worker on return: each maps the file, and reads the flag per request. (A full
        rebuild under way takes the revocation from keys.db before it swaps.)"""
        if self._writer is None:
            return list(key_ids)
        missing = self._writer.revoke(key_ids)
        for writer, _ in self._previous:
            writer.revoke(key_ids)
        return missing

    def _run(self, operation):
        try:
            result = operation()
        except UnknownKey as exc:
            raise KeyNameNotFound(str(exc)) from None
        except KeyStoreError as exc:
            raise BadKeyRequest(str(exc)) from None
        return result

    # ---- metrics ----------------------------------------------------------------------------

    def metrics(self) -> list[ProcessMetric]:
        if self.usage is None:
            return []
        out = [
            ProcessMetric("fluxgate_api_key_table_generation", "gauge",
                          "Generation of the shared API key table.", self.generation),
            ProcessMetric("fluxgate_api_key_table_keys", "gauge",
                          "Keys in the shared table (recently revoked/expired included).",
                          self.keys),
            ProcessMetric("fluxgate_api_key_table_builds_total", "counter",
                          "Full builds of the shared API key table (the start's included).",
                          self.builds),
        ]
        # Refusals by authentication are fluxgate_auth_failures_total{method="api_key"}
        # (auth/failures.py); a spent quota is not an authentication failure.
        help_text = "Requests refused because a quota was spent (or no quota bucket was free)."
        for source, word in (("api_key", STAT_KEY_QUOTA), ("api_key_table_full", STAT_KEY_QUOTA_FULL),
                             ("rule", STAT_RULE_REJECTED), ("rule_table_full", STAT_RULE_FULL)):
            out.append(ProcessMetric("fluxgate_quota_rejections_total", "counter", help_text,
                                     self.usage.stat(word), (("source", source),)))
        return out


def _snapshot(path: str, now: float, applied: ChangeMark) -> tuple[list, ChangeMark]:
    """The records of the next table and their mark, read on a connection of this thread's
    own; the change log up to ``applied`` dropped first (best effort: a writer holding
    keys.db, a bulk import, only delays it to the next rebuild)."""
    store = KeyStore(path)
    try:
        try:
            store.forget_changes(applied)
        except sqlite3.OperationalError as exc:
            log.debug("key change log not pruned: %s", exc)
        return store.table_snapshot(now, KEEP_DEAD)
    finally:
        store.close()


def _needs(records: list) -> tuple[int, float]:
    """``_usage_need`` and ``_prune_time`` of ``records``."""
    return _usage_need(records), _prune_time(records)


def _prune_time(records: list) -> float:
    """When the first of ``records`` has been dead KEEP_DEAD (and leaves the table)."""
    return KEEP_DEAD + 1 + min(
        (min(r.valid_until, r.revoked_at or r.valid_until) for r in records),
        default=float("inf"),
    )


def _retrieved(task: asyncio.Task) -> None:
    if not task.cancelled():
        task.exception()


def _spare(keys: int) -> int:
    """Entries of room for keys added in place, in a table built with ``keys``."""
    return max(SPARE_MIN, keys // SPARE_SHARE)


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _usage_need(records: list) -> int:
    """Usage slots the file must hold for these records."""
    return max((usage_slot(r) for r in records), default=0) + 1


def factory(master: ServiceContext) -> KeyService:
    return KeyService(master)


# ---- the admin API's key changes, as operations on a KeyOps (or cluster mode's ClusterKeyOps)


def create_operation(req: AdminRequest):
    """``POST /admin/keys``'s change, its body checked now."""
    body = _body(req)
    name = _str(body, "name", required=True)
    scopes, quota, expiry = _strs(body, "scopes"), _str(body, "quota"), _str(body, "expiry")
    allow_ips, routes = _strs(body, "allow_ips"), _strs(body, "routes")
    return lambda ops: ops.generate(name, scopes=scopes, quota=quota, expiry=expiry,
                                    allow_ips=allow_ips, routes=routes)


def rotate_operation(req: AdminRequest):
    """``POST /admin/keys/rotate``'s change, its body checked now."""
    body = _body(req)
    name, grace, expiry = (_str(body, "name", required=True), _str(body, "grace"),
                           _str(body, "expiry"))
    return lambda ops: ops.rotate(name, grace=grace, expiry=expiry)


def renew_operation(req: AdminRequest):
    """``POST /admin/keys/renew``'s change, its body checked now."""
    body = _body(req)
    name, expiry = _str(body, "name", required=True), _str(body, "expiry")
    return lambda ops: ops.renew(name, expiry=expiry)


def revoke_operation(req: AdminRequest):
    """``POST /admin/keys/revoke``'s change, its body checked now."""
    name = _str(_body(req), "name", required=True)
    return lambda ops: ops.revoke(name)


# ---- request helpers ------------------------------------------------------------------------


def _query(req: AdminRequest) -> dict[str, str]:
    return {k: v[-1] for k, v in parse_qs(req.query, keep_blank_values=True).items()}


def _body(req: AdminRequest) -> dict[str, Any]:
    try:
        body = orjson.loads(req.body or b"{}")
    except orjson.JSONDecodeError:
        raise BadKeyRequest("the body must be a JSON object") from None
    if not isinstance(body, dict):
        raise BadKeyRequest("the body must be a JSON object")
    return body


def _missing(field: str) -> str:
    raise BadKeyRequest(f"{field!r} is required")


def _str(body: dict[str, Any], field: str, *, required: bool = False) -> str | None:
    value = body.get(field)
    if value is None:
        if required:
            _missing(field)
        return None
    if not isinstance(value, str):
        raise BadKeyRequest(f"{field!r} must be a string")
    return value


def _strs(body: dict[str, Any], field: str) -> list[str]:
    value = body.get(field, [])
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise BadKeyRequest(f"{field!r} must be a list of strings")
    return value
