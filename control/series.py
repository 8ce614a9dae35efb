"""Card series: create with streamed progress, read, search, edit, stop and (soft) delete.

Creation iterates `radcore.generation.start_generation` one committed chunk at a time, so the caller
(a gRPC response stream) can report progress and notice a cancelled client between chunks, and one
iterator keeps the series-wide PIN pool from the first chunk to the last. The write transactions run
here, on the gRPC handler thread; the CPU-heavy part (PIN draws, encryption) runs on the generation's
own low-priority helper thread, since a pooled thread's priority could not be raised again afterwards.
Any failure or cancellation after writing began rolls the generation back: a series exists
completely or not at all. Validation errors happen before anything is written and roll nothing back
(a Conflict must never remove the other creator's series).

What an edit means for existing cards is spelled out in the proto (UpdateSeriesRequest): settings
that RADIUS reads per call take effect on the next call (config_version is bumped), the face balance
never rewrites cards.
"""

from __future__ import annotations

from contextlib import closing
from dataclasses import asdict, replace
from typing import Any, Iterator, NamedTuple
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import lmdb

from control import audit
from control.auth import Principal, check_owner, require_admin
from control.catalog import Refused, check_references
from radcore.clock import Clock
from radcore.errors import Conflict, Invalid, NotFound
from radcore.generation import check_language, rollback_generation, start_generation
from radcore.keys import KeyRing
from radcore.rating import get_rate_table
from radcore.store import MAX_SERIES, Series, SeriesStatus, Store, get_series, put_series

DEFAULT_PIN_LENGTH = 10
from radcore.generation import DEFAULT_CHUNK  # noqa: E402  (one chunk size for every caller)
_INT64_MAX = 2**63 - 1
#: Fields UpdateSeries may change; every other Series field is fixed once cards exist.
EDITABLE = ("name", "notes", "face_balance", "rate_table", "tax_profile", "routing_plan", "activation_fee",
            "maintenance_fee", "maintenance_period_hours", "expiry_date", "expiry_period_days",
            "max_concurrent_calls", "time_zone", "language", "control_panel", "reseller")


class Progress(NamedTuple):
    done: int
    total: int
    series: Series | None = None  # set on the last step only


def public(series: Series) -> dict[str, Any]:
    """The series as plain JSON-able values (enum labels, not numbers) for the audit log."""
    data = asdict(series)
    data["status"] = series.status.label
    data["initial_status"] = series.initial_status.label
    return data


def _tenant_view(series: Series | None, principal: Principal, number: int) -> Series:
    if series is None:
        raise NotFound(f"series {number} does not exist")
    check_owner(principal, series.reseller, f"series {number}")
    return series


def _with_defaults(store: Store, principal: Principal, series: Series) -> Series:
    """Fill what a client may leave empty; a reseller's series always belongs to that reseller."""
    if not series.rate_table:
        raise Invalid("rate_table", "is required: a series rates its calls with one")
    changes: dict[str, Any] = {"status": SeriesStatus.ACTIVE, "generated": 0}
    if not principal.is_admin:
        changes["reseller"] = principal.reseller
    if not series.pin_length:
        changes["pin_length"] = DEFAULT_PIN_LENGTH
    if not series.max_concurrent_calls:
        changes["max_concurrent_calls"] = 1
    if not series.time_zone:
        changes["time_zone"] = "UTC"
    if not series.currency:
        with store.transaction() as txn:
            table = get_rate_table(txn, store, series.rate_table)
        changes["currency"] = table.currency if table else "USD"
    return replace(series, **changes)


