"""A middleware that suspends a request (proxy/suspend.py): the chain resumes after it, in
order, and nothing reaches the upstream before the answer allows it."""

from __future__ import annotations

import asyncio

import pytest

from fluxgate.errors import InvalidToken
from fluxgate.proxy.suspend import Suspended
from tests.support.inprocess import wire_gateway

CONFIG = """
listen: 127.0.0.1:0
admin: {listen: 127.0.0.1:0}
access_log: null
routes:
  - route: /
    upstream: http://127.0.0.1:9
    public: true
"""

GET = b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n"


@pytest.fixture
def loop():
    loop = asyncio.new_event_loop()
    try:
        yield loop
    finally:
        loop.close()


class Chain:
    """before → suspending → after, recording what ran."""

    def __init__(self, loop: asyncio.AbstractEventLoop, answer: object = None) -> None:
        self.loop = loop
        self.ran: list[str] = []
        self.answer = answer
        self.futures: list[asyncio.Future] = []

    def before(self, req):
        self.ran.append("before")

    def suspending(self, req):
        self.ran.append("suspending")
        future = self.loop.create_future()
        self.futures.append(future)
        raise Suspended(future, self.resume)

    def resume(self, req):
        self.ran.append("resume")
        return self.answer

    def after(self, req):
        self.ran.append("after")

    def install(self, wired) -> None:
        wired.gateway.routes[0].steps = (self.before, self.suspending, self.after)


def settle(loop, chain: Chain) -> None:
    chain.futures[-1].set_result(None)
    loop.run_until_complete(asyncio.sleep(0))  # done callbacks run on the next iteration


def test_resumes_after_the_suspending_stage_and_forwards(loop):
    wired = wire_gateway(loop, CONFIG)
    chain = Chain(loop)
    chain.install(wired)
    wired.client.data_received(GET)
    assert chain.ran == ["before", "suspending"]
    assert wired.upstream_transport.out == b""  # nothing upstream while undecided
    assert wired.client.paused & wired.client.PAUSE_AUTH
    settle(loop, chain)
    assert chain.ran == ["before", "suspending", "resume", "after"]
    assert wired.upstream_transport.out.startswith(b"GET /a HTTP/1.1\r\n")
    assert not wired.client.paused & wired.client.PAUSE_AUTH


def test_a_refusal_on_resume_is_answered_locally(loop):
    wired = wire_gateway(loop, CONFIG)
    chain = Chain(loop, answer=InvalidToken(reason="inactive"))
    chain.install(wired)
    wired.client.data_received(GET)
    settle(loop, chain)
    assert chain.ran == ["before", "suspending", "resume"]
    assert wired.client_transport.out.startswith(b"HTTP/1.1 401 ")
    assert wired.upstream_transport.out == b""


def test_client_gone_while_suspended(loop):
    wired = wire_gateway(loop, CONFIG)
    chain = Chain(loop)
    chain.install(wired)
    wired.client.data_received(GET)
    wired.client.connection_lost(None)
    settle(loop, chain)
    assert chain.ran == ["before", "suspending"]
    assert wired.upstream_transport.out == b""


def test_pipelined_request_waits_for_the_suspended_one(loop):
    wired = wire_gateway(loop, CONFIG)
    chain = Chain(loop, answer=InvalidToken(reason="inactive"))
    chain.install(wired)
    wired.client.data_received(GET + b"GET /b HTTP/1.1\r\nHost: x\r\n\r\n")
    assert chain.ran == ["before", "suspending"]
    settle(loop, chain)  # the first is refused; the second starts and suspends in turn
    assert chain.ran == ["before", "suspending", "resume", "before", "suspending"]
    assert wired.client_transport.out.count(b"HTTP/1.1 401 ") == 1
    settle(loop, chain)
    assert wired.client_transport.out.count(b"HTTP/1.1 401 ") == 2


def test_suspending_again_on_resume(loop):
    wired = wire_gateway(loop, CONFIG)
    chain = Chain(loop)
    wired.gateway.routes[0].steps = (chain.suspending, chain.suspending)
    wired.client.data_received(GET)
    settle(loop, chain)
    assert chain.ran == ["suspending", "resume", "suspending"]
    assert wired.upstream_transport.out == b""
    settle(loop, chain)
    assert wired.upstream_transport.out.startswith(b"GET /a HTTP/1.1\r\n")
