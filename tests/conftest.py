"""Shared fixtures: a recording upstream and real gateway processes on 127.0.0.1:0."""

from __future__ import annotations

import pytest

from tests.support.gateway import GatewayProcess
from tests.support.upstream import RecordingUpstream


@pytest.fixture
def upstream():
    server = RecordingUpstream().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def gateway_factory(tmp_path):
    started: list[GatewayProcess] = []

    def start(config_text: str, workers: int = 1, name: str = "gw", **kwargs) -> GatewayProcess:
        directory = tmp_path / name
        directory.mkdir(exist_ok=True)
        gw = GatewayProcess(directory, config_text, workers=workers, **kwargs)
        started.append(gw)
        return gw.start()

    try:
        yield start
    finally:
        for gw in started:
            gw.stop()


# A real django-oauth-toolkit authorization server (session scope): token introspection, and
# the OpenID Provider of the browser login.
from tests.support.authserver import django_auth_server  # noqa: E402, F401

# Headless chromium (Debian's, through Selenium): a fresh profile per test.
from tests.support.browser import chromium, chromium_factory  # noqa: E402, F401

# A real redis-server on 127.0.0.1 (function scope), for cluster mode.
from tests.support.redis_server import redis_server  # noqa: E402, F401
from tests.support.redis_topologies import redis_cluster, redis_sentinel  # noqa: E402, F401
