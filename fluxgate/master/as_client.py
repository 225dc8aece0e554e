"""The authorization server's client for the master's introspection side pool: RFC 7662
token introspection over a keep-alive pool (``master/http_pool.py``), the client
authentication of RFC 6749 §2.3.1 or RFC 7523 §2.2, and RFC 8414 metadata discovery.

Nothing here logs or raises a message holding the token, the client secret or the
assertion: they travel only in the request bytes.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import re
import secrets
import time
from typing import Any
from urllib.parse import quote_plus, urlsplit

import orjson
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from fluxgate.cli.jws import b64, compact, public_jwk, thumbprint
from fluxgate.master.fetch import FetchError, Response, fetch, parse_url
from fluxgate.master.http_pool import HttpPool

log = logging.getLogger("fluxgate.oauth2")

AUTH_METHODS = ("client_secret_basic", "client_secret_post", "private_key_jwt")
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
ASSERTION_LIFETIME = 60  # seconds; the assertion is made fresh for every request
DISCOVERY_MAX_BYTES = 256 * 1024

# RFC 7662 §2.2 members whose type the gateway relies on; others pass through unchecked.
_STRING_MEMBERS = ("scope", "client_id", "username", "token_type", "sub", "iss", "jti")
_INTEGER_MEMBERS = ("exp", "iat", "nbf")
_ERROR_CODE = re.compile(r"[a-z_]{1,40}")  # RFC 6749 §5.2 error codes, safe to repeat


def error_code(value: Any) -> str | None:
    """An OAuth ``error`` value when it is a plain error code (safe to log and count), else
    None: a server's or a callback's error is never repeated as it came."""
    return value if isinstance(value, str) and _ERROR_CODE.fullmatch(value) else None


class IntrospectionError(Exception):
    """No trustworthy answer from the authorization server.

    ``reason`` is a stable code: unreachable, timeout, tls, http_status, not_json,
    invalid_response, too_large, client_auth. The message says why, never with a token or
    secret in it."""

    def __init__(self, reason: str, message: str | None = None) -> None:
        super().__init__(message or reason)
        self.reason = reason


def _form(value: str | bytes) -> bytes:
    """application/x-www-form-urlencoded (RFC 6749 Appendix B); str as UTF-8, bytes as
    they are."""
    return quote_plus(value, safe="").encode("ascii")


def _load_signing_key(path: str) -> tuple[Any, str]:
    """The PEM private key in ``path`` and its JWS alg; ValueError names the file only."""
    try:
        with open(path, "rb") as f:
            key = serialization.load_pem_private_key(f.read(), password=None)
    except OSError as exc:
        raise ValueError(f"private_key_file {path}: {exc.strerror or exc}") from None
    except (ValueError, TypeError):
        raise ValueError(f"private_key_file {path}: not an unencrypted PEM private key") from None
    if isinstance(key, rsa.RSAPrivateKey):
        if key.key_size < 2048:  # RFC 7518 §3.3
            raise ValueError(f"private_key_file {path}: RSA keys need at least 2048 bits")
        return key, "RS256"
    if isinstance(key, ec.EllipticCurvePrivateKey) and isinstance(key.curve, ec.SECP256R1):
        return key, "ES256"
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return key, "EdDSA"
    raise ValueError(f"private_key_file {path}: use an RSA, EC P-256 or Ed25519 key")


def check_introspection(response: Response) -> dict[str, Any]:
    """The RFC 7662 §2.2 answer in ``response``, or IntrospectionError."""
    status = response.status
    if status != 200:
        error = ""
        if response.body[:1] == b"{":
            try:
                code = orjson.loads(response.body).get("error")
            except (orjson.JSONDecodeError, AttributeError):
                code = None
            if error_code(code) is not None:
                error = f" ({code})"
        if status in (401, 403):  # RFC 7662 §2.3: the AS refused our client credentials
            raise IntrospectionError("client_auth", f"client authentication refused: HTTP {status}{error}")
        raise IntrospectionError("http_status", f"introspection endpoint answered HTTP {status}{error}")
    media_type = response.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if media_type != "application/json":
        raise IntrospectionError("not_json", f"Content-Type {media_type or 'missing'!r}, not application/json")
    try:
        answer = orjson.loads(response.body)
    except orjson.JSONDecodeError:
        raise IntrospectionError("not_json", "the body is not JSON") from None
    if not isinstance(answer, dict):
        raise IntrospectionError("invalid_response", "the body is not a JSON object")
    if type(answer.get("active")) is not bool:  # "true", 1 or absent: refused
        raise IntrospectionError("invalid_response", '"active" is not a boolean')
    for name in _INTEGER_MEMBERS:
        value = answer.get(name)
        if value is not None and (type(value) is not int):
            raise IntrospectionError("invalid_response", f'"{name}" is not an integer')
    for name in _STRING_MEMBERS:
        value = answer.get(name)
        if value is not None and not isinstance(value, str):
            raise IntrospectionError("invalid_response", f'"{name}" is not a string')
    aud = answer.get("aud")
    if aud is not None and not isinstance(aud, str) and not (
        isinstance(aud, list) and all(isinstance(a, str) for a in aud)
    ):
        raise IntrospectionError("invalid_response", '"aud" is not a string or list of strings')
    return answer


class AsClient:
    """Introspects tokens at one RFC 7662 endpoint over a keep-alive pool."""

    def __init__(
        self,
        endpoint: str,
        *,
        client_id: str,
        auth_method: str = "client_secret_basic",
        client_secret: str | None = None,
        private_key_file: str | None = None,
        assertion_audience: str | None = None,
        max_connections: int = 8,
        timeout: float = 5.0,
        idle_timeout: float = 30.0,
        max_response_bytes: int = 64 * 1024,
        ca_file: str | None = None,
    ) -> None:
        """Check the settings and load the signing key; raises ValueError. Connects
        nothing until the first ``introspect``."""
        try:
            target = parse_url(endpoint)
        except FetchError as exc:
            raise ValueError(f"introspection endpoint: {exc}") from None
        if auth_method not in AUTH_METHODS:
            raise ValueError(f"auth_method must be one of {', '.join(AUTH_METHODS)}")
        if not client_id:
            raise ValueError("client_id is required")
        self.endpoint = endpoint
        self.client_id = client_id
        self.auth_method = auth_method
        self.timeout = timeout
        self._pool = HttpPool(target, max_connections=max_connections, idle_timeout=idle_timeout,
                              max_response_bytes=max_response_bytes, ca_file=ca_file)
        head = [f"POST {target.path} HTTP/1.1", f"Host: {target.authority}",
                "Content-Type: application/x-www-form-urlencoded",
                "Accept: application/json", "User-Agent: fluxgate"]
        # The client authentication's form members (client_secret_post, private_key_jwt),
        # appended to every form this client sends.
        self._auth_tail = b""
        self._key: Any = None
        if auth_method == "private_key_jwt":
            if not private_key_file:
                raise ValueError("private_key_jwt needs private_key_file")
            self._key, self._alg = _load_signing_key(private_key_file)
            self._jwt_header = {"alg": self._alg, "typ": "JWT",
                                "kid": thumbprint(public_jwk(self._key.public_key()))}
            self._audience = assertion_audience or endpoint
            # RFC 7521 §4.2: client_id may accompany the assertion; some servers want it.
            self._auth_tail += (b"&client_id=" + _form(client_id)
                                + b"&client_assertion_type=" + _form(ASSERTION_TYPE)
                                + b"&client_assertion=")
        else:
            if not client_secret:
                raise ValueError(f"{auth_method} needs client_secret")
            if auth_method == "client_secret_basic":
                # RFC 6749 §2.3.1: both form-urlencoded, then joined and base64-encoded.
                pair = _form(client_id) + b":" + _form(client_secret)
                head.append("Authorization: Basic " + base64.b64encode(pair).decode("ascii"))
            else:
                self._auth_tail += (b"&client_id=" + _form(client_id)
                                    + b"&client_secret=" + _form(client_secret))
        self._head = ("\r\n".join(head) + "\r\nContent-Length: ").encode("latin-1")

    @property
    def stats(self) -> dict[str, int]:
        """For metrics: connections open / idle / in_use, callers waiting, and counters of
        requests sent, of those on a reused connection, connections opened, retries."""
        return self._pool.stats

    def _assertion(self) -> bytes:
        """A fresh RFC 7523 §3 client assertion: one use, 60 s, a 128-bit jti."""
        now = int(time.time())
        claims = {"iss": self.client_id, "sub": self.client_id, "aud": self._audience,
                  "iat": now, "exp": now + ASSERTION_LIFETIME, "jti": b64(secrets.token_bytes(16))}
        return compact(self._jwt_header, claims, self._key, self._alg).encode("ascii")

    async def introspect(self, token: str | bytes) -> dict[str, Any]:
        """The authorization server's RFC 7662 §2.2 answer for ``token`` (bytes are sent
        as they are; ``active`` is a real boolean, known members are well typed); raises
        IntrospectionError."""
        # RFC 7662 §2.1: a form POST with the token and the hint.
        response = await self.post(b"token=" + _form(token) + b"&token_type_hint=access_token",
                                   what="introspection endpoint")
        return check_introspection(response)

    async def post(self, form: bytes, *, what: str = "endpoint") -> Response:
        """POST ``form`` (already form-encoded; the client authentication is added) to the
        endpoint; the response whatever its status; raises IntrospectionError for no
        complete answer (``what`` names the endpoint in its message)."""
        body = form + self._auth_tail
        if self._key is not None:
            body += self._assertion()
        request = b"%s%d\r\n\r\n%s" % (self._head, len(body), body)
        try:
            async with asyncio.timeout(self.timeout):
                return await self._pool.request(request)
        except TimeoutError:
            raise IntrospectionError(
                "timeout", f"no answer from {self._pool.target.authority} within {self.timeout:g}s"
            ) from None
        except FetchError as exc:
            raise IntrospectionError(exc.reason, f"{what}: {exc}") from None

    async def close(self) -> None:
        """Close the pool's connections; later calls fail with "unreachable"."""
        await self._pool.close()


