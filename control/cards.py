"""Cards: search (the operator's card list), inspect, adjust.

Searching walks series key ranges with short read transactions of at most `SCAN_CHUNK` cards each, so
a listing or export over millions of cards never pins old pages for long (a long LMDB read
transaction makes the file grow while RADIUS writes). The result is therefore not one snapshot:
a card that RADIUS changes mid-walk shows the state the walk met. A number prefix is turned into a
serial range per series, so "45-0011" reads 100,000 keys, not the whole series. An exact PIN is one
lookup in the `pins` index.

PINs leave the server only on request (`include_pins`), and every such listing is audited.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Iterator

from control import audit
from control.auth import Principal, check_owner, require_admin
from control.catalog import Refused
from radcore.clock import Clock
from radcore.errors import InsufficientBalance, Invalid, NotFound
from radcore.keys import KeyRing
from radcore.prepaid import CardAuthenticator
from radcore.store import (MAX_SERIAL, Card, CardStatus, Series, SeriesStatus, Store, card_key,
                           format_card_number, get_series, parse_card_number, put_card, split_card_key)
from radcore.store import get_card as read_card

SCAN_CHUNK = 1000
_INT64_MAX = 2**63 - 1


def group_pin(pin: str) -> str:
    """Digits in groups of four, as printed on cards and shown in the card list: "1234 5678 90"."""
    return " ".join(pin[i:i + 4] for i in range(0, len(pin), 4))


@dataclass(frozen=True, slots=True)
class CardFilter:
    """Card search; every set criterion must match. `series` 0 = all visible complete series that
    are not deleted. Balance and activation bounds are inclusive; None / 0 = open."""

    series: int = 0
    statuses: tuple[CardStatus, ...] = ()
    number_prefix: str = ""
    pin: str = ""
    balance_min: int | None = None
    balance_max: int | None = None
    activated_from: int = 0
    activated_to: int = 0

    def matches(self, card: Card) -> bool:
        if self.statuses and card.status not in self.statuses:
            return False
        if self.balance_min is not None and card.balance < self.balance_min:
            return False
        if self.balance_max is not None and card.balance > self.balance_max:
            return False
        if self.activated_from or self.activated_to:
            if not card.activated_at or card.activated_at < self.activated_from:
                return False
            if self.activated_to and card.activated_at > self.activated_to:
                return False
        return True


@dataclass(frozen=True, slots=True)
class CardView:
    """A card as the operator sees it: the stored state plus its number, currency and maybe PIN."""

    number: str
    series: int
    serial: int
    card: Card
    currency: str
    pin: str = ""  # grouped; "" unless asked for


def _prefix_parts(prefix: str) -> tuple[str, str | None]:
    """("series digits", "serial digits" or None when the prefix has no dash)."""
    text = "".join(prefix.split())
    head, dash, tail = text.partition("-")
    digits = (head + tail).isascii() and head.isdigit() and (tail.isdigit() or not tail)
    if not digits:
        raise Invalid("number_prefix", f"expected digits with at most one dash, got {prefix!r}")
    if len(tail) > 9 or len(head) > (5 if dash else 14):
        raise Invalid("number_prefix", f"longer than a card number: {prefix!r}")
    return (head, tail) if dash else (head, None)


def _serial_range(prefix: tuple[str, str | None] | None, series: int) -> tuple[int, int] | None:
    """Inclusive serial bounds in `series` for cards whose number starts with the prefix."""
    if prefix is None:
        return 0, MAX_SERIAL
    head, tail = prefix
    name = str(series)
    if tail is not None:
        if int(head) != series:
            return None
        digits = tail
    elif name.startswith(head):
        return 0, MAX_SERIAL
    elif head.startswith(name):
        digits = head[len(name):]
        if len(digits) > 9:
            return None
    else:
        return None
    return int(digits.ljust(9, "0")), min(int(digits.ljust(9, "9")), MAX_SERIAL)


def _visible_series(store: Store, principal: Principal, flt: CardFilter) -> list[Series]:
    with store.transaction() as txn:
        if flt.series:
            found = get_series(txn, store, flt.series)
            if found is None or not found.complete:
                raise NotFound(f"series {flt.series} does not exist")
            check_owner(principal, found.reseller, f"series {flt.series}")
            return [found]
        out = []
        for raw in txn.cursor(db=store.series).iternext(keys=False):
            s = Series.from_bytes(raw)
            if s.complete and s.status != SeriesStatus.DELETED and (principal.is_admin
                                                                     or s.reseller == principal.reseller):
                out.append(s)
        return out


def scan(store: Store, keyring: KeyRing, principal: Principal, flt: CardFilter, *,
         after: bytes = b"") -> Iterator[tuple[Series, int, Card]]:
    """(series, serial, card) matching `flt` in card-key order, starting after card key `after`."""
    prefix = _prefix_parts(flt.number_prefix) if flt.number_prefix else None
    if flt.pin:
        require_admin(principal, "searching by PIN")
        yield from _by_pin(store, keyring, principal, flt, prefix)
        return
    for series in _visible_series(store, principal, flt):
        bounds = _serial_range(prefix, series.number)
        if bounds is None:
            continue
        low = max(bounds[0], series.first_serial)
        high = min(bounds[1], series.first_serial + series.quantity - 1)
        if after:
            last_series, last_serial = split_card_key(after)
            if last_series > series.number:
                continue
            if last_series == series.number:
                low = max(low, last_serial + 1)
        while low <= high:
            batch = []
            with store.transaction() as txn:
                cursor = txn.cursor(db=store.cards)
                found = cursor.set_range(card_key(series.number, low))
                while found and len(batch) < SCAN_CHUNK:
                    number, serial = split_card_key(cursor.key())
                    if number != series.number or serial > high:
                        high = -1
                        break
                    batch.append((serial, Card.unpack(cursor.value())))
                    found = cursor.next()
                if not found:
                    high = -1
            for serial, card in batch:
                if flt.matches(card):
                    yield series, serial, card
            if batch:
                low = batch[-1][0] + 1


def _by_pin(store: Store, keyring: KeyRing, principal: Principal, flt: CardFilter,
            prefix: tuple[str, str | None] | None) -> Iterator[tuple[Series, int, Card]]:
    pin = "".join(flt.pin.split())
    if not pin.isascii() or not pin.isdigit():
        raise Invalid("pin", "must be digits")
    with store.transaction() as txn:
        key = txn.get(keyring.pin_digest(pin), db=store.pins)
        if key is None:
            return
        number, serial = split_card_key(key)
        series = get_series(txn, store, number)
        card = read_card(txn, store, key)
    if series is None or card is None or not series.complete:
        return
    if flt.series and flt.series != number or not flt.series and series.status == SeriesStatus.DELETED:
        return
    bounds = _serial_range(prefix, number)
    if bounds is not None and bounds[0] <= serial <= bounds[1] and flt.matches(card):
        yield series, serial, card


def view(keyring: KeyRing, series: Series, serial: int, card: Card, *, with_pin: bool) -> CardView:
    key = card_key(series.number, serial)
    pin = group_pin(keyring.decrypt_pin(card.pin_blob, key)) if with_pin else ""
    return CardView(format_card_number(series.number, serial), series.number, serial, card,
                    series.currency, pin)


def _filter_doc(flt: CardFilter) -> dict:
    doc = {k: getattr(flt, k) for k in ("series", "number_prefix", "balance_min", "balance_max",
                                        "activated_from", "activated_to")}
    doc["statuses"] = [s.label for s in flt.statuses]
    doc["by_pin"] = bool(flt.pin)
    return doc


def audit_pin_access(store: Store, principal: Principal, rpc: str, flt: CardFilter, count: int | None, *,
                     now: int, tenant: str = "", extra: dict | None = None) -> None:
    """PINs are about to leave the server: record who saw how many (None = an export, counted as it
    streams), with what filter. Never the PINs themselves."""
    target = f"series/{flt.series}" if flt.series else "cards"
    details = {"filter": _filter_doc(flt), **(extra or {})}
    if count is not None:
        details["pins"] = count
    with store.transaction(write=True) as txn:
        audit.record(txn, store, principal, rpc, target, now=now, tenant=tenant or principal.reseller,
                     after=details)


def list_cards(store: Store, keyring: KeyRing, principal: Principal, flt: CardFilter, *,
               include_pins: bool = False, page_size: int = 0, page_token: str = "",
               clock: Clock) -> tuple[list[CardView], str]:
    """A page of matching cards in number order and the token for the next page."""
    limit = audit.page_limit(page_size)
    try:
        after = bytes.fromhex(page_token) if page_token else b""
        if after:
            split_card_key(after)
    except (ValueError, Invalid) as e:
        raise Invalid("page_token", "is not a token this listing returned") from e
    found: list[tuple[Series, int, Card]] = []
    for item in scan(store, keyring, principal, flt, after=after):
        found.append(item)
        if len(found) > limit:
            break
    more = len(found) > limit
    found = found[:limit]
    if (include_pins or flt.pin) and found:  # a lookup by PIN is a PIN access even without the PIN
        tenant = found[0][0].reseller if flt.series else ""
        audit_pin_access(store, principal, "ListCards", flt, len(found), now=clock(), tenant=tenant)
    views = [view(keyring, s, serial, card, with_pin=include_pins) for s, serial, card in found]
    token = card_key(views[-1].series, views[-1].serial).hex() if more else ""
    return views, token


def _find(store: Store, principal: Principal, number: str) -> tuple[Series, int, Card]:
    series_no, serial = parse_card_number(number)
    with store.transaction() as txn:
        series = get_series(txn, store, series_no)
        card = read_card(txn, store, card_key(series_no, serial))
    if series is None or card is None or not series.complete:
        raise NotFound(f"card {number} does not exist")
    check_owner(principal, series.reseller, f"card {number}")
    return series, serial, card


def get_card(store: Store, keyring: KeyRing, principal: Principal, number: str, *,
             include_pin: bool = False, clock: Clock) -> CardView:
    series, serial, card = _find(store, principal, number)
    if include_pin:
        flt = CardFilter(series=series.number, number_prefix=format_card_number(series.number, serial))
        audit_pin_access(store, principal, "GetCard", flt, 1, now=clock(), tenant=series.reseller)
    return view(keyring, series, serial, card, with_pin=include_pin)


def public(card: Card) -> dict:
    """The card's state for the audit log; the PIN digest and ciphertext stay out."""
    return {"status": card.status.label, "balance": card.balance, "reserved": card.reserved,
            "activated_at": card.activated_at, "expires_at": card.expires_at,
            "fees_paid_until": card.fees_paid_until, "failed_pins": card.failed_pins,
            "locked_until": card.locked_until}


