"""The PIN encryption keys: rotating keeps old PINs decryptable and puts new series under the new key,
even in a process that loaded the key file before; re-encrypting moves every stored PIN to the
current key, encrypting with no lock held, and touches nothing else on the card, not even what other
writers changed meanwhile; pruning deletes the old keys only when no PIN needs
them and nothing can have added one meanwhile; every change is audited; and the operator's
`radcore keys ...` commands (run as subprocesses) report in one readable line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from control.audit import list_audit
from control.auth import LOCAL
from control.key_rotation import TARGET, prune_keys, reencrypt_pins, rotate_pin_key
from helpers_store import NOW, add_rate_table, new_series, open_store
from radcore.clock import FixedClock
from radcore.errors import Conflict, StoreError
from radcore.generation import generate_series, start_generation
from radcore.keys import KeyRing
from radcore.records import CARD_FIXED_SIZE
from radcore.store import Store, card_key, get_card, iter_series_cards, put_card

ROOT = Path(__file__).resolve().parents[1]


def pins(store, ring, number):
    """(key id of each card's blob, decrypted PIN) in serial order."""
    with store.transaction() as txn:
        return [(card.pin_blob[0], ring.decrypt_pin(card.pin_blob, card_key(number, serial)))
                for serial, card in iter_series_cards(txn, store, number)]


def test_rotation_keeps_old_pins_and_new_series_use_the_new_key_in_a_running_process(tmp_path):
    store = open_store(tmp_path / "db")
    add_rate_table(store)
    path = str(tmp_path / "radcore.key")
    server_ring = KeyRing.load_or_create(path)   # what a running control process holds
    operator_ring = KeyRing.load(path)           # what `radcore keys rotate` loads
    clock = FixedClock(NOW)
    generate_series(store, server_ring, new_series(45, quantity=20), clock=clock)
    before = pins(store, server_ring, 45)
    assert {kid for kid, _ in before} == {1}

    assert rotate_pin_key(store, operator_ring, clock=clock) == (1, 2)
    assert server_ring.current == 1              # nothing told the running process yet

    generate_series(store, server_ring, new_series(46, quantity=20), clock=clock)
    assert server_ring.current == 2
    after = pins(store, server_ring, 46)
    assert {kid for kid, _ in after} == {2}
    assert pins(store, server_ring, 45) == before             # old blobs decrypt under key 1
    assert pins(store, KeyRing.load(path), 46) == after
    # Same pepper: every PIN digest in the index stays valid.
    assert KeyRing.load(path).pin_digest("1234567890") == server_ring.pin_digest("1234567890")

    entries, _ = list_audit(store, LOCAL, target=TARGET)
    assert [(e.rpc, e.actor, e.before, e.after) for e in entries] == [
        ("RotatePinKey", "local", {"current_key": 1}, {"current_key": 2})]
    store.close()


def test_a_second_rotation_from_a_stale_ring_builds_on_the_file(tmp_path):
    store = open_store(tmp_path / "db")
    path = str(tmp_path / "radcore.key")
    first, second = KeyRing.load_or_create(path), KeyRing.load(path)
    clock = FixedClock(NOW)
    assert rotate_pin_key(store, first, clock=clock) == (1, 2)
    assert rotate_pin_key(store, second, clock=clock) == (2, 3)   # not (1, 2) again
    doc = json.loads(Path(path).read_text())
    assert doc["current"] == 3 and sorted(doc["keys"]) == ["1", "2", "3"]
    entries, _ = list_audit(store, LOCAL, target=TARGET)
    assert [e.after for e in entries] == [{"current_key": 3}, {"current_key": 2}]
    store.close()


def test_a_failed_rotation_leaves_no_audit_entry(tmp_path, monkeypatch):
    store = open_store(tmp_path / "db")
    ring = KeyRing.load_or_create(str(tmp_path / "radcore.key"))

    def refuse():
        raise StoreError("key file is read-only")

    monkeypatch.setattr(ring, "rotate", refuse)
    with pytest.raises(StoreError, match="read-only"):
        rotate_pin_key(store, ring, clock=FixedClock(NOW))
    assert list_audit(store, LOCAL, target=TARGET)[0] == []
    store.close()


def test_load_never_creates_a_key_file(tmp_path):
    path = tmp_path / "radcore.key"
    with pytest.raises(StoreError, match="no key file at .*radcore serve creates it"):
        KeyRing.load(path)
    assert not path.exists()


def run_cli(tmp_path, *args, command="rotate"):
    env = {k: v for k, v in os.environ.items() if not k.startswith("RADCORE_")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    return subprocess.run([sys.executable, "-m", "control.cli", "keys", command, *args], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=60, check=False)


def test_cli_rotates_and_reports_in_one_line(tmp_path):
    (tmp_path / "radcore.toml").write_text('[server]\ndata_dir = "db"\nmap_size_mb = 256\n')
    missing = run_cli(tmp_path, "--config", "radcore.toml")
    assert missing.returncode == 2 and missing.stdout == ""
    assert len(missing.stderr.splitlines()) == 1 and "no key file at" in missing.stderr
    assert "Traceback" not in missing.stderr

    Store(tmp_path / "db", map_size=256 << 20).close()         # what `radcore serve` leaves behind
    key_file = tmp_path / "db" / "radcore.key"
    KeyRing.load_or_create(key_file)

    done = run_cli(tmp_path, "--config", "radcore.toml")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [(f"PIN key 2 is now current in {key_file}; key 1 and earlier "
                                         "stay for the PINs encrypted under them.")]
    doc = json.loads(run_cli(tmp_path, "--config", "radcore.toml", "--json").stdout)
    assert doc == {"key_file": str(key_file), "previous_key": 2, "current_key": 3}
    assert KeyRing.load(key_file).current == 3
    assert oct(os.stat(key_file).st_mode & 0o777) == "0o600"

    store = Store(tmp_path / "db", map_size=256 << 20)
    try:
        entries, _ = list_audit(store, LOCAL, target=TARGET)
    finally:
        store.close()
    assert [(e.actor, e.after) for e in entries] == [("local", {"current_key": 3}), ("local", {"current_key": 2})]

    bad = run_cli(tmp_path, "--config", "nowhere.toml")
    assert bad.returncode == 2 and len(bad.stderr.splitlines()) == 1 and "nowhere.toml" in bad.stderr


def raw_cards(store, number):
    with store.transaction() as txn:
        return {serial: card for serial, card in iter_series_cards(txn, store, number)}


@pytest.fixture
def world(tmp_path):
    """A store with two series under key 1, and the key rotated to 2."""
    store = open_store(tmp_path / "db")
    add_rate_table(store)
    ring = KeyRing.load_or_create(str(tmp_path / "radcore.key"))
    clock = FixedClock(NOW)
    generate_series(store, ring, new_series(45, quantity=600), clock=clock)
    generate_series(store, ring, new_series(46, quantity=7), clock=clock)
    rotate_pin_key(store, ring, clock=clock)
    yield store, ring, clock
    store.close()


def test_reencrypt_moves_every_pin_to_the_current_key_and_nothing_else(world):
    store, ring, clock = world
    pins_before = {n: [pin for _, pin in pins(store, ring, n)] for n in (45, 46)}
    cards_before = {n: raw_cards(store, n) for n in (45, 46)}
    generate_series(store, ring, new_series(47, quantity=5), clock=clock)   # already under key 2
    steps = []
    done = reencrypt_pins(store, ring, clock=clock, chunk=100, progress=lambda s, r: steps.append((s, r)))
    assert (done.scanned, done.reencrypted, done.current_key) == (612, 607, 2)
    assert steps[0] == (100, 100) and steps[-1] == (612, 607) and len(steps) == 7
    for n in (45, 46):
        assert [kid for kid, _ in pins(store, ring, n)] == [2] * len(pins_before[n])
        assert [pin for _, pin in pins(store, KeyRing.load(ring.path), n)] == pins_before[n]
        for serial, card in raw_cards(store, n).items():
            old = cards_before[n][serial]
            assert card.pin_blob != old.pin_blob
            card.pin_blob = old.pin_blob
            assert card == old                   # balance, status, dates, digest: untouched
    again = reencrypt_pins(store, ring, clock=clock)
    assert (again.scanned, again.reencrypted) == (612, 0)
    entries, _ = list_audit(store, LOCAL, target=TARGET)
    assert [(e.rpc, e.after) for e in entries[:2]] == [
        ("ReencryptPins", {"current_key": 2, "reencrypted": 0}),
        ("ReencryptPins", {"current_key": 2, "reencrypted": 607})]


def test_an_interrupted_reencryption_leaves_whole_cards_and_finishes_when_run_again(world):
    store, ring, clock = world
    before = [pin for _, pin in pins(store, ring, 45)]

    class Stop(Exception):
        pass

    def stop_after_two(scanned, done):
        if scanned >= 200:
            raise Stop

    with pytest.raises(Stop):
        reencrypt_pins(store, ring, clock=clock, chunk=100, progress=stop_after_two)
    kids = [kid for kid, _ in pins(store, ring, 45)]
    assert kids == [2] * 200 + [1] * 400
    assert [pin for _, pin in pins(store, ring, 45)] == before
    assert reencrypt_pins(store, ring, clock=clock, chunk=100).reencrypted == 407
    assert [pin for _, pin in pins(store, ring, 45)] == before


def write_now(store, change):
    """Run `change(txn)` in a write transaction on another thread, which must get the lock within 5 s."""
    done = []

    def run():
        with store.transaction(write=True) as txn:
            change(txn)
        done.append(True)

    writer = threading.Thread(target=run)
    writer.start()
    writer.join(timeout=5)
    assert done, "another writer waited for the write lock while PINs were encrypted"


def test_reencryption_encrypts_outside_the_write_lock_and_keeps_what_writers_changed_meanwhile(world, monkeypatch):
    """While the PINs of a chunk are being re-encrypted, another writer debits one of its cards and a
    rollback-like writer deletes another: the debit lands at once (nothing holds the lock), stays on
    the card with the new blob, and the deleted card is not brought back."""
    store, ring, clock = world
    before = [pin for _, pin in pins(store, ring, 45)]
    debited, deleted = card_key(45, 3), card_key(45, 5)
    encrypt = ring.encrypt_pin
    landed = []

    def other_writers(txn):
        card = get_card(txn, store, debited)
        card.balance -= 1_234_567
        put_card(txn, store, debited, card)
        txn.delete(deleted, db=store.cards)
        landed.append(True)

    def encrypt_while_others_write(pin, key):
        if not landed:
            write_now(store, other_writers)
        return encrypt(pin, key)

    balance = raw_cards(store, 45)[3].balance
    monkeypatch.setattr(ring, "encrypt_pin", encrypt_while_others_write)
    done = reencrypt_pins(store, ring, clock=clock, chunk=100)
    assert (done.scanned, done.reencrypted) == (607, 606)
    cards = raw_cards(store, 45)
    assert cards[3].balance == balance - 1_234_567 and 5 not in cards
    assert {kid for kid, _ in pins(store, ring, 45)} == {2}
    assert [pin for _, pin in pins(store, KeyRing.load(ring.path), 45)] == before[:5] + before[6:]


def test_a_blob_changed_after_the_snapshot_is_left_to_whoever_changed_it(world, monkeypatch):
    """Two re-encryptions at once: a card the other one moved between this one's snapshot and its
    write keeps the other's blob and is not counted twice."""
    store, ring, clock = world
    key = card_key(45, 7)
    decrypt = ring.decrypt_pin
    raced = []

    def decrypt_then_race(blob, card):
        pin = decrypt(blob, card)
        if card == key and not raced:
            def move(txn):
                raced.append(ring.encrypt_pin(pin, key))
                txn.put(key, txn.get(key, db=store.cards)[:CARD_FIXED_SIZE] + raced[0], db=store.cards)
            write_now(store, move)
        return pin

    monkeypatch.setattr(ring, "decrypt_pin", decrypt_then_race)
    done = reencrypt_pins(store, ring, clock=clock, chunk=100)
    assert done.reencrypted == 606 and raced
    assert raw_cards(store, 45)[7].pin_blob == raced[0]


def test_prune_refuses_while_a_pin_needs_an_old_key_then_deletes_them(world):
    store, ring, clock = world
    with pytest.raises(Conflict, match="607 PINs are still encrypted under key.s. 1: run 'radcore keys reencrypt'"):
        prune_keys(store, ring, clock=clock)
    assert sorted(json.loads(Path(ring.path).read_text())["keys"]) == ["1", "2"]
    reencrypt_pins(store, ring, clock=clock)
    assert prune_keys(store, ring, clock=clock) == [1]
    doc = json.loads(Path(ring.path).read_text())
    assert doc["current"] == 2 and list(doc["keys"]) == ["2"]
    assert len(pins(store, KeyRing.load(ring.path), 45)) == 600       # every PIN still decrypts
    assert prune_keys(store, ring, clock=clock) == []
    entries, _ = list_audit(store, LOCAL, target=TARGET)
    assert [(e.rpc, e.before, e.after) for e in entries if e.rpc == "PruneKeys"] == [
        ("PruneKeys", {"keys": [1, 2]}, {"keys": [2]})]
    # Ids freed by the prune are reused only past the top: the next rotation is 3.
    assert rotate_pin_key(store, ring, clock=clock) == (2, 3)


def test_prune_refuses_while_a_series_is_being_generated(world):
    store, ring, clock = world
    reencrypt_pins(store, ring, clock=clock)
    steps = start_generation(store, ring, new_series(48, quantity=1000), clock=clock, chunk_size=100)
    next(steps)                                   # one chunk written, the rest to come
    with pytest.raises(Conflict, match="being generated"):
        prune_keys(store, ring, clock=clock)
    for _ in steps:
        pass
    assert prune_keys(store, ring, clock=clock) == [1]


def test_prune_refuses_when_cards_appear_between_its_check_and_its_change(world, monkeypatch):
    store, ring, clock = world
    reencrypt_pins(store, ring, clock=clock)
    stale = KeyRing.load(ring.path)
    real = store.transaction

    def transaction(write=False):
        if write:  # before prune's change: a generator that did not re-read the key file ran
            monkeypatch.setattr(store, "transaction", real)
            stale._adopt(KeyRing(stale.path, stale._pepper, {1: stale._keys[1]}, 1))
            monkeypatch.setattr(stale, "reload", lambda: None)
            generate_series(store, stale, new_series(49, quantity=3), clock=clock)
        return real(write)

    monkeypatch.setattr(store, "transaction", transaction)
    with pytest.raises(Conflict, match="generated while the keys were checked"):
        prune_keys(store, ring, clock=clock)
    assert sorted(json.loads(Path(ring.path).read_text())["keys"]) == ["1", "2"]
    assert {kid for kid, _ in pins(store, ring, 49)} == {1}       # which is why key 1 had to stay


def test_rotation_past_the_last_id_reuses_the_lowest_pruned_one(tmp_path):
    path = str(tmp_path / "radcore.key")
    ring = KeyRing.load_or_create(path)
    doc = json.loads(Path(path).read_text())
    doc["keys"] = {"255": doc["keys"]["1"]}
    doc["current"] = 255
    Path(path).write_text(json.dumps(doc))
    ring.reload()
    assert ring.rotate() == 1
    assert ring.rotate() == 2
    full = KeyRing.load(path)
    doc = json.loads(Path(path).read_text())
    doc["keys"] = {str(i): doc["keys"]["1"] for i in range(1, 256)}
    Path(path).write_text(json.dumps(doc))
    with pytest.raises(StoreError, match="radcore keys reencrypt.*radcore keys prune"):
        full.rotate()


def test_cli_reencrypt_and_prune(tmp_path):
    (tmp_path / "radcore.toml").write_text('[server]\ndata_dir = "db"\nmap_size_mb = 256\n')
    store = Store(tmp_path / "db", map_size=256 << 20)
    add_rate_table(store)
    ring = KeyRing.load_or_create(tmp_path / "db" / "radcore.key")
    generate_series(store, ring, new_series(45, quantity=30), clock=FixedClock(NOW))
    store.close()
    assert run_cli(tmp_path, "--config", "radcore.toml").returncode == 0          # rotate to key 2

    refused = run_cli(tmp_path, "--config", "radcore.toml", command="prune")
    assert refused.returncode == 2 and refused.stdout == "" and "Traceback" not in refused.stderr
    assert refused.stderr.splitlines() == [
        "radcore: 30 PINs are still encrypted under key(s) 1: run 'radcore keys reencrypt' first"]

    done = run_cli(tmp_path, "--config", "radcore.toml", command="reencrypt")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["Re-encrypted 30 of 30 PINs under key 2."]
    assert json.loads(run_cli(tmp_path, "--config", "radcore.toml", "--json", command="reencrypt").stdout) == {
        "key_file": str(tmp_path / "db" / "radcore.key"), "current_key": 2, "cards": 30, "reencrypted": 0}

    pruned = run_cli(tmp_path, "--config", "radcore.toml", command="prune")
    assert pruned.returncode == 0, pruned.stderr
    assert pruned.stdout.splitlines() == [
        f"Deleted key(s) 1 from {tmp_path / 'db' / 'radcore.key'}; key 2 remains."]
    again = json.loads(run_cli(tmp_path, "--config", "radcore.toml", "--json", command="prune").stdout)
    assert again["deleted_keys"] == [] and again["current_key"] == 2


def test_reencryption_lets_a_waiting_writer_in_between_chunks(world, monkeypatch):
    store, ring, clock = world
    looks = []
    waiting = iter([True, True, False] + [False] * 10)   # a writer blocked after the first chunk

    def any_waiting():
        looks.append(len(chunks))
        return next(waiting)

    chunks = []
    monkeypatch.setattr(store.waiters, "any", any_waiting)
    reencrypt_pins(store, ring, clock=clock, chunk=200, progress=lambda s, r: chunks.append(s))
    # After chunk 1 it looked three times (waiting, waiting, gone), then once after each later chunk.
    assert chunks == [200, 400, 600, 607]
    assert looks == [1, 1, 1, 2, 3, 4]
