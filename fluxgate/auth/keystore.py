"""The API key store: SQLite in ``state_dir/keys.db``.

One row per key, never deleted: a revoked or expired key keeps its row (and its last use)
for the record. Only the HMAC-SHA256 digest of a key is stored; the key itself is returned
once by ``generate``/``rotate`` and never written anywhere.

The database is shared by the gateway's master (which compiles the live keys into the shared
table and records last use) and by ``fluxctl`` (which may write while the gateway runs):
WAL mode, a busy timeout, and every change in one ``BEGIN IMMEDIATE`` transaction. The master
notices other writers through ``PRAGMA data_version``. The schema is versioned with
``PRAGMA user_version``; ``MIGRATIONS[i]`` takes version i to i+1, applied in order at open.

Times are unix seconds (UTC). A key's *name* is its consumer: quotas belong to the name, so
``rotate`` (a new key for the same name, the old one kept for a grace period) keeps the
count. Statuses: ``active``, ``grace`` (rotated, still accepted until ``grace_until``),
``expired``, ``revoked``.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import sqlite3
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import orjson

from fluxgate.auth.keys import MintedKey, check_name, is_key_id, mint_key
from fluxgate.config.parsers import (
    check_scope,
    did_you_mean,
    parse_network,
    parse_route_path,
)
from fluxgate.config.units import MAX_RATE_LIMIT
from fluxgate.errors import KeyStoreError

DB_FILE = "keys.db"
BUSY_TIMEOUT_MS = 5000
MAX_KEY_ROUTES = 64
MAX_KEY_CIDRS = 64
MAX_KEY_SCOPES = 64
BULK_CACHE_KIB = 256 * 1024  # the page cache of a bulk import's connection

MIGRATIONS: tuple[str, ...] = (
    # 0 -> 1: keys, and a small key/value table (the signing secret's fingerprint).
    """
    CREATE TABLE keys (
        slot INTEGER PRIMARY KEY,            -- also the key's usage slot in keys.usage
        key_id TEXT NOT NULL UNIQUE,         -- 12 base64url characters, part of the key
        name TEXT NOT NULL,
        digest BLOB NOT NULL,                -- HMAC-SHA256 of the key (never the key)
        scopes TEXT NOT NULL DEFAULT '[]',   -- JSON arrays
        routes TEXT NOT NULL DEFAULT '[]',
        allow_ips TEXT NOT NULL DEFAULT '[]',
        quota_limit INTEGER,                 -- NULL: no quota
        quota_window INTEGER,                -- seconds: 1, 60, 3600 or 86400
        created_at INTEGER NOT NULL,
        expires_at INTEGER NOT NULL,
        revoked_at INTEGER,
        rotated_at INTEGER,                  -- set on the old key by rotate
        grace_until INTEGER,                 -- the old key works until then
        successor TEXT,                      -- key_id of the key that replaced it
        last_used_at INTEGER,
        last_used_from TEXT,
        requests INTEGER NOT NULL DEFAULT 0
    );
    CREATE INDEX keys_by_name ON keys(name);
    CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    """,
    # 1 -> 2: a log of the rows whose key (not its usage) changed, so that a reader of the
    # store (the gateway's master) can apply only what changed since it last looked: rows
    # added since are those of a higher slot; rows updated since, those logged after.
    """
    CREATE TABLE key_changes (seq INTEGER PRIMARY KEY AUTOINCREMENT, slot INTEGER NOT NULL);
    CREATE TRIGGER key_changed AFTER UPDATE OF name, digest, scopes, routes, allow_ips,
        quota_limit, quota_window, expires_at, revoked_at, rotated_at, grace_until ON keys
    BEGIN
        INSERT INTO key_changes (slot) VALUES (NEW.slot);
    END;
    """,
    # 2 -> 3: keys' usage in a narrow table of its own, a row per key ever used. The master
    # copies last use and counts from keys.usage every few seconds; rewriting the wide key
    # rows for it wrote eight times the pages (100,000 keys in use: 116 MB of WAL and 5.3 us
    # of CPU a key per pass, against 14 MB and 2.7-3.0 us).
    """
    CREATE TABLE key_usage (
        slot INTEGER PRIMARY KEY,            -- the key's keys.slot
        last_used_at INTEGER,
        last_used_from TEXT,
        requests INTEGER NOT NULL DEFAULT 0
    );
    INSERT INTO key_usage (slot, last_used_at, last_used_from, requests)
        SELECT slot, last_used_at, last_used_from, requests FROM keys
        WHERE requests != 0 OR last_used_at IS NOT NULL;
    ALTER TABLE keys DROP COLUMN last_used_at;
    ALTER TABLE keys DROP COLUMN last_used_from;
    ALTER TABLE keys DROP COLUMN requests;
    """,
)

_COLUMNS = (
    "slot, key_id, name, digest, scopes, routes, allow_ips, quota_limit, quota_window, "
    "created_at, expires_at, revoked_at, rotated_at, grace_until, successor, "
    "last_used_at, last_used_from, COALESCE(requests, 0)"
)
_KEYS_WITH_USAGE = "keys LEFT JOIN key_usage USING (slot)"


_FOR_TABLE = (
    "WHERE (revoked_at IS NULL OR revoked_at >= ?) "
    "AND MIN(expires_at, COALESCE(grace_until, expires_at)) >= ?"
)

# A key that works at ``?`` (active, or in its grace period), as a SQL condition.
_WORKS_AT = "revoked_at IS NULL AND MIN(expires_at, COALESCE(grace_until, expires_at)) > ?"

_BULK_INSERT = (
    "INSERT INTO keys (key_id, name, digest, scopes, routes, allow_ips, quota_limit, "
    "quota_window, created_at, expires_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)


class ChangeMark(NamedTuple):
    """How far a reader of the store has seen: the highest slot, the last change logged."""

    slot: int
    seq: int


class TableRow(NamedTuple):
    """The columns of a key the shared table holds, as keys.db has them: a plain tuple, and
    its lists left as JSON text (``json_strings`` decodes them), because a million of these
    are read at every start and full rebuild. ``KeyRecord`` has the same names."""

    slot: int
    key_id: str
    name: str
    digest: bytes
    scopes: str
    routes: str
    allow_ips: str
    quota_limit: int | None
    quota_window: int | None
    expires_at: int
    revoked_at: int | None
    rotated_at: int | None
    grace_until: int | None

    @property
    def valid_until(self) -> int:
        if self.grace_until is not None:
            return min(self.expires_at, self.grace_until)
        return self.expires_at


_TABLE_COLUMNS = ", ".join(TableRow._fields)


class UnknownKey(KeyStoreError):
    """No key has that name (or id)."""


@dataclass(frozen=True)
class KeyRecord:
    """One row of the keys table."""

    slot: int
    key_id: str
    name: str
    digest: bytes
    scopes: tuple[str, ...]
    routes: tuple[str, ...]
    allow_ips: tuple[str, ...]
    quota_limit: int | None
    quota_window: int | None
    created_at: int
    expires_at: int
    revoked_at: int | None
    rotated_at: int | None
    grace_until: int | None
    successor: str | None
    last_used_at: int | None
    last_used_from: str | None
    requests: int

    @property
    def valid_until(self) -> int:
        """When the key stops working: its expiry, or the end of its rotation grace."""
        if self.grace_until is not None:
            return min(self.expires_at, self.grace_until)
        return self.expires_at

    def status(self, now: float) -> str:
        """``revoked``, ``expired``, ``grace`` or ``active``."""
        if self.revoked_at is not None:
            return "revoked"
        if now >= self.valid_until:
            return "expired"
        return "grace" if self.grace_until is not None else "active"

    def public(self, now: float) -> dict[str, object]:
        """Everything about the key but its digest: what ``fluxctl`` and the admin API show."""
        return {
            "name": self.name,
            "key_id": self.key_id,
            "status": self.status(now),
            "scopes": list(self.scopes),
            "routes": list(self.routes),
            "allow_ips": list(self.allow_ips),
            "quota": (
                {"limit": self.quota_limit, "window_s": self.quota_window}
                if self.quota_limit is not None
                else None
            ),
            "created_at": self.created_at,
            "expires_at": self.expires_at,
            "valid_until": self.valid_until,
            "revoked_at": self.revoked_at,
            "rotated_at": self.rotated_at,
            "grace_until": self.grace_until,
            "successor": self.successor,
            "last_used_at": self.last_used_at,
            "last_used_from": self.last_used_from,
            "requests": self.requests,
        }


@dataclass(frozen=True)
class KeySpec:
    """What a new key may do (checked by ``KeySpec.build``)."""

    scopes: tuple[str, ...] = ()
    routes: tuple[str, ...] = ()
    allow_ips: tuple[str, ...] = ()
    quota: tuple[int, int] | None = None  # (limit, window seconds)

    @classmethod
    def build(
        cls,
        scopes: Iterable[str] = (),
        routes: Iterable[str] = (),
        allow_ips: Iterable[str] = (),
        quota: tuple[int, int] | None = None,
    ) -> KeySpec:
        """Validate and normalize (routes as the router matches them, CIDRs canonical);
        raises KeyStoreError naming the bad value."""
        try:
            scope_list = tuple(dict.fromkeys(check_scope(s) for s in scopes))
            route_list = tuple(dict.fromkeys(parse_route_path(r) for r in routes))
            cidr_list = tuple(dict.fromkeys(str(parse_network(c.strip())) for c in allow_ips))
        except ValueError as exc:
            raise KeyStoreError(str(exc)) from None
        for what, items, cap in (
            ("scopes", scope_list, MAX_KEY_SCOPES),
            ("routes", route_list, MAX_KEY_ROUTES),
            ("allowed networks", cidr_list, MAX_KEY_CIDRS),
        ):
            if len(items) > cap:
                raise KeyStoreError(f"too many {what}: at most {cap} per key")
        if quota is not None and not (1 <= quota[0] <= MAX_RATE_LIMIT and quota[1] >= 1):
            raise KeyStoreError(f"invalid quota {quota}")
        return cls(scope_list, route_list, cidr_list, quota)

    @classmethod
    def of(cls, record: KeyRecord) -> KeySpec:
        """The rights ``record`` holds (a rotation's new key takes them)."""
        return cls(record.scopes, record.routes, record.allow_ips,
                   (record.quota_limit, record.quota_window)
                   if record.quota_limit is not None else None)


class KeyStore:
    """keys.db. Not thread-safe: one connection, used by one thread."""

    def __init__(self, path: str, *, clock=time.time) -> None:
        self.path = path
        self.clock = clock
        directory = os.path.dirname(path) or "."
        os.makedirs(directory, mode=0o700, exist_ok=True)
        # Created 0600 before SQLite opens it: the -wal and -shm files SQLite adds take the
        # database file's permissions.
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            os.close(fd)
        except FileExistsError:
            if os.stat(path).st_mode & 0o077:
                os.chmod(path, 0o600)
        self.db = sqlite3.connect(path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None)
        self.db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        mode = self.db.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if mode.lower() != "wal":
            raise KeyStoreError(f"{path}: cannot switch to WAL mode (got {mode})")
        self.db.execute("PRAGMA synchronous = NORMAL")  # durable at checkpoints; WAL-safe
        self._migrate()

    @classmethod
    def open(cls, state_dir: str, **kwargs) -> KeyStore:
        """The store of ``state_dir`` (created when missing)."""
        return cls(os.path.join(state_dir, DB_FILE), **kwargs)

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> KeyStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- schema -----------------------------------------------------------------------------

    def _migrate(self) -> None:
        version = self.db.execute("PRAGMA user_version").fetchone()[0]
        if version > len(MIGRATIONS):
            raise KeyStoreError(
                f"{self.path} has schema version {version}, newer than this FluxGate "
                f"({len(MIGRATIONS)}); upgrade FluxGate"
            )
        if version == len(MIGRATIONS):
            return
        self.db.execute("BEGIN IMMEDIATE")
        try:
            version = self.db.execute("PRAGMA user_version").fetchone()[0]  # after the lock
            for number in range(version, len(MIGRATIONS)):
                for statement in _statements(MIGRATIONS[number]):
                    self.db.execute(statement)
                self.db.execute(f"PRAGMA user_version = {number + 1}")
            self.db.execute("COMMIT")
        except BaseException:
            self.db.execute("ROLLBACK")
            raise

    @property
    def schema_version(self) -> int:
        return self.db.execute("PRAGMA user_version").fetchone()[0]

    def data_version(self) -> int:
        """Changes whenever another connection commits (PRAGMA data_version)."""
        return self.db.execute("PRAGMA data_version").fetchone()[0]

    # ---- the signing secret's fingerprint ---------------------------------------------------

    def check_signing_key(self, signing_key: bytes) -> None:
        """Bind the store to a signing key: the first call records its fingerprint; later
        calls raise KeyStoreError when the key differs, since every stored digest (and so
        every key) would then be refused."""
        fingerprint = hmac.new(signing_key, b"fluxgate keys.db fingerprint", hashlib.sha256)
        value = fingerprint.hexdigest()[:16]
        self.db.execute("BEGIN IMMEDIATE")
        try:
            row = self.db.execute("SELECT value FROM meta WHERE key = 'secret'").fetchone()
            if row is None:
                self.db.execute("INSERT INTO meta VALUES ('secret', ?)", (value,))
            self.db.execute("COMMIT")
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        if row is not None and not hmac.compare_digest(row[0], value):
            raise KeyStoreError(
                f"the API key signing secret differs from the one the keys in {self.path} "
                "were issued under: every key would be refused. Restore state_dir/keys.secret "
                "(or api_keys.signing_secret) from a backup"
            )

    # ---- reads ------------------------------------------------------------------------------

    def _select(self, where: str = "", params: Sequence[object] = ()) -> list[KeyRecord]:
        rows = self.db.execute(f"SELECT {_COLUMNS} FROM {_KEYS_WITH_USAGE} {where} ORDER BY slot",
                               params)
        return [_record(row) for row in rows]

    def all(self) -> list[KeyRecord]:
        """Every key, oldest first."""
        return self._select()

    def by_name(self, name: str) -> list[KeyRecord]:
        """Every key of a name, oldest first (empty when the name is unknown)."""
        return self._select("WHERE name = ?", (name,))

    def by_id(self, key_id: str) -> KeyRecord | None:
        rows = self._select("WHERE key_id = ?", (key_id,))
        return rows[0] if rows else None

    def by_ids(self, key_ids: Sequence[str]) -> list[KeyRecord]:
        """The keys of ``key_ids`` that keys.db holds."""
        # 500 ids a query: one query per key made reading every key of a large cluster (a
        # node's first start, a gap in its log) several times slower.
        records: list[KeyRecord] = []
        for start in range(0, len(key_ids), 500):
            chunk = list(key_ids[start:start + 500])
            records += self._select(f"WHERE key_id IN ({','.join('?' * len(chunk))})", chunk)
        return records

    def in_slots(self, after: int, upto: int) -> list[KeyRecord]:
        """The keys of slots (after, upto], in slot order (the rows an import added)."""
        return self._select("WHERE slot > ? AND slot <= ?", (after, upto))

    def names(self) -> list[str]:
        return [r[0] for r in self.db.execute("SELECT DISTINCT name FROM keys ORDER BY name")]

    def for_table(self, now: float, keep_dead: float) -> list[KeyRecord]:
        """Keys the shared table should hold: the valid ones, plus those revoked or expired
        less than ``keep_dead`` seconds ago (so refusals can say why)."""
        cutoff = int(now - keep_dead)
        return self._select(_FOR_TABLE, (cutoff, cutoff))

    def used(self) -> list[tuple[int, int | None, str | None, int]]:
        """(slot, last_used_at, last_used_from, requests) of every key ever used."""
        return self.db.execute(
            "SELECT slot, last_used_at, last_used_from, requests FROM key_usage "
            "WHERE requests != 0 OR last_used_at IS NOT NULL ORDER BY slot").fetchall()

    def table_rows(self, now: float, keep_dead: float) -> list[TableRow]:
        """``for_table``'s keys as ``TableRow``s: only what the table needs, undecoded."""
        cutoff = int(now - keep_dead)
        rows = self.db.execute(
            f"SELECT {_TABLE_COLUMNS} FROM keys {_FOR_TABLE} ORDER BY slot", (cutoff, cutoff))
        return list(map(TableRow._make, rows))

    def table_snapshot(self, now: float, keep_dead: float) -> tuple[list[TableRow], ChangeMark]:
        """``table_rows`` and the mark they are as of, read in one transaction:
        ``changed_since(mark)`` then returns every key written after the rows were read."""
        self.db.execute("BEGIN")  # a read transaction: one snapshot for both reads
        try:
            mark = self._mark()
            records = self.table_rows(now, keep_dead)
        finally:
            self.db.execute("COMMIT")
        return records, mark

    def changed_since(self, mark: ChangeMark, *, limit: int | None = None
                      ) -> tuple[list[KeyRecord], ChangeMark] | None:
        """The keys added or changed (not their usage) after ``mark``, oldest change first,
        by slot, each as it stands now, and the mark to ask from next time; None when there are
        more than ``limit``."""
        self.db.execute("BEGIN")
        try:
            now_mark = self._mark()
            if now_mark == mark:
                return [], mark
            if limit is not None and (now_mark.slot - mark.slot) + (now_mark.seq - mark.seq) > limit:
                return None
            # Two reads, each by the primary key: their OR in one WHERE scans every row.
            added = self._select("WHERE slot > ?", (mark.slot,))
            updated = self._select(
                "WHERE slot <= ? AND slot IN (SELECT slot FROM key_changes WHERE seq > ?)",
                (mark.slot, mark.seq))
            records = sorted(updated + added, key=lambda r: r.slot)
        finally:
            self.db.execute("COMMIT")
        return records, now_mark

    def forget_changes(self, mark: ChangeMark) -> None:
        """Drop the change log up to ``mark`` (a reader that rebuilt from it needs it no more)."""
        self._write(lambda: self.db.execute("DELETE FROM key_changes WHERE seq <= ?", (mark.seq,)))

    def _mark(self) -> ChangeMark:
        slot = self.last_slot()
        # AUTOINCREMENT keeps the last seq in sqlite_sequence even once the log is pruned.
        row = self.db.execute(
            "SELECT seq FROM sqlite_sequence WHERE name = 'key_changes'").fetchone()
        return ChangeMark(slot, row[0] if row else 0)

    # ---- changes ----------------------------------------------------------------------------

    def _write(self, fn, *args):
        self.db.execute("BEGIN IMMEDIATE")
        try:
            result = fn(*args)
            self.db.execute("COMMIT")
            return result
        except BaseException:
            self.db.execute("ROLLBACK")
            raise

    def generate(
        self, name: str, spec: KeySpec, *, expires_in: float, signing_key: bytes
    ) -> tuple[KeyRecord, str]:
        """A new key for a new name. Returns (its record, the key: show it once)."""
        try:
            check_name(name)
        except ValueError as exc:
            raise KeyStoreError(str(exc)) from None
        _check_expiry(expires_in)

        def insert() -> tuple[KeyRecord, str]:
            self.check_new_name(name, self.clock())
            minted = mint_key(signing_key)
            return self._insert(name, minted, spec, int(self.clock()), expires_in), minted.text

        return self._write(insert)

    def rotate(
        self, name: str, *, grace: float, expires_in: float | None, signing_key: bytes
    ) -> tuple[KeyRecord, str, list[KeyRecord]]:
        """A new key for ``name`` with the current key's rights and, unless ``expires_in``
        says otherwise, its lifetime; the current key keeps working for ``grace`` seconds.
        Returns (new record, the new key, [the old record])."""
        if grace < 0:
            raise KeyStoreError("the grace period must not be negative")
        if expires_in is not None:
            _check_expiry(expires_in)

        def swap() -> tuple[KeyRecord, str, list[KeyRecord]]:
            now = int(self.clock())
            current = self.current(name, now)
            lifetime = expires_in
            if lifetime is None:
                lifetime = max(current.expires_at - current.created_at, 1)
            minted = mint_key(signing_key)
            new = self._insert(name, minted, KeySpec.of(current), now, lifetime)
            self.db.execute(
                "UPDATE keys SET rotated_at = ?, grace_until = ?, successor = ? WHERE slot = ?",
                (now, now + int(grace), new.key_id, current.slot),
            )
            return new, minted.text, [self._one(current.slot)]

        return self._write(swap)

    def renew(self, name: str, *, expires_in: float) -> KeyRecord:
        """Push the expiry of ``name``'s current key to now + ``expires_in`` (an expired key
        comes back; a revoked one does not)."""
        _check_expiry(expires_in)

        def extend() -> KeyRecord:
            now = int(self.clock())
            current = self.renewable(name)
            self.db.execute(
                "UPDATE keys SET expires_at = ? WHERE slot = ?",
                (now + int(expires_in), current.slot),
            )
            return self._one(current.slot)

        return self._write(extend)

    def revoke(self, name_or_id: str) -> list[KeyRecord]:
        """Revoke every unrevoked key of a name, or the one key with that id. Returns them."""

        def revoke() -> list[KeyRecord]:
            now = int(self.clock())
            rows = self.revocable(name_or_id)
            for r in rows:
                self.db.execute("UPDATE keys SET revoked_at = ? WHERE slot = ?", (now, r.slot))
            return [self._one(r.slot) for r in rows]

        return self._write(revoke)

    def record_usage(self, updates: Iterable[tuple[int, int | None, str | None, int]]) -> None:
        """Store (slot, last_used_at, last_used_from, requests) rows from the usage file."""
        rows = list(updates)
        if rows:
            # Only for keys keys.db holds (a slot is never reused).
            self._write(lambda: self.db.executemany(
                "INSERT INTO key_usage (slot, last_used_at, last_used_from, requests) "
                "SELECT ?1, ?2, ?3, ?4 WHERE EXISTS (SELECT 1 FROM keys WHERE slot = ?1) "
                "ON CONFLICT (slot) DO UPDATE SET "
                "last_used_at = COALESCE(excluded.last_used_at, last_used_at), "
                "last_used_from = COALESCE(excluded.last_used_from, last_used_from), "
                "requests = MAX(requests, excluded.requests)",
                rows,
            ))

    # ---- bulk import ------------------------------------------------------------------------

    def live_names(self, now: float) -> set[str]:
        """Names that hold a working key (active or in grace): a new key may not take one."""
        rows = self.db.execute(f"SELECT DISTINCT name FROM keys WHERE {_WORKS_AT}", (now,))
        return {r[0] for r in rows}

    def last_slot(self) -> int:
        """The highest slot so far (0 when empty): rows added later have higher ones."""
        return self.db.execute("SELECT COALESCE(MAX(slot), 0) FROM keys").fetchone()[0]

    def added_since(self, slot: int, now: float) -> tuple[set[str], set[str]]:
        """(names with a working key, key ids) among the rows added after ``slot``."""
        rows = self.db.execute(f"SELECT name, key_id, {_WORKS_AT} FROM keys WHERE slot > ?",
                               (now, slot)).fetchall()
        return {name for name, _, live in rows if live}, {key_id for _, key_id, _ in rows}

    def taken_key_ids(self, key_ids: Sequence[str]) -> set[str]:
        """Those of ``key_ids`` that a row already has."""
        taken: set[str] = set()
        for start in range(0, len(key_ids), 500):
            chunk = key_ids[start : start + 500]
            marks = ",".join("?" * len(chunk))
            taken.update(r[0] for r in self.db.execute(
                f"SELECT key_id FROM keys WHERE key_id IN ({marks})", chunk))
        return taken

    def begin_bulk(self) -> None:
        """Open the one write transaction of a bulk import (``insert_many`` ...
        ``end_bulk``): other writers wait, readers keep the previous state until it commits."""
        # Random key ids land all over the UNIQUE index: with SQLite's default 2 MiB page
        # cache a million of them spill and reread pages (a fifth more time under the write
        # lock, measured at 1,000,000 keys).
        self.db.execute(f"PRAGMA cache_size = -{BULK_CACHE_KIB}")
        self.db.execute("BEGIN IMMEDIATE")

    def end_bulk(self, commit: bool) -> None:
        """Commit the bulk import's transaction, or roll all of it back."""
        self.db.execute("COMMIT" if commit else "ROLLBACK")

    def insert_many(self, rows: Sequence[tuple]) -> list[int]:
        """Insert rows of (key_id, name, digest, scopes JSON, routes JSON, allow_ips JSON,
        quota_limit, quota_window, created_at, expires_at) inside ``begin_bulk``, with no
        read-back. A row whose key id is already taken is left out; returns the indexes of
        those rows (a UNIQUE violation stops ``executemany`` at that row, so the count of rows
        inserted so far says which row it was, and the rest of the batch is sent again)."""
        refused: list[int] = []
        start = 0
        while start < len(rows):
            before = self.db.total_changes
            try:
                self.db.executemany(_BULK_INSERT, rows[start:] if start else rows)
                return refused
            except sqlite3.IntegrityError:
                failed = start + self.db.total_changes - before
                refused.append(failed)
                start = failed + 1
        return refused

    # ---- internals --------------------------------------------------------------------------

    def _one(self, slot: int) -> KeyRecord:
        return self._select("WHERE slot = ?", (slot,))[0]

    # ---- which keys a change touches (also cluster mode's, fluxgate/cluster/keyops.py) ------

    def check_new_name(self, name: str, now: float) -> None:
        """Refuse a new key for ``name`` while it holds a working (active or grace) one."""
        if any(r.status(now) in ("active", "grace") for r in self.by_name(name)):
            raise KeyStoreError(
                f"a key named {name!r} already exists; use `fluxctl keys rotate {name}` "
                "for a new key, or choose another name"
            )

    def current(self, name: str, now: float) -> KeyRecord:
        """The active key of ``name`` that a rotation replaces."""
        rows = self.by_name(name)
        if not rows:
            raise self.unknown(name)
        current = [r for r in rows if r.revoked_at is None and r.grace_until is None]
        if not current or current[-1].status(now) != "active":
            raise KeyStoreError(
                f"{name!r} has no active key to rotate (revoked or expired); "
                f"`fluxctl keys renew {name}` brings an expired key back"
            )
        return current[-1]

    def renewable(self, name: str) -> KeyRecord:
        """The key of ``name`` that a renewal extends: its last one neither revoked nor
        rotated (an expired one comes back)."""
        rows = [r for r in self.by_name(name) if r.revoked_at is None and r.grace_until is None]
        if not rows:
            raise self.unknown(name)
        return rows[-1]

    def revocable(self, name_or_id: str) -> list[KeyRecord]:
        """The keys a revocation revokes: every unrevoked key of a name, or the one key with
        that id; KeyStoreError when they all are already."""
        rows = [r for r in self.by_name(name_or_id) if r.revoked_at is None]
        if not rows and is_key_id(name_or_id):
            by_id = self.by_id(name_or_id)
            if by_id is not None:
                if by_id.revoked_at is not None:
                    raise KeyStoreError(f"key {name_or_id} is already revoked")
                rows = [by_id]
        if not rows:
            if self.by_name(name_or_id):
                raise KeyStoreError(f"every key of {name_or_id!r} is already revoked")
            raise self.unknown(name_or_id)
        return rows

    def unknown(self, name: str) -> UnknownKey:
        """The error for a name (or id) that has no key, with a did-you-mean hint."""
        known = self.names()
        hint = did_you_mean(name, known)
        return UnknownKey(f"no key named {name!r}{hint}" + ("" if known else " (no keys yet)"))

    def _insert(
        self, name: str, minted: MintedKey, spec: KeySpec, now: int, expires_in: float
    ) -> KeyRecord:
        limit, window = spec.quota if spec.quota is not None else (None, None)
        cursor = self.db.execute(
            "INSERT INTO keys (key_id, name, digest, scopes, routes, allow_ips, quota_limit, "
            "quota_window, created_at, expires_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                minted.key_id, name, minted.digest, json.dumps(list(spec.scopes)),
                json.dumps(list(spec.routes)), json.dumps(list(spec.allow_ips)), limit, window,
                now, now + int(expires_in),
            ),
        )
        return self._one(cursor.lastrowid)


