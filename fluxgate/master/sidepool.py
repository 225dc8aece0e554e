"""The introspection side pool: the master asks authorization servers about opaque tokens,
so no worker ever waits on one (RFC 7662).

Why in the master, on its event loop, and not in a process of its own: an introspection
call is network wait, not CPU (a few tens of microseconds of Python per call against
hundreds of microseconds to seconds of round trip), and the master already owns the shared
tables, the admin API and the metrics. One loop gives single-flight across all workers
for free (one dict), and a worker's question costs one local socket round trip.

Per provider (``auth/introspection.py``: one endpoint and client id, shared by routes):

* a keep-alive connection pool to the authorization server (``master/as_client.py``),
  bounded at ``max_connections``, every call bounded by ``timeout``;
* single-flight: however many workers and connections ask about one token at once, one
  call is made and every asker gets its answer;
* a bounded queue: more than ``max_pending`` distinct tokens in flight are answered
  ``unavailable`` at once rather than queued without end;
* a circuit breaker: after ``BREAKER_THRESHOLD`` failures in a row the server is not
  called for a cool-down (doubling up to ``BREAKER_MAX_COOLDOWN``), then one trial call
  decides; meanwhile misses are answered ``unavailable`` (503 at the worker), cached
  results keep serving;
* results published to the shared table keyed by SHA-256 of the token: positive ones
  until min(``exp``, ``cache_ttl``), ``active: false`` for ``negative_cache_ttl``, in
  fixed space (the table never lets negative entries evict live positive ones).

Workers reach the pool over an abstract Unix socket whose random name is written to
``state_dir/oauth2/sidepool.addr`` (mode 0600); a connection from another user is
refused (``SO_PEERCRED``), the same protection a 0600 socket file gives, without the
108-byte path limit of socket files.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import socket
import struct
import time
from collections import Counter, OrderedDict
from typing import TYPE_CHECKING, Any

import orjson

from fluxgate._core import Counters, IntrospectionCache
from fluxgate.auth.introspection import (
    CACHE_SLOT_BYTES,
    CTL_MAGIC,
    CTL_SLOTS,
    INACTIVE,
    SLOT_HITS,
    SLOT_MAGIC,
    SLOT_MISSES,
    SLOT_RATE_LIMITED,
    FrameReader,
    address_path,
    cache_path,
    ctl_path,
    encode_frame,
    encode_record,
    oauth2_configs,
    oauth2_dir,
    provider_id,
    provider_source,
    record_from_response,
    token_digest,
)
from fluxgate.cluster.connect import is_redis_url
from fluxgate.cluster.introspection import SharedResults
from fluxgate.cluster.oauth2_metrics import cluster_oauth2_metrics
from fluxgate.errors import ConfigError
from fluxgate.files import replace_file
from fluxgate.master.as_client import AsClient, IntrospectionError, discover
from fluxgate.master.login_service import LoginService
from fluxgate.metrics import ProcessMetric, metric_family
from fluxgate.shm import create_mapping

if TYPE_CHECKING:
    from fluxgate.config import schema
    from fluxgate.master.admin import AdminRequest, AdminResponse, AdminRouter
    from fluxgate.master.services import ServiceContext

log = logging.getLogger("fluxgate.oauth2")

BREAKER_THRESHOLD = 5  # failures in a row that open the breaker
BREAKER_MIN_COOLDOWN = 2.0
BREAKER_MAX_COOLDOWN = 30.0
DISCOVERY_TIMEOUT = 10.0
DISCOVERY_RETRY = 5.0
# Answers kept in the master itself: covers the instant between publishing and a worker's
# lookup, and results the table had no room for.
RECENT_LIMIT = 65536
# Outcomes of calls to the authorization server, as counted in the metrics.
CALL_RESULTS = ("active", "inactive", "unreachable", "timeout", "tls", "http_status",
                "client_auth", "not_json", "invalid_response", "too_large", "expired")
# Failures where the server could not be asked (503 at the worker) versus answers that
# cannot be trusted: both are refused; the metric tells them apart.
UNTRUSTED = frozenset({"not_json", "invalid_response", "too_large"})
_PEERCRED = struct.Struct("3i")


class Breaker:
    """Consecutive-failure circuit breaker with a doubling cool-down and one trial call."""

    CLOSED, OPEN, HALF_OPEN = 0, 1, 2

    def __init__(self) -> None:
        self.state = self.CLOSED
        self.failures = 0
        self.cooldown = BREAKER_MIN_COOLDOWN
        self.open_until = 0.0
        self.opened = 0  # times it opened, for the metrics

    def allow(self, now: float) -> bool:
        """May a call be made now? (In HALF_OPEN only the one trial call may.)"""
        if self.state == self.CLOSED:
            return True
        if self.state == self.OPEN and now >= self.open_until:
            self.state = self.HALF_OPEN
            return True
        return False

    def success(self) -> None:
        self.state, self.failures, self.cooldown = self.CLOSED, 0, BREAKER_MIN_COOLDOWN

    def failure(self, now: float) -> None:
        self.failures += 1
        if self.state == self.HALF_OPEN or self.failures >= BREAKER_THRESHOLD:
            if self.state != self.OPEN:
                self.opened += 1
            self.state = self.OPEN
            self.open_until = now + self.cooldown
            self.cooldown = min(self.cooldown * 2, BREAKER_MAX_COOLDOWN)

    @property
    def label(self) -> str:
        return ("closed", "open", "half_open")[self.state]


Answer = tuple[str, bytes]  # (outcome, record payload)


class Provider:
    """One authorization server + client id: its pool, breaker, table and counters."""

    def __init__(self, state_dir: str, source: str, config: schema.OAuth2) -> None:
        self.source = source
        self.config = config
        self.endpoint = config.introspection_endpoint
        self.client: AsClient | None = None
        self.discovery_error: str | None = None
        self.discovery_task: asyncio.Task[None] | None = None
        size = IntrospectionCache.size_for(config.cache_size, CACHE_SLOT_BYTES)
        self._cache_map = create_mapping(cache_path(state_dir, source), size)
        self.cache = IntrospectionCache.format(self._cache_map, config.cache_size,
                                               CACHE_SLOT_BYTES)
        self._ctl_map = create_mapping(ctl_path(state_dir, source), CTL_SLOTS * 8)
        self.ctl = Counters(self._ctl_map)
        self.ctl.store(SLOT_MAGIC, CTL_MAGIC)
        self.inflight: dict[bytes, asyncio.Future[Answer]] = {}
        self.recent: OrderedDict[bytes, tuple[float, Answer]] = OrderedDict()
        self.breaker = Breaker()
        self.results: Counter[str] = Counter()
        self.asked = 0  # questions from workers
        self.joined = 0  # questions answered by a call already in flight
        self.rejected = 0  # refused at once: queue full, breaker open, no endpoint
        self.not_stored = 0  # answers the shared table had no room for
        self.call_seconds = 0.0
        self.calls = 0
        self.last_error: str | None = None
        self.active = True
        # Cluster mode: results shared with the other nodes (cluster/introspection.py).
        self.shared: SharedResults | None = None
        self.shared_id = provider_id(source)

    # ---- configuration ----------------------------------------------------------------

    def connect(self) -> None:
        """Build the client once the endpoint is known (configured or discovered)."""
        c = self.config
        self.client = AsClient(
            self.endpoint or "", client_id=c.client_id, auth_method=c.auth_method,
            client_secret=c.client_secret, private_key_file=c.private_key,
            assertion_audience=c.issuer, max_connections=c.max_connections,
            timeout=c.timeout, ca_file=c.ca_file,
        )

    async def discover(self) -> None:
        """Find the introspection endpoint from the issuer's metadata, retrying until found."""
        while self.endpoint is None:
            try:
                document = await discover(self.config.issuer or "", DISCOVERY_TIMEOUT)
                endpoint = document.get("introspection_endpoint")
                if not isinstance(endpoint, str) or not endpoint:
                    raise ValueError("the metadata has no introspection_endpoint")
                self.endpoint = endpoint
                self.discovery_error = None
                self.connect()
                log.info("oauth2 provider %s: introspection endpoint %s", self.source, endpoint)
            except Exception as exc:  # noqa: BLE001 - any failure is retried, and shown
                self.discovery_error = str(exc)
                log.warning("oauth2 discovery for %s failed: %s", self.config.issuer, exc)
                await asyncio.sleep(DISCOVERY_RETRY)

    # ---- answering workers --------------------------------------------------------------

    async def answer(self, token: bytes) -> Answer:
        """What the authorization server says of ``token``: at most one call per token in
        flight, none while the breaker is open or the queue is full."""
        self.asked += 1
        digest = token_digest(token)
        now = time.time()
        recent = self.recent.get(digest)
        if recent is not None and recent[0] > now:
            return recent[1]
        pending = self.inflight.get(digest)
        if pending is not None:
            self.joined += 1
            return await asyncio.shield(pending)
        if len(self.inflight) >= self.config.max_pending:
            self.rejected += 1
            return ("unavailable", b"")
        future: asyncio.Future[Answer] = asyncio.get_running_loop().create_future()
        self.inflight[digest] = future
        answer: Answer = ("unavailable", b"")
        try:
            answer = await self._resolve(token, digest)
        finally:
            del self.inflight[digest]
            future.set_result(answer)
        return answer

    async def _resolve(self, token: bytes, digest: bytes) -> Answer:
        """Another node's answer (cluster mode), else the authorization server's."""
        if self.shared is not None:
            found = await self.shared.get(self.shared_id, digest)
            if found is not None:
                expires_at, active, payload = found
                return self._keep(digest, expires_at, active, payload, time.time())
        if self.client is None or not self.breaker.allow(time.monotonic()):
            self.rejected += 1
            return ("unavailable", b"")
        return await self._call(token, digest)

    async def _call(self, token: bytes, digest: bytes) -> Answer:
        assert self.client is not None
        started = time.monotonic()
        try:
            document = await self.client.introspect(token)
            record = record_from_response(document)
        except IntrospectionError as exc:
            return self._failed(exc.reason, str(exc), started)
        except ValueError as exc:
            return self._failed("invalid_response", str(exc), started)
        finally:
            self.calls += 1
            self.call_seconds += time.monotonic() - started
        self.breaker.success()
        now = time.time()
        c = self.config
        if record.active and record.exp is not None and record.exp <= now:
            # RFC 7662 §2.2 lets a server say active with an exp already past (clock
            # skew): the gateway's own clock decides, and the token is not let in.
            self.results["expired"] += 1
            record = INACTIVE
        elif record.active:
            self.results["active"] += 1
        else:
            self.results["inactive"] += 1
        if record.active:
            expires_at = min(float(record.exp or now + c.cache_ttl), now + c.cache_ttl)
        else:
            expires_at = now + min(c.negative_cache_ttl, c.cache_ttl)
        payload = encode_record(record)
        answer = self._keep(digest, expires_at, record.active, payload, now)
        if self.shared is not None:
            self.shared.put(self.shared_id, digest, expires_at, record.active, payload)
        return answer

    def _keep(self, digest: bytes, expires_at: float, active: bool, payload: bytes,
              now: float) -> Answer:
        """Keep a result in the node's table and the recent answers; the worker's answer."""
        if not self.cache.store(digest, expires_at, active, payload, now):
            self.not_stored += 1
        answer = ("active" if active else "inactive", payload)
        self._remember(digest, expires_at, answer)
        return answer

    def _failed(self, reason: str, message: str, started: float) -> Answer:
        self.results[reason] += 1
        self.breaker.failure(time.monotonic())
        self.last_error = message
        log.warning("introspection at %s failed (%s): %s", self.endpoint, reason, message)
        return ("invalid" if reason in UNTRUSTED else "unavailable", b"")

    def _remember(self, digest: bytes, expires_at: float, answer: Answer) -> None:
        recent = self.recent
        recent[digest] = (expires_at, answer)
        recent.move_to_end(digest)
        while len(recent) > RECENT_LIMIT:
            recent.popitem(last=False)

    def purge(self, digest: bytes) -> bool:
        """Forget what is known of a token (by its SHA-256): the next request asks again."""
        known = self.recent.pop(digest, None) is not None
        return self.cache.purge(digest) or known

    # ---- status -------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        positive, negative = self.cache.live_entries(time.time())
        return {
            "provider": self.source,
            "client_id": self.config.client_id,
            "issuer": self.config.issuer,
            "introspection_endpoint": self.endpoint,
            "discovery_error": self.discovery_error,
            "breaker": self.breaker.label,
            "in_flight": len(self.inflight),
            "asked": self.asked,
            "joined_in_flight": self.joined,
            "rejected": self.rejected,
            "calls": dict(self.results),
            "last_error": self.last_error,
            "cache": {"active": positive, "inactive": negative,
                      "hits": self.ctl.load(SLOT_HITS), "misses": self.ctl.load(SLOT_MISSES),
                      "rate_limited": self.ctl.load(SLOT_RATE_LIMITED),
                      "not_stored": self.not_stored},
            "pool": self.client.stats if self.client is not None else None,
        }

    async def close(self) -> None:
        if self.discovery_task is not None:
            self.discovery_task.cancel()
        if self.client is not None:
            await self.client.close()
        for future in self.inflight.values():
            if not future.done():
                future.set_result(("unavailable", b""))
        self.cache.release()
        self.ctl.release()
        self._cache_map.close()
        self._ctl_map.close()


