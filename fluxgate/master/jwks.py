"""The JWKS service: the master fetches every provider's keys, workers only read them
(docs/jwt.md).

One provider per key URL (``auth.jwks.provider_source``), however many routes and workers
use it. For each one the service:

* fetches the JWKS before the workers fork (bounded by ``START_TIMEOUT``), then every
  ``jwks_refresh`` (the smallest of the routes sharing it), or sooner when the response's
  ``Cache-Control: max-age`` says so, never more often than every ``JWKS_MIN_REFRESH``;
  ``If-None-Match`` with the last ``ETag`` (a 304 keeps the keys);
* finds the JWKS through OIDC discovery (``{issuer}/.well-known/openid-configuration``, whose
  ``issuer`` must equal the configured one, OpenID Connect Discovery §4.3) when the config
  has no ``jwks_uri``, and discovers again after a failed fetch;
* publishes each new key set as a snapshot in ``state_dir/jwks`` with a new generation
  (``auth/jwks.py`` has the layout); workers pick it up within a second;
* polls the workers' refresh requests (a token with an unknown ``kid``) 4x a second and
  answers them with one fetch, at most once per ``REFRESH_COOLDOWN`` (30 s) per provider:
  a flood of random kids from any number of workers costs the identity provider one
  request per cooldown;
* on a failed fetch keeps the last good keys, retries with backoff (5 s doubling, up to the
  refresh period), counts it (``fluxgate_jwks_refresh_total{result="error"}``), and after
  ``jwks_max_stale`` without a success withdraws the keys: tokens then fail closed (503
  auth_server_unavailable) rather than trusting keys that may have been revoked since.

The fetch client is ``master/fetch.py`` (asyncio + llhttp on the master's loop).
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import re
import time
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson

from fluxgate.auth.jwk import JwkError, usable_keys
from fluxgate.auth.jwks import (
    JWKS_DIR,
    REFRESH_COOLDOWN,
    SLOT_GENERATION,
    SLOT_REQUESTS,
    ctl_path,
    jwt_configs,
    map_ctl,
    provider_source,
    snapshot_path,
    write_snapshot,
)
from fluxgate.config.parsers import JWKS_MIN_REFRESH, parse_key_url
from fluxgate.master.fetch import FetchError, fetch
from fluxgate.metrics import ProcessMetric, metric_family

if TYPE_CHECKING:
    from fluxgate.config.schema import Config
    from fluxgate.master.admin import AdminRequest, AdminResponse, AdminRouter
    from fluxgate.master.services import ServiceContext

log = logging.getLogger("fluxgate.jwks")

POLL_INTERVAL = 0.25  # how often refresh requests and due refreshes are looked at
START_TIMEOUT = 10.0  # the first fetch of all providers, before workers fork
ERROR_RETRY_MIN = 5.0
FETCH_TIMEOUT = 10.0
MAX_JWKS_BYTES = 1024 * 1024
RESULTS = ("ok", "not_modified", "error", "invalid")
_MAX_AGE = re.compile(r"(?:^|[,\s])max-age\s*=\s*\"?(\d+)")


@dataclass
class _Settings:
    refresh: float
    max_stale: float


def refresh_interval(headers: dict[str, str], refresh: float) -> float:
    """Seconds until the next poll: ``refresh``, shortened by Cache-Control (never below
    JWKS_MIN_REFRESH, never above ``refresh``)."""
    cache_control = headers.get("cache-control", "").lower()
    if "no-store" in cache_control or "no-cache" in cache_control:
        return min(JWKS_MIN_REFRESH, refresh)
    found = _MAX_AGE.search(cache_control)
    if found is None:
        return refresh
    return min(max(float(found.group(1)), JWKS_MIN_REFRESH), refresh)


async def discover_jwks_uri(issuer: str, timeout: float = FETCH_TIMEOUT) -> str:
    """The ``jwks_uri`` of ``issuer``'s OIDC discovery document, whose ``issuer`` must be
    ``issuer`` itself (OpenID Connect Discovery §4.3); raises FetchError (or ValueError for
    a document that is not JSON)."""
    url = issuer.rstrip("/") + "/.well-known/openid-configuration"
    response = await fetch(url, timeout=timeout, max_bytes=MAX_JWKS_BYTES)
    if response.status != 200:
        raise FetchError(f"OIDC discovery {url} answered HTTP {response.status}")
    document = orjson.loads(response.body)
    if not isinstance(document, dict) or document.get("issuer") != issuer:
        raise FetchError(f"OIDC discovery {url} does not name issuer {issuer!r}")
    jwks_uri = document.get("jwks_uri")
    if not isinstance(jwks_uri, str):
        raise FetchError(f"OIDC discovery {url} has no jwks_uri")
    try:
        parse_key_url(jwks_uri)
    except ValueError as exc:
        raise FetchError(f"OIDC discovery {url}: {exc}") from None
    return jwks_uri


class Provider:
    """One key URL in the master: its shared files, last good keys, and history."""

    def __init__(self, state_dir: str, source: str, settings: _Settings) -> None:
        self.source = source
        self.settings = settings
        self.active = True
        discovery = source.startswith("discovery:")
        self.issuer = source.removeprefix("discovery:") if discovery else None
        self.jwks_uri: str | None = None if discovery else source
        self.discovered: str | None = None
        self.snapshot_path = snapshot_path(state_dir, source)
        self.mapping, self.ctl = map_ctl(ctl_path(state_dir, source), create=True)
        self.generation = 0
        self.keys: list[dict[str, Any]] | None = None  # the last good set
        self.expired = False  # keys withdrawn after jwks_max_stale without a success
        self.etag: str | None = None
        self.last_success: float | None = None  # wall clock
        self.last_error: str | None = None
        self.next_due = 0.0  # monotonic
        self.failures = 0
        self.requests_seen = 0
        self.last_on_demand = -math.inf
        self.on_demand = 0
        self.results: Counter[str] = Counter()
        self.task: asyncio.Task[None] | None = None

    @property
    def fetching(self) -> bool:
        return self.task is not None and not self.task.done()

    def publish(self, keys: list[dict[str, Any]], *, expired: bool = False) -> None:
        """Write a new snapshot, then bump the generation workers watch."""
        self.generation += 1
        write_snapshot(self.snapshot_path, {
            "generation": self.generation, "source": self.source,
            "keys": [] if expired else keys, "expired": expired,
        })
        self.ctl.store(SLOT_GENERATION, self.generation)
        self.expired = expired

    def close(self) -> None:
        self.ctl.release()
        self.mapping.close()
        for path in (self.snapshot_path, self.snapshot_path[: -len(".json")] + ".ctl"):
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass

    def status(self) -> dict[str, Any]:
        """What /admin/jwks shows (key ids, never key material)."""
        now = time.monotonic()
        return {
            "source": self.source,
            "jwks_uri": self.jwks_uri or self.discovered,
            "active": self.active,
            "generation": self.generation,
            "kids": [k.get("kid") for k in self.keys or ()],
            "expired": self.expired,
            "last_success": self.last_success,
            "last_error": self.last_error,
            "failures": self.failures,
            "next_refresh_in": round(max(0.0, self.next_due - now), 1),
            "refresh_requests": self.ctl.load(SLOT_REQUESTS),
            "on_demand_fetches": self.on_demand,
            "results": dict(self.results),
        }


class JwksService:
    """The master service (``master/services.py``) that owns every JWKS provider."""

    name = "jwks"

    def __init__(self, master: ServiceContext) -> None:
        self.master = master
        self.providers: dict[str, Provider] = {}
        self._poller: asyncio.Task[None] | None = None

    # ---- lifecycle ----------------------------------------------------------------------

    async def start(self, config: Config) -> None:
        os.makedirs(os.path.join(self.master.state_dir, JWKS_DIR), mode=0o700, exist_ok=True)
        await self._first_fetch(self._configure(config))
        self._poller = asyncio.get_running_loop().create_task(self._poll_forever())

    async def reload(self, config: Config) -> None:
        await self._first_fetch(self._configure(config))

    async def stop(self) -> None:
        tasks = [t for t in (self._poller, *(p.task for p in self.providers.values())) if t]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        for provider in self.providers.values():
            provider.close()
        self.providers.clear()

    def _configure(self, config: Config) -> list[Provider]:
        """Create providers new in ``config``; returns them (they need a first fetch)."""
        wanted: dict[str, _Settings] = {}
        for jwt in jwt_configs(config):
            source = provider_source(jwt)
            if source is None:
                continue
            have = wanted.get(source)
            if have is None:
                wanted[source] = _Settings(jwt.jwks_refresh, jwt.jwks_max_stale)
            else:  # routes sharing a provider: the most demanding settings win
                have.refresh = min(have.refresh, jwt.jwks_refresh)
                have.max_stale = min(have.max_stale, jwt.jwks_max_stale)
        new = []
        for source, settings in wanted.items():
            provider = self.providers.get(source)
            if provider is None:
                provider = self.providers[source] = Provider(
                    self.master.state_dir, source, settings
                )
                new.append(provider)
            provider.settings, provider.active = settings, True
        for source, provider in self.providers.items():
            # Kept (workers of the old generation may still drain with it), not polled.
            provider.active = source in wanted
        return new

    async def _first_fetch(self, providers: list[Provider]) -> None:
        for provider in providers:
            self._start_refresh(provider, "start")
        tasks = [p.task for p in providers if p.task is not None]
        if tasks:
            # Not cancelled on timeout: a slow provider keeps trying in the background.
            await asyncio.wait(tasks, timeout=START_TIMEOUT)

    # ---- polling ------------------------------------------------------------------------

    async def _poll_forever(self) -> None:
        while True:
            await asyncio.sleep(POLL_INTERVAL)
            try:
                self.poll(time.monotonic(), time.time())
            except Exception:  # a bug here must not stop every future refresh
                log.exception("JWKS poll failed")

    def poll(self, now: float, wall: float) -> None:
        """One look at every provider: refresh requests, due refreshes, staleness."""
        for provider in self.providers.values():
            if not provider.active:
                continue
            if (
                provider.keys is not None
                and not provider.expired
                and provider.last_success is not None
                and wall - provider.last_success > provider.settings.max_stale
            ):
                log.error(
                    "JWKS %s: no successful fetch for %.0fs (jwks_max_stale): keys withdrawn, "
                    "tokens fail closed until the provider answers",
                    provider.source, wall - provider.last_success,
                )
                provider.publish([], expired=True)
            if provider.fetching:
                continue
            requests = provider.ctl.load(SLOT_REQUESTS)
            if requests != provider.requests_seen and now - provider.last_on_demand >= REFRESH_COOLDOWN:
                provider.requests_seen = requests
                provider.last_on_demand = now
                provider.on_demand += 1
                self._start_refresh(provider, "unknown kid")
            elif now >= provider.next_due:
                self._start_refresh(provider, "periodic")

    def _start_refresh(self, provider: Provider, why: str) -> None:
        if not provider.fetching:
            provider.task = asyncio.get_running_loop().create_task(self.refresh(provider, why))

    # ---- one refresh --------------------------------------------------------------------

    async def refresh(self, provider: Provider, why: str) -> str:
        """Fetch ``provider`` once; returns the result counted in metrics."""
        try:
            result, interval = await self._fetch_keys(provider)
        except (FetchError, JwkError, ValueError, OSError) as exc:
            result = "invalid" if isinstance(exc, JwkError | ValueError) else "error"
            provider.failures += 1
            provider.last_error = str(exc)
            provider.discovered = None  # discover again next time
            delay = min(ERROR_RETRY_MIN * 2 ** (provider.failures - 1), provider.settings.refresh)
            provider.next_due = time.monotonic() + delay
            if provider.keys is not None:
                kept = f"keeping the last {len(provider.keys)} keys"
            else:
                kept = "no keys yet: its tokens fail closed"
            log.warning("JWKS %s: %s refresh failed (%s); %s; retry in %.0fs",
                        provider.source, why, exc, kept, delay)
        else:
            provider.failures = 0
            provider.last_error = None
            provider.last_success = time.time()
            provider.next_due = time.monotonic() + interval
        provider.results[result] += 1
        return result

    async def _fetch_keys(self, provider: Provider) -> tuple[str, float]:
        uri = provider.jwks_uri or provider.discovered or await self._discover(provider)
        headers = {}
        if provider.etag and provider.keys is not None and not provider.expired:
            headers["If-None-Match"] = provider.etag
        response = await fetch(uri, headers=headers, timeout=FETCH_TIMEOUT, max_bytes=MAX_JWKS_BYTES)
        interval = refresh_interval(response.headers, provider.settings.refresh)
        if response.status == 304 and "If-None-Match" in headers:
            return "not_modified", interval
        if response.status != 200:
            raise FetchError(f"{uri} answered HTTP {response.status}")
        keys, problems = usable_keys(orjson.loads(response.body))
        for problem in problems:
            log.warning("JWKS %s: key ignored: %s", provider.source, problem)
        if not keys:
            raise JwkError(f"{uri} has no usable signature verification keys")
        provider.etag = response.headers.get("etag")
        if keys != provider.keys or provider.expired:
            provider.keys = keys
            provider.publish(keys)
            log.info("JWKS %s: generation %d, kids %s", provider.source, provider.generation,
                     ", ".join(str(k.get("kid")) for k in keys))
        return "ok", interval

    async def _discover(self, provider: Provider) -> str:
        provider.discovered = await discover_jwks_uri(provider.issuer or "")
        return provider.discovered

    # ---- admin and metrics --------------------------------------------------------------

    def admin_routes(self, router: AdminRouter) -> None:
        from fluxgate.master.admin import AdminResponse

        async def status(req: AdminRequest) -> AdminResponse:
            return AdminResponse.json(
                200, {"providers": [p.status() for p in self.providers.values()]}
            )

        async def refresh_now(req: AdminRequest) -> AdminResponse:
            # The operator's explicit request: not subject to the unknown-kid cooldown.
            providers = [p for p in self.providers.values() if p.active]
            for provider in providers:
                if provider.task is not None and not provider.task.done():
                    await asyncio.wait([provider.task], timeout=FETCH_TIMEOUT)
                self._start_refresh(provider, "admin")
            tasks = [p.task for p in providers if p.task is not None]
            if tasks:
                await asyncio.wait(tasks, timeout=FETCH_TIMEOUT + 1)
            return AdminResponse.json(
                200, {"providers": [p.status() for p in providers]}
            )

        router.add("GET", "/admin/jwks", status)
        router.add("POST", "/admin/jwks/refresh", refresh_now)

    def metrics(self) -> list[ProcessMetric]:
        providers = list(self.providers.values())
        out = []
        out += metric_family("fluxgate_jwks_refresh_total", "counter",
                             "JWKS fetches by provider and result (ok, not_modified, error, invalid).",
                             [((("provider", p.source), ("result", r)), p.results[r])
                              for p in providers for r in RESULTS])
        out += metric_family("fluxgate_jwks_refresh_requests_total", "counter",
                             "Unknown-kid refresh requests signalled by workers (coalesced by the master).",
                             [((("provider", p.source),), p.ctl.load(SLOT_REQUESTS)) for p in providers])
        out += metric_family("fluxgate_jwks_keys", "gauge", "Keys published for the provider.",
                             [((("provider", p.source),), 0 if p.expired else len(p.keys or ()))
                              for p in providers])
        out += metric_family("fluxgate_jwks_last_success_timestamp_seconds", "gauge",
                             "Unix time of the provider's last successful fetch (0: never).",
                             [((("provider", p.source),), p.last_success or 0) for p in providers])
        out += metric_family("fluxgate_jwks_stale", "gauge",
                             "1 when the keys were withdrawn after jwks_max_stale without a success.",
                             [((("provider", p.source),), int(p.expired)) for p in providers])
        return out