def _set_status(card: Card, series: Series, status: CardStatus, now: int) -> None:
    if status == card.status:
        return
    if status == CardStatus.PENDING:
        if card.activated_at:
            raise Invalid("status", "a card that was activated cannot become pending again")
        card.status = status
        return
    if status == CardStatus.ACTIVATED:
        if not card.activated_at:
            # First activation by an operator: the RADIUS activation rule (activation time, fees
            # paid from now, expiry = earlier of series date and period), without the activation fee.
            card.status = CardStatus.PENDING
            CardAuthenticator.activate(card, replace(series, activation_fee=0), now)
            return
        if card.expires_at and card.expires_at <= now:
            raise Refused("the card's expiry has passed; it cannot be activated again")
    card.status = status


def update_card(store: Store, principal: Principal, number: str, *, status: CardStatus | None = None,
                balance_delta: int = 0, reason: str = "", unlock: bool = False, clock: Clock) -> CardView:
    """Apply the requested changes together in one transaction with the audit entry.

    A balance change may not take the balance below what calls in progress have reserved (they were
    promised that money). Unless the status was set explicitly, a top-up of a USED card makes it
    usable again (activated, or pending if it never was) and a debit to zero makes an activated card
    USED, the same rule settlement applies.
    """
    if status is None and not balance_delta and not unlock:
        raise Invalid("number", "nothing to change: give a status, a balance adjustment or unlock")
    if type(balance_delta) is not int:
        raise Invalid("balance_adjustment", "must be an integer number of micro-units")
    if balance_delta and not (isinstance(reason, str) and reason.strip()):
        raise Invalid("reason", "is required with a balance adjustment")
    if status is not None and not isinstance(status, CardStatus):
        raise Invalid("status", "must be pending, activated, expired, used or blocked")
    series, serial, _ = _find(store, principal, number)
    key = card_key(series.number, serial)
    now = clock()
    with store.transaction(write=True) as txn:
        card = read_card(txn, store, key)
        if card is None:
            raise NotFound(f"card {number} does not exist")
        before = public(card)
        if status is not None:
            _set_status(card, series, status, now)
        if balance_delta:
            balance = card.balance + balance_delta
            if balance > _INT64_MAX:
                raise Invalid("balance_adjustment", "would overflow the balance")
            if balance < max(card.reserved, 0):
                raise InsufficientBalance(f"card {number} has {card.balance} with {card.reserved} "
                                          f"reserved by calls in progress; cannot apply {balance_delta}")
            card.balance = balance
            if status is None and card.status == CardStatus.USED and balance > 0:
                card.status = CardStatus.ACTIVATED if card.activated_at else CardStatus.PENDING
            elif status is None and card.status == CardStatus.ACTIVATED and balance <= 0:
                card.status = CardStatus.USED
        if unlock:
            card.failed_pins, card.locked_until = 0, 0
        put_card(txn, store, key, card)
        old, new = audit.diff(before, public(card))
        if balance_delta:
            new["reason"] = reason.strip()
        audit.record(txn, store, principal, "UpdateCard", f"card/{format_card_number(series.number, serial)}",
                     now=now, tenant=series.reseller, before=old, after=new)
    return CardView(format_card_number(series.number, serial), series.number, serial, card, series.currency)
