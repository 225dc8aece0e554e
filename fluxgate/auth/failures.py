"""Authentication failures by method and reason, counted across workers
(``fluxgate_auth_failures_total{method,reason}``, README: admin listener).

The master creates ``state_dir/auth_failures.bin`` before it forks (the ``auth_metrics``
service); each worker maps it once and counts a refusal with one atomic add
(``_core.Counters``). Slot = method index x ``MAX_REASONS`` + reason index; a reason not
in ``REASONS`` is counted as ``other``, so the table's size never depends on input.
Append new reasons at the end of ``REASONS`` (the file is recreated at every master start,
so indexes only need to agree between one master and its workers).
"""

from __future__ import annotations

import logging
import mmap
import os
from typing import Any

from fluxgate._core import Counters
from fluxgate.auth.runtime import worker_shared
from fluxgate.shm import create_mapping, open_mapping

log = logging.getLogger("fluxgate.auth")

FILE = "auth_failures.bin"
METHODS: tuple[str, ...] = ("jwt", "api_key", "oauth2", "any")
REASONS: tuple[str, ...] = (
    "other",
    "missing_credentials",
    "insufficient_scope",
    # JWT (TokenError.reason, fluxgate/_jwt.pxi)
    "malformed",
    "token_too_large",
    "alg_not_allowed",
    "crit_unsupported",
    "unknown_kid",
    "key_alg_mismatch",
    "jwks_unavailable",
    "bad_signature",
    "expired",
    "not_yet_valid",
    "issued_in_future",
    "missing_claim",
    "invalid_claim",
    "wrong_issuer",
    "wrong_audience",
    "ambiguous_credentials",
    # API keys
    "invalid_key",
    "revoked",
    "wrong_route",
    # API keys: KeyTable.check's reasons (fluxgate/_keys.pxi)
    "bad_tag",
    "unknown_key",
    "bad_secret",
    "ip_not_allowed",
    # OAuth 2.0 introspection (middleware/oauth2.py)
    "inactive",
    "wrong_token_type",
    "auth_server_unavailable",
    "introspection_invalid",
    "miss_rate_limited",
)
MAX_REASONS = 64
_METHOD_INDEX = {m: i for i, m in enumerate(METHODS)}
_REASON_INDEX = {r: i for i, r in enumerate(REASONS)}
assert len(REASONS) <= MAX_REASONS


class AuthFailures:
    """The shared failure counters (master: ``create``; workers: ``for_gateway``)."""

    def __init__(self, mapping: mmap.mmap, path: str) -> None:
        self._mapping = mapping
        self._counters = Counters(mapping)
        self._add = self._counters.add
        self.path = path

    @classmethod
    def create(cls, state_dir: str) -> AuthFailures:
        path = os.path.join(state_dir, FILE)
        return cls(create_mapping(path, len(METHODS) * MAX_REASONS * 8), path)

    @classmethod
    def open(cls, state_dir: str) -> AuthFailures:
        path = os.path.join(state_dir, FILE)

        def check_size(size: int) -> None:
            if size != len(METHODS) * MAX_REASONS * 8:
                raise ValueError(f"{path}: unexpected size {size}")

        return cls(open_mapping(path, check_size), path)

    @classmethod
    def for_gateway(cls, gateway: Any) -> AuthFailures | None:
        """The worker's mapping of the table, or None when no master created one."""

        def create() -> AuthFailures | None:
            try:
                return cls.open(gateway.state_dir)
            except (OSError, ValueError) as exc:
                log.warning("auth failures are not counted: %s", exc)
                return None

        return worker_shared(gateway, "auth_failures", create)

    def count(self, method: str, reason: str) -> None:
        """One refused request (one atomic add)."""
        m = _METHOD_INDEX.get(method, 0)
        r = _REASON_INDEX.get(reason, 0)
        self._add(m * MAX_REASONS + r)

    def snapshot(self) -> dict[tuple[str, str], int]:
        """Non-zero counts by (method, reason)."""
        load = self._counters.load
        out: dict[tuple[str, str], int] = {}
        for m, method in enumerate(METHODS):
            for r, reason in enumerate(REASONS):
                value = load(m * MAX_REASONS + r)
                if value:
                    out[(method, reason)] = value
        return out

    def close(self) -> None:
        self._counters.release()
        self._mapping.close()
