"""Rate tables and rates: CRUD, CSV rate-deck import, and call quotes.

Storage and arithmetic are radcore.rating's; this module adds permissions, validation, audit and the
CSV format. Money arrives from people as decimal text ("0.0125") and is converted to integer
micro-units exactly, with no float in between; an amount that needs a seventh decimal place is
refused rather than rounded, because a rounded rate deck silently bills differently from the
carrier's price list.

An import validates every line before writing anything. With errors and no `allow_partial`, nothing
is written. The write itself is chunked (IMPORT_CHUNK rates per transaction) so a large deck does not
hold the LMDB writer lock long enough to stall accounting; rates are keyed by (table, prefix,
effective_from), so re-running an interrupted import converges to the same table.

Quotes run the exact functions RADIUS number authorization runs (find_rate, cost, max_duration),
so a quote and a real call can never disagree.
"""

from __future__ import annotations

import csv
import io
import re
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timezone

import lmdb

from control import audit
from control.auth import Principal, check_owner, require_admin
from control.catalog import Refused, series_using
from radcore import rating
from radcore.clock import Clock
from radcore.errors import Conflict, Invalid, NotFound
from radcore.rating import Rate
from radcore.store import (RateTable, Store, TaxProfile, bump_version, card_key, get_series,
                           name_key, parse_card_number)
from radcore.store import get_card as read_card

MICRO = 1_000_000
MONEY_PLACES = 6
IMPORT_CHUNK = 5000
MAX_REPORTED_ERRORS = 1000
COLUMNS = ("prefix", "price_per_minute", "connection_fee", "min_volume", "interval", "grace",
           "effective_from", "effective_to")
_MONEY = re.compile(r"([0-9]*)(?:\.([0-9]*))?")
_CURRENCY = re.compile(r"[A-Z]{3}")
_INT64_MAX = 2**63 - 1


# --- money and dates as people write them -----------------------------------------------------------

def parse_money(text: str, field: str) -> int:
    """Decimal text -> micro-units, exactly. "0.0125" -> 12500; "0.0000001" is refused."""
    s = text.strip()
    m = _MONEY.fullmatch(s)
    if not s or m is None or not (m.group(1) or m.group(2)):
        raise Invalid(field, f"must be a decimal amount such as 0.0125, got {text!r}")
    whole, frac = m.group(1) or "0", (m.group(2) or "").rstrip("0")
    if len(frac) > MONEY_PLACES:
        raise Invalid(field, f"has more than {MONEY_PLACES} decimal places: {text!r}")
    micro = int(whole) * MICRO + int(frac.ljust(MONEY_PLACES, "0"))
    if micro > _INT64_MAX:
        raise Invalid(field, "is too large")
    return micro


def format_money(micro: int) -> str:
    """Micro-units -> decimal text with 2 to 6 places: 5000000 -> "5.00", 12500 -> "0.0125"."""
    whole, frac = divmod(abs(micro), MICRO)
    digits = f"{frac:06d}".rstrip("0").ljust(2, "0")
    return f"{'-' if micro < 0 else ''}{whole}.{digits}"


def parse_time(text: str, field: str) -> int:
    """YYYY-MM-DD (UTC midnight), YYYY-MM-DDTHH:MM:SS[Z] or epoch seconds; "" = 0."""
    s = text.strip()
    if not s:
        return 0
    if s.isascii() and s.isdigit():
        return int(s)
    try:
        parsed = datetime.fromisoformat(s.replace("Z", "+00:00") if s.endswith("Z") else s)
    except ValueError as e:
        raise Invalid(field, f"must be YYYY-MM-DD, an ISO date-time or epoch seconds, got {text!r}") from e
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=timezone.utc)
    return int(parsed.timestamp())


def _uint(text: str, field: str) -> int:
    s = text.strip()
    if not s:
        return 0
    if not s.isascii() or not s.isdigit() or int(s) > 2**32 - 1:
        raise Invalid(field, f"must be a whole number of seconds, got {text!r}")
    return int(s)


# --- tables -----------------------------------------------------------------------------------------

def _table_doc(table: RateTable) -> dict:
    return asdict(table)


