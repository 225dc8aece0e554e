"""fluxgate/master/jwks.py (the master's JWKS service) and the worker side of its shared
files (fluxgate/auth/jwks.py), driven by hand: a local identity provider, the service's
``poll`` called with chosen clocks, a worker ``KeySource`` reading what was published."""

from __future__ import annotations

import asyncio
import os
import time

import pytest

from fluxgate._core import JwtVerifier, TokenError
from fluxgate.auth.jwks import SLOT_REQUESTS, KeySource, ctl_path, snapshot_path
from fluxgate.config import load_config_text
from fluxgate.master.admin import AdminRequest, AdminRouter
from fluxgate.master.jwks import JWKS_MIN_REFRESH, JwksService, refresh_interval
from tests.support.idp import AUDIENCE, IdentityProvider


class FakeMaster:
    def __init__(self, state_dir: str) -> None:
        self.state_dir = state_dir
        self.loop = None


def config_for(*blocks: str) -> object:
    routes = "".join(
        f"  - route: /r{i}\n    upstream: http://127.0.0.1:9\n    middleware:\n"
        f"      - jwt: {{{block}}}\n"
        for i, block in enumerate(blocks)
    )
    return load_config_text("routes:\n" + routes)


@pytest.fixture
def idp():
    provider = IdentityProvider(("RS256",)).start()
    yield provider
    provider.stop()


def verifier_for(idp: IdentityProvider) -> JwtVerifier:
    return JwtVerifier(algorithms=["RS256"], issuer=idp.issuer, audiences=[AUDIENCE])


def run(scenario):
    return asyncio.run(scenario())


def test_refresh_interval_honours_cache_control_within_bounds():
    assert refresh_interval({}, 300) == 300
    assert refresh_interval({"cache-control": "public, max-age=120"}, 300) == 120
    assert refresh_interval({"cache-control": "max-age=86400"}, 300) == 300
    assert refresh_interval({"cache-control": "max-age=1"}, 300) == JWKS_MIN_REFRESH
    assert refresh_interval({"cache-control": "no-store"}, 300) == JWKS_MIN_REFRESH
    assert refresh_interval({"cache-control": 'max-age="90"'}, 300) == 90


def test_start_publishes_and_workers_read(tmp_path, idp):
    async def scenario():
        service = JwksService(FakeMaster(str(tmp_path)))
        await service.start(config_for(f"jwks_uri: '{idp.jwks_uri}'", f"jwks_uri: '{idp.jwks_uri}'"))
        try:
            assert len(service.providers) == 1 and idp.count("/jwks") == 1  # two routes, one fetch
            assert os.stat(snapshot_path(str(tmp_path), idp.jwks_uri)).st_mode & 0o777 == 0o600
            source = KeySource(str(tmp_path), idp.jwks_uri)
            source.poll(0)
            v = verifier_for(idp)
            source.attach(v)
            assert source.generation == 1 and v.verify(idp.mint().encode(), time.time())
            provider = service.providers[idp.jwks_uri]
            # Same keys again: counted ok, nothing republished.
            assert await service.refresh(provider, "test") == "ok"
            assert provider.generation == 1
            # A rotation: a new generation, which the worker picks up on its next poll.
            idp.rotate()
            assert await service.refresh(provider, "test") == "ok"
            assert provider.generation == 2
            source.poll(0)
            assert source.generation == 2 and v.verify(idp.mint().encode(), time.time())
            status = provider.status()
            assert status["kids"] == [k.kid for k in idp.published] and status["results"]["ok"] == 3
        finally:
            await service.stop()
        assert not os.listdir(tmp_path / "jwks")

    run(scenario)


def test_etag_and_not_modified(tmp_path, idp):
    idp.etag = True
    idp.cache_control = "max-age=60"

    async def scenario():
        service = JwksService(FakeMaster(str(tmp_path)))
        await service.start(config_for(f"jwks_uri: '{idp.jwks_uri}'"))
        try:
            provider = service.providers[idp.jwks_uri]
            before = time.monotonic()
            assert await service.refresh(provider, "test") == "not_modified"
            assert 55 <= provider.next_due - before <= 65  # max-age=60 under jwks_refresh 300
            assert provider.generation == 1
        finally:
            await service.stop()

    run(scenario)


def test_failures_keep_the_last_keys_then_expire_after_max_stale(tmp_path, idp):
    async def scenario():
        service = JwksService(FakeMaster(str(tmp_path)))
        await service.start(config_for(
            f"jwks_uri: '{idp.jwks_uri}', jwks_refresh: 60s, jwks_max_stale: 120s"
        ))
        service._poller.cancel()
        try:
            provider = service.providers[idp.jwks_uri]
            source = KeySource(str(tmp_path), idp.jwks_uri)
            v = verifier_for(idp)
            source.attach(v)
            source.poll(0)
            for mode, result in (("down", "error"), ("close", "error"), ("garbage", "invalid")):
                idp.mode = mode
                assert await service.refresh(provider, "test") == result
            assert provider.failures == 3 and provider.keys is not None
            assert 19 <= provider.next_due - time.monotonic() <= 21  # 5 s doubling: 5, 10, 20
            source.poll(0)
            assert v.verify(idp.mint().encode(), time.time())  # last good keys still work
            # Past jwks_max_stale without a success: keys withdrawn, tokens fail closed.
            service.poll(time.monotonic(), provider.last_success + 121)
            assert provider.expired and provider.generation == 2
            source.poll(0)
            with pytest.raises(TokenError) as info:
                v.verify(idp.mint(jti="x").encode(), time.time())
            assert info.value.reason == "jwks_unavailable"
            # The provider answers again: keys are back.
            idp.mode = "up"
            assert await service.refresh(provider, "test") == "ok"
            assert not provider.expired and provider.generation == 3
            source.poll(0)
            assert v.verify(idp.mint(jti="y").encode(), time.time())
            metrics = {(m.name, m.labels): m.value for m in service.metrics()}
            src = ("provider", idp.jwks_uri)
            assert metrics[("fluxgate_jwks_refresh_total", (src, ("result", "error")))] == 2
            assert metrics[("fluxgate_jwks_refresh_total", (src, ("result", "invalid")))] == 1
            assert metrics[("fluxgate_jwks_keys", (src,))] == 1
        finally:
            await service.stop()

    run(scenario)