def _statements(script: str) -> list[str]:
    """The SQL statements of a migration (a trigger's body holds semicolons of its own)."""
    out: list[str] = []
    pending = ""
    for piece in script.split(";"):
        pending += piece + ";"
        if sqlite3.complete_statement(pending):
            if pending.strip(" \n;"):
                out.append(pending)
            pending = ""
    return out


def _check_expiry(seconds: float) -> None:
    if not seconds >= 1:
        raise KeyStoreError("the expiry must be at least 1 second")
    if seconds > 10 * 366 * 86400:
        raise KeyStoreError("the expiry must be at most 10 years")


def json_strings(text: str) -> tuple[str, ...]:
    """A JSON array column as a tuple."""
    # Most keys have no routes or networks, and many no scopes.
    return () if text == "[]" else tuple(orjson.loads(text))


def _record(row: tuple) -> KeyRecord:
    (slot, key_id, name, digest, scopes, routes, allow_ips, quota_limit, quota_window,
     created_at, expires_at, revoked_at, rotated_at, grace_until, successor,
     last_used_at, last_used_from, requests) = row
    return KeyRecord(
        slot, key_id, name, bytes(digest), json_strings(scopes), json_strings(routes),
        json_strings(allow_ips), quota_limit, quota_window, created_at, expires_at,
        revoked_at, rotated_at, grace_until, successor, last_used_at, last_used_from, requests,
    )
