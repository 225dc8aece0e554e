"""ip_allow on the resolved client address, IPv4 and IPv6."""

from fluxgate.config.schema import IpAllow
from fluxgate.middleware.ip_allow import IpAllowMiddleware
from fluxgate.proxy.protocol import RequestState


def request_from(address: str) -> RequestState:
    req = RequestState(0.0)
    req.client_ip = address
    return req


def test_v4_and_v6_networks():
    mw = IpAllowMiddleware.from_config(IpAllow(cidrs=["10.0.0.0/8", "2001:db8::/32", "127.0.0.1/32"]))
    assert mw(request_from("10.20.30.40")) is None
    assert mw(request_from("127.0.0.1")) is None
    assert mw(request_from("2001:db8:1::7")) is None
    assert mw(request_from("::ffff:10.0.0.9")) is None  # v4-mapped v6 is the v4 client
    for outside in ("11.0.0.1", "127.0.0.2", "2001:db9::1", "::1", "", "garbage"):
        refusal = mw(request_from(outside))
        assert refusal is not None and refusal.status == 403 and refusal.code == "ip_not_allowed"


def test_verdict_cache_is_bounded():
    mw = IpAllowMiddleware.from_config(IpAllow(cidrs=["10.0.0.0/8"]))
    for i in range(70000):
        mw.allows(f"192.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}")
    assert len(mw._verdicts) <= 65536