def create_series(store: Store, keyring: KeyRing, principal: Principal, series: Series, *, clock: Clock,
                  chunk_size: int = DEFAULT_CHUNK) -> Iterator[Progress]:
    """Generate the series, yielding Progress after each committed chunk; the last one carries the
    completed Series. Closing the generator early (a cancelled client) rolls the series back."""
    series = _with_defaults(store, principal, series)
    number = series.number
    # Another creator's generation in progress must never be rolled back by our failure; an invalid
    # number is left for start_generation to refuse with the proper message.
    taken = False
    if type(number) is int and 1 <= number <= MAX_SERIES:
        with store.transaction() as txn:
            taken = get_series(txn, store, number) is not None
    try:
        steps = start_generation(store, keyring, series, clock=clock, chunk_size=chunk_size)
    except (Invalid, Conflict):
        raise  # refused by validation before anything was written
    except BaseException:
        if not taken:
            _rollback(store, number)
        raise
    try:
        with closing(steps):  # stops the helper thread before any rollback
            for done in steps:
                if not done.complete:
                    yield Progress(done.generated, done.quantity)
        now = clock()
        with store.transaction(write=True) as txn:
            audit.record(txn, store, principal, "CreateSeries", f"series/{number}", now=now,
                         tenant=done.reseller, after=public(done))
    except BaseException:
        _rollback(store, number)  # the series record is ours: validation passed
        raise
    yield Progress(done.generated, done.quantity, done)


def _rollback(store: Store, number: int) -> None:
    try:
        rollback_generation(store, number)
    except (NotFound, Conflict):
        pass  # nothing was written yet, or it completed: nothing half-created to remove


def create_series_blocking(store: Store, keyring: KeyRing, principal: Principal, series: Series, *,
                           clock: Clock, chunk_size: int = DEFAULT_CHUNK) -> Series:
    """`create_series` without progress, for scripts and tests."""
    for step in create_series(store, keyring, principal, series, clock=clock, chunk_size=chunk_size):
        if step.series is not None:
            return step.series
    raise AssertionError("create_series ended without a result")


def get(store: Store, principal: Principal, number: int) -> Series:
    """The series, complete or still generating (`generated` < `quantity` shows the progress)."""
    with store.transaction() as txn:
        return _tenant_view(get_series(txn, store, number), principal, number)


def list_series(store: Store, principal: Principal, *, statuses: tuple[SeriesStatus, ...] = (),
                reseller: str = "", text: str = "", page_size: int = 0,
                page_token: str = "") -> tuple[list[Series], str, int]:
    """The operator UI's advanced search: (page, next_page_token, total matches). Only complete
    series are listed; `statuses` empty means active only."""
    wanted = set(statuses) or {SeriesStatus.ACTIVE}
    limit = audit.page_limit(page_size)
    after = audit.parse_int_token(page_token, 0, MAX_SERIES) or 0
    needle = text.strip().casefold()
    if not principal.is_admin:
        reseller = principal.reseller
    matches: list[Series] = []
    with store.transaction() as txn:
        try:
            for raw in txn.cursor(db=store.series).iternext(keys=False):
                s = Series.from_bytes(raw)
                if not s.complete or s.status not in wanted or (reseller and s.reseller != reseller):
                    continue
                if needle and needle not in s.name.casefold() and not str(s.number).startswith(needle):
                    continue
                matches.append(s)
        except lmdb.Error as e:
            raise store.error(e) from e
    page = [s for s in matches if s.number > after][:limit + 1]
    more = len(page) > limit
    page = page[:limit]
    return page, (str(page[-1].number) if more else ""), len(matches)


def _check_int(name: str, value: Any, low: int, high: int) -> None:
    if type(value) is not int or not low <= value <= high:
        raise Invalid(name, f"must be an integer in {low}..{high}, got {value!r}")


