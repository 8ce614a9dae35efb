"""Rotating the key that encrypts PINs, as an operator does it: on the server, from the key file.

A fresh AES-GCM key becomes current and every earlier key stays, so PINs already stored still
decrypt (each blob names its key id) while every PIN generated from then on is encrypted under the
new key. The pepper behind the PIN digests never changes. There is deliberately no RPC for this: the
key file lives outside the store and the API, and whoever rotates it must be able to read it.

The rotation and its audit entry share one write transaction: the key file is replaced (atomically,
see `radcore.keys.KeyRing.rotate`) inside it, so a failed rotation leaves no entry. Running servers
pick the new key up without a restart: each series generation re-reads the key file first, and a
blob naming an unknown key id makes the reader reload it.
"""

from __future__ import annotations

from collections.abc import Callable

from control import audit
from control.auth import LOCAL, Principal
from radcore.keys import KeyRing
from radcore.store import Store

RPC = "RotatePinKey"
TARGET = "keys/pin"


def rotate_pin_key(store: Store, keyring: KeyRing, *, clock: Callable[[], int],
                   principal: Principal = LOCAL) -> tuple[int, int]:
    """Make a new PIN encryption key current; returns (previous key id, new key id)."""
    with store.transaction(write=True) as txn:
        keyring.reload()  # another process may have rotated since this ring was loaded
        before = keyring.current
        after = keyring.rotate()
        audit.record(txn, store, principal, RPC, TARGET, now=clock(),
                     before={"current_key": before}, after={"current_key": after})
    return before, after
