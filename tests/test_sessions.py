"""The login session store (fluxgate/auth/sessions.py, session_db.py, session_crypto.py,
login_state.py) on real SQLite files: secrets sealed at rest, expiry, compare-and-set,
single-use transactions across processes, key rotation, tampering, replay."""

from __future__ import annotations

import multiprocessing
import os
import sqlite3
import stat
import threading

import orjson
import pytest

from fluxgate.auth.session_crypto import KEYS_FILE, SessionStoreError, blob_key_number
from fluxgate.auth.session_db import session_digest
from fluxgate.auth.sessions import SessionStore

T0 = 1_800_000_000.0
DAY = 86400.0
TOKENS = {"access_token": "AT-7f3a9c1e-secret", "refresh_token": "RT-b82d40aa-secret",
          "id_token": "eyJhbGciOiJSUzI1NiJ9.idtoken-secret.sig", "token_type": "Bearer"}
CLAIMS = {"sub": "alice", "email": "alice@example.test", "scope": "openid profile"}
SECRETS = [TOKENS["access_token"], TOKENS["refresh_token"], "idtoken-secret",
           "alice@example.test"]


class Clock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def state(tmp_path):
    return str(tmp_path / "state")


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def store(state, clock):
    with SessionStore.open(state, clock=clock, touch_interval=0) as s:
        yield s


def new_session(store: SessionStore, *, provider: str = "idp", sub: str = "alice",
                sid: str | None = "sid-1", idle: float = 3600, absolute: float = DAY,
                tokens: dict | None = None) -> str:
    return store.create(provider, sub, sid, dict(tokens or TOKENS), dict(CLAIMS),
                        access_expires_at=store.clock() + 300, idle=idle, absolute=absolute)


def raw(state: str) -> sqlite3.Connection:
    return sqlite3.connect(os.path.join(state, "oauth2", "sessions.db"), isolation_level=None)


def row(state: str, session_id: str, columns: str = "ended_at, end_reason"):
    with raw(state) as db:
        return db.execute(f"SELECT {columns} FROM sessions WHERE id = ?",
                          (session_digest(session_id),)).fetchone()


# ---- round trip, at rest ------------------------------------------------------------------


def test_round_trip(store, clock):
    session_id = new_session(store)
    assert len(session_id) == 43 and session_id.replace("-", "").replace("_", "").isalnum()
    session = store.load(session_id)
    assert session is not None
    assert (session.provider, session.sub, session.sid, session.version) == (
        "idp", "alice", "sid-1", 1)
    assert session.tokens == TOKENS and session.claims == CLAIMS
    assert session.digest == session_digest(session_id)
    assert session.created_at == session.last_seen_at == int(T0)
    assert session.idle_expires_at == int(T0) + 3600
    assert session.absolute_expires_at == int(T0 + DAY)
    assert session.access_expires_at == int(T0) + 300
    assert all(secret not in repr(session) for secret in SECRETS)
    assert new_session(store) != session_id  # fresh randomness each time


@pytest.mark.parametrize("bad", [
    "", "x", "A" * 43, "A" * 42 + "=", "A" * 44, "é" * 43, "A" * 42 + "\n", "../" * 15,
    None, 42, b"A" * 43,
])
def test_unknown_or_malformed_ids_are_absent(store, bad):
    new_session(store)
    assert store.load(bad) is None
    assert store.take_transaction(bad) is None


def test_secrets_are_not_in_the_files(store, state):
    session_id = new_session(store)
    transaction_id = store.begin_transaction("idp", "state-c0ffee42", "nonce-deadbeef",
                                             "verifier-5a5a5a5a", "/after/login")
    store.update_tokens(session_digest(session_id), 1,
                        {"access_token": "AT-rotated-secret"}, T0 + 600)
    directory = os.path.join(state, "oauth2")
    data = b"".join(open(os.path.join(directory, name), "rb").read()
                    for name in os.listdir(directory))
    assert b"sessions" in data and b"idp" in data  # the files are what was read
    for secret in [*SECRETS, "AT-rotated-secret", "state-c0ffee42", "nonce-deadbeef",
                   "verifier-5a5a5a5a", "/after/login", session_id, transaction_id]:
        assert secret.encode() not in data, secret