def _validate_settings(txn: lmdb.Transaction, store: Store, s: Series, changed: set[str], now: int) -> None:
    """The rules of validate_new_series that an edit can break, re-checked on the edited record."""
    if not isinstance(s.name, str) or len(s.name) > 200:
        raise Invalid("name", "must be text of at most 200 characters")
    if not isinstance(s.notes, str) or len(s.notes) > 4000:
        raise Invalid("notes", "must be text of at most 4000 characters")
    _check_int("face_balance", s.face_balance, 0, _INT64_MAX)
    _check_int("activation_fee", s.activation_fee, 0, _INT64_MAX)
    if s.activation_fee > s.face_balance:
        raise Invalid("activation_fee", "must not exceed the face balance")
    _check_int("maintenance_fee", s.maintenance_fee, 0, _INT64_MAX)
    _check_int("maintenance_period_hours", s.maintenance_period_hours, 0, 24 * 366 * 10)
    if s.maintenance_fee and not s.maintenance_period_hours:
        raise Invalid("maintenance_period_hours", "must be > 0 when a maintenance fee is set")
    _check_int("expiry_date", s.expiry_date, 0, _INT64_MAX)
    if "expiry_date" in changed and s.expiry_date and s.expiry_date <= now:
        raise Invalid("expiry_date", "is already in the past")
    _check_int("expiry_period_days", s.expiry_period_days, 0, 36_600)
    _check_int("max_concurrent_calls", s.max_concurrent_calls, 1, 0xFFFF)
    if not isinstance(s.control_panel, bool):
        raise Invalid("control_panel", "must be true or false")
    check_language(s.language)
    try:
        ZoneInfo(s.time_zone)
    except (ZoneInfoNotFoundError, ValueError, TypeError) as e:
        raise Invalid("time_zone", f"unknown IANA time zone {s.time_zone!r}") from e
    table = get_rate_table(txn, store, s.rate_table) if s.rate_table else None
    if table is None:
        raise Invalid("rate_table", f"rate table {s.rate_table!r} does not exist")
    if table.currency != s.currency:
        raise Invalid("rate_table", f"rate table {table.name!r} is in {table.currency}, the series in "
                                    f"{s.currency}")
    check_references(txn, store, s)


def update_series(store: Store, principal: Principal, number: int, changes: dict[str, Any], *,
                  clock: Clock) -> Series:
    """Apply `changes` (Series field -> value) in one transaction with its audit entry."""
    if not changes:
        raise Invalid("update_mask", "names no field to change")
    for field in changes:
        if field not in EDITABLE:
            hint = " (use SetSeriesStatus)" if field == "status" else ""
            raise Invalid(field, f"cannot be changed once a series exists{hint}")
    if "reseller" in changes:
        require_admin(principal, "moving a series to another reseller")
    now = clock()
    with store.transaction(write=True) as txn:
        old = _tenant_view(get_series(txn, store, number), principal, number)
        if not old.complete:
            raise Refused(f"series {number} is still being generated")
        new = replace(old, **changes, updated_at=now)
        _validate_settings(txn, store, new, set(changes), now)
        put_series(txn, store, new)
        before, after = audit.diff(public(old), public(new))
        after.pop("updated_at", None)
        before.pop("updated_at", None)
        audit.record(txn, store, principal, "UpdateSeries", f"series/{number}", now=now,
                     tenant=new.reseller, before=before, after=after)
    return new


def set_status(store: Store, principal: Principal, number: int, status: SeriesStatus, *,
               clock: Clock) -> Series:
    """Active, stopped or deleted (soft). Restoring a deleted series re-checks what it refers to,
    since rate tables and profiles may be deleted while no live series uses them."""
    if not isinstance(status, SeriesStatus):
        raise Invalid("status", "must be active, stopped or deleted")
    now = clock()
    with store.transaction(write=True) as txn:
        old = _tenant_view(get_series(txn, store, number), principal, number)
        if not old.complete:
            raise Refused(f"series {number} is still being generated")
        if old.status == status:
            return old
        new = replace(old, status=status, updated_at=now)
        if old.status == SeriesStatus.DELETED:
            if get_rate_table(txn, store, new.rate_table) is None:
                raise Invalid("rate_table", f"rate table {new.rate_table!r} no longer exists: recreate "
                                            "it before restoring the series")
            check_references(txn, store, new)
        put_series(txn, store, new)
        audit.record(txn, store, principal, "SetSeriesStatus", f"series/{number}", now=now,
                     tenant=new.reseller, before={"status": old.status.label},
                     after={"status": status.label})
    return new

