"""One worker's request path in-process, for the three route kinds the issues measure.

``scenario(name, workdir)`` builds a Gateway with a shared metrics table (as a worker has),
one client connection and one warm pooled upstream connection on transports that only
collect bytes (tests/support/inprocess.py), and returns a ``Scenario`` whose ``one()``
proxies one request: the client's bytes in, the upstream's response in, the reply out.

* ``public``: a public route.
* ``jwt``: a jwt route (RS256, the e2e bench's key) with one ~600-byte token, so every
  request is a verified-token cache hit (the e2e "1 token" case).
* ``jwt_distinct``: the same route with the e2e bench's 100,000 distinct ~820-byte tokens
  (realistic claims, bench/support/jwt.py) in turn, beyond the verified-token cache: every
  request is a full verification (the e2e "100k tokens" case). ``jwt_distinct_1k``: the
  same with its ~1,760-byte tokens (1 kB of claims).
* ``api_key``: an api_key route over ``API_KEYS`` keys, each with a quota, taken in turn.
* ``api_key_distinct``: an api_key route over a table of ``TABLE_KEYS`` keys, with
  ``DISTINCT_KEYS`` of them (spread over the table) in turn, as bench/bench_keys_scale.py
  sends them; ``api_key_few``: the same table, ``FEW_KEYS`` of its keys in turn. The table's
  state_dir is made once in the cache directory and reused (minting a million keys takes
  minutes, far more under callgrind).

bench/bench_pipeline.py times them; tools/pipeline_instructions.py counts their instructions
under callgrind (a figure the noisy VM cannot move).
"""

from __future__ import annotations

import asyncio
import itertools
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import uvloop

from tests.support.inprocess import CollectingTransport, Wired, wire_gateway

RESPONSE = (
    b"HTTP/1.1 200 OK\r\nContent-Length: 13\r\nContent-Type: text/plain\r\n\r\nhello, world\n"
)
HEAD = b"GET %s HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nUser-Agent: loadgen\r\nAccept: */*\r\n"
API_KEYS = 1000
SCENARIOS = ("public", "jwt", "jwt_distinct", "jwt_distinct_1k", "api_key")
# Over a million-key table (minutes to make the first time): not timed by bench_pipeline.
TABLE_SCENARIOS = ("api_key_distinct", "api_key_few")
TABLE_KEYS = 1_000_000
DISTINCT_KEYS = 100_000
FEW_KEYS = 100
DISTINCT_TOKENS = 100_000
# Bytes of claims JSON of each scenario's distinct tokens: ~820- and ~1,760-byte RS256 tokens.
DISTINCT_PAYLOAD = {"jwt_distinct": 300, "jwt_distinct_1k": 1000}

# One route of each kind, behind the same config (``route``: the route's own lines).
CONFIG = """\
access_log: {access_log}
state_dir: {state_dir}
routes:
  - route: {prefix}
    upstream: http://127.0.0.1:9
{route}"""
PUBLIC_ROUTE = "    public: true\n"
JWT_ROUTE = """\
    middleware:
      - jwt:
          issuer: {issuer}
          audience: {audience}
          jwks_uri: http://127.0.0.1:9/jwks.json
          algorithms: [RS256]
"""
API_KEY_ROUTE = "    middleware:\n      - api_key: {}\n"


def _config(*, state_dir: object, **fields: str) -> str:
    """CONFIG for a scenario. FLUXGATE_BENCH_ACCESS_LOG=text|json turns the access log on,
    into state_dir/access.log, to measure its cost per request against the default (off)."""
    log_format = os.environ.get("FLUXGATE_BENCH_ACCESS_LOG")
    access_log = f"{{format: {log_format}, path: {state_dir}/access.log}}" if log_format else "null"
    return CONFIG.format(access_log=access_log, state_dir=state_dir, **fields)


@dataclass
class Scenario:
    wired: Wired
    one: Callable[[], None]  # proxies one request
    close: Callable[[], None]

    @property
    def client_out(self) -> CollectingTransport:
        return self.wired.client_transport

    @property
    def upstream_out(self) -> CollectingTransport:
        return self.wired.upstream_transport


def scenario(name: str, workdir: Path) -> Scenario:
    """Build one scenario (``SCENARIOS``, ``TABLE_SCENARIOS``) with its state under ``workdir``."""
    from fluxgate.metrics import MetricsTable

    if name not in SCENARIOS + TABLE_SCENARIOS:
        raise ValueError(f"unknown scenario {name!r}")
    loop = uvloop.new_event_loop()
    metrics = MetricsTable.create(str(workdir / f"metrics-{name}.bin"))
    cleanup: list[Callable[[], None]] = [metrics.close, loop.close]
    if name == "public":
        config = _config(state_dir=workdir, prefix="/api", route=PUBLIC_ROUTE)
        wired = wire_gateway(loop, config, metrics=metrics)
        requests = [HEAD % b"/api/items" + b"\r\n"]
    elif name.startswith("jwt"):
        wired, requests = _jwt(loop, metrics, workdir, DISTINCT_PAYLOAD.get(name, 0))
    elif name in TABLE_SCENARIOS:
        rotate = DISTINCT_KEYS if name == "api_key_distinct" else FEW_KEYS
        wired, requests = _api_key_table(loop, metrics, TABLE_KEYS, rotate)
    else:
        wired, requests, close_keys = _api_key(loop, metrics, workdir)
        cleanup.append(close_keys)

    client, upstream = wired.client, wired.upstream
    client_writes, upstream_writes = wired.client_transport.writes, wired.upstream_transport.writes
    next_request = itertools.cycle(requests).__next__

    def one() -> None:
        client.data_received(next_request())
        upstream.data_received(RESPONSE)
        if len(client_writes) > 1024:  # keep the collectors small
            del client_writes[:-1], upstream_writes[:-1]

    def close() -> None:
        for step in cleanup:
            step()

    return Scenario(wired, one, close)