class _WorkerConnection(asyncio.Protocol):
    """One worker's connection: frames in, one task per question, frames out."""

    def __init__(self, service: SidePoolService) -> None:
        self.service = service
        self.transport: asyncio.Transport | None = None
        self.reader = FrameReader()
        self.tasks: set[asyncio.Task[None]] = set()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        try:
            _pid, uid, _gid = _PEERCRED.unpack(
                sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size))
        except (OSError, AttributeError):
            uid = -1
        if uid != os.getuid():
            log.warning("side pool: refused a connection from uid %s", uid)
            transport.close()

    def data_received(self, data: bytes) -> None:
        try:
            frames = self.reader.feed(data)
        except ValueError as exc:
            log.warning("side pool: dropped a worker connection: %s", exc)
            if self.transport is not None:
                self.transport.close()
            return
        for frame in frames:
            task = asyncio.get_running_loop().create_task(self._answer(frame))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    async def _answer(self, frame: list[Any]) -> None:
        if len(frame) == 4:
            await self._answer_login(frame)
            return
        if len(frame) != 3 or not isinstance(frame[1], str) or not isinstance(frame[2], bytes):
            return
        request_id, source, token = frame
        provider = self.service.providers.get(source)
        if provider is None:
            reply = [request_id, "unknown_provider", b""]
        else:
            try:
                outcome, payload = await provider.answer(token)
            except Exception:  # a bug must answer the worker (503), not leave it waiting
                log.exception("side pool: answering a worker failed")
                outcome, payload = "unavailable", b""
            reply = [request_id, outcome, payload]
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(encode_frame(reply))

    async def _answer_login(self, frame: list[Any]) -> None:
        """A step of the browser login (``master/login.py``)."""
        request_id, op, source, payload = frame
        if not isinstance(op, str) or not isinstance(source, str) or not isinstance(payload, bytes):
            return
        provider = self.service.logins.providers.get(source)
        if provider is None:
            outcome, body = "unknown_provider", b""
        else:
            try:
                outcome, body = await provider.handle(op, payload)
            except Exception:  # a bug must answer the worker, not leave it waiting
                log.exception("side pool: a login step failed")
                outcome, body = "unavailable", b""
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(encode_frame([request_id, outcome, body]))

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None


