"""Background services of the master: the hook later features plug into.

A service lives in the master (one per gateway, never per worker): the JWKS poller, the key
store that compiles the shared key table, ... Each is created once at start from the
`SERVICES` registry and follows the master's lifecycle:

  start(config)   before the first workers fork, so shared tables exist when they map them
  reload(config)  before a new generation forks; raising ConfigError refuses the reload and
                  the old config keeps serving
  stop()          when the master exits
  admin_routes()  adds endpoints to the admin API
  metrics()       extra Prometheus series for /metrics
  master_only_fds()  (optional) descriptors the workers must not inherit
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from fluxgate.config.schema import Config
    from fluxgate.master.admin import AdminRouter
    from fluxgate.metrics import ProcessMetric


class MasterService(Protocol):
    """What the arbiter expects of a background service."""

    name: str

    async def start(self, config: Config) -> None: ...

    async def reload(self, config: Config) -> None: ...

    async def stop(self) -> None: ...

    def admin_routes(self, router: AdminRouter) -> None: ...

    def metrics(self) -> list[ProcessMetric]: ...


class ServiceContext(Protocol):
    """What a service may know of the master."""

    loop: object

    @property
    def state_dir(self) -> str: ...


from fluxgate.master.auth_metrics import AuthMetricsService  # noqa: E402
from fluxgate.master.jwks import JwksService  # noqa: E402

# Factories, in start order. Each takes the master (a ServiceContext) and returns a service.
SERVICES: list[Callable[[ServiceContext], MasterService]] = [
    AuthMetricsService,  # auth failure counters (every auth method)
    JwksService,  # JWT signing keys
]


def _key_service(master: ServiceContext) -> MasterService:
    """API keys: keys.db -> the shared key table, usage stamps, /admin/keys (master/keys.py)."""
    from fluxgate.master.keys import KeyService

    return KeyService(master)


SERVICES.append(_key_service)


def _sidepool_service(master: ServiceContext) -> MasterService:
    """OAuth 2.0 introspection: the side pool and its shared result tables (master/sidepool.py)."""
    from fluxgate.master.sidepool import SidePoolService

    return SidePoolService(master)


SERVICES.append(_sidepool_service)


def _shadow_service(master: ServiceContext) -> MasterService:
    """Shadow decisions: the shared table shadowed middleware counts into (master/shadow_metrics.py)."""
    from fluxgate.master.shadow_metrics import ShadowMetricsService

    return ShadowMetricsService(master)


SERVICES.append(_shadow_service)


def _cluster_keys_service(master: ServiceContext) -> MasterService:
    """Cluster mode: API keys in step with Redis, key changes through it (cluster/keys.py).
    After the key service, whose table it feeds and whose admin key changes it replaces."""
    from fluxgate.cluster.keys import ClusterKeyService

    return ClusterKeyService(master)


SERVICES.append(_cluster_keys_service)


def _quota_lease_service(master: ServiceContext) -> MasterService:
    """Cluster mode's quota leases: the node's lease file, its metrics, leases given back
    at shutdown (master/quota_leases.py)."""
    from fluxgate.master.quota_leases import QuotaLeaseService

    return QuotaLeaseService(master)


SERVICES.append(_quota_lease_service)