def _check_table(table: RateTable) -> None:
    name_key(table.name, "name")
    if not isinstance(table.currency, str) or not _CURRENCY.fullmatch(table.currency):
        raise Invalid("currency", f"must be an ISO 4217 code such as USD, got {table.currency!r}")
    if not isinstance(table.description, str) or len(table.description) > 500:
        raise Invalid("description", "must be text of at most 500 characters")


def _count(txn: lmdb.Transaction, store: Store, name: str) -> int:
    return sum(1 for _ in rating.iter_rates(txn, store, name))


def _existing(txn: lmdb.Transaction, store: Store, name: str) -> RateTable:
    table = rating.get_rate_table(txn, store, name)
    if table is None:
        raise NotFound(f"rate table {name!r} does not exist")
    return table


def create_rate_table(store: Store, principal: Principal, table: RateTable, *, clock: Clock) -> RateTable:
    require_admin(principal, "creating a rate table")
    _check_table(table)
    now = clock()
    table = replace(table, created_at=now)
    with store.transaction(write=True) as txn:
        if rating.get_rate_table(txn, store, table.name) is not None:
            raise Conflict(f"rate table {table.name!r} already exists")
        rating.put_rate_table(txn, store, table)
        audit.record(txn, store, principal, "CreateRateTable", f"rate_table/{table.name}", now=now,
                     after=_table_doc(table))
    return table


def get_rate_table(store: Store, principal: Principal, name: str) -> tuple[RateTable, int]:
    """(table, number of rates)."""
    with store.transaction() as txn:
        table = _existing(txn, store, name)
        return table, _count(txn, store, name)


def list_rate_tables(store: Store, principal: Principal) -> list[tuple[RateTable, int]]:
    with store.transaction() as txn:
        names = [bytes(k).decode() for k in txn.cursor(db=store.rate_tables).iternext(values=False)]
        return [(_existing(txn, store, n), _count(txn, store, n)) for n in names]


def update_rate_table(store: Store, principal: Principal, name: str, changes: dict, *,
                      clock: Clock) -> RateTable:
    """Description, or currency while no live series uses the table (their balances are in the old one)."""
    require_admin(principal, "changing a rate table")
    if not changes:
        raise Invalid("update_mask", "names no field to change")
    for field in changes:
        if field not in ("description", "currency"):
            raise Invalid(field, "cannot be changed on a rate table (editable: description, currency)")
    now = clock()
    with store.transaction(write=True) as txn:
        old = _existing(txn, store, name)
        new = replace(old, **changes)
        _check_table(new)
        if new.currency != old.currency and series_using(txn, store, "rate_table", name):
            raise Refused(f"rate table {name!r} is used by series in {old.currency}")
        rating.put_rate_table(txn, store, new)
        before, after = audit.diff(_table_doc(old), _table_doc(new))
        audit.record(txn, store, principal, "UpdateRateTable", f"rate_table/{name}", now=now,
                     before=before, after=after)
    return new


def delete_rate_table(store: Store, principal: Principal, name: str, *, clock: Clock) -> int:
    """Delete the table and its rates in one transaction; returns how many rates went."""
    require_admin(principal, "deleting a rate table")
    now = clock()
    with store.transaction(write=True) as txn:
        old = _existing(txn, store, name)
        users = series_using(txn, store, "rate_table", name)
        if users:
            raise Refused(f"rate table {name!r} is used by series {', '.join(map(str, users[:20]))}")
        removed = rating.delete_rate_table(txn, store, name)
        audit.record(txn, store, principal, "DeleteRateTable", f"rate_table/{name}", now=now,
                     before={**_table_doc(old), "rates": removed})
    return removed


# --- rates ------------------------------------------------------------------------------------------

def _rate_target(table: str, prefix: str, effective_from: int) -> str:
    return f"rate/{table}/{prefix or '*'}" + (f"@{effective_from}" if effective_from else "")


def _find_exact(txn: lmdb.Transaction, store: Store, table: str, prefix: str,
                effective_from: int) -> Rate | None:
    for rate in rating.iter_rates(txn, store, table):
        if rate.prefix == prefix and rate.effective_from == effective_from:
            return rate
    return None


