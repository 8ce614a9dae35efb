"""The card holder's side of the portal as plain domain code: log in with card number and PIN, then
read the card and its calls. No HTTP here, so every rule is testable against a store alone.

Login shares the failed-PIN counter with RADIUS (`radcore.prepaid.register_failed_pin`): a guesser
gets `max_failed_pins` tries in total across both doors, then the card is locked for the cool-down.
While it is locked the PIN is not even checked, so the cool-down cannot be used to keep guessing.
Cards whose series cannot use the panel (flag off, deleted, not fully generated) are refused before
the PIN is looked at and without touching the counter: otherwise the portal would let anyone lock
RADIUS users of series that never offered a panel.

Signing out ends every copy of the session, not just the browser's cookie. Session cookies are
stateless, so each carries the card's sign-out count at login (`sessions_epoch`, a meta counter);
`sign_out` bumps the count, and a cookie with an older count is refused from then on, wherever it
was copied to.

Statement times are shown in the series' IANA time zone. A call belongs to the day it started in
that zone; the `to` date is inclusive. Money stays in integer micro-units until `format_amount`
renders it.
"""

from __future__ import annotations

import csv
import enum
import io
import logging
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from control import audit
from control.auth import Principal
from radcore.config import PrepaidConfig
from radcore.errors import Invalid
from radcore.keys import KeyRing
from radcore.prepaid import register_failed_pin
from radcore.replies import format_amount
from radcore.store import (Card, CardStatus, Cdr, Series, SeriesStatus, Store, bump_version, card_key,
                           format_card_number, get_card, get_series, get_version, iter_card_cdrs,
                           parse_card_number, put_card, split_card_key)

log = logging.getLogger(__name__)

#: The audit log's actor for changes the portal makes on its own (a lockout after wrong PINs).
PORTAL = Principal("portal", "", "portal")
PAGE_SIZE = 25
_DUMMY_DIGEST = bytes(32)


class Outcome(enum.Enum):
    """Why a login ended as it did. The page shows one generic message for every refusal; the
    distinction is for logs, the audit log and tests."""

    OK = "ok"
    UNKNOWN = "unknown card"
    NOT_ALLOWED = "series has no control panel"
    LOCKED = "card locked after failed PINs"
    WRONG_PIN = "wrong PIN"
    LOCKED_NOW = "wrong PIN; card now locked"
    BLOCKED = "card blocked"


@dataclass(frozen=True, slots=True)
class LoginResult:
    outcome: Outcome
    card_key: bytes | None = None
    number: str = ""  # set once the card is known to exist, for logs (never the typed text)
    sessions_epoch: int = 0  # the card's sign-out count, for the session cookie

    @property
    def ok(self) -> bool:
        return self.outcome is Outcome.OK


def _portal_series(series: Series | None) -> bool:
    return (series is not None and series.complete and series.status != SeriesStatus.DELETED
            and series.control_panel)


def authenticate(store: Store, keyring: KeyRing, config: PrepaidConfig, number: str, pin: str, *,
                 now: int, client: str = "") -> LoginResult:
    """Check a card number and PIN typed into the login form.

    Reads first and writes only when the counter changes. The write re-reads the card inside the
    write transaction, because a RADIUS worker may have counted a failure (or locked it) meanwhile;
    the counter update and, on lockout, its audit entry commit together.
    """
    try:
        series_no, serial = parse_card_number(number)
    except Invalid:
        keyring.pin_matches(pin, _DUMMY_DIGEST)  # about the same work as a real check
        return LoginResult(Outcome.UNKNOWN)
    key = card_key(series_no, serial)
    with store.transaction() as txn:
        series = get_series(txn, store, series_no)
        card = get_card(txn, store, key)
        epoch = sessions_epoch(txn, store, key)
    if card is None or series is None or not series.complete:
        keyring.pin_matches(pin, _DUMMY_DIGEST)
        return LoginResult(Outcome.UNKNOWN)
    shown = format_card_number(series_no, serial)
    if not _portal_series(series):
        keyring.pin_matches(pin, _DUMMY_DIGEST)
        return LoginResult(Outcome.NOT_ALLOWED, number=shown)
    if card.locked_until > now:
        keyring.pin_matches(pin, _DUMMY_DIGEST)
        return LoginResult(Outcome.LOCKED, number=shown)
    if not keyring.pin_matches(pin, card.pin_digest):
        return LoginResult(_count_failure(store, config, key, series, shown, now, client), number=shown)
    if card.failed_pins:
        _reset_failures(store, key)
    if card.status == CardStatus.BLOCKED:
        return LoginResult(Outcome.BLOCKED, number=shown)
    return LoginResult(Outcome.OK, key, shown, epoch)


