"""fluxgate/cli/demo_keys.py: the demo issues a fresh key per start (the earlier one revoked),
its route loads as config, and `fluxctl keys list` for the demo never shows the key."""

from __future__ import annotations

from fluxgate.auth.keystore import KeyStore
from fluxgate.cli.demo import demo_config
from fluxgate.cli.demo_keys import NAME, DemoKeys
from fluxgate.config import load_config_text


def test_demo_keys(tmp_path):
    state = str(tmp_path)
    first = DemoKeys(state)
    second = DemoKeys(state)
    assert first.key != second.key and second.key.startswith("fg_")
    with KeyStore.open(state) as store:
        rows = {r.key_id: r for r in store.by_name(NAME)}
    assert rows[first.key_id].revoked_at is not None
    assert rows[second.key_id].revoked_at is None
    assert rows[second.key_id].quota_limit == 5 and rows[second.key_id].scopes == ("demo:read",)
    text = demo_config(state, 8080, 9901, 9000, second.route_yaml("echo"))
    config = load_config_text(text)
    route = next(r for r in config.routes if r.route == "/api-key")
    assert route.middleware[0].scopes == ["demo:read"]
    path = tmp_path / "fluxgate.yaml"
    path.write_text(text)
    listing = second.key_list(str(path))
    assert NAME in listing and second.key_id in listing
    assert second.key not in listing and first.key not in listing
