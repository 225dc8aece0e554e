"""Quota windows in Redis: the global count of each (quota, window), granted in chunks.

Keys (``prefix`` is ``cluster.prefix``; the hash tag keeps a quota's keys in one Redis
Cluster slot)::

    {<prefix>q:<identity hash>}:<window end>          units granted so far (a string)
    {<prefix>q:<identity hash>}:<window end>:nodes    node name -> units granted to it

Both expire at the window's end plus ``EXPIRY_SLACK`` seconds. The identity hash is the
first 16 bytes of SHA-256 of the quota's identity (``auth/quotas.py``), the same on every
node (a node's quota file tags are keyed by its own salt and are not).

``GRANT`` is the only way units leave a window: one script, so it runs atomically, grants
``min(want, limit - used)`` and adds it to ``used``. Units are never granted twice, so the
units accepted across the cluster never exceed the limit while Redis keeps its data. If
Redis loses a window (restarted empty), a node's next grant finds the per-node record
below what the node knows it was granted and counts those units again first ("repair").
"""

from __future__ import annotations

import hashlib

from fluxgate.cluster.connect import hash_tagged

EXPIRY_SLACK = 60

# KEYS: used, nodes. ARGV: want, limit, expire_at, node ('' : no per-node record),
# units this node was granted in the window so far. Returns {given, used, nodes}.
GRANT = """
local used = tonumber(redis.call('GET', KEYS[1]) or '0')
local node = ARGV[4]
local nodes = 1
if node ~= '' then
  local known = tonumber(redis.call('HGET', KEYS[2], node) or '0')
  local mine = tonumber(ARGV[5])
  if mine > known then
    used = redis.call('INCRBY', KEYS[1], mine - known)
    redis.call('HSET', KEYS[2], node, mine)
    redis.call('EXPIREAT', KEYS[1], ARGV[3])
    redis.call('EXPIREAT', KEYS[2], ARGV[3])
  end
end
local give = math.min(tonumber(ARGV[1]), tonumber(ARGV[2]) - used)
if give < 0 then give = 0 end
if give > 0 then
  used = redis.call('INCRBY', KEYS[1], give)
  if used == give then redis.call('EXPIREAT', KEYS[1], ARGV[3]) end
  if node ~= '' then
    if redis.call('HINCRBY', KEYS[2], node, give) == give then
      redis.call('EXPIREAT', KEYS[2], ARGV[3])
    end
  end
end
if node ~= '' then nodes = redis.call('HLEN', KEYS[2]) end
return {give, used, nodes}
"""

# KEYS: used, nodes. ARGV: units, node. Gives back at most what is counted (for the node).
GIVE_BACK = """
local used = tonumber(redis.call('GET', KEYS[1]) or '0')
local back = math.min(tonumber(ARGV[1]), used)
local known = tonumber(redis.call('HGET', KEYS[2], ARGV[2]) or '0')
back = math.min(back, known)
if back > 0 then
  redis.call('DECRBY', KEYS[1], back)
  redis.call('HINCRBY', KEYS[2], ARGV[2], -back)
end
return back
"""


def identity_hash(identity: bytes) -> bytes:
    """The 16 bytes that name a quota identity in Redis, the same on every node."""
    return hashlib.sha256(identity).digest()[:16]


def window_end(now: float, window: int) -> int:
    """The end (unix seconds) of the ``window``-second quota window that holds ``now``."""
    return (int(now) // window + 1) * window


def window_keys(prefix: str, id_hash: bytes, end: int) -> list[str]:
    """The two keys of one quota window."""
    tag = "q:" + id_hash.hex()
    return [hash_tagged(prefix, tag, str(end)), hash_tagged(prefix, tag, str(end), "nodes")]


class LeaseStore:
    """The grant and give-back scripts on one redis-py client (async or not)."""

    def __init__(self, client, prefix: str, node: str) -> None:
        self.client = client
        self.prefix = prefix
        self.node = node
        self._grant = client.register_script(GRANT)
        self._give_back = client.register_script(GIVE_BACK)

    async def load(self) -> None:
        """With an async client: open a connection and load the grant script, so that the
        first grant does not pay for the handshake and a NOSCRIPT round trip."""
        await self.client.script_load(GRANT)

    def grant(self, id_hash: bytes, end: int, want: int, limit: int, mine: int | None):
        """Ask for ``want`` units of the window ending at ``end``; ``mine``: units this
        node holds of it so far (None: no per-node record, one unit per call). The
        script's answer (given, used, nodes), awaitable with an async client."""
        node = "" if mine is None else self.node
        return self._grant(keys=window_keys(self.prefix, id_hash, end),
                           args=[want, limit, end + EXPIRY_SLACK, node, mine or 0])

    def give_back(self, id_hash: bytes, end: int, units: int):
        """Return ``units`` unspent units of this node's grants (at shutdown)."""
        return self._give_back(keys=window_keys(self.prefix, id_hash, end),
                               args=[units, self.node])
