"""The master's key service (fluxgate/master/keys.py): it never lets the signing secret drift
from the keys already issued, at start or on reload, and keeps no key in its log; its flush
copies the usage of the keys used since the last one, and only those, into keys.db."""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import struct

import pytest

from fluxgate.auth import keytable as kt
from fluxgate.auth.keyops import KeyOps
from fluxgate.config import load_config, load_config_text
from fluxgate.master import keys as keys_module
from fluxgate.master.admin import AdminRequest
from fluxgate.master.keys import FLUSH_PASS_MAX, KeyService, flush_pause
from tests.support.gateway import GatewayProcess

SECRET_A = "a" * 40
SECRET_B = "b" * 40

CONFIG = """\
api_keys: {{signing_secret: "{secret}"}}
routes:
  - route: /api
    upstream: {url}
    middleware:
      - api_key: {{}}
"""


def reload(gw: GatewayProcess) -> tuple[int, dict]:
    conn = http.client.HTTPConnection("127.0.0.1", gw.admin_port, timeout=30)
    conn.request("POST", "/admin/reload", headers={"Authorization": "Bearer test-admin-token"})
    resp = conn.getresponse()
    body = json.loads(resp.read())
    conn.close()
    return resp.status, body


def test_a_reload_with_another_signing_secret_is_refused(gateway_factory, upstream):
    gw = gateway_factory(CONFIG.format(secret=SECRET_A, url=upstream.url))
    with KeyOps(load_config(gw.config_path)) as ops:
        key = ops.generate("svc")["key"]
    gw.write_config(CONFIG.format(secret=SECRET_B, url=upstream.url))
    status, body = reload(gw)
    # A config error with its key path (422), not a failure to go live (409).
    assert status == 422 and "signing secret differs" in body["error_description"]
    assert body["path"] == "api_keys.signing_secret"
    gw.write_config(CONFIG.format(secret=SECRET_A, url=upstream.url))
    assert reload(gw)[0] == 200
    assert key not in gw.log()


def test_the_gateway_will_not_start_with_another_signing_secret(tmp_path, upstream):
    first = GatewayProcess(tmp_path, CONFIG.format(secret=SECRET_A, url=upstream.url))
    with KeyOps(load_config(first.config_path)) as ops:
        ops.generate("svc")
    second = GatewayProcess(tmp_path, CONFIG.format(secret=SECRET_B, url=upstream.url))
    with pytest.raises(RuntimeError, match="gateway exited early"):
        second.start()
    assert second.stop() == 1
    assert "signing secret differs from the one the keys" in second.log()


# ---- usage flush (KeyService driven by hand) ------------------------------------------------

SERVICE_CONFIG = """\
state_dir: {state_dir}
api_keys: {{signing_secret: "{secret}"}}
routes:
  - route: /api
    upstream: http://127.0.0.1:9
    middleware:
      - api_key: {{}}
"""
T1, T2 = 1_795_000_000, 1_795_000_060


class FakeMaster:
    def __init__(self, state_dir: str) -> None:
        self.state_dir = state_dir
        self.loop = None


@pytest.fixture
def service(tmp_path):
    loop = asyncio.new_event_loop()
    svc = KeyService(FakeMaster(str(tmp_path)))
    config = load_config_text(SERVICE_CONFIG.format(state_dir=tmp_path, secret=SECRET_A))
    loop.run_until_complete(svc.start(config))
    for name in ("a", "b", "c"):
        svc.ops.generate(name)
    svc.rebuild()
    try:
        yield svc
    finally:
        loop.run_until_complete(svc.stop())
        loop.close()


@pytest.fixture
def written(service, monkeypatch):
    """The rows of each flush's ``record_usage`` call, in order."""
    calls: list[list[tuple]] = []
    record = service.ops.store.record_usage

    def spy(rows):
        calls.append(list(rows))
        record(calls[-1])

    monkeypatch.setattr(service.ops.store, "record_usage", spy)
    return calls


def slots(service: KeyService) -> dict[str, int]:
    return {r.name: r.slot for r in service.ops.store.all()}