def test_file_modes(state, clock):
    old = os.umask(0o022)
    try:
        with SessionStore.open(state, clock=clock) as store:
            new_session(store)
            directory = os.path.join(state, "oauth2")
            assert stat.S_IMODE(os.stat(directory).st_mode) == 0o700
            for name in os.listdir(directory):
                mode = stat.S_IMODE(os.stat(os.path.join(directory, name)).st_mode)
                assert mode == 0o600, (name, oct(mode))
            assert {"sessions.db", KEYS_FILE} <= set(os.listdir(directory))
    finally:
        os.umask(old)


def test_loose_modes_are_tightened(state, clock):
    with SessionStore.open(state, clock=clock) as store:
        session_id = new_session(store)
    directory = os.path.join(state, "oauth2")
    os.chmod(directory, 0o755)
    os.chmod(os.path.join(directory, "sessions.db"), 0o644)
    os.chmod(os.path.join(directory, KEYS_FILE), 0o644)
    with SessionStore.open(state, clock=clock) as store:
        assert store.load(session_id) is not None
    for path, mode in ((directory, 0o700), (os.path.join(directory, "sessions.db"), 0o600),
                       (os.path.join(directory, KEYS_FILE), 0o600)):
        assert stat.S_IMODE(os.stat(path).st_mode) == mode, path


def test_a_newer_schema_is_refused(state, clock):
    SessionStore.open(state, clock=clock).close()
    with raw(state) as db:
        db.execute("PRAGMA user_version = 99")
    with pytest.raises(SessionStoreError, match="newer than this FluxGate"):
        SessionStore.open(state, clock=clock)


# ---- lifetimes ----------------------------------------------------------------------------


def test_idle_expiry_and_touch(store, clock):
    session_id = new_session(store, idle=100, absolute=1000)
    digest = session_digest(session_id)
    assert store.load(session_id, T0 + 99) is not None
    assert store.load(session_id, T0 + 100) is None  # idle: no request for 100 s
    assert store.touch(digest, T0 + 100) is False  # an idle-expired session stays so
    clock.now = T0 + 50
    assert store.touch(digest, T0 + 50) is True
    assert store.load(session_id, T0 + 149).idle_expires_at == int(T0) + 150
    assert store.load(session_id, T0 + 150) is None


def test_absolute_expiry_wins_over_activity(store, clock):
    session_id = new_session(store, idle=100, absolute=250)
    digest = session_digest(session_id)
    for t in (60, 120, 180, 240):
        assert store.touch(digest, T0 + t)
        assert store.load(session_id, T0 + t) is not None
    assert store.load(session_id, T0 + 249).idle_expires_at == int(T0) + 250
    assert store.load(session_id, T0 + 250) is None
    assert store.touch(digest, T0 + 250) is False


def test_touch_writes_at_most_once_per_interval(state, clock):
    with SessionStore.open(state, clock=clock, touch_interval=60) as store:
        session_id = new_session(store)
        digest = session_digest(session_id)
        seen = store.load(session_id).last_seen_at
        assert store.touch(digest, T0 + 10, seen) is False  # seen 10 s ago: no query
        assert store.touch(digest, T0 + 61, seen) is True
        assert store.touch(digest, T0 + 90) is False  # this process wrote it 29 s ago
        assert row(state, session_id, "last_seen_at") == (int(T0) + 61,)
        with SessionStore.open(state, clock=clock, touch_interval=60) as other:
            assert other.touch(digest, T0 + 100) is False  # the row says 39 s ago
            assert other.touch(digest, T0 + 125) is False  # this process tried 25 s ago
            assert other.touch(digest, T0 + 160) is True
        assert row(state, session_id, "last_seen_at, idle_expires_at") == (
            int(T0) + 160, int(T0) + 160 + 3600)


def test_lifetimes_must_be_positive(store):
    for idle, absolute in ((0, 10), (10, 0), (-1, 10)):
        with pytest.raises(SessionStoreError):
            new_session(store, idle=idle, absolute=absolute)


# ---- compare-and-set ----------------------------------------------------------------------


