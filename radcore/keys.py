"""The key file: the HMAC pepper behind the `pins` index and the AES-256-GCM keys that encrypt PINs.

PINs are secrets that admins must still be able to list and export, so they are stored encrypted, never
in plaintext, and the keys live outside LMDB: a copied data directory alone reveals no PIN. The pepper
makes the PIN digest (the `pins` index key) useless for offline guessing without the key file; it is
never rotated because every digest in the index depends on it. Encryption keys rotate: each blob
names its key id, old keys stay for decryption, new PINs use the current key.

File format (JSON, mode 0600): {"format": 1, "pepper": b64, "current": id, "keys": {"id": b64, ...}}.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets
import stat

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from radcore.errors import StoreError

FORMAT = 1
KEY_SIZE = 32
NONCE_SIZE = 12
TAG_SIZE = 16
MAX_KEY_ID = 255  # the blob stores the key id in one byte


class KeyRing:
    """Pepper + AES-GCM keys loaded from one key file. Safe to share between threads (read-only after
    load, apart from `rotate`/`reload`, which replace dicts atomically)."""

    def __init__(self, path: str, pepper: bytes, keys: dict[int, bytes], current: int):
        self.path = path
        self._pepper_mac = hmac.new(pepper, digestmod=hashlib.sha256)
        self._pepper = pepper
        self._keys = dict(keys)
        self._aead = {kid: AESGCM(key) for kid, key in keys.items()}
        self.current = current

    # --- file handling ------------------------------------------------------------------------------

    @classmethod
    def load_or_create(cls, path: str | os.PathLike) -> KeyRing:
        """Load the key file, creating it (mode 0600, atomically, never overwriting) on first use.

        Creation writes a temporary file opened O_CREAT|O_EXCL with mode 0600 and then hard-links it to
        the final name: readers never see a half-written file, and if two processes race on first
        start the loser's link fails and it loads the winner's keys instead of replacing them.
        """
        path = os.fspath(path)
        try:
            return cls._load(path)
        except FileNotFoundError:
            pass
        parent = os.path.dirname(os.path.abspath(path))
        os.makedirs(parent, mode=0o700, exist_ok=True)
        ring = cls(path, secrets.token_bytes(KEY_SIZE), {1: secrets.token_bytes(KEY_SIZE)}, 1)
        tmp = _write_private(path, ring._serialise())
        try:
            os.link(tmp, path)
        except FileExistsError:
            return cls._load(path)
        finally:
            os.unlink(tmp)
        _fsync_dir(parent)
        return ring

    @classmethod
    def load(cls, path: str | os.PathLike) -> KeyRing:
        """Load an existing key file; its absence is an error (StoreError), never a reason to make one:
        a new pepper would invalidate every PIN digest in the store."""
        path = os.fspath(path)
        try:
            return cls._load(path)
        except FileNotFoundError:
            raise StoreError(f"no key file at {path}: radcore serve creates it when it first starts") from None

    @classmethod
    def _load(cls, path: str) -> KeyRing:
        """Read and check the key file; FileNotFoundError passes through (it means: create one)."""
        try:
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        except FileNotFoundError:
            raise
        except OSError as e:  # ELOOP for a symlink (refused: it could point anywhere), EACCES, ...
            raise StoreError(f"cannot open key file {path}: {e.strerror}") from e
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise StoreError(f"key file {path} is not a regular file")
            if st.st_mode & 0o077:
                raise StoreError(f"key file {path} has mode {stat.S_IMODE(st.st_mode):04o}; it holds the "
                                 f"PIN keys and must not be accessible by group or others: chmod 600 {path}")
            with os.fdopen(fd, "rb", closefd=False) as f:
                raw = f.read()
        finally:
            os.close(fd)
        return cls._parse(path, raw)

    @classmethod
    def _parse(cls, path: str, raw: bytes) -> KeyRing:
        try:
            doc = json.loads(raw)
            if doc.get("format") != FORMAT:
                raise ValueError(f"unsupported format {doc.get('format')!r}")
            pepper = base64.b64decode(doc["pepper"], validate=True)
            keys = {int(kid): base64.b64decode(k, validate=True) for kid, k in doc["keys"].items()}
            current = doc["current"]
            if len(pepper) != KEY_SIZE:
                raise ValueError("pepper must be 32 bytes")
            if not keys or any(not 1 <= kid <= MAX_KEY_ID or len(k) != KEY_SIZE for kid, k in keys.items()):
                raise ValueError(f"keys must be 32 bytes with ids 1..{MAX_KEY_ID}")
            if type(current) is not int or current not in keys:
                raise ValueError("current key id is not among the keys")
        except (ValueError, TypeError, KeyError, AttributeError) as e:
            raise StoreError(f"key file {path} is malformed: {e}") from e
        return cls(path, pepper, keys, current)

    def _serialise(self) -> bytes:
        doc = {
            "format": FORMAT,
            "pepper": base64.b64encode(self._pepper).decode(),
            "current": self.current,
            "keys": {str(kid): base64.b64encode(k).decode() for kid, k in sorted(self._keys.items())},
        }
        return json.dumps(doc, indent=1).encode() + b"\n"

    def rotate(self) -> int:
        """Add a new encryption key and make it current; old keys stay for decrypting existing blobs.

        Written to a new 0600 file and renamed over the old one, so a crash leaves either file whole.
        Rotation is an operator action run from one process; other processes pick the new key up the
        first time they meet a blob that names it (see `decrypt_pin`). Ids count up; past MAX_KEY_ID
        they start again at the lowest id that `prune` has freed (no stored PIN names it any more).
        """
        self.reload()
        top = max(self._keys)
        new_id = top + 1 if top < MAX_KEY_ID else next(
            (kid for kid in range(1, top) if kid not in self._keys), None)
        if new_id is None:
            raise StoreError(f"key file {self.path} already holds {MAX_KEY_ID} keys; re-encrypt the PINs "
                             "under the current key (radcore keys reencrypt) and prune the old keys "
                             "(radcore keys prune) before rotating again")
        self._replace(KeyRing(self.path, self._pepper, {**self._keys, new_id: secrets.token_bytes(KEY_SIZE)},
                              new_id))
        return new_id

    def prune(self) -> list[int]:
        """Drop every key but the current one; returns the ids dropped. Only once no stored PIN names
        them (control.key_rotation.prune_keys checks that): a dropped key cannot come back."""
        self.reload()
        dropped = sorted(kid for kid in self._keys if kid != self.current)
        if dropped:
            self._replace(KeyRing(self.path, self._pepper, {self.current: self._keys[self.current]},
                                  self.current))
        return dropped

    def _replace(self, candidate: KeyRing) -> None:
        """Write `candidate` to a new 0600 file, rename it over the key file, and adopt it."""
        tmp = _write_private(self.path, candidate._serialise())
        try:
            os.replace(tmp, self.path)
        except BaseException:
            os.unlink(tmp)
            raise
        _fsync_dir(os.path.dirname(os.path.abspath(self.path)))
        self._adopt(candidate)

    def reload(self) -> None:
        """Re-read the key file (another process may have rotated). The pepper must not change."""
        fresh = self._load(self.path)
        if not hmac.compare_digest(fresh._pepper, self._pepper):
            raise StoreError(f"key file {self.path} now has a different pepper; every PIN digest is "
                             "invalid under it: restore the original key file")
        self._adopt(fresh)

    def _adopt(self, other: KeyRing) -> None:
        self._keys = other._keys
        self._aead = other._aead
        self.current = other.current

    # --- PIN operations -----------------------------------------------------------------------------

    def pin_digest(self, pin: str) -> bytes:
        """HMAC-SHA256(pepper, PIN): the `pins` index key and the card's stored check value."""
        mac = self._pepper_mac.copy()
        mac.update(pin.encode())
        return mac.digest()

    @property
    def pin_pepper(self) -> bytes:
        """The HMAC key of `pin_digest`, for the C card-authentication lane (`radcore._cardauth`),
        which computes the same digest without a str round trip. Never log or export it."""
        return self._pepper

    def pin_matches(self, pin: str, digest: bytes) -> bool:
        """Constant-time comparison, so response timing does not leak how much of a guess was right."""
        return hmac.compare_digest(self.pin_digest(pin), digest)

    def encrypt_pin(self, pin: str, aad: bytes) -> bytes:
        """key id (1 byte) + random 96-bit nonce + AES-GCM ciphertext and tag.

        `aad` is the card key: the blob authenticates only on its own card, so swapping blobs between
        cards is detected. Random nonces are safe for about 2**32 encryptions per key; rotate long
        before a deployment has generated billions of cards under one key.
        """
        nonce = os.urandom(NONCE_SIZE)
        kid = self.current
        return bytes((kid,)) + nonce + self._aead[kid].encrypt(nonce, pin.encode(), aad)

    def decrypt_pin(self, blob: bytes, aad: bytes) -> str:
        if len(blob) < 1 + NONCE_SIZE + TAG_SIZE:
            raise StoreError("encrypted PIN is truncated")
        kid = blob[0]
        aead = self._aead.get(kid)
        if aead is None:
            self.reload()
            aead = self._aead.get(kid)
            if aead is None:
                raise StoreError(f"encrypted PIN uses key id {kid}, which is not in key file {self.path}")
        try:
            plain = aead.decrypt(bytes(blob[1:1 + NONCE_SIZE]), bytes(blob[1 + NONCE_SIZE:]), aad)
        except InvalidTag as e:
            raise StoreError("encrypted PIN failed authentication: wrong card, wrong key or corrupted") from e
        return plain.decode()


def _write_private(path: str, data: bytes) -> str:
    """Write `data` to a fresh 0600 sibling of `path` (O_CREAT|O_EXCL), fsynced; return its name."""
    tmp = f"{path}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        os.unlink(tmp)
        raise
    os.close(fd)
    return tmp


def _fsync_dir(directory: str) -> None:
    """Make a link/rename durable: the directory entry lives in the directory, not the file."""
    fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
