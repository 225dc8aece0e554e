"""The ``store`` URL of cluster mode, and the redis-py clients made from it.

Accepted forms (a password may come from ``${ENV}``, which the config loader substitutes)::

    redis://[[user]:password@]host:port[/db]
    rediss://...                                         TLS, the server verified
    redis+sentinel://[[user]:password@]host:port[,host:port...]/service_name[/db]
    redis+cluster://[[user]:password@]host:port[,host:port...]
    rediss+sentinel://..., rediss+cluster://...          the same over TLS

Redis Cluster has no database numbers, and a Lua script's keys must live in one hash slot:
every key a script touches shares a ``{...}`` hash tag (see ``hash_tagged``).
"""

from __future__ import annotations

import socket
import ssl
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal
from urllib.parse import unquote

if TYPE_CHECKING:
    from fluxgate.config.schema import Cluster, Config

Topology = Literal["single", "sentinel", "cluster"]

_SCHEMES: dict[str, tuple[Topology, bool]] = {
    "redis": ("single", False),
    "rediss": ("single", True),
    "redis+sentinel": ("sentinel", False),
    "rediss+sentinel": ("sentinel", True),
    "redis+cluster": ("cluster", False),
    "rediss+cluster": ("cluster", True),
}
DEFAULT_PORT = 6379
DEFAULT_SENTINEL_PORT = 26379


class StoreUrlError(ValueError):
    """The store URL cannot be used; the message says why (never the password)."""


@dataclass(frozen=True)
class RedisStore:
    """A parsed ``store`` URL."""

    topology: Topology
    tls: bool
    hosts: tuple[tuple[str, int], ...]
    db: int = 0
    username: str | None = None
    password: str | None = None
    service_name: str | None = None  # Sentinel's name of the monitored primary

    def describe(self) -> str:
        """The URL without its credentials, for logs and error messages."""
        scheme = next(s for s, v in _SCHEMES.items() if v == (self.topology, self.tls))
        hosts = ",".join(f"[{h}]:{p}" if ":" in h else f"{h}:{p}" for h, p in self.hosts)
        path = f"/{self.service_name}" if self.service_name else ""
        return f"{scheme}://{hosts}{path}" + (f"/{self.db}" if self.topology != "cluster" else "")


def is_redis_url(store: str) -> bool:
    """True when ``store`` names Redis (cluster mode) rather than the embedded SQLite."""
    return store.split("://", 1)[0].lower() in _SCHEMES


def parse_store_url(url: str) -> RedisStore:
    """Parse a Redis ``store`` URL (see the module's docstring for the forms)."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.lower() not in _SCHEMES:
        raise StoreUrlError(
            "expected redis://, rediss://, redis+sentinel:// or redis+cluster://"
        )
    topology, tls = _SCHEMES[scheme.lower()]
    if any(c in rest for c in "?#") or any(c.isspace() for c in rest):
        raise StoreUrlError("a store URL takes no query, fragment or spaces")
    userinfo, at, hostpart = rest.rpartition("@")
    username = password = None
    if at:
        user, colon, secret = userinfo.partition(":")
        username = unquote(user) or None
        password = unquote(secret) if colon else None
        if not colon:  # redis://secret@host is a password alone, as redis-cli reads it
            username, password = None, unquote(user)
    hostlist, _, path = hostpart.partition("/")
    hosts = tuple(_host_port(h, topology) for h in hostlist.split(","))
    parts = [p for p in path.split("/") if p] if path else []
    service_name = None
    if topology == "sentinel":
        if not parts:
            raise StoreUrlError("a Sentinel URL names the primary: redis+sentinel://host:port/name")
        service_name = parts.pop(0)
    if topology == "cluster" and parts:
        raise StoreUrlError("Redis Cluster has no database numbers: drop the /db")
    if topology == "single" and len(hosts) != 1:
        raise StoreUrlError("one host for redis://; use redis+sentinel:// or redis+cluster://")
    db = 0
    if parts:
        if len(parts) != 1 or not parts[0].isdigit():
            raise StoreUrlError(f"the database must be a number, got {'/'.join(parts)!r}")
        db = int(parts[0])
    return RedisStore(topology, tls, hosts, db, username, password, service_name)


def _host_port(text: str, topology: Topology) -> tuple[str, int]:
    default = DEFAULT_SENTINEL_PORT if topology == "sentinel" else DEFAULT_PORT
    if text.startswith("["):
        host, bracket, after = text[1:].partition("]")
        if not bracket or (after and not after.startswith(":")):
            raise StoreUrlError(f"bad IPv6 host {text!r}")
        port_text = after[1:]
    else:
        host, _, port_text = text.partition(":")
    if not host:
        raise StoreUrlError("a host is missing")
    if not port_text:
        return host, default
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise StoreUrlError(f"bad port {port_text!r}")
    return host, int(port_text)


def node_name(config: Config) -> str:
    """This node's name in the shared store: ``cluster.node``, or the host name and the
    gateway's listen port (unique per node, stable across restarts)."""
    if config.cluster.node:
        return config.cluster.node
    from fluxgate.config.parsers import parse_listen

    listen = config.listen if isinstance(config.listen, str) else config.listen.address
    return f"{socket.gethostname()}:{parse_listen(listen)[1]}"


