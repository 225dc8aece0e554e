"""API key operations as an operator asks for them (``fluxctl keys``, ``/admin/keys``).

Inputs are the strings people type (``--quota 50000/d``, ``--expiry 90d``, ``--allow-ip``
CIDRs); every bad value is a ``KeyStoreError`` whose message says what is wrong. Outputs are
JSON-ready dicts: the same for ``fluxctl --json``, the admin API and the human tables, and
never a digest or a key, except the one ``key`` field of ``generate`` and ``rotate`` that
hands a new key over once. Usage (quota spent in the current window, last use, requests)
is read live from the shared files when they exist, so it is current whether or not the
gateway runs.
"""

from __future__ import annotations

import datetime
import os
import time
from collections.abc import Iterable
from typing import Any

from fluxgate.auth.keys import load_signing_key
from fluxgate.auth.keystore import KeyRecord, KeySpec, KeyStore
from fluxgate.auth.keytable import USAGE_FILE, UsageFile, usage_slot
from fluxgate.auth.quotas import QUOTA_FILE, key_identity, open_quota_file
from fluxgate.config.schema import Config
from fluxgate.config.units import format_rate, parse_duration, parse_rate
from fluxgate.errors import KeyStoreError


def iso(ts: float | None) -> str | None:
    """Unix seconds → ``2026-11-28T19:02:36Z`` (None stays None)."""
    if ts is None:
        return None
    return datetime.datetime.fromtimestamp(ts, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _duration(text: str | float | None, what: str, default: float) -> float:
    if text is None:
        return default
    try:
        value = parse_duration(text)
    except ValueError as exc:
        raise KeyStoreError(f"{what}: {exc}") from None
    return value


def _rate(text: str | None) -> tuple[int, int] | None:
    if text is None or text == "":
        return None
    try:
        return parse_rate(text)
    except ValueError as exc:
        raise KeyStoreError(f"--quota: {exc}") from None


class KeyOps:
    """Key operations on one state_dir, under one config's ``api_keys`` settings."""

    def __init__(self, config: Config, *, clock=time.time) -> None:
        self.config = config
        self.state_dir = config.state_dir
        self.clock = clock
        self.store = KeyStore.open(self.state_dir, clock=clock)
        self._signing_key: bytes | None = None

    def close(self) -> None:
        self.store.close()

    def __enter__(self) -> KeyOps:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def signing_key(self) -> bytes:
        if self._signing_key is None:
            key = load_signing_key(self.config.api_keys.signing_secret, self.state_dir)
            self.store.check_signing_key(key)
            self._signing_key = key
        return self._signing_key

    # ---- changes ----------------------------------------------------------------------------

    def generate(
        self, name: str, *, scopes: Iterable[str] = (), quota: str | None = None,
        expiry: str | float | None = None, allow_ips: Iterable[str] = (),
        routes: Iterable[str] = (),
    ) -> dict[str, Any]:
        """A new key: the result's ``key`` is the only copy there will ever be."""
        spec = KeySpec.build(scopes, routes, allow_ips, _rate(quota))
        expires_in = _duration(expiry, "--expiry", self.config.api_keys.default_expiry)
        record, text = self.store.generate(
            name, spec, expires_in=expires_in, signing_key=self.signing_key
        )
        return {"key": text, **self.describe(record)}

    def rotate(
        self, name: str, *, grace: str | float | None = None, expiry: str | float | None = None
    ) -> dict[str, Any]:
        """A new key for ``name``; the old one works for ``grace`` (api_keys.rotation_grace)."""
        grace_s = _duration(grace, "--grace", self.config.api_keys.rotation_grace)
        expires_in = None if expiry is None else _duration(expiry, "--expiry", 0)
        new, text, old = self.store.rotate(
            name, grace=grace_s, expires_in=expires_in, signing_key=self.signing_key
        )
        return {"key": text, **self.describe(new), "previous": [self.describe(r) for r in old]}

    def renew(self, name: str, *, expiry: str | float | None = None) -> dict[str, Any]:
        expires_in = _duration(expiry, "--expiry", self.config.api_keys.default_expiry)
        return self.describe(self.store.renew(name, expires_in=expires_in))

    def revoke(self, name_or_id: str) -> list[dict[str, Any]]:
        return [self.describe(r) for r in self.store.revoke(name_or_id)]

    # ---- reads ------------------------------------------------------------------------------

    def list(self, *, include_dead: bool = False) -> list[dict[str, Any]]:
        """Every key (by default without the revoked and expired ones), by name, then oldest
        first."""
        now = self.clock()
        records = sorted(self.store.all(), key=lambda r: (r.name, r.slot))
        if not include_dead:
            records = [r for r in records if r.status(now) in ("active", "grace")]
        return self._describe_all(records)

    def show(self, name_or_id: str) -> list[dict[str, Any]]:
        """Every key of a name (or the key with that id), oldest first."""
        records = self.store.by_name(name_or_id)
        if not records:
            record = self.store.by_id(name_or_id)
            if record is None:
                raise self.store.unknown(name_or_id)
            records = [record]
        return self._describe_all(records)

    def usage(self, name: str) -> dict[str, Any]:
        """The quota and use of a name, its keys together (quotas belong to the name)."""
        keys = self.show(name)
        quota = next((k["quota"] for k in reversed(keys) if k["quota"]), None)
        last = max(keys, key=lambda k: k["last_used_at"] or "")
        return {
            "name": keys[0]["name"],
            "quota": quota,
            "requests": sum(k["requests"] for k in keys),
            "last_used_at": last["last_used_at"],
            "last_used_from": last["last_used_from"],
            "keys": [
                {f: k[f] for f in ("key_id", "status", "requests", "last_used_at",
                                   "last_used_from", "valid_until")}
                for k in keys
            ],
        }

    def describe(self, record: KeyRecord) -> dict[str, Any]:
        return self._describe_all([record])[0]

    def _describe_all(self, records: list[KeyRecord]) -> list[dict[str, Any]]:
        now = self.clock()
        usage = _open_usage(self.state_dir)
        quotas = _open_quotas(self.state_dir)
        try:
            return [_describe(r, now, usage, quotas) for r in records]
        finally:
            if usage is not None:
                usage.close()
            if quotas is not None:
                quotas[1].release()
                quotas[0].close()


def _open_usage(state_dir: str) -> UsageFile | None:
    try:
        return UsageFile(os.path.join(state_dir, USAGE_FILE), create=False)
    except (OSError, ValueError):
        return None


def _open_quotas(state_dir: str):
    try:
        return open_quota_file(os.path.join(state_dir, QUOTA_FILE))
    except (OSError, ValueError):
        return None


def _describe(record: KeyRecord, now: float, usage: UsageFile | None, quotas) -> dict[str, Any]:
    last_at, last_from, requests = record.last_used_at, record.last_used_from, record.requests
    if usage is not None:
        live = usage.read(usage_slot(record))
        if live.last_used_ms and live.last_used_ms // 1000 >= (last_at or 0):
            last_at, last_from = live.last_used_ms // 1000, live.address or last_from
        requests = max(requests, live.requests)
    quota = None
    if record.quota_limit is not None:
        window = record.quota_window
        used, end = 0, (int(now) // window + 1) * window
        if quotas is not None:
            tag = quotas[1].tag(key_identity(record.name, window))
            used, end = quotas[1].peek(tag, window, now)
        quota = {
            "rate": format_rate(record.quota_limit, window),
            "limit": record.quota_limit,
            "window_s": window,
            "used": used,
            "remaining": max(record.quota_limit - used, 0),
            "resets_at": iso(end),
        }
    return {
        "name": record.name,
        "key_id": record.key_id,
        "status": record.status(now),
        "scopes": list(record.scopes),
        "routes": list(record.routes),
        "allow_ips": list(record.allow_ips),
        "quota": quota,
        "created_at": iso(record.created_at),
        "expires_at": iso(record.expires_at),
        "valid_until": iso(record.valid_until),
        "revoked_at": iso(record.revoked_at),
        "rotated_at": iso(record.rotated_at),
        "grace_until": iso(record.grace_until),
        "successor": record.successor,
        "last_used_at": iso(last_at),
        "last_used_from": last_from,
        "requests": requests,
    }
