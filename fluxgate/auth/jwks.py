"""JWKS providers as workers see them: the shared files the master publishes, and the
per-worker ``KeySource`` that turns each new generation into a ``JwtKeySet``.

One provider is one key URL: a ``jwks_uri``, or an ``issuer`` whose OIDC discovery document
names it. Every jwt middleware with the same source shares the provider, in the master (one
fetch however many routes and workers) and in each worker (one key set built per
generation). In ``state_dir/jwks/`` the master keeps, per provider:

``<id>.ctl``   eight uint64 slots in a shared mapping (``_core.Counters``):
               [0] magic, [1] generation of the published snapshot, [2] refresh requests
               (workers add 1 for a token with an unknown ``kid``; the master polls it).
``<id>.json``  the snapshot: ``{"generation", "source", "keys": [JWK...], "expired"}``,
               written to a temporary file and renamed (a reader sees the old or the new
               one, never half of one). ``keys`` holds only JWKs that verify signatures.

Workers check slot [1] on every sweep (4x a second, ``gateway.periodic``) and reload the
snapshot when it moved: a rotation is live on every worker within a second. A worker never
fetches anything itself.
"""

from __future__ import annotations

import hashlib
import logging
import mmap
import os
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import orjson

from fluxgate._core import Counters, JwtKeySet, JwtVerifier
from fluxgate.auth.jwk import build_keyset
from fluxgate.auth.runtime import worker_shared
from fluxgate.config import schema
from fluxgate.files import replace_file
from fluxgate.shm import create_mapping, open_mapping

if TYPE_CHECKING:
    from fluxgate.proxy.app import Gateway

log = logging.getLogger("fluxgate.jwks")

JWKS_DIR = "jwks"
CTL_MAGIC = 0x4647_4A57_4B53_0001  # "FGJWKS" v1
CTL_SLOTS = 8
SLOT_MAGIC, SLOT_GENERATION, SLOT_REQUESTS = 0, 1, 2
# How long a worker stays quiet about a kid it already asked for (the master's cooldown
# between two on-demand fetches of one provider is the same 30 s).
REFRESH_COOLDOWN = 30.0
NEGATIVE_CACHE_SIZE = 4096


def provider_source(jwt: schema.Jwt) -> str | None:
    """The provider a jwt config takes its keys from, or None (HS* only: no JWKS)."""
    if all(alg.startswith("HS") for alg in jwt.algorithms):
        return None
    if jwt.jwks_uri is not None:
        return jwt.jwks_uri
    return f"discovery:{jwt.issuer}"


def provider_id(source: str) -> str:
    """A file-name-safe id for a provider source."""
    return hashlib.sha256(source.encode()).hexdigest()[:20]


def jwt_configs(config: schema.Config) -> Iterator[schema.Jwt]:
    """Every jwt middleware of a config, inside `any` too."""
    from fluxgate.middleware import auth_methods  # the jwt middleware imports this module

    for route in config.routes:
        yield from auth_methods(route, "jwt")


def ctl_path(state_dir: str, source: str) -> str:
    return os.path.join(state_dir, JWKS_DIR, provider_id(source) + ".ctl")


def snapshot_path(state_dir: str, source: str) -> str:
    return os.path.join(state_dir, JWKS_DIR, provider_id(source) + ".json")


def map_ctl(path: str, *, create: bool) -> tuple[mmap.mmap, Counters]:
    """Map a provider's control slots (the master creates them, workers open them)."""
    size = CTL_SLOTS * 8
    if create:
        mapping = create_mapping(path, size)
    else:

        def check_size(actual: int) -> None:
            if actual != size:
                raise ValueError(f"{path}: not a JWKS control file")

        mapping = open_mapping(path, check_size)
    counters = Counters(mapping)
    if create:
        counters.store(SLOT_MAGIC, CTL_MAGIC)
    elif counters.load(SLOT_MAGIC) != CTL_MAGIC:
        counters.release()
        mapping.close()
        raise ValueError(f"{path}: not a JWKS control file")
    return mapping, counters


