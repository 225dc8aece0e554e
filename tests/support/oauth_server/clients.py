"""The OAuth clients of the test authorization server: registered from config.json at start
and through the /test/clients control view while running, with the per-client token
lifetimes the server applies (DOT has only server-wide ones)."""

from __future__ import annotations

import threading

# DOT's values of Application.authorization_grant_type that a client may ask for.
GRANT_TYPES = frozenset({"authorization-code", "password", "client-credentials"})
_LIFETIME_KINDS = ("access_token", "id_token")

_lock = threading.Lock()
_lifetimes: dict[str, dict[str, int]] = {}


def register(client: dict) -> None:
    """Create the client, or update it (same client_id) to exactly what ``client`` says.

    Keys: client_id, client_secret, grant_type, name; for authorization-code clients also
    redirect_uris and post_logout_redirect_uris (lists), skip_authorization (default True),
    algorithm (default RS256); any client: access_token_seconds, id_token_seconds.
    """
    from oauth2_provider.models import get_application_model

    if client["grant_type"] not in GRANT_TYPES:
        raise ValueError(f"unknown grant type {client['grant_type']!r}")
    application = get_application_model()
    app, _ = application.objects.get_or_create(
        client_id=client["client_id"],
        defaults={"name": client.get("name", client["client_id"]),
                  "client_type": application.CLIENT_CONFIDENTIAL,
                  "authorization_grant_type": client["grant_type"]},
    )
    app.name = client.get("name", client["client_id"])
    app.client_type = application.CLIENT_CONFIDENTIAL
    app.authorization_grant_type = client["grant_type"]
    app.client_secret = client["client_secret"]  # DOT hashes it on save
    app.redirect_uris = " ".join(client.get("redirect_uris", []))
    app.post_logout_redirect_uris = " ".join(client.get("post_logout_redirect_uris", []))
    app.skip_authorization = bool(client.get("skip_authorization", True))
    # An ID token signed with the server's RSA key (HS256 would use the client secret).
    app.algorithm = client.get("algorithm", application.RS256_ALGORITHM)
    app.full_clean(exclude=["client_secret", "user"])
    app.save()
    with _lock:
        _lifetimes[client["client_id"]] = {
            kind: int(client[f"{kind}_seconds"]) for kind in _LIFETIME_KINDS
            if client.get(f"{kind}_seconds") is not None}


def lifetime(client_id: str | None, kind: str) -> int | None:
    """The client's registered lifetime for ``kind`` ("access_token", "id_token"), if any."""
    with _lock:
        return _lifetimes.get(client_id or "", {}).get(kind)
