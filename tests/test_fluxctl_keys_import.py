"""`fluxctl keys import` (fluxgate/cli/keys_import.py, KeyStore.insert_many): JSON lines and
CSV, keys minted or given, bad rows refused with their line, and a running gateway taking
the new keys."""

from __future__ import annotations

import csv
import json
import os
import re
import stat

import pytest

from fluxgate.auth.keys import load_signing_key, mint_key
from fluxgate.auth.keystore import KeyStore
from tests.test_fluxctl import CONFIG, orders_gateway, run, run_json, wait_status

KEY = re.compile(r"fg_[A-Za-z0-9_-]{60}")


@pytest.fixture
def config(tmp_path, monkeypatch):
    path = tmp_path / "fluxgate.yaml"
    path.write_text(CONFIG.format(state=tmp_path / "state"))
    monkeypatch.setenv("FLUXGATE_CONFIG", str(path))
    return path


def state_of(config_path) -> str:
    return str(config_path.parent / "state")


def write_jsonl(path, rows) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def write_csv(path, header, rows) -> str:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return str(path)


def read_out(path) -> list[dict]:
    text = open(path).read()
    if str(path).endswith(".csv"):
        return list(csv.DictReader(text.splitlines()))
    return [json.loads(line) for line in text.splitlines()]


def stored(config_path) -> dict[str, object]:
    with KeyStore.open(state_of(config_path)) as store:
        return {r.name: r for r in store.all()}


def test_jsonl_generated_round_trip(config, capsys, tmp_path):
    src = write_jsonl(tmp_path / "in.jsonl", [
        {"name": "alpha", "scopes": ["orders", "read"], "quota": "100/m", "expiry": "10d",
         "allow_ip": "10.0.0.0/8 127.0.0.1", "routes": ["/api"]},
        {"name": "beta"},
    ])
    out = tmp_path / "keys.jsonl"
    code, stdout, stderr = run(capsys, "keys", "import", src, "--generate", "--out", str(out))
    assert code == 0, (stdout, stderr)
    assert "Imported 2 keys" in stdout
    assert stat.S_IMODE(os.stat(out).st_mode) == 0o600
    keys = read_out(out)
    assert [k["name"] for k in keys] == ["alpha", "beta"]
    assert all(KEY.fullmatch(k["key"]) and k["key"][3:15] == k["key_id"] for k in keys)
    for k in keys:  # never on the terminal
        assert k["key"] not in stdout + stderr and k["key"][15:40] not in stdout + stderr
    rows = stored(config)
    assert rows["alpha"].scopes == ("orders", "read") and rows["alpha"].routes == ("/api",)
    assert rows["alpha"].allow_ips == ("10.0.0.0/8", "127.0.0.1/32")
    assert (rows["alpha"].quota_limit, rows["alpha"].quota_window) == (100, 60)
    assert rows["alpha"].expires_at - rows["alpha"].created_at == 10 * 86400
    assert rows["beta"].expires_at - rows["beta"].created_at == 30 * 86400  # the default
    assert rows["alpha"].key_id == keys[0]["key_id"]
    # The key file imports as it is into another state_dir under the same signing secret.
    other = tmp_path / "other.yaml"
    other.write_text(config.read_text().replace(str(tmp_path / "state"),
                                                str(tmp_path / "state2")))
    os.makedirs(tmp_path / "state2", mode=0o700)
    secret = (tmp_path / "state" / "keys.secret").read_bytes()
    (tmp_path / "state2" / "keys.secret").write_bytes(secret)
    os.chmod(tmp_path / "state2" / "keys.secret", 0o600)
    doc = run_json(capsys, "--config", str(other), "keys", "import", str(out))
    assert doc["imported"] == 2 and doc["refused"] == []
    with KeyStore.open(str(tmp_path / "state2")) as store:
        assert {r.key_id: r.digest for r in store.all()} == {
            r.key_id: r.digest for r in rows.values()}
    keys[0]["key_id"] = keys[1]["key_id"]  # an id that is not the key's
    keys[0]["name"] = "gamma"
    mismatched = write_jsonl(tmp_path / "mismatch.jsonl", [keys[0]])
    code, stdout, _ = run(capsys, "--config", str(other), "keys", "import", mismatched)
    assert code == 1 and f"line 1: key_id: the key's id is {rows['alpha'].key_id}" in stdout