def put_rate(store: Store, principal: Principal, table: str, rate: Rate, *, clock: Clock) -> Rate:
    """Create or replace the rate for (table, prefix, effective_from); applies to the next call."""
    require_admin(principal, "changing rates")
    now = clock()
    with store.transaction(write=True) as txn:
        _existing(txn, store, table)
        old = _find_exact(txn, store, table, rate.prefix, rate.effective_from)
        rating.put_rate(txn, store, table, rate)
        audit.record(txn, store, principal, "PutRate", _rate_target(table, rate.prefix, rate.effective_from),
                     now=now, before=asdict(old) if old else None, after=asdict(rate))
    return rate


def list_rates(store: Store, principal: Principal, table: str, *, prefix: str = "", page_size: int = 0,
               page_token: str = "") -> tuple[list[Rate], str]:
    """Rates ordered by prefix then effective_from. The token is "<prefix>/<effective_from>"."""
    limit = audit.page_limit(page_size)
    after: tuple[str, int] | None = None
    if page_token:
        head, _, tail = page_token.rpartition("/")
        if not tail.isdigit() or head and not head.isdigit():
            raise Invalid("page_token", "is not a token this listing returned")
        after = (head, int(tail))
    out: list[Rate] = []
    with store.transaction() as txn:
        _existing(txn, store, table)
        for rate in rating.iter_rates(txn, store, table):
            if prefix and not rate.prefix.startswith(prefix):
                continue
            if after is not None and (rate.prefix, rate.effective_from) <= after:
                continue
            out.append(rate)
            if len(out) > limit:
                break
    more = len(out) > limit
    out = out[:limit]
    return out, (f"{out[-1].prefix}/{out[-1].effective_from}" if more else "")


def delete_rate(store: Store, principal: Principal, table: str, prefix: str, effective_from: int = 0, *,
                clock: Clock) -> None:
    require_admin(principal, "changing rates")
    now = clock()
    with store.transaction(write=True) as txn:
        _existing(txn, store, table)
        old = _find_exact(txn, store, table, prefix, effective_from)
        if old is None or not rating.delete_rate(txn, store, table, prefix, effective_from):
            raise NotFound(f"no rate for prefix {prefix!r} from {effective_from} in {table!r}")
        audit.record(txn, store, principal, "DeleteRate", _rate_target(table, prefix, effective_from),
                     now=now, before=asdict(old))


# --- CSV import -------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class LineError:
    line: int
    field: str
    message: str


@dataclass(slots=True)
class ImportReport:
    imported: int
    errors: list[LineError]


def _header(row: list[str]) -> list[str] | None:
    names = [c.strip().lower() for c in row]
    return names if "prefix" in names else None


def _parse_line(values: dict[str, str]) -> Rate:
    prefix = values.get("prefix", "").strip()
    if "price_per_minute" not in values or not values["price_per_minute"].strip():
        raise Invalid("price_per_minute", "is required")
    return Rate(prefix=prefix,
                price_per_minute=parse_money(values["price_per_minute"], "price_per_minute"),
                connection_fee=parse_money(values.get("connection_fee") or "0", "connection_fee"),
                min_volume=_uint(values.get("min_volume", ""), "min_volume"),
                interval=_uint(values.get("interval", ""), "interval") or 1,
                grace=_uint(values.get("grace", ""), "grace"),
                effective_from=parse_time(values.get("effective_from", ""), "effective_from"),
                effective_to=parse_time(values.get("effective_to", ""), "effective_to"))


