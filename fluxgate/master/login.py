"""The browser login's server side, in the master: every call to the authorization
server and every write to the session store.

A worker asks over the side pool's socket (``master/sidepool.py``) and the master
answers; no worker ever waits on the authorization server on its own loop, and because
the master is one process, "one refresh per session at a time" holds across all workers
without a lock: a second question about a session being refreshed joins the first.

Steps (each one frame ``[op, source, payload]``, payload JSON; the answer is
``(outcome, JSON payload)``):

* ``begin`` {return_to}: a login transaction (PKCE S256 verifier, ``state`` and
  ``nonce`` of 256 bits each, the return path) is stored; answers the authorization URL,
  the transaction id and its cookie name;
* ``callback`` {transaction_id, state, code, iss, error}: the transaction is taken (single
  use across workers), ``state`` compared in constant time, the RFC 9207 ``iss`` checked,
  the code exchanged with the verifier, the ID token verified (signature with the
  server's JWKS, iss, aud, azp, exp, iat, nonce); answers the new session's id;
* ``refresh`` {session_id}: single-flight per session; ``invalid_grant`` ends it;
* ``logout`` {session_id}: the session ends, its refresh token is revoked (RFC 7009, in
  the background) and the answer is where to send the browser (the server's
  ``end_session_endpoint`` with ``id_token_hint``, RP-initiated logout);
* ``backchannel`` {logout_token}: an OIDC back-channel logout token is verified and the
  matching sessions end.

Nothing here logs a token, a code, a verifier or a session id.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlencode

import orjson

from fluxgate._core import JwtVerifier, TokenError
from fluxgate.auth.jwk import build_keyset, usable_keys
from fluxgate.auth.login_flow import (
    TRANSACTION_TTL,
    pkce_challenge,
    random_value,
    transaction_cookie_name,
)
from fluxgate.auth.session_backend import SessionBackend, StoreUnavailable
from fluxgate.auth.sessions import session_digest
from fluxgate.master.as_client import (
    AsClient,
    IntrospectionError,
    _form,
    discover_provider,
    error_code,
)
from fluxgate.master.fetch import FetchError, fetch

if TYPE_CHECKING:
    from fluxgate.config import schema

log = logging.getLogger("fluxgate.oauth2")

ID_TOKEN_ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384",
                       "EdDSA")
DISCOVERY_TIMEOUT = 10.0
DISCOVERY_RETRY = 5.0
JWKS_REFETCH_COOLDOWN = 30.0  # an unknown kid refetches the JWKS at most this often
MAX_TOKEN_RESPONSE = 64 * 1024
BACKCHANNEL_EVENT = "http://schemas.openid.net/event/backchannel-logout"
LOGOUT_TOKEN_MAX_AGE = 300.0  # an older logout token (by iat) is refused
# Claims of the ID token kept in the session (the principal is built from them).
KEPT_CLAIMS = ("iss", "sub", "sid", "email", "name", "preferred_username", "auth_time")

Answer = tuple[str, bytes]


def answer(outcome: str, **payload: Any) -> Answer:
    return outcome, orjson.dumps(payload)


class LoginRefused(Exception):
    """A step of the login that must not go on; ``reason`` is a stable code."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class LoginProvider:
    """One authorization server + client + redirect URI for the browser login."""

    def __init__(self, source: str, config: schema.OAuth2, store: SessionBackend) -> None:
        self.source = source
        self.config = config
        self.store = store
        self.metadata: dict[str, Any] | None = None
        self.discovery_error: str | None = None
        self.discovery_task: asyncio.Task[None] | None = None
        self.token_client: AsClient | None = None
        self.revocation_client: AsClient | None = None
        self.verifier: JwtVerifier | None = None
        self.logout_verifier: JwtVerifier | None = None
        self.jwks_fetched_at = 0.0
        self.jwks_generation = 0
        self.refreshing: dict[bytes, asyncio.Future[Answer]] = {}
        # Set once discovery has succeeded or failed once: a login started in the first
        # moments after a start waits for it rather than failing.
        self.first_attempt = asyncio.Event()
        self.background: set[asyncio.Task[Any]] = set()
        self.counts: dict[str, int] = {}

    # ---- discovery and keys -------------------------------------------------------------

    def start(self) -> None:
        self.discovery_task = asyncio.get_running_loop().create_task(self._discover())

    async def _discover(self) -> None:
        while self.metadata is None:
            try:
                document, _ = await discover_provider(self.config.issuer or "",
                                                      DISCOVERY_TIMEOUT)
                self._configure(document)
                await self._fetch_keys(document["jwks_uri"])
                self.metadata = document
                self.discovery_error = None
                log.info("oauth2 login %s: discovered %s", self.source, self.config.issuer)
            except (FetchError, ValueError, OSError) as exc:
                self.discovery_error = str(exc)
                log.warning("oauth2 login discovery for %s failed: %s", self.config.issuer, exc)
                self.first_attempt.set()
                await asyncio.sleep(DISCOVERY_RETRY)
        self.first_attempt.set()

    def _configure(self, document: dict[str, Any]) -> None:
        """Check what the login needs from the metadata and build the clients."""
        for name in ("authorization_endpoint", "token_endpoint", "jwks_uri"):
            if not isinstance(document.get(name), str) or not document[name]:
                raise ValueError(f"the metadata has no {name}")
        methods = document.get("code_challenge_methods_supported")
        if isinstance(methods, list) and "S256" not in methods:
            log.warning("oauth2 login %s: the server does not list S256 in "
                        "code_challenge_methods_supported; PKCE S256 is sent anyway",
                        self.config.issuer)
        c = self.config
        common = dict(client_id=c.client_id, auth_method=c.auth_method,
                      client_secret=c.client_secret, private_key_file=c.private_key,
                      assertion_audience=c.issuer, max_connections=c.max_connections,
                      timeout=c.timeout, ca_file=c.ca_file, max_response_bytes=MAX_TOKEN_RESPONSE)
        self.token_client = AsClient(document["token_endpoint"], **common)
        revocation = document.get("revocation_endpoint")
        if isinstance(revocation, str) and revocation:
            self.revocation_client = AsClient(revocation, **common)
        leeway = c.clockSkewTolerance
        self.verifier = JwtVerifier(algorithms=ID_TOKEN_ALGORITHMS, issuer=c.issuer,
                                    audiences=[c.client_id], leeway=leeway, cache_size=0)
        self.logout_verifier = JwtVerifier(algorithms=ID_TOKEN_ALGORITHMS, issuer=c.issuer,
                                           audiences=[c.client_id], leeway=leeway,
                                           cache_size=0)

    async def _fetch_keys(self, jwks_uri: str | None = None) -> None:
        uri = jwks_uri or (self.metadata or {}).get("jwks_uri")
        if uri is None:
            raise ValueError("no jwks_uri")
        response = await fetch(uri, timeout=self.config.timeout)
        if response.status != 200:
            raise FetchError(f"JWKS {uri} answered HTTP {response.status}")
        keys, problems = usable_keys(orjson.loads(response.body))
        for problem in problems:
            log.warning("oauth2 login JWKS %s: %s", uri, problem)
        self.jwks_generation += 1
        keyset = build_keyset(keys, self.jwks_generation)
        assert self.verifier is not None and self.logout_verifier is not None
        self.verifier.set_keys(keyset)
        self.logout_verifier.set_keys(keyset)
        self.jwks_fetched_at = time.monotonic()

    async def _verify(self, verifier: JwtVerifier, token: str) -> dict[str, Any]:
        """The claims of a JWT signed by the server; one JWKS refetch for an unknown kid."""
        raw = token.encode("ascii", "replace")
        try:
            return dict(verifier.verify(raw, time.time()))
        except TokenError as exc:
            if (exc.reason != "unknown_kid"
                    or time.monotonic() - self.jwks_fetched_at < JWKS_REFETCH_COOLDOWN):
                raise
        assert self.metadata is not None
        await self._fetch_keys(self.metadata["jwks_uri"])
        return dict(verifier.verify(raw, time.time()))

    def _ready(self) -> dict[str, Any]:
        if self.metadata is None:
            raise LoginRefused("unavailable", "the authorization server's metadata is not known yet")
        return self.metadata

    def _count(self, what: str) -> None:
        self.counts[what] = self.counts.get(what, 0) + 1

    # ---- the steps ----------------------------------------------------------------------

    async def begin(self, request: dict[str, Any]) -> Answer:
        metadata = self._ready()
        c = self.config
        state, nonce, verifier = random_value(32), random_value(32), random_value(48)
        return_to = request.get("return_to") if isinstance(request.get("return_to"), str) else "/"
        transaction_id = await self.store.begin_transaction(
            self.source, state, nonce, verifier, return_to, ttl=TRANSACTION_TTL)
        query = {
            "response_type": "code",
            "client_id": c.client_id,
            "redirect_uri": c.redirect_uri,
            "scope": " ".join(c.login_scopes),
            "state": state,
            "nonce": nonce,
            "code_challenge": pkce_challenge(verifier),
            "code_challenge_method": "S256",
        }
        endpoint = metadata["authorization_endpoint"]
        location = endpoint + ("&" if "?" in endpoint else "?") + urlencode(query, quote_via=quote)
        self._count("begin")
        return answer("ok", location=location, transaction_id=transaction_id,
                      cookie=transaction_cookie_name(state), max_age=TRANSACTION_TTL)

    async def callback(self, request: dict[str, Any]) -> Answer:
        metadata = self._ready()
        c = self.config
        transaction = None
        transaction_id = request.get("transaction_id")
        if isinstance(transaction_id, str) and transaction_id:
            transaction = await self.store.take_transaction(transaction_id)
        state = request.get("state")
        if transaction is None or transaction.provider != self.source:
            raise LoginRefused("unknown_transaction", "this sign-in link was already used, "
                               "has expired, or was started in another browser")
        if not isinstance(state, str) or not hmac.compare_digest(
                state.encode(), transaction.state.encode()):
            raise LoginRefused("state_mismatch", "the sign-in answer does not match the "
                               "sign-in this browser started")
        return_to = transaction.return_to
        iss = request.get("iss")
        iss_required = c.require_iss_parameter or bool(
            metadata.get("authorization_response_iss_parameter_supported"))
        if iss is not None or iss_required:
            # RFC 9207 §2.4: a mix-up attack shows as an answer from another issuer.
            if not isinstance(iss, str) or iss != c.issuer:
                raise LoginRefused("issuer_mismatch", "the sign-in answer came from another "
                                   "authorization server")
        error = request.get("error")
        if error is not None:
            code = error_code(error) or "error"
            raise LoginRefused(f"as_{code}",
                               f"the authorization server did not sign you in ({code})")
        code = request.get("code")
        if not isinstance(code, str) or not code or len(code) > 4096:
            raise LoginRefused("no_code", "the sign-in answer carries no code")
        form = (b"grant_type=authorization_code&code=" + _form(code)
                + b"&redirect_uri=" + _form(c.redirect_uri or "")
                + b"&code_verifier=" + _form(transaction.code_verifier))
        tokens = await self._token_call(form, "code")
        id_token = tokens.get("id_token")
        if not isinstance(id_token, str):
            raise LoginRefused("no_id_token", "the authorization server sent no ID token "
                               "(is 'openid' among login_scopes?)")
        try:
            claims = await self._verify(self.verifier, id_token)  # type: ignore[arg-type]
        except TokenError as exc:
            raise LoginRefused(f"id_token_{exc.reason}", "the ID token is not valid") from None
        self._check_id_token(claims, transaction.nonce)
        now = time.time()
        session_id = await self.store.create(
            self.source, str(claims["sub"]), _str_or_none(claims.get("sid")),
            tokens=_kept_tokens(tokens),
            claims=_kept_claims(claims, tokens, c.login_scopes),
            access_expires_at=_expires_at(tokens, now),
            idle=c.session.idle, absolute=c.session.absolute,
        )
        self._count("login")
        return answer("ok", session_id=session_id, return_to=return_to,
                      max_age=int(c.session.absolute))

    def _check_id_token(self, claims: dict[str, Any], nonce: str) -> None:
        """OIDC Core §3.1.3.7 on top of what the verifier checked (iss, aud, exp, nbf)."""
        if not isinstance(claims.get("sub"), str) or not claims["sub"]:
            raise LoginRefused("id_token_no_sub", "the ID token names no subject")
        if not isinstance(claims.get("iat"), (int, float)):
            raise LoginRefused("id_token_no_iat", "the ID token has no iat")
        token_nonce = claims.get("nonce")
        if not isinstance(token_nonce, str) or not hmac.compare_digest(
                token_nonce.encode(), nonce.encode()):
            raise LoginRefused("id_token_nonce", "the ID token was not issued for this sign-in")
        aud = claims.get("aud")
        azp = claims.get("azp")
        if isinstance(aud, list) and len(aud) > 1 and azp is None:
            raise LoginRefused("id_token_azp", "the ID token has several audiences and no azp")
        if azp is not None and azp != self.config.client_id:
            raise LoginRefused("id_token_azp", "the ID token was issued to another client")

    async def _token_call(self, form: bytes, what: str) -> dict[str, Any]:
        """POST to the token endpoint; the JSON answer, LoginRefused for an OAuth error
        (``invalid_grant`` ...), IntrospectionError when no answer came."""
        assert self.token_client is not None
        response = await self.token_client.post(form, what="token endpoint")
        try:
            document = orjson.loads(response.body)
        except orjson.JSONDecodeError:
            document = None
        if not isinstance(document, dict):
            raise IntrospectionError("invalid_response",
                                     f"token endpoint answered HTTP {response.status}, not JSON")
        if response.status != 200:
            error = document.get("error")
            code = error_code(error) or "error"
            self._count(f"{what}_{code}")
            raise LoginRefused(code, f"the token endpoint refused the {what} ({code})")
        if not isinstance(document.get("access_token"), str):
            raise IntrospectionError("invalid_response", "the token response has no access_token")
        token_type = document.get("token_type")
        if not isinstance(token_type, str) or token_type.lower() != "bearer":
            raise IntrospectionError("invalid_response", "the token response is not a bearer token")
        return document

    async def refresh(self, request: dict[str, Any]) -> Answer:
        """Refresh a session's tokens, once however many ask at the same time."""
        self._ready()
        session_id = request.get("session_id")
        if not isinstance(session_id, str):
            return answer("ended", reason="unknown_session")
        digest = session_digest(session_id)
        pending = self.refreshing.get(digest)
        if pending is not None:
            self._count("refresh_joined")
            return await asyncio.shield(pending)
        future: asyncio.Future[Answer] = asyncio.get_running_loop().create_future()
        self.refreshing[digest] = future
        result = answer("unavailable")
        try:
            result = await self._refresh(session_id, digest)
        finally:
            del self.refreshing[digest]
            future.set_result(result)
        return result

    async def _refresh(self, session_id: str, digest: bytes) -> Answer:
        # The lock makes the refresh single-flight across every process that refreshes
        # (every node's master in cluster mode): the one that waited finds the tokens
        # refreshed and uses no refresh token. Held at most one token call and a margin.
        async with self.store.refresh_lock(digest, hold=2 * self.config.timeout + 5.0):
            return await self._refresh_locked(session_id, digest)

    async def _refresh_locked(self, session_id: str, digest: bytes) -> Answer:
        now = time.time()
        session = await self.store.load(session_id, now, authoritative=True)
        if session is None:
            return answer("ended", reason="unknown_session")
        if (session.access_expires_at is None
                or session.access_expires_at - now > self.config.refresh_leeway):
            # Refreshed a moment ago (by an earlier question): nothing to do.
            return answer("ok", access_expires_at=session.access_expires_at)
        refresh_token = session.tokens.get("refresh_token")
        if not refresh_token:
            return answer("ended", reason="no_refresh_token")
        form = b"grant_type=refresh_token&refresh_token=" + _form(refresh_token)
        try:
            tokens = await self._token_call(form, "refresh")
        except LoginRefused as exc:
            if exc.reason in ("invalid_grant", "unauthorized_client", "invalid_client"):
                await self.store.end(digest, "invalid_grant")
                self._count("refresh_invalid_grant")
                return answer("ended", reason=exc.reason)
            return answer("unavailable", reason=exc.reason)
        except IntrospectionError as exc:
            log.warning("oauth2 login %s: refresh failed (%s): %s", self.source, exc.reason, exc)
            return answer("unavailable", reason=exc.reason)
        kept = {**session.tokens, **_kept_tokens(tokens)}
        expires_at = _expires_at(tokens, time.time())
        try:
            updated = await self.store.update_tokens(digest, session.version, kept, expires_at)
        except StoreUnavailable:
            # The new tokens cannot be kept: the new refresh token must not outlive them at
            # the server (the session ends at its next refresh; the user signs in again).
            self._revoke_issued(tokens)
            raise
        if not updated:
            # Another writer changed the session meanwhile (it ended): its word stands, and
            # the refresh token just issued must not outlive it at the server.
            self._revoke_issued(tokens)
            return answer("ended", reason="changed")
        self._count("refresh")
        return answer("ok", access_expires_at=expires_at)

    def _revoke_issued(self, tokens: dict[str, Any]) -> None:
        """Revoke (in the background) the refresh token a token response just issued."""
        new_refresh = tokens.get("refresh_token")
        if isinstance(new_refresh, str) and new_refresh and self.revocation_client:
            self._in_background(self._revoke(new_refresh))

    async def logout(self, request: dict[str, Any]) -> Answer:
        c = self.config
        session_id = request.get("session_id")
        session = None
        if isinstance(session_id, str) and session_id:
            digest = session_digest(session_id)
            pending = self.refreshing.get(digest)
            if pending is not None:
                # A refresh in flight would rotate the refresh token revoked below: let it
                # land first, so the one revoked is the one the server holds.
                await asyncio.shield(pending)
            session = await self.store.load(session_id, time.time())
            await self.store.end(digest, "logout")
        location = c.post_logout_redirect_uri or "/"
        metadata = self.metadata or {}
        end_session = metadata.get("end_session_endpoint")
        if session is not None:
            refresh_token = session.tokens.get("refresh_token")
            if refresh_token and self.revocation_client is not None:
                self._in_background(self._revoke(refresh_token))
            if isinstance(end_session, str) and end_session:
                query = {"client_id": c.client_id}
                id_token = session.tokens.get("id_token")
                if id_token:
                    query["id_token_hint"] = id_token
                if c.post_logout_redirect_uri:
                    query["post_logout_redirect_uri"] = c.post_logout_redirect_uri
                location = (end_session + ("&" if "?" in end_session else "?")
                            + urlencode(query, quote_via=quote))
        self._count("logout")
        return answer("ok", location=location)

    async def fetch(self, request: dict[str, Any]) -> Answer:
        """A worker found no live copy of a session on this node: copy it from the shared
        store (a session made or last used on another node). One node: nothing to copy."""
        session_id = request.get("session_id")
        if isinstance(session_id, str) and await self.store.fetch(session_id):
            return answer("ok")
        return answer("ended", reason="unknown_session")

    async def _revoke(self, refresh_token: str) -> None:
        """RFC 7009, best effort: the session is already over either way."""
        assert self.revocation_client is not None
        try:
            response = await self.revocation_client.post(
                b"token=" + _form(refresh_token) + b"&token_type_hint=refresh_token",
                what="revocation endpoint")
            self._count("revoked" if response.status == 200 else "revoke_failed")
        except IntrospectionError as exc:
            self._count("revoke_failed")
            log.warning("oauth2 login %s: revocation failed (%s)", self.source, exc.reason)

    async def backchannel(self, request: dict[str, Any]) -> Answer:
        """OpenID Connect Back-Channel Logout 1.0 §2.6: verify, then end the sessions."""
        self._ready()
        token = request.get("logout_token")
        if not isinstance(token, str) or not token:
            raise LoginRefused("invalid_request", "no logout_token")
        try:
            claims = await self._verify(self.logout_verifier, token)  # type: ignore[arg-type]
        except TokenError as exc:
            raise LoginRefused(f"logout_token_{exc.reason}", "the logout token is not valid") from None
        events = claims.get("events")
        if not isinstance(events, dict) or not isinstance(events.get(BACKCHANNEL_EVENT), dict):
            raise LoginRefused("logout_token_events", "the logout token has no logout event")
        if "nonce" in claims:
            raise LoginRefused("logout_token_nonce", "a logout token must not carry a nonce")
        iat = claims.get("iat")
        now = time.time()
        if not isinstance(iat, (int, float)) or iat < now - LOGOUT_TOKEN_MAX_AGE - \
                self.config.clockSkewTolerance:
            raise LoginRefused("logout_token_iat", "the logout token is too old")
        sub, sid = _str_or_none(claims.get("sub")), _str_or_none(claims.get("sid"))
        if sub is None and sid is None:
            raise LoginRefused("logout_token_subject", "the logout token names no sid or sub")
        jti = claims.get("jti")
        if not isinstance(jti, str) or not jti:
            raise LoginRefused("logout_token_jti", "the logout token has no jti")
        expires = float(claims.get("exp") or now + LOGOUT_TOKEN_MAX_AGE)
        if not await self.store.remember_jti(self.source, jti,
                                             expires + self.config.clockSkewTolerance):
            raise LoginRefused("logout_token_replayed", "this logout token was already used")
        ended = await self.store.end_matching(self.source, sub=sub, sid=sid,
                                              reason="backchannel")
        self._count("backchannel")
        return answer("ok", ended=ended)

    # ---- plumbing -----------------------------------------------------------------------

    def _in_background(self, coroutine: Any) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self.background.add(task)
        task.add_done_callback(self.background.discard)

    async def handle(self, op: str, payload: bytes) -> Answer:
        """Answer one step asked by a worker; never raises."""
        step = _STEPS.get(op)
        if step is None:
            return answer("refused", reason="unknown_step")
        try:
            request = orjson.loads(payload) if payload else {}
            if not isinstance(request, dict):
                raise ValueError
        except ValueError:
            return answer("refused", reason="bad_request")
        if not self.first_attempt.is_set():
            try:
                async with asyncio.timeout(self.config.timeout):
                    await self.first_attempt.wait()
            except TimeoutError:
                pass
        try:
            return await step(self, request)
        except LoginRefused as exc:
            if exc.reason == "unavailable":
                return answer("unavailable", reason="discovery", message=str(exc))
            self._count(f"refused_{exc.reason}")
            log.info("oauth2 login %s: %s refused (%s)", self.source, op, exc.reason)
            return answer("refused", reason=exc.reason, message=str(exc))
        except IntrospectionError as exc:
            log.warning("oauth2 login %s: %s: %s", self.source, op, exc)
            return answer("unavailable", reason=exc.reason)
        except StoreUnavailable:
            # Counted and logged once per outage by the store; the worker answers 503.
            self._count(f"{op}_store_unavailable")
            return answer("unavailable", reason="session_store")

    def status(self) -> dict[str, Any]:
        return {
            "provider": self.source,
            "issuer": self.config.issuer,
            "client_id": self.config.client_id,
            "discovered": self.metadata is not None,
            "discovery_error": self.discovery_error,
            "refreshing": len(self.refreshing),
            "counts": dict(self.counts),
        }

    async def close(self) -> None:
        if self.discovery_task is not None:
            self.discovery_task.cancel()
        for task in list(self.background):
            task.cancel()
        for client in (self.token_client, self.revocation_client):
            if client is not None:
                await client.close()


