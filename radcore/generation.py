"""Series and card generation: validate a new series, then write its cards and PINs in short chunks.

A series of millions of cards cannot be one transaction: LMDB has a single writer, and RADIUS accounting
must commit every few milliseconds. So the series record is written first with generated=0, then each
chunk of cards is one write transaction that also advances `series.generated`. An interruption (crash,
cancelled RPC) therefore leaves a consistent prefix of cards that `resume_generation` continues or
`rollback_generation` removes. A `generation` entry marks the series as in progress until the chunk
that completes it, which also bumps config_version in the same transaction.

Incomplete series are invisible: RADIUS, listings and exports must check `Series.complete`.

RADIUS accounting waits behind every chunk (target: p99 within 3x of idle while a million cards are
generated), so two things keep generation out of its way: the series' PINs are drawn up front and
handed out in digest order (`_PinPool`), so each chunk's `pins` index writes land on a few adjacent
B-tree pages; and the chunks are prepared (PIN draws, digests, encryption) on a dedicated thread at
lower CPU priority (`GENERATION_NICE`), so on a busy machine the RADIUS workers get the CPU first,
while the short write transactions keep the caller's priority (see `_chunks`; in `radcore serve`
the caller is the control process, itself niced by `control.nice`). `start_generation`
exposes the chunks as an iterator for callers that report progress between them (the control
plane's streaming CreateSeries).
"""

from __future__ import annotations

import heapq
import itertools
import json
import logging
import os
import re
import secrets
import sys
import threading
from array import array
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from dataclasses import replace
from typing import Callable, Iterator
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import lmdb

from radcore.errors import Conflict, Invalid, NotFound, StoreError
from radcore.keys import KeyRing
from radcore.rating import get_rate_table
from radcore.store import (MAX_SERIAL, MAX_SERIES, Card, CardStatus, Series, SeriesStatus, Store,
                           bump_version, card_key, format_card_number, get_series, name_key, put_series,
                           series_key)

log = logging.getLogger(__name__)
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
#: Cards per write transaction. Small enough that the writer lock is held ~2 ms (commit included),
#: so RADIUS accounting (which needs the same lock) never waits long behind a generation. 250 halved
#: the hold's body but not its commit (two fsyncs), wrote 23% more per card and did not lower the
#: accounting p99 measurably (bench/results/generation-latency.md).
DEFAULT_CHUNK = 500
#: Most PINs drawn and sorted at once (see `_PinPool`): a series up to this size is one run, about
#: 48 bytes per card (~92 MiB at the cap); a larger one is generated in runs of this many cards.
PIN_RUN = 2_000_000
#: Keys sorted per piece before the pieces are merged, so sorting never holds a list of all of them.
_SORT_RUN = 1 << 16
#: Niceness added to the helper thread that prepares chunks (Linux, per thread), so the RADIUS workers
#: get the CPU first on a busy machine; 0 = leave the priority alone.
GENERATION_NICE = 10
_INT64_MAX = 2**63 - 1
_CURRENCY = re.compile(r"[A-Z]{3}")
#: h323-preferred-lang values as switches' IVR scripts take them ("en", "sp", "pt-BR"), or empty.
_LANGUAGE = re.compile(r"(?:[A-Za-z][A-Za-z0-9-]{0,15})?")


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


def check_language(value: object) -> str:
    """A series' language, sent to the switch as h323-preferred-lang; raises Invalid naming it."""
    if not isinstance(value, str) or not _LANGUAGE.fullmatch(value):
        raise Invalid("language", f"{value!r} is not a language tag: up to 16 letters, digits and "
                                  "hyphens, starting with a letter (e.g. en, es, pt-BR)")
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
    check_language(series.language)
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
    return _drive(start_generation(store, keyring, series, clock=clock, chunk_size=chunk_size), progress)


