"""WebSockets bound to the credential, end to end: a real `fluxgate run`, the recording
upstream's RFC 6455 echo (tests/support/websocket.py), a real WebSocket client here.

A WebSocket opened with a JWT closes with 4401 when the token expires, one opened with an
API key closes with 4403 when the key is revoked; both sides get a Close frame (the
upstream's masked), and a message crossing the moment of closing arrives whole or not at
all. An introspected token (oauth2) closes at its exp like a JWT. Broken framing is
answered with 1002 on both sides, never relayed.
"""

from __future__ import annotations

import hashlib
import json
import signal
import time

import pytest

from fluxgate.auth.keyops import KeyOps
from fluxgate.config import load_config
from tests.e2e.test_oauth2 import oauth2_routes
from tests.support.bad_authserver import BadAuthServer
from tests.support.gateway import GatewayProcess, raw_request, wait_until
from tests.support.idp import AUDIENCE, IdentityProvider
from tests.support.upstream import RecordingUpstream
from tests.support.websocket import (
    OP_BINARY,
    OP_CLOSE,
    OP_PING,
    OP_TEXT,
    WsClient,
    close_payload,
    encode,
)

pytestmark = pytest.mark.slow

CONFIG = """\
upstreams:
  app: {{targets: ["{url}"], connect_timeout: 1s, read_timeout: 1s}}
routes:
  - route: /ws/jwt
    upstream: app
    middleware:
      - jwt: {jwt}
  - route: /ws/key
    upstream: app
    middleware:
      - api_key: {{}}
  - route: /ws/open
    upstream: app
    public: true
  - route: /api
    upstream: app
    public: true
"""


@pytest.fixture(scope="module")
def idp():
    provider = IdentityProvider(("RS256",)).start()
    yield provider
    provider.stop()


@pytest.fixture(scope="module")
def upstream():
    server = RecordingUpstream().start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def gw(tmp_path_factory, idp, upstream):
    jwt = json.dumps({"issuer": idp.issuer, "audience": AUDIENCE, "jwks_uri": idp.jwks_uri})
    gateway = GatewayProcess(tmp_path_factory.mktemp("ws"), CONFIG.format(url=upstream.url, jwt=jwt))
    try:
        yield gateway.start()
    finally:
        gateway.stop()


def upstream_close(upstream: RecordingUpstream, since: int):
    """The first Close the upstream received after event ``since``: ("close", code, masked)."""

    def first():
        return next((e for e in upstream.ws_events[since:] if e[0] == "close"), None)

    wait_until(lambda: first() is not None, interval=0.02)
    return first()


def messages(upstream: RecordingUpstream, since: int) -> list[tuple]:
    return [e for e in upstream.ws_events[since:] if e[0] == "message"]


def jwt_client(gw: GatewayProcess, idp: IdentityProvider, exp: int) -> WsClient:
    token = idp.mint(exp=exp)
    return WsClient.connect(gw.port, "/ws/jwt/chat", {"Authorization": f"Bearer {token}"},
                            timeout=8)


def assert_echo(client: WsClient, payload: bytes = b"hello") -> None:
    client.send(OP_TEXT, payload)
    frame = client.recv_frame()
    assert frame is not None and frame.payload == payload


def open_until_expiry_nears(gw, idp, upstream) -> tuple[WsClient, int]:
    """A JWT WebSocket whose token expires in about 2 s, open and echoing, 0.3 s before
    the expiry; and the upstream's event count when it opened."""
    since = len(upstream.ws_events)
    exp = int(time.time()) + 2
    client = jwt_client(gw, idp, exp)
    assert_echo(client)
    time.sleep(max(0.0, exp - 0.3 - time.time()))
    return client, since


# ---- expiry: 4401 ---------------------------------------------------------------------------


def test_jwt_websocket_closes_with_4401_on_both_sides_when_the_token_expires(gw, idp, upstream):
    since = len(upstream.ws_events)
    # exp is whole seconds: +4 leaves at least 3 s, so the echo after 1.2 s comes before it
    # even when the connect is slow under load.
    exp = int(time.time()) + 4
    client = jwt_client(gw, idp, exp)
    try:
        assert_echo(client)  # open well past the route's 1 s read timeout: only exp ends it
        time.sleep(1.2)
        assert_echo(client, b"still open")
        before, close = client.recv_until_close()
        closed_at = time.time()
        assert before == []
        assert close is not None and close.close_code == 4401 and not close.masked
        assert close.payload[2:] == b"credential expired"
        assert closed_at >= exp - 0.05  # not before the token's expiry
        assert upstream_close(upstream, since) == ("close", 4401, True)  # masked, RFC 6455 §5.3
        client.send(OP_CLOSE, close_payload(4401))  # the client answers; the gateway hangs up
        assert client.read_eof()
    finally:
        client.close()