def _jwt(
    loop: asyncio.AbstractEventLoop, metrics: object, workdir: Path, payload: int = 0
) -> tuple[Wired, list[bytes]]:
    from bench.support.jwt import AUDIENCE, ISSUER, bench_key, claims, token_file
    from fluxgate.auth.jwk import build_keyset

    key = bench_key()
    route = JWT_ROUTE.format(issuer=ISSUER, audience=AUDIENCE)
    config = _config(state_dir=workdir, prefix="/jwt", route=route)
    wired = wire_gateway(loop, config, metrics=metrics)
    middleware = wired.gateway.routes[0].chain[0]
    # No master here: install the key set the master would publish.
    middleware.verifier.set_keys(build_keyset([key.jwk()], 1))
    if payload:  # the e2e bench's distinct tokens with this much claims JSON
        head = HEAD % b"/jwt/hello"
        with open(token_file(DISTINCT_TOKENS, payload), "rb") as f:
            return wired, [head + b"Authorization: " + line.rstrip() + b"\r\n\r\n" for line in f]
    token = key.mint(claims(0, int(time.time()) + 3600))
    return wired, [HEAD % b"/jwt/hello" + b"Authorization: Bearer " + token.encode() + b"\r\n\r\n"]


def _api_key(
    loop: asyncio.AbstractEventLoop, metrics: object, workdir: Path
) -> tuple[Wired, list[bytes], Callable[[], None]]:
    from tests.support.keys import KeyState

    state_dir = workdir / "keys-state"
    keys = KeyState(state_dir, quota_capacity=1 << 15)
    plain = [
        keys.generate(f"consumer-{i}", quota=(4_000_000_000, 86400))[1].encode()
        for i in range(API_KEYS)
    ]
    keys.table()  # published where the worker's SharedKeys maps it
    config = _config(state_dir=state_dir, prefix="/keyed", route=API_KEY_ROUTE)
    wired = wire_gateway(loop, config, metrics=metrics)
    requests = [HEAD % b"/keyed/hello" + b"X-API-Key: " + k + b"\r\n\r\n" for k in plain]
    return wired, requests, keys.close


def _api_key_table(
    loop: asyncio.AbstractEventLoop, metrics: object, table_keys: int, rotate: int
) -> tuple[Wired, list[bytes]]:
    """An api_key route over the cached ``table_keys``-key state_dir, ``rotate`` of its keys
    (taken evenly over the table's rows) in turn, in DISTINCT_KEYS distinct requests
    whatever ``rotate`` is (an X-Loadgen-Seq header tells them apart, as loadgen's spread
    does), so that both table scenarios read as many request bytes."""
    state_dir, texts = _key_table_dir(table_keys)
    step = max(len(texts) // rotate, 1)
    config = _config(state_dir=state_dir, prefix="/keyed", route=API_KEY_ROUTE)
    wired = wire_gateway(loop, config, metrics=metrics)
    head = HEAD % b"/keyed/hello" + b"X-API-Key: "
    keys = texts[::step][:rotate]
    return wired, [head + keys[i % len(keys)] + b"\r\nX-Loadgen-Seq: %d\r\n\r\n" % i
                   for i in range(max(DISTINCT_KEYS, len(keys)))]


def _key_table_dir(count: int) -> tuple[Path, list[bytes]]:
    """A state_dir holding ``count`` keys and their published table, and every key's text;
    made once in the cache directory, then reused while its keys are valid."""
    from bench.bench_memory import EXPIRES_IN, load_keys
    from bench.support.jwt import cache_dir
    from fluxgate.auth import keytable as kt
    from fluxgate.auth.keystore import KeyStore
    from fluxgate.auth.quotas import QUOTA_FILE, create_quota_file
    from fluxgate.master.keys import KEEP_DEAD

    state_dir = cache_dir() / f"keys-{count}"
    texts_file = state_dir / "keys.txt"

    def publish() -> None:
        with KeyStore.open(str(state_dir)) as store:
            records = store.for_table(time.time(), KEEP_DEAD)
        usage = kt.UsageFile(str(state_dir / kt.USAGE_FILE), create=True)
        usage.ensure(max(kt.usage_slot(r) for r in records) + 1)
        kt.publish_table(str(state_dir), kt.build_table(
            records, generation=1, usage_slots=usage.slots, quota_tag=None))
        usage.close()

    if texts_file.exists() and texts_file.stat().st_mtime > time.time() - EXPIRES_IN / 2:
        with open(state_dir / kt.TABLE_FILE, "rb") as f:
            version = kt._HEADER.unpack(f.read(kt._HEADER.size))[1]
        if version != kt.KEY_LAYOUT["keytab_version"]:  # made by an older build
            publish()
        return state_dir, texts_file.read_bytes().split()
    if state_dir.exists():
        shutil.rmtree(state_dir)
    state_dir.mkdir(mode=0o700)
    texts = load_keys(str(state_dir), count, count)
    publish()
    create_quota_file(str(state_dir / QUOTA_FILE), 1 << 12)
    tmp = texts_file.with_suffix(".tmp")
    tmp.write_text("".join(f"{t}\n" for t in texts))
    os.replace(tmp, texts_file)
    return state_dir, [t.encode() for t in texts]