_STEPS = {
    "begin": LoginProvider.begin,
    "callback": LoginProvider.callback,
    "refresh": LoginProvider.refresh,
    "logout": LoginProvider.logout,
    "backchannel": LoginProvider.backchannel,
    "fetch": LoginProvider.fetch,
}


def _str_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _expires_at(tokens: dict[str, Any], now: float) -> float:
    """When the access token expires; without ``expires_in`` (RFC 6749 §5.1 makes it
    optional) an hour is assumed, as most servers issue."""
    expires_in = tokens.get("expires_in")
    if isinstance(expires_in, (int, float)) and not isinstance(expires_in, bool) and expires_in > 0:
        return now + float(expires_in)
    return now + 3600.0


def _kept_tokens(tokens: dict[str, Any]) -> dict[str, str]:
    return {name: tokens[name] for name in ("access_token", "refresh_token", "id_token")
            if isinstance(tokens.get(name), str) and tokens[name]}


def _kept_claims(claims: dict[str, Any], tokens: dict[str, Any],
                 requested: list[str]) -> dict[str, Any]:
    kept = {name: claims[name] for name in KEPT_CLAIMS if name in claims}
    scope = tokens.get("scope")
    kept["scope"] = scope if isinstance(scope, str) else " ".join(requested)
    return kept
