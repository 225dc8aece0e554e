"""``fluxctl auth verify --probe URL``: hostile requests at a live route, each judged against
the statuses and challenges README documents.

``battery`` builds the requests from the route's authentication: each method's kind names
its battery (``MiddlewareKind.probes``). For a jwt route (``jwt_probes``, here) ``alg: none``
in four casings with and without a signature, HS256 MACed with the provider's public key
(RS/HS confusion), keys the provider never published, bad claims,
``jku``/``x5u``/``jwk``/``x5c``/``crit`` headers, a path in ``kid``, wrong part counts,
non-canonical base64url, an oversized token, a token in the query string and a random-kid
flood; for an api_key route (``probe_keys.py``) forged, truncated, garbage, unknown, doubled
and misplaced keys. A route without authentication gets every battery (it should refuse
nothing, so every probe fails: the strict mode says so). ``run`` sends them and ``judge``
decides each answer.

A hostile probe passes on the refusal the contract names — 401 with ``WWW-Authenticate:
Bearer realm="fluxgate"`` (``error="invalid_token"`` for a bad token or key), 400 or 401 for a
malformed token — and fails on a 2xx (let through), a 5xx or anything else. A sanity probe
(a valid ``--token``/``--api-key``) passes on a 2xx.

Network: requests go to the URL given and nowhere else (one kept-alive connection, a timeout
per request, a second try only on a fresh connection when a kept-alive one was closed under
it), plus the route's identity provider for its JWKS (``probe_jws.provider_keys``). Hostile
``jku``/``x5u`` values name a loopback port nobody serves, so even a gateway that follows
them reaches nothing. Results name tokens and keys by a fingerprint only.
"""

from __future__ import annotations

import http.client
import secrets
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any
from urllib.parse import quote, urlsplit

import orjson

from fluxgate.cli.jws import b64, part
from fluxgate.cli.probe_jws import (
    Forger,
    ProviderKeys,
    claims_for,
    decode_payload,
    fingerprint,
    generate_key,
    provider_keys,
)
from fluxgate.config import schema
from fluxgate.errors import FluxGateError
from fluxgate.middleware import KINDS, auth_methods, kind_of

REQUEST_TIMEOUT = 5.0
FLOOD_DEFAULT, FLOOD_MAX = 50, 1000
# Port 9 (discard) on loopback: a gateway that wrongly follows a hostile jku/x5u reaches
# nothing off this machine.
LOOPBACK_KEYS = "http://127.0.0.1:9/jwks.json"
OTHER_AUDIENCE = "fluxctl-probe-other-api"
NONE_CASINGS = ("none", "None", "NONE", "nOnE")
# JWKS fetches a whole battery may cause: one unknown-kid refresh (at most one per 30 s per
# provider, docs/jwt.md) and one periodic poll falling inside it.
MAX_BATTERY_FETCHES = 2
_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


class ProbeError(FluxGateError):
    """The probe cannot run (bad URL, gateway unreachable, a route that refuses the method)."""


# ---- what is expected, what came back -------------------------------------------------------


@dataclass(frozen=True)
class Expect:
    """The refusal a probe must get (empty ``statuses``: a 2xx, for a sanity probe)."""

    statuses: tuple[int, ...]
    codes: tuple[str, ...]
    challenge: str = ""  # what a 401's WWW-Authenticate must contain (RFC 6750 §3)

    def describe(self) -> str:
        """``401 invalid_token``; alternatives as ``or 400 bad_request``; ``2xx``."""
        if not self.statuses:
            return "2xx"
        pairs = [f"{s} {c}" for s, c in zip(self.statuses, self.codes, strict=True)]
        return " or ".join(pairs)

    def or_ip_refused(self) -> Expect:
        """Also accept the ip_allow refusal that comes before authentication."""
        if not self.statuses:
            return self
        return Expect((*self.statuses, 403), (*self.codes, "ip_not_allowed"), self.challenge)


