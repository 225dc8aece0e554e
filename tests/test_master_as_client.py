"""fluxgate/master/as_client.py (+ http_pool.py): RFC 7662 introspection against stand-in
authorization servers on 127.0.0.1, each started and stopped inside its test's loop."""

from __future__ import annotations

import asyncio
import base64
import logging
import ssl
import time
from dataclasses import dataclass
from urllib.parse import parse_qs, quote_plus

import orjson
import pytest
import trustme
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from fluxgate._core import b64url_decode
from fluxgate.master.as_client import AsClient, IntrospectionError, discover
from fluxgate.master.fetch import FetchError
from tests.support.gateway import free_port

TOKEN = "tok-Zq8-never-shown"
SECRET = "s3cr:t/ü+&=% x-never-shown"
CLOSE = object()  # a handler's answer: close the connection without a response


@dataclass
class Request:
    method: str
    target: str
    headers: dict[str, str]
    body: bytes

    @property
    def form(self) -> dict[str, str]:
        fields = parse_qs(self.body.decode(), keep_blank_values=True, strict_parsing=True)
        assert all(len(v) == 1 for v in fields.values())
        return {k: v[0] for k, v in fields.items()}


def answer(obj=None, *, status: str = "200 OK", body: bytes | None = None,
           content_type: str = "application/json", extra: str = "") -> bytes:
    """One HTTP/1.1 response with a Content-Length."""
    if body is None:
        body = orjson.dumps({"active": True} if obj is None else obj)
    return (f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\n{extra}"
            f"Content-Length: {len(body)}\r\n\r\n").encode() + body


class Server:
    """A keep-alive stand-in authorization server: ``handler(request)`` returns the bytes to
    send (a coroutine may wait first), CLOSE, ``(bytes, CLOSE)``, or None (stay silent)."""

    def __init__(self, handler=None, *, tls: ssl.SSLContext | None = None) -> None:
        self.handler = handler or (lambda request: answer())
        self.tls = tls
        self.requests: list[Request] = []
        self.connections = 0
        self.open = 0
        self.peak = 0
        self.tasks: set[asyncio.Task] = set()

    async def __aenter__(self) -> Server:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=self.tls)
        port = self.server.sockets[0].getsockname()[1]
        self.url = f"{'https' if self.tls else 'http'}://127.0.0.1:{port}/introspect"
        return self

    async def __aexit__(self, *exc) -> None:
        self.server.close()
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        await self.server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.tasks.add(asyncio.current_task())
        self.connections += 1
        self.open += 1
        self.peak = max(self.peak, self.open)
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError):
                    return
                line, *fields = head.decode("latin-1").split("\r\n")[:-2]
                headers = {k.lower(): v.strip() for k, v in (f.split(":", 1) for f in fields)}
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                method, target, _ = line.split(" ")
                request = Request(method, target, headers, body)
                self.requests.append(request)
                reply = self.handler(request)
                if asyncio.iscoroutine(reply):
                    reply = await reply
                if reply is CLOSE:
                    return
                if reply is None:
                    await asyncio.sleep(30)
                    return
                if isinstance(reply, tuple):  # (bytes, CLOSE): answer in part, then close
                    writer.write(reply[0])
                    return
                writer.write(reply)
                await writer.drain()
        except asyncio.CancelledError:
            pass  # stopped by __aexit__ (3.11's start_server logs a task that ends cancelled)
        finally:
            self.open -= 1
            writer.close()


def run(coro):
    return asyncio.run(coro)


async def one_call(handler, *, token: str = TOKEN, **options) -> tuple[dict, Server]:
    async with Server(handler) as server:
        client = AsClient(server.url, client_id="gw", client_secret=SECRET, **options)
        try:
            return await client.introspect(token), server
        finally:
            await client.close()


def reason_of(handler, **options) -> IntrospectionError:
    with pytest.raises(IntrospectionError) as caught:
        run(one_call(handler, **options))
    return caught.value


# -- request shape and client authentication ------------------------------------------


