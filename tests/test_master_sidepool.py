"""The side pool's provider logic in-process: single-flight, the breaker, the bounded queue,
what is published, and the frames workers and the master exchange."""

from __future__ import annotations

import asyncio
import time

import pytest

from fluxgate._core import IntrospectionCache
from fluxgate.auth.introspection import (
    FrameReader,
    TokenRecord,
    decode_record,
    encode_frame,
    oauth2_dir,
    record_from_response,
    token_digest,
)
from fluxgate.config import schema
from fluxgate.master.as_client import IntrospectionError
from fluxgate.master.sidepool import BREAKER_THRESHOLD, Breaker, Provider


class FakeClient:
    """Stands in for the authorization server's client: counts calls, answers by script."""

    def __init__(self, answer=None, error: str | None = None, delay: float = 0.01) -> None:
        self.calls = 0
        self.answer = answer or {"active": True, "scope": "read", "sub": "u",
                                 "exp": int(time.time()) + 3600}
        self.error = error
        self.delay = delay
        self.stats: dict = {}

    async def introspect(self, token):
        self.calls += 1
        await asyncio.sleep(self.delay)
        if self.error:
            raise IntrospectionError(self.error, "scripted failure")
        return dict(self.answer)

    async def close(self) -> None:
        pass


@pytest.fixture
def provider(tmp_path):
    import os

    os.makedirs(oauth2_dir(str(tmp_path)))
    config = schema.OAuth2(client_id="gw", client_secret="s", cache_size=256,
                           introspection_endpoint="http://127.0.0.1:9/i", max_pending=4)
    p = Provider(str(tmp_path), "source", config)
    yield p
    asyncio.run(p.close())


def run(coro):
    return asyncio.new_event_loop().run_until_complete(coro)


def test_single_flight_one_call_for_concurrent_askers(provider):
    provider.client = FakeClient()

    async def ask_many():
        return await asyncio.gather(*(provider.answer(b"tok") for _ in range(50)))

    answers = run(ask_many())
    assert provider.client.calls == 1
    assert {a[0] for a in answers} == {"active"}
    assert provider.joined == 49
    # Published: a reader of the table finds it without asking.
    found = provider.cache.lookup(b"tok", time.time(), {})
    assert found is not None and found[1] is True
    assert decode_record(found[3]).sub == "u"
    assert run(provider.answer(b"tok"))[0] == "active" and provider.client.calls == 1


def test_expired_and_inactive_answers_are_negative(provider):
    provider.client = FakeClient(answer={"active": True, "exp": int(time.time()) - 5})
    assert run(provider.answer(b"old"))[0] == "inactive"
    assert provider.results["expired"] == 1
    provider.client = FakeClient(answer={"active": False})
    assert run(provider.answer(b"gone"))[0] == "inactive"
    found = provider.cache.lookup(b"gone", time.time(), {})
    assert found is not None and found[1] is False
    assert found[2] <= time.time() + provider.config.negative_cache_ttl + 0.01


@pytest.mark.parametrize("reason,outcome", [("timeout", "unavailable"),
                                            ("unreachable", "unavailable"),
                                            ("invalid_response", "invalid"),
                                            ("not_json", "invalid")])
def test_failures_are_never_a_yes(provider, reason, outcome):
    provider.client = FakeClient(error=reason)
    assert run(provider.answer(b"t")) == (outcome, b"")
    assert provider.cache.lookup(b"t", time.time(), {}) is None


def test_breaker_opens_after_consecutive_failures(provider):
    provider.client = FakeClient(error="timeout")
    for i in range(BREAKER_THRESHOLD):
        run(provider.answer(b"t%d" % i))
    assert provider.breaker.label == "open"
    calls = provider.client.calls
    assert run(provider.answer(b"another"))[0] == "unavailable"
    assert provider.client.calls == calls and provider.rejected == 1


def test_queue_is_bounded(provider):
    provider.client = FakeClient(delay=0.2)

    async def flood():
        return await asyncio.gather(*(provider.answer(b"t%d" % i) for i in range(10)))

    answers = run(flood())
    assert provider.client.calls == provider.config.max_pending
    assert sum(a[0] == "unavailable" for a in answers) == 10 - provider.config.max_pending


def test_purge_forgets_everywhere(provider):
    provider.client = FakeClient()
    run(provider.answer(b"tok"))
    assert provider.purge(token_digest(b"tok"))
    assert provider.cache.lookup(b"tok", time.time(), {}) is None
    run(provider.answer(b"tok"))
    assert provider.client.calls == 2


def test_breaker_half_open_lets_one_trial_through():
    b = Breaker()
    for _ in range(BREAKER_THRESHOLD):
        b.failure(100.0)
    assert not b.allow(100.5)
    assert b.allow(b.open_until + 0.01)  # the trial
    assert not b.allow(b.open_until + 0.02)  # only one while it runs
    b.success()
    assert b.allow(0) and b.label == "closed"


def test_record_keeps_only_checked_members():
    record = record_from_response({"active": True, "sub": "s", "aud": "api", "exp": 5,
                                   "ext": {"whatever": 1}, "token_type": "Bearer"})
    assert record == TokenRecord(active=True, sub="s", aud=("api",), exp=5, token_type="Bearer")
    assert record_from_response({"active": False, "sub": "s"}) == TokenRecord(active=False)
    with pytest.raises(ValueError):
        record_from_response({"active": True, "exp": "soon"})


def test_frames_split_and_refuse_garbage():
    reader = FrameReader()
    data = encode_frame([1, "src", b"tok"]) + encode_frame([2, "active", b"x"])
    assert reader.feed(data[:5]) == []
    assert reader.feed(data[5:]) == [[1, "src", b"tok"], [2, "active", b"x"]]
    with pytest.raises(ValueError):
        FrameReader().feed(b"\xff\xff\xff\xff")
    assert IntrospectionCache.size_for(256) > 0