def test_update_tokens_compare_and_set(store, clock):
    session_id = new_session(store)
    digest = session_digest(session_id)
    assert store.update_tokens(digest, 1, {"access_token": "AT2", "id_token": None}, T0 + 900)
    session = store.load(session_id)
    assert session.version == 2 and session.access_expires_at == int(T0) + 900
    assert session.tokens == {"access_token": "AT2", "refresh_token": TOKENS["refresh_token"],
                              "token_type": "Bearer"}  # kept, replaced, removed
    assert session.claims == CLAIMS
    assert not store.update_tokens(digest, 1, {"access_token": "AT3"}, T0 + 900)  # stale
    assert store.update_tokens(digest, 2, {}, None, claims={"sub": "alice"})
    assert store.load(session_id).claims == {"sub": "alice"}
    assert not store.update_tokens(session_digest("nope"), 1, {}, None)
    store.end(digest, "logout")
    assert not store.update_tokens(digest, 3, {"access_token": "AT4"}, None)
    clock.now = T0 + DAY
    other = new_session(store)
    clock.now = T0 + 2 * DAY
    assert not store.update_tokens(session_digest(other), 1, {}, None)  # expired


def test_two_concurrent_updaters_one_wins(state, clock):
    with SessionStore.open(state, clock=clock) as store:
        session_id = new_session(store)
    digest = session_digest(session_id)
    for expected in range(1, 21):
        barrier = threading.Barrier(2)
        results: dict[str, bool] = {}

        def updater(name: str, expected: int = expected, barrier=barrier, results=results):
            with SessionStore.open(state, clock=clock) as own:  # its own connection
                seen = own.load(session_id)
                assert seen is not None and seen.version == expected
                barrier.wait()
                results[name] = own.update_tokens(digest, seen.version,
                                                  {"refresh_token": f"RT-{name}-{expected}"},
                                                  T0 + 600)

        threads = [threading.Thread(target=updater, args=(n,)) for n in ("a", "b")]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert sorted(results.values()) == [False, True], results
        winner = next(n for n, won in results.items() if won)
        with SessionStore.open(state, clock=clock) as check:
            session = check.load(session_id)
        assert session.version == expected + 1
        assert session.tokens["refresh_token"] == f"RT-{winner}-{expected}"


# ---- ending, watching, listing ------------------------------------------------------------


def test_end_and_end_matching(store, state):
    a1 = new_session(store, sub="alice", sid="s-a1")
    a2 = new_session(store, sub="alice", sid="s-a2")
    b1 = new_session(store, sub="bob", sid="s-b1")
    other = new_session(store, provider="other-idp", sub="alice", sid="s-a1")
    assert store.end_matching("idp", sid="s-a1") == 1
    assert store.load(a1) is None and store.load(a2) is not None
    assert store.load(other) is not None  # same sid at another provider: untouched
    assert row(state, a1) [1] == "backchannel"
    assert store.end_matching("idp", sub="alice", reason="revoked") == 1  # a2; a1 had ended
    assert store.load(a2) is None and store.load(b1) is not None
    assert store.end_matching("idp", sub="bob", sid="not-bob's") == 0
    assert store.end_matching("idp", sid="unknown") == 0
    with pytest.raises(SessionStoreError):
        store.end_matching("idp")
    with pytest.raises(SessionStoreError):
        store.end(session_digest(b1), "because")
    assert store.end(session_digest(b1), "logout") is True
    assert store.end(session_digest(b1), "logout") is False
    assert row(state, b1, "end_reason, secrets") == ("logout", None)  # secrets erased
    assert store.end_all("revoked", provider="other-idp") == 1


def test_changes_since_sees_other_connections(store, state, clock):
    watched = new_session(store)
    quiet = new_session(store)
    digests = {session_digest(watched), session_digest(quiet)}
    marker = store.change_marker()
    assert store.changes_since(marker, digests) == (marker, [])
    with SessionStore.open(state, clock=clock) as master:
        unrelated = new_session(master)
        master.update_tokens(session_digest(watched), 1, {"access_token": "AT2"}, T0 + 900)
        master.touch(session_digest(quiet), T0 + 500)  # activity is not a change
        master.end(session_digest(unrelated), "logout")
    marker, changes = store.changes_since(marker, digests)
    assert [(c.digest, c.version, c.ended_at, c.access_expires_at) for c in changes] == [
        (session_digest(watched), 2, None, int(T0) + 900)]
    assert store.changes_since(marker, digests) == (marker, [])
    assert store.end(session_digest(watched), "logout")  # this connection's own write
    marker, changes = store.changes_since(marker, list(digests))
    assert [(c.version, c.end_reason) for c in changes] == [(2, "logout")]
    assert store.changes_since(marker, set()) == (marker, [])


