"""The ``--probe`` battery for an oauth2 route (``probe.py`` says how probes are sent and
judged): opaque tokens the authorization server never issued — random, malformed,
oversized, JWT-shaped forgeries, doubled, in the query string — and a flood of random
tokens, then one unknown token repeated (the negative cache must answer the repeats: with
``--admin-url`` the row says how many introspection calls the battery cost). With
``--token``, the valid token as a sanity probe, and the same token with one character
changed. Tokens that the probe cannot mint (expired, inactive, for another audience) are
the authorization server's to issue: pass such a token with ``--token`` and expect a 401.
An entry with ``login: true`` gets the browser login's battery instead (``probe_login.py``).
"""

from __future__ import annotations

import secrets
from typing import Any

from fluxgate.cli.probe import (
    INVALID_TOKEN,
    MALFORMED,
    MISSING,
    OVERSIZED,
    SANITY,
    Battery,
    Probe,
    Request,
)
from fluxgate.cli.probe_jws import fingerprint
from fluxgate.cli.probe_login import login_probes

REPEATS = 20


def _bearer(token: str) -> Request:
    return Request([("Authorization", f"Bearer {token}")])


def _probe(name: str, sent: str, token: str, expect=INVALID_TOKEN, note: str = "") -> Probe:
    return Probe(name, "oauth2", f"{sent} [{fingerprint(token)}]", expect, [_bearer(token)], note)


def _random() -> str:
    return "fluxctl-probe-" + secrets.token_urlsafe(24)


def oauth2_probes(b: Battery) -> list[Probe]:
    """The oauth2 battery, against the route's first oauth2 entry."""
    if b.entries[0].login:
        return login_probes(b, b.entries[0])
    unknown = _random()
    probes = [
        _probe("unknown_token", "a random opaque token the server never issued", unknown),
        _probe("jwt_shaped_forgery", "an unsigned JWT (alg none) as the bearer token",
               "eyJhbGciOiJub25lIn0.eyJzdWIiOiJhZG1pbiIsInNjb3BlIjoiYWRtaW4ifQ.", ),
        _probe("empty_token", "'Bearer' and nothing else", "", MALFORMED),
        _probe("oversized", "a random token of 9,000 bytes", "A" * 9000, OVERSIZED),
        Probe("two_bearer_tokens", "oauth2", "two Authorization headers", INVALID_TOKEN,
              [Request([("Authorization", f"Bearer {_random()}"),
                        ("Authorization", f"Bearer {_random()}")])]),
        Probe("token_in_query", "oauth2", "a random token as ?access_token= (never accepted "
              "there)", MISSING, [Request(query="access_token=" + _random())]),
        Probe("repeated_unknown_token", "oauth2",
              f"one unknown token {REPEATS} times [{fingerprint(unknown)}]", INVALID_TOKEN,
              [_bearer(unknown)] * REPEATS,
              note="answered from the negative cache after the first"),
        Probe("random_token_flood", "oauth2", f"{b.flood} random tokens", INVALID_TOKEN,
              [_bearer(_random()) for _ in range(b.flood)]),
    ]
    if b.token:
        token = b.token
        flip = len(token) // 2
        changed = token[:flip] + ("B" if token[flip] != "B" else "C") + token[flip + 1:]
        probes.insert(0, Probe("valid_token", "oauth2", f"the given token [{fingerprint(token)}]",
                               SANITY, [_bearer(token)]))
        probes.append(_probe("flipped_token", "the valid token, one character changed",
                             changed))
    return probes


def _askable(request: Request) -> str | None:
    """The token a request would make the gateway ask about (one well-formed bearer token),
    else None (refused before any call)."""
    tokens = [v[len("Bearer "):] for k, v in request.headers if k == "Authorization"]
    if len(tokens) != 1 or not 0 < len(tokens[0]) <= 8192:
        return None
    return tokens[0]


def account_introspections(results: list[dict[str, Any]], probes: list[Probe], before: int,
                           after: int | None) -> None:
    """Say on the flood's row how many introspection calls the battery cost; more calls
    than distinct tokens sent means repeats were asked again (no negative cache)."""
    flood = next((r for r in results if r["name"] == "random_token_flood"), None)
    if flood is None or after is None:
        return
    distinct = {t for p in probes if p.method == "oauth2" for r in p.requests
                if (t := _askable(r)) is not None}
    spent = after - before
    flood["introspections"] = {"before": before, "after": after, "distinct_tokens": len(distinct)}
    flood["note"] = (f"introspection calls during the battery: {spent} for {len(distinct)} "
                     "distinct tokens (admin API)")
    if spent > len(distinct) and flood["result"] == "pass":
        flood["result"] = "fail"
        flood["why"] = (f"the battery cost the authorization server {spent} calls for "
                        f"{len(distinct)} distinct tokens: repeats were asked again")