def test_basic_auth_form_urlencodes_both_parts_before_base64():
    async def main():
        async with Server() as server:
            client = AsClient(server.url, client_id="gw app:1", client_secret=SECRET)
            assert await client.introspect(TOKEN) == {"active": True}
            await client.close()
            return server.requests[0]

    request = run(main())
    assert request.method == "POST" and request.target == "/introspect"
    assert request.headers["content-type"] == "application/x-www-form-urlencoded"
    scheme, encoded = request.headers["authorization"].split(" ")
    assert scheme == "Basic"
    # RFC 6749 §2.3.1: form-urlencode each part, then base64 "id:secret".
    assert base64.b64decode(encoded).decode() == f"{quote_plus('gw app:1')}:{quote_plus(SECRET)}"
    assert request.form == {"token": TOKEN, "token_type_hint": "access_token"}


def test_client_secret_post_sends_form_fields():
    async def main():
        async with Server() as server:
            client = AsClient(server.url, client_id="gw", client_secret=SECRET,
                              auth_method="client_secret_post")
            await client.introspect(TOKEN)
            await client.close()
            return server.requests[0]

    request = run(main())
    assert "authorization" not in request.headers
    assert request.form == {"token": TOKEN, "token_type_hint": "access_token",
                            "client_id": "gw", "client_secret": SECRET}


def test_a_bytes_token_is_sent_as_its_bytes():
    async def main():
        async with Server() as server:
            client = AsClient(server.url, client_id="gw", client_secret=SECRET)
            await client.introspect(b"a\xe9b")
            await client.close()
            return server.requests[0].body

    assert run(main()).startswith(b"token=a%E9b&")


def _verify_jws(token: str, public) -> tuple[dict, dict]:
    header_b64, claims_b64, sig_b64 = token.split(".")
    signing_input = f"{header_b64}.{claims_b64}".encode()
    signature = b64url_decode(sig_b64.encode())
    header = orjson.loads(b64url_decode(header_b64.encode()))
    if isinstance(public, rsa.RSAPublicKey):
        assert header["alg"] == "RS256"
        public.verify(signature, signing_input, padding.PKCS1v15(), hashes.SHA256())
    elif isinstance(public, ec.EllipticCurvePublicKey):
        assert header["alg"] == "ES256" and len(signature) == 64  # JWS r||s, not DER
        der = encode_dss_signature(int.from_bytes(signature[:32], "big"),
                                   int.from_bytes(signature[32:], "big"))
        public.verify(der, signing_input, ec.ECDSA(hashes.SHA256()))
    else:
        assert header["alg"] == "EdDSA"
        public.verify(signature, signing_input)
    return header, orjson.loads(b64url_decode(claims_b64.encode()))


@pytest.mark.parametrize("make_key", [
    lambda: rsa.generate_private_key(65537, 2048),
    lambda: ec.generate_private_key(ec.SECP256R1()),
    ed25519.Ed25519PrivateKey.generate,
], ids=["RS256", "ES256", "EdDSA"])
def test_private_key_jwt_assertion_verifies(tmp_path, make_key):
    key = make_key()
    pem = tmp_path / "client.pem"
    pem.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption()))

    async def main():
        async with Server() as server:
            client = AsClient(server.url, client_id="gw", auth_method="private_key_jwt",
                              private_key_file=str(pem), assertion_audience="https://as.test")
            await client.introspect(TOKEN)
            await client.introspect(TOKEN)
            await client.close()
            return server.requests

    requests = run(main())
    jtis = set()
    for request in requests:
        form = request.form
        assert "authorization" not in request.headers and "client_secret" not in form
        assert form["client_assertion_type"] == "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
        assert form["token"] == TOKEN and form["client_id"] == "gw"
        header, claims = _verify_jws(form["client_assertion"], key.public_key())
        assert header["typ"] == "JWT" and len(header["kid"]) == 43  # RFC 7638 SHA-256
        assert claims["iss"] == claims["sub"] == "gw" and claims["aud"] == "https://as.test"
        assert claims["exp"] - claims["iat"] == 60 and abs(claims["iat"] - time.time()) < 5
        assert len(b64url_decode(claims["jti"].encode())) == 16
        jtis.add(claims["jti"])
    assert len(jtis) == 2


