"""The worker's registry of WebSockets bound to a credential (fluxgate/proxy/tunnels.py)
and the API-key watcher (fluxgate/proxy/tunnel_credentials.py), with stand-in tunnels.
The real tunnels, end to end: tests/e2e/test_ws_binding.py."""

from __future__ import annotations

import logging
import time

import pytest

from fluxgate.proxy import tunnels
from fluxgate.proxy.tunnel_credentials import KeyWatcher, worker_watcher


class Tunnel:
    """Records close_tunnel calls; answers False once closing, as an Exchange does."""

    def __init__(self) -> None:
        self.closes: list[tuple[int, str]] = []

    def close_tunnel(self, code: int, reason: str = "") -> bool:
        self.closes.append((code, reason))
        return len(self.closes) == 1


class Gateway:
    def __init__(self) -> None:
        self.periodic: list = []


def test_the_sweep_closes_tunnels_past_their_deadline_with_4401_once():
    registry = tunnels.TunnelRegistry()
    late, early, free = Tunnel(), Tunnel(), Tunnel()
    registry.bind(late, 100.0, "a")
    registry.bind(early, 200.0, "a")
    registry.bind(free, tunnels.NO_DEADLINE)
    registry.sweep(99.9)
    assert late.closes == [] and len(registry) == 3
    registry.sweep(100.0)
    registry.sweep(150.0)
    assert late.closes == [(4401, "credential expired")]
    assert early.closes == [] and free.closes == []
    assert registry.bound("a") == 1 and len(registry) == 2


def test_a_refresh_moves_the_deadline_of_every_tunnel_of_the_credential():
    registry = tunnels.TunnelRegistry()
    one, two, other = Tunnel(), Tunnel(), Tunnel()
    registry.bind(one, 10.0, ("session", b"s1"))
    registry.bind(two, 10.0, ("session", b"s1"))
    registry.bind(other, 10.0, ("session", b"s2"))
    assert registry.move_deadline(("session", b"s1"), 60.0) == 2
    assert registry.move_deadline("nobody", 60.0) == 0
    registry.sweep(30.0)
    assert one.closes == [] and two.closes == [] and other.closes == [(4401, "credential expired")]


def test_close_credential_closes_only_that_credentials_tunnels():
    registry = tunnels.TunnelRegistry()
    one, two, other = Tunnel(), Tunnel(), Tunnel()
    for tunnel, key in ((one, "k1"), (two, "k1"), (other, "k2")):
        registry.bind(tunnel, tunnels.NO_DEADLINE, key)
    assert registry.close_credential("k1", tunnels.CLOSE_REVOKED) == 2
    assert one.closes == two.closes == [(4403, "credential revoked")]
    assert other.closes == [] and registry.credential_keys() == ["k2"]
    assert registry.close_credential("k1", tunnels.CLOSE_REVOKED) == 0


def test_unbind_forgets_and_a_second_bind_replaces():
    registry = tunnels.TunnelRegistry()
    tunnel = Tunnel()
    registry.bind(tunnel, 5.0, "old")
    registry.bind(tunnel, 50.0, "new")
    assert registry.bound("old") == 0 and registry.bound("new") == 1
    registry.unbind(tunnel)
    registry.unbind(tunnel)  # an ended tunnel may be unbound twice
    registry.sweep(100.0)
    assert tunnel.closes == [] and len(registry) == 0 and registry.credential_keys() == []


def test_watchers_run_at_every_sweep_and_a_failing_one_stops_nothing(caplog):
    registry = tunnels.TunnelRegistry()
    tunnel = Tunnel()
    registry.bind(tunnel, 10.0, "k")
    seen: list[float] = []

    def broken(now: float) -> None:
        raise RuntimeError("watcher bug")

    def refresher(now: float) -> None:
        seen.append(now)
        registry.move_deadline("k", now + 10.0)  # runs before the deadlines are checked

    registry.add_watcher(broken)
    registry.add_watcher(refresher)
    registry.add_watcher(refresher)  # once only
    with caplog.at_level(logging.ERROR, logger="fluxgate.proxy"):
        registry.sweep(20.0)
        registry.sweep(40.0)
    assert seen == [20.0, 40.0] and tunnel.closes == []
    assert "watcher bug" in caplog.text
    registry.remove_watcher(refresher)
    registry.sweep(60.0)
    assert tunnel.closes == [(4401, "credential expired")]


