"""API keys for tests: a state_dir with a store, a published table, and a mapped KeyTable."""

from __future__ import annotations

import mmap
import os
from pathlib import Path

from fluxgate._core import KeyTable
from fluxgate.auth import keytable as kt
from fluxgate.auth.keys import load_signing_key
from fluxgate.auth.keystore import KeySpec, KeyStore
from fluxgate.auth.quotas import QUOTA_FILE, create_quota_file, open_quota_file

DAY = 86400


class KeyState:
    """keys.db, keys.secret, quotas.bin and keys.usage in one directory, as the master keeps
    them; ``table()`` publishes the current keys and maps them like a worker does."""

    def __init__(self, state_dir: Path, *, clock=None, quota_capacity: int = 1 << 12) -> None:
        self.dir = state_dir
        state_dir.mkdir(parents=True, exist_ok=True)
        self.signing_key = load_signing_key(None, str(state_dir))
        kwargs = {"clock": clock} if clock is not None else {}
        self.store = KeyStore.open(str(state_dir), **kwargs)
        self.store.check_signing_key(self.signing_key)
        create_quota_file(str(state_dir / QUOTA_FILE), quota_capacity)
        self.quota_map, self.quotas = open_quota_file(str(state_dir / QUOTA_FILE))
        self.usage = kt.UsageFile(str(state_dir / kt.USAGE_FILE), create=True)
        self.generation = 0
        self._maps: list[mmap.mmap] = []
        self._tables: list[KeyTable] = []

    def generate(self, name: str, *, scopes=(), routes=(), allow_ips=(), quota=None,
                 expires_in: float = 90 * DAY) -> tuple[object, str]:
        return self.store.generate(
            name, KeySpec.build(scopes, routes, allow_ips, quota), expires_in=expires_in,
            signing_key=self.signing_key,
        )

    def table(self) -> KeyTable:
        records = self.store.for_table(self.store.clock(), 7 * DAY)
        self.usage.ensure(max((kt.usage_slot(r) for r in records), default=0) + 1)
        self.generation += 1
        kt.publish_table(str(self.dir), kt.build_table(
            records, generation=self.generation, usage_slots=self.usage.slots,
            quota_tag=self.quotas.tag,
        ))
        with open(self.dir / kt.TABLE_FILE, "rb") as f:
            mapping = mmap.mmap(f.fileno(), 0, mmap.MAP_SHARED, mmap.PROT_READ)
        table = KeyTable(mapping, self.signing_key, self.usage.mapping, self.quotas)
        self._maps.append(mapping)
        self._tables.append(table)
        return table

    def close(self) -> None:
        for t in self._tables:
            t.release()
        for m in self._maps:
            m.close()
        self.quotas.release()
        self.quota_map.close()
        self.usage.close()
        self.store.close()


def state_files(state_dir: Path) -> list[Path]:
    return [p for p in state_dir.rglob("*") if p.is_file()]


def mode(path: Path) -> int:
    return os.stat(path).st_mode & 0o777