# Statuses and codes pair up: 401 invalid_token, or 400 bad_request for a
# request the gateway's parser refuses before any middleware sees it.
SANITY = Expect((), ())
# No credential: the route's own challenge (Bearer, or ApiKey naming the key's header).
MISSING = Expect((401,), ("missing_credentials",), 'realm="fluxgate"')
INVALID_TOKEN = Expect((401,), ("invalid_token",), 'error="invalid_token"')
MALFORMED = Expect((401, 400), ("invalid_token", "bad_request"), 'error="invalid_token"')
OVERSIZED = Expect((401, 431), ("invalid_token", "headers_too_large"), 'error="invalid_token"')
INVALID_KEY = Expect((401,), ("invalid_key",), 'error="invalid_key"')


@dataclass(frozen=True)
class Answer:
    status: int | None  # None: no answer (``failure`` says why)
    error: str | None = None
    challenge: str | None = None
    failure: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"status": self.status, "error": self.error, "failure": self.failure}


def judge(expect: Expect, answer: Answer) -> str | None:
    """Why ``answer`` fails ``expect``, or None when it passes."""
    status = answer.status
    if status is None:
        return f"no answer: {answer.failure}"
    if not expect.statuses:
        return None if 200 <= status < 300 else "a valid credential was not let through"
    if 200 <= status < 300:
        return "let through to the upstream"
    if status >= 500:
        return "a server error for what a client sent (fail closed with a 4xx)"
    if (status, answer.error) not in zip(expect.statuses, expect.codes, strict=True):
        return f"expected {expect.describe()}"
    if status == 401 and expect.challenge not in (answer.challenge or ""):
        return f"a 401 without WWW-Authenticate: {expect.challenge} (RFC 6750 §3)"
    return None


# ---- the battery ----------------------------------------------------------------------------


@dataclass
class Request:
    headers: list[tuple[str, str]] = field(default_factory=list)
    query: str = ""  # added to the endpoint's query string


@dataclass
class Probe:
    name: str
    method: str  # the credential kind it tests: jwt, api_key, or "-" (none sent)
    sent: str  # what was sent, in words; credentials by fingerprint only
    expect: Expect
    requests: list[Request]
    note: str = ""
    skip: str = ""  # why it is not sent
    # A probe that sends its own requests (other paths, methods, cookies: the browser
    # login's) and judges each answer itself: (answer, why it fails or None) per request.
    runner: Callable[[Target], list[tuple[Answer, str | None]]] | None = None


def _bearer(token: str) -> Request:
    return Request([("Authorization", f"Bearer {token}")])


def _token_probe(name: str, sent: str, token: str, expect: Expect = INVALID_TOKEN,
                 note: str = "") -> Probe:
    return Probe(name, "jwt", f"{sent} [{fingerprint(token)}]", expect, [_bearer(token)], note)


def _unsigned(header: dict[str, Any], claims: dict[str, Any], signature: str = "") -> str:
    return f"{part(header)}.{part(claims)}.{signature}"


@dataclass
class JwtSetup:
    """What the jwt battery is built from."""

    jwt: schema.Jwt
    forger: Forger
    provider: ProviderKeys
    token: str | None  # the user's valid token (--token), if any
    flood: int

    @property
    def kid(self) -> str:
        return self.provider.kid or "fluxctl-probe"

    def forged(self, kid: str | None = None, header: dict[str, Any] | None = None,
               **claims: Any) -> str:
        """A token the route would accept but for its signer: a key nobody published."""
        return self.forger.token({"kid": kid or self.kid, **(header or {})},
                                 claims_for(self.jwt, **claims))

    @cached_property
    def offered(self) -> Forger:
        """The key a jwk/x5c header offers: the forger's, or an RSA one when the route
        only takes HS* (a shared secret has no public half to offer)."""
        if not self.forger.alg.startswith("HS"):
            return self.forger
        return Forger("RS256", generate_key("RS256"))

    @cached_property
    def base(self) -> tuple[str, str]:
        """The token the malformed variants are made of, and its name: the valid one when
        given (a lenient parser would accept it), else a forged one."""
        return (self.token, "the valid token") if self.token else (self.forged(), "a forged token")


def _alg_none(s: JwtSetup) -> list[Probe]:
    claims = claims_for(s.jwt)
    probes = []
    for alg in NONE_CASINGS:
        token = _unsigned({"alg": alg, "typ": "JWT"}, claims)
        probes.append(_token_probe(f"alg_{alg}", f'alg "{alg}", empty signature', token))
    for alg in NONE_CASINGS:
        token = _unsigned({"alg": alg, "typ": "JWT"}, claims, b64(secrets.token_bytes(32)))
        probes.append(_token_probe(f"alg_{alg}_signed", f'alg "{alg}", a signature part', token))
    return probes