def test_a_client_message_crossing_the_expiry_arrives_whole(gw, idp, upstream):
    client, since = open_until_expiry_nears(gw, idp, upstream)
    payload = bytes(range(256)) * 80  # 20 KiB in 40 writes over 0.8 s, across the expiry
    frame = encode(OP_BINARY, payload, mask=True)
    try:
        step = -(-len(frame) // 40)
        for k in range(40):
            client.send_raw(frame[k * step : (k + 1) * step])
            time.sleep(0.02)
        _, close = client.recv_until_close()
        assert close is not None and close.close_code == 4401
        # The upstream parsed the whole frame and then the gateway's Close: nothing cut.
        assert upstream_close(upstream, since) == ("close", 4401, True)
        got = messages(upstream, since)
        assert got[1:] == [("message", OP_BINARY, len(payload), True,
                            hashlib.sha256(payload).hexdigest())]
    finally:
        client.close()


def test_an_upstream_message_crossing_the_expiry_arrives_whole_or_not_at_all(gw, idp, upstream):
    client, since = open_until_expiry_nears(gw, idp, upstream)
    try:
        client.send(OP_TEXT, b"drip:20000:40:20")  # one 20,000-byte frame in 40 writes
        before, close = client.recv_until_close()
        # The client's reader parsed a whole Close after what came first: no half frame.
        assert close is not None and close.close_code == 4401
        assert before[0].payload == b"drip:20000:40:20"
        assert [(f.opcode, f.payload) for f in before[1:]] in ([], [(OP_BINARY, b"d" * 20000)])
        assert upstream_close(upstream, since) == ("close", 4401, True)
    finally:
        client.close()


def test_a_frame_never_finished_cuts_the_connection_it_was_going_to(gw, idp, upstream):
    since = len(upstream.ws_events)
    exp = int(time.time()) + 2
    client = jwt_client(gw, idp, exp)
    try:
        assert_echo(client)
        frame = encode(OP_BINARY, b"z" * 5000, mask=True)
        client.send_raw(frame[:1000])  # and never the rest
        _, close = client.recv_until_close()
        assert close is not None and close.close_code == 4401  # the client still hears why
        assert client.read_eof()
        # The upstream had half a frame: its connection was cut, no Close made of garbage.
        time.sleep(0.3)
        assert [e for e in upstream.ws_events[since:] if e[0] == "close"] == []
        assert len(messages(upstream, since)) == 1  # the echo test's message only
    finally:
        client.close()


def test_a_large_transfer_through_a_bound_websocket_arrives_intact(gw, idp, upstream):
    client = jwt_client(gw, idp, int(time.time()) + 3600)
    try:
        blocks = [bytes([k]) * (1 << 20) + b"%d" % k for k in range(8)]  # 8 MiB, 8 messages
        for block in blocks:
            client.send(OP_BINARY, block)
        for block in blocks:
            frame = client.recv_frame()
            assert frame is not None and frame.opcode == OP_BINARY and frame.payload == block
        big = bytes(range(251)) * 12_000  # one ~3 MiB frame
        client.send(OP_BINARY, big)
        frame = client.recv_frame()
        assert frame is not None and hashlib.sha256(frame.payload).digest() == hashlib.sha256(big).digest()
    finally:
        client.close()


def test_a_close_the_client_starts_goes_through_and_ends_the_connection_cleanly(gw, idp, upstream):
    since = len(upstream.ws_events)
    client = jwt_client(gw, idp, int(time.time()) + 3600)
    try:
        assert_echo(client)
        client.send(OP_CLOSE, close_payload(1000, b"bye"))
        # The upstream's answer reaches the client, then the end of the stream (not a reset:
        # the upstream closed properly, so the gateway closes the client connection after
        # what it relayed).
        before, close = client.recv_until_close()
        assert before == [] and close is not None and close.close_code == 1000
        assert client.sock.recv(65536) == b""  # a FIN; a reset would raise here
        assert upstream_close(upstream, since) == ("close", 1000, True)
    finally:
        client.close()


# ---- revocation: 4403 -----------------------------------------------------------------------


def test_a_revoked_api_key_closes_its_websocket_with_4403(gw, upstream):
    def ops() -> KeyOps:  # the fluxctl path: keys.db in the gateway's state_dir
        return KeyOps(load_config(gw.config_path))

    with ops() as o:
        key = o.generate("ws-revoked", routes=["/ws/key"])["key"]

    def key_known() -> bool:  # the key reaches the worker at its next sweep
        answer = raw_request(gw.port, b"GET /ws/key/x HTTP/1.1\r\nHost: a\r\nX-API-Key: %s\r\n"
                             b"Connection: close\r\n\r\n" % key.encode())
        return answer.startswith(b"HTTP/1.1 ") and not answer.startswith(b"HTTP/1.1 401 ")

    assert wait_until(key_known)
    client = WsClient.connect(gw.port, "/ws/key/feed", {"X-API-Key": key}, timeout=8)
    since = len(upstream.ws_events)
    try:
        assert_echo(client)
        with ops() as o:
            o.revoke("ws-revoked")
        _, close = client.recv_until_close()
        assert close is not None and close.close_code == 4403
        assert upstream_close(upstream, since) == ("close", 4403, True)
    finally:
        client.close()
    with pytest.raises(ConnectionError):
        WsClient.connect(gw.port, "/ws/key/feed", {"X-API-Key": key})


# ---- broken framing: 1002 -------------------------------------------------------------------

HOSTILE = {
    "unmasked client frame": encode(OP_TEXT, b"hello", mask=False),
    "64-bit length with the top bit set": encode(OP_BINARY, b"", mask=True, length=(1 << 63) + 5),
    "control frame over 125 bytes": encode(OP_PING, b"p" * 200, mask=True),
    "fragmented control frame": encode(OP_PING, b"p", mask=True, fin=False),
    "reserved opcode": encode(5, b"r", mask=True),
}


@pytest.mark.parametrize("name", list(HOSTILE))
def test_broken_framing_is_closed_with_1002_on_both_sides(gw, upstream, name):
    client = WsClient.connect(gw.port, "/ws/open/x")
    since = len(upstream.ws_events)
    try:
        assert_echo(client, b"fine")
        client.send_raw(HOSTILE[name] + encode(OP_TEXT, b"after", mask=True))
        before, close = client.recv_until_close()
        assert before == [] and close is not None and close.close_code == 1002
        assert upstream_close(upstream, since) == ("close", 1002, True)
        assert [e[2] for e in messages(upstream, since)] == [4]  # "fine" only
    finally:
        client.close()
    # The worker is fine.
    assert raw_request(gw.port, b"GET /api/ok HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
                       ).startswith(b"HTTP/1.1 200 ")


def test_a_masked_frame_from_the_upstream_is_closed_with_1002_on_both_sides(gw, upstream):
    client = WsClient.connect(gw.port, "/ws/open/x")
    since = len(upstream.ws_events)
    try:
        client.send(OP_TEXT, b"masked")  # echoed, then the upstream sends a masked frame
        before, close = client.recv_until_close()
        assert [f.payload for f in before] == [b"masked"]  # the bad frame never passed
        assert close is not None and close.close_code == 1002 and not close.masked
        assert upstream_close(upstream, since) == ("close", 1002, True)
    finally:
        client.close()


# ---- oauth2 (introspection): the introspected exp -------------------------------------------


def test_an_introspected_token_closes_its_websocket_with_4401_at_its_exp(tmp_path, upstream):
    with BadAuthServer(client_id="gateway", client_secret="s3cret") as server:
        exp = int(time.time()) + 3
        token = server.add_token(exp=exp)
        config = oauth2_routes(upstream.url, server).replace("/orders", "/ws/oauth")
        gateway = GatewayProcess(tmp_path, config).start()
        try:
            since = len(upstream.ws_events)
            client = WsClient.connect(gateway.port, "/ws/oauth/feed",
                                      {"Authorization": f"Bearer {token}"}, timeout=8)
            try:
                assert_echo(client)
                _, close = client.recv_until_close()
                assert close is not None and close.close_code == 4401
                assert time.time() >= exp - 0.05
                assert upstream_close(upstream, since) == ("close", 4401, True)
            finally:
                client.close()
        finally:
            gateway.stop()


# ---- a worker going away: 1001 ----------------------------------------------------------------


def test_a_stopping_gateway_closes_websockets_with_1001_before_its_drain_deadline(
        tmp_path, upstream):
    config = CONFIG.format(url=upstream.url, jwt="{}").replace(
        "      - jwt: {}\n", "      - api_key: {}\n")
    gateway = GatewayProcess(tmp_path, "limits: {drain_timeout: 3s}\n" + config).start()
    try:
        client = WsClient.connect(gateway.port, "/ws/open/x", timeout=8)
        since = len(upstream.ws_events)
        try:
            assert_echo(client)
            gateway.signal(signal.SIGTERM)
            _, close = client.recv_until_close()
            assert close is not None and close.close_code == 1001
            assert upstream_close(upstream, since) == ("close", 1001, True)
            client.send(OP_CLOSE, close_payload(1001))
            assert client.sock.recv(65536) == b""
        finally:
            client.close()
    finally:
        gateway.stop()