def write_snapshot(path: str, snapshot: dict[str, Any]) -> None:
    """Atomically replace the snapshot file (mode 0600)."""
    replace_file(path, orjson.dumps(snapshot))


def read_snapshot(path: str) -> dict[str, Any]:
    with open(path, "rb") as f:
        snapshot = orjson.loads(f.read())
    if not isinstance(snapshot, dict) or not isinstance(snapshot.get("keys"), list):
        raise ValueError(f"{path}: not a JWKS snapshot")
    return snapshot


def snapshot_keys(snapshot: dict[str, Any], generation: int) -> JwtKeySet | None:
    """The key set a snapshot publishes; None once its keys outlived ``jwks_max_stale``."""
    return None if snapshot.get("expired") else build_keyset(snapshot["keys"], generation)


class KeySource:
    """One provider in one worker: the current key set, its verifiers, refresh requests."""

    def __init__(self, state_dir: str, source: str) -> None:
        self.source = source
        self.snapshot_path = snapshot_path(state_dir, source)
        self.keys: JwtKeySet | None = None
        self.generation = 0
        self.verifiers: list[JwtVerifier] = []
        # kid -> monotonic time until which it is not asked for again
        self._asked: dict[str, float] = {}
        self._counters: Counters | None = None
        self._mapping: mmap.mmap | None = None
        try:
            self._mapping, self._counters = map_ctl(ctl_path(state_dir, source), create=False)
        except (OSError, ValueError) as exc:
            # No master published this provider (a Gateway built outside `fluxgate run`):
            # no keys, so every token of it fails closed with jwks_unavailable.
            log.warning("JWKS provider %s has no shared table (%s): tokens fail closed",
                        source, exc)

    @classmethod
    def for_gateway(cls, gateway: Gateway, source: str) -> KeySource:
        """The worker's one KeySource for ``source``, polled by the gateway's sweep."""

        def create() -> KeySource:
            ks = cls(gateway.state_dir, source)
            ks.poll(time.monotonic())
            gateway.periodic.append(ks.poll)
            return ks

        return worker_shared(gateway, ("jwks", source), create)

    def attach(self, verifier: JwtVerifier) -> None:
        """Keep ``verifier`` on this provider's current key set from now on."""
        self.verifiers.append(verifier)
        verifier.set_keys(self.keys)

    def poll(self, now: float) -> None:
        """Pick up a newly published generation (cheap when nothing changed: one load)."""
        if self._counters is None:
            return
        generation = self._counters.load(SLOT_GENERATION)
        if generation == self.generation:
            return
        try:
            snapshot = read_snapshot(self.snapshot_path)
        except (OSError, ValueError) as exc:
            log.warning("JWKS snapshot of %s unreadable, retrying: %s", self.source, exc)
            return
        generation = int(snapshot.get("generation", generation))
        keys = snapshot_keys(snapshot, generation)
        self.keys, self.generation = keys, generation
        for verifier in self.verifiers:
            verifier.set_keys(keys)
        log.info("JWKS %s: generation %d, %d keys", self.source, generation,
                 len(keys) if keys is not None else 0)

    def request_refresh(self, kid: str | None) -> bool:
        """A token named a kid the current set lacks: ask the master for a refresh.

        Each kid is asked for at most once per cooldown (a negative cache, bounded), so a
        flood of random kids costs one atomic add per new kid; the master coalesces all the
        requests of all workers into one fetch per cooldown. Returns whether it asked.
        """
        if self._counters is None:
            return False
        now = time.monotonic()
        key = kid or ""
        until = self._asked.get(key)
        if until is not None and now < until:
            return False
        if len(self._asked) >= NEGATIVE_CACHE_SIZE:
            self._asked = {k: t for k, t in self._asked.items() if t > now}
            if len(self._asked) >= NEGATIVE_CACHE_SIZE:
                self._asked.clear()
        self._asked[key] = now + REFRESH_COOLDOWN
        self._counters.add(SLOT_REQUESTS)
        return True
