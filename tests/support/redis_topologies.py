"""Redis Cluster and Sentinel on 127.0.0.1 for cluster mode's tests, from real redis-servers.

    def test_on_cluster(redis_cluster):      # 3 masters, no replicas, nodes.conf in tmp
        redis_cluster.url                     # redis+cluster://127.0.0.1:p1,127.0.0.1:p2,...
        redis_cluster.client()                # a sync redis-py RedisCluster

    def test_on_sentinel(redis_sentinel):    # a primary, one replica, one Sentinel
        redis_sentinel.url                    # redis+sentinel://127.0.0.1:<sentinel>/fluxgate/0
        redis_sentinel.failover()             # SENTINEL FAILOVER; returns once the replica leads

Like the ``redis_server`` fixture, each skips (saying why) where redis-server or redis-cli is
missing, and fails under CI (CI=true). Only the processes started here are stopped, by PID.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.gateway import free_port, wait_until
from tests.support.redis_server import RedisServer, redis_unavailable

SERVICE = "fluxgate"  # the primary's name in Sentinel


def _unavailable() -> str | None:
    reason = redis_unavailable()
    if reason is None and not shutil.which("redis-cli"):
        reason = "redis-cli is missing (Debian's redis-tools, which redis-server depends on)"
    return reason


def _require_redis() -> None:
    reason = _unavailable()
    if reason:
        if os.environ.get("CI") == "true":
            pytest.fail(f"redis unavailable under CI: {reason}")
        pytest.skip(reason)


class RedisCluster:
    """Three cluster-enabled masters (slots split by redis-cli), with ``replicas`` each."""

    def __init__(self, directory: Path, replicas: int = 0):
        self.replicas = replicas
        self.nodes: list[RedisServer] = []
        for index in range(3 * (1 + replicas)):
            node_dir = directory / f"node{index}"
            node_dir.mkdir()
            self.nodes.append(RedisServer(node_dir, extra=(
                "--cluster-enabled", "yes", "--cluster-config-file", str(node_dir / "nodes.conf"),
                "--cluster-node-timeout", "2000",
                # the bus port, by default the port + 10000: past 65535 for a high free port
                "--cluster-port", str(free_port()))))

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"127.0.0.1:{n.port}" for n in self.nodes)

    def start(self) -> RedisCluster:
        for node in self.nodes:
            node.start()
        subprocess.run(["redis-cli", "--cluster", "create",
                        *(f"127.0.0.1:{n.port}" for n in self.nodes),
                        "--cluster-replicas", str(self.replicas), "--cluster-yes"],
                       check=True, capture_output=True, timeout=30)
        if not wait_until(self._ok, timeout=20):
            raise RuntimeError("the Redis Cluster did not reach cluster_state:ok")
        return self

    def _ok(self) -> bool:
        for node in self.nodes:
            info = node.client(timeout=1).execute_command("CLUSTER", "INFO")
            text = info.decode() if isinstance(info, bytes) else str(info)
            if "cluster_state:ok" not in text:
                return False
        return True

    def failover(self, key: str, timeout: float = 30) -> None:
        """``CLUSTER FAILOVER`` on a replica of the master holding ``key``'s slot; returns
        once that replica serves the slot as its master."""
        slot = int(self.nodes[0].client().execute_command("CLUSTER", "KEYSLOT", key))
        master = next(n for n in self.nodes if self._owns(n, slot))
        replica = next(n for n in self.nodes
                       if n.client().info("replication").get("master_port") == master.port)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            wait_until(lambda: replica.client().info("replication").get("master_link_status")
                       == "up", timeout=timeout)
            # A manual failover the master does not join within 5 s is dropped: ask again.
            replica.client().execute_command("CLUSTER", "FAILOVER")
            if wait_until(lambda: self._owns(replica, slot) and not self._owns(master, slot),
                          timeout=8):
                return
        raise RuntimeError("the Redis Cluster failover did not complete")

    @staticmethod
    def _owns(node: RedisServer, slot: int) -> bool:
        """``node`` is a master and says it serves ``slot``."""
        if node.client().info("replication")["role"] != "master":
            return False
        for start, end, owner, *_ in node.client().execute_command("CLUSTER", "SLOTS"):
            if start <= slot <= end:
                return int(owner[1]) == node.port
        return False

    def client(self, timeout: float = 5.0):
        """A synchronous redis-py RedisCluster."""
        from redis.cluster import ClusterNode
        from redis.cluster import RedisCluster as Client

        return Client(startup_nodes=[ClusterNode("127.0.0.1", n.port) for n in self.nodes],
                      socket_timeout=timeout)

    def kill(self) -> None:
        for node in self.nodes:
            node.kill()


class RedisSentinel:
    """A primary, one replica of it and one Sentinel monitoring it as ``fluxgate`` (quorum 1)."""

    def __init__(self, directory: Path):
        for name in ("primary", "replica", "sentinel"):
            (directory / name).mkdir()
        self.primary = RedisServer(directory / "primary")
        self.replica = RedisServer(directory / "replica", extra=(
            "--replicaof", "127.0.0.1", str(self.primary.port)))
        self.sentinel_port = free_port()
        conf = directory / "sentinel" / "sentinel.conf"
        conf.write_text(
            f"sentinel monitor {SERVICE} 127.0.0.1 {self.primary.port} 1\n"
            f"sentinel down-after-milliseconds {SERVICE} 1000\n"
            f"sentinel failover-timeout {SERVICE} 10000\n"
            f"sentinel parallel-syncs {SERVICE} 1\n")
        self.sentinel = RedisServer(directory / "sentinel", port=self.sentinel_port,
                                    config_file=conf, extra=("--sentinel",))

    @property
    def url(self) -> str:
        return f"redis+sentinel://127.0.0.1:{self.sentinel_port}/{SERVICE}/0"

    def start(self) -> RedisSentinel:
        self.primary.start()
        self.replica.start()
        if not wait_until(self._replica_synced, timeout=20):
            raise RuntimeError("the replica did not sync with the primary")
        self.sentinel.start()
        if not wait_until(lambda: self._sees_replica(), timeout=20):
            raise RuntimeError("Sentinel did not discover the replica")
        return self

    def _replica_synced(self) -> bool:
        info = self.replica.client(timeout=1).info("replication")
        return info.get("master_link_status") == "up"

    def _sees_replica(self) -> bool:
        """Sentinel knows the replica, connected and in sync (a failover needs one)."""
        for replica in self.sentinel.client(timeout=1).sentinel_slaves(SERVICE):
            # redis-py parses the flags into booleans
            if not (replica.get("is_sdown") or replica.get("is_odown")
                    or replica.get("is_disconnected")) and \
                    replica.get("master-link-status") == "ok":
                return True
        return False

    def primary_port(self) -> int:
        host, port = self.sentinel.client(timeout=1).execute_command(
            "SENTINEL", "GET-MASTER-ADDR-BY-NAME", SERVICE)
        return int(port)

    def failover(self, kill: bool = False, timeout: float = 30) -> int:
        """Ask Sentinel for a failover (``kill``: SIGKILL the primary instead, and let
        Sentinel find it down); return the new primary's port once it leads and Sentinel
        names it."""
        before = self.primary_port()
        wait_until(self._sees_replica, timeout=timeout)
        servers = {self.primary.port: self.primary, self.replica.port: self.replica}
        after = {self.primary.port: self.replica, self.replica.port: self.primary}[before]
        if kill:
            servers[before].kill()
        else:
            self.sentinel.client(timeout=2).execute_command("SENTINEL", "FAILOVER", SERVICE)
        if not wait_until(lambda: self.primary_port() == after.port
                          and after.client(timeout=1).info("replication")["role"] == "master",
                          timeout=timeout):
            raise RuntimeError("the Sentinel failover did not complete")
        return after.port

    def client(self, timeout: float = 5.0):
        """A synchronous client of the current primary, found through Sentinel."""
        from redis.sentinel import Sentinel

        return Sentinel([("127.0.0.1", self.sentinel_port)], socket_timeout=timeout).master_for(
            SERVICE, socket_timeout=timeout)

    def kill(self) -> None:
        for server in (self.sentinel, self.replica, self.primary):
            server.kill()


def _running(kind, directory: Path):
    """Starts a ``kind`` topology in a fresh ``directory``, yields it, and kills it after."""
    _require_redis()
    directory.mkdir()
    topology = kind(directory)
    try:
        yield topology.start()
    finally:
        topology.kill()


@pytest.fixture
def redis_cluster(tmp_path) -> Iterator[RedisCluster]:
    """A fresh 3-master Redis Cluster on 127.0.0.1 for one test."""
    yield from _running(RedisCluster, tmp_path / "redis-cluster")


@pytest.fixture
def redis_sentinel(tmp_path) -> Iterator[RedisSentinel]:
    """A fresh primary + replica + Sentinel on 127.0.0.1 for one test."""
    yield from _running(RedisSentinel, tmp_path / "redis-sentinel")
