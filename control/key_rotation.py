"""The keys that encrypt PINs, as an operator handles them: on the server, from the key file.

`rotate_pin_key` makes a fresh AES-GCM key current. Every earlier key stays, so PINs already stored
still decrypt (each blob names its key id) while every PIN generated from then on is encrypted under
the new key. After a suspected compromise of an old key, `reencrypt_pins` moves every stored PIN to
the current key and `prune_keys` then deletes the old keys from the file. The pepper behind the PIN
digests never changes. There is deliberately no RPC for any of this: the key file lives outside the
store and the API, and whoever changes it must be able to read it.

Each change and its audit entry share a write transaction. Running servers pick changes up without a
restart: each series generation re-reads the key file first, and a blob naming an unknown key id
makes the reader reload it.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from control import audit
from control.auth import LOCAL, Principal
from radcore.errors import Conflict
from radcore.keys import KeyRing
from radcore.records import CARD_FIXED_SIZE
from radcore.store import Store

TARGET = "keys/pin"
#: Cards per chunk of a re-encryption, and so at most per write transaction (see `reencrypt_pins`):
#: the lock is held about 1.3 ms per chunk with its durable commit (100,000 cards in 1.3-1.5 s on the
#: development machine).
REENCRYPT_CHUNK = 250
#: How long a re-encryption waits, between two chunks, for writers blocked on the lock to get it.
YIELD_LIMIT_S = 0.25


@dataclass(frozen=True, slots=True)
class Reencryption:
    scanned: int       # cards looked at
    reencrypted: int   # of them, PINs that were under an older key
    current_key: int


def rotate_pin_key(store: Store, keyring: KeyRing, *, clock: Callable[[], int],
                   principal: Principal = LOCAL) -> tuple[int, int]:
    """Make a new PIN encryption key current; returns (previous key id, new key id)."""
    with store.transaction(write=True) as txn:
        keyring.reload()  # another process may have rotated since this ring was loaded
        before = keyring.current
        after = keyring.rotate()
        audit.record(txn, store, principal, "RotatePinKey", TARGET, now=clock(),
                     before={"current_key": before}, after={"current_key": after})
    return before, after


def reencrypt_pins(store: Store, keyring: KeyRing, *, clock: Callable[[], int], principal: Principal = LOCAL,
                   chunk: int = REENCRYPT_CHUNK,
                   progress: Callable[[int, int], None] | None = None) -> Reencryption:
    """Re-encrypt, under the current key, every stored PIN that an older key encrypts.

    A walk over the cards in key order, `chunk` cards at a time. Each chunk's stale PINs are found in
    a read snapshot and re-encrypted with no lock held (the AES-GCM work was half of a chunk's
    lock hold); one write transaction then swaps the new blobs in, so an interruption leaves every
    card whole (its PIN under one key or the other) and running it again finishes the job. Only the
    PIN blob changes: the rest of each card is rewritten as it reads inside that transaction, so no
    debit made since the snapshot is lost, and a blob that changed meanwhile (another re-encryption)
    is left alone. `progress(scanned, reencrypted)` runs after each chunk. The audit entry goes with
    the last chunk.
    """
    keyring.reload()
    current = keyring.current
    scanned = reencrypted = 0
    start: bytes | None = b""
    while start is not None:
        with store.transaction() as txn:
            seen, stale, start = _stale_blobs(txn, store, current, start, chunk)
        scanned += seen
        fresh = [(key, old, keyring.encrypt_pin(keyring.decrypt_pin(old, key), key)) for key, old in stale]
        if fresh or start is None:
            with store.transaction(write=True) as txn:
                for key, old, new in fresh:
                    raw = txn.get(key, db=store.cards)
                    if raw is not None and raw[CARD_FIXED_SIZE:] == old:   # else removed or redone
                        txn.put(key, raw[:CARD_FIXED_SIZE] + new, db=store.cards)
                        reencrypted += 1
                if start is None:
                    audit.record(txn, store, principal, "ReencryptPins", TARGET, now=clock(),
                                 after={"current_key": current, "reencrypted": reencrypted})
        if progress is not None:
            progress(scanned, reencrypted)
        if fresh:
            _let_writers_in(store)
    return Reencryption(scanned, reencrypted, current)


def _stale_blobs(txn, store: Store, current: int, start: bytes, chunk: int
                 ) -> tuple[int, list[tuple[bytes, bytes]], bytes | None]:
    """Up to `chunk` cards from key `start` on (b"": the first): how many were looked at, the
    (card key, PIN blob) of those whose blob names another key than `current`, and the key to go on
    from (None: no more cards)."""
    cursor = txn.cursor(db=store.cards)
    found = cursor.set_range(start) if start else cursor.first()
    seen = 0
    stale = []
    while found and seen < chunk:
        raw = cursor.value()
        seen += 1
        if len(raw) > CARD_FIXED_SIZE and raw[CARD_FIXED_SIZE] != current:
            stale.append((cursor.key(), raw[CARD_FIXED_SIZE:]))
        found = cursor.next()
    return seen, stale, cursor.key() if found else None


def _let_writers_in(store: Store) -> None:
    """Wait until no other writer is blocked on LMDB's write lock (a RADIUS worker with a batch to
    commit), for at most YIELD_LIMIT_S. The lock's mutex hands no turn to a waiter: a loop of chunks
    that takes it straight back could keep accounting waiting for many of them. Measured with a
    process committing 400 small write transactions a second during a 300,000-card re-encryption,
    two pairs: its commit p99 was 5.3 and 9.6 ms with this, 15.7 and 10.3 ms without, and the
    re-encryption took 15 % longer."""
    deadline = time.monotonic() + YIELD_LIMIT_S
    while store.waiters is not None and store.waiters.any() and time.monotonic() < deadline:
        time.sleep(0.0002)


def prune_keys(store: Store, keyring: KeyRing, *, clock: Callable[[], int],
               principal: Principal = LOCAL) -> list[int]:
    """Delete every key but the current one from the key file, once no stored PIN names them.

    The cards are counted by key in a read snapshot, so RADIUS is not held up however many there are;
    the deletion then happens in a write transaction that first checks nothing could have added a
    PIN since: no generation is under way and the cards are as many as in the snapshot (only
    generation writes PINs, and it only adds cards). Otherwise Conflict, and nothing changes.
    """
    keyring.reload()
    current = keyring.current
    with store.transaction() as txn:
        if _generating(txn, store):
            raise Conflict("a series is being generated: prune the keys once it has finished")
        cards = txn.stat(store.cards)["entries"]
        used = Counter(raw[CARD_FIXED_SIZE] for raw in txn.cursor(db=store.cards).iternext(keys=False)
                       if len(raw) > CARD_FIXED_SIZE)
    older = {kid: n for kid, n in used.items() if kid != current}
    if older:
        raise Conflict(f"{sum(older.values()):,} PINs are still encrypted under key(s) "
                       f"{', '.join(map(str, sorted(older)))}: run 'radcore keys reencrypt' first")
    with store.transaction(write=True) as txn:
        if _generating(txn, store) or txn.stat(store.cards)["entries"] != cards:
            raise Conflict("cards were generated while the keys were checked: run 'radcore keys prune' again")
        keyring.reload()
        if keyring.current != current:
            raise Conflict("the key was rotated while the keys were checked: run 'radcore keys reencrypt' "
                           "and 'radcore keys prune' again")
        dropped = keyring.prune()
        if dropped:
            audit.record(txn, store, principal, "PruneKeys", TARGET, now=clock(),
                         before={"keys": sorted([current, *dropped])}, after={"keys": [current]})
    return dropped


def _generating(txn, store: Store) -> bool:
    return txn.cursor(db=store.generation).first()