def _key_confusion(s: JwtSetup) -> list[Probe]:
    kid, pem, der, note = s.provider.confusion_secrets()
    claims = claims_for(s.jwt)
    header = {"kid": kid} if kid else {}
    return [
        _token_probe("hs256_public_key_pem", "HS256 MACed with the provider's public key PEM",
                     s.forger.token(header, claims, alg="HS256", key=pem), note=note),
        _token_probe("hs256_public_key_der", "HS256 MACed with the public key's DER",
                     s.forger.token(header, claims, alg="HS256", key=der), note=note),
    ]


def _forged_keys(s: JwtSetup) -> list[Probe]:
    untrusted = "untrusted signer: proves refusal, not the claim check (see --token)"
    now = int(time.time())
    return [
        _token_probe("forged_key_known_kid", f"{s.forger.alg} by an unpublished key, "
                     "the provider's kid", s.forged()),
        _token_probe("forged_key_new_kid", f"{s.forger.alg} by an unpublished key, a new kid",
                     s.forged(kid="fluxctl-" + secrets.token_hex(6))),
        _token_probe("expired", "exp an hour ago", s.forged(exp=now - 3600, iat=now - 7200),
                     note=untrusted),
        _token_probe("not_yet_valid", "nbf in an hour", s.forged(nbf=now + 3600), note=untrusted),
        _token_probe("wrong_issuer", "another iss", s.forged(iss="https://issuer.invalid"),
                     note=untrusted),
        _token_probe("wrong_audience", "another aud", s.forged(aud=OTHER_AUDIENCE),
                     note=untrusted),
    ]


def _tampered(token: str, **claims: Any) -> str:
    """``token`` with its payload replaced and its original signature kept."""
    header, _, signature = token.split(".")
    payload = {**(decode_payload(token) or {}), **claims}
    return f"{header}.{part(payload)}.{signature}"


def _valid_token(s: JwtSetup) -> list[Probe]:
    if s.token is None:
        return []
    probes = [_token_probe("valid_token", "the given token", s.token, SANITY)]
    if decode_payload(s.token) is None:
        reason = "the given token is not a compact JWS"
        return probes + [Probe(n, "jwt", "-", INVALID_TOKEN, [], skip=reason)
                         for n in ("tampered_exp", "tampered_aud")]
    now = int(time.time())
    return probes + [
        _token_probe("tampered_exp", "the valid token, exp set in the past, same signature",
                     _tampered(s.token, exp=now - 3600)),
        _token_probe("tampered_aud", "the valid token, another aud, same signature",
                     _tampered(s.token, aud=OTHER_AUDIENCE)),
    ]


def _header_tricks(s: JwtSetup) -> list[Probe]:
    own_keys = "signed by the probe's key, which the header offers"
    offered, claims = s.offered, claims_for(s.jwt)
    return [
        _token_probe("jku_loopback", f"jku {LOOPBACK_KEYS}", s.forged(header={"jku": LOOPBACK_KEYS}),
                     note=own_keys),
        _token_probe("x5u_loopback", "x5u http://127.0.0.1:9/cert.pem",
                     s.forged(header={"x5u": "http://127.0.0.1:9/cert.pem"}), note=own_keys),
        _token_probe("jwk_embedded", "the probe's public key in a jwk header",
                     offered.token({"kid": s.kid, "jwk": offered.public_jwk()}, claims),
                     note=own_keys),
        _token_probe("x5c_embedded", "a self-signed certificate in x5c",
                     offered.token({"kid": s.kid, "x5c": [offered.self_signed_cert()]}, claims),
                     note=own_keys),
        _token_probe("crit_unknown", 'crit ["urn:fluxctl:probe"]',
                     s.forged(header={"crit": ["urn:fluxctl:probe"], "urn:fluxctl:probe": True}),
                     note="signed by an untrusted key too: the refusal may be the signature's"),
        _token_probe("kid_path_traversal", 'kid "../../etc/passwd"',
                     s.forged(kid="../../etc/passwd")),
        _token_probe("kid_dev_null_hmac", 'HS256 with an empty secret, kid "../../../dev/null"',
                     s.forger.token({"kid": "../../../../../../dev/null"}, claims,
                                    alg="HS256", key=b"")),
    ]