def test_list_shows_no_secret(store, clock):
    live = new_session(store, sub="alice")
    ended = new_session(store, sub="bob", provider="other-idp")
    store.end(session_digest(ended), "revoked")
    listed = store.list()
    assert [(i.sub, i.state) for i in listed] == [("alice", "active")]
    assert listed[0].digest_prefix == session_digest(live).hex()[:12]
    everything = store.list(include_ended=True)
    assert [(i.sub, i.state) for i in everything] == [("alice", "active"), ("bob", "revoked")]
    assert store.list(provider="other-idp", include_ended=True)[0].sub == "bob"
    assert store.list(sub="nobody") == []
    text = repr(everything) + orjson.dumps([i.public() for i in everything]).decode()
    for secret in [*SECRETS, live, ended, "sid-1"]:
        assert secret not in text
    clock.now = T0 + 3600
    assert store.list(include_ended=True, now=T0 + 3600)[0].state == "idle_expired"


def test_digests_with_prefix(store):
    session_id = new_session(store)
    digest = session_digest(session_id)
    assert store.digests_with_prefix(digest.hex()[:10].upper()) == [digest]
    assert store.digests_with_prefix(digest.hex()[:10], "other-idp") == []
    for bad in ("", "xyz", "0" * 65, "12 4"):
        with pytest.raises(SessionStoreError):
            store.digests_with_prefix(bad)


def test_purge(store, clock, state):
    ended = new_session(store)
    expired = new_session(store, idle=60, absolute=120)
    live = new_session(store, absolute=10 * DAY, idle=10 * DAY)
    store.end(session_digest(ended), "logout")
    store.begin_transaction("idp", "s", "n", "v", "/", ttl=60)
    assert store.purge(T0 + 3600) == 0  # ended or expired, but recently
    assert store.list(include_ended=True, now=T0 + 3600)
    assert store.purge(T0 + 2 * DAY) == 2
    with raw(state) as db:
        assert db.execute("SELECT COUNT(*) FROM login_transactions").fetchone() == (0,)
    assert store.load(live, T0 + 2 * DAY) is not None
    assert row(state, expired) is None


# ---- login transactions -------------------------------------------------------------------


def test_transaction_round_trip_and_single_use(store):
    transaction_id = store.begin_transaction("idp", "st4te", "n0nce", "v3rifier", "/app?x=1")
    taken = store.take_transaction(transaction_id)
    assert (taken.provider, taken.state, taken.nonce, taken.code_verifier, taken.return_to) == (
        "idp", "st4te", "n0nce", "v3rifier", "/app?x=1")
    assert taken.expires_at == int(T0) + 600
    assert taken.state_matches("st4te") and not taken.state_matches("st4tf")
    assert "st4te" not in repr(taken) and "v3rifier" not in repr(taken)
    assert store.take_transaction(transaction_id) is None


def test_expired_transaction_refused(store, state):
    transaction_id = store.begin_transaction("idp", "s", "n", "v", "/", ttl=30)
    assert store.take_transaction(transaction_id, now=T0 + 30) is None
    with raw(state) as db:  # and gone: it cannot be tried again later with another clock
        assert db.execute("SELECT COUNT(*) FROM login_transactions").fetchone() == (0,)
    for ttl in (0, -5, 3601):
        with pytest.raises(SessionStoreError):
            store.begin_transaction("idp", "s", "n", "v", "/", ttl=ttl)


def test_a_transaction_blob_does_not_open_as_another(store, state):
    first = store.begin_transaction("idp", "s1", "n1", "v1", "/1")
    second = store.begin_transaction("idp", "s2", "n2", "v2", "/2")
    with raw(state) as db:
        blob = db.execute("SELECT secrets FROM login_transactions WHERE id = ?",
                          (session_digest(first),)).fetchone()[0]
        db.execute("UPDATE login_transactions SET secrets = ? WHERE id = ?",
                   (blob, session_digest(second)))
    assert store.take_transaction(second) is None
    assert store.take_transaction(first).state == "s1"


