"""Prefix rating and call-charge arithmetic in integer micro-units.

Billing model (what carriers call "min/increment", e.g. 60/60, 30/6, 1/1): a call no longer than `grace`
seconds is free; otherwise it is billed for `min_volume` seconds plus whole `interval`s beyond that,
priced per minute, plus a connection fee, plus tax. Every rounding goes up (in the carrier's favour,
which is how switches and invoices round) and everything is integer: a float would make the charge
for one call depend on evaluation order, and two settlements of the same call must agree to the unit.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass
from functools import lru_cache
from collections.abc import Set as AbstractSet
from typing import Iterator

import lmdb

from radcore.errors import Conflict, Invalid, NotFound
from radcore.store import (RateTable, SeriesStatus, Store, Series, bump_version, name_key)

PPM = 1_000_000
MAX_PREFIX_DIGITS = 32
PREFIX_SET_LIMIT = 200_000
DEFAULT_CAP = 86_400

#: Rate value (the prefix and effective_from are in the key): price_per_minute i64, connection_fee
#: i64, min_volume u32, interval u32, grace u32, 4 spare bytes, effective_to i64.
_RATE = struct.Struct("<qqIII4xq")
_U64BE = struct.Struct(">Q")
_SEPARATORS = str.maketrans("", "", " -()")


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


@dataclass(frozen=True, slots=True)
class Rate:
    """One price for one prefix over one effective period [effective_from, effective_to).

    An empty prefix is a catch-all that matches every number no longer prefix matches.
    """

    prefix: str
    price_per_minute: int
    connection_fee: int = 0
    min_volume: int = 0
    interval: int = 1
    grace: int = 0
    effective_from: int = 0
    effective_to: int = 0

    def __post_init__(self) -> None:
        # Validated once here so the per-call arithmetic never needs to check anything.
        if not isinstance(self.prefix, str) or not (self.prefix == "" or self.prefix.isascii()
                                                    and self.prefix.isdigit()):
            raise Invalid("prefix", f"must be ASCII digits, got {self.prefix!r}")
        if len(self.prefix) > MAX_PREFIX_DIGITS:
            raise Invalid("prefix", f"longer than {MAX_PREFIX_DIGITS} digits")
        for name, low, high in (("price_per_minute", 0, 2**63 - 1), ("connection_fee", 0, 2**63 - 1),
                                ("min_volume", 0, 2**32 - 1), ("interval", 1, 2**32 - 1),
                                ("grace", 0, 2**32 - 1), ("effective_from", 0, 2**63 - 1),
                                ("effective_to", 0, 2**63 - 1)):
            value = getattr(self, name)
            if type(value) is not int or not low <= value <= high:
                raise Invalid(name, f"must be an integer in {low}..{high}, got {value!r}")
        if self.effective_to and self.effective_to <= self.effective_from:
            raise Invalid("effective_to", "must be after effective_from (or 0 for open-ended)")

    def effective_at(self, now: int) -> bool:
        return self.effective_from <= now and (self.effective_to == 0 or now < self.effective_to)


# --- arithmetic -------------------------------------------------------------------------------------

def billed_seconds(rate: Rate, duration: int) -> int:
    """Seconds charged for a call: 0 within grace, else min_volume + whole intervals covering the rest."""
    if duration <= rate.grace:
        return 0
    if duration <= rate.min_volume:
        return rate.min_volume
    return rate.min_volume + _ceil_div(duration - rate.min_volume, rate.interval) * rate.interval


def _with_tax(base: int, tax_ppm: int) -> int:
    return base + _ceil_div(base * tax_ppm, PPM)


def _charge_for_billed(rate: Rate, billed: int, tax_ppm: int) -> int:
    return _with_tax(rate.connection_fee + _ceil_div(billed * rate.price_per_minute, 60), tax_ppm)


def cost(rate: Rate, duration: int, tax_ppm: int = 0) -> int:
    """Total charge in micro-units for a call of `duration` seconds, tax included (rounded up)."""
    if duration <= rate.grace:
        return 0
    return _charge_for_billed(rate, billed_seconds(rate, duration), tax_ppm)


def max_duration(rate: Rate, available: int, tax_ppm: int = 0, cap: int = DEFAULT_CAP) -> int:
    """The longest call in [0, cap] seconds whose `cost` fits `available`, exactly.

    cost is 0 up to grace, then constant on each billing step (min_volume + (k-1)*interval, min_volume
    + k*interval] and non-decreasing in k. So the answer is max(grace, B) capped, where B is the largest
    grid point min_volume + k*interval whose charge fits. B is solved in closed form: the largest
    pre-tax amount M with M + ceil(M*tax/1e6) <= available (estimated, then corrected by at most a
    step either way, since that function is strictly increasing), then the largest billed seconds whose
    per-minute charge fits M - connection_fee, snapped down to the grid.

    A result <= rate.grace means only the free grace period fits: the card cannot pay for any billed
    call, and callers normally reject rather than grant a call that will be cut at the grace limit.
    Returns 0 when available < 0 (a card over its limit gets nothing, not even grace).
    """
    if cap < 0:
        raise Invalid("cap", "must be >= 0")
    if tax_ppm < 0:
        raise Invalid("tax_ppm", "must be >= 0")
    if available < 0:
        return 0
    free = min(rate.grace, cap)
    if rate.price_per_minute == 0:
        return cap if _with_tax(rate.connection_fee, tax_ppm) <= available else free
    max_base = available * PPM // (PPM + tax_ppm)
    while _with_tax(max_base + 1, tax_ppm) <= available:
        max_base += 1
    while max_base >= 0 and _with_tax(max_base, tax_ppm) > available:
        max_base -= 1
    per_minute_budget = max_base - rate.connection_fee
    if per_minute_budget < 0:
        return free
    # ceil(b * price / 60) <= budget  <=>  b * price <= 60 * budget
    billed = 60 * per_minute_budget // rate.price_per_minute
    if billed < rate.min_volume:
        return free
    grid = rate.min_volume + (billed - rate.min_volume) // rate.interval * rate.interval
    return min(cap, max(rate.grace, grid))


# --- number normalisation ---------------------------------------------------------------------------

def normalize_number(number: str, *, strip_plus: bool = True, strip_00: bool = True,
                     tech_prefix: str = "") -> str:
    """Digits to rate on, or "" when the number must not be rated.

    Removes the NAS's technology prefix (e.g. "0011#") if present, the separators " -()", then a leading
    "+" or "00" international prefix as configured. Anything else that is not an ASCII digit ("*", "#",
    letters, a "+" we were told to keep) makes the whole number unrateable rather than silently
    dropping characters, which could turn a service code into a billable destination.
    """
    text = number.strip()
    if tech_prefix and text.startswith(tech_prefix):
        text = text[len(tech_prefix):]
    text = text.translate(_SEPARATORS)
    if strip_plus and text.startswith("+"):
        text = text[1:]
    elif strip_00 and text.startswith("00"):
        text = text[2:]
    if not text or not text.isascii() or not text.isdigit():
        return ""
    return text


# --- storage ----------------------------------------------------------------------------------------

def _table_prefix(table: str) -> bytes:
    return name_key(table, "rate_table") + b"\x00"


def _rate_key(table: str, prefix: str, effective_from: int) -> bytes:
    return _table_prefix(table) + prefix.encode() + b"\x00" + _U64BE.pack(effective_from)


@lru_cache(maxsize=8192)
def _decode(key: bytes, value: bytes, base_len: int) -> Rate:
    # key = table NUL prefix NUL effective_from; base_len is the length of "table NUL". Cached: a
    # Rate validates every field when built, and calls keep hitting the same few rates (Rate is
    # frozen, and the key and value bytes are the whole identity of the stored rate).
    price, fee, min_volume, interval, grace, effective_to = _RATE.unpack(value)
    return Rate(key[base_len:-9].decode(), price, fee, min_volume, interval, grace,
                _U64BE.unpack(key[-8:])[0], effective_to)


def put_rate_table(txn: lmdb.Transaction, store: Store, table: RateTable, *, bump: bool = True) -> None:
    """Insert or replace a rate table's record (its rates are separate entries, kept as they are)."""
    if not isinstance(table.currency, str) or not re.fullmatch(r"[A-Z]{3}", table.currency):
        raise Invalid("currency", f"must be an ISO 4217 code such as USD, got {table.currency!r}")
    try:
        txn.put(name_key(table.name, "rate_table"), table.to_bytes(), db=store.rate_tables)
    except lmdb.Error as e:
        raise store.error(e) from e
    if bump:
        bump_version(txn, store)