def test_private_key_jwt_audience_defaults_to_the_endpoint(tmp_path):
    key = ec.generate_private_key(ec.SECP256R1())
    pem = tmp_path / "client.pem"
    pem.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption()))

    async def main():
        async with Server() as server:
            client = AsClient(server.url, client_id="gw", auth_method="private_key_jwt",
                              private_key_file=str(pem))
            await client.introspect(TOKEN)
            await client.close()
            return server.url, server.requests[0]

    url, request = run(main())
    assert _verify_jws(request.form["client_assertion"], key.public_key())[1]["aud"] == url


@pytest.mark.parametrize("options,message", [
    ({"client_secret": None}, "needs client_secret"),
    ({"auth_method": "none"}, "auth_method must be one of"),
    ({"auth_method": "private_key_jwt"}, "needs private_key_file"),
    ({"auth_method": "private_key_jwt", "private_key_file": "/nonexistent.pem"}, "nonexistent"),
    ({"ca_file": "/nonexistent-ca.pem"}, "ca_file /nonexistent-ca.pem"),
])
def test_bad_settings_are_refused_at_construction(options, message):
    settings = {"client_id": "gw", "client_secret": SECRET, **options}
    with pytest.raises(ValueError, match=message):
        AsClient("https://127.0.0.1:1/introspect", **settings)


# -- the pool --------------------------------------------------------------------------


def test_sequential_calls_share_one_connection():
    async def main():
        async with Server() as server:
            client = AsClient(server.url, client_id="gw", client_secret=SECRET)
            for _ in range(100):
                await client.introspect(TOKEN)
            stats = client.stats
            await client.close()
            return server, stats

    server, stats = run(main())
    assert server.connections == 1 and len(server.requests) == 100
    assert stats["requests"] == 100 and stats["reused"] == 99
    assert stats["open"] == stats["idle"] == 1 and stats["in_use"] == 0


def test_concurrent_calls_never_exceed_max_connections():
    async def slow(request):
        await asyncio.sleep(0.002)
        return answer({"active": True, "sub": request.form["token"]})

    async def main():
        async with Server(slow) as server:
            client = AsClient(server.url, client_id="gw", client_secret=SECRET, max_connections=4)
            results = await asyncio.gather(*(client.introspect(f"t{i}") for i in range(50)))
            stats = client.stats
            await client.close()
            return server, results, stats

    server, results, stats = run(main())
    assert [r["sub"] for r in results] == [f"t{i}" for i in range(50)]
    assert server.peak <= 4 and server.connections == 4
    assert stats["open"] == 4 and stats["requests"] == 50


def test_stale_pooled_connection_is_retried_once_on_a_fresh_one():
    def closes_its_second_request(request):
        # The first connection answers once, then closes as the next request crosses it.
        return CLOSE if len(server.requests) == 2 else answer()

    async def main():
        nonlocal server
        async with Server(closes_its_second_request) as server:
            client = AsClient(server.url, client_id="gw", client_secret=SECRET)
            await client.introspect(TOKEN)
            await client.introspect(TOKEN)
            stats = client.stats
            await client.close()
            return stats

    server: Server = None  # type: ignore[assignment]
    stats = run(main())
    assert server.connections == 2 and len(server.requests) == 3
    assert stats["retries"] == 1


def test_a_fresh_connection_is_not_retried():
    seen = []
    error = reason_of(lambda request: seen.append(request) or CLOSE)
    assert error.reason == "unreachable" and len(seen) == 1


