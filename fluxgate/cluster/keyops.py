"""``fluxctl keys`` and ``/admin/keys`` in cluster mode: the same operations and answers as
``fluxgate.auth.keyops.KeyOps``, written to Redis first (keysync.KeyMirror), then to keys.db.

Each change is computed from this node's keys.db, brought in step with Redis just before; the
write script refuses it if another node changed keys meanwhile, and it is computed again. When
Redis cannot be reached a change fails (StoreUnavailable) rather than being made on one node
only; reads (list, show, usage) answer from keys.db, after catching up when Redis answers.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterable
from typing import Any

from fluxgate.auth.keyops import _duration, _rate
from fluxgate.auth.keys import check_name, mint_key
from fluxgate.auth.keystore import KeyRecord, KeySpec, _check_expiry
from fluxgate.cluster.keysync import Change, KeyMirror, StoreUnavailable, now
from fluxgate.errors import KeyStoreError

log = logging.getLogger("fluxgate.cluster.keys")


class ClusterKeyOps:
    """KeyOps's interface, on the cluster's keys."""

    def __init__(self, config, *, mirror: KeyMirror | None = None) -> None:
        self.config = config
        self.mirror = mirror or KeyMirror(config)
        self.ops = self.mirror.ops
        self.store = self.ops.store

    def close(self) -> None:
        self.mirror.close()

    def __enter__(self) -> ClusterKeyOps:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- changes ------------------------------------------------------------------------------

    def generate(self, name: str, *, scopes: Iterable[str] = (), quota: str | None = None,
                 expiry: str | float | None = None, allow_ips: Iterable[str] = (),
                 routes: Iterable[str] = ()) -> dict[str, Any]:
        """A new key for a new name; the answer's ``key`` is the only copy there will be."""
        spec = KeySpec.build(scopes, routes, allow_ips, _rate(quota))
        expires_in = _duration(expiry, "--expiry", self.config.api_keys.default_expiry)
        try:
            check_name(name)
        except ValueError as exc:
            raise KeyStoreError(str(exc)) from None
        _check_expiry(expires_in)

        def change() -> Change:
            at = now()
            self.store.check_new_name(name, at)
            record, text = self._mint(name, spec, at, expires_in)
            return Change([record], lambda rows: {"key": text, **self.ops.describe(rows[0])})

        return self.mirror.write(change)

    def rotate(self, name: str, *, grace: str | float | None = None,
               expiry: str | float | None = None) -> dict[str, Any]:
        """A new key for ``name``; the old one works for ``grace``."""
        grace_s = _duration(grace, "--grace", self.config.api_keys.rotation_grace)
        if grace_s < 0:
            raise KeyStoreError("the grace period must not be negative")
        expires_in = None if expiry is None else _duration(expiry, "--expiry", 0)
        if expires_in is not None:
            _check_expiry(expires_in)

        def change() -> Change:
            at = now()
            current = self.store.current(name, at)
            lifetime = expires_in or max(current.expires_at - current.created_at, 1)
            new, text = self._mint(name, KeySpec.of(current), at, lifetime)
            old = dataclasses.replace(current, rotated_at=at, grace_until=at + int(grace_s),
                                      successor=new.key_id)
            return Change([new, old], lambda rows: {
                "key": text, **self.ops.describe(rows[0]),
                "previous": [self.ops.describe(rows[1])]})

        return self.mirror.write(change)

    def renew(self, name: str, *, expiry: str | float | None = None) -> dict[str, Any]:
        expires_in = _duration(expiry, "--expiry", self.config.api_keys.default_expiry)
        _check_expiry(expires_in)

        def change() -> Change:
            renewed = dataclasses.replace(self.store.renewable(name),
                                          expires_at=now() + int(expires_in))
            return Change([renewed], lambda rows: self.ops.describe(rows[0]))

        return self.mirror.write(change)

    def revoke(self, name_or_id: str) -> list[dict[str, Any]]:
        """Revoke every unrevoked key of a name, or the one key with that id."""

        def change() -> Change:
            at = now()
            revoked = [dataclasses.replace(r, revoked_at=at)
                       for r in self.store.revocable(name_or_id)]
            return Change(revoked, lambda rows: [self.ops.describe(r) for r in rows])

        return self.mirror.write(change)

    # ---- reads: keys.db, in step with Redis when it answers -------------------------------------

    def list(self, *, include_dead: bool = False) -> list[dict[str, Any]]:
        self._refresh()
        return self.ops.list(include_dead=include_dead)

    def show(self, name_or_id: str) -> list[dict[str, Any]]:
        self._refresh()
        return self.ops.show(name_or_id)

    def usage(self, name: str) -> dict[str, Any]:
        self._refresh()
        return self.ops.usage(name)

    def describe(self, record: KeyRecord) -> dict[str, Any]:
        return self.ops.describe(record)

    def _refresh(self) -> None:
        try:
            self.mirror.catch_up()
        except StoreUnavailable as exc:
            log.warning("%s; showing this node's copy", exc)

    # ---- internals ----------------------------------------------------------------------------

    def _mint(self, name: str, spec: KeySpec, at: int, expires_in: float
              ) -> tuple[KeyRecord, str]:
        minted = mint_key(self.ops.signing_key)
        limit, window = spec.quota if spec.quota is not None else (None, None)
        record = KeyRecord(0, minted.key_id, name, minted.digest, spec.scopes, spec.routes,
                           spec.allow_ips, limit, window, at, at + int(expires_in), None, None,
                           None, None, None, None, 0)
        return record, minted.text
