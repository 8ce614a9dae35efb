"""The fee run: maintenance fees, expiry and used-up cards, in bounded chunks, safe to repeat.

The control process calls `run_fees(store, clock)` every few minutes; FeeService runs the same code
on demand (and as a dry run). The rules, per card, at one `now` for the whole run:

- Maintenance fee (activated cards of a series with a fee and a period): every WHOLE period elapsed
  since `fees_paid_until`, up to now or the card's expiry if that is earlier, is charged once, and
  `fees_paid_until` advances by whole periods only. So a second run charges nothing, a run after
  five missed periods charges five, and a partial period waits for a later run. A fee larger than the
  available balance takes what is there (money reserved by a call in progress is never taken, so the
  call cannot overrun), the rest is written off, and a card left at zero becomes `used`.
- Expiry: an activated card at or past `expires_at` (set at activation from the series date and
  period) becomes `expired`; a pending card whose series `expiry_date` has passed becomes `expired`.
- Used: an activated card with a zero balance becomes `used`.
Series that are deleted or still generating are skipped; stopped series are included (stopping a
series blocks calls, not the clock).

Each chunk of at most `chunk_size` cards is assessed in a read transaction; only a chunk that has
something to change takes the writer lock, re-reads its cards and applies the rules again on the
fresh values (RADIUS may have moved them meanwhile), so a run never stalls accounting for long and
never loses a concurrent debit. Because every rule is idempotent, an interrupted run is resumed by
simply running again. One audit entry per series summarises what the run changed there; it is
written in the same transaction as the series' last chunk (a run interrupted mid-series leaves the
cards it changed self-describing through `fees_paid_until`, without that summary).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Callable, Iterator

import lmdb

from control import audit
from control.auth import SCHEDULER, Principal, check_owner
from radcore.clock import Clock
from radcore.errors import Invalid, NotFound
from radcore.store import (Card, CardStatus, Series, SeriesStatus, Store, card_key, get_series,
                           put_card, split_card_key)

HOUR = 3600
DEFAULT_CHUNK = 1000
MAX_CHUNK = 10_000


@dataclass(slots=True)
class FeeReport:
    dry_run: bool = False
    now: int = 0
    cards_scanned: int = 0
    cards_charged: int = 0
    periods_charged: int = 0
    fees: int = 0
    fees_written_off: int = 0
    expired_by_date: int = 0
    expired_by_period: int = 0
    pending_expired: int = 0
    used: int = 0

    def add(self, other: FeeReport) -> None:
        for f in fields(self):
            if f.name not in ("dry_run", "now"):
                setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))

    @property
    def changed(self) -> bool:
        return any(getattr(self, f.name) for f in fields(self)
                   if f.name not in ("dry_run", "now", "cards_scanned"))


def assess(card: Card, series: Series, now: int, report: FeeReport) -> bool:
    """Apply the fee-run rules to `card` in place, count them in `report`; True if it changed."""
    report.cards_scanned += 1
    if card.status == CardStatus.PENDING:
        if series.expiry_date and now >= series.expiry_date:
            card.status = CardStatus.EXPIRED
            report.pending_expired += 1
            return True
        return False
    if card.status != CardStatus.ACTIVATED:
        return False
    changed = False
    period = series.maintenance_period_hours * HOUR
    if series.maintenance_fee > 0 and period > 0:
        paid = card.fees_paid_until or card.activated_at or now
        if paid != card.fees_paid_until:
            card.fees_paid_until, changed = paid, True
        end = min(now, card.expires_at) if card.expires_at else now
        periods = max(0, (end - paid) // period)
        if periods:
            due = periods * series.maintenance_fee
            taken = min(due, max(card.balance - card.reserved, 0))
            card.balance -= taken
            card.fees_paid_until = paid + periods * period
            report.cards_charged += 1
            report.periods_charged += periods
            report.fees += taken
            report.fees_written_off += due - taken
            changed = True
    if card.expires_at and now >= card.expires_at:
        card.status = CardStatus.EXPIRED
        if series.expiry_date and card.expires_at == series.expiry_date:
            report.expired_by_date += 1
        else:
            report.expired_by_period += 1
        return True
    if card.balance <= 0:
        card.status = CardStatus.USED
        report.used += 1
        return True
    return changed


class FeeRun:
    """One run, consumed through `steps()` (yields (done, total) after each chunk); `report` holds
    the totals so far and is final when the iteration ends."""

    def __init__(self, store: Store, clock: Clock, *, series: int | None = None, dry_run: bool = False,
                 principal: Principal = SCHEDULER, chunk_size: int = DEFAULT_CHUNK):
        if type(chunk_size) is not int or not 1 <= chunk_size <= MAX_CHUNK:
            raise Invalid("chunk_size", f"must be 1..{MAX_CHUNK}")
        self.store = store
        self.principal = principal
        self.only = series or None
        self.chunk_size = chunk_size
        self.report = FeeReport(dry_run=dry_run, now=clock())
        self.clock = clock

    def _selected(self) -> list[Series]:
        with self.store.transaction() as txn:
            if self.only is not None:
                found = get_series(txn, self.store, self.only)
                if found is None or not found.complete:
                    raise NotFound(f"series {self.only} does not exist")
                check_owner(self.principal, found.reseller, f"series {self.only}")
                candidates = [found]
            else:
                candidates = [Series.from_bytes(raw)
                              for raw in txn.cursor(db=self.store.series).iternext(keys=False)]
        return [s for s in candidates if s.complete and s.status != SeriesStatus.DELETED
                and (self.principal.is_admin or s.reseller == self.principal.reseller)]

    def steps(self) -> Iterator[tuple[int, int]]:
        selected = self._selected()
        total = sum(s.quantity for s in selected)
        done = 0
        for series in selected:
            summary = FeeReport(dry_run=self.report.dry_run, now=self.report.now)
            start = card_key(series.number, series.first_serial)
            while start is not None:
                start, scanned = self._chunk(series, start, summary)
                done += scanned
                yield done, total
            self.report.add(summary)

    def _chunk(self, series: Series, start: bytes, summary: FeeReport) -> tuple[bytes | None, int]:
        """Assess up to chunk_size cards from `start`; write the changed ones unless dry-running.
        Returns (next start key or None at the series' end, cards scanned)."""
        store, now = self.store, self.report.now
        with store.transaction() as txn:
            keys, last = self._read_keys(txn, series.number, start)
            trial = FeeReport()
            due = [key for key, raw in keys if assess(Card.unpack(raw), series, now, trial)]
        final = last is None
        if self.report.dry_run:
            summary.add(trial)
            return last, len(keys)
        summary.cards_scanned += len(keys)
        if due or (final and summary.changed):
            with store.transaction(write=True) as txn:
                for key in due:
                    raw = txn.get(key, db=store.cards)
                    if raw is None:
                        continue
                    card = Card.unpack(raw)
                    counted = FeeReport()
                    if assess(card, series, now, counted):
                        put_card(txn, store, key, card)
                    counted.cards_scanned = 0
                    summary.add(counted)
                if final and summary.changed:
                    doc = asdict(summary)
                    doc.pop("dry_run")
                    audit.record(txn, store, self.principal, "RunFees", f"series/{series.number}",
                                 now=self.clock(), tenant=series.reseller, after=doc)
        return last, len(keys)

    def _read_keys(self, txn: lmdb.Transaction, number: int,
                   start: bytes) -> tuple[list[tuple[bytes, bytes]], bytes | None]:
        out: list[tuple[bytes, bytes]] = []
        try:
            cursor = txn.cursor(db=self.store.cards)
            found = cursor.set_range(start)
            while found:
                key = bytes(cursor.key())
                if split_card_key(key)[0] != number:
                    return out, None
                if len(out) == self.chunk_size:
                    return out, key
                out.append((key, bytes(cursor.value())))
                found = cursor.next()
        except lmdb.Error as e:
            raise self.store.error(e) from e
        return out, None


def run_fees(store: Store, clock: Clock, *, series: int | None = None, dry_run: bool = False,
             principal: Principal = SCHEDULER, progress: Callable[[int, int], None] | None = None,
             chunk_size: int = DEFAULT_CHUNK) -> FeeReport:
    """Run fees and expiry over every visible series (or one); safe to call from a scheduler thread
    at any interval, and again after an interruption."""
    run = FeeRun(store, clock, series=series, dry_run=dry_run, principal=principal, chunk_size=chunk_size)
    for done, total in run.steps():
        if progress is not None:
            progress(done, total)
    return run.report
