"""Where an API key goes, against a gateway with the default ``api_keys`` settings
(fluxgate/middleware/api_key.py, docs/api-keys.md): the X-API-Key header; never the query
string unless the config names a parameter (a ``?api_key=`` is still stripped before
proxying); ``Authorization: Bearer fg_…`` accepted and never forwarded; every refusal's
challenge names the header (``ApiKey``), not a bearer token."""

from __future__ import annotations

import pytest

from fluxgate.auth.keyops import KeyOps
from fluxgate.config import load_config
from tests.support.gateway import GatewayProcess
from tests.support.upstream import RecordingUpstream
from tests.test_api_key import request, wait_known

CONFIG = """\
upstreams:
  app: {{targets: ["{url}"], connect_timeout: 1s, read_timeout: 5s}}
routes:
  - route: /load
    upstream: app
    middleware:
      - api_key: {{}}
  - route: /metrics
    upstream: app
    middleware:
      - api_key: {{scopes: [read:metrics]}}
  - route: /probe
    upstream: app
    middleware:
      - api_key: {{}}
  - route: /either
    upstream: app
    middleware:
      - any:
          - jwt: {{secret: "placement-test-secret-0123456789abcdef", algorithms: [HS256]}}
          - api_key: {{}}
"""

MISSING = 'ApiKey realm="fluxgate", header="X-API-Key"'
INVALID = 'ApiKey realm="fluxgate", header="X-API-Key", error="invalid_key"'


@pytest.fixture(scope="module")
def upstream():
    server = RecordingUpstream().start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def gw(tmp_path_factory, upstream):
    gateway = GatewayProcess(tmp_path_factory.mktemp("placement"),
                             CONFIG.format(url=upstream.url), workers=1)
    try:
        yield gateway.start()
    finally:
        gateway.stop()


@pytest.fixture(scope="module")
def key(gw):
    with KeyOps(load_config(gw.config_path)) as o:
        issued = o.generate("placement", quota="100/h", routes=["/load", "/either"])["key"]
    wait_known(gw, issued)
    return issued


def test_query_keys_are_off_by_default_and_still_stripped(gw, upstream, key):
    assert load_config(gw.config_path).api_keys.query is None
    before = len(upstream.requests)
    status, headers, body = request(gw.port, f"/load/x?api_key={key}")
    assert (status, body["error"]) == (401, "missing_credentials")
    assert headers["www-authenticate"] == MISSING
    assert "X-API-Key" in body["error_description"]
    assert len(upstream.requests) == before
    # With the key in the header, a key in the URL by mistake does not reach the upstream.
    status, _, _ = request(gw.port, f"/load/x?a=1&api_key={key}&b=2", {"X-API-Key": key})
    assert status == 200
    assert upstream.requests[-1].target == "/load/x?a=1&b=2"


def test_refusals_challenge_with_the_header_not_a_bearer_token(gw, key):
    status, headers, body = request(gw.port, "/load/x")
    assert (status, body["error"]) == (401, "missing_credentials")
    assert headers["www-authenticate"] == MISSING
    forged = key[:-1] + ("A" if key[-1] != "A" else "B")
    status, headers, body = request(gw.port, "/load/x", {"X-API-Key": forged})
    assert (status, body["error"]) == (401, "invalid_key")
    assert headers["www-authenticate"] == INVALID
    status, headers, body = request(gw.port, "/metrics/x", {"X-API-Key": key})
    assert (status, body["error"]) == (403, "insufficient_scope")  # not one of its routes
    assert headers["www-authenticate"] == (
        'ApiKey realm="fluxgate", header="X-API-Key", error="insufficient_scope"')


def test_a_second_key_as_bearer_beside_the_header_is_not_forwarded(gw, upstream, key):
    status, _, _ = request(gw.port, "/load/b", {"X-API-Key": key,
                                                "Authorization": "Bearer fg_another_key_0000"})
    assert status == 200
    assert "authorization" not in upstream.requests[-1].header_names()
    # Any other Authorization beside a key in the header goes on as it came.
    status, _, _ = request(gw.port, "/load/b", {"X-API-Key": key,
                                                "Authorization": "Bearer eyJ.e30.x"})
    assert status == 200
    assert upstream.requests[-1].header("authorization") == "Bearer eyJ.e30.x"


def test_a_key_as_bearer_token_is_accepted_and_never_forwarded(gw, upstream, key):
    status, headers, _ = request(gw.port, "/load/b", {"Authorization": f"Bearer {key}",
                                                      "X-Other": "kept"})
    assert status == 200
    assert headers["ratelimit-limit"] == "100"  # the key's own quota, counted
    received = upstream.requests[-1]
    assert received.target == "/load/b"
    assert "authorization" not in received.header_names()
    assert received.header("x-fluxgate-auth") == "api_key"
    assert received.header("x-other") == "kept"
    # The same checks as in the header: a forged key is invalid, a scope is required.
    forged = key[:-1] + ("A" if key[-1] != "A" else "B")
    status, headers, body = request(gw.port, "/load/b", {"Authorization": f"Bearer {forged}"})
    assert (status, body["error"]) == (401, "invalid_key")
    assert headers["www-authenticate"] == INVALID
    status, _, body = request(gw.port, "/metrics/x", {"Authorization": f"Bearer {key}"})
    assert (status, body["error"]) == (403, "insufficient_scope")


def test_in_any_a_bearer_key_goes_to_api_key_whatever_the_order(gw, upstream, key):
    status, _, _ = request(gw.port, "/either/x", {"Authorization": f"Bearer {key}"})
    assert status == 200
    assert upstream.requests[-1].header("x-fluxgate-auth") == "api_key"
    assert "authorization" not in upstream.requests[-1].header_names()
    forged = key[:-1] + ("A" if key[-1] != "A" else "B")
    status, _, body = request(gw.port, "/either/x", {"Authorization": f"Bearer {forged}"})
    assert (status, body["error"]) == (401, "invalid_key")
    # Any other bearer value is still the jwt member's.
    status, _, body = request(gw.port, "/either/x", {"Authorization": "Bearer eyJ.e30.x"})
    assert (status, body["error"]) == (401, "invalid_token")


@pytest.mark.parametrize("value", [
    "Bearer eyJhbGciOiJIUzI1NiJ9.e30.sig",  # a JWT: not a key, this route takes none
    "Bearer opaque-token-123",
    "Basic Zmdfa2V5OnNlY3JldA==",
    "Bearer ",
    "Bearer fg_",  # the prefix alone: a malformed key
])
def test_other_authorization_values_are_not_keys(gw, upstream, value):
    before = len(upstream.requests)
    status, _, body = request(gw.port, "/load/x", {"Authorization": value})
    assert status == 401, body
    expected = "invalid_key" if value == "Bearer fg_" else "missing_credentials"
    assert body["error"] == expected
    assert len(upstream.requests) == before
