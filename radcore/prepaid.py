"""Card authentication and number authorization: the prepaid business rules of an Access-Request.

Two-stage flow, as the Cisco and Quintum debit-card applications run it (DESIGN.md, "RADIUS
behaviour"):

1. card authentication: card number + PIN (or the PIN alone, per NAS profile). A pending card is
   activated here. The reply tells the switch the available credit.
2. number authorization: the same credentials plus the dialed number. The number is rated, the
   longest affordable duration computed exactly, and its cost *reserved* on the card in the same
   transaction, so two calls started at once can never spend the same money.

Every decision is a value (`Decision`), never an exception: the handler turns it into an
Access-Accept or an Access-Reject with the profile's h323-return-code.

All functions here run inside the caller's write transaction; nothing commits on its own.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from . import rating
from . import store as st
from .dictionary import ReturnCode
from .fastpath import chap_matches
from .store import Card, CardStatus, SeriesStatus, Session, SessionState
from .throttle import PinThrottle

if TYPE_CHECKING:
    from .config import Client, PrepaidConfig
    from .keys import KeyRing
    from .packet import Request

DAY = 86_400


@dataclass(slots=True)
class Decision:
    """The outcome of one Access-Request."""

    outcome: ReturnCode
    message: str
    available: int = 0
    currency: str = ""
    credit_time: int | None = None
    language: str = ""
    route: str = ""

    @property
    def accepted(self) -> bool:
        return self.outcome == ReturnCode.SUCCESS


def _deny(outcome: ReturnCode, message: str) -> Decision:
    return Decision(outcome, message)


@dataclass(slots=True)
class Lookups:
    """Per-worker caches of what changes rarely (series, tax profiles, routing plans).

    They are checked against the store's `config_version` counter once per batch, which the control
    plane bumps on every change, so an edit is seen by the next batch without a restart.
    """

    store: st.Store
    version: int = -1
    series: dict[int, st.Series | None] = field(default_factory=dict)
    taxes: dict[str, int] = field(default_factory=dict)
    routes: dict[str, str] = field(default_factory=dict)
    prefixes: dict[str, frozenset[str] | None] = field(default_factory=dict)

    def refresh(self, txn) -> None:
        version = st.get_version(txn, self.store, "config_version")
        if version != self.version:
            self.version = version
            self.series.clear()
            self.taxes.clear()
            self.routes.clear()
            self.prefixes.clear()

    def rate_prefixes(self, txn, table: str) -> frozenset[str] | None:
        """`rating.rate_prefixes` of a table, read once per config version (rate edits bump it)."""
        try:
            return self.prefixes[table]
        except KeyError:
            found = rating.rate_prefixes(txn, self.store, table)
            self.prefixes[table] = found
            return found

    def get_series(self, txn, number: int) -> st.Series | None:
        try:
            return self.series[number]
        except KeyError:
            found = st.get_series(txn, self.store, number)
            self.series[number] = found
            return found

    def tax_ppm(self, txn, name: str) -> int:
        if not name:
            return 0
        try:
            return self.taxes[name]
        except KeyError:
            raw = txn.get(name.encode(), db=self.store.tax_profiles)
            ppm = st.TaxProfile.from_bytes(raw).percent_ppm if raw else 0
            self.taxes[name] = ppm
            return ppm

    def route(self, txn, name: str) -> str:
        if not name:
            return ""
        try:
            return self.routes[name]
        except KeyError:
            raw = txn.get(name.encode(), db=self.store.routing_plans)
            route = st.RoutingPlan.from_bytes(raw).route if raw else ""
            self.routes[name] = route
            return route


class NeedsWrite(Exception):
    """A read-only decision pass met a change it must make; redo the request in a write transaction."""


def _must_write(writable: bool) -> None:
    if not writable:
        raise NeedsWrite


def register_failed_pin(card: Card, now: int, config: PrepaidConfig) -> bool:
    """Count one wrong PIN; after `max_failed_pins` in a row the card is locked for the cool-down.

    Shared by RADIUS and the card-holder portal so a guesser gets N tries in total, not N per door.
    Returns True when this failure locked the card. The caller writes the card.
    """
    card.failed_pins += 1
    if card.failed_pins >= config.max_failed_pins:
        card.locked_until = now + config.lockout_seconds
        card.failed_pins = 0
        return True
    return False


def nas_identity(req: Request, source_ip: str) -> str:
    """The name a call is filed under: what the NAS calls itself, else its address.

    Auth and accounting of one call come from the same gateway with the same identity, so the
    session key built from it lines up across both.
    """
    return req.nas_identifier or req.nas_ip or source_ip


def call_id(req: Request) -> str:
    """Identifies a call across its Access-Requests and accounting legs.

    h323-conf-id is shared by both legs of a Cisco call and by its authorization, so settling by it
    makes the two legs one call (cumulative, never double). Without it, Acct-Session-Id.
    """
    return req.conf_id or req.session_id


def fallback_call_id(card_number: str, called: str) -> str:
    """Key of an authorization that carried no call identifier, found again by card and number."""
    return f"auth:{card_number}:{called}"


class CardAuthenticator:
    """Decides Access-Requests against the store; one per worker, used inside its batch transaction."""

    def __init__(self, store: st.Store, keyring: KeyRing, config: PrepaidConfig, lookups: Lookups):
        self.store = store
        self.keyring = keyring
        self.config = config
        self.lookups = lookups
        self.throttle = PinThrottle(config.pin_only_throttle_per_minute)

    # -- stage 1: who is calling ---------------------------------------------------------------

    def identify(self, txn, req: Request, client: Client) -> tuple[bytes | None, str | None]:
        """(card key, PIN as presented) from the request; key None when no card matches."""
        if client.profile.pin_only:
            pin = self._pin_only_pin(req)
            if not pin:
                return None, None
            key = txn.get(self.keyring.pin_digest(pin), db=self.store.pins)
            return key, pin
        try:
            series, serial = st.parse_card_number(req.user_name)
        except Exception:
            return None, None
        pin = req.password.decode("utf-8", "replace") if req.password is not None else None
        return st.card_key(series, serial), pin

    @staticmethod
    def _pin_only_pin(req: Request) -> str:
        if req.password:
            return req.password.decode("utf-8", "replace")
        return req.user_name

    def _credentials_ok(self, req: Request, card: Card, pin: str | None, key: bytes) -> bool:
        if req.chap_password is not None:
            plain = self.keyring.decrypt_pin(card.pin_blob, key)
            return chap_matches(req.chap_password, req.chap_challenge or b"", plain.encode())
        if pin is None:
            return False
        return self.keyring.pin_matches(pin, card.pin_digest)

    def authorize(self, txn, req: Request, client: Client, source_ip: str, now: int, *,
                  writable: bool = True) -> Decision:
        """Run both stages for one Access-Request; writes the card (and a session) when it must.

        With `writable=False` (a read transaction) it raises `NeedsWrite` at the first change the
        decision would make, so the caller can answer the common case, a plain card authentication,
        without the writer lock or an fsync, and redo only the rest in its write transaction.
        """
        # PIN-only: a wrong guess locks no card, so the line it comes from is throttled instead.
        line = (nas_identity(req, source_ip), req.calling) if client.profile.pin_only else None
        if line is not None and not self.throttle.allow(line, now):
            return _deny(ReturnCode.RETRIES_EXCEEDED, "too many unknown PINs from this line")
        key, pin = self.identify(txn, req, client)
        if key is None:
            if line is not None:
                self.throttle.charge(line, now)
            return _deny(ReturnCode.INVALID_CARD_NUMBER if not client.profile.pin_only
                         else ReturnCode.INVALID_ACCOUNT, "unknown card")
        raw = txn.get(key, db=self.store.cards)
        if raw is None:
            return _deny(ReturnCode.INVALID_ACCOUNT, "unknown card")
        card = Card.unpack(raw)
        series_no, serial = st.split_card_key(key)
        series = self.lookups.get_series(txn, series_no)
        if series is None or not series.complete or series.status == SeriesStatus.DELETED:
            return _deny(ReturnCode.INVALID_ACCOUNT, "unknown card")
        if card.locked_until > now:
            return _deny(ReturnCode.RETRIES_EXCEEDED, "card locked after failed PINs")

        if not client.profile.pin_only and not self._credentials_ok(req, card, pin, key):
            _must_write(writable)
            self._count_failed_pin(txn, key, card, now)
            if card.locked_until > now:
                return _deny(ReturnCode.RETRIES_EXCEEDED, "card locked after failed PINs")
            return _deny(ReturnCode.INVALID_PASSWORD, "wrong PIN")

        dirty = card.failed_pins != 0
        card.failed_pins = 0
        decision = self._check_card(card, series, now)
        if decision is not None:
            if decision.outcome == ReturnCode.CARD_EXPIRED and card.status != CardStatus.EXPIRED:
                card.status = CardStatus.EXPIRED
                dirty = True
            if dirty:
                _must_write(writable)
                st.put_card(txn, self.store, key, card)
            return decision

        if card.status == CardStatus.PENDING:
            _must_write(writable)
            dirty = True
            decision = self.activate(card, series, now)
            if decision is not None:
                st.put_card(txn, self.store, key, card)
                return decision

        called = self.dialed(req, client)
        if called:
            _must_write(writable)
            card.last_use = now
            decision = self._reserve(txn, req, client, source_ip, key, card, series, called, now)
            dirty = True
        else:
            decision = Decision(ReturnCode.SUCCESS, "card accepted",
                                available=card.balance - card.reserved, currency=series.currency,
                                language=series.language)
        if dirty:
            _must_write(writable)
            st.put_card(txn, self.store, key, card)
        return decision

    def _count_failed_pin(self, txn, key: bytes, card: Card, now: int) -> None:
        register_failed_pin(card, now, self.config)
        st.put_card(txn, self.store, key, card)

    @staticmethod
    def _check_card(card: Card, series: st.Series, now: int) -> Decision | None:
        if series.status != SeriesStatus.ACTIVE:
            return _deny(ReturnCode.USER_DENIED, "series stopped")
        if card.status == CardStatus.BLOCKED:
            return _deny(ReturnCode.USER_DENIED, "card blocked")
        if card.status == CardStatus.EXPIRED:
            return _deny(ReturnCode.CARD_EXPIRED, "card expired")
        if card.status == CardStatus.USED:
            return _deny(ReturnCode.ZERO_BALANCE, "card used up")
        if card.expires_at and now >= card.expires_at:
            return _deny(ReturnCode.CARD_EXPIRED, "card expired")
        if card.status == CardStatus.PENDING and series.expiry_date and now >= series.expiry_date:
            return _deny(ReturnCode.CARD_EXPIRED, "card expired")
        if card.balance - card.reserved <= 0 and card.status != CardStatus.PENDING:
            if card.balance <= 0:
                return _deny(ReturnCode.ZERO_BALANCE, "zero balance")
            return _deny(ReturnCode.INSUFFICIENT_BALANCE, "balance held by calls in progress")
        return None

    @staticmethod
    def activate(card: Card, series: st.Series, now: int) -> Decision | None:
        """First use: activation time, activation fee, expiry = the earlier of date and period."""
        if series.activation_fee > card.balance - card.reserved:
            return _deny(ReturnCode.INSUFFICIENT_BALANCE, "balance below the activation fee")
        card.status = CardStatus.ACTIVATED
        card.activated_at = now
        card.fees_paid_until = now
        card.balance -= series.activation_fee
        expiry = series.expiry_date or 0
        if series.expiry_period_days:
            by_period = now + series.expiry_period_days * DAY
            expiry = min(expiry, by_period) if expiry else by_period
        card.expires_at = expiry
        if card.balance - card.reserved <= 0:
            card.status = CardStatus.USED if card.balance <= 0 else card.status
            return _deny(ReturnCode.ZERO_BALANCE, "zero balance after the activation fee")
        return None

    @staticmethod
    def dialed(req: Request, client: Client) -> str:
        """The dialled number of a number authorization; "" for a plain card authentication."""
        if client.profile.number_attribute == "h323-redirect-number":
            return req.redirect_number or req.called
        return req.called

    # -- stage 2: reserve the call -------------------------------------------------------------

    def _reserve(self, txn, req: Request, client: Client, source_ip: str, key: bytes, card: Card,
                 series: st.Series, called: str, now: int) -> Decision:
        profile = client.profile
        digits = rating.normalize_number(called, strip_plus=profile.strip_plus,
                                         strip_00=profile.strip_00, tech_prefix=profile.tech_prefix)
        rate = (rating.find_rate(txn, self.store, series.rate_table, digits, now,
                                 self.lookups.rate_prefixes(txn, series.rate_table)) if digits else None)
        if rate is None:
            return _deny(ReturnCode.CALLED_NUMBER_BLOCKED, "called number blocked")

        nas = nas_identity(req, source_ip)
        cid = call_id(req) or fallback_call_id(st.format_card_number(*st.split_card_key(key)), called)
        skey = st.session_key(nas, cid)
        old = st.get_session(txn, self.store, skey)
        if old is not None and old.state == SessionState.STOPPED:
            return _deny(ReturnCode.INVALID_ARGUMENT, "call already completed")
        # A re-authorization of the same call replaces its hold rather than adding a second one.
        held = old.reserved if old is not None else 0
        counted = 1 if old is not None else 0
        if card.open_calls - counted >= series.max_concurrent_calls:
            return _deny(ReturnCode.ACCOUNT_IN_USE, "account in use")

        tax_ppm = self.lookups.tax_ppm(txn, series.tax_profile)
        available = card.balance - (card.reserved - held)
        seconds = rating.max_duration(rate, available, tax_ppm, cap=self.config.max_call_seconds)
        if seconds <= rate.grace and rating.cost(rate, rate.grace + 1, tax_ppm) > available:
            return _deny(ReturnCode.INSUFFICIENT_BALANCE, "insufficient balance")
        hold = rating.cost(rate, seconds, tax_ppm)

        session = Session(
            card_key=key, state=old.state if old is not None else SessionState.AUTHORIZED,
            reserved=hold, charged=old.charged if old is not None else 0, opened_at=now,
            deadline=now + seconds + self.config.reservation_grace_seconds,
            last_session_time=old.last_session_time if old is not None else 0,
            price_per_minute=rate.price_per_minute, connection_fee=rate.connection_fee,
            min_volume=rate.min_volume, interval=rate.interval, grace=rate.grace, tax_ppm=tax_ppm,
            prefix=rate.prefix, called=digits, acct_session_id=req.session_id, conf_id=req.conf_id,
            nas=nas)
        card.reserved += hold - held
        card.open_calls += 1 - counted
        st.put_session(txn, self.store, skey, session)
        return Decision(ReturnCode.SUCCESS, "call authorized", available=available,
                        currency=series.currency, credit_time=seconds, language=series.language,
                        route=self.lookups.route(txn, series.routing_plan))