def hash_tagged(prefix: str, tag: str, *parts: str) -> str:
    """A key in the ``{prefix+tag}`` hash slot, so that a script's keys stay in one slot."""
    return "{" + prefix + tag + "}" + (":" + ":".join(parts) if parts else "")


def redis_client(store: RedisStore, settings: Cluster, *, asynchronous: bool = True):
    """A redis-py client (``redis.asyncio`` unless ``asynchronous`` is false) for ``store``.

    Commands are bounded by ``settings.timeout``, without retries; TLS verifies the server
    against the system CAs or ``settings.tls_ca``, and checks its host name.
    """
    from redis.backoff import NoBackoff

    if asynchronous:
        from redis.asyncio.retry import Retry
    else:
        from redis.retry import Retry
    client = _new_client(store, settings, asynchronous)
    # redis-py retries a timed-out call up to ten times, with backoff, by default: without
    # retries a node cut off from Redis knows it within cluster.timeout, not many seconds on.
    client.set_retry(Retry(NoBackoff(), 0))
    return client


def _new_client(store: RedisStore, settings: Cluster, asynchronous: bool):
    try:
        if asynchronous:
            import redis.asyncio as redis_module
            from redis.asyncio.cluster import ClusterNode, RedisCluster
            from redis.asyncio.sentinel import Sentinel
        else:
            import redis as redis_module
            from redis.cluster import ClusterNode, RedisCluster
            from redis.sentinel import Sentinel
    except ImportError as exc:  # pragma: no cover - the extra is part of the test install
        raise StoreUrlError(
            "cluster mode needs redis-py: pip install 'fluxgate[redis]'"
        ) from exc
    kwargs: dict = {
        "username": store.username,
        "password": store.password,
        "socket_timeout": settings.timeout,
        "socket_connect_timeout": settings.timeout,
        "health_check_interval": 15,
    }
    tls_kwargs: dict = {}
    if store.tls:
        tls_kwargs = {"ssl": True, "ssl_cert_reqs": "required", "ssl_check_hostname": True,
                      "ssl_ca_certs": settings.tls_ca, "ssl_certfile": settings.tls_cert,
                      "ssl_keyfile": settings.tls_key, "ssl_min_version": ssl.TLSVersion.TLSv1_2}
    if store.topology == "single":
        host, port = store.hosts[0]
        return redis_module.Redis(host=host, port=port, db=store.db, **kwargs, **tls_kwargs)
    if store.topology == "cluster":
        nodes = [ClusterNode(host, port) for host, port in store.hosts]
        return RedisCluster(startup_nodes=nodes, **kwargs, **tls_kwargs)
    sentinel = Sentinel(list(store.hosts), sentinel_kwargs={**kwargs, **tls_kwargs},
                        **kwargs, **tls_kwargs)
    return sentinel.master_for(store.service_name, db=store.db,
                               connection_pool_class=_rechecked_pool(asynchronous))


MASTER_RECHECK = 1.0  # seconds between two questions to Sentinel, per client in use


async def primary_moved(client, connection) -> bool:
    """With Sentinel: whether ``connection`` (an async client's, e.g. a subscription's) no
    longer goes to the server Sentinel names as the primary now. False for other topologies
    and when no Sentinel answers."""
    pool = getattr(client, "connection_pool", None)
    if connection is None or not hasattr(pool, "get_master_address"):
        return False
    try:
        host, port = await pool.get_master_address()
    except Exception:  # noqa: BLE001 - no Sentinel answers: keep what works
        return False
    return (connection.host, connection.port) != (host, port)


def _rechecked_pool(asynchronous: bool):
    """A Sentinel pool class that asks Sentinel which server is the primary again, at most
    once a second, when a connection is taken; a new answer drops the idle connections.

    redis-py asks only when it opens a connection: after a failover, a client whose
    connections are all open kept writing to the old primary, which accepts writes until
    Sentinel turns it into a replica (about 10 s later) and then loses them."""
    import time

    if asynchronous:
        from redis.asyncio.sentinel import SentinelConnectionPool

        class AsyncRecheckedPool(SentinelConnectionPool):
            _next_check = 0.0

            async def get_connection(self, *args, **kwargs):
                now = time.monotonic()
                if now >= self._next_check:
                    self._next_check = now + MASTER_RECHECK
                    try:
                        await self.get_master_address()
                    except Exception:  # noqa: BLE001 - no Sentinel answers: the call decides
                        pass
                return await super().get_connection(*args, **kwargs)

        return AsyncRecheckedPool

    from redis.sentinel import SentinelConnectionPool

    class RecheckedPool(SentinelConnectionPool):
        _next_check = 0.0

        def get_connection(self, *args, **kwargs):
            now = time.monotonic()
            if now >= self._next_check:
                self._next_check = now + MASTER_RECHECK
                try:
                    self.get_master_address()
                except Exception:  # noqa: BLE001 - no Sentinel answers: the call decides
                    pass
            return super().get_connection(*args, **kwargs)

    return RecheckedPool