def start_generation(store: Store, keyring: KeyRing, series: Series, *, clock: Callable[[], int],
                     chunk_size: int = DEFAULT_CHUNK) -> Iterator[Series]:
    """Validate `series` and write its record (Invalid or Conflict are raised here, before anything is
    written), then return an iterator that writes one chunk per step and yields the series record after
    each commit, the last one complete. Closing it stops between chunks, leaving a resumable prefix.
    The write transactions run on the thread that iterates; see `_chunks` for the helper thread."""
    _int("chunk_size", chunk_size, 1, MAX_CHUNK)
    keyring.reload()  # a key rotated since this process started encrypts the new PINs
    now = clock()
    with store.transaction(write=True) as txn:
        validate_new_series(txn, store, series, now=now)
        record = replace(series, created_at=now, updated_at=now, generated=0)
        put_series(txn, store, record, bump=False)
        txn.put(series_key(record.number), json.dumps({"started_at": now}).encode(), db=store.generation)
    return _chunks(store, keyring, record.number, clock, chunk_size)


def resume_generation(store: Store, keyring: KeyRing, number: int, *, clock: Callable[[], int],
                      chunk_size: int = DEFAULT_CHUNK, progress: Progress | None = None) -> Series:
    """Continue an interrupted generation from `series.generated`; a complete series is returned as is.
    Only the remaining cards' PINs are drawn."""
    _int("chunk_size", chunk_size, 1, MAX_CHUNK)
    with store.transaction() as txn:
        series = get_series(txn, store, number)
    if series is None:
        raise NotFound(f"series {number} does not exist")
    if series.complete:
        return series
    keyring.reload()
    return _drive(_chunks(store, keyring, number, clock, chunk_size), progress)


def _drive(steps: Iterator[Series], progress: Progress | None) -> Series:
    with closing(steps):  # on any exception, stop the helper thread before returning
        for series in steps:
            if progress is not None:
                progress(series.generated, series.quantity)
        return series


def _lower_priority() -> None:
    """Add GENERATION_NICE to this thread's niceness (Linux only: elsewhere PRIO_PROCESS with a thread
    id would name a process). Without permission or API the generation runs at normal priority."""
    if not GENERATION_NICE or not sys.platform.startswith("linux"):
        return
    try:
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + GENERATION_NICE))
    except (AttributeError, OSError) as e:
        log.debug("card generation runs at normal CPU priority: %s", e)


def _chunks(store: Store, keyring: KeyRing, number: int, clock: Callable[[], int],
            chunk_size: int) -> Iterator[Series]:
    """The chunk loop, yielding the series after each commit.

    PINs, digests and ciphertexts (~80% of the work, and the series' PIN draw before the first chunk)
    are computed before taking the writer lock, on a dedicated helper thread at lower CPU priority
    (GENERATION_NICE), so on a busy machine the RADIUS workers get the CPU first. The write
    transaction (inserts and commit, ~1 ms per 500 cards plus the fsync) stays on the calling thread
    at its priority: niced further, a lock holder preempted by other work would stretch every hold
    that accounting waits behind. (The control process's own `control.nice` of 10 did not: hold p99
    3.2 to 7.4 ms at 10 against 3.9 to 8.7 at 0, over nine alternating runs.) A dedicated thread,
    because niceness cannot be given back: on Linux an unprivileged thread may lower its priority
    but not raise it again, which would leave a pooled (gRPC) thread slow for good. Chunks are not
    pipelined: preparing the next one during a write would raise the share of time the lock is held.
    """
    pool: _PinPool | None = None
    with ThreadPoolExecutor(1, thread_name_prefix="radcore-generation",
                            initializer=_lower_priority) as helper:
        while True:
            with store.transaction() as txn:
                planned = get_series(txn, store, number)
            if planned is None:
                raise NotFound(f"series {number} was removed during generation")
            if planned.complete:
                yield planned
                return
            if pool is None:
                pool = _PinPool(keyring, planned.pin_length, planned.quantity - planned.generated)
            now = clock()
            batch = helper.submit(_prepare_chunk, keyring, planned, now, chunk_size, pool).result()
            with store.transaction(write=True) as txn:
                # Re-read under the writer lock: if another resumer got there first, drop this batch
                # and plan again, so no serial is ever written twice.
                series = get_series(txn, store, number)
                if series is None:
                    raise NotFound(f"series {number} was removed during generation")
                if series.generated != planned.generated:
                    continue
                _write_chunk(txn, store, keyring, series, now, batch)
            yield series
            if series.complete:
                return


