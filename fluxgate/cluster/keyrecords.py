"""API key records as the cluster's store holds them, and keys.db kept in step with them.

In cluster mode Redis holds one JSON record per key (everything but its usage, which stays per
node): ``encode`` writes it, ``decode`` reads it back and checks every field as strictly as
``fluxctl keys generate`` checks its arguments, so a record that another program (or an
attacker with write access to Redis) left malformed is refused, never half-applied. Redis
access alone mints no working key: a key must carry a tag made with the signing secret, which
Redis never sees.

``apply_records`` writes records into a node's keys.db (its cache and offline copy): a new key
gets a row (and a local slot, its usage slot), a known one is updated, except that a revocation
is never undone and a key id never changes its digest. ``cluster_mark``/``set_cluster_mark``
keep, in keys.db, which epoch and generation of the store the rows are as of.
"""

from __future__ import annotations

import json
import operator
from collections.abc import Sequence
from dataclasses import dataclass, field

import orjson

from fluxgate.auth.keys import check_name, is_key_id
from fluxgate.auth.keystore import KeyRecord, KeySpec, KeyStore
from fluxgate.errors import KeyStoreError

MAX_RECORD_BYTES = 16 * 1024  # a record holds at most 64 scopes, routes and networks
MAX_TIME = 2**40  # unix seconds: far beyond any expiry a key may have
MAX_DIGEST_CHARS = 64
FIELDS = ("key_id", "name", "digest", "scopes", "routes", "allow_ips", "quota_limit",
          "quota_window", "created_at", "expires_at", "revoked_at", "rotated_at", "grace_until",
          "successor")
_META_EPOCH = "cluster_epoch"
_META_GENERATION = "cluster_generation"
_META_UNPUSHED = "cluster_unpushed"


class BadRecord(ValueError):
    """A record from the store that cannot be used; the message says why (never a digest)."""


def encode(record: KeyRecord) -> bytes:
    """The store's JSON record of a key (its usage left out: that stays on each node)."""
    return orjson.dumps({
        "key_id": record.key_id, "name": record.name, "digest": record.digest.hex(),
        "scopes": list(record.scopes), "routes": list(record.routes),
        "allow_ips": list(record.allow_ips), "quota_limit": record.quota_limit,
        "quota_window": record.quota_window, "created_at": record.created_at,
        "expires_at": record.expires_at, "revoked_at": record.revoked_at,
        "rotated_at": record.rotated_at, "grace_until": record.grace_until,
        "successor": record.successor,
    })


def decode(key_id: str, raw: bytes | str) -> KeyRecord:
    """The record stored under ``key_id``; BadRecord when any field is missing or wrong."""
    if len(raw) > MAX_RECORD_BYTES:
        raise BadRecord(f"{len(raw)} bytes, more than {MAX_RECORD_BYTES}")
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise BadRecord("not JSON") from None
    if not isinstance(doc, dict):
        raise BadRecord("not a JSON object")
    missing = [f for f in FIELDS if f not in doc]
    if missing:
        raise BadRecord(f"missing {', '.join(missing)}")
    if doc["key_id"] != key_id or not is_key_id(key_id):
        raise BadRecord("its key_id is not the one it is stored under")
    name = doc["name"]
    try:
        check_name(name if isinstance(name, str) else "")
    except ValueError:
        raise BadRecord("bad name") from None
    digest = doc["digest"]
    if not isinstance(digest, str) or len(digest) != MAX_DIGEST_CHARS:
        raise BadRecord("bad digest")
    try:
        digest_bytes = bytes.fromhex(digest)
    except ValueError:
        raise BadRecord("bad digest") from None
    lists = [doc[f] for f in ("scopes", "routes", "allow_ips")]
    if not all(isinstance(v, list) and all(isinstance(s, str) for s in v) for v in lists):
        raise BadRecord("scopes, routes and allow_ips must be lists of strings")
    limit, window = _time(doc, "quota_limit", True), _time(doc, "quota_window", True)
    if (limit is None) != (window is None):
        raise BadRecord("quota_limit and quota_window go together")
    try:
        spec = KeySpec.build(*lists, (limit, window) if limit is not None else None)
    except (ValueError, KeyStoreError) as exc:
        raise BadRecord(str(exc)) from None
    if [list(spec.scopes), list(spec.routes), list(spec.allow_ips)] != lists:
        raise BadRecord("scopes, routes or allow_ips not in their normal form")
    successor = doc["successor"]
    if successor is not None and not (isinstance(successor, str) and is_key_id(successor)):
        raise BadRecord("bad successor")
    return KeyRecord(
        0, key_id, name, digest_bytes, spec.scopes, spec.routes, spec.allow_ips, limit, window,
        _time(doc, "created_at"), _time(doc, "expires_at"), _time(doc, "revoked_at", True),
        _time(doc, "rotated_at", True), _time(doc, "grace_until", True), successor,
        None, None, 0,
    )


def _time(doc: dict, name: str, optional: bool = False) -> int | None:
    value = doc[name]
    if value is None and optional:
        return None
    if type(value) is not int or not 0 <= value < MAX_TIME:  # bool is an int: refused too
        raise BadRecord(f"{name} must be a whole number" + (" or null" if optional else ""))
    return value