def test_a_partial_answer_on_a_pooled_connection_is_not_retried():
    partial = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 99\r\n\r\n{"

    async def main():
        async with Server(lambda r: answer() if len(server.requests) == 1 else (partial, CLOSE)
                          ) as server:
            client = AsClient(server.url, client_id="gw", client_secret=SECRET)
            await client.introspect(TOKEN)
            with pytest.raises(IntrospectionError) as caught:
                await client.introspect(TOKEN)
            await client.close()
            return caught.value, server

    error, server = run(main())
    assert error.reason == "invalid_response" and "before the response was complete" in str(error)
    assert len(server.requests) == 2 and server.connections == 1


def test_a_connection_the_server_closes_while_idle_leaves_the_pool():
    async def main():
        async with Server(lambda r: (answer(), CLOSE)) as server:
            client = AsClient(server.url, client_id="gw", client_secret=SECRET)
            await client.introspect(TOKEN)
            await asyncio.sleep(0.02)
            stats = client.stats
            await client.introspect(TOKEN)
            retries = client.stats["retries"]
            await client.close()
            return stats, retries, server.connections

    stats, retries, connections = run(main())
    assert stats["open"] == 0 and retries == 0 and connections == 2


def test_connection_close_and_http10_responses_retire_the_connection():
    async def main(extra_status):
        async with Server(lambda r: answer(status="200 OK", extra=extra_status)) as server:
            client = AsClient(server.url, client_id="gw", client_secret=SECRET)
            for _ in range(3):
                await client.introspect(TOKEN)
            stats = client.stats
            await client.close()
            return server.connections, stats

    connections, stats = run(main("Connection: close\r\n"))
    assert connections == 3 and stats["open"] == 0 and stats["reused"] == 0

    async def http10():
        body = b'{"active": true}'
        reply = b"HTTP/1.0 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
        async with Server(lambda r: reply % (len(body), body)) as server:
            client = AsClient(server.url, client_id="gw", client_secret=SECRET)
            for _ in range(3):
                assert await client.introspect(TOKEN) == {"active": True}
            await client.close()
            return server.connections

    assert run(http10()) == 3


def test_idle_connections_are_closed_after_idle_timeout():
    async def main():
        async with Server() as server:
            client = AsClient(server.url, client_id="gw", client_secret=SECRET, idle_timeout=0.05)
            await client.introspect(TOKEN)
            assert client.stats["idle"] == 1
            await asyncio.sleep(0.2)
            stats = client.stats
            open_at_server = server.open
            await client.introspect(TOKEN)
            await client.close()
            return stats, open_at_server, server.connections

    stats, open_at_server, connections = run(main())
    assert stats["open"] == stats["idle"] == 0 and open_at_server == 0 and connections == 2


# -- failures --------------------------------------------------------------------------


def test_silent_server_times_out_within_the_bound():
    started = time.monotonic()
    error = reason_of(lambda request: None, timeout=0.3)
    assert error.reason == "timeout" and "0.3s" in str(error)
    assert time.monotonic() - started < 0.8


def test_slow_server_times_out_and_its_connection_is_not_reused():
    async def slow_first(request):
        if len(server.requests) == 1:
            await asyncio.sleep(0.5)
        return answer({"active": True, "n": len(server.requests)})

    async def main():
        nonlocal server
        async with Server(slow_first) as server:
            client = AsClient(server.url, client_id="gw", client_secret=SECRET, timeout=0.1)
            with pytest.raises(IntrospectionError) as caught:
                await client.introspect(TOKEN)
            assert caught.value.reason == "timeout"
            assert client.stats["open"] == 0
            result = await client.introspect(TOKEN)  # a new connection, its own answer
            await client.close()
            return result

    server: Server = None  # type: ignore[assignment]
    assert run(main()) == {"active": True, "n": 2}
    assert server.connections == 2


def test_waiting_for_a_connection_counts_against_the_timeout():
    async def slow(request):
        await asyncio.sleep(0.6)
        return answer()

    async def main():
        async with Server(slow) as server:
            client = AsClient(server.url, client_id="gw", client_secret=SECRET, max_connections=1,
                              timeout=0.2)
            started = time.monotonic()
            results = await asyncio.gather(client.introspect(TOKEN), client.introspect(TOKEN),
                                           return_exceptions=True)
            elapsed = time.monotonic() - started
            stats = client.stats
            await client.close()
            return results, elapsed, stats, server

    results, elapsed, stats, server = run(main())
    assert [r.reason for r in results] == ["timeout", "timeout"]
    # Both callers' deadlines run from the start: the second never gets a full timeout of
    # its own after waiting (on a loaded machine it may reach the freed connection just
    # before its deadline and send, so the server may see one or two requests).
    assert elapsed < 0.7 and 1 <= len(server.requests) <= 2
    assert stats["open"] == 0 and stats["waiting"] == 0


def test_connection_refused_is_unreachable():
    client = AsClient(f"http://127.0.0.1:{free_port()}/introspect", client_id="gw",
                      client_secret=SECRET)
    with pytest.raises(IntrospectionError) as caught:
        run(client.introspect(TOKEN))
    assert caught.value.reason == "unreachable" and "cannot connect" in str(caught.value)


HUGE = b"x" * (70 * 1024)


@pytest.mark.parametrize("reply,reason", [
    (answer(body=b"<html>hi</html>", content_type="text/html"), "not_json"),
    (answer(body=b"<html>hi</html>", content_type=""), "not_json"),
    (answer(body=b"{not json", content_type="application/json; charset=utf-8"), "not_json"),
    (answer(status="500 Internal Server Error"), "http_status"),
    (answer({"error": "invalid_client"}, status="401 Unauthorized"), "client_auth"),
    (answer(status="403 Forbidden"), "client_auth"),
    (b"\x16\x03\x01garbage that is not HTTP\r\n\r\n", "invalid_response"),
    (answer(body=HUGE), "too_large"),
    (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
     b"%x\r\n%s\r\n0\r\n\r\n" % (len(HUGE), HUGE), "too_large"),
    (answer({"active": "true"}), "invalid_response"),
    (answer({"active": 1}), "invalid_response"),
    (answer([{"active": True}]), "invalid_response"),
    (answer({"sub": "x"}), "invalid_response"),
    (answer({"active": True, "exp": "1900000000"}), "invalid_response"),
    (answer({"active": True, "iat": 1.5}), "invalid_response"),
    (answer({"active": True, "nbf": True}), "invalid_response"),
    (answer({"active": True, "scope": ["a"]}), "invalid_response"),
    (answer({"active": True, "aud": ["a", 1]}), "invalid_response"),
    (answer({"active": True, "username": 7}), "invalid_response"),
], ids=["html", "no-type", "bad-json", "500", "401", "403", "garbage", "huge", "huge-chunked",
        "active-string", "active-int", "array", "no-active", "exp-string", "iat-float",
        "nbf-bool", "scope-list", "aud-int", "username-int"])
def test_untrustworthy_answers_are_refused(reply, reason):
    error = reason_of(lambda request: reply)
    assert error.reason == reason
    if reason == "http_status":
        assert "500" in str(error)
    if reason == "client_auth" and "401" in str(error):
        assert "invalid_client" in str(error)


def test_well_typed_answer_is_returned_whole():
    body = {"active": True, "scope": "a b", "client_id": "c", "username": "u", "token_type": "Bearer",
            "exp": 1900000000, "iat": 1700000000, "nbf": 1700000000, "sub": "s", "aud": ["x", "y"],
            "iss": "https://as.test", "jti": "j", "custom": {"any": [1]}}
    assert run(one_call(lambda r: answer(body)))[0] == body


# -- TLS -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ca():
    return trustme.CA()


def _server_tls(ca: trustme.CA, *names: str) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(*names).configure_cert(context)
    return context


def test_https_with_the_configured_ca(ca, tmp_path):
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))

    async def main():
        async with Server(tls=_server_tls(ca, "127.0.0.1")) as server:
            client = AsClient(server.url, client_id="gw", client_secret=SECRET, ca_file=str(ca_file))
            results = [await client.introspect(TOKEN) for _ in range(3)]
            await client.close()
            return results, server.connections

    results, connections = run(main())
    assert results == [{"active": True}] * 3 and connections == 1


