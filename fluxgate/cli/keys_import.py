"""``fluxctl keys import FILE``: load many API keys into keys.db at once.

Rows come as JSON lines or CSV (a header row names the columns): ``name`` (required),
``scopes``, ``quota``, ``expiry``, ``allow_ip``, ``routes`` as for ``fluxctl keys generate``
(lists, or strings of space-separated items), and ``key``: an existing ``fg_`` key, whose tag
must verify under the signing secret (``key_id``, when present, must be its id: a file written
by ``--out`` imports as it is). With ``--generate`` the keys are minted instead and
written, with their names, to ``--out`` (created with mode 0600; never printed).

Every row is checked (and minted) before keys.db's write lock is taken, and the rows are then
inserted in one transaction, so other writers wait seconds, not the whole import: by
default a single bad row (its line number and the reason are reported) imports nothing; with
``--skip-bad`` the good rows are imported and the bad ones listed. Rows go in by batches
through ``executemany`` with no read-back; key ids are 72 random bits, so a collision is left
to the table's UNIQUE constraint, which names the row. A running gateway notices the commit
(keys.db's data_version) and publishes the new keys as after ``fluxctl keys generate``.
"""

from __future__ import annotations

import csv
import hmac
import json
import marshal
import os
import secrets
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TextIO

from fluxgate._core import b64url_decode, b64url_encode
from fluxgate.auth.keyops import KeyOps, _duration, _rate
from fluxgate.auth.keys import (
    ID_BYTES,
    ID_CHARS,
    PREFIX,
    SECRET_BYTES,
    TAG_BYTES,
    check_name,
    key_id_of,
    key_mac,
)
from fluxgate.auth.keystore import KeySpec, _check_expiry
from fluxgate.cluster.keysync import StoreUnavailable
from fluxgate.errors import KeyStoreError

if TYPE_CHECKING:
    from fluxgate.cluster.keyops import ClusterKeyOps

BATCH_ROWS = 50_000
# key_id: as --out writes it, so that a key file can be imported elsewhere; checked, not used.
COLUMNS = ("name", "scopes", "quota", "expiry", "allow_ip", "routes", "key", "key_id")
MAX_REASONS_SHOWN = 50
_PREFIX = PREFIX.decode()


class BadRow(Exception):
    """A row refused, with the reason (never the key itself)."""


@dataclass
class Summary:
    imported: int = 0
    refused: list[tuple[int, str]] = field(default_factory=list)  # (line, reason)

    def document(self, committed: bool, out: str | None) -> dict[str, Any]:
        return {
            "imported": self.imported if committed else 0,
            "committed": committed,
            "refused": [{"line": line, "reason": reason} for line, reason in self.refused],
            "out": out if committed else None,
        }


# ---- reading rows ---------------------------------------------------------------------------


def read_rows(f: TextIO, fmt: str) -> Iterator[tuple[int, dict[str, Any] | str]]:
    """(line number, the row as a dict) or (line number, why it cannot be read)."""
    if fmt == "csv":
        reader = csv.DictReader(f, restval="", strict=True)
        unknown = [c for c in reader.fieldnames or () if c not in COLUMNS]
        if unknown or "name" not in (reader.fieldnames or ()):
            yield 1, (f"unknown column(s) {', '.join(map(repr, unknown))}" if unknown
                      else "the header row has no 'name' column") + f" (columns: {', '.join(COLUMNS)})"
            return
        while True:
            try:
                row = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                yield reader.line_num, f"not CSV: {exc}"
                continue
            if None in row:
                yield reader.line_num, "more fields than the header names"
                continue
            yield reader.line_num, row
        return
    for number, line in enumerate(f, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as exc:
            yield number, f"not JSON: {exc.args[0] if exc.args else exc}"
            continue
        if not isinstance(row, dict):
            yield number, "not a JSON object"
            continue
        yield number, row


def _items(value: Any, what: str) -> tuple[str, ...]:
    if value is None or value == "":
        return ()
    if isinstance(value, str):
        return tuple(value.split())
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return tuple(value)
    raise BadRow(f"{what}: a list of strings or a space-separated string")


def _text(value: Any, what: str) -> str | None:
    if value is None or value == "":
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool) and what == "expiry":
        return str(value)
    if not isinstance(value, str):
        raise BadRow(f"{what}: a string")
    return value


