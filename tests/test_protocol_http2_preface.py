"""An HTTP/2 client through a real `fluxgate run`: the connection preface (prior knowledge,
no ALPN or Upgrade) is answered in HTTP/1.1 with a 505 that names the version the gateway
speaks, not with the parser's internal state."""

from __future__ import annotations

import json

import pytest

from tests.support.gateway import raw_request
from tests.test_protocol import routes, split_responses, status_of
from tests.test_protocol_hygiene import send_split

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
# What an h2c client sends right after the preface: an empty SETTINGS frame.
SETTINGS = b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"


@pytest.fixture
def gw(gateway_factory, upstream):
    return gateway_factory(routes(upstream.url, ""))


def _error(response: bytes) -> dict:
    [(_status, _headers, body)] = split_responses(response)
    return json.loads(body)


@pytest.mark.parametrize(
    "data", [PREFACE, PREFACE + SETTINGS], ids=["preface", "preface+settings"]
)
def test_http2_preface_is_505_naming_http11(gw, upstream, data):
    response = raw_request(gw.port, data)
    assert response.startswith(b"HTTP/1.1 505 HTTP Version Not Supported\r\n"), response
    assert b"Connection: close\r\n" in response
    error = _error(response)
    assert error["error"] == "http_version_not_supported"
    assert "HTTP/1.1" in error["error_description"]
    assert "PRI" not in error["error_description"] and "Pause" not in error["error_description"]
    assert upstream.requests == []


def test_http2_preface_split_across_reads(gw, upstream):
    response = send_split(gw.port, PREFACE[:9], PREFACE[9:] + SETTINGS)
    assert status_of(response) == 505
    assert _error(response)["error"] == "http_version_not_supported"


def test_other_parse_errors_stay_400(gw):
    response = raw_request(gw.port, b"GET / HTTP/1.1\r\nHost: a\r\nBad Header\r\n\r\n")
    assert status_of(response) == 400
    assert _error(response)["error"] == "bad_request"
