"""Rotating the PIN encryption key: old PINs still decrypt, new series use the new key even in a
process that loaded the key file before the rotation, the audit log has the change, and the operator's
`radcore keys rotate` (run as a subprocess) does it with one readable line on stdout or stderr."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from control.audit import list_audit
from control.auth import LOCAL
from control.key_rotation import RPC, TARGET, rotate_pin_key
from helpers_store import NOW, add_rate_table, new_series, open_store
from radcore.clock import FixedClock
from radcore.errors import StoreError
from radcore.generation import generate_series
from radcore.keys import KeyRing
from radcore.store import Store, card_key, iter_series_cards

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
        (RPC, "local", {"current_key": 1}, {"current_key": 2})]
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


def run_cli(tmp_path, *args):
    env = {k: v for k, v in os.environ.items() if not k.startswith("RADCORE_")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    return subprocess.run([sys.executable, "-m", "control.cli", "keys", "rotate", *args], cwd=tmp_path,
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
