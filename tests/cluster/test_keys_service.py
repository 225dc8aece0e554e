"""The cluster key service's reload: what cannot change while the node runs."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest

from fluxgate.cluster.keys import ClusterKeyService
from fluxgate.config.loader import load_config_text
from fluxgate.errors import ConfigError

SECRET = "cluster-test-signing-secret-0123456789"


def config(store: str = "redis://127.0.0.1:6379/0", secret: str | None = SECRET,
           prefix: str = "fluxgate:"):
    return load_config_text(
        f"store: '{store}'\ncluster: {{node: a, prefix: '{prefix}'}}\n"
        + (f"api_keys: {{signing_secret: '{secret}'}}\n" if secret else "")
        + "routes:\n  - {route: /a, upstream: 'http://127.0.0.1:9', public: true}\n")


def service(running):
    svc = ClusterKeyService(SimpleNamespace(config=running))
    svc.mirror = SimpleNamespace(config=running, ops=SimpleNamespace(config=running))
    svc.ops = SimpleNamespace(config=running)
    return svc


@pytest.mark.parametrize(("new", "path"), [
    (dict(store="redis://127.0.0.1:6380/0"), "store"),
    (dict(store="sqlite"), "store"),
    (dict(prefix="other:"), "cluster.prefix"),
    (dict(secret="another-signing-secret-0123456789"), "api_keys.signing_secret"),
])
def test_a_reload_cannot_change_the_store_prefix_or_secret(new, path):
    running = config()
    svc = service(running)
    with pytest.raises(ConfigError) as err:
        asyncio.run(svc.reload(config(**new) if new.get("store") != "sqlite" else load_config_text(
            "routes:\n  - {route: /a, upstream: 'http://127.0.0.1:9', public: true}\n")))
    assert path in str(err.value)
    assert svc.mirror.config is running


def test_a_reload_that_keeps_them_takes_the_new_config():
    svc = service(config())
    fresh = config()
    asyncio.run(svc.reload(fresh))
    assert svc.mirror.config is fresh and svc.ops.config is fresh and svc.mirror.ops.config is fresh