class _PinPool:
    """Unique random PINs for the rest of a series, drawn up front and handed out in digest order.

    The `pins` index is keyed by a random-looking digest, so PINs drawn one by one dirty a B-tree page
    per card all over the index: ~4 KB written per card and a writer lock held tens of milliseconds per
    chunk, which stalls RADIUS accounting. Handing out the whole series' PINs in ascending digest order
    makes generation one sweep over the index: each chunk inserts next to the previous chunk's keys, on a
    few adjacent pages (~350 B written per card). Sorting only runs of 50,000 swept the index 20 times
    per million cards and wrote ~1,000 B per card. The order reveals nothing: the digest is an
    HMAC keyed by the secret pepper, so without the pepper digest order is a random permutation of the
    PINs, and which PIN a serial gets is still uniformly random.

    Compact, because a run is the whole series (up to PIN_RUN): per PIN a 64-bit integer (the string
    is rebuilt with zfill), its 32-byte digest and a 64-bit sort key (digest prefix | draw index), about
    48 bytes or 46 MiB per million cards plus pieces of `_SORT_RUN` keys while sorting. A dict of
    (digest, PIN) objects would be ~250 MiB per million.

    Duplicate digests within a draw are dropped and drawn again, at most MAX_PIN_DRAWS draws per PIN
    in all, so a nearly full PIN space cannot hang (the run just comes out short, and the next take
    draws again). PINs already in the store are rejected at write time by `_write_chunk`.
    """

    def __init__(self, keyring: KeyRing, length: int, remaining: int):
        self.keyring = keyring
        self.length = length
        self.remaining = remaining
        self.width = len(keyring.pin_digest("0" * length))
        self.pins = array("Q")      # in draw order
        self.digests = bytearray()  # in draw order, `width` bytes each
        self.order = array("Q")     # (digest prefix << shift | draw index), ascending digest, no duplicates
        self.next = 0
        self.shift = 0

    def take(self) -> tuple[str, bytes]:
        if self.next == len(self.order):
            self._draw(max(1, min(PIN_RUN, self.remaining)))
        i = self.order[self.next] & ((1 << self.shift) - 1)
        self.next += 1
        self.remaining -= 1
        return str(self.pins[i]).zfill(self.length), bytes(self.digests[i * self.width:(i + 1) * self.width])

    def _draw(self, count: int) -> None:
        keyring, length, space = self.keyring, self.length, 10 ** self.length
        budget = count * MAX_PIN_DRAWS
        self.shift = shift = budget.bit_length()  # low bits of a sort key: the draw index
        self.pins = pins = array("Q")
        self.digests = digests = bytearray()
        self.next = 0
        order = array("Q")
        while len(order) < count and len(pins) < budget:
            fresh = array("Q")
            for i in range(len(pins), min(budget, len(pins) + count - len(order))):
                pin = secrets.randbelow(space)
                digest = keyring.pin_digest(str(pin).zfill(length))
                pins.append(pin)
                digests += digest
                fresh.append(int.from_bytes(digest[:8], "big") >> shift << shift | i)
            runs = [order] + [array("Q", sorted(fresh[j:j + _SORT_RUN]))
                              for j in range(0, len(fresh), _SORT_RUN)]
            del fresh
            order = array("Q", self._unique(heapq.merge(*runs)))
            del runs
        self.order = order

    def _digest(self, key: int) -> bytes:
        i = key & ((1 << self.shift) - 1)
        return bytes(self.digests[i * self.width:(i + 1) * self.width])

    def _unique(self, keys: Iterator[int]) -> Iterator[int]:
        """Sorted keys without duplicate digests; keys whose digest prefixes tie (rare, and every
        duplicate) are ordered by the full digest."""
        shift, group = self.shift, []
        for key in itertools.chain(keys, (-1,)):
            if group and key >> shift != group[0] >> shift:
                if len(group) == 1:
                    yield group[0]
                else:
                    yield from {self._digest(k): k for k in sorted(group, key=self._digest)}.values()
                group = []
            group.append(key)


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