class SidePoolService:
    """The master service (``master/services.py``) that owns every oauth2 provider."""

    name = "oauth2"

    def __init__(self, master: ServiceContext) -> None:
        self.master = master
        self.providers: dict[str, Provider] = {}
        self.logins = LoginService(master.state_dir)
        self.shared: SharedResults | None = None  # cluster mode
        self._server: asyncio.AbstractServer | None = None
        self._sock: socket.socket | None = None

    # ---- lifecycle ----------------------------------------------------------------------

    async def start(self, config: schema.Config) -> None:
        directory = oauth2_dir(self.master.state_dir)
        os.makedirs(directory, mode=0o700, exist_ok=True)
        os.chmod(directory, 0o700)
        await self._configure(config)
        if self.providers or self.logins.providers:
            await self._listen()

    async def reload(self, config: schema.Config) -> None:
        await self._configure(config)
        if (self.providers or self.logins.providers) and self._server is None:
            await self._listen()

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for provider in self.providers.values():
            await provider.close()
        self.providers.clear()
        await self.logins.close()
        if self.shared is not None:
            await self.shared.close()
        try:
            os.unlink(address_path(self.master.state_dir))
        except FileNotFoundError:
            pass

    def master_only_fds(self) -> list[int]:
        """The listening socket: workers connect to it, they never accept on it."""
        return [self._sock.fileno()] if self._sock is not None else []

    async def _configure(self, config: schema.Config) -> None:
        wanted: dict[str, schema.OAuth2] = {}
        await self.logins.configure(config)
        for entry in oauth2_configs(config):
            if entry.login:
                continue  # the browser login: self.logins
            wanted.setdefault(provider_source(entry), entry)
        if wanted and self.shared is None and is_redis_url(config.store):
            self.shared = SharedResults.for_config(config)
            self.shared.listen(self._purge_here)
        for source, entry in wanted.items():
            provider = self.providers.get(source)
            if provider is not None and provider.config == entry:
                provider.active = True
                continue
            if provider is not None:
                # Same endpoint and client, other settings (timeouts, cache): a new pool.
                await provider.close()
            self.providers[source] = self._new_provider(source, entry)
            self.providers[source].shared = self.shared
        for source, provider in self.providers.items():
            provider.active = source in wanted  # old workers may still drain with it

    def _new_provider(self, source: str, entry: schema.OAuth2) -> Provider:
        provider = Provider(self.master.state_dir, source, entry)
        try:
            if provider.endpoint is not None:
                provider.connect()
            else:
                provider.discovery_task = asyncio.get_running_loop().create_task(
                    provider.discover())
        except (OSError, ValueError) as exc:
            # A private_key_jwt key file that cannot be read or used: a config error.
            raise ConfigError(f"oauth2 client {entry.client_id}: {exc}") from None
        return provider

    async def _listen(self) -> None:
        name = "fluxgate-sidepool-" + secrets.token_hex(16)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(b"\0" + name.encode())
        sock.listen(256)
        sock.setblocking(False)
        self._sock = sock
        loop = asyncio.get_running_loop()
        self._server = await loop.create_unix_server(lambda: _WorkerConnection(self), sock=sock)
        replace_file(address_path(self.master.state_dir), name.encode())

    # ---- admin and metrics --------------------------------------------------------------

    def _purge_here(self, digest: bytes) -> int:
        """Forget a token (by SHA-256) in every provider of this node."""
        return sum(p.purge(digest) for p in self.providers.values())

    async def purge(self, digest: bytes) -> int:
        """Forget a token (by SHA-256) in every provider, and in cluster mode on every
        node; returns how many of this node's providers knew it."""
        known = self._purge_here(digest)
        if self.shared is not None:
            longest = max((p.config.cache_ttl for p in self.providers.values()), default=0.0)
            await self.shared.purge([p.shared_id for p in self.providers.values()], digest,
                                    keep_for=longest)
        return known

    def admin_routes(self, router: AdminRouter) -> None:
        from fluxgate.errors import BadRequest
        from fluxgate.master.admin import AdminResponse

        async def status(req: AdminRequest) -> AdminResponse:
            return AdminResponse.json(
                200, {"providers": [p.status() for p in self.providers.values()],
                      "logins": [p.status() for p in self.logins.providers.values()]})

        async def purge(req: AdminRequest) -> AdminResponse:
            try:
                body = orjson.loads(req.body or b"{}")
                digest = bytes.fromhex(body["token_sha256"])
            except (ValueError, KeyError, TypeError):
                raise BadRequest('expected {"token_sha256": "<64 hex digits>"}') from None
            if len(digest) != 32:
                raise BadRequest("token_sha256 must be 64 hex digits (SHA-256)")
            return AdminResponse.json(200, {"purged": await self.purge(digest)})

        router.add("GET", "/admin/oauth2", status)
        router.add("POST", "/admin/oauth2/purge", purge)

    def metrics(self) -> list[ProcessMetric]:
        providers = list(self.providers.values())
        out: list[ProcessMetric] = []

        def per_provider(fn: Any) -> list[tuple[tuple, float]]:
            return [((("provider", p.source),), fn(p)) for p in providers]

        out += metric_family("fluxgate_oauth2_introspection_total", "counter",
                             "Calls to the authorization server by provider and result.",
                             [((("provider", p.source), ("result", r)), p.results[r])
                              for p in providers for r in CALL_RESULTS])
        out += metric_family("fluxgate_oauth2_introspection_seconds_sum", "counter",
                             "Time spent in calls to the authorization server.",
                             per_provider(lambda p: p.call_seconds))
        out += metric_family("fluxgate_oauth2_introspection_seconds_count", "counter",
                             "Calls to the authorization server (any result).", per_provider(lambda p: p.calls))
        out += metric_family("fluxgate_oauth2_cache_hits_total", "counter",
                             "Requests answered from the shared introspection cache.",
                             per_provider(lambda p: p.ctl.load(SLOT_HITS)))
        out += metric_family("fluxgate_oauth2_cache_misses_total", "counter",
                             "Requests whose token the shared cache did not know (asked the side pool).",
                             per_provider(lambda p: p.ctl.load(SLOT_MISSES)))
        out += metric_family("fluxgate_oauth2_miss_rate_limited_total", "counter",
                             "Cache misses refused by the per-client miss rate limit.",
                             per_provider(lambda p: p.ctl.load(SLOT_RATE_LIMITED)))
        out += metric_family("fluxgate_oauth2_sidepool_requests_total", "counter",
                             "Questions workers asked the side pool.", per_provider(lambda p: p.asked))
        out += metric_family("fluxgate_oauth2_sidepool_joined_total", "counter",
                             "Questions answered by a call already in flight (single-flight).",
                             per_provider(lambda p: p.joined))
        out += metric_family("fluxgate_oauth2_sidepool_rejected_total", "counter",
                             "Questions answered unavailable at once (queue full, breaker open, "
                             "no endpoint yet).", per_provider(lambda p: p.rejected))
        out += metric_family("fluxgate_oauth2_sidepool_in_flight", "gauge",
                             "Distinct tokens being introspected now (the side pool's queue depth).",
                             per_provider(lambda p: len(p.inflight)))
        out += metric_family("fluxgate_oauth2_breaker_state", "gauge",
                             "Circuit breaker to the authorization server: 0 closed, 1 open, 2 half open.",
                             per_provider(lambda p: p.breaker.state))
        out += metric_family("fluxgate_oauth2_breaker_opened_total", "counter",
                             "Times the circuit breaker opened.", per_provider(lambda p: p.breaker.opened))
        out += cluster_oauth2_metrics(self.logins.store, self.shared)
        now = time.time()
        live = {p.source: p.cache.live_entries(now) for p in providers}
        out += metric_family("fluxgate_oauth2_cache_entries", "gauge",
                             "Live entries of the shared introspection cache by kind.",
                             [((("provider", p.source), ("kind", kind)), live[p.source][i])
                              for p in providers for i, kind in enumerate(("active", "inactive"))])
        return out
