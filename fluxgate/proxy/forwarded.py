"""Who is the client? X-Forwarded-For is believed only from trusted proxies.

RFC 7239 §5.2 / de-facto X-Forwarded-For: each proxy appends the address it received the
request from. Walking the list from the right and stopping at the first address that is not
a trusted proxy gives the client address that no untrusted party could forge.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from functools import lru_cache

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_networks(items: Iterable[str]) -> tuple[Network, ...]:
    """CIDR strings (or bare addresses) → networks; raises ValueError on bad input."""
    return tuple(ipaddress.ip_network(item.strip(), strict=True) for item in items)


@lru_cache(maxsize=4096)
def parse_ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """Parse one address (IPv4-mapped IPv6 collapses to IPv4); None when it is not one."""
    try:
        addr = ipaddress.ip_address(text.strip())
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


class ClientAddressResolver:
    """Resolves the client address from the peer address and X-Forwarded-For."""

    __slots__ = ("_trusted", "_cache")

    def __init__(self, trusted_proxies: Iterable[str]) -> None:
        self._trusted = parse_networks(trusted_proxies)
        self._cache: dict[str, bool] = {}

    def is_trusted(self, address: str) -> bool:
        """True when `address` lies in one of the trusted proxy networks."""
        if not self._trusted:
            return False
        known = self._cache.get(address)
        if known is not None:
            return known
        ip = parse_ip(address)
        result = ip is not None and any(ip in net for net in self._trusted)
        if len(self._cache) < 65536:
            self._cache[address] = result
        return result

    def resolve(self, peer: str, forwarded_for: bytes | None) -> tuple[str, bool]:
        """Return (client address, peer_is_trusted)."""
        if forwarded_for is None or not self.is_trusted(peer):
            return peer, False
        hops = [h.strip() for h in forwarded_for.decode("latin-1").split(",")]
        for hop in reversed(hops):
            if not hop:
                continue
            ip = parse_ip(hop)
            if ip is None:
                # A garbled hop from a trusted chain: stop at the last address we can trust.
                return peer, True
            if not self.is_trusted(str(ip)):
                return str(ip), True
            peer = str(ip)
        return peer, True