# ---- keys -----------------------------------------------------------------------------------


def mint(signing_key: bytes) -> tuple[str, str, bytes]:
    """(key id, key, digest): the same keys as ``mint_key`` (uniform among those with no
    ``-`` or ``_``), drawn faster: id and secret are 33 bytes, a whole number of base64
    groups, so their text is redrawn without an HMAC until it is alphanumeric, and only the
    tag's text costs a second HMAC when it is not."""
    while True:
        raw = secrets.token_bytes(ID_BYTES + SECRET_BYTES)
        head = b64url_encode(raw)
        if not head.isalnum():
            continue
        mac = key_mac(signing_key, raw[:ID_BYTES], raw[ID_BYTES:])
        tail = b64url_encode(mac[:TAG_BYTES])
        if tail.isalnum():
            text = (PREFIX + head + tail).decode()
            return text[3 : 3 + ID_CHARS], text, mac


def verify(text: Any, signing_key: bytes) -> tuple[str, bytes]:
    """(key id, digest) of a given key; BadRow when it is not one issued under the secret."""
    if not isinstance(text, str) or key_id_of(text) is None:
        raise BadRow("key: not a FluxGate key (fg_ and 60 base64url characters)")
    try:
        raw = b64url_decode(text[len(_PREFIX):].encode())
    except ValueError:
        raise BadRow("key: not a FluxGate key (bad base64url)") from None
    raw_id, secret = raw[:ID_BYTES], raw[ID_BYTES : ID_BYTES + SECRET_BYTES]
    mac = key_mac(signing_key, raw_id, secret)
    if not hmac.compare_digest(mac[:TAG_BYTES], raw[ID_BYTES + SECRET_BYTES:]):
        raise BadRow("key: its tag does not verify under this gateway's signing secret")
    return text[3 : 3 + ID_CHARS], mac


# ---- progress -------------------------------------------------------------------------------


class Progress:
    """Rows done, rows/s and an ETA (from the bytes read) on stderr: one rewritten line on a
    terminal, a plain line every few seconds otherwise."""

    def __init__(self, total_bytes: int, stream: TextIO | None = None) -> None:
        self.total = max(total_bytes, 1)
        self.stream = stream if stream is not None else sys.stderr
        self.tty = self.stream.isatty()
        self.start = self.last = time.monotonic()

    def update(self, rows: int, done_bytes: int, *, final: bool = False) -> None:
        now = time.monotonic()
        if not final and now - self.last < (0.2 if self.tty else 5.0):
            return
        self.last = now
        elapsed = max(now - self.start, 1e-6)
        fraction = min(done_bytes / self.total, 1.0)
        eta = elapsed * (1 - fraction) / fraction if fraction > 0 else 0.0
        width = 30
        bar = "#" * int(width * fraction) + "-" * (width - int(width * fraction))
        line = (f"[{bar}] {fraction:4.0%} {rows:,} rows, {rows / elapsed:,.0f} rows/s, "
                f"{'done in' if final else 'ETA'} {elapsed if final else eta:.0f}s")
        if self.tty:
            self.stream.write("\r" + line + ("\n" if final else ""))
        else:
            self.stream.write(line + "\n")
        self.stream.flush()


# ---- the import -----------------------------------------------------------------------------


