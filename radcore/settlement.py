"""Accounting: settle each call exactly once, however the NAS repeats, reorders or loses packets.

The rule that makes it safe (DESIGN.md, "Accounting"): a call is identified by its session key
(NAS + h323-conf-id, else Acct-Session-Id), and every Interim-Update or Stop settles
*cumulatively*: charge = cost(highest Acct-Session-Time seen) - already charged, never below zero.
So a duplicate, a retransmission with a new Identifier and Acct-Delay-Time, or an Interim that
arrives after the Stop, charges nothing twice. A stopped call keeps a tombstone session for
`session_retention_seconds` so late duplicates still find it.

Reservations made at number authorization are drawn down as the call is charged and released at
Stop; Accounting-On/Off from a NAS, and the sweeper for sessions past their deadline, release
what is left. A card whose balance reaches zero becomes `used`.

All functions run inside the caller's batch write transaction; nothing commits here.
"""

from __future__ import annotations

import logging
from functools import lru_cache
from typing import TYPE_CHECKING

from . import dictionary as d
from . import rating
from . import store as st
from .prepaid import Lookups, call_id, fallback_call_id, nas_identity
from .store import Card, CardStatus, Cdr, Session, SessionState

if TYPE_CHECKING:
    from .config import Client, PrepaidConfig
    from .keys import KeyRing
    from .packet import Request

log = logging.getLogger(__name__)

TERMINATE_NAS_REBOOT = 11
TERMINATE_LOST = 0
_OPEN = (SessionState.AUTHORIZED, SessionState.STARTED)


def session_rate(session: Session) -> rating.Rate:
    """The rate frozen into the session at authorization: later rate edits apply to future calls."""
    return _frozen_rate(session.prefix, session.price_per_minute, session.connection_fee,
                        session.min_volume, session.interval, session.grace)


@lru_cache(maxsize=4096)
def _frozen_rate(prefix: str, price_per_minute: int, connection_fee: int, min_volume: int,
                 interval: int, grace: int) -> rating.Rate:
    """Calls share a handful of rates, and building one validates every field: keep them."""
    return rating.Rate(prefix=prefix, price_per_minute=price_per_minute, connection_fee=connection_fee,
                       min_volume=min_volume, interval=interval, grace=grace, effective_from=0,
                       effective_to=0)


