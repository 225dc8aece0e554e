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

The `django_auth_server` fixture (session scope: Django needs a second or two to start)
is exported for tests/conftest.py.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]

# DOT's values of Application.authorization_grant_type.
_PASSWORD = "password"
_CLIENT_CREDENTIALS = "client-credentials"


class DjangoAuthServer:
    """`python -m tests.support.oauth_server` in ``directory / "authserver"``: its SQLite
    database, config, state file and log live there, never in the repository."""

    def __init__(self, directory: Path, *, resource_server_id: str = "fluxgate-gateway") -> None:
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
        (self.dir / "config.json").write_text(json.dumps({"clients": clients}))
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