def parse_rates_csv(data: bytes) -> tuple[list[tuple[int, Rate]], list[LineError]]:
    """(line, Rate) for good lines and LineErrors for bad ones, in file order. Blank lines and lines
    starting with # are skipped."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise Invalid("csv", f"is not UTF-8 text (byte {e.start})") from e
    reader = csv.reader(io.StringIO(text, newline=""))
    columns: list[str] | None = None
    good: list[tuple[int, Rate]] = []
    errors: list[LineError] = []
    seen: dict[tuple[str, int], int] = {}
    try:
        for row in reader:
            line = reader.line_num
            if not any(c.strip() for c in row) or row[0].lstrip().startswith("#"):
                continue
            if columns is None:
                header = _header(row)
                columns = header or list(COLUMNS)
                if header is not None:
                    errors += [LineError(line, name, "unknown column") for name in header
                               if name not in COLUMNS]
                    continue
            if len(row) > len(columns):
                errors.append(LineError(line, "line", f"has {len(row)} fields, expected at most "
                                                      f"{len(columns)}"))
                continue
            try:
                rate = _parse_line(dict(zip(columns, row)))
            except Invalid as e:
                errors.append(LineError(line, e.field, str(e).split(": ", 1)[-1]))
                continue
            key = (rate.prefix, rate.effective_from)
            if key in seen:
                errors.append(LineError(line, "prefix", f"duplicates line {seen[key]} (same prefix and "
                                                        "effective_from)"))
                continue
            seen[key] = line
            good.append((line, rate))
    except csv.Error as e:
        errors.append(LineError(reader.line_num, "line", f"malformed CSV: {e}"))
    return good, errors


def import_rates(store: Store, principal: Principal, table: str, data: bytes, *,
                 allow_partial: bool = False, clock: Clock) -> ImportReport:
    require_admin(principal, "importing rates")
    with store.transaction() as txn:
        _existing(txn, store, table)
    good, errors = parse_rates_csv(data)
    reported = errors[:MAX_REPORTED_ERRORS]
    if errors and not allow_partial or not good:
        return ImportReport(0, reported)
    now = clock()
    for start in range(0, len(good), IMPORT_CHUNK):
        last = start + IMPORT_CHUNK >= len(good)
        with store.transaction(write=True) as txn:
            _existing(txn, store, table)  # deleted mid-import: stop rather than write orphans
            for _, rate in good[start:start + IMPORT_CHUNK]:
                rating.put_rate(txn, store, table, rate, bump=False)
            bump_version(txn, store)  # each chunk: workers cache a table's prefixes per version
            if last:
                audit.record(txn, store, principal, "ImportRates", f"rate_table/{table}", now=now,
                             after={"imported": len(good), "lines_with_errors": len(errors)})
    return ImportReport(len(good), reported)


# --- quotes -----------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Quote:
    rate: Rate
    digits: str
    cost: int
    billed_seconds: int
    available: int
    max_duration: int
    tax_ppm: int
    currency: str


def _tax_ppm(txn: lmdb.Transaction, store: Store, name: str, field: str) -> int:
    if not name:
        return 0
    raw = txn.get(name_key(name, field), db=store.tax_profiles)
    if raw is None:
        raise Invalid(field, f"tax profile {name!r} does not exist")
    return TaxProfile.from_bytes(raw).percent_ppm


def quote_call(store: Store, principal: Principal, *, number: str, duration: int,
               card_number: str = "", rate_table: str = "", balance: int = 0, tax_profile: str = "",
               at: int = 0, clock: Clock, cap: int = rating.DEFAULT_CAP) -> Quote:
    """Price `duration` seconds to `number` and the longest call the balance pays for."""
    if bool(card_number) == bool(rate_table):
        raise Invalid("source", "give exactly one of card_number and rate_table")
    if type(duration) is not int or duration < 0:
        raise Invalid("duration_seconds", "must be >= 0")
    digits = rating.normalize_number(number)
    if not digits:
        raise Invalid("number", f"not a dialable number: {number!r}")
    now = at or clock()
    with store.transaction() as txn:
        if card_number:
            series_no, serial = parse_card_number(card_number)
            series = get_series(txn, store, series_no)
            card = read_card(txn, store, card_key(series_no, serial))
            if series is None or card is None or not series.complete:
                raise NotFound(f"card {card_number} does not exist")
            check_owner(principal, series.reseller, f"card {card_number}")
            table_name, tax_ppm, available = series.rate_table, _tax_ppm(
                txn, store, series.tax_profile, "tax_profile"), card.balance - card.reserved
        else:
            table_name, tax_ppm, available = rate_table, _tax_ppm(txn, store, tax_profile,
                                                                  "tax_profile"), balance
        table = _existing(txn, store, table_name)
        rate = rating.find_rate(txn, store, table_name, digits, now)
    if rate is None:
        raise NotFound(f"no rate for {digits} in rate table {table_name!r} (the call would be blocked)")
    return Quote(rate, digits, rating.cost(rate, duration, tax_ppm), rating.billed_seconds(rate, duration),
                 available, rating.max_duration(rate, available, tax_ppm, cap), tax_ppm, table.currency)