def _race_take(state: str, transaction_id: str, barrier, results) -> None:
    with SessionStore.open(state) as store:
        barrier.wait()
        taken = store.take_transaction(transaction_id)
        results.put(None if taken is None else taken.state)


def test_transactions_single_use_across_processes(state):
    with SessionStore.open(state) as store:
        transaction_id = store.begin_transaction("idp", "the-state", "n", "v", "/")
    ctx = multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(6), ctx.Queue()
    racers = [ctx.Process(target=_race_take, args=(state, transaction_id, barrier, results))
              for _ in range(6)]
    for p in racers:
        p.start()
    try:
        got = [results.get(timeout=60) for _ in racers]
    finally:
        for p in racers:
            p.join(30)
            if p.is_alive():
                p.kill()
    assert all(p.exitcode == 0 for p in racers)
    assert got.count("the-state") == 1 and got.count(None) == 5, got


# ---- keys ---------------------------------------------------------------------------------


def _blob_key(state: str, session_id: str) -> int | None:
    return blob_key_number(bytes(row(state, session_id, "secrets")[0]))


def test_key_rotation(state, clock):
    with SessionStore.open(state, clock=clock) as store:
        old = new_session(store, absolute=30 * DAY, idle=30 * DAY)
        assert _blob_key(state, old) == 1
        assert store.maintain(key_rotation=DAY, retention=3 * DAY)["key"] == 1  # not due
        clock.now = T0 + DAY
        done = store.maintain(key_rotation=DAY, retention=3 * DAY)
        assert done == {"key": 2, "keys_dropped": 0, "sessions_orphaned": 0, "purged": 0}
        new = new_session(store, absolute=30 * DAY, idle=30 * DAY)
        refreshed = new_session(store, absolute=30 * DAY, idle=30 * DAY)
        assert _blob_key(state, new) == 2
    with SessionStore.open(state, clock=clock) as worker:  # another process's view
        assert worker.load(old).tokens == TOKENS  # the old key still decrypts
        assert worker.load(new).tokens == TOKENS
    with SessionStore.open(state, clock=clock) as store:
        clock.now = T0 + 1.5 * DAY
        digest = session_digest(refreshed)
        assert store.update_tokens(digest, 1, {"access_token": "AT2"}, None)
        assert _blob_key(state, refreshed) == 2  # re-sealed under the current key
        clock.now = T0 + 4 * DAY  # key 1 retired 3 days ago: dropped, its session ends
        done = store.maintain(key_rotation=DAY, retention=3 * DAY)
        assert done["keys_dropped"] == 1 and done["sessions_orphaned"] == 1
        assert store.keys.numbers() == [2, 3]
        assert store.load(old) is None
        assert row(state, old)[1] == "undecryptable"
        assert store.load(new) is not None


def test_a_worker_picks_up_a_rotated_key(state, clock):
    with SessionStore.open(state, clock=clock) as worker, \
            SessionStore.open(state, clock=clock) as master:
        first = new_session(master)
        assert worker.load(first) is not None  # worker caches the ring with key 1
        clock.now = T0 + DAY
        master.maintain(key_rotation=DAY, retention=DAY)
        second = new_session(master)
        assert _blob_key(state, second) == 2
        assert worker.load(second).tokens == TOKENS