def get_rate_table(txn: lmdb.Transaction, store: Store, name: str) -> RateTable | None:
    try:
        raw = txn.get(name_key(name, "rate_table"), db=store.rate_tables)
    except lmdb.Error as e:
        raise store.error(e) from e
    return None if raw is None else RateTable.from_bytes(raw)


def delete_rate_table(txn: lmdb.Transaction, store: Store, name: str) -> int:
    """Delete a rate table and all its rates in this transaction; returns how many rates went.

    Refused (Conflict) while a series that is not deleted still rates with it, so no live card is left
    with nothing to rate against.
    """
    key = name_key(name, "rate_table")
    try:
        if txn.get(key, db=store.rate_tables) is None:
            raise NotFound(f"rate table {name!r} does not exist")
        users = [s.number for s in map(Series.from_bytes, txn.cursor(db=store.series).iternext(keys=False))
                 if s.rate_table == name and s.status != SeriesStatus.DELETED]
        if users:
            raise Conflict(f"rate table {name!r} is used by series {', '.join(map(str, users))}")
        removed = 0
        prefix = _table_prefix(name)
        cursor = txn.cursor(db=store.rates)
        if cursor.set_range(prefix):
            # delete() steps to the next record; past the last one key() is b"" and the loop ends.
            while cursor.key()[:len(prefix)] == prefix:
                cursor.delete()
                removed += 1
        txn.delete(key, db=store.rate_tables)
    except lmdb.Error as e:
        raise store.error(e) from e
    bump_version(txn, store)
    return removed


