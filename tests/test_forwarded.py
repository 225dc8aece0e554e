"""Client address resolution through trusted proxies (X-Forwarded-For)."""

import pytest

from fluxgate.proxy.forwarded import ClientAddressResolver, parse_ip


def test_untrusted_peer_header_ignored():
    resolver = ClientAddressResolver(["10.0.0.0/8"])
    assert resolver.resolve("192.0.2.1", b"10.1.1.1") == ("192.0.2.1", False)
    assert resolver.resolve("192.0.2.1", None) == ("192.0.2.1", False)


def test_trusted_chain_walked_from_the_right():
    resolver = ClientAddressResolver(["10.0.0.0/8", "fd00::/8"])
    # client, then two trusted hops: the client is the first untrusted from the right
    assert resolver.resolve("10.0.0.1", b"203.0.113.9, 10.2.2.2") == ("203.0.113.9", True)
    # a forged left-most entry does not win over the real last untrusted hop
    assert resolver.resolve("10.0.0.1", b"10.9.9.9, 198.51.100.7") == ("198.51.100.7", True)
    assert resolver.resolve("fd00::1", b"2001:db8::5") == ("2001:db8::5", True)


def test_all_trusted_gives_left_most_and_garbage_stops():
    resolver = ClientAddressResolver(["10.0.0.0/8"])
    assert resolver.resolve("10.0.0.1", b"10.3.3.3, 10.2.2.2") == ("10.3.3.3", True)
    assert resolver.resolve("10.0.0.1", b"not-an-ip") == ("10.0.0.1", True)
    assert resolver.resolve("10.0.0.1", b"1.2.3.4, ,") == ("1.2.3.4", True)


@pytest.mark.parametrize(
    "text, expected",
    [("127.0.0.1", "127.0.0.1"), ("::ffff:10.0.0.1", "10.0.0.1"), ("::1", "::1"), ("x", None), ("", None)],
)
def test_parse_ip(text, expected):
    ip = parse_ip(text)
    assert (str(ip) if ip is not None else None) == expected