def _metadata_urls(issuer: str) -> list[str]:
    """RFC 8414 §3.1 (the well-known segment goes between host and path), then the OpenID
    Connect Discovery §4 location (appended to the issuer)."""
    parts = urlsplit(issuer)
    path = parts.path.rstrip("/")
    rfc8414 = f"{parts.scheme}://{parts.netloc}/.well-known/oauth-authorization-server{path}"
    return [rfc8414, issuer.rstrip("/") + "/.well-known/openid-configuration"]


async def discover(issuer: str, timeout: float, *, oidc_first: bool = False) -> dict[str, Any]:
    """``issuer``'s authorization server metadata (RFC 8414, else OpenID Connect
    Discovery; the other way round with ``oidc_first``, as the browser login wants the
    OpenID Provider's document with its end_session_endpoint), whose ``issuer`` must be
    ``issuer`` exactly (RFC 8414 §3.3); raises FetchError. Each of the two tries is
    bounded by ``timeout``."""
    statuses = []
    urls = _metadata_urls(issuer)
    for url in reversed(urls) if oidc_first else urls:
        response = await fetch(url, timeout=timeout, max_bytes=DISCOVERY_MAX_BYTES)
        if response.status != 200:
            statuses.append(f"{url} answered HTTP {response.status}")
            continue
        try:
            document = orjson.loads(response.body)
        except orjson.JSONDecodeError:
            raise FetchError(f"metadata {url} is not JSON") from None
        if not isinstance(document, dict):
            raise FetchError(f"metadata {url} is not a JSON object")
        if document.get("issuer") != issuer:
            raise FetchError(f"metadata {url} names issuer {document.get('issuer')!r}, "
                             f"not {issuer!r}")
        log.debug("authorization server metadata of %s from %s", issuer, url)
        return document
    raise FetchError("no authorization server metadata: " + "; ".join(statuses))


async def discover_provider(issuer: str,
                            timeout: float) -> tuple[dict[str, Any], FetchError | None]:
    """An OpenID Provider's metadata for the browser login: its OpenID Connect document (it
    has end_session_endpoint), completed by the RFC 8414 one where the server publishes
    both (revocation_endpoint is often only there). Raises FetchError when the first cannot
    be had; the second's failure is returned beside the document (its members are then
    not used)."""
    document = await discover(issuer, timeout, oidc_first=True)
    try:
        other = await discover(issuer, timeout)
    except FetchError as exc:
        return document, exc
    return {**other, **document}, None
