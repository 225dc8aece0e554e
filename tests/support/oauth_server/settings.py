"""Django settings of the test authorization server.

Everything variable comes from the environment the runner (`__main__`) sets before Django
starts: the data directory (SQLite database, never inside the repository) and the issuer,
which carries the port the runner has already bound. The data directory also holds the
server's options (config.json, written by the handle) and its OIDC signing key, which the
handle generates so that tests can sign logout tokens with the same key.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

DATA_DIR = Path(os.environ["FLUXGATE_TEST_AS_DATA_DIR"])
ISSUER = os.environ["FLUXGATE_TEST_AS_ISSUER"]
OPTIONS = json.loads((DATA_DIR / "config.json").read_text()).get("options", {})

SECRET_KEY = os.urandom(32).hex()
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost", "[::1]"]
USE_TZ = True
TIME_ZONE = "UTC"
ROOT_URLCONF = "tests.support.oauth_server.urls"
DEFAULT_AUTO_FIELD = "django.db.models.AutoField"

INSTALLED_APPS = [
    "django.contrib.contenttypes",
    "django.contrib.auth",
    "django.contrib.sessions",
    "oauth2_provider",
    "tests.support.oauth_server",
]
MIDDLEWARE = [
    # First, so that every answer (including DOT's bare 403s) is counted.
    "tests.support.oauth_server.control.CountingMiddleware",
    "tests.support.oauth_server.control.TokenUseMiddleware",
    "tests.support.oauth_server.control.AuthorizationIssMiddleware",
    "django.middleware.common.CommonMiddleware",
    # A browser login: the session (its cookie is not Secure: the server speaks http on
    # 127.0.0.1), the login form's CSRF token, and the logged-in user for /o/authorize/.
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
]
TEMPLATES = [{
    "BACKEND": "django.template.backends.django.DjangoTemplates",
    "APP_DIRS": True,  # DOT's consent and logout pages, and this package's login page
    "OPTIONS": {"context_processors": ["django.template.context_processors.request",
                                       "django.contrib.auth.context_processors.auth"]},
}]
LOGIN_URL = "/accounts/login/"
STATIC_URL = "/static/"  # DOT's page template links its stylesheet
SESSION_ENGINE = "django.contrib.sessions.backends.signed_cookies"
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": str(DATA_DIR / "authserver.sqlite3"),
        # The threaded server writes tokens from several threads at once.
        "OPTIONS": {"timeout": 20},
    }
}
# Client secrets and user passwords are hashed with these; Django's default PBKDF2 costs
# ~0.3 s per check, and DOT checks the resource server's secret on every introspection.
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "loggers": {
        "django.server": {"handlers": ["console"], "level": "INFO"},
        # A 500's traceback, so that a failing test's server log says why.
        "django.request": {"handlers": ["console"], "level": "ERROR", "propagate": False},
        "oauth2_provider": {"handlers": ["console"], "level": "WARNING"},
    },
}


def _rsa_pem() -> str:
    """The OIDC signing key: the handle's (signing_key.pem, 0600, generated per run), else a
    fresh one. Nothing secret is ever checked in."""
    path = DATA_DIR / "signing_key.pem"
    if path.exists():
        return path.read_text()
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode()


def _access_token_lifetime(request) -> int:
    """Seconds an access token lives: the token request may ask for its own lifetime with the
    non-standard ``test_expires_in`` form field, so tests can make tokens that expire soon (or
    have already expired, with 0 or less); else the client's registered lifetime (short for
    login clients, so that refresh happens within a test), else an hour."""
    from tests.support.oauth_server.clients import lifetime

    requested = request._params.get("test_expires_in")
    if requested not in (None, ""):
        return int(requested)
    client = getattr(request, "client", None)
    return lifetime(getattr(client, "client_id", None), "access_token") or 3600


OAUTH2_PROVIDER = {
    "OIDC_ENABLED": True,
    "OIDC_RSA_PRIVATE_KEY": _rsa_pem(),
    # Stated explicitly so that discovery says the same thing whatever Host header a client
    # sends (DOT would otherwise derive it from the request).
    "OIDC_ISS_ENDPOINT": ISSUER,
    "SCOPES_BACKEND_CLASS": "tests.support.oauth_server.control.AnyScopes",
    "SCOPES": {"openid": "OpenID Connect", "profile": "Profile", "email": "Email",
               "read": "Read", "write": "Write", "introspection": "Introspect tokens"},
    "DEFAULT_SCOPES": ["read"],
    "ACCESS_TOKEN_EXPIRE_SECONDS": _access_token_lifetime,
    "CLIENT_SECRET_HASHER": "md5",
    # Only a digest of each token is stored, as a real deployment would.
    "COMPLIANT_BCP_RFC9700_TOKEN_STORAGE": True,
    "OAUTH2_VALIDATOR_CLASS": "tests.support.oauth_server.validator.OIDCValidator",
    # The browser login: PKCE required, S256 only ("plain" refused, and not advertised).
    "PKCE_REQUIRED": True,
    "COMPLIANT_BCP_RFC9700_PKCE_METHOD": True,
    # RFC 9207 ``iss`` in authorization responses, and
    # authorization_response_iss_parameter_supported in both metadata documents; on unless
    # the handle says otherwise (the control view can also switch it while running).
    "COMPLIANT_BCP_RFC9700_AUTHZ_RESPONSE_ISS": OPTIONS.get("authorization_response_iss", True),
    # Rotation with reuse protection: a refresh token works once; presenting it again (with
    # no grace period) fails with invalid_grant and revokes its whole family.
    "ROTATE_REFRESH_TOKEN": True,
    "REFRESH_TOKEN_GRACE_PERIOD_SECONDS": 0,
    "REFRESH_TOKEN_REUSE_PROTECTION": True,
    "ID_TOKEN_EXPIRE_SECONDS": 3600,  # login clients register shorter ones (validator.py)
    # RP-initiated logout: end_session_endpoint in discovery; with a valid id_token_hint of
    # the logged-in user it logs out and redirects without a confirmation page.
    "OIDC_RP_INITIATED_LOGOUT_ENABLED": True,
    "OIDC_RP_INITIATED_LOGOUT_ALWAYS_PROMPT": False,
    "OIDC_RP_INITIATED_LOGOUT_ACCEPT_EXPIRED_TOKENS": True,
}
# The password grant is what gives a token a resource owner (``username`` in introspection);
# DOT warns about it, rightly, outside tests.
SILENCED_SYSTEM_CHECKS = ["oauth2_provider.W001", "oauth2_provider.W002",
                          "oauth2_provider.W003", "oauth2_provider.W004",
                          "oauth2_provider.W005"]