def test_for_gateway_is_one_registry_swept_by_the_workers_timer():
    gateway = Gateway()
    registry = tunnels.for_gateway(gateway)
    assert tunnels.for_gateway(gateway) is registry
    assert gateway.periodic == [registry.sweep]
    assert tunnels.for_gateway(Gateway()) is not registry


def test_monotonic_deadline_is_exp_on_the_loop_clock():
    exp = time.time() + 30
    assert tunnels.monotonic_deadline(exp) == pytest.approx(time.monotonic() + 30, abs=0.05)
    assert tunnels.monotonic_deadline(None) == tunnels.NO_DEADLINE


# ---- the API-key watcher ------------------------------------------------------------------


class KeyTable:
    """The two KeyTable calls the watcher makes."""

    def __init__(self, entries: dict[str, dict]) -> None:
        self.ids = list(entries)
        self.entries = list(entries.values())

    def find(self, key_id: str) -> int:
        return self.ids.index(key_id) if key_id in self.ids else -1

    def entry(self, index: int) -> dict:
        return self.entries[index]


class SharedKeys:
    def __init__(self, table: KeyTable) -> None:
        self.table = table


def test_the_key_watcher_follows_each_new_table_generation():
    expires = int(time.time()) + 3600
    shared = SharedKeys(KeyTable({"id-kept": {"revoked": False, "expires_at": expires},
                                  "id-gone": {"revoked": False, "expires_at": expires},
                                  "id-revoked": {"revoked": False, "expires_at": expires}}))
    gateway = Gateway()
    watcher = worker_watcher(gateway, shared)
    assert isinstance(watcher, KeyWatcher) and worker_watcher(gateway, shared) is watcher
    registry = tunnels.for_gateway(gateway)
    bound = {name: Tunnel() for name in ("id-kept", "id-gone", "id-revoked")}
    bindings = {key_id: registry.bind(tunnel, tunnels.monotonic_deadline(expires),
                                      watcher.key_of(key_id))
                for key_id, tunnel in bound.items()}
    other = Tunnel()
    registry.bind(other, tunnels.NO_DEADLINE, ("session", b"x"))  # not a key: left alone
    registry.sweep(time.monotonic())  # same generation: nothing to recheck
    assert all(t.closes == [] for t in bound.values())
    # The master publishes a new table: one key renewed, one deleted, one revoked.
    shared.table = KeyTable({"id-kept": {"revoked": False, "expires_at": expires + 86400},
                             "id-revoked": {"revoked": True, "expires_at": expires}})
    registry.sweep(time.monotonic())
    assert bound["id-gone"].closes == [(4403, "credential revoked")]
    assert bound["id-revoked"].closes == [(4403, "credential revoked")]
    assert bound["id-kept"].closes == [] and other.closes == []
    assert bindings["id-kept"].deadline == pytest.approx(time.monotonic() + 86400 + 3600, abs=5)



def test_the_key_watcher_follows_a_generation_written_in_place():
    # The master revokes and renews keys in the table the worker has mapped, and bumps its
    # generation: the same table object, a new generation.
    expires = int(time.time()) + 3600
    table = KeyTable({"id-kept": {"revoked": False, "expires_at": expires},
                      "id-revoked": {"revoked": False, "expires_at": expires}})
    table.generation = 1
    gateway = Gateway()
    watcher = worker_watcher(gateway, SharedKeys(table))
    registry = tunnels.for_gateway(gateway)
    bound = {name: Tunnel() for name in ("id-kept", "id-revoked")}
    for key_id, tunnel in bound.items():
        registry.bind(tunnel, tunnels.monotonic_deadline(expires), watcher.key_of(key_id))
    table.entries[1]["revoked"] = True  # not yet published: the generation is the same
    registry.sweep(time.monotonic())
    assert bound["id-revoked"].closes == []
    table.generation = 2
    registry.sweep(time.monotonic())
    assert bound["id-revoked"].closes == [(4403, "credential revoked")]
    assert bound["id-kept"].closes == []