def _count_failure(store: Store, config: PrepaidConfig, key: bytes, series: Series, shown: str, now: int,
                   client: str) -> Outcome:
    with store.transaction(write=True) as txn:
        card = get_card(txn, store, key)
        if card is None:
            return Outcome.UNKNOWN
        if card.locked_until > now:
            return Outcome.LOCKED
        before = {"failed_pins": card.failed_pins, "locked_until": card.locked_until}
        locked = register_failed_pin(card, now, config)
        put_card(txn, store, key, card)
        if locked:
            audit.record(txn, store, PORTAL, "PortalLogin", f"card/{shown}", now=now, tenant=series.reseller,
                         before=before, after={"failed_pins": card.failed_pins,
                                               "locked_until": card.locked_until, "client": client})
    if locked:
        log.warning("portal: card %s locked until %d after failed PINs (last from %s)", shown,
                    card.locked_until, client)
    return Outcome.LOCKED_NOW if locked else Outcome.WRONG_PIN


def _reset_failures(store: Store, key: bytes) -> None:
    """A right PIN ends the run of wrong ones, as it does over RADIUS."""
    with store.transaction(write=True) as txn:
        card = get_card(txn, store, key)
        if card is not None and card.failed_pins:
            card.failed_pins = 0
            put_card(txn, store, key, card)


# --- signing out ------------------------------------------------------------------------------------

def sessions_epoch(txn, store: Store, key: bytes) -> int:
    """How often the holder of card `key` has signed out: sessions issued under an older count
    are over (module docstring)."""
    return get_version(txn, store, _epoch_name(key))


def sign_out(store: Store, key: bytes) -> int:
    """End every portal session of card `key`, copies of the cookie included; the new count."""
    with store.transaction(write=True) as txn:
        return bump_version(txn, store, _epoch_name(key))


def _epoch_name(key: bytes) -> str:
    return "portal_sign_outs:" + key.hex()


# --- what a logged-in holder sees -------------------------------------------------------------------

def zone_of(series: Series) -> ZoneInfo:
    """The series' zone; UTC if the stored name is unknown here (generation validates it, but the
    tz database on this host may be older than the one that did)."""
    try:
        return ZoneInfo(series.time_zone or "UTC")
    except (ZoneInfoNotFoundError, ValueError):
        return ZoneInfo("UTC")


def money(micro: int, currency: str) -> str:
    return f"{format_amount(micro)} {currency}"