def test_csv_given_keys_verified(config, capsys, tmp_path):
    run(capsys, "keys", "list")
    secret = load_signing_key(None, state_of(config))
    good = mint_key(secret)
    other = mint_key(b"another signing secret, long enough!!")
    forged = good.text[:-1] + ("A" if good.text[-1] != "A" else "B")
    src = write_csv(tmp_path / "in.csv", ["name", "scopes", "key"], [
        ["given", "orders", good.text],
        ["foreign", "", other.text],
        ["forged", "", forged],
        ["garbage", "", "not-a-key"],
    ])
    code, out, err = run(capsys, "keys", "import", src)
    assert code == 1, (out, err)
    assert "Nothing imported: 3 row(s) refused" in out
    assert "line 3: key: its tag does not verify" in out
    assert "line 4: key: its tag does not verify" in out
    assert "line 5: key: not a FluxGate key" in out
    assert good.text not in out + err and other.text not in out + err
    assert stored(config) == {}  # all or nothing
    doc = run_json(capsys, "keys", "import", src, "--skip-bad")
    assert doc["imported"] == 1 and [r["line"] for r in doc["refused"]] == [3, 4, 5]
    record = stored(config)["given"]
    assert record.key_id == good.key_id and record.digest == good.digest
    assert record.scopes == ("orders",)


def test_bad_rows_refused_with_their_line(config, capsys, tmp_path):
    run_json(capsys, "keys", "generate", "--name", "existing")
    lines = [
        json.dumps({"name": "ok1"}),
        json.dumps({"name": "ok1"}),  # line 2: a duplicate in the file
        json.dumps({"name": "existing"}),  # line 3: already in keys.db
        "{not json",
        json.dumps(["a", "list"]),
        json.dumps({"name": "bad name!"}),
        json.dumps({"name": "q", "quota": "1/y"}),
        json.dumps({"name": "e", "expiry": "0s"}),
        json.dumps({"name": "s", "scopes": [1, 2]}),
        json.dumps({"name": "x", "colour": "red"}),
        json.dumps({"scopes": ["orders"]}),
        json.dumps({"name": "ip", "allow_ip": "300.1.1.1"}),
        "",
        json.dumps({"name": "ok2"}),
    ]
    src = tmp_path / "in.jsonl"
    src.write_text("\n".join(lines) + "\n")
    out = tmp_path / "keys.jsonl"
    code, stdout, _ = run(capsys, "keys", "import", str(src), "--generate", "--out", str(out))
    assert code == 1 and not out.exists()  # nothing imported: no key file either
    assert set(stored(config)) == {"existing"}
    doc = run_json(capsys, "keys", "import", str(src), "--generate", "--out", str(out),
                   "--skip-bad")
    refused = {r["line"]: r["reason"] for r in doc["refused"]}
    assert sorted(refused) == [2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]
    assert "comes earlier in the file" in refused[2]
    assert "already exists" in refused[3]
    assert "not JSON" in refused[4] and "not a JSON object" in refused[5]
    assert "invalid key name" in refused[6] and "quota" in refused[7]
    assert "expiry" in refused[8] and "scopes" in refused[9]
    assert "'colour'" in refused[10] and "name is required" in refused[11]
    assert doc["imported"] == 2 and set(stored(config)) == {"existing", "ok1", "ok2"}
    assert [k["name"] for k in read_out(out)] == ["ok1", "ok2"]