class Settlement:
    """Handles Accounting-Requests for one worker; counts what it could not attribute."""

    def __init__(self, store: st.Store, keyring: KeyRing, config: PrepaidConfig, lookups: Lookups):
        self.store = store
        self.keyring = keyring
        self.config = config
        self.lookups = lookups
        self.orphans = 0

    # -- entry ---------------------------------------------------------------------------------

    def account(self, txn, req: Request, client: Client, source_ip: str, now: int) -> None:
        """Apply one Accounting-Request. Returning normally means: answer it once committed."""
        status = req.status_type
        nas = nas_identity(req, source_ip)
        if status in (d.AcctStatus.ACCOUNTING_ON, d.AcctStatus.ACCOUNTING_OFF):
            self.release_nas(txn, nas, now)
            return
        if status not in (d.AcctStatus.START, d.AcctStatus.INTERIM_UPDATE, d.AcctStatus.STOP):
            return  # Failed, tunnel and other records carry no money.
        cid = call_id(req)
        if not cid:
            self.orphans += 1
            log.warning("accounting from %s without h323-conf-id or Acct-Session-Id", nas)
            return
        skey = st.session_key(nas, cid)
        session = self._find_session(txn, req, client, nas, skey, now)
        if session is None:
            self.orphans += 1
            log.warning("accounting for unknown card %r from %s", req.user_name, nas)
            return
        if session.state != SessionState.STOPPED and not session.acct_session_id:
            # The first accounting packet binds the NAS's Acct-Session-Id to the call, so its CDR
            # carries it. A stopped call keeps the identity its CDR was written with (a late Start
            # must not change it, or a later amendment could no longer find that CDR).
            session.acct_session_id = req.session_id
        if status == d.AcctStatus.START:
            if session.state == SessionState.AUTHORIZED:
                session.state = SessionState.STARTED
            st.put_session(txn, self.store, skey, session)
            return
        card_raw = txn.get(session.card_key, db=self.store.cards)
        if card_raw is None:
            self.orphans += 1
            return
        card = Card.unpack(card_raw)
        charged_before = session.charged
        self._settle(session, card, max(req.session_time, 0))
        card.last_use = now
        if session.state == SessionState.STOPPED:
            if session.charged != charged_before:
                # A longer report after the Stop (Cisco's second call leg under the same conf-id,
                # or the real Stop of a call the sweeper closed): the CDR must show what was taken.
                self._amend_cdr(txn, session)
        elif status == d.AcctStatus.STOP:
            stop_time = now - req.delay_time  # the NAS clock may be wrong; ours is the reference
            self._close(txn, skey, session, card, stop_time, req.terminate_cause, now)
        st.put_session(txn, self.store, skey, session)
        st.put_card(txn, self.store, session.card_key, card)

    # -- finding the call ----------------------------------------------------------------------

    def _find_session(self, txn, req: Request, client: Client, nas: str, skey: bytes,
                      now: int) -> Session | None:
        session = st.get_session(txn, self.store, skey)
        if session is not None:
            return session
        card_key = self._card_of(txn, req, client)
        if card_key is None:
            return None
        # An authorization without a call id was filed by card and number; adopt it now (an open
        # one only: the plain key, never the tombstone range).
        number = st.format_card_number(*st.split_card_key(card_key))
        fkey = st.session_key(nas, fallback_call_id(number, req.called))
        raw = txn.get(fkey, db=self.store.sessions)
        if raw is not None:
            session = Session.unpack(raw)
            st.delete_session(txn, self.store, fkey, session)
            session.conf_id = req.conf_id
            return session
        return self._unauthorized_session(txn, req, client, nas, card_key, now)

    def _card_of(self, txn, req: Request, client: Client) -> bytes | None:
        if client.profile.pin_only and req.user_name:
            key = txn.get(self.keyring.pin_digest(req.user_name), db=self.store.pins)
            if key is not None:
                return key
        try:
            key = st.card_key(*st.parse_card_number(req.user_name))
        except Exception:
            return None
        return key if txn.get(key, db=self.store.cards) is not None else None

    def rate_unannounced(self, txn, series_no: int, client: Client, called: str,
                         now: int) -> tuple[rating.Rate | None, int, str]:
        """(rate, tax ppm, digits rated) for a call of a card of `series_no` that was never authorized;
        rate None where the series, the number or the rate table gives none."""
        series = self.lookups.get_series(txn, series_no)
        profile = client.profile
        digits = rating.normalize_number(called, strip_plus=profile.strip_plus,
                                         strip_00=profile.strip_00, tech_prefix=profile.tech_prefix)
        if series is None or not digits:
            return None, 0, digits
        rate = rating.find_rate(txn, self.store, series.rate_table, digits, now,
                                self.lookups.rate_prefixes(txn, series.rate_table))
        return rate, self.lookups.tax_ppm(txn, series.tax_profile), digits

    def _unauthorized_session(self, txn, req: Request, client: Client, nas: str, card_key: bytes,
                              now: int) -> Session:
        """A call we never authorized (Stop-only NAS, or auth answered elsewhere): rate it now."""
        rate, tax_ppm, digits = self.rate_unannounced(txn, st.split_card_key(card_key)[0], client,
                                                      req.called, now)
        if rate is None:
            log.warning("unrated call %r to %r from %s: recorded at no charge", req.user_name,
                        req.called, nas)
            rate = rating.Rate(prefix="", price_per_minute=0, connection_fee=0, min_volume=0,
                               interval=1, grace=0, effective_from=0, effective_to=0)
        card = Card.unpack(txn.get(card_key, db=self.store.cards))
        card.open_calls += 1
        st.put_card(txn, self.store, card_key, card)
        return Session(
            card_key=card_key, state=SessionState.STARTED, reserved=0, charged=0, opened_at=now,
            deadline=now + self.config.max_call_seconds + self.config.reservation_grace_seconds,
            last_session_time=0, price_per_minute=rate.price_per_minute,
            connection_fee=rate.connection_fee, min_volume=rate.min_volume, interval=rate.interval,
            grace=rate.grace, tax_ppm=tax_ppm, prefix=rate.prefix, called=digits,
            acct_session_id=req.session_id, conf_id=req.conf_id, nas=nas)

    # -- money ---------------------------------------------------------------------------------

    @staticmethod
    def _settle(session: Session, card: Card, session_time: int) -> None:
        """Charge what the call has cost so far beyond what it was already charged."""
        if session_time > session.last_session_time:
            session.last_session_time = session_time
        total = rating.cost(session_rate(session), session.last_session_time, session.tax_ppm)
        owed = total - session.charged
        if owed <= 0:
            return
        release = min(owed, session.reserved)
        session.reserved -= release
        card.reserved -= release
        debit = min(owed, max(card.balance, 0))
        if debit < owed:
            log.warning("call on card overran its balance by %d micro-units", owed - debit)
        card.balance -= debit
        session.charged += debit

    def _close(self, txn, skey: bytes, session: Session, card: Card, stop_time: int,
               terminate_cause: int, now: int) -> None:
        """Release the rest of the hold, count the call closed, write its one CDR."""
        card.reserved -= session.reserved
        session.reserved = 0
        if session.state in _OPEN:
            card.open_calls = max(card.open_calls - 1, 0)
        session.state = SessionState.STOPPED
        session.deadline = now + self.config.session_retention_seconds
        if card.balance <= 0 and card.status == CardStatus.ACTIVATED:
            card.status = CardStatus.USED
        duration = session.last_session_time
        rate = session_rate(session)
        cdr = Cdr(nas=session.nas, acct_session_id=session.acct_session_id, conf_id=session.conf_id,
                  called=session.called, prefix=session.prefix, start_time=stop_time - duration,
                  stop_time=stop_time, duration=duration,
                  billed_seconds=rating.billed_seconds(rate, duration), cost=session.charged,
                  terminate_cause=terminate_cause)
        st.append_cdr(txn, self.store, session.card_key, cdr)

    def _amend_cdr(self, txn, session: Session) -> None:
        """Bring the call's one CDR up to the session's settled duration and charge."""
        for key, cdr in reversed(list(st.iter_card_cdrs(txn, self.store, session.card_key))):
            if (cdr.nas, cdr.conf_id, cdr.acct_session_id) == (session.nas, session.conf_id,
                                                                 session.acct_session_id):
                duration = session.last_session_time
                cdr.start_time = cdr.stop_time - duration
                cdr.duration = duration
                cdr.billed_seconds = rating.billed_seconds(session_rate(session), duration)
                cdr.cost = session.charged
                txn.put(key, cdr.pack(), db=self.store.cdrs)
                return
        log.error("no CDR found to amend for call %r on %s", session.conf_id or session.acct_session_id,
                  session.nas)

    # -- releasing what a NAS will never report ------------------------------------------------

    def release_nas(self, txn, nas: str, now: int) -> int:
        """Accounting-On/Off: the NAS restarted, so none of its calls is up any more."""
        released = 0
        for skey, session in list(st.iter_sessions(txn, self.store, nas)):
            if session.state in _OPEN:
                self.finish_call(txn, skey, session, now, TERMINATE_NAS_REBOOT)
                released += 1
        return released

    def sweep(self, txn, now: int, limit: int = 1000) -> int:
        """Close sessions past their deadline and forget tombstones past their retention."""
        done = 0
        for skey, session in list(st.iter_expired_sessions(txn, self.store, now, limit)):
            if session.state == SessionState.STOPPED:
                st.delete_session(txn, self.store, skey, session)
            else:
                self.finish_call(txn, skey, session, now, TERMINATE_LOST)
            done += 1
        return done

    def finish_call(self, txn, skey: bytes, session: Session, now: int, cause: int) -> None:
        """Close a call nobody will report on: Accounting-On/Off, the sweeper, an operator's release."""
        card_raw = txn.get(session.card_key, db=self.store.cards)
        card = Card.unpack(card_raw) if card_raw is not None else None
        if session.state == SessionState.AUTHORIZED:
            # Never started: nothing to bill; give the hold back and forget the call.
            if card is not None:
                card.reserved -= session.reserved
                card.open_calls = max(card.open_calls - 1, 0)
                st.put_card(txn, self.store, session.card_key, card)
            st.delete_session(txn, self.store, skey, session)
            return
        if card is None:
            st.delete_session(txn, self.store, skey, session)
            return
        self._close(txn, skey, session, card, now, cause, now)
        st.put_session(txn, self.store, skey, session)
        st.put_card(txn, self.store, session.card_key, card)
