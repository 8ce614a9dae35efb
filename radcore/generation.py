"""Series and card generation: validate a new series, then write its cards and PINs in short chunks.

A series of millions of cards cannot be one transaction: LMDB has a single writer, and RADIUS accounting
must commit every few milliseconds. So the series record is written first with generated=0, then each
chunk of cards is one write transaction that also advances `series.generated`. An interruption (crash,
cancelled RPC) therefore leaves a consistent prefix of cards that `resume_generation` continues or
`rollback_generation` removes. A `generation` entry marks the series as in progress until the chunk
that completes it, which also bumps config_version in the same transaction.

Incomplete series are invisible: RADIUS, listings and exports must check `Series.complete`.
"""

from __future__ import annotations

import json
import re
import secrets
from dataclasses import replace
from typing import Callable
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import lmdb

from radcore.errors import Conflict, Invalid, NotFound, StoreError
from radcore.keys import KeyRing
from radcore.rating import get_rate_table
from radcore.store import (MAX_SERIAL, MAX_SERIES, Card, CardStatus, Series, SeriesStatus, Store,
                           bump_version, card_key, format_card_number, get_series, name_key, put_series,
                           series_key)

Progress = Callable[[int, int], None]

MAX_QUANTITY = MAX_SERIAL + 1
MIN_PIN_LENGTH = 8
MAX_PIN_LENGTH = 16
#: The PIN space must be this many times larger than all PINs in the system after generation, so a
#: random guess hits some card with probability <= 10% and unique draws rarely need a retry.
PIN_SPACE_FACTOR = 10
#: Draws per card before giving up; with the space factor above, 64 collisions in a row has
#: probability below 1e-64 unless the index is far fuller than validation allowed.
MAX_PIN_DRAWS = 64
MAX_CHUNK = 100_000
#: Cards per write transaction. Small enough that the writer lock is held a few milliseconds, so
#: RADIUS accounting (which needs the same lock) never waits long behind a generation.
DEFAULT_CHUNK = 500
#: PINs drawn ahead and handed out in digest order (see `_PinPool`).
PIN_RUN = 50_000
_INT64_MAX = 2**63 - 1
_CURRENCY = re.compile(r"[A-Z]{3}")