def clock_text(seconds: int) -> str:
    """A duration as a person reads it on a phone bill: 0:42, 12:05, 1:02:03."""
    hours, rest = divmod(max(seconds, 0), 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


@dataclass(frozen=True, slots=True)
class Holder:
    """A card that may use the portal right now, with its series, as of one read."""

    key: bytes
    number: str
    series: Series
    card: Card
    zone: ZoneInfo

    def local(self, epoch: int) -> datetime:
        return datetime.fromtimestamp(epoch, self.zone)

    def date_text(self, epoch: int) -> str:
        return self.local(epoch).strftime("%Y-%m-%d") if epoch else ""

    @property
    def status(self) -> str:
        return self.card.status.label

    @property
    def balance(self) -> str:
        return money(self.card.balance, self.series.currency)

    @property
    def held(self) -> str:
        """Money reserved by calls in progress; "" when there is none."""
        return money(self.card.reserved, self.series.currency) if self.card.reserved else ""

    @property
    def activated(self) -> str:
        return self.date_text(self.card.activated_at)

    @property
    def expires(self) -> str:
        return self.date_text(self.card.expires_at)


def load_holder(store: Store, key: bytes, epoch: int) -> Holder | None:
    """The card behind a session issued under sign-out count `epoch`, or None when that session
    is over (the holder signed out since) or the card may no longer use the portal (the series
    lost its panel or was deleted, or the card was blocked after the holder logged in)."""
    try:
        series_no, serial = split_card_key(key)
    except Invalid:
        return None
    with store.transaction() as txn:
        series = get_series(txn, store, series_no)
        card = get_card(txn, store, key)
        current = sessions_epoch(txn, store, key)
    if current != epoch or card is None or not _portal_series(series) or card.status == CardStatus.BLOCKED:
        return None
    assert series is not None
    return Holder(key, format_card_number(series_no, serial), series, card, zone_of(series))


@dataclass(frozen=True, slots=True)
class Period:
    """Inclusive local dates; None = open on that side."""

    start: date | None = None
    end: date | None = None

    @property
    def query(self) -> dict[str, str]:
        """URL parameters that reproduce this period (for page links and the CSV link)."""
        out = {}
        if self.start:
            out["from"] = self.start.isoformat()
        if self.end:
            out["to"] = self.end.isoformat()
        return out

    def bounds(self, zone: ZoneInfo) -> tuple[int | None, int | None]:
        """[first second, first second after) in UTC epoch for local midnights in `zone`."""
        low = int(datetime.combine(self.start, datetime.min.time(), zone).timestamp()) if self.start else None
        high = None
        if self.end:
            high = int(datetime.combine(self.end + timedelta(days=1), datetime.min.time(), zone).timestamp())
        return low, high


def parse_period(start: str, end: str) -> tuple[Period, str]:
    """(period, error for the page). A bad field is dropped rather than failing the whole page."""
    dates: list[date | None] = []
    errors = []
    for text, label in ((start, "From"), (end, "To")):
        text = (text or "").strip()
        try:
            dates.append(date.fromisoformat(text) if text else None)
        except ValueError:
            dates.append(None)
            errors.append(f"{label} is not a date (YYYY-MM-DD).")
    low, high = dates
    if low and high and low > high:
        return Period(), "The From date is after the To date."
    return Period(low, high), " ".join(errors)


@dataclass(frozen=True, slots=True)
class Call:
    """One settled call, ready to show."""

    started: datetime  # local, in the series' zone
    called: str
    duration: int
    billed_seconds: int
    cost: int

    @property
    def when(self) -> str:
        return self.started.strftime("%Y-%m-%d %H:%M:%S")

    @property
    def duration_text(self) -> str:
        return clock_text(self.duration)


@dataclass(frozen=True, slots=True)
class Statement:
    holder: Holder
    period: Period
    calls: list[Call]  # this page, newest first
    page: int
    pages: int
    count: int  # calls in the whole period
    total_duration: int
    total_billed: int
    total_cost: int

    @property
    def total_cost_text(self) -> str:
        return money(self.total_cost, self.holder.series.currency)

    @property
    def total_duration_text(self) -> str:
        return clock_text(self.total_duration)

    def cost_text(self, call: Call) -> str:
        return format_amount(call.cost)


def period_calls(store: Store, holder: Holder, period: Period) -> list[Call]:
    """Every call of the card that started within the period, newest first.

    CDR keys are ordered by stop time, not start time, so the card's whole key range is walked
    and filtered by start. A prepaid card makes hundreds of calls, not millions, so one short read
    transaction over them and a list for totals and paging are cheap; sorting by start (then key)
    gives a stable newest-first order even for overlapping calls.
    """
    low, high = period.bounds(holder.zone)
    found: list[tuple[int, bytes, Cdr]] = []
    with store.transaction() as txn:
        for ckey, cdr in iter_card_cdrs(txn, store, holder.key):
            if low is not None and cdr.start_time < low:
                continue
            if high is not None and cdr.start_time >= high:
                continue
            found.append((cdr.start_time, bytes(ckey), cdr))
    found.sort(key=lambda item: (item[0], item[1]), reverse=True)
    return [Call(holder.local(cdr.start_time), cdr.called, cdr.duration, cdr.billed_seconds, cdr.cost)
            for _, _, cdr in found]


def build_statement(store: Store, holder: Holder, period: Period, *, page: int = 1,
                    page_size: int = PAGE_SIZE) -> Statement:
    """One page of the period's calls plus totals over the whole period (not just the page).

    A page past the end shows the last page, so a stale link never shows an empty table."""
    calls = period_calls(store, holder, period)
    pages = max(1, -(-len(calls) // page_size))
    page = min(max(page, 1), pages)
    shown = calls[(page - 1) * page_size: page * page_size]
    return Statement(holder, period, shown, page, pages, len(calls),
                     sum(c.duration for c in calls), sum(c.billed_seconds for c in calls),
                     sum(c.cost for c in calls))


CSV_HEADER = ("Date and time", "Time zone", "Called number", "Duration (s)", "Billed (s)", "Cost", "Currency")


def _cell(text: str) -> str:
    """Neutralise spreadsheet formulas (CSV injection): a called number is digits, but it comes
    from the switch, and a cell starting with = + - @ would be evaluated by Excel."""
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


def csv_rows(holder: Holder, calls: list[Call]) -> list[tuple[str, ...]]:
    zone = holder.series.time_zone or "UTC"
    currency = holder.series.currency
    return [CSV_HEADER] + [(c.started.isoformat(timespec="seconds"), zone, _cell(c.called), str(c.duration),
                            str(c.billed_seconds), format_amount(c.cost), currency) for c in calls]


def calls_csv(store: Store, holder: Holder, period: Period) -> str:
    """The whole period as CSV text (RFC 4180 line endings), newest call first."""
    out = io.StringIO()
    csv.writer(out, lineterminator="\r\n").writerows(csv_rows(holder, period_calls(store, holder, period)))
    return out.getvalue()


def csv_filename(holder: Holder, period: Period) -> str:
    parts = ["calls", holder.number]
    if period.start:
        parts.append(f"from-{period.start.isoformat()}")
    if period.end:
        parts.append(f"to-{period.end.isoformat()}")
    return "-".join(parts) + ".csv"