class Importer:
    """Checks rows and sends them to the store in batches, inside one transaction."""

    def __init__(self, ops: KeyOps, *, generate: bool, skip_bad: bool,
                 out: TextIO | None, out_csv: bool) -> None:
        self.ops = ops
        self.store = ops.store
        self.generate = generate
        self.skip_bad = skip_bad
        self.out = out
        self.out_csv = csv.writer(out) if (out is not None and out_csv) else None
        self.signing_key = ops.signing_key
        self.now = int(ops.clock())
        self.default_expiry = ops.config.api_keys.default_expiry
        self.existing = self.store.live_names(self.now)
        self.taken: set[str] = set()  # names of earlier rows
        self.seen_ids: set[str] = set()
        self.specs: dict[tuple, tuple] = {}  # the raw rights → their checked JSON columns
        self.summary = Summary()
        self.first_slot = self.store.last_slot()
        # Checked rows wait here (unlinked, 0600; digests, never keys) so that keys.db's
        # write lock is held only while they are inserted, not while the file is read.
        self.spool = tempfile.TemporaryFile(dir=ops.state_dir)
        self.prepared = 0
        self.batch: list[tuple] = []
        self.batch_lines: list[int] = []
        self.batch_keys: list[str] = []

    def row(self, line: int, row: dict[str, Any] | str) -> None:
        try:
            if isinstance(row, str):
                raise BadRow(row)
            self._check(line, row)
        except BadRow as exc:
            self.summary.refused.append((line, str(exc)))
        if len(self.batch) >= BATCH_ROWS:
            self.flush()

    def _check(self, line: int, row: dict[str, Any]) -> None:
        unknown = [k for k in row if k not in COLUMNS]
        if unknown:
            raise BadRow(f"unknown field(s) {', '.join(map(repr, unknown))}")
        name = row.get("name")
        if not isinstance(name, str) or not name:
            raise BadRow("name is required")
        try:
            check_name(name)
        except ValueError as exc:
            raise BadRow(str(exc)) from None
        if name in self.existing:
            raise BadRow(f"a key named {name!r} already exists")
        if name in self.taken:
            raise BadRow(f"name {name!r} comes earlier in the file")
        given = row.get("key")
        if self.generate and (given not in (None, "") or row.get("key_id") not in (None, "")):
            raise BadRow("key: given while --generate mints the keys")
        if not self.generate and given in (None, ""):
            raise BadRow("key is required (or pass --generate to mint keys)")
        columns = self._rights(row)
        if self.generate:
            key_id, text, digest = mint(self.signing_key)
        else:
            key_id, digest = verify(given, self.signing_key)
            text = ""
            if row.get("key_id") not in (None, "", key_id):
                raise BadRow(f"key_id: the key's id is {key_id}")
        if key_id in self.seen_ids:
            raise BadRow(f"key {key_id} comes earlier in the file")
        self.seen_ids.add(key_id)
        self.taken.add(name)
        self.batch.append((key_id, name, digest, *columns))
        self.batch_lines.append(line)
        self.batch_keys.append(text)

    def _rights(self, row: dict[str, Any]) -> tuple:
        raw = (
            _items(row.get("scopes"), "scopes"), _items(row.get("routes"), "routes"),
            _items(row.get("allow_ip"), "allow_ip"), _text(row.get("quota"), "quota"),
            _text(row.get("expiry"), "expiry"),
        )
        columns = self.specs.get(raw)
        if columns is None:
            scopes, routes, allow_ips, quota, expiry = raw
            try:
                spec = KeySpec.build(scopes, routes, allow_ips, _rate(quota))
                expires_in = _duration(expiry, "expiry", self.default_expiry)
                _check_expiry(expires_in)
            except KeyStoreError as exc:
                raise BadRow(str(exc).replace("--quota", "quota")) from None
            limit, window = spec.quota if spec.quota is not None else (None, None)
            columns = (json.dumps(list(spec.scopes)), json.dumps(list(spec.routes)),
                       json.dumps(list(spec.allow_ips)), limit, window,
                       self.now, self.now + int(expires_in))
            if len(self.specs) < 10_000:
                self.specs[raw] = columns
        return columns

    def flush(self) -> None:
        """Spool the checked batch (nothing once a row was refused, unless --skip-bad); a
        given key whose id keys.db already holds is refused here."""
        if self.batch and (self.skip_bad or not self.summary.refused):
            taken: set[str] = set()
            if not self.generate:
                taken = self.store.taken_key_ids([r[0] for r in self.batch])
            keep = [i for i, r in enumerate(self.batch) if r[0] not in taken]
            for i in range(len(self.batch)):
                if self.batch[i][0] in taken:
                    self.summary.refused.append(
                        (self.batch_lines[i], f"key {self.batch[i][0]} already exists"))
            marshal.dump(([self.batch_lines[i] for i in keep], [self.batch[i] for i in keep]),
                         self.spool)
            self.prepared += len(keep)
            if self.out is not None:
                for i in keep:
                    self._write_key(self.batch[i][1], self.batch[i][0], self.batch_keys[i])
        self.batch.clear()
        self.batch_lines.clear()
        self.batch_keys.clear()

    def insert(self) -> int:
        """Insert the spooled rows (inside the bulk transaction). A row whose name or key id
        was taken by another writer since the check is refused; returns how many were."""
        names, key_ids = self.store.added_since(self.first_slot, self.now)
        late = 0
        self.spool.seek(0)
        while True:
            try:
                lines, rows = marshal.load(self.spool)
            except EOFError:
                return late
            fresh: list[tuple] = []
            fresh_lines: list[int] = []
            for line, row in zip(lines, rows, strict=True):
                if row[1] in names or row[0] in key_ids:
                    self.summary.refused.append(
                        (line, "its name or key id was taken while the import ran"))
                    late += 1
                else:
                    fresh.append(row)
                    fresh_lines.append(line)
            clashes = self.store.insert_many(fresh)
            for i in clashes:
                self.summary.refused.append((fresh_lines[i], f"key {fresh[i][0]} already exists"))
            late += len(clashes)
            self.summary.imported += len(fresh) - len(clashes)

    def _write_key(self, name: str, key_id: str, text: str) -> None:
        assert self.out is not None
        if self.out_csv is not None:
            self.out_csv.writerow((name, key_id, text))
        else:
            self.out.write(json.dumps({"name": name, "key_id": key_id, "key": text}) + "\n")