def _int(name: str, value: object, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise Invalid(name, f"must be an integer, got {value!r}")
    if not low <= value <= high:
        raise Invalid(name, f"must be in {low}..{high}, got {value}")
    return value


def _text(name: str, value: object, limit: int) -> str:
    if not isinstance(value, str) or len(value) > limit:
        raise Invalid(name, f"must be text of at most {limit} characters")
    return value


def validate_new_series(txn: lmdb.Transaction, store: Store, series: Series, *, now: int) -> None:
    """Every rule a new series must satisfy; raises Invalid naming the field, or Conflict if taken.

    Run inside the write transaction that creates the series, so the uniqueness and reference checks
    cannot race with another writer.
    """
    _int("number", series.number, 1, MAX_SERIES)
    _text("name", series.name, 200)
    _text("notes", series.notes, 4000)
    if series.status not in (SeriesStatus.ACTIVE, SeriesStatus.STOPPED):
        raise Invalid("status", "a new series must be active or stopped")
    if not isinstance(series.currency, str) or not _CURRENCY.fullmatch(series.currency):
        raise Invalid("currency", f"must be an ISO 4217 code such as USD, got {series.currency!r}")
    first = _int("first_serial", series.first_serial, 0, MAX_SERIAL)
    _int("quantity", series.quantity, 1, MAX_QUANTITY - first)
    length = _int("pin_length", series.pin_length, MIN_PIN_LENGTH, MAX_PIN_LENGTH)
    if series.initial_status not in (CardStatus.PENDING, CardStatus.ACTIVATED):
        raise Invalid("initial_status", "must be pending or activated")
    if not isinstance(series.control_panel, bool):
        raise Invalid("control_panel", "must be true or false")
    face = _int("face_balance", series.face_balance, 0, _INT64_MAX)
    _int("activation_fee", series.activation_fee, 0, face)
    fee = _int("maintenance_fee", series.maintenance_fee, 0, _INT64_MAX)
    period = _int("maintenance_period_hours", series.maintenance_period_hours, 0, 24 * 366 * 10)
    if fee and not period:
        raise Invalid("maintenance_period_hours", "must be > 0 when a maintenance fee is set")
    expiry = _int("expiry_date", series.expiry_date, 0, _INT64_MAX)
    if expiry and expiry <= now:
        raise Invalid("expiry_date", "is already in the past")
    _int("expiry_period_days", series.expiry_period_days, 0, 36_600)
    _int("max_concurrent_calls", series.max_concurrent_calls, 1, 0xFFFF)
    try:
        ZoneInfo(_text("time_zone", series.time_zone, 64))
    except (ZoneInfoNotFoundError, ValueError) as e:
        raise Invalid("time_zone", f"unknown IANA time zone {series.time_zone!r}") from e
    for name in ("reseller", "rate_table", "tax_profile", "routing_plan"):
        _text(name, getattr(series, name), 255)

    table = get_rate_table(txn, store, series.rate_table) if series.rate_table else None
    if table is None:
        raise Invalid("rate_table", f"rate table {series.rate_table!r} does not exist")
    if table.currency != series.currency:
        raise Invalid("rate_table", f"rate table {table.name!r} is in {table.currency}, "
                                    f"the series in {series.currency}")
    for name, db in (("tax_profile", store.tax_profiles), ("routing_plan", store.routing_plans),
                     ("reseller", store.resellers)):
        value = getattr(series, name)
        if value and txn.get(name_key(value, name), db=db) is None:
            raise Invalid(name, f"{name.replace('_', ' ')} {value!r} does not exist")
    if txn.get(series_key(series.number), db=store.series) is not None:
        raise Conflict(f"series {series.number} already exists")
    existing = txn.stat(store.pins)["entries"]
    needed = PIN_SPACE_FACTOR * (series.quantity + existing)
    if 10 ** length < needed:
        raise Invalid("pin_length", f"{length}-digit PINs give {10 ** length:,} combinations, but "
                                    f"{series.quantity:,} new plus {existing:,} existing PINs need at "
                                    f"least {needed:,}: use longer PINs")


def generate_series(store: Store, keyring: KeyRing, series: Series, *, clock: Callable[[], int],
                    chunk_size: int = DEFAULT_CHUNK, progress: Progress | None = None) -> Series:
    """Create `series` and all its cards; returns the completed series record.

    Cards get status `initial_status`, balance `face_balance`, a unique random PIN (digest in `pins`,
    ciphertext in the card). Initially activated cards are activated now: activated_at = now, expiry =
    min(expiry_date, now + expiry_period_days), fees paid until now (the first maintenance period starts
    at activation). Per the design the activation fee is charged by the activation event in RADIUS
    card authentication, which these cards skip, so they start with the full face balance. Pending
    cards carry only the series expiry date until they are activated.

    `progress(done, total)` runs after each committed chunk; an exception from it (or anything else)
    stops generation with the committed prefix intact.
    """
    _int("chunk_size", chunk_size, 1, MAX_CHUNK)
    now = clock()
    with store.transaction(write=True) as txn:
        validate_new_series(txn, store, series, now=now)
        record = replace(series, created_at=now, updated_at=now, generated=0)
        put_series(txn, store, record, bump=False)
        txn.put(series_key(record.number), json.dumps({"started_at": now}).encode(), db=store.generation)
    return _generate(store, keyring, record.number, clock, chunk_size, progress)


def resume_generation(store: Store, keyring: KeyRing, number: int, *, clock: Callable[[], int],
                      chunk_size: int = DEFAULT_CHUNK, progress: Progress | None = None) -> Series:
    """Continue an interrupted generation from `series.generated`; a complete series is returned as is."""
    _int("chunk_size", chunk_size, 1, MAX_CHUNK)
    with store.transaction() as txn:
        series = get_series(txn, store, number)
    if series is None:
        raise NotFound(f"series {number} does not exist")
    if series.complete:
        return series
    return _generate(store, keyring, number, clock, chunk_size, progress)


def _generate(store: Store, keyring: KeyRing, number: int, clock: Callable[[], int], chunk_size: int,
              progress: Progress | None) -> Series:
    """Chunk loop. PINs, digests and ciphertexts are computed before taking the writer lock (they are
    ~80% of the work), so the write transaction only inserts and commits."""
    pool: _PinPool | None = None
    while True:
        with store.transaction() as txn:
            planned = get_series(txn, store, number)
        if planned is None:
            raise NotFound(f"series {number} was removed during generation")
        if planned.complete:
            return planned
        if pool is None:
            pool = _PinPool(keyring, planned.pin_length, planned.quantity - planned.generated)
        now = clock()
        batch = _prepare_chunk(keyring, planned, now, chunk_size, pool)
        with store.transaction(write=True) as txn:
            # Re-read under the writer lock: if another resumer got there first, drop this batch and
            # plan again, so no serial is ever written twice.
            series = get_series(txn, store, number)
            if series is None:
                raise NotFound(f"series {number} was removed during generation")
            if series.generated != planned.generated:
                continue
            _write_chunk(txn, store, keyring, series, now, batch)
        if progress is not None:
            progress(series.generated, series.quantity)
        if series.complete:
            return series


class _PinPool:
    """Random PINs drawn `PIN_RUN` at a time and handed out in order of their digest.

    The `pins` index is keyed by a random-looking digest, so a chunk of PINs drawn one by one
    dirties a B-tree page per PIN all over the index: about 4 KB written per card and a writer lock
    held for tens of milliseconds per chunk, which stalls accounting. Handing a chunk PINs whose
    digests are neighbours makes its index writes land on a few adjacent pages (a tenth of the
    bytes, a few milliseconds per chunk). The order reveals nothing: the digest is keyed by the
    secret pepper, and which PIN goes to which serial is still uniformly random.
    """

    def __init__(self, keyring: KeyRing, length: int, remaining: int):
        self.keyring = keyring
        self.length = length
        self.remaining = remaining
        self.ready: list[tuple[bytes, str]] = []

    def take(self) -> tuple[str, bytes]:
        if not self.ready:
            count = max(1, min(PIN_RUN, self.remaining))
            drawn = {}
            for _ in range(count * MAX_PIN_DRAWS):  # bounded: a nearly full PIN space must not hang
                pin, digest = _draw(self.keyring, self.length)
                drawn[digest] = pin
                if len(drawn) == count:
                    break
            self.ready = sorted(drawn.items(), reverse=True)  # pop() from the end: ascending
        self.remaining -= 1
        digest, pin = self.ready.pop()
        return pin, digest


def _initial_card(series: Series, now: int) -> Card:
    if series.initial_status != CardStatus.ACTIVATED:
        return Card(status=CardStatus.PENDING, balance=series.face_balance, expires_at=series.expiry_date)
    limits = [t for t in (series.expiry_date,
                          series.expiry_period_days and now + series.expiry_period_days * 86_400) if t]
    return Card(status=CardStatus.ACTIVATED, balance=series.face_balance, activated_at=now,
                expires_at=min(limits, default=0), fees_paid_until=now)


def _draw(keyring: KeyRing, length: int) -> tuple[str, bytes]:
    pin = str(secrets.randbelow(10 ** length)).zfill(length)
    return pin, keyring.pin_digest(pin)


def _prepare_chunk(keyring: KeyRing, series: Series, now: int, chunk_size: int,
                   pool: _PinPool) -> list[tuple[bytes, bytes, bytes]]:
    """(card key, PIN digest, packed card) for the next chunk; no store access."""
    card = _initial_card(series, now)
    batch = []
    for index in range(series.generated, min(series.quantity, series.generated + chunk_size)):
        key = card_key(series.number, series.first_serial + index)
        pin, card.pin_digest = pool.take()
        card.pin_blob = keyring.encrypt_pin(pin, key)
        batch.append((key, card.pin_digest, card.pack()))
    return batch


def _write_chunk(txn: lmdb.Transaction, store: Store, keyring: KeyRing, series: Series, now: int,
                 batch: list[tuple[bytes, bytes, bytes]]) -> None:
    """Insert a prepared chunk of cards and PIN index entries and advance series.generated."""
    cards = txn.cursor(db=store.cards)
    pins = txn.cursor(db=store.pins)
    for key, digest, value in batch:
        # overwrite=False is the uniqueness check, against the whole system and this chunk alike.
        # A collision draws again here, under the lock; it is rare by construction (PIN_SPACE_FACTOR).
        draws = 1
        while not pins.put(digest, key, overwrite=False):
            if draws == MAX_PIN_DRAWS:
                raise StoreError(f"no unique {series.pin_length}-digit PIN after {MAX_PIN_DRAWS} draws: "
                                 "the PIN index is nearly full for this length")
            card = Card.unpack(value)
            pin, card.pin_digest = _draw(keyring, series.pin_length)
            digest, card.pin_blob = card.pin_digest, keyring.encrypt_pin(pin, key)
            value = card.pack()
            draws += 1
        if not cards.put(key, value, overwrite=False):
            serial = int.from_bytes(key[4:], "big")
            raise StoreError(f"card {format_card_number(series.number, serial)} already exists outside "
                             "any series generation")
    series.generated += len(batch)
    series.updated_at = now
    done = series.complete
    put_series(txn, store, series, bump=done)
    if done:
        txn.delete(series_key(series.number), db=store.generation)


def rollback_generation(store: Store, number: int, *, chunk_size: int = DEFAULT_CHUNK,
                        progress: Progress | None = None) -> int:
    """Delete an incomplete generation: its cards, their `pins` entries and the series. Returns the
    number of cards deleted.

    Works backwards from the highest serial in bounded chunks, lowering `series.generated` in the same
    transaction, so an interrupted rollback still leaves a consistent prefix (resumable either way).
    A complete series is refused: it may have live cards, and deleting it is a series-API decision.
    """
    _int("chunk_size", chunk_size, 1, MAX_CHUNK)
    skey = series_key(number)
    with store.transaction() as txn:
        series = get_series(txn, store, number)
        marked = txn.get(skey, db=store.generation) is not None
    if series is None:
        if not marked:
            raise NotFound(f"series {number} does not exist")
    elif series.complete or not marked:
        raise Conflict(f"series {number} is not an incomplete generation")
    total = series.generated if series else 0
    deleted = 0
    while True:
        with store.transaction(write=True) as txn:
            count, finished = _delete_chunk(txn, store, number, chunk_size)
        deleted += count
        if progress is not None:
            progress(deleted, total)
        if finished:
            return deleted


def _delete_chunk(txn: lmdb.Transaction, store: Store, number: int, chunk_size: int) -> tuple[int, bool]:
    prefix = series_key(number)
    cursor = txn.cursor(db=store.cards)
    found = cursor.prev() if cursor.set_range(series_key(number + 1)) else cursor.last()
    victims: list[tuple[bytes, bytes]] = []
    while found and len(victims) < chunk_size:
        key = cursor.key()
        if key[:4] != prefix:
            break
        victims.append((key, Card.unpack(cursor.value()).pin_digest))
        found = cursor.prev()
    for key, digest in victims:
        if txn.get(digest, db=store.pins) == key:
            txn.delete(digest, db=store.pins)
        txn.delete(key, db=store.cards)
    series = get_series(txn, store, number)
    finished = len(victims) < chunk_size
    if finished:
        txn.delete(prefix, db=store.series)
        txn.delete(prefix, db=store.generation)
        bump_version(txn, store)
    elif series is not None:
        lowest_serial = int.from_bytes(victims[-1][0][4:], "big")
        series.generated = min(series.generated, lowest_serial - series.first_serial)
        put_series(txn, store, series, bump=False)
    return len(victims), finished


def incomplete_generations(store: Store) -> list[int]:
    """Series numbers whose generation started and did not finish (resume or roll them back)."""
    with store.transaction() as txn:
        return [int.from_bytes(key, "big") for key in txn.cursor(db=store.generation).iternext(values=False)]