def _bump(char: str) -> str:
    return _ALPHABET[(_ALPHABET.index(char) + 1) % 64] if char in _ALPHABET else "A"


def _malformed(s: JwtSetup) -> list[Probe]:
    token, what = s.base
    h, p, sig = (token.split(".") + ["", ""])[:3]
    std = token.replace("-", "+").replace("_", "/")
    if std == token:
        std = token[:-2] + "+/"
    big = s.forged(pad="x" * (s.jwt.max_token_bytes + 512))
    return [
        _token_probe("two_parts", f"{what} without its signature part", f"{h}.{p}", MALFORMED),
        _token_probe("four_parts", f"{what} and a fourth part", f"{token}.{p}", MALFORMED),
        _token_probe("five_parts", f"{what} and two more parts", f"{token}.{h}.{p}", MALFORMED),
        _token_probe("padded_signature", f"{what}, '==' after the signature", token + "==",
                     MALFORMED),
        _token_probe("standard_base64", f"{what} in the +/ alphabet", std, MALFORMED),
        _token_probe("non_canonical_base64", f"{what}, the signature's unused bits set",
                     f"{h}.{p}.{sig[:-1]}{_bump(sig[-1:] or 'A')}", MALFORMED),
        _token_probe("oversized", f"a forged token of {len(big)} bytes "
                     f"(max_token_bytes {s.jwt.max_token_bytes})", big, OVERSIZED),
        Probe("two_bearer_tokens", "jwt", "two Authorization headers", INVALID_TOKEN,
              [Request([("Authorization", f"Bearer {token}"),
                        ("Authorization", f"Bearer {s.forged()}")])]),
    ]


def _query_token(s: JwtSetup) -> list[Probe]:
    token, what = s.base
    if s.jwt.query is None:
        return [Probe("token_in_query", "jwt", f"{what} as ?access_token= (not accepted "
                      f"there) [{fingerprint(token)}]", MISSING,
                      [Request(query="access_token=" + quote(token, safe=""))])]
    forged = s.forged()
    return [Probe("forged_token_in_query", "jwt", f"a forged token as ?{s.jwt.query}= "
                  f"[{fingerprint(forged)}]", INVALID_TOKEN,
                  [Request(query=f"{quote(s.jwt.query)}={forged}")])]


def _kid_flood(s: JwtSetup) -> Probe:
    tokens = [s.forged(kid="fluxctl-" + secrets.token_urlsafe(9)) for _ in range(s.flood)]
    return Probe("random_kid_flood", "jwt", f"{s.flood} forged tokens, each with a random kid",
                 INVALID_TOKEN, [_bearer(t) for t in tokens])


def jwt_battery(s: JwtSetup) -> list[Probe]:
    """Every jwt probe, the flood last."""
    return [*_alg_none(s), *_key_confusion(s), *_forged_keys(s), *_valid_token(s),
            *_header_tricks(s), *_malformed(s), *_query_token(s), _kid_flood(s)]


@dataclass(frozen=True)
class Battery:
    """What a kind's ``probes`` builds its battery from."""

    config: schema.Config
    entries: list[Any]  # the route's entries of the kind; a default one when it has no auth
    authenticated: bool  # False: a route without authentication (no provider to ask)
    token: str | None  # --token
    api_key: str | None  # --api-key
    flood: int
    signing_key: bytes | None  # the gateway's key signing secret, when fluxctl can read it


def jwt_probes(b: Battery) -> list[Probe]:
    """The jwt battery, against the route's first jwt entry (several all run: the first
    one refuses first)."""
    jwt = b.entries[0]
    provider = (provider_keys(jwt, REQUEST_TIMEOUT) if b.authenticated
                else ProviderKeys([], "no identity provider configured"))
    return jwt_battery(JwtSetup(jwt, Forger.for_route(jwt), provider, b.token, b.flood))


