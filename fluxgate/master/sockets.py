"""Listening sockets, bound by the master before it forks.

Workers inherit the listen socket through fork and all accept from the one kernel queue, so a
worker that dies or drains leaves its share of connections to the others, and a reload can
hand the same socket to the next generation without a moment of refused connections.
"""

from __future__ import annotations

import errno
import ipaddress
import socket

from fluxgate.config import parse_listen
from fluxgate.errors import ConfigError

LISTEN_BACKLOG = 2048
ADMIN_BACKLOG = 64


def bind_tcp(
    host: str, port: int, *, backlog: int = LISTEN_BACKLOG, key: str = "listen"
) -> socket.socket:
    """Bind and listen on ``host:port`` (IPv4 or IPv6; port 0 picks a free port).

    The socket is non-blocking (workers hand it to their event loop) and inheritable.
    Raises OSError when the address cannot be bound, its message naming the address and
    what to do (``key``: the config key that set it).
    """
    infos = socket.getaddrinfo(
        host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )
    last_error: OSError | None = None
    for family, socktype, proto, _canon, addr in infos:
        sock = socket.socket(family, socktype, proto)
        try:
            # SO_REUSEADDR: a restart must not wait out TIME_WAIT connections of the last run.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6 and addr[0] == "::":
                # "[::]:port" means every address, as operators expect from other servers.
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            sock.bind(addr)
            sock.listen(backlog)
        except OSError as exc:
            sock.close()
            last_error = exc
            continue
        sock.setblocking(False)
        sock.set_inheritable(True)
        return sock
    if last_error is None:
        raise OSError(f"no address to bind for {_show(host, port)} ({key})")
    raise bind_error(last_error, host, port, key)


def _show(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def bind_error(exc: OSError, host: str, port: int, key: str) -> OSError:
    """``exc`` (from bind or listen) said for an operator: which address, set by which
    config key, and what to do. The errno is kept."""
    address = _show(host, port)
    if exc.errno == errno.EADDRINUSE:
        hint = (f"another process is listening there (another fluxgate?): stop it, or set "
                f"{key} to a free port")
    elif exc.errno == errno.EADDRNOTAVAIL:
        hint = f"no interface of this host has that address: set {key} to one it has"
    elif exc.errno == errno.EACCES:
        hint = f"ports below 1024 need privileges: set {key} to a port above 1023"
    else:
        hint = f"check {key}"
    error = OSError(f"cannot listen on {address}: {exc.strerror or exc}; {hint}")
    error.errno = exc.errno
    return error


def _host_port(listen: str, key: str) -> tuple[str, int]:
    try:
        return parse_listen(listen)
    except ValueError as exc:
        raise ConfigError(str(exc), path=key) from None


def bind_listen(listen: str) -> socket.socket:
    """Bind the proxy listen socket from a ``host:port`` config value."""
    host, port = _host_port(listen, "listen")
    return bind_tcp(host, port, key="listen")


def resolves_only_to_loopback(host: str) -> bool:
    """True when every address ``host`` resolves to is a loopback address (a bind-time check;
    config.is_loopback judges a literal without resolving it)."""
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except OSError:
        return False
    addresses = {info[4][0] for info in infos}
    return bool(addresses) and all(
        ipaddress.ip_address(a.split("%", 1)[0]).is_loopback for a in addresses
    )


def bind_admin(listen: str) -> socket.socket:
    """Bind the admin socket; refuses (ConfigError) any address that is not loopback.

    The admin API can reload the gateway and read its metrics; exposing it beyond the host is
    a decision to make with a proxy in front, not by changing one config line.
    """
    host, port = _host_port(listen, "admin.listen")
    if not resolves_only_to_loopback(host):
        raise ConfigError(
            f"{host!r} is not a loopback address; the admin API only listens on loopback",
            path="admin.listen",
        )
    sock = bind_tcp(host, port, backlog=ADMIN_BACKLOG, key="admin.listen")
    # Only the master serves it: workers must not inherit it across an exec either.
    sock.set_inheritable(False)
    return sock


def sock_address(sock: socket.socket) -> tuple[str, int]:
    """(host, port) the socket is bound to: the actual port when 0 was configured."""
    addr = sock.getsockname()
    return addr[0], addr[1]