@pytest.mark.parametrize("trusted,names", [(False, ("127.0.0.1",)), (True, ("as.example",))],
                         ids=["untrusted-ca", "wrong-host-name"])
def test_https_failures_are_tls(ca, tmp_path, trusted, names):
    ca_file = tmp_path / "ca.pem"
    (ca if trusted else trustme.CA()).cert_pem.write_to_path(str(ca_file))

    async def main():
        async with Server(tls=_server_tls(ca, *names)) as server:
            client = AsClient(server.url, client_id="gw", client_secret=SECRET, ca_file=str(ca_file))
            with pytest.raises(IntrospectionError) as caught:
                await client.introspect(TOKEN)
            await client.close()
            return caught.value, server.requests

    error, requests = run(main())
    assert error.reason == "tls" and requests == []


def test_https_with_system_cas_refuses_a_private_ca(ca):
    async def main():
        async with Server(tls=_server_tls(ca, "127.0.0.1")) as server:
            client = AsClient(server.url, client_id="gw", client_secret=SECRET)
            with pytest.raises(IntrospectionError) as caught:
                await client.introspect(TOKEN)
            await client.close()
            return caught.value

    assert run(main()).reason == "tls"


# -- secrets stay out of messages and logs ----------------------------------------------


def test_no_token_secret_or_assertion_in_errors_or_logs(caplog, tmp_path):
    caplog.set_level(logging.DEBUG)
    replies = [CLOSE, None, answer(status="500 Oops"), answer({"error": "invalid_client"},
               status="401 No"), answer(body=b"<p>", content_type="text/html"),
               answer({"active": "true"}), answer(body=HUGE), b"garbage\r\n\r\n"]
    key = ec.generate_private_key(ec.SECP256R1())
    pem = tmp_path / "client.pem"
    pem.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption()))
    messages = []

    async def main():
        for method in ("client_secret_basic", "client_secret_post", "private_key_jwt"):
            for reply in replies:
                async with Server(lambda request, reply=reply: reply) as server:
                    client = AsClient(server.url, client_id="gw", client_secret=SECRET,
                                      auth_method=method, private_key_file=str(pem), timeout=0.2)
                    try:
                        await client.introspect(TOKEN)
                    except IntrospectionError as exc:
                        messages.append(f"{exc} {exc!r}")
                    await client.close()
                    requests.extend(server.requests)

    requests: list[Request] = []
    run(main())
    assert len(messages) == 3 * len(replies)
    assertions = [r.form["client_assertion"] for r in requests if "client_assertion" in r.form]
    assert assertions
    text = "\n".join(messages) + caplog.text
    for secret in [TOKEN, SECRET, quote_plus(SECRET), quote_plus(TOKEN), *assertions]:
        assert secret not in text