def test_processes_creating_the_ring_at_once_agree(state, clock):
    SessionStore.open(state, clock=clock).close()  # the directory and database, no ring yet
    assert not os.path.exists(os.path.join(state, "oauth2", KEYS_FILE))
    barrier = threading.Barrier(8)
    keys = []

    def first_key() -> None:
        with SessionStore.open(state, clock=clock) as own:
            barrier.wait()
            keys.append(own.keys.current())

    threads = [threading.Thread(target=first_key) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(keys) == 8 and len(set(keys)) == 1 and keys[0].number == 1
    assert "secret" not in repr(keys[0])  # a key never shows in a repr


def test_maintain_refuses_nonsense_periods(store):
    for rotation, retention in ((0, DAY), (-1, DAY), (DAY, -1)):
        with pytest.raises(SessionStoreError):
            store.maintain(key_rotation=rotation, retention=retention)


def test_a_dropped_key_makes_the_session_absent(state, clock):
    with SessionStore.open(state, clock=clock) as store:
        session_id = new_session(store)
        transaction_id = store.begin_transaction("idp", "s", "n", "v", "/")
    path = os.path.join(state, "oauth2", KEYS_FILE)
    doc = orjson.loads(open(path, "rb").read())
    doc["keys"][0]["number"] = 7  # key 1 gone, another in its place
    with open(path, "wb") as f:
        f.write(orjson.dumps(doc))
    with SessionStore.open(state, clock=clock) as store:
        assert store.load(session_id) is None
        assert store.take_transaction(transaction_id) is None
        assert row(state, session_id)[1] == "undecryptable"
        assert not store.update_tokens(session_digest(session_id), 1, {}, None)


def test_an_unreadable_key_ring_ends_nothing(state, clock):
    with SessionStore.open(state, clock=clock) as store:
        session_id = new_session(store)
    with open(os.path.join(state, "oauth2", KEYS_FILE), "wb") as f:
        f.write(b'{"format": 1, "keys": [{"number": 1, "key": "short"}]}')
    with SessionStore.open(state, clock=clock) as store:
        assert store.load(session_id) is None  # not readable now, not a crash
        assert row(state, session_id) == (None, None)  # and not ended: restore the file
        with pytest.raises(SessionStoreError, match="not a usable session key ring"):
            new_session(store)


@pytest.mark.parametrize("offset", [0, 4, 5, 12, 20, -1])
def test_a_tampered_blob_is_absent(store, state, offset):
    session_id = new_session(store)
    digest = session_digest(session_id)
    with raw(state) as db:
        blob = bytearray(db.execute("SELECT secrets FROM sessions WHERE id = ?",
                                    (digest,)).fetchone()[0])
        blob[offset] ^= 0x01
        db.execute("UPDATE sessions SET secrets = ? WHERE id = ?", (bytes(blob), digest))
    assert store.load(session_id) is None
    assert row(state, session_id)[1] == "undecryptable"


@pytest.mark.parametrize("blob", [b"", b"\x01", b"\x01\x00\x00\x00\x01" + b"\x00" * 27,
                                  None, "text"])
def test_a_truncated_or_missing_blob_is_absent(store, state, blob):
    session_id = new_session(store)
    with raw(state) as db:
        db.execute("UPDATE sessions SET secrets = ? WHERE id = ?",
                   (blob, session_digest(session_id)))
    assert store.load(session_id) is None


def test_a_blob_moved_to_another_row_is_absent(store, state):
    mallory = new_session(store, sub="mallory", tokens={"access_token": "AT-mallory"})
    alice = new_session(store, sub="alice")
    other_provider = new_session(store, provider="idp2", sub="alice")
    with raw(state) as db:
        blob = db.execute("SELECT secrets FROM sessions WHERE id = ?",
                          (session_digest(alice),)).fetchone()[0]
        for target in (mallory, other_provider):
            db.execute("UPDATE sessions SET secrets = ? WHERE id = ?",
                       (blob, session_digest(target)))
        # The provider is bound too: the same row relabelled to another provider.
        db.execute("UPDATE sessions SET provider = 'idp2' WHERE id = ?",
                   (session_digest(alice),))
    assert store.load(mallory) is None
    assert store.load(other_provider) is None
    assert store.load(alice) is None


# ---- back-channel logout replay -----------------------------------------------------------


def test_jti_replay(store, clock):
    assert store.remember_jti("idp", "jti-1", T0 + 120) is True
    assert store.remember_jti("idp", "jti-1", T0 + 120) is False
    assert store.remember_jti("idp2", "jti-1", T0 + 120) is True  # per provider
    assert store.remember_jti("idp", "x" * 100_000, T0 + 120) is True  # stored as a digest
    assert store.remember_jti("idp", "x" * 100_000, T0 + 120) is False
    clock.now = T0 + 121
    assert store.remember_jti("idp", "jti-1", T0 + 240) is True  # the record had expired
    assert store.remember_jti("idp", "jti-1", T0 + 240) is False
    store.purge(T0 + 1000)
    assert store.remember_jti("idp", "jti-1", T0 + 1200) is True
