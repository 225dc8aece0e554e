"""DOT's request validator with what the login tests need on top: a per-client ID token
lifetime, and ``sid`` (the user's OP session, OIDC Back-Channel Logout 1.0 section 2.1) and
``preferred_username`` in ID tokens."""

from __future__ import annotations

from datetime import timedelta

from django.utils import timezone
from oauth2_provider.oauth2_validators import OAuth2Validator

from tests.support.oauth_server import clients, sessions


class OIDCValidator(OAuth2Validator):
    """Only the ID token's claims change; every check is DOT's."""

    oidc_claim_scope = {**OAuth2Validator.oidc_claim_scope, "preferred_username": "openid"}

    def get_additional_claims(self, request) -> dict[str, str]:
        return {"preferred_username": request.user.get_username()}

    def get_id_token_dictionary(self, token, token_handler, request):
        claims, expiration = super().get_id_token_dictionary(token, token_handler, request)
        seconds = clients.lifetime(request.client.client_id, "id_token")
        if seconds is not None:
            expiration = timezone.now() + timedelta(seconds=seconds)
            claims["exp"] = int(expiration.timestamp())
        sid = sessions.current(request.user.pk)
        if sid is not None:
            claims["sid"] = sid
        return claims, expiration