def test_refusals(config, capsys, tmp_path):
    src = write_jsonl(tmp_path / "in.jsonl", [{"name": "a"}])
    code, _, err = run(capsys, "keys", "import", src, "--generate")
    assert code == 1 and "--generate needs --out" in err
    code, out, _ = run(capsys, "keys", "import", src)
    assert code == 1 and "line 1: key is required" in out
    existing = tmp_path / "exists.jsonl"
    existing.write_text("precious\n")
    code, _, err = run(capsys, "keys", "import", src, "--generate", "--out", str(existing))
    assert code == 1 and "exists" in err and existing.read_text() == "precious\n"
    code, _, err = run(capsys, "keys", "import", str(tmp_path / "missing.jsonl"))
    assert code == 1 and "missing.jsonl" in err
    bad_header = write_csv(tmp_path / "h.csv", ["nom"], [["a"]])
    code, out, _ = run(capsys, "keys", "import", bad_header, "--generate", "--out",
                       str(tmp_path / "o.csv"))
    assert code == 1 and "line 1: unknown column(s) 'nom'" in out
    latin1 = tmp_path / "latin1.jsonl"
    latin1.write_bytes(b'{"name": "ok"}\n{"name": "caf\xe9"}\n')
    code, _, err = run(capsys, "keys", "import", str(latin1), "--generate", "--out",
                       str(tmp_path / "o.jsonl"))
    assert code == 1 and "not UTF-8" in err and not (tmp_path / "o.jsonl").exists()
    nul = tmp_path / "nul.csv"
    nul.write_bytes(b"name,scopes\nok,a\nx\x00y,b\n")
    code, out, _ = run(capsys, "keys", "import", str(nul), "--generate", "--out",
                       str(tmp_path / "o.csv"), "--skip-bad")
    assert code == 0 and "line 3:" in out and "Imported 1 key." in out
    assert set(stored(config)) == {"ok"}


def test_key_id_clash_names_the_row(config, capsys, tmp_path):
    run(capsys, "keys", "list")
    secret = load_signing_key(None, state_of(config))
    key = mint_key(secret)
    first = write_jsonl(tmp_path / "a.jsonl", [{"name": "one", "key": key.text}])
    assert run_json(capsys, "keys", "import", first)["imported"] == 1
    again = write_jsonl(tmp_path / "b.jsonl", [
        {"name": "two", "key": mint_key(secret).text},
        {"name": "three", "key": key.text},  # its id is taken in keys.db: UNIQUE says so
        {"name": "four", "key": mint_key(secret).text},
    ])
    code, out, _ = run(capsys, "keys", "import", again)
    assert code == 1 and f"line 2: key {key.key_id} already exists" in out
    assert set(stored(config)) == {"one"}
    doc = run_json(capsys, "keys", "import", again, "--skip-bad")
    assert doc["imported"] == 2 and [r["line"] for r in doc["refused"]] == [2]
    assert set(stored(config)) == {"one", "two", "four"}


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_generated_keys_work_on_a_running_gateway(gateway_factory, upstream, capsys,
                                                  monkeypatch, tmp_path, fmt):
    gw = orders_gateway(gateway_factory, upstream, monkeypatch)
    names = [f"c{i}" for i in range(300)]
    if fmt == "csv":
        src = write_csv(tmp_path / "in.csv", ["name", "scopes"],
                        [[n, "orders" if n != "c1" else "other"] for n in names])
    else:
        src = write_jsonl(tmp_path / "in.jsonl",
                          [{"name": n, "scopes": ["orders" if n != "c1" else "other"]}
                           for n in names])
    out = tmp_path / f"keys.{fmt}"
    code, stdout, stderr = run(capsys, "keys", "import", src, "--format", fmt, "--generate",
                               "--out", str(out))
    assert code == 0, (stdout, stderr)
    keys = {k["name"]: k["key"] for k in read_out(out)}
    assert len(keys) == 300
    wait_status(gw, keys["c299"], 200)  # the master publishes after the commit
    wait_status(gw, keys["c0"], 200)
    wait_status(gw, keys["c1"], 403)  # its rights came along
    assert not any(k in stdout + stderr for k in keys.values())


def test_a_name_taken_while_the_import_ran(config, capsys, tmp_path, monkeypatch):
    """Rows are checked before keys.db's write lock is taken: a key another writer adds
    meanwhile under one of the file's names refuses that row, and (as the key file already
    holds every key) nothing is imported."""
    src = write_jsonl(tmp_path / "in.jsonl", [{"name": "early"}, {"name": "late"}])
    begin = KeyStore.begin_bulk

    def someone_else_first(store):
        run_json(capsys, "keys", "generate", "--name", "late")
        begin(store)

    monkeypatch.setattr(KeyStore, "begin_bulk", someone_else_first)
    out = tmp_path / "keys.jsonl"
    code, stdout, _ = run(capsys, "keys", "import", src, "--generate", "--out", str(out),
                          "--skip-bad")
    assert code == 1 and "line 2: its name or key id was taken while the import ran" in stdout
    assert set(stored(config)) == {"late"} and not out.exists()
    leftovers = [n for n in os.listdir(state_of(config)) if not n.startswith("keys.")]
    assert leftovers == []  # the spool of checked rows is gone
