"""A real django-oauth-toolkit authorization server for tests, in a subprocess on 127.0.0.1.

    server = DjangoAuthServer(tmp_path).start()      # ready (migrated, clients registered)
    token = server.issue_token(scope="read:inventory write:orders", expires_in=60, user="alice")
    client_id, secret = server.resource_server       # may introspect (basic or post auth)
    server.introspect(token)                         # what the gateway would be told
    server.revoke(token)                             # RFC 7009; introspection: active false
    server.introspection_calls()                     # counted inside the server
    server.stop()

What DOT's introspection answers (`oauth2_provider.views.IntrospectTokenView`): any
registered client that authenticates (HTTP Basic first, else client_id/client_secret in the
form body) may introspect any token; a bearer token with the ``introspection`` scope works
too. Wrong credentials get a bare 403 (no JSON body, not 401 invalid_client). An active
token gives ``{"active": true, "scope", "exp", "client_id"}`` plus ``username`` when the
token has a resource owner and ``aud`` when it was bound to resources (RFC 8707); there is
no ``iss``, ``sub``, ``iat`` or ``token_type``. Anything else (unknown, expired, revoked)
gives ``{"active": false}``.

It is also an OpenID Provider for browser logins (authorization code + PKCE S256):

    client = server.register_client(redirect_uris=[f"https://127.0.0.1:{port}/callback"],
                                    post_logout_redirect_uris=[...], access_token_seconds=3)
    server.password("alice")                         # alice exists from the start
    pkce = Pkce.new()
    url = server.authorization_url(client, state=..., nonce=..., pkce=pkce)
    # ... a browser (tests/support/browserless.py or browser.py) logs in and lands on the
    # redirect URI with ?code=&state=&iss= ...
    tokens = server.exchange_code(client, code, pkce.verifier)
    claims = server.verify_id_token(tokens["id_token"], client)
    server.refresh_token_uses(client)                # {sha256 hex of refresh token: times}
    server.refresh_reuse_detected(client)            # any refresh token presented twice?
    server.revocations(client)                       # RFC 7009 requests, by token digest
    server.set_authorization_response_iss(False)     # or True, or a wrong issuer string
    server.op_session("alice")                       # {"sub", "sid"} of ID / logout tokens
    server.revoke_user_tokens("alice", client)       # as an administrator: refresh fails
    server.signing_key                               # tests/support/logout_tokens.py signs

What DOT 3.4 does as a provider, as configured here: PKCE required, S256 only (``plain``
refused, not advertised); the RFC 9207 ``iss`` parameter is DOT's own (its
COMPLIANT_BCP_RFC9700_AUTHZ_RESPONSE_ISS setting, which also puts
``authorization_response_iss_parameter_supported`` in both metadata documents), on by
default here. Refresh tokens rotate, with no grace period and DOT's reuse protection: a
refresh token presented a second time gets 400 ``invalid_grant`` and revokes its whole
family (every live refresh token descended from the same authorization, and their access
tokens). RP-initiated logout (``end_session_endpoint``) with a valid ``id_token_hint`` of the
logged-in user logs out and redirects to a registered ``post_logout_redirect_uri`` without
a confirmation page, deleting the user's tokens. DOT sends no back-channel logout tokens.

The `django_auth_server` fixture (session scope: Django needs a second or two to start)
is exported for tests/conftest.py.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import secrets
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization

from tests.support.tokens import SigningKey, b64

REPO = Path(__file__).resolve().parents[2]

# DOT's values of Application.authorization_grant_type.
_PASSWORD = "password"
_CLIENT_CREDENTIALS = "client-credentials"
_AUTHORIZATION_CODE = "authorization-code"


@dataclass(frozen=True)
class Pkce:
    """An RFC 7636 verifier and its S256 challenge."""

    verifier: str
    challenge: str

    @classmethod
    def new(cls) -> Pkce:
        verifier = secrets.token_urlsafe(48)  # 64 characters of the unreserved set
        return cls(verifier, b64(hashlib.sha256(verifier.encode("ascii")).digest()))


@dataclass(frozen=True)
class LoginClient:
    """A confidential authorization-code client registered with the server."""

    client_id: str
    client_secret: str = field(repr=False)
    redirect_uris: tuple[str, ...]
    post_logout_redirect_uris: tuple[str, ...] = ()

    @property
    def redirect_uri(self) -> str:
        return self.redirect_uris[0]


def rfc7638_thumbprint(jwk: dict[str, Any]) -> str:
    """The JWK thumbprint (SHA-256) of an RSA key: the ``kid`` DOT gives its signing key."""
    members = json.dumps({k: jwk[k] for k in ("e", "kty", "n")}, separators=(",", ":"))
    return b64(hashlib.sha256(members.encode()).digest())


class DjangoAuthServer:
    """`python -m tests.support.oauth_server` in ``directory / "authserver"``: its SQLite
    database, config, state file and log live there, never in the repository."""

    def __init__(self, directory: Path, *, resource_server_id: str = "fluxgate-gateway",
                 authorization_response_iss: bool = True) -> None:
        self.dir = Path(directory) / "authserver"
        self.log_path = self.dir / "authserver.log"
        # The gateway's own credentials: a confidential client it introspects with.
        self.resource_server: tuple[str, str] = (resource_server_id, secrets.token_urlsafe(24))
        # Clients that obtain tokens: one per grant, since a DOT application has one grant.
        self.user_client: tuple[str, str] = ("test-app-users", secrets.token_urlsafe(24))
        self.service_client: tuple[str, str] = ("test-app-service", secrets.token_urlsafe(24))
        self.port = 0
        self.startup_seconds = 0.0
        self.proc: subprocess.Popen | None = None
        self._log = None
        self._passwords: dict[str, str] = {}
        self._issued_by: dict[str, tuple[str, str]] = {}
        self.options = {"authorization_response_iss": authorization_response_iss}
        # The OIDC signing key, generated here so that tests can sign logout tokens with it.
        key = SigningKey.generate("RS256")
        self.signing_key = SigningKey("RS256", rfc7638_thumbprint(key.jwk()), key.private)

    # ---- addresses ----------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def issuer(self) -> str:
        """The ``issuer`` both discovery documents state (DOT mounted under /o/)."""
        return f"{self.url}/o"

    @property
    def introspection_endpoint(self) -> str:
        return f"{self.url}/o/introspect/"

    @property
    def token_endpoint(self) -> str:
        return f"{self.url}/o/token/"

    @property
    def revocation_endpoint(self) -> str:
        return f"{self.url}/o/revoke_token/"

    @property
    def jwks_uri(self) -> str:
        return f"{self.url}/o/.well-known/jwks.json"

    @property
    def authorization_endpoint(self) -> str:
        return f"{self.url}/o/authorize/"

    @property
    def userinfo_endpoint(self) -> str:
        return f"{self.url}/o/userinfo/"

    @property
    def end_session_endpoint(self) -> str:
        return f"{self.url}/o/logout/"

    @property
    def login_url(self) -> str:
        """Django's login form, where /o/authorize/ sends a browser without a session."""
        return f"{self.url}/accounts/login/"

    @property
    def discovery_url(self) -> str:
        """OIDC discovery (issuer + /.well-known/openid-configuration); it has no
        ``introspection_endpoint``."""
        return f"{self.issuer}/.well-known/openid-configuration"

    @property
    def metadata_url(self) -> str:
        """RFC 8414 metadata for the issuer's path (/o); it lists ``introspection_endpoint``."""
        return f"{self.url}/.well-known/oauth-authorization-server/o"

    # ---- the process ----------------------------------------------------------------------

    def start(self, timeout: float = 30.0) -> DjangoAuthServer:
        """Start the server and return once it answers on 127.0.0.1."""
        began = time.monotonic()
        self.dir.mkdir(parents=True, exist_ok=True)
        state = self.dir / "server.json"
        state.unlink(missing_ok=True)
        clients = [
            {"name": "resource server", "grant_type": _CLIENT_CREDENTIALS,
             "client_id": self.resource_server[0], "client_secret": self.resource_server[1]},
            {"name": "user app", "grant_type": _PASSWORD,
             "client_id": self.user_client[0], "client_secret": self.user_client[1]},
            {"name": "service app", "grant_type": _CLIENT_CREDENTIALS,
             "client_id": self.service_client[0], "client_secret": self.service_client[1]},
        ]
        (self.dir / "config.json").write_text(
            json.dumps({"clients": clients, "options": self.options}))
        key_path = self.dir / "signing_key.pem"
        key_path.unlink(missing_ok=True)
        fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(self.signing_key.private.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption()))
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.support.oauth_server", str(self.dir)],
            cwd=REPO, env=dict(os.environ, PYTHONUNBUFFERED="1"),
            stdout=self._log, stderr=subprocess.STDOUT,
        )
        deadline = began + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.stop()
                raise RuntimeError(f"authorization server exited early:\n{self.log()}")
            if not self.port and state.exists():
                self.port = json.loads(state.read_text())["port"]
            if self.port and self._answers():
                self.startup_seconds = time.monotonic() - began
                self.create_user("alice")
                return self
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"authorization server did not start in {timeout} s:\n{self.log()}")

    def _answers(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/test/health", timeout=2) as response:
                return response.status == 200
        except OSError:
            return False

    def stop(self) -> None:
        """Stop the server process (by its PID) and wait for it."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if self._log is not None:
            self._log.close()
            self._log = None

    def log(self) -> str:
        """What the server printed (Django logs one line per request)."""
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def __enter__(self) -> DjangoAuthServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---- tokens -----------------------------------------------------------------------------

    def create_user(self, username: str, password: str | None = None) -> str:
        """Create the user (or reset its password); returns the password."""
        password = password or secrets.token_urlsafe(16)
        self._request("POST", "/test/users",
                      json.dumps({"username": username, "password": password}).encode(),
                      {"Content-Type": "application/json"})
        self._passwords[username] = password
        return password

    def password(self, username: str) -> str:
        """The password of a user this handle created (alice exists from the start)."""
        return self._passwords[username]

    def issue_token(self, scope: str = "read", expires_in: int | None = 3600,
                    user: str | None = None, resource: str | list[str] | None = None) -> str:
        """An opaque access token from DOT's token endpoint.

        With ``user``, the password grant for that user (created on first use), so that
        introspection names it as ``username``; without, the client_credentials grant.
        ``expires_in`` is the token's lifetime in seconds (0 or less: already expired);
        ``resource`` (RFC 8707) binds it to audiences, which introspection reports as ``aud``.
        """
        return self.token_response(scope, expires_in, user, resource)["access_token"]

    def token_response(self, scope: str = "read", expires_in: int | None = 3600,
                       user: str | None = None,
                       resource: str | list[str] | None = None) -> dict[str, Any]:
        """The token endpoint's whole JSON answer, for `issue_token`'s arguments."""
        form: list[tuple[str, str]] = [("scope", scope)]
        if expires_in is not None:
            form.append(("test_expires_in", str(int(expires_in))))
        for uri in [resource] if isinstance(resource, str) else resource or []:
            form.append(("resource", uri))
        if user is None:
            client = self.service_client
            form.append(("grant_type", "client_credentials"))
        else:
            client = self.user_client
            if user not in self._passwords:
                self.create_user(user)
            form += [("grant_type", "password"), ("username", user),
                     ("password", self._passwords[user])]
        status, body = self._post_form("/o/token/", form, basic=client)
        if status != 200:
            raise RuntimeError(f"token endpoint answered {status}: {body!r}")
        answer = json.loads(body)
        self._issued_by[answer["access_token"]] = client
        return answer

    def revoke(self, token: str) -> None:
        """Revoke the token through the RFC 7009 endpoint, as the client it was issued to
        (DOT only lets that client revoke it); DOT deletes it, so it is inactive from now."""
        owners = [self._issued_by[token]] if token in self._issued_by else [
            self.user_client, self.service_client]
        for client in owners:
            status, body = self._post_form(
                "/o/revoke_token/", [("token", token), ("token_type_hint", "access_token")],
                basic=client)
            if status != 200:
                raise RuntimeError(f"revocation endpoint answered {status}: {body!r}")

    def introspect(self, token: str, auth: str = "client_secret_basic",
                   credentials: tuple[str, str] | None = None) -> tuple[int, bytes]:
        """POST the token to the introspection endpoint as the resource server would, with
        ``client_secret_basic`` or ``client_secret_post``; the status and raw body."""
        client_id, secret = credentials or self.resource_server
        form = [("token", token)]
        if auth == "client_secret_basic":
            return self._post_form("/o/introspect/", form, basic=(client_id, secret))
        if auth == "client_secret_post":
            return self._post_form("/o/introspect/",
                                   form + [("client_id", client_id), ("client_secret", secret)])
        raise ValueError(f"unknown client authentication {auth!r}")

    # ---- the OpenID Provider ---------------------------------------------------------------

    def register_client(self, redirect_uris: list[str], post_logout_redirect_uris: list[str] = (),
                        *, client_id: str | None = None, client_secret: str | None = None,
                        skip_authorization: bool = True, access_token_seconds: int = 5,
                        id_token_seconds: int = 60) -> LoginClient:
        """Register a confidential authorization-code client (ID tokens RS256), or, with the
        ``client_id`` of an existing one, replace its registration (e.g. once the gateway's
        port, hence its redirect URI, is known). ``skip_authorization=False`` shows DOT's
        consent page after the login. Short token lifetimes make refresh happen in a test."""
        client = LoginClient(client_id or f"login-{secrets.token_hex(6)}",
                             client_secret or secrets.token_urlsafe(24),
                             tuple(redirect_uris), tuple(post_logout_redirect_uris))
        status, body = self._request("POST", "/test/clients", json.dumps({
            "client_id": client.client_id, "client_secret": client.client_secret,
            "name": client.client_id, "grant_type": _AUTHORIZATION_CODE,
            "redirect_uris": list(redirect_uris),
            "post_logout_redirect_uris": list(post_logout_redirect_uris),
            "skip_authorization": skip_authorization,
            "access_token_seconds": access_token_seconds, "id_token_seconds": id_token_seconds,
        }).encode(), {"Content-Type": "application/json"})
        if status != 201:
            raise RuntimeError(f"client registration answered {status}: {body!r}")
        return client

    def authorization_url(self, client: LoginClient, *, state: str, pkce: Pkce | None,
                          nonce: str | None = None, scope: str = "openid",
                          redirect_uri: str | None = None, **extra: str) -> str:
        """The authorization request a relying party would send a browser to."""
        query = {"response_type": "code", "client_id": client.client_id,
                 "redirect_uri": redirect_uri or client.redirect_uri, "scope": scope,
                 "state": state}
        if pkce is not None:
            query.update(code_challenge=pkce.challenge, code_challenge_method="S256")
        if nonce is not None:
            query["nonce"] = nonce
        query.update(extra)
        return f"{self.authorization_endpoint}?{urllib.parse.urlencode(query)}"

    def exchange_code(self, client: LoginClient, code: str, verifier: str | None,
                      redirect_uri: str | None = None) -> tuple[int, dict[str, Any]]:
        """The token endpoint's status and JSON for an authorization code."""
        form = [("grant_type", "authorization_code"), ("code", code),
                ("redirect_uri", redirect_uri or client.redirect_uri)]
        if verifier is not None:
            form.append(("code_verifier", verifier))
        status, body = self._post_form("/o/token/", form,
                                       basic=(client.client_id, client.client_secret))
        return status, json.loads(body)

    def refresh(self, client: LoginClient, refresh_token: str) -> tuple[int, dict[str, Any]]:
        """The token endpoint's status and JSON for a refresh grant."""
        status, body = self._post_form(
            "/o/token/", [("grant_type", "refresh_token"), ("refresh_token", refresh_token)],
            basic=(client.client_id, client.client_secret))
        return status, json.loads(body)

    def verify_id_token(self, id_token: str, client: LoginClient, *,
                        leeway: float = 0) -> dict[str, Any]:
        """The ID token's claims, checked with PyJWT against the server's key (signature,
        RS256, iss, aud, exp); raises ``jwt.InvalidTokenError`` otherwise."""
        header = jwt.get_unverified_header(id_token)
        if header.get("kid") != self.signing_key.kid:
            raise jwt.InvalidTokenError(f"unexpected kid {header.get('kid')!r}")
        return jwt.decode(id_token, self.signing_key.public, algorithms=["RS256"],
                          audience=client.client_id, issuer=self.issuer, leeway=leeway,
                          options={"require": ["iss", "aud", "exp", "iat", "sub"]})

    def revoke_user_tokens(self, username: str,
                           client: LoginClient | str | None = None) -> dict[str, int]:
        """End every token of the user (of one client, if given) inside the server, as an
        administrator would: refresh tokens revoked, access tokens deleted, so the next
        refresh gets ``invalid_grant``. How many refresh and access tokens it ended."""
        body = {"username": username}
        if client is not None:
            body["client_id"] = client if isinstance(client, str) else client.client_id
        status, answer = self._request("POST", "/test/revoke-user-tokens",
                                       json.dumps(body).encode(),
                                       {"Content-Type": "application/json"})
        if status != 200:
            raise RuntimeError(f"revoke-user-tokens answered {status}: {answer!r}")
        return json.loads(answer)

    def set_authorization_response_iss(self, value: bool | str) -> None:
        """Whether authorization responses carry RFC 9207 ``iss`` (and the metadata says
        so), or, with a string, that wrong value instead of the issuer."""
        status, body = self._request(
            "POST", "/test/settings", json.dumps({"authorization_response_iss": value}).encode(),
            {"Content-Type": "application/json"})
        if status != 200:
            raise RuntimeError(f"settings answered {status}: {body!r}")

    def op_session(self, username: str) -> dict[str, str | None]:
        """The user's ``sub`` and current ``sid`` (None until logged in through the form)."""
        query = urllib.parse.urlencode({"username": username})
        return json.loads(self._request("GET", f"/test/session?{query}")[1])

    def discovery(self) -> dict[str, Any]:
        """The OIDC discovery document."""
        return json.loads(self._request("GET", "/o/.well-known/openid-configuration")[1])

    # ---- refresh and revocation logs ---------------------------------------------------

    def refresh_grants(self, client: LoginClient | str | None = None) -> list[dict[str, Any]]:
        """Every refresh grant the server answered, in order (for one client if given):
        ``{"digest" (SHA-256 hex of the refresh token), "client_id", "status", "error"}``."""
        return _for_client(json.loads(self._request("GET", "/test/refresh")[1]), client)

    def refresh_token_uses(self, client: LoginClient | str | None = None) -> dict[str, int]:
        """How many times each refresh token (by SHA-256 hex) was presented."""
        uses: dict[str, int] = {}
        for grant in self.refresh_grants(client):
            uses[grant["digest"]] = uses.get(grant["digest"], 0) + 1
        return uses

    def refresh_reuse_detected(self, client: LoginClient | str | None = None) -> bool:
        """Whether any refresh token was presented more than once."""
        return any(count > 1 for count in self.refresh_token_uses(client).values())

    def revocations(self, client: LoginClient | str | None = None) -> list[dict[str, Any]]:
        """Every RFC 7009 request, in order: ``{"digest", "token_type_hint", "client_id",
        "status", "error"}``."""
        return _for_client(json.loads(self._request("GET", "/test/revocations")[1]), client)

    def reset_logs(self) -> None:
        """Forget the refresh and revocation logs (per-client filters usually suffice)."""
        self._request("DELETE", "/test/refresh")
        self._request("DELETE", "/test/revocations")

    # ---- counters --------------------------------------------------------------------------

    def counters(self) -> dict[str, int]:
        """Requests the server has answered, by endpoint (``introspection``, ``token``,
        ``revocation``) and by endpoint and status (``introspection.200``)."""
        return json.loads(self._request("GET", "/test/counters")[1])

    def introspection_calls(self) -> int:
        """Introspection requests the server has answered, whatever their outcome."""
        return self.counters().get("introspection", 0)

    def reset_counters(self) -> None:
        """Zero the counters (the fixture's server is shared by a whole test session)."""
        self._request("DELETE", "/test/counters")

    # ---- http -------------------------------------------------------------------------------

    def _post_form(self, path: str, form: list[tuple[str, str]],
                   basic: tuple[str, str] | None = None) -> tuple[int, bytes]:
        headers = {"Content-Type": "application/x-www-form-urlencoded"}
        if basic is not None:
            headers["Authorization"] = basic_auth(*basic)
        return self._request("POST", path, urllib.parse.urlencode(form).encode(), headers)

    def _request(self, method: str, path: str, body: bytes | None = None,
                 headers: dict[str, str] | None = None) -> tuple[int, bytes]:
        request = urllib.request.Request(self.url + path, data=body, method=method,
                                         headers=headers or {})
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as error:
            return error.code, error.read()


def token_digest(token: str) -> str:
    """SHA-256 hex of a token, as the server's refresh and revocation logs name it."""
    return hashlib.sha256(token.encode()).hexdigest()


def _for_client(entries: list[dict[str, Any]],
                client: LoginClient | str | None) -> list[dict[str, Any]]:
    if client is None:
        return entries
    client_id = client if isinstance(client, str) else client.client_id
    return [entry for entry in entries if entry["client_id"] == client_id]


def basic_auth(client_id: str, secret: str) -> str:
    """An RFC 6749 section 2.3.1 Authorization header: both parts form-urlencoded first."""
    pair = f"{urllib.parse.quote_plus(client_id)}:{urllib.parse.quote_plus(secret)}"
    return "Basic " + base64.b64encode(pair.encode()).decode()


@pytest.fixture(scope="session")
def django_auth_server(tmp_path_factory):
    """One DOT authorization server for the whole session; tests that count introspection
    calls take differences (or call `reset_counters`)."""
    server = DjangoAuthServer(tmp_path_factory.mktemp("django-as")).start()
    try:
        yield server
    finally:
        server.stop()
