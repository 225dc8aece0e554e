"""Django settings of the test authorization server.

Everything variable comes from the environment the runner (`__main__`) sets before Django
starts: the data directory (SQLite database, never inside the repository) and the issuer,
which carries the port the runner has already bound.
"""

from __future__ import annotations

import os
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

DATA_DIR = Path(os.environ["FLUXGATE_TEST_AS_DATA_DIR"])
ISSUER = os.environ["FLUXGATE_TEST_AS_ISSUER"]

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
    "oauth2_provider",
]
MIDDLEWARE = [
    # First, so that every answer (including DOT's bare 403s) is counted.
    "tests.support.oauth_server.control.CountingMiddleware",
    "django.middleware.common.CommonMiddleware",
]
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
        "oauth2_provider": {"handlers": ["console"], "level": "WARNING"},
    },
}


def _rsa_pem() -> str:
    """A fresh OIDC signing key per server: nothing secret is ever checked in."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode()


def _access_token_lifetime(request) -> int:
    """Seconds an access token lives: the token request may ask for its own lifetime with the
    non-standard ``test_expires_in`` form field, so tests can make tokens that expire soon (or
    have already expired, with 0 or less)."""
    requested = request._params.get("test_expires_in")
    return int(requested) if requested not in (None, "") else 3600


OAUTH2_PROVIDER = {
    "OIDC_ENABLED": True,
    "OIDC_RSA_PRIVATE_KEY": _rsa_pem(),
    # Stated explicitly so that discovery says the same thing whatever Host header a client
    # sends (DOT would otherwise derive it from the request).
    "OIDC_ISS_ENDPOINT": ISSUER,
    "SCOPES_BACKEND_CLASS": "tests.support.oauth_server.control.AnyScopes",
    "SCOPES": {"read": "Read", "write": "Write", "introspection": "Introspect tokens"},
    "DEFAULT_SCOPES": ["read"],
    "ACCESS_TOKEN_EXPIRE_SECONDS": _access_token_lifetime,
    "CLIENT_SECRET_HASHER": "md5",
    # Only a digest of each token is stored, as a real deployment would.
    "COMPLIANT_BCP_RFC9700_TOKEN_STORAGE": True,
}
# The password grant is what gives a token a resource owner (``username`` in introspection);
# DOT warns about it, rightly, outside tests.
SILENCED_SYSTEM_CHECKS = ["oauth2_provider.W001", "oauth2_provider.W002",
                          "oauth2_provider.W003", "oauth2_provider.W004",
                          "oauth2_provider.W005"]
