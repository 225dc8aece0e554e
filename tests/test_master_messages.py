"""What the master tells an operator, through real `fluxgate run` processes: the worker
count in its start line, and an address that is taken named with what to do about it."""

from __future__ import annotations

import errno
import socket

import pytest

from fluxgate.master.sockets import bind_admin, bind_listen, bind_tcp
from tests.support.gateway import GatewayProcess

ROUTE = """\
routes:
  - route: /
    upstream: http://127.0.0.1:9
    public: true
"""


@pytest.mark.parametrize(("workers", "said"), [(1, "1 worker"), (2, "2 workers")])
def test_start_line_counts_workers_in_words(gateway_factory, workers, said):
    gw = gateway_factory(ROUTE, workers=workers)
    line = next(line for line in gw.log().splitlines() if "listening on" in line)
    assert line.endswith(f", {said}"), line


@pytest.fixture
def taken():
    """A port something else listens on."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(1)
    try:
        yield sock.getsockname()[1]
    finally:
        sock.close()


def test_listen_in_use_names_the_address_and_the_key(tmp_path, taken):
    gw = GatewayProcess(tmp_path, ROUTE, listen=f"'127.0.0.1:{taken}'")
    with pytest.raises(RuntimeError, match="exited early"):
        gw.start()
    assert gw.stop() not in (0, None)
    log = gw.log()
    assert f"cannot listen on 127.0.0.1:{taken}: Address already in use" in log, log
    assert "set listen to a free port" in log and "Traceback" not in log


def test_admin_in_use_names_admin_listen(taken):
    with pytest.raises(OSError) as caught:
        bind_admin(f"127.0.0.1:{taken}")
    assert caught.value.errno == errno.EADDRINUSE
    message = str(caught.value)
    assert message.startswith(f"cannot listen on 127.0.0.1:{taken}: Address already in use")
    assert "set admin.listen to a free port" in message


def test_ipv6_address_is_bracketed():
    try:
        first = bind_listen("[::1]:0")
    except OSError as exc:  # IPv6 disabled in this sandbox
        pytest.skip(f"::1 not bindable: {exc}")
    try:
        port = first.getsockname()[1]
        with pytest.raises(OSError, match=rf"cannot listen on \[::1\]:{port}: "):
            bind_tcp("::1", port)
    finally:
        first.close()


def test_address_not_on_this_host():
    # 192.0.2.0/24 is TEST-NET-1: no interface of this host has it.
    with pytest.raises(OSError) as caught:
        bind_tcp("192.0.2.1", 0)
    assert caught.value.errno == errno.EADDRNOTAVAIL
    assert "cannot listen on 192.0.2.1:0" in str(caught.value)
    assert "set listen to one it has" in str(caught.value)


