import base64
import hashlib
import hmac
import json
import os
import stat
import threading

import pytest
from hypothesis import given
from hypothesis import strategies as st

from radcore.errors import StoreError
from radcore.keys import KeyRing

CARD = b"\x00\x00\x00\x2d\x00\x11\x22\x33"


@pytest.fixture
def key_path(tmp_path):
    return str(tmp_path / "secrets" / "keys.json")


def read_doc(path):
    with open(path, "rb") as f:
        return json.load(f)


@pytest.fixture(scope="module")
def shared_ring(tmp_path_factory):
    return KeyRing.load_or_create(str(tmp_path_factory.mktemp("ring") / "k.json"))


def mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


def test_created_with_mode_0600_and_reused(key_path):
    old_umask = os.umask(0)  # a permissive umask must not widen the file
    try:
        ring = KeyRing.load_or_create(key_path)
    finally:
        os.umask(old_umask)
    assert mode(key_path) == 0o600
    blob = ring.encrypt_pin("1234567890", CARD)
    again = KeyRing.load_or_create(key_path)
    assert again.pin_digest("1234567890") == ring.pin_digest("1234567890")
    assert again.decrypt_pin(blob, CARD) == "1234567890"
    assert [f for f in os.listdir(os.path.dirname(key_path))] == ["keys.json"]  # no temp files left


def test_file_contents(key_path):
    KeyRing.load_or_create(key_path)
    doc = read_doc(key_path)
    assert doc["format"] == 1 and doc["current"] == 1
    assert len(base64.b64decode(doc["pepper"])) == 32
    assert len(base64.b64decode(doc["keys"]["1"])) == 32


@pytest.mark.parametrize("bad_mode", [0o640, 0o604, 0o660, 0o644])
def test_refuses_group_or_world_access(key_path, bad_mode):
    KeyRing.load_or_create(key_path)
    os.chmod(key_path, bad_mode)
    with pytest.raises(StoreError, match="chmod 600"):
        KeyRing.load_or_create(key_path)


def test_refuses_symlink(key_path, tmp_path):
    KeyRing.load_or_create(key_path)
    link = str(tmp_path / "link.json")
    os.symlink(key_path, link)
    with pytest.raises(StoreError, match="cannot open key file"):
        KeyRing.load_or_create(link)


@pytest.mark.parametrize("content", [
    b"not json",
    b"[]",
    b'{"format": 2, "pepper": "", "current": 1, "keys": {}}',
    json.dumps({"format": 1, "pepper": base64.b64encode(b"x" * 16).decode(), "current": 1,
                "keys": {"1": base64.b64encode(b"k" * 32).decode()}}).encode(),
    json.dumps({"format": 1, "pepper": base64.b64encode(b"x" * 32).decode(), "current": 2,
                "keys": {"1": base64.b64encode(b"k" * 32).decode()}}).encode(),
    json.dumps({"format": 1, "pepper": base64.b64encode(b"x" * 32).decode(), "current": 1,
                "keys": {"1": base64.b64encode(b"k" * 31).decode()}}).encode(),
    json.dumps({"format": 1, "pepper": "!!notbase64", "current": 1, "keys": {}}).encode(),
    json.dumps({"format": 1, "pepper": base64.b64encode(b"x" * 32).decode(), "current": 300,
                "keys": {"300": base64.b64encode(b"k" * 32).decode()}}).encode(),
])
def test_refuses_malformed(key_path, content):
    os.makedirs(os.path.dirname(key_path))
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.write(fd, content)
    os.close(fd)
    with pytest.raises(StoreError, match="malformed"):
        KeyRing.load_or_create(key_path)


def test_pin_digest_is_hmac_of_pepper(key_path):
    ring = KeyRing.load_or_create(key_path)
    pepper = base64.b64decode(read_doc(key_path)["pepper"])
    assert ring.pin_digest("0012345678") == hmac.new(pepper, b"0012345678", hashlib.sha256).digest()
    assert ring.pin_matches("0012345678", ring.pin_digest("0012345678"))
    assert not ring.pin_matches("0012345679", ring.pin_digest("0012345678"))
    other = KeyRing.load_or_create(key_path + ".other")
    assert other.pin_digest("0012345678") != ring.pin_digest("0012345678")


@given(pin=st.text(alphabet="0123456789", min_size=8, max_size=16))
def test_encrypt_round_trip_and_layout(shared_ring, pin):
    ring = shared_ring
    blob = ring.encrypt_pin(pin, CARD)
    assert blob[0] == ring.current
    assert len(blob) == 1 + 12 + len(pin) + 16
    assert ring.decrypt_pin(blob, CARD) == pin
    assert ring.encrypt_pin(pin, CARD)[1:13] != blob[1:13]  # fresh nonce each time


def test_blob_bound_to_card_and_tamper_evident(key_path):
    ring = KeyRing.load_or_create(key_path)
    blob = ring.encrypt_pin("1234567890", CARD)
    with pytest.raises(StoreError, match="authentication"):
        ring.decrypt_pin(blob, CARD[:-1] + b"\x34")  # moved to another card
    tampered = bytearray(blob)
    tampered[-1] ^= 1
    with pytest.raises(StoreError, match="authentication"):
        ring.decrypt_pin(bytes(tampered), CARD)
    with pytest.raises(StoreError, match="truncated"):
        ring.decrypt_pin(blob[:20], CARD)
    with pytest.raises(StoreError, match="key id 9"):
        ring.decrypt_pin(b"\x09" + blob[1:], CARD)


def test_rotate_keeps_old_keys(key_path):
    ring = KeyRing.load_or_create(key_path)
    old_blob = ring.encrypt_pin("1111111111", CARD)
    digest = ring.pin_digest("1111111111")
    stale = KeyRing.load_or_create(key_path)  # another process, loaded before rotation
    assert ring.rotate() == 2
    assert ring.current == 2 and mode(key_path) == 0o600
    new_blob = ring.encrypt_pin("2222222222", CARD)
    assert new_blob[0] == 2
    assert ring.decrypt_pin(old_blob, CARD) == "1111111111"
    assert ring.pin_digest("1111111111") == digest  # the pepper never rotates
    assert stale.decrypt_pin(new_blob, CARD) == "2222222222"  # picks the new key up from the file
    assert stale.current == 2
    reopened = KeyRing.load_or_create(key_path)
    assert reopened.current == 2 and reopened.decrypt_pin(old_blob, CARD) == "1111111111"
    assert sorted(os.listdir(os.path.dirname(key_path))) == ["keys.json"]


def test_concurrent_first_start_agrees_on_one_key_file(key_path):
    rings, errors = [], []

    def start():
        try:
            rings.append(KeyRing.load_or_create(key_path))
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=start) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len({r.pin_digest("12345678") for r in rings}) == 1
    assert os.listdir(os.path.dirname(key_path)) == ["keys.json"]
