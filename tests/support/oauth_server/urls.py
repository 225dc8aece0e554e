"""URLs of the test authorization server: DOT under /o/ (authorize, token, revoke_token,
introspect, userinfo, logout, OIDC discovery and JWKS), RFC 8414 metadata also at the root,
Django's login form at /accounts/login/, and the /test/ control views."""

from django.contrib.auth import views as auth_views
from django.http import HttpResponse
from django.urls import include, path
from oauth2_provider import urls as dot_urls

from tests.support.oauth_server import control

urlpatterns = [
    path("o/", include("oauth2_provider.urls", namespace="oauth2_provider")),
    # RFC 8414 puts the metadata of issuer http://host/o at
    # /.well-known/oauth-authorization-server/o, outside the /o/ prefix.
    path("", include((dot_urls.metadata_urlpatterns, "oauth2_provider_root"))),
    path("accounts/login/", auth_views.LoginView.as_view(), name="login"),
    # Browsers ask every origin for one; a 404 would be a console error in browser tests.
    path("favicon.ico", lambda request: HttpResponse(status=204)),
    path("test/health", control.health),
    path("test/counters", control.counters),
    path("test/users", control.users),
    path("test/clients", control.client_registration),
    path("test/refresh", control.refresh_log),
    path("test/revocations", control.revocation_log),
    path("test/settings", control.runtime_settings),
    path("test/session", control.op_session),
    path("test/revoke-user-tokens", control.revoke_user_tokens),
]