# -- discovery --------------------------------------------------------------------------


class MetadataServer:
    """Serves ``documents`` (path -> dict) over plain http; 404 elsewhere."""

    def __init__(self, documents) -> None:
        self.documents = documents
        self.paths: list[str] = []

    async def __aenter__(self) -> MetadataServer:
        async def handle(reader, writer):
            head = await reader.readuntil(b"\r\n\r\n")
            path = head.split(b" ")[1].decode()
            self.paths.append(path)
            document = self.documents(self.base).get(path)
            status = "200 OK" if document is not None else "404 Not Found"
            writer.write(answer(document or {}, status=status, extra="Connection: close\r\n"))
            await writer.drain()
            writer.close()

        self.server = await asyncio.start_server(handle, "127.0.0.1", 0)
        self.base = f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"
        return self

    async def __aexit__(self, *exc) -> None:
        self.server.close()
        await self.server.wait_closed()


def test_discover_rfc8414_with_an_issuer_path():
    async def main():
        docs = lambda base: {  # noqa: E731
            "/.well-known/oauth-authorization-server/realms/x": {
                "issuer": base + "/realms/x", "introspection_endpoint": base + "/i"}}
        async with MetadataServer(docs) as server:
            return await discover(server.base + "/realms/x", timeout=2), server

    document, server = run(main())
    assert document["introspection_endpoint"].endswith("/i")
    assert server.paths == ["/.well-known/oauth-authorization-server/realms/x"]


def test_discover_falls_back_to_openid_configuration():
    async def main():
        docs = lambda base: {  # noqa: E731
            "/realms/x/.well-known/openid-configuration": {"issuer": base + "/realms/x"}}
        async with MetadataServer(docs) as server:
            return await discover(server.base + "/realms/x", timeout=2), server

    document, server = run(main())
    assert server.paths == ["/.well-known/oauth-authorization-server/realms/x",
                            "/realms/x/.well-known/openid-configuration"]


def test_discover_refuses_another_issuer():
    async def main():
        docs = lambda base: {  # noqa: E731
            "/.well-known/oauth-authorization-server": {"issuer": base + "/"}}
        async with MetadataServer(docs) as server:
            return await discover(server.base, timeout=2)

    with pytest.raises(FetchError, match="names issuer"):
        run(main())


def test_discover_with_no_document_says_so():
    async def main():
        async with MetadataServer(lambda base: {}) as server:
            return await discover(server.base, timeout=2)

    with pytest.raises(FetchError, match="HTTP 404"):
        run(main())