def battery(config: schema.Config, route: schema.Route, *, token: str | None = None,
            api_key: str | None = None, flood: int = FLOOD_DEFAULT,
            signing_key: bytes | None = None) -> list[Probe]:
    """The probes for ``route``: no credential, then the battery of each auth method it
    takes (every kind's that has one when it takes none). Probes a route's ip_allow may
    answer first accept its 403 too."""
    for option, value in (("--token", token), ("--api-key", api_key)):
        if value is not None and not _header_safe(value):
            # Never echo it: a credential pasted with a line break is still a credential.
            raise ProbeError(f"{option} must be the credential alone: printable ASCII with no "
                             "space or line break")
    methods = list(auth_methods(route))
    probes = [Probe("no_credential", "-", "no Authorization, no API key", MISSING, [Request()])]
    for kind in KINDS.values():
        if kind.probes is None:
            continue
        entries = [m for m in methods if kind_of(m) is kind]
        if not methods:  # a public route: show that it lets every hostile request through
            entries = [kind.struct()]
        if entries:
            probes += kind.probes(Battery(config, entries, bool(methods), token, api_key, flood,
                                          signing_key))
    if sum(p.name == "no_credential" for p in probes) > 1:
        # A battery that brings its own (a browser login answers 401 login_required, not
        # a bearer challenge) replaces the default one.
        probes.pop(0)
    if any(kind_of(m).name == "ip_allow" for m in route.middleware):
        for probe in probes:
            probe.expect = probe.expect.or_ip_refused()
    return probes


def _header_safe(value: str) -> bool:
    """Can ``value`` be sent as (part of) a header value as it is (RFC 9110 §5.5 visible
    characters, no whitespace)?"""
    return value != "" and all("!" <= c <= "~" for c in value)


# ---- sending and judging --------------------------------------------------------------------


class Target:
    """``METHOD URL+endpoint`` over one kept-alive connection (http.client)."""

    def __init__(self, url: str, method: str, endpoint: str,
                 timeout: float = REQUEST_TIMEOUT) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname or parts.query:
            raise ProbeError(f"--probe must be the gateway's base URL, e.g. "
                             f"http://127.0.0.1:8080, got {url!r}")
        try:
            self.port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError:
            raise ProbeError(f"invalid port in --probe {url!r}") from None
        self.https = parts.scheme == "https"
        self.host = parts.hostname
        self.url = url
        self.method = method
        self.path = parts.path.rstrip("/") + endpoint
        self.timeout = timeout
        self._conn: http.client.HTTPConnection | None = None

    def _connection(self) -> tuple[http.client.HTTPConnection, bool]:
        if self._conn is not None:
            return self._conn, True
        cls = http.client.HTTPSConnection if self.https else http.client.HTTPConnection
        self._conn = cls(self.host, self.port, timeout=self.timeout)
        return self._conn, False

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def send(self, request: Request) -> Answer:
        """One request; a kept-alive connection the server closed meanwhile is replaced
        once, never more."""
        sep = "&" if "?" in self.path else "?"
        target = self.path + (sep + request.query if request.query else "")
        for _ in range(2):
            conn, reused = self._connection()
            try:
                return self._exchange(conn, target, request.headers)
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError) as exc:
                self.close()
                if not reused:
                    return Answer(None, failure=str(exc) or type(exc).__name__)
            except (OSError, http.client.HTTPException) as exc:
                self.close()
                return Answer(None, failure=str(exc) or type(exc).__name__)
            except ValueError:  # http.client refused a header; its message quotes the value
                self.close()
                return Answer(None, failure="a header value http.client cannot send")
        return Answer(None, failure="connection closed")

    def _exchange(self, conn: http.client.HTTPConnection, target: str,
                  headers: list[tuple[str, str]]) -> Answer:
        conn.putrequest(self.method, target, skip_accept_encoding=True)
        conn.putheader("Accept", "application/json")
        conn.putheader("User-Agent", "fluxctl-probe")
        for name, value in headers:  # putheader: repeated names stay repeated
            conn.putheader(name, value)
        if self.method in ("POST", "PUT", "PATCH"):
            conn.putheader("Content-Length", "0")
        conn.endheaders()
        resp = conn.getresponse()
        body = resp.read()
        if resp.will_close:
            self.close()
        return Answer(resp.status, _error_code(body), resp.getheader("WWW-Authenticate"))