def open_out(path: str) -> TextIO:
    """A new file with mode 0600 from the start (never an existing one: it may be a key file
    someone still needs)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    except FileExistsError:
        raise KeyStoreError(f"--out {path} exists: choose a new file") from None
    except OSError as exc:
        raise KeyStoreError(f"--out {path}: {exc.strerror}") from None
    return open(fd, "w", encoding="utf-8", newline="")


def run_import(ops: KeyOps, path: str, *, fmt: str | None, generate: bool, skip_bad: bool,
               out_path: str | None, progress: bool = True) -> dict[str, Any]:
    """Import the rows of ``path``; returns the summary document. Nothing is kept when a
    row is refused, unless ``skip_bad``."""
    fmt = fmt or ("csv" if path.lower().endswith(".csv") else "jsonl")
    if generate and not out_path:
        raise KeyStoreError("--generate needs --out FILE: the new keys are written there")
    if out_path and not generate:
        raise KeyStoreError("--out is for --generate (given keys are not written anywhere)")
    try:
        f = open(path, encoding="utf-8", newline="")
    except OSError as exc:
        raise KeyStoreError(f"{path}: {exc.strerror}") from None
    out = open_out(out_path) if out_path else None
    committed = False
    try:
        with f:
            bar = Progress(os.fstat(f.fileno()).st_size) if progress else None
            ops.signing_key  # noqa: B018  (loaded and checked before the import starts)
            importer = Importer(ops, generate=generate, skip_bad=skip_bad, out=out,
                                out_csv=fmt == "csv")
            with importer.spool:
                if importer.out_csv is not None:
                    importer.out_csv.writerow(("name", "key_id", "key"))
                rows = 0
                try:
                    for line, row in read_rows(f, fmt):
                        importer.row(line, row)
                        rows += 1
                        if bar is not None and rows % 4096 == 0:
                            bar.update(rows, f.buffer.tell())
                except UnicodeDecodeError as exc:  # the whole file is suspect: nothing kept
                    raise KeyStoreError(f"{path}: not UTF-8 text ({exc.reason}, after row "
                                        f"{rows}); nothing imported") from None
                importer.flush()
                summary = importer.summary
                if bar is not None:
                    bar.update(rows, bar.total, final=True)
                if importer.prepared and (skip_bad or not summary.refused):
                    if out is not None:
                        out.flush()
                        os.fsync(out.fileno())
                    locked_at = time.monotonic()
                    ops.store.begin_bulk()
                    try:
                        late = importer.insert()
                        # The key file already holds the late-refused rows' keys: all or none.
                        keep = summary.imported > 0 and (
                            not summary.refused or (skip_bad and not (late and out)))
                        ops.store.end_bulk(commit=keep)
                        committed = keep
                        if bar is not None:
                            bar.stream.write(f"keys.db: write lock held "
                                             f"{time.monotonic() - locked_at:.1f}s\n")
                    except BaseException:
                        ops.store.end_bulk(commit=False)
                        raise
                summary.refused.sort()
    finally:
        if out is not None:
            out.close()
            if not committed:
                os.unlink(out_path)
    return summary.document(committed, out_path)


def import_into_cluster(ops: ClusterKeyOps, path: str, **options) -> dict[str, Any]:
    """``fluxctl keys import`` in cluster mode: the rows are checked and committed to this
    node's keys.db as without a cluster (``run_import``), then written to Redis by batches of
    pipelined scripts, so that every node gets them. Redis must answer before anything is
    imported; if it stops answering midway, keys.db notes the keys still to send and the next
    catch-up on this node sends them (keysync.KeyMirror.push_slots)."""
    ops.mirror.catch_up()  # StoreUnavailable now, before any row is read
    before = ops.store.last_slot()
    doc = run_import(ops.ops, path, **options)
    if not doc.get("committed"):
        return doc
    last = ops.store.last_slot()
    try:
        ops.mirror.push_slots(before, last)
    except StoreUnavailable as exc:
        raise StoreUnavailable(
            f"{exc}: the import is committed to this node's keys.db; the keys not yet in the "
            "cluster are sent when this node's gateway (or the next fluxctl keys command) "
            "reaches the store again") from None
    doc["cluster_generation"] = ops.mirror.generation
    return doc

def render(doc: dict[str, Any]) -> list[str]:
    """The summary for a person: what was imported, and each refused row's line and reason."""
    refused = doc["refused"]
    if doc["committed"]:
        count = doc["imported"]
        lines = [f"Imported {count:,} key{'' if count == 1 else 's'}."]
        if doc["out"]:
            lines.append(f"The new keys are in {doc['out']} (mode 0600): hand them over and "
                         "delete the file; they are not stored anywhere else.")
    elif refused:
        lines = [f"Nothing imported: {len(refused):,} row(s) refused "
                 "(fix them, or pass --skip-bad to import the others)."]
    else:
        lines = ["Nothing imported: the file has no rows."]
    if refused and doc["committed"]:
        lines.append(f"Refused {len(refused):,} row(s):")
    for item in refused[:MAX_REASONS_SHOWN]:
        lines.append(f"  line {item['line']}: {item['reason']}")
    if len(refused) > MAX_REASONS_SHOWN:
        lines.append(f"  ... and {len(refused) - MAX_REASONS_SHOWN:,} more (--json lists all)")
    return lines
