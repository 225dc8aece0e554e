"""The API-key part of ``fluxgate demo``: an ``/api-key`` route and a key to curl with.

At each start the demo issues a fresh key for the consumer ``demo-service`` (scope
``demo:read``, a quota of 5 requests per minute so the 429 is easy to see) and prints it
once, as ``fluxctl keys generate`` does: the key itself is never written anywhere, keys.db
holds its digest. A key from an earlier demo run is revoked first.
"""

from __future__ import annotations

import io
import textwrap
from contextlib import redirect_stdout

from fluxgate.auth.keys import load_signing_key
from fluxgate.auth.keystore import KeySpec, KeyStore

NAME = "demo-service"
SCOPE = "demo:read"
QUOTA = (5, 60)
EXPIRY = 7 * 86400.0


class DemoKeys:
    """Issues the demo's key in ``state_dir`` (keys.db and keys.secret, as the gateway uses)."""

    def __init__(self, state_dir: str) -> None:
        signing_key = load_signing_key(None, state_dir)
        with KeyStore.open(state_dir) as store:
            store.check_signing_key(signing_key)
            if any(r.revoked_at is None for r in store.by_name(NAME)):
                store.revoke(NAME)
            record, self.key = store.generate(
                NAME, KeySpec.build([SCOPE], quota=QUOTA), expires_in=EXPIRY,
                signing_key=signing_key,
            )
        self.key_id = record.key_id

    @staticmethod
    def route_yaml(upstream: str) -> str:
        """The demo config's ``/api-key`` route (indented as an item of ``routes:``)."""
        return textwrap.indent(textwrap.dedent(f"""\
            - route: /api-key                # API keys: X-API-Key (or Authorization: Bearer fg_...)
              upstream: {upstream}
              middleware:
                - api_key: {{scopes: [{SCOPE}]}}
                - quota: {{limit: 600/m, by: key}}   # on top of the key's own 5/m
            """), "  ")

    @staticmethod
    def key_list(config_path: str) -> str:
        """What ``fluxctl --config CONFIG keys list`` prints right now."""
        from fluxgate.cli.fluxctl import main

        out = io.StringIO()
        with redirect_stdout(out):
            main(["--config", config_path, "keys", "list"])
        return out.getvalue()