def _error_code(body: bytes) -> str | None:
    try:
        doc = orjson.loads(body)
    except ValueError:
        return None
    error = doc.get("error") if isinstance(doc, dict) else None
    return error if isinstance(error, str) else None


def _result(probe: Probe, answers: Counter[Answer], failures: list[str]) -> dict[str, Any]:
    return {
        "name": probe.name, "method": probe.method, "sent": probe.sent,
        "expected": probe.expect.describe(), "requests": sum(answers.values()),
        # Alike answers counted once each (a flood's fifty 401s are one entry).
        "got": [{**a.to_dict(), "count": n} for a, n in answers.items()],
        "result": "fail" if failures else "pass",
        "why": failures[0] if failures else None, "note": probe.note or None,
    }


def run_probe(target: Target, probe: Probe) -> dict[str, Any]:
    """Send one probe's requests; a transport failure stops a multi-request probe."""
    if probe.skip:
        return {**_result(probe, Counter(), []), "result": "skip", "note": probe.skip}
    answers: Counter[Answer] = Counter()
    failures: list[str] = []
    if probe.runner is not None:
        for answer, why in probe.runner(target):
            answers[answer] += 1
            if why:
                failures.append(why)
        return _result(probe, answers, failures)
    for request in probe.requests:
        answer = target.send(request)
        # The challenge only matters to the judge: alike answers are counted together.
        answers[Answer(answer.status, answer.error, failure=answer.failure)] += 1
        why = judge(probe.expect, answer)
        if why:
            failures.append(why)
        if answer.status is None:
            break
    result = _result(probe, answers, failures)
    if any(a["error"] == "ip_not_allowed" for a in result["got"]):
        # A pass, but the credential check was never reached: say so.
        result["note"] = ("refused by ip_allow before authentication: probe from an allowed "
                          "address to test the credential check")
    return result


def run(target: Target, probes: list[Probe],
        jwks_fetches: Callable[[], int | None] | None = None,
        introspections: Callable[[], int | None] | None = None) -> dict[str, Any]:
    """Send every probe and judge it. The first answer proves the gateway is there
    (ProbeError if not). With ``jwks_fetches`` (the admin API's count of the provider's
    JWKS fetches), the flood's row also says what the whole battery cost the provider;
    with ``introspections`` (its count of calls to the authorization server), what it cost
    that server."""
    before = jwks_fetches() if jwks_fetches else None
    calls_before = introspections() if introspections else None
    results = []
    try:
        for probe in probes:
            row = run_probe(target, probe)
            if not results and row["got"] and row["got"][0]["status"] is None:
                # The first probe had no answer: is anybody there at all?
                raise ProbeError(f"cannot reach {target.url}: {row['why']}")
            results.append(row)
    finally:
        target.close()
    if before is not None and jwks_fetches is not None:
        time.sleep(1.0)  # the master looks at refresh requests 4x a second
        _account_fetches(results, before, jwks_fetches())
    if calls_before is not None and introspections is not None:
        from fluxgate.cli.probe_oauth2 import account_introspections  # it imports this module

        time.sleep(0.2)  # the last answers are counted as they are published
        account_introspections(results, probes, calls_before, introspections())
    counts = Counter(r["result"] for r in results)
    return {
        "url": target.url, "request": f"{target.method} {target.path}",
        "probes": results,
        "summary": {"pass": counts["pass"], "fail": counts["fail"], "skip": counts["skip"],
                    "requests": sum(r["requests"] for r in results)},
    }


def _account_fetches(results: list[dict[str, Any]], before: int, after: int | None) -> None:
    flood = next((r for r in results if r["name"] == "random_kid_flood"), None)
    if flood is None or after is None:
        return
    spent = after - before
    flood["jwks_fetches"] = {"before": before, "after": after}
    flood["note"] = f"JWKS fetches during the battery: {spent} (admin API)"
    if spent > MAX_BATTERY_FETCHES and flood["result"] == "pass":
        flood["result"] = "fail"
        flood["why"] = (f"the battery cost the identity provider {spent} JWKS fetches "
                        f"(at most {MAX_BATTERY_FETCHES} expected: one refresh per 30 s)")
