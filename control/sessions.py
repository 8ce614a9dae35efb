"""Open calls (reservations) and releasing a stale one.

A NAS that crashes without Accounting-Off, or a Stop lost in the network, leaves money reserved on a
card until the session's deadline. Operators release such a call by hand; that must have exactly the
effect of the reservation sweeper, so this module calls `radcore.settlement.Settlement.finish_call`
(the sweeper's own step) inside a write transaction together with the audit entry, rather than
restating the settlement rules here.

Session ids on the API are the session key (NAS identity, NUL, call id) in URL-safe base64: opaque to
clients, stable, and decodable without an index.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass

import lmdb

from control import audit
from control.auth import Principal
from control.catalog import Refused
from radcore.clock import Clock
from radcore.config import PrepaidConfig
from radcore.errors import Invalid, NotFound
from radcore.keys import KeyRing
from radcore.prepaid import Lookups
from radcore.settlement import Settlement
from radcore.store import (Series, Session, SessionState, Store, card_key, format_card_number,
                           get_series, get_session, iter_session_range, parse_card_number, split_card_key)

#: RFC 2866 §5.10 Acct-Terminate-Cause Admin-Reset: the CDR says an operator ended the call.
TERMINATE_ADMIN_RESET = 6
_OPEN = (SessionState.AUTHORIZED, SessionState.STARTED)


@dataclass(frozen=True, slots=True)
class SessionView:
    id: str
    card_number: str
    nas: str
    call_id: str
    session: Session


def session_id(key: bytes) -> str:
    return base64.urlsafe_b64encode(key).rstrip(b"=").decode()


def parse_session_id(text: str) -> bytes:
    try:
        key = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError) as e:
        raise Invalid("id", "is not a session id") from e
    if b"\x00" not in key:
        raise Invalid("id", "is not a session id")
    return key


def _view(key: bytes, session: Session) -> SessionView:
    nas, _, call = key.partition(b"\x00")
    return SessionView(session_id(key), format_card_number(*split_card_key(session.card_key)),
                       nas.decode("utf-8", "replace"), call.decode("utf-8", "replace"), session)


class _Owners:
    """Series owner lookups, cached for one listing."""

    def __init__(self, txn: lmdb.Transaction, store: Store):
        self.txn, self.store, self.cache = txn, store, {}

    def of(self, session: Session) -> str | None:
        number = split_card_key(session.card_key)[0]
        if number not in self.cache:
            series: Series | None = get_series(self.txn, self.store, number)
            self.cache[number] = None if series is None else series.reseller
        return self.cache[number]


def list_sessions(store: Store, principal: Principal, *, card_number: str = "", nas: str = "",
                  include_stopped: bool = False, page_size: int = 0,
                  page_token: str = "") -> tuple[list[SessionView], str]:
    """Open calls ordered by NAS then call id; a reseller sees the calls of its own cards."""
    limit = audit.page_limit(page_size)
    card = card_key(*parse_card_number(card_number)) if card_number else None
    after = parse_session_id(page_token) if page_token else b""
    prefix = nas.encode() + b"\x00" if nas else b""
    out: list[SessionView] = []
    with store.transaction() as txn:
        owners = _Owners(txn, store)
        try:
            for key, session in iter_session_range(txn, store, max(after, prefix), tombstones=include_stopped):
                if len(out) > limit or (prefix and not key.startswith(prefix)):
                    break
                if key == after:
                    continue
                if not include_stopped and session.state not in _OPEN:
                    continue
                if card is not None and session.card_key != card:
                    continue
                if not principal.is_admin and owners.of(session) != principal.reseller:
                    continue
                out.append(_view(key, session))
        except lmdb.Error as e:
            raise store.error(e) from e
    more = len(out) > limit
    out = out[:limit]
    return out, (out[-1].id if more else "")


def release_session(store: Store, keyring: KeyRing, principal: Principal, sid: str, *, clock: Clock,
                    prepaid: PrepaidConfig | None = None) -> tuple[SessionView | None, int]:
    """Close one open call as the sweeper would; returns (the session afterwards, or None when a
    never-started call was removed; the reserved money given back).

    Another tenant's call answers NotFound, exactly like one that does not exist: session ids are
    built from the NAS and call id, which may be guessable, so existence must not leak.
    """
    skey = parse_session_id(sid)
    now = clock()
    with store.transaction(write=True) as txn:
        session = get_session(txn, store, skey)
        owner = _Owners(txn, store).of(session) if session is not None else None
        if session is None or (not principal.is_admin and owner != principal.reseller):
            raise NotFound(f"session {sid} does not exist")
        if session.state not in _OPEN:
            raise Refused(f"session {sid} is already finished")
        before = {"state": session.state.label, "reserved": session.reserved, "charged": session.charged}
        released = session.reserved
        settlement = Settlement(store, keyring, prepaid or PrepaidConfig(), Lookups(store))
        settlement.finish_call(txn, skey, session, now, TERMINATE_ADMIN_RESET)
        after_session = get_session(txn, store, skey)
        after = ({"state": after_session.state.label, "reserved": after_session.reserved,
                  "charged": after_session.charged} if after_session else {"state": "removed"})
        audit.record(txn, store, principal, "ReleaseSession", f"session/{sid}", now=now,
                     tenant=owner or "", before=before, after=after)
    return (_view(skey, after_session) if after_session else None), released