def put_rate(txn: lmdb.Transaction, store: Store, table: str, rate: Rate, *, bump: bool = True) -> None:
    """Insert or replace the rate for (table, prefix, effective_from). Bulk imports pass bump=False and
    call `bump_version` once at the end."""
    try:
        if txn.get(name_key(table, "rate_table"), db=store.rate_tables) is None:
            raise NotFound(f"rate table {table!r} does not exist")
        value = _RATE.pack(rate.price_per_minute, rate.connection_fee, rate.min_volume, rate.interval,
                           rate.grace, rate.effective_to)
        txn.put(_rate_key(table, rate.prefix, rate.effective_from), value, db=store.rates)
    except lmdb.Error as e:
        raise store.error(e) from e
    if bump:
        bump_version(txn, store)


def delete_rate(txn: lmdb.Transaction, store: Store, table: str, prefix: str, effective_from: int = 0,
                *, bump: bool = True) -> bool:
    try:
        deleted = txn.delete(_rate_key(table, prefix, effective_from), db=store.rates)
    except lmdb.Error as e:
        raise store.error(e) from e
    if deleted and bump:
        bump_version(txn, store)
    return deleted


def iter_rates(txn: lmdb.Transaction, store: Store, table: str) -> Iterator[Rate]:
    """All rates of a table ordered by prefix (as text) then effective_from."""
    prefix = _table_prefix(table)
    try:
        cursor = txn.cursor(db=store.rates)
        if not cursor.set_range(prefix):
            return
        for key, value in cursor:
            if key[:len(prefix)] != prefix:
                return
            yield _decode(key, value, len(prefix))
    except lmdb.Error as e:
        raise store.error(e) from e


def rate_prefixes(txn: lmdb.Transaction, store: Store, table: str,
                  limit: int = PREFIX_SET_LIMIT) -> frozenset[str] | None:
    """Every prefix with a rate in `table` (any period), or None for a table of more than `limit` rates.

    `find_rate` probes every prefix length of the number (up to 33) with a cursor seek each; with this set (cached per
    worker until `config_version` changes) it seeks only lengths that exist, usually one or two.
    Past `limit` the one-off scan would stall a worker for too long, so big tables probe as before.
    """
    base = _table_prefix(table)
    found: set[str] = set()
    try:
        cursor = txn.cursor(db=store.rates)
        if cursor.set_range(base):
            for key in cursor.iternext(keys=True, values=False):
                if key[:len(base)] != base:
                    break
                found.add(key[len(base):-9].decode())
                if len(found) > limit:
                    return None
    except lmdb.Error as e:
        raise store.error(e) from e
    return frozenset(found)


def find_rate(txn: lmdb.Transaction, store: Store, table: str, digits: str, now: int,
              prefixes: AbstractSet[str] | None = None) -> Rate | None:
    """Longest-prefix match of `digits` in `table`, using the period effective at `now`.

    One cursor seek per candidate length (longest first), not a scan: for prefix p, seek just past
    "table p NUL now" and step back to the latest period starting at or before now. If that period has
    already ended, earlier overlapping periods of the same prefix are tried (an open-ended base rate
    under an expired promotion); if none is effective, the next shorter prefix is. `prefixes`
    (`rate_prefixes` of the table, when the caller caches it) skips the lengths that have no rate.
    """
    base = _table_prefix(table)
    if not digits.isascii() or not (digits == "" or digits.isdigit()):
        return None
    try:
        cursor = txn.cursor(db=store.rates)
        for length in range(min(len(digits), MAX_PREFIX_DIGITS), -1, -1):
            if prefixes is not None and digits[:length] not in prefixes:
                continue
            head = base + digits[:length].encode() + b"\x00"
            seek = head + _U64BE.pack(min(now + 1, 2**64 - 1))
            found = cursor.prev() if cursor.set_range(seek) else cursor.last()
            while found:
                key = cursor.key()
                if len(key) != len(head) + 8 or key[:len(head)] != head:
                    break
                rate = _decode(key, cursor.value(), len(base))
                if rate.effective_at(now):
                    return rate
                found = cursor.prev()
    except lmdb.Error as e:
        raise store.error(e) from e
    return None
