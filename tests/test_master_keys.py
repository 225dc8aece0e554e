"""The master's key service (fluxgate/master/keys.py): it never lets the signing secret drift
from the keys already issued, at start or on reload, and keeps no key in its log."""

from __future__ import annotations

import http.client
import json

import pytest

from fluxgate.auth.keyops import KeyOps
from fluxgate.config import load_config
from tests.support.gateway import GatewayProcess

SECRET_A = "a" * 40
SECRET_B = "b" * 40

CONFIG = """\
api_keys: {{signing_secret: "{secret}"}}
routes:
  - route: /api
    upstream: {url}
    middleware:
      - api_key: {{}}
"""


def reload(gw: GatewayProcess) -> tuple[int, dict]:
    conn = http.client.HTTPConnection("127.0.0.1", gw.admin_port, timeout=30)
    conn.request("POST", "/admin/reload", headers={"Authorization": "Bearer test-admin-token"})
    resp = conn.getresponse()
    body = json.loads(resp.read())
    conn.close()
    return resp.status, body


def test_a_reload_with_another_signing_secret_is_refused(gateway_factory, upstream):
    gw = gateway_factory(CONFIG.format(secret=SECRET_A, url=upstream.url))
    with KeyOps(load_config(gw.config_path)) as ops:
        key = ops.generate("svc")["key"]
    gw.write_config(CONFIG.format(secret=SECRET_B, url=upstream.url))
    status, body = reload(gw)
    assert status == 409 and "signing secret differs" in body["error_description"]
    gw.write_config(CONFIG.format(secret=SECRET_A, url=upstream.url))
    assert reload(gw)[0] == 200
    assert key not in gw.log()


def test_the_gateway_will_not_start_with_another_signing_secret(tmp_path, upstream):
    first = GatewayProcess(tmp_path, CONFIG.format(secret=SECRET_A, url=upstream.url))
    with KeyOps(load_config(first.config_path)) as ops:
        ops.generate("svc")
    second = GatewayProcess(tmp_path, CONFIG.format(secret=SECRET_B, url=upstream.url))
    with pytest.raises(RuntimeError, match="gateway exited early"):
        second.start()
    assert second.stop() == 1
    assert "signing secret differs from the one the keys" in second.log()