# ---- keys.db, in step with the store ----------------------------------------------------------


@dataclass
class Applied:
    """What ``apply_records`` changed in keys.db."""

    changed: list[str] = field(default_factory=list)  # key ids added or updated
    revoked: list[str] = field(default_factory=list)  # key ids revoked by this call
    refused: list[str] = field(default_factory=list)  # a digest that differs from keys.db's

    def add(self, other: Applied) -> None:
        self.changed += other.changed
        self.revoked += other.revoked
        self.refused += other.refused


_CHANGED_COLUMNS = FIELDS[1:]  # everything but the key id may change (the digest may not)
_UPSERT = (
    f"INSERT INTO keys ({', '.join(FIELDS)}) VALUES ({', '.join('?' * len(FIELDS))}) "
    "ON CONFLICT(key_id) DO UPDATE SET "
    + ", ".join(f"{c} = excluded.{c}" for c in _CHANGED_COLUMNS if c not in ("digest", "revoked_at"))
    + ", revoked_at = COALESCE(keys.revoked_at, excluded.revoked_at)"
    " WHERE keys.digest = excluded.digest"
)


def _row(record: KeyRecord) -> tuple:
    return (record.key_id, record.name, record.digest, json.dumps(list(record.scopes)),
            json.dumps(list(record.routes)), json.dumps(list(record.allow_ips)),
            record.quota_limit, record.quota_window, record.created_at, record.expires_at,
            record.revoked_at, record.rotated_at, record.grace_until, record.successor)


# A record's fields but its key id and revocation, compared as they are (its lists are
# tuples): no JSON is built for the rows a catch-up finds unchanged, most of a full read.
_COMPARED = operator.attrgetter(*(f for f in FIELDS[1:] if f != "revoked_at"))


def _same(local: KeyRecord, record: KeyRecord) -> bool:
    """Whether keys.db's ``local`` already says what ``record`` says. A revocation is never
    undone: a record that says otherwise changes nothing else."""
    return _COMPARED(local) == _COMPARED(record) and (
        local.revoked_at is not None or record.revoked_at is None)


def apply_records(store: KeyStore, records: Sequence[KeyRecord],
                  mark: tuple[str, int] | None = None) -> Applied:
    """Write ``records`` into keys.db in one transaction (and, with ``mark``, the store's
    epoch and generation they are as of); unchanged rows are left alone."""
    applied = Applied()
    store.db.execute("BEGIN IMMEDIATE")
    try:
        local = {r.key_id: r for r in store.by_ids([r.key_id for r in records])}
        rows = []
        for record in records:
            mine = local.get(record.key_id)
            if mine is not None and mine.digest != record.digest:
                applied.refused.append(record.key_id)
                continue
            if mine is not None and _same(mine, record):
                continue
            rows.append(_row(record))
            applied.changed.append(record.key_id)
            if record.revoked_at is not None and (mine is None or mine.revoked_at is None):
                applied.revoked.append(record.key_id)
        if rows:
            store.db.executemany(_UPSERT, rows)
        if mark is not None:
            _set_mark(store, *mark)
        store.db.execute("COMMIT")
    except BaseException:
        store.db.execute("ROLLBACK")
        raise
    return applied


def cluster_mark(store: KeyStore) -> tuple[str | None, int]:
    """(epoch, generation) of the store that keys.db was last brought in step with."""
    rows = dict(store.db.execute("SELECT key, value FROM meta WHERE key IN (?, ?)",
                                 (_META_EPOCH, _META_GENERATION)).fetchall())
    try:
        generation = int(rows.get(_META_GENERATION, 0))
    except ValueError:
        generation = 0
    return rows.get(_META_EPOCH), generation


def set_cluster_mark(store: KeyStore, epoch: str, generation: int) -> None:
    """Record (epoch, generation) in keys.db."""
    store.db.execute("BEGIN IMMEDIATE")
    try:
        _set_mark(store, epoch, generation)
        store.db.execute("COMMIT")
    except BaseException:
        store.db.execute("ROLLBACK")
        raise


def _set_mark(store: KeyStore, epoch: str, generation: int) -> None:
    store.db.executemany("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
                         ((_META_EPOCH, epoch), (_META_GENERATION, str(generation))))


def unpushed(store: KeyStore) -> tuple[int, int] | None:
    """The slots (after, up to) of imported rows not yet all written to the cluster's store."""
    row = store.db.execute("SELECT value FROM meta WHERE key = ?", (_META_UNPUSHED,)).fetchone()
    try:
        first, last = (int(v) for v in row[0].split(":")) if row else (0, 0)
    except ValueError:
        return None
    return (first, last) if first < last else None


def set_unpushed(store: KeyStore, span: tuple[int, int] | None) -> None:
    """Note (or, with None, clear) the slots still to write to the cluster's store."""
    if span is None:
        store.db.execute("DELETE FROM meta WHERE key = ?", (_META_UNPUSHED,))
    else:
        store.db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
                         (_META_UNPUSHED, f"{span[0]}:{span[1]}"))
