"""ip_allow: refuse requests whose resolved client address is outside the listed networks.

The address checked is the one `proxy/forwarded.py` resolved through `trusted_proxies`, so
an untrusted peer cannot talk its way in with a forged X-Forwarded-For.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fluxgate.config.parsers import Path, parse_network
from fluxgate.config.schema import IpAllow
from fluxgate.errors import ClientError, IpNotAllowed
from fluxgate.middleware.kind import ConfigChecker, MiddlewareKind
from fluxgate.proxy.forwarded import parse_ip, parse_networks

if TYPE_CHECKING:
    from fluxgate.proxy.protocol import RequestState

_CACHE_LIMIT = 65536


class IpAllowMiddleware:
    """Allows a request only when its client address is in one of `networks`."""

    __slots__ = ("networks", "_verdicts")

    def __init__(self, networks: tuple) -> None:
        self.networks = networks
        # Address → verdict; clients repeat, and an ip_network walk costs microseconds.
        self._verdicts: dict[str, bool] = {}

    @classmethod
    def from_config(cls, config: IpAllow, gateway: object = None, route: object = None) -> IpAllowMiddleware:
        """Parse the CIDR list once."""
        return cls(parse_networks(config.cidrs))

    def allows(self, address: str) -> bool:
        """True when `address` is inside an allowed network."""
        verdict = self._verdicts.get(address)
        if verdict is None:
            ip = parse_ip(address)
            verdict = ip is not None and any(ip in net for net in self.networks)
            if len(self._verdicts) >= _CACHE_LIMIT:
                self._verdicts.clear()
            self._verdicts[address] = verdict
        return verdict

    def __call__(self, req: RequestState) -> ClientError | None:
        if self.allows(req.client_ip):
            return None
        return IpNotAllowed()


def check(checker: ConfigChecker, entry: IpAllow, path: Path) -> None:
    """Every CIDR parses, host bits clear."""
    for k, cidr in enumerate(entry.cidrs):
        checker.parse(parse_network, cidr, (*path, "cidrs", k))


def describe(entry: IpAllow) -> str:
    """``ip_allow 10.0.0.0/8 ::1/128``."""
    return "ip_allow " + " ".join(entry.cidrs)


# Not authentication: an address is not an identity.
KIND = MiddlewareKind(
    name="ip_allow",
    struct=IpAllow,
    build=IpAllowMiddleware.from_config,
    describe=describe,
    shorthand="cidrs",
    check=check,
)
