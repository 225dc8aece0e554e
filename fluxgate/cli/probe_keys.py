"""The ``--probe`` battery for an api_key route (``probe.py`` has the jwt battery, how
probes are sent and how answers are judged): forged, truncated, garbage, empty, doubled,
unknown-but-well-tagged and misplaced keys, a forged key as a bearer token; with ``--api-key``, the valid key as a sanity
probe and a one-character change of it.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from urllib.parse import quote

from fluxgate.auth.keys import PREFIX, TEXT_LEN, mint_key
from fluxgate.cli.probe import INVALID_KEY, MISSING, SANITY, Battery, Probe, Request
from fluxgate.cli.probe_jws import fingerprint


def api_key_probes(b: Battery) -> list[Probe]:
    """The api_key battery, against the route's first api_key entry."""
    names = b.config.api_keys
    # With query keys off, a key sent as ?api_key= (the conventional name) must be refused.
    return api_key_battery(KeySetup(names.header, names.query or "api_key",
                                    names.query is not None and b.entries[0].query,
                                    b.api_key, b.signing_key))


@dataclass
class KeySetup:
    """What the api_key battery is built from."""

    header: str  # api_keys.header
    query: str  # api_keys.query, or the conventional name when query keys are off
    query_accepted: bool  # the route's api_key takes keys from the query string
    key: str | None  # the user's valid key (--api-key), if any
    signing_key: bytes | None  # the gateway's key signing secret, when fluxctl can read it

    def request(self, *keys: str) -> Request:
        return Request([(self.header, k) for k in keys])


def forged_key() -> str:
    """A key of the right shape (prefix, length, alphabet) whose tag cannot match: minted
    under a secret nobody else holds."""
    return mint_key(secrets.token_bytes(32)).text


def _key_probe(name: str, sent: str, k: KeySetup, *keys: str) -> Probe:
    prints = " ".join(fingerprint(key) for key in keys)
    return Probe(name, "api_key", f"{sent} [{prints}]", INVALID_KEY, [k.request(*keys)])


def api_key_battery(k: KeySetup) -> list[Probe]:
    """Every api_key probe."""
    base, what = (k.key, "the valid key") if k.key else (forged_key(), "a forged key")
    probes = [
        _key_probe("forged_key", "fg_ key, right length, random tag", k, forged_key()),
        _key_probe("truncated_key", f"{what} without its last character", k, base[:-1]),
        _key_probe("garbage_key", f"{TEXT_LEN} characters outside the key alphabet", k,
                   PREFIX.decode() + "*" * (TEXT_LEN - len(PREFIX))),
        _key_probe("empty_key", f"an empty {k.header}", k, ""),
        _key_probe("two_keys", f"two {k.header} headers", k, base, forged_key()),
    ]
    # A key is also taken as Authorization: Bearer fg_…, with the same checks.
    bearer = forged_key()
    probes.append(Probe("forged_key_as_bearer", "api_key", "a forged key as Authorization: "
                        f"Bearer [{fingerprint(bearer)}]", INVALID_KEY,
                        [Request([("Authorization", f"Bearer {bearer}")])]))
    if k.signing_key is not None:
        probes.append(_key_probe("unknown_key_valid_tag", "a key signed with the gateway's "
                                 "secret, random id", k, mint_key(k.signing_key).text))
    else:
        probes.append(Probe("unknown_key_valid_tag", "api_key", "-", INVALID_KEY, [],
                            skip="the key signing secret is not readable here"))
    if k.query_accepted:  # the route takes keys there: a forged one must still be refused
        forged = forged_key()
        probes.append(Probe("forged_key_in_query", "api_key", f"a forged key as ?{k.query}= "
                            f"[{fingerprint(forged)}]", INVALID_KEY,
                            [Request(query=f"{quote(k.query)}={forged}")]))
    else:
        probes.append(Probe("key_in_refused_query", "api_key", f"{what} as ?{k.query}= "
                            f"(refused there) [{fingerprint(base)}]", MISSING,
                            [Request(query=f"{quote(k.query)}={quote(base, safe='')}")]))
    if k.key:
        flip = min(20, len(k.key) - 1)
        flipped = k.key[:flip] + ("B" if k.key[flip] != "B" else "C") + k.key[flip + 1:]
        probes[:0] = [Probe("valid_key", "api_key", f"the given key [{fingerprint(k.key)}]",
                            SANITY, [k.request(k.key)])]
        probes.append(_key_probe("flipped_key", "the valid key, one character changed", k,
                                 flipped))
    return probes