def stamp(service: KeyService, name: str, at: int, address: str, requests: int) -> None:
    """What a worker's stamps leave in a key's usage slot."""
    service.usage.seed(kt.RESERVED_SLOTS + slots(service)[name], at, address, requests)


def stored(service: KeyService, name: str) -> tuple:
    (r,) = service.ops.store.by_name(name)
    return r.last_used_at, r.last_used_from, r.requests


def test_a_flush_writes_only_the_keys_used_since_the_last_one(service, written):
    service.flush_usage()
    assert written == [[]]  # nothing used yet
    stamp(service, "a", T1, "10.0.0.1", 3)
    stamp(service, "c", T1, "2001:db8::1", 1)
    service.flush_usage()
    ids = slots(service)
    assert written[-1] == [(ids["a"], T1, "10.0.0.1", 3), (ids["c"], T1, "2001:db8::1", 1)]
    stamp(service, "c", T2, "10.0.0.2", 4)
    service.flush_usage()
    assert written[-1] == [(ids["c"], T2, "10.0.0.2", 4)]
    assert stored(service, "a") == (T1, "10.0.0.1", 3)
    assert stored(service, "b") == (None, None, 0)
    assert stored(service, "c") == (T2, "10.0.0.2", 4)
    # A key created since: the next generation's keys are followed.
    service.ops.generate("d")
    service.rebuild()
    stamp(service, "d", T2, "10.0.0.3", 1)
    service.flush_usage()
    assert written[-1] == [(slots(service)["d"], T2, "10.0.0.3", 1)]
    # The rows are what a slot-by-slot ``read`` gives.
    usage = [service.usage.read(kt.RESERVED_SLOTS + ids[n]) for n in ("a", "c")]
    assert [(u.last_used_ms // 1000, u.address, u.requests) for u in usage] == [
        (T1, "10.0.0.1", 3), (T2, "10.0.0.2", 4)]


def test_a_costly_chunk_is_followed_by_a_pause_within_bounds():
    assert flush_pause(0.0, 31) == 0.0  # nothing used in the chunk: straight on
    assert flush_pause(0.01, 31) == pytest.approx(3.99)  # flushing stays at 0.25% of a core
    assert flush_pause(0.5, 31) == pytest.approx(FLUSH_PASS_MAX / 31)  # a pass ends in time
    assert flush_pause(1.0, 0) == flush_pause(1.0, 1) == FLUSH_PASS_MAX
    assert flush_pause(-1.0, 31) == 0.0  # a clock oddity


def test_a_gradual_pass_flushes_every_chunk_and_pauses_after_each(service, written,
                                                                  monkeypatch):
    # Chunks of one block of slots: the keys' slots and the reserved ones fall in two.
    monkeypatch.setattr(keys_module, "FLUSH_CHUNK_SLOTS", kt.BLOCK_SLOTS)
    service.usage.ensure(kt.BLOCK_SLOTS + 1)
    pauses: list[float] = []

    async def pause(seconds):
        pauses.append(seconds)

    monkeypatch.setattr(keys_module.asyncio, "sleep", pause)
    stamp(service, "a", T1, "10.0.0.1", 3)
    stamp(service, "c", T2, "10.0.0.2", 1)
    service.usage.seed(kt.BLOCK_SLOTS, T2, "10.0.0.9", 7)  # a slot of the second chunk
    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(service.flush_usage_gradually())
    finally:
        loop.close()
    chunks = -(-service.usage.slots // kt.BLOCK_SLOTS)
    assert chunks >= 2 and len(written) == len(pauses) == chunks
    assert all(0 <= p <= FLUSH_PASS_MAX / chunks for p in pauses)
    ids = slots(service)
    assert written[0] == [(ids["a"], T1, "10.0.0.1", 3), (ids["c"], T2, "10.0.0.2", 1)]
    assert written[1] == [(kt.BLOCK_SLOTS - kt.RESERVED_SLOTS, T2, "10.0.0.9", 7)]
    assert stored(service, "a") == (T1, "10.0.0.1", 3)
    service.flush_usage()  # a whole flush after the pass: nothing left to write
    assert written[-1] == []


def test_a_flush_after_no_change_writes_nothing(service, written):
    stamp(service, "b", T1, "10.0.0.1", 3)
    service.flush_usage()
    assert len(written[-1]) == 1
    version = service.ops.store.data_version()
    service.flush_usage()
    service.rebuild()  # a new generation: the same keys, nothing written again
    service.flush_usage()
    assert written[1:] == [[], []]
    assert service.ops.store.data_version() == version


def test_a_flush_never_writes_a_half_stamped_slot(service, written, monkeypatch):
    stamp(service, "a", T1, "10.0.0.1", 3)
    service.flush_usage()
    slot = kt.RESERVED_SLOTS + slots(service)["a"]
    # The first copy of the file catches a worker between its time and address stores
    # (the time of T2, the address of T1); the second copy, and the slot after it, are done.
    half = bytearray(service.usage._copy())
    words = list(struct.unpack_from("=4Q", half, slot * kt.SLOT_SIZE))
    stamp(service, "a", T2, "10.0.0.2", 4)
    words[0], words[3] = T2 * 1000, 4
    struct.pack_into("=4Q", half, slot * kt.SLOT_SIZE, *words)
    copies = iter([bytes(half), service.usage._copy()])
    monkeypatch.setattr(service.usage, "_copy", lambda *span: next(copies))
    service.flush_usage()
    assert written[-1] == [(slots(service)["a"], T2, "10.0.0.2", 4)]
    assert stored(service, "a") == (T2, "10.0.0.2", 4)


# ---- admin writes share a publication -------------------------------------------------------


def admin_call(service: KeyService, handler, body: dict):
    """Run one admin handler on the service's loop; the response's status and JSON body."""
    resp = service._task.get_loop().run_until_complete(handler(request(body)))
    return resp.status, json.loads(resp.body)


def gather(service: KeyService, *coros):
    """Run admin handlers at once on the service's loop; their responses or exceptions."""

    async def all_of():
        return await asyncio.gather(*coros, return_exceptions=True)

    return service._task.get_loop().run_until_complete(all_of())


def request(body: dict) -> AdminRequest:
    return AdminRequest("POST", "/admin/keys", "", {}, json.dumps(body).encode(), "r", True)


def check(service: KeyService, key: str) -> int:
    """What a worker mapping the published table now answers for ``key`` (0: accepted)."""
    shared = kt.SharedKeys(service.master.state_dir, service.ops.signing_key)
    try:
        return shared.table.check(key.encode(), T1, b"/", (), None, "10.0.0.1")[0]
    finally:
        shared.table.release()


@pytest.fixture
def builds(service, monkeypatch):
    """The generations published, one entry per table build."""
    done: list[int] = []
    published = service._published

    def counted(version, records):
        published(version, records)
        done.append(service.generation)

    monkeypatch.setattr(service, "_published", counted)
    return done


def test_concurrent_creates_share_one_generation_and_work_once_answered(service, builds):
    answers = gather(service, *(service._create(request({"name": f"k{i}"})) for i in range(20)))
    assert builds == [service.generation]  # twenty creates, one table build
    for resp in answers:
        assert resp.status == 201
        assert check(service, json.loads(resp.body)["key"]) == 0
    # The next burst has a generation of its own.
    assert admin_call(service, service._create, {"name": "later"})[0] == 201
    assert len(builds) == 2


def test_a_revocation_is_in_force_in_mapped_tables_before_it_is_answered(service, builds):
    status, made = admin_call(service, service._create, {"name": "doomed"})
    _, kept = admin_call(service, service._create, {"name": "kept"})
    assert status == 201 and check(service, made["key"]) == 0
    # A worker that mapped the table before the revocation, and does not sweep again.
    worker = kt.SharedKeys(service.master.state_dir, service.ops.signing_key)
    try:
        generation = worker.table.generation
        status, body = admin_call(service, service._revoke, {"name": "doomed"})
        assert status == 200 and body["revoked"][0]["key_id"] == made["key_id"]
        assert worker.table.check(made["key"].encode(), T1, b"/", (), None, "10.0.0.1")[0] == 5
        assert worker.table.check(kept["key"].encode(), T1, b"/", (), None, "10.0.0.1")[0] == 0
        assert worker.table.generation == generation and len(builds) == 2  # no build waited
        assert oct(os.stat(os.path.join(service.master.state_dir, kt.TABLE_FILE)).st_mode
                   & 0o777) == "0o400"
        # The next generation follows from keys.db, written into the same file: the worker
        # sees it through the mapping it has, with the key revoked.
        service._task.get_loop().run_until_complete(service.published())
        assert len(builds) == 3 and worker.refresh() is False
        assert worker.table.generation == builds[-1]
        assert worker.table.check(made["key"].encode(), T1, b"/", (), None, "10.0.0.1")[0] == 5
    finally:
        worker.table.release()


def test_revoking_a_key_not_yet_published_waits_for_its_generation(service, builds):
    made = service.ops.generate("fresh")  # committed, in no table yet
    assert check(service, made["key"]) != 5
    status, _ = admin_call(service, service._revoke, {"name": "fresh"})
    assert status == 200 and len(builds) == 1 and check(service, made["key"]) == 5


def test_a_refused_write_publishes_nothing(service, builds):
    gather(service, service._create(request({"name": "x", "quota": "1/y"})),
           service._revoke(request({"name": "ghost"})))
    assert builds == []


def test_a_client_gone_does_not_cancel_the_publication_others_wait_for(service, builds):
    loop = service._task.get_loop()

    async def scene():
        gone = loop.create_task(service._create(request({"name": "gone"})))
        stays = loop.create_task(service._create(request({"name": "stays"})))
        await asyncio.sleep(0)
        gone.cancel()
        return await stays

    resp = loop.run_until_complete(scene())
    assert resp.status == 201 and check(service, json.loads(resp.body)["key"]) == 0
    assert len(builds) == 1
    assert {r.name for r in service.ops.store.all()} >= {"gone", "stays"}  # both committed


def test_a_failed_publication_fails_its_writers_and_is_retried(service, monkeypatch):
    async def broken():
        raise OSError("disk full")

    monkeypatch.setattr(service, "publish_in_place", lambda: False)  # no room left in place
    monkeypatch.setattr(service, "rebuild_off_loop", broken)
    answers = gather(service, service._create(request({"name": "p"})),
                     service._create(request({"name": "q"})))
    assert [type(a) for a in answers] == [OSError, OSError]  # the admin server's 500
    assert service._data_version == -1  # the watcher builds it at its next look


def test_a_flush_writes_no_row_for_the_counters(service, written):
    service.usage.count(kt.STAT_KEY_QUOTA)
    stamp(service, "b", T1, "10.0.0.1", 1)
    service.flush_usage()
    assert written[-1] == [(slots(service)["b"], T1, "10.0.0.1", 1)]


def test_a_revocation_during_a_build_holds_in_the_generation_that_build_publishes(
        service, builds, monkeypatch):
    import threading

    import fluxgate.master.keys as keys_module

    _, victim = admin_call(service, service._create, {"name": "victim"})
    entered, release = threading.Event(), threading.Event()
    write = keys_module.write_table

    def slow_write(state_dir, data):  # the rows are read, the table built: not yet written
        entered.set()
        release.wait(10)
        return write(state_dir, data)

    monkeypatch.setattr(keys_module, "write_table", slow_write)
    loop = service._task.get_loop()

    async def scene():
        service._rebuild_soon()  # a full rebuild, as when the room runs out
        while not entered.is_set():
            await asyncio.sleep(0.01)
        # Answered meanwhile, published in place in the table the build replaces.
        revoked = await service._revoke(request({"name": "victim"}))
        created = await service._create(request({"name": "other"}))
        release.set()
        await service._rebuilding
        return revoked, created

    before = os.stat(os.path.join(service.master.state_dir, kt.TABLE_FILE)).st_ino
    revoked, created = loop.run_until_complete(scene())
    assert revoked.status == 200 and created.status == 201
    assert os.stat(os.path.join(service.master.state_dir, kt.TABLE_FILE)).st_ino != before
    assert kt.read_generation(service.master.state_dir) == builds[-1]
    assert check(service, victim["key"]) == 5  # the build's rows predate the revocation
    assert check(service, json.loads(created.body)["key"]) == 0  # and the create
