"""OIDC Back-Channel Logout 1.0 logout tokens signed with the test authorization server's own
key (DOT does not send them), and the hostile variants a relying party must refuse.

    tokens = LogoutTokens.for_server(server, client)           # iss, aud, the AS's key
    session = server.op_session("alice")
    good = tokens.valid(sub=session["sub"], sid=session["sid"])
    status, _, _ = post_logout_token(gateway_url + "/.fluxgate/backchannel-logout", good, ca)
    for name, token in tokens.hostile(sub=..., sid=...).items(): ...   # each must be refused
    tokens.valid(sid=..., jti=claims_of(good)["jti"])          # a replay of good's jti

Section 2.4 of the specification: iss, aud, iat, exp, jti, events with the member
``http://schemas.openid.net/event/backchannel-logout`` (an empty object), sub and/or sid,
and no nonce; the header's typ is ``logout+jwt`` (section 2.4, explicit typing).
"""

from __future__ import annotations

import base64
import http.client
import json
import ssl
import time
import urllib.parse
import uuid
from dataclasses import dataclass
from typing import Any

from tests.support.tokens import SigningKey, b64

BACKCHANNEL_LOGOUT_EVENT = "http://schemas.openid.net/event/backchannel-logout"


@dataclass
class LogoutTokens:
    """Mints logout tokens as ``issuer`` would for the relying party ``audience``."""

    key: SigningKey
    issuer: str
    audience: str
    lifetime: int = 120

    @classmethod
    def for_server(cls, server: Any, client: Any) -> LogoutTokens:
        """Tokens from a DjangoAuthServer to one of its LoginClients (or a client_id)."""
        audience = client if isinstance(client, str) else client.client_id
        return cls(server.signing_key, server.issuer, audience)

    def claims(self, *, sub: str | None = None, sid: str | None = None,
               **overrides: Any) -> dict[str, Any]:
        """A valid claim set; an override of None removes that claim."""
        if sub is None and sid is None:
            raise ValueError("a logout token names sub, sid or both")
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": self.issuer, "aud": self.audience, "iat": now, "exp": now + self.lifetime,
            "jti": uuid.uuid4().hex, "events": {BACKCHANNEL_LOGOUT_EVENT: {}}}
        if sub is not None:
            claims["sub"] = sub
        if sid is not None:
            claims["sid"] = sid
        claims.update(overrides)
        return {k: v for k, v in claims.items() if v is not None}

    def sign(self, claims: dict[str, Any], *, key: SigningKey | None = None,
             header: dict[str, Any] | None = None) -> str:
        """Sign ``claims`` as they are (RS256, the server's kid, typ logout+jwt)."""
        key = key or self.key
        return key.mint(claims, header={"kid": self.key.kid, "typ": "logout+jwt",
                                        **(header or {})})

    def valid(self, *, sub: str | None = None, sid: str | None = None,
              **overrides: Any) -> str:
        """A logout token the relying party must accept (unless overrides make it not)."""
        return self.sign(self.claims(sub=sub, sid=sid, **overrides))

    def hostile(self, *, sub: str | None = None, sid: str | None = None) -> dict[str, str]:
        """Tokens the relying party must refuse, by what is wrong with them; none of them
        may end a session."""
        def bad(**overrides: Any) -> str:
            return self.valid(sub=sub, sid=sid, **overrides)

        good_claims = self.claims(sub=sub, sid=sid)
        other_key = SigningKey.generate("RS256", kid=self.key.kid)
        now = int(time.time())
        return {
            "bad_signature": self.sign(good_claims, key=other_key),
            "tampered_payload": _swap_payload(self.valid(sub=sub, sid=sid),
                                              {**good_claims, "sub": "someone-else"}),
            "nonce_present": bad(nonce="n-0S6_WzA2Mj"),
            "events_missing": bad(events=None),
            "events_wrong_member": bad(events={"http://schemas.openid.net/event/other": {}}),
            "events_not_an_object": bad(events=[BACKCHANNEL_LOGOUT_EVENT]),
            "event_not_an_object": bad(events={BACKCHANNEL_LOGOUT_EVENT: "yes"}),
            "sub_and_sid_missing": self.sign({k: v for k, v in good_claims.items()
                                              if k not in ("sub", "sid")}),
            "wrong_issuer": bad(iss="https://impostor.example"),
            "wrong_audience": bad(aud="someone-else"),
            "iat_missing": bad(iat=None),
            "jti_missing": bad(jti=None),
            "expired": bad(iat=now - 600, exp=now - 300),
            "issued_in_the_future": bad(iat=now + 3600, exp=now + 7200),
            "alg_none": _unsigned(good_claims, self.key.kid),
            "alg_hs256_with_public_key": _hs256_with_public_key(good_claims, self.key),
            "not_a_jwt": "not.a.jwt",
        }


def claims_of(token: str) -> dict[str, Any]:
    """The payload of a compact JWT, unverified (for a test to read its jti)."""
    payload = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))


def _swap_payload(token: str, claims: dict[str, Any]) -> str:
    head, _, sig = token.split(".")
    body = b64(json.dumps(claims, separators=(",", ":")).encode())
    return f"{head}.{body}.{sig}"


def _unsigned(claims: dict[str, Any], kid: str | None) -> str:
    head = b64(json.dumps({"alg": "none", "typ": "logout+jwt", "kid": kid}).encode())
    return f"{head}.{b64(json.dumps(claims).encode())}."


def _hs256_with_public_key(claims: dict[str, Any], key: SigningKey) -> str:
    """The algorithm-confusion attack: HMAC keyed with the RSA public key's PEM."""
    forged = SigningKey("HS256", key.kid, key.public_pem())
    return forged.mint(claims, header={"typ": "logout+jwt"})


def post_logout_token(url: str, token: str, ca: Any = None,
                      timeout: float = 10) -> tuple[int, http.client.HTTPMessage, bytes]:
    """POST ``logout_token`` as the OP does (form-encoded, section 2.5); the status, headers
    and body. ``ca``: a trustme.CA or SSLContext for an https endpoint."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme == "https":
        context = ca if isinstance(ca, ssl.SSLContext) else ssl.create_default_context()
        if ca is not None and not isinstance(ca, ssl.SSLContext):
            ca.configure_trust(context)
        conn: http.client.HTTPConnection = http.client.HTTPSConnection(
            parts.hostname, parts.port, timeout=timeout, context=context)
    else:
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    path = parts.path + (f"?{parts.query}" if parts.query else "")
    try:
        conn.request("POST", path, urllib.parse.urlencode({"logout_token": token}),
                     {"Content-Type": "application/x-www-form-urlencoded"})
        response = conn.getresponse()
        return response.status, response.headers, response.read()
    finally:
        conn.close()