def test_unknown_kid_requests_are_coalesced_behind_a_cooldown(tmp_path, idp):
    async def scenario():
        service = JwksService(FakeMaster(str(tmp_path)))
        await service.start(config_for(f"jwks_uri: '{idp.jwks_uri}'"))
        service._poller.cancel()
        try:
            provider = service.providers[idp.jwks_uri]
            workers = [KeySource(str(tmp_path), idp.jwks_uri) for _ in range(3)]
            now = time.monotonic()
            service.poll(now, time.time())
            assert not provider.fetching  # nothing asked, nothing due
            for w in workers:  # three workers, 50 kids each, some repeated
                for i in range(60):
                    w.request_refresh(f"kid-{i % 50}")
            assert provider.ctl.load(SLOT_REQUESTS) == 150  # the negative cache held 10 back
            service.poll(now, time.time())
            await provider.task
            assert idp.count("/jwks") == 2 and provider.on_demand == 1
            for w in workers:
                w.request_refresh("another-kid")
            for offset in (1, 10, 29.9):  # within the cooldown: no fetch however many ask
                service.poll(now + offset, time.time())
                assert not provider.fetching
            service.poll(now + 30.1, time.time())  # pending requests, cooldown over: one fetch
            await provider.task
            assert idp.count("/jwks") == 3 and provider.on_demand == 2
            service.poll(now + 70, time.time())  # nothing new asked: nothing fetched
            assert not provider.fetching
        finally:
            await service.stop()

    run(scenario)


def test_worker_negative_cache_is_bounded(tmp_path, idp):
    async def scenario():
        service = JwksService(FakeMaster(str(tmp_path)))
        await service.start(config_for(f"jwks_uri: '{idp.jwks_uri}'"))
        try:
            source = KeySource(str(tmp_path), idp.jwks_uri)
            assert source.request_refresh("a") and not source.request_refresh("a")
            for i in range(10000):
                source.request_refresh(f"k{i}")
            assert len(source._asked) <= 4096
        finally:
            await service.stop()

    run(scenario)


def test_discovery(tmp_path, idp):
    async def scenario():
        service = JwksService(FakeMaster(str(tmp_path)))
        await service.start(config_for(f"issuer: '{idp.issuer}'"))
        try:
            provider = service.providers[f"discovery:{idp.issuer}"]
            assert provider.discovered == idp.jwks_uri and provider.generation == 1
            assert idp.count("/.well-known/openid-configuration") == 1
            await service.refresh(provider, "test")
            assert idp.count("/.well-known/openid-configuration") == 1  # remembered
            idp.mode = "down"
            assert await service.refresh(provider, "test") == "error"
            idp.mode = "up"
            idp.discovery_issuer = "https://impostor.example"
            assert await service.refresh(provider, "test") == "error"  # discovers again
            assert "does not name issuer" in provider.last_error
            assert provider.generation == 1  # the last good keys stay
        finally:
            await service.stop()

    run(scenario)


def test_reload_adds_providers_and_retires_others(tmp_path, idp):
    second = IdentityProvider(("ES256",)).start()

    async def scenario():
        service = JwksService(FakeMaster(str(tmp_path)))
        await service.start(config_for(f"jwks_uri: '{idp.jwks_uri}'"))
        try:
            await service.reload(config_for(f"jwks_uri: '{second.jwks_uri}'"))
            assert second.count("/jwks") == 1
            assert not service.providers[idp.jwks_uri].active
            assert service.providers[second.jwks_uri].active
            assert os.path.exists(ctl_path(str(tmp_path), idp.jwks_uri))  # draining workers
        finally:
            await service.stop()

    try:
        run(scenario)
    finally:
        second.stop()


def test_admin_endpoints(tmp_path, idp):
    async def scenario():
        service = JwksService(FakeMaster(str(tmp_path)))
        router = AdminRouter()
        service.admin_routes(router)
        await service.start(config_for(f"jwks_uri: '{idp.jwks_uri}'"))
        try:
            req = AdminRequest("GET", "/admin/jwks", "", {}, b"", "r1", True)
            response = await router.resolve("GET", "/admin/jwks").handler(req)
            body = response.body.decode()
            assert idp.jwks_uri in body and '"generation":1' in body
            assert '"n":' not in body  # key ids only, never key material
            refresh = router.resolve("POST", "/admin/jwks/refresh").handler
            await refresh(AdminRequest("POST", "/admin/jwks/refresh", "", {}, b"", "r2", True))
            assert idp.count("/jwks") == 2
        finally:
            await service.stop()

    run(scenario)


def test_worker_without_a_master_fails_closed(tmp_path):
    source = KeySource(str(tmp_path), "https://idp.example/jwks")
    v = JwtVerifier(algorithms=["RS256"])
    source.attach(v)
    source.poll(0)
    assert source.keys is None and not source.request_refresh("k")
    with pytest.raises(TokenError) as info:
        v.verify(IdentityProvider(("RS256",)).mint().encode(), time.time())
    assert info.value.reason == "jwks_unavailable"
