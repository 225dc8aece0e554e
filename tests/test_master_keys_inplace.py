"""The master's key service publishing in place (fluxgate/master/keys.py): another writer's
revocation in force in a worker's mapped table without a new file, a table whose room runs
out rebuilt with nothing lost, and a restart that serves every key written before it."""

from __future__ import annotations

import asyncio
import json
import os

from fluxgate.auth import keytable as kt
from fluxgate.auth.keystore import KeyStore
from fluxgate.config import load_config_text
from fluxgate.master import keys as keys_module
from fluxgate.master.keys import KeyService
from tests import test_master_keys as base
from tests.test_master_keys import (
    SECRET_A,
    SERVICE_CONFIG,
    T1,
    FakeMaster,
    admin_call,
    check,
    gather,
    request,
)

service = base.service  # the fixtures of the service driven by hand
builds = base.builds


def table_inode(service: KeyService) -> int:
    return os.stat(os.path.join(service.master.state_dir, kt.TABLE_FILE)).st_ino


def run(service: KeyService, coro):
    return service._task.get_loop().run_until_complete(coro)


def test_another_writers_revocation_is_published_in_place(service, builds):
    _, made = admin_call(service, service._create, {"name": "victim"})
    worker = kt.SharedKeys(service.master.state_dir, service.ops.signing_key)
    inode = table_inode(service)
    try:
        assert worker.table.check(made["key"].encode(), T1, b"/", (), None, "1.2.3.4")[0] == 0
        with KeyStore(service.ops.store.path) as fluxctl:  # another connection, as fluxctl
            fluxctl.revoke("victim")
            fluxctl.renew("a", expires_in=86400)
        assert service.ops.store.data_version() != service._data_version
        run(service, service.published())  # what the watcher arms when it sees the commit
        assert worker.table.check(made["key"].encode(), T1, b"/", (), None, "1.2.3.4")[0] == 5
        assert table_inode(service) == inode and worker.refresh() is False
        assert worker.table.generation == service.generation == builds[-1]
        assert service.keys == 4  # a, b, c, victim: a renewed key is not one more
    finally:
        worker.table.release()


def test_when_the_room_runs_out_a_rebuild_publishes_every_write(service, builds,
                                                               monkeypatch):
    service.ops.revoke("a")  # a change logged in keys.db, applied in place
    run(service, service.published())
    logged = "SELECT COUNT(*) FROM key_changes"
    assert service.ops.store.db.execute(logged).fetchone()[0] == 1
    inode, builds_before = table_inode(service), service.builds
    room = service._writer.capacity - service._writer.n
    # Fill the room but one entry, by hand (a bulk write would do it), then a burst of
    # admin creates that cannot all fit.
    for i in range(room - 1):
        service.ops.generate(f"filler{i}")
    run(service, service.published())
    assert table_inode(service) == inode
    answers = gather(service, *(service._create(request({"name": f"late{i}"}))
                                for i in range(5)))
    assert [a.status for a in answers] == [201] * 5
    assert table_inode(service) != inode  # rebuilt, with room again
    assert service.builds > builds_before
    # The change log the old table had applied is dropped by the rebuild.
    assert service.ops.store.db.execute(logged).fetchone()[0] == 0
    for a in answers:
        assert check(service, json.loads(a.body)["key"]) == 0
    assert service.keys == 3 + room - 1 + 5
    # Room again: the rebuild's own, less what it took in place before its rename.
    assert service._writer.capacity - service._writer.n >= keys_module.SPARE_MIN - 5


def test_a_restart_serves_every_key_written_in_place(tmp_path):
    config = load_config_text(SERVICE_CONFIG.format(state_dir=tmp_path, secret=SECRET_A))
    made = []
    generation = 0
    for _ in range(2):  # a first run writes keys in place; the second starts from keys.db
        loop = asyncio.new_event_loop()
        svc = KeyService(FakeMaster(str(tmp_path)))
        loop.run_until_complete(svc.start(config))
        try:
            assert svc.generation > generation
            for key in made:
                assert check(svc, key) == 0
            for i in range(3):
                resp = loop.run_until_complete(
                    svc._create(request({"name": f"run{generation}-{i}"})))
                made.append(json.loads(resp.body)["key"])
            generation = svc.generation
        finally:
            loop.run_until_complete(svc.stop())
            loop.close()
    assert len(made) == 6
