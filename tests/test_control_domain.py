"""Control-plane domain modules against a real LMDB store, without gRPC."""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace

import pytest

from control import audit, catalog, fees, rates, sessions
from control import auth
from control import cards as card_ops
from control import series as series_ops
from control.export import Chunk, Finished, export_cards, neutralise
from helpers_control import ADMIN, NOW, R1, R2, UK, domain
from radcore.config import PrepaidConfig
from radcore.errors import Conflict, InsufficientBalance, Invalid, NotFound
from radcore.prepaid import Lookups
from radcore.settlement import Settlement
from radcore.store import (CardStatus, Series, SeriesStatus, Session, SessionState, card_key,
                           get_card, get_session, iter_card_cdrs, put_card, put_session, session_key)

DAY = 86_400


@pytest.fixture
def env(tmp_path):
    with domain(tmp_path) as e:
        yield e


def make_series(env, number=45, principal=ADMIN, **overrides):
    values = dict(number=number, name=f"s{number}", quantity=20, face_balance=5_000_000, rate_table="std")
    values.update(overrides)
    return series_ops.create_series_blocking(env.store, env.keyring, principal, Series(**values),
                                             clock=env.clock)


def card(env, number, serial):
    with env.store.transaction() as txn:
        return get_card(txn, env.store, card_key(number, serial))


def count(env, db):
    with env.store.transaction() as txn:
        return txn.stat(getattr(env.store, db))["entries"]


# --- money, CSV, helpers ----------------------------------------------------------------------------

@pytest.mark.parametrize("text, micro", [("0.0125", 12_500), ("1", 1_000_000), ("0.000001", 1),
                                         (".5", 500_000), ("2.", 2_000_000), ("0.12500000", 125_000),
                                         (" 3.10 ", 3_100_000)])
def test_parse_money_exact(text, micro):
    assert rates.parse_money(text, "price") == micro


@pytest.mark.parametrize("text", ["0.0000001", "-1", "1e-3", "", ".", "abc", "0,5", "NaN", "١"])
def test_parse_money_rejects(text):
    with pytest.raises(Invalid) as e:
        rates.parse_money(text, "price_per_minute")
    assert e.value.field == "price_per_minute"


def test_format_money():
    assert [rates.format_money(m) for m in (5_000_000, 12_500, 0, -1_500_000, 1)] == \
        ["5.00", "0.0125", "0.00", "-1.50", "0.000001"]


def test_parse_rates_csv_reports_lines_and_fields():
    data = ("prefix,price_per_minute,interval,effective_from\n"
            "44,0.0125,60,2024-01-01\n"
            "\n"
            "# comment\n"
            "49,0.0000001,60,\n"
            "33,0.02,sixty,\n"
            "44,0.05,60,2024-01-01\n"
            "1,0.01,60,2024-01-01T12:00:00Z\n").encode()
    good, errors = rates.parse_rates_csv(data)
    assert [(line, r.prefix, r.price_per_minute, r.effective_from) for line, r in good] == [
        (2, "44", 12_500, 1_704_067_200), (8, "1", 10_000, 1_704_110_400)]
    assert [(e.line, e.field) for e in errors] == [(5, "price_per_minute"), (6, "interval"), (7, "prefix")]
    assert "decimal places" in errors[0].message and "line 2" in errors[2].message


def test_parse_rates_csv_positional_and_bom():
    good, errors = rates.parse_rates_csv("\ufeff44,0.06,0.01,60,60,5\n".encode())
    assert errors == []
    assert good[0][1] == replace(UK, grace=5)


def test_parse_rates_csv_unknown_column_and_not_utf8():
    _, errors = rates.parse_rates_csv(b"prefix,price_per_minute,colour\n44,1,red\n")
    assert (errors[0].line, errors[0].field) == (1, "colour")
    with pytest.raises(Invalid, match="csv"):
        rates.parse_rates_csv(b"\xff\xfe")


def test_group_pin_and_neutralise():
    assert card_ops.group_pin("1234567890") == "1234 5678 90"
    assert card_ops.group_pin("12345678") == "1234 5678"
    assert [neutralise(t) for t in ("=1+1", "+1", "-1", "@x", "\tx", "\rx", "ok", "")] == \
        ["'=1+1", "'+1", "'-1", "'@x", "'\tx", "'\rx", "ok", ""]


@pytest.mark.parametrize("prefix, series, expected", [
    ("45-0011", 45, (1_100_000, 1_199_999)), ("45-0011", 450, None), ("450011", 45, (1_100_000, 1_199_999)),
    ("4", 45, (0, 99_999_999)), ("45", 45, (0, 99_999_999)), ("46", 45, None), ("45-", 45, (0, 99_999_999)),
])
def test_number_prefix_to_serial_range(prefix, series, expected):
    assert card_ops._serial_range(card_ops._prefix_parts(prefix), series) == expected


@pytest.mark.parametrize("prefix", ["4a", "45-0-1", "-45", "45-0123456789", "123456-1"])
def test_number_prefix_rejects(prefix):
    with pytest.raises(Invalid, match="number_prefix"):
        card_ops._prefix_parts(prefix)


# --- tokens and audit -------------------------------------------------------------------------------

def test_tokens_are_stored_hashed_and_revocable(env):
    token_id, secret = auth.create_token(env.store, "reseller", "r1", note="shop", clock=env.clock)
    assert len(secret) >= 43
    with env.store.transaction() as txn:
        keys = [bytes(k) for k, _ in txn.cursor(db=env.store.tokens)]
        blob = b"".join(bytes(v) for _, v in txn.cursor(db=env.store.tokens))
    assert hashlib.sha256(secret.encode()).digest() in keys
    assert secret.encode() not in blob
    assert auth.authenticate(env.store, secret) == auth.Principal("reseller", "r1", token_id)
    with pytest.raises(auth.Unauthenticated):
        auth.authenticate(env.store, secret + "x")
    with pytest.raises(PermissionError):
        auth.revoke_token(env.store, R1, token_id, clock=env.clock)
    auth.revoke_token(env.store, ADMIN, token_id, clock=env.clock)
    with pytest.raises(auth.Unauthenticated):
        auth.authenticate(env.store, secret)
    assert auth.list_tokens(env.store, ADMIN) == []
    assert [t.id for t in auth.list_tokens(env.store, ADMIN, include_revoked=True)] == [token_id]


def test_create_token_rules(env):
    with pytest.raises(Invalid, match="reseller"):
        auth.create_token(env.store, "reseller", "nobody", clock=env.clock)
    with pytest.raises(Invalid, match="reseller"):
        auth.create_token(env.store, "admin", "r1", clock=env.clock)
    with pytest.raises(Invalid, match="role"):
        auth.create_token(env.store, "root", "", clock=env.clock)
    with pytest.raises(PermissionError):
        auth.create_token(env.store, "admin", "", clock=env.clock, principal=R1)


def test_bearer_parsing():
    assert auth.bearer([("authorization", "Bearer abc")]) == "abc"
    assert auth.bearer([("other", "x")]) == ""
    with pytest.raises(auth.Unauthenticated):
        auth.bearer([("authorization", "Basic abc")])


def test_audit_paging_filters_and_tenancy(env):
    with env.store.transaction(write=True) as txn:
        for i in range(7):
            audit.record(txn, env.store, ADMIN, "X", f"series/{i}", now=NOW + i, tenant="r1" if i % 2 else "")
    entries, token = audit.list_audit(env.store, ADMIN, target="series/", page_size=3)
    assert [e.target for e in entries] == ["series/6", "series/5", "series/4"]
    more, token2 = audit.list_audit(env.store, ADMIN, target="series/", page_size=3, page_token=token)
    assert [e.target for e in more] == ["series/3", "series/2", "series/1"]
    last, token3 = audit.list_audit(env.store, ADMIN, target="series/", page_size=3, page_token=token2)
    assert [e.target for e in last] == ["series/0"] and token3 == ""
    mine, _ = audit.list_audit(env.store, R1, target="series/")
    assert [e.target for e in mine] == ["series/5", "series/3", "series/1"]
    assert audit.list_audit(env.store, R2, target="series/")[0] == []
    window, _ = audit.list_audit(env.store, ADMIN, target="series/", since=NOW + 2, until=NOW + 3)
    assert [e.target for e in window] == ["series/3", "series/2"]


# --- series -----------------------------------------------------------------------------------------

def test_create_series_streams_progress_and_audits(env):
    steps = list(series_ops.create_series(env.store, env.keyring, ADMIN,
                                          Series(number=7, quantity=5000, face_balance=1_000_000,
                                                 rate_table="std"), clock=env.clock, chunk_size=2000))
    assert [(s.done, s.total) for s in steps] == [(2000, 5000), (4000, 5000), (5000, 5000)]
    done = steps[-1].series
    assert done.complete and done.pin_length == 10 and done.currency == "USD"
    assert count(env, "cards") == 5000
    entries, _ = audit.list_audit(env.store, ADMIN, target="series/7")
    assert entries[0].rpc == "CreateSeries" and entries[0].after["quantity"] == 5000


def test_closing_create_series_rolls_back(env):
    steps = series_ops.create_series(env.store, env.keyring, ADMIN,
                                     Series(number=8, quantity=5000, rate_table="std"), clock=env.clock,
                                     chunk_size=1000)
    assert next(steps).done == 1000
    steps.close()
    assert count(env, "cards") == 0 and count(env, "pins") == 0
    with pytest.raises(NotFound):
        series_ops.get(env.store, ADMIN, 8)


def test_create_series_conflict_does_not_touch_existing(env):
    make_series(env, 9)
    with pytest.raises(Conflict):
        make_series(env, 9)
    assert series_ops.get(env.store, ADMIN, 9).complete and count(env, "cards") == 20


def test_reseller_series_forced_to_own_reseller(env):
    s = make_series(env, 10, principal=R1, reseller="r2")
    assert s.reseller == "r1"
    with pytest.raises(NotFound):
        series_ops.get(env.store, R2, 10)
    assert series_ops.list_series(env.store, R2)[0] == []


def test_list_series_search(env):
    make_series(env, 45, name="Summer promo")
    make_series(env, 450, name="Winter", reseller="r1")
    make_series(env, 46, name="Other")
    series_ops.set_status(env.store, ADMIN, 46, SeriesStatus.DELETED, clock=env.clock)
    found, _, total = series_ops.list_series(env.store, ADMIN, text="45")
    assert [s.number for s in found] == [45, 450] and total == 2
    assert [s.number for s in series_ops.list_series(env.store, ADMIN, text="PROMO")[0]] == [45]
    assert [s.number for s in series_ops.list_series(env.store, ADMIN, reseller="r1")[0]] == [450]
    assert [s.number for s in series_ops.list_series(
        env.store, ADMIN, statuses=(SeriesStatus.DELETED,))[0]] == [46]
    page, token, total = series_ops.list_series(env.store, ADMIN, page_size=1)
    assert [s.number for s in page] == [45] and total == 2
    assert [s.number for s in series_ops.list_series(env.store, ADMIN, page_size=1, page_token=token)[0]] == [450]


def test_update_series_rules(env):
    make_series(env, 45)
    with pytest.raises(Invalid, match="quantity"):
        series_ops.update_series(env.store, ADMIN, 45, {"quantity": 5}, clock=env.clock)
    with pytest.raises(Invalid, match="status"):
        series_ops.update_series(env.store, ADMIN, 45, {"status": SeriesStatus.STOPPED}, clock=env.clock)
    with pytest.raises(Invalid, match="rate_table"):
        series_ops.update_series(env.store, ADMIN, 45, {"rate_table": "eur"}, clock=env.clock)
    with pytest.raises(Invalid, match="maintenance_fee"):
        series_ops.update_series(env.store, ADMIN, 45, {"maintenance_fee": -1}, clock=env.clock)
    with pytest.raises(Invalid, match="expiry_date"):
        series_ops.update_series(env.store, ADMIN, 45, {"expiry_date": NOW - 1}, clock=env.clock)
    with pytest.raises(PermissionError):
        series_ops.update_series(env.store, R1, 45, {"reseller": "r1"}, clock=env.clock)
    new = series_ops.update_series(env.store, ADMIN, 45, {"face_balance": 9, "tax_profile": "vat"},
                                   clock=env.clock)
    assert new.face_balance == 9 and card(env, 45, 0).balance == 5_000_000  # cards are not rewritten


def test_restore_deleted_series_checks_rate_table(env):
    make_series(env, 45, rate_table="eur", currency="EUR")
    series_ops.set_status(env.store, ADMIN, 45, SeriesStatus.DELETED, clock=env.clock)
    rates.delete_rate_table(env.store, ADMIN, "eur", clock=env.clock)
    with pytest.raises(Invalid, match="rate_table"):
        series_ops.set_status(env.store, ADMIN, 45, SeriesStatus.ACTIVE, clock=env.clock)


# --- cards ------------------------------------------------------------------------------------------

def test_list_cards_filters_and_pins(env):
    make_series(env, 45, quantity=30)
    card_ops.update_card(env.store, ADMIN, "45-000000003", balance_delta=-4_000_000, reason="test",
                         clock=env.clock)
    flt = card_ops.CardFilter(series=45, balance_max=1_000_000)
    found, _ = card_ops.list_cards(env.store, env.keyring, ADMIN, flt, include_pins=True, clock=env.clock)
    assert [v.number for v in found] == ["45-000000003"]
    pin = found[0].pin.replace(" ", "")
    by_pin, _ = card_ops.list_cards(env.store, env.keyring, ADMIN, card_ops.CardFilter(pin=pin),
                                    clock=env.clock)
    assert [v.number for v in by_pin] == ["45-000000003"]
    with pytest.raises(PermissionError):
        card_ops.list_cards(env.store, env.keyring, R1, card_ops.CardFilter(pin=pin), clock=env.clock)
    prefix, _ = card_ops.list_cards(env.store, env.keyring, ADMIN,
                                    card_ops.CardFilter(number_prefix="45-00000002"), clock=env.clock)
    assert [v.serial for v in prefix] == list(range(20, 30))
    entries, _ = audit.list_audit(env.store, ADMIN, target="series/45")
    assert entries[0].rpc == "ListCards" and entries[0].after["pins"] == 1


def test_update_card(env):
    make_series(env, 45)
    v = card_ops.update_card(env.store, ADMIN, "45000000001", balance_delta=-5_000_000, reason="refund",
                             clock=env.clock)
    assert v.card.balance == 0 and v.card.status == CardStatus.PENDING
    with pytest.raises(Invalid, match="reason"):
        card_ops.update_card(env.store, ADMIN, "45-000000001", balance_delta=1, clock=env.clock)
    with pytest.raises(InsufficientBalance):
        card_ops.update_card(env.store, ADMIN, "45-000000001", balance_delta=-1, reason="x", clock=env.clock)
    v = card_ops.update_card(env.store, ADMIN, "45-000000002", status=CardStatus.ACTIVATED, clock=env.clock)
    assert v.card.status == CardStatus.ACTIVATED and v.card.activated_at == NOW
    v = card_ops.update_card(env.store, ADMIN, "45-000000002", balance_delta=-5_000_000, reason="x",
                             clock=env.clock)
    assert v.card.status == CardStatus.USED
    v = card_ops.update_card(env.store, ADMIN, "45-000000002", balance_delta=1, reason="top-up",
                             clock=env.clock)
    assert v.card.status == CardStatus.ACTIVATED
    with pytest.raises(Invalid, match="pending"):
        card_ops.update_card(env.store, ADMIN, "45-000000002", status=CardStatus.PENDING, clock=env.clock)
    with env.store.transaction(write=True) as txn:
        c = get_card(txn, env.store, card_key(45, 4))
        c.failed_pins, c.locked_until = 3, NOW + 900
        put_card(txn, env.store, card_key(45, 4), c)
    v = card_ops.update_card(env.store, ADMIN, "45-000000004", unlock=True, clock=env.clock)
    assert (v.card.failed_pins, v.card.locked_until) == (0, 0)
    entries, _ = audit.list_audit(env.store, ADMIN, target="card/45-000000001")
    assert entries[0].after == {"balance": 0, "reason": "refund"} and entries[0].before == {"balance": 5_000_000}


# --- fees -------------------------------------------------------------------------------------------

def fee_series(env, number=60, **kw):
    values = dict(quantity=10, face_balance=1_000_000, initial_status=CardStatus.ACTIVATED,
                  maintenance_fee=100_000, maintenance_period_hours=24)
    values.update(kw)
    return make_series(env, number, **values)


def test_fees_whole_periods_idempotent_catch_up(env):
    fee_series(env)
    report = fees.run_fees(env.store, env.clock)
    assert (report.periods_charged, report.fees) == (0, 0)
    env.clock.advance(DAY + 3600)
    report = fees.run_fees(env.store, env.clock)
    assert (report.cards_charged, report.periods_charged, report.fees) == (10, 10, 1_000_000)
    assert card(env, 60, 0).balance == 900_000 and card(env, 60, 0).fees_paid_until == NOW + DAY
    assert fees.run_fees(env.store, env.clock).fees == 0
    env.clock.advance(4 * DAY)
    report = fees.run_fees(env.store, env.clock)
    assert (report.periods_charged, report.fees) == (40, 4_000_000)
    assert card(env, 60, 9).balance == 500_000 and card(env, 60, 9).fees_paid_until == NOW + 5 * DAY


def test_fee_larger_than_balance_takes_rest_and_card_is_used(env):
    fee_series(env, face_balance=250_000)
    env.clock.advance(3 * DAY)
    report = fees.run_fees(env.store, env.clock, series=60)
    assert report.fees == 10 * 250_000 and report.fees_written_off == 10 * 50_000 and report.used == 10
    assert card(env, 60, 0).status == CardStatus.USED and card(env, 60, 0).balance == 0


def test_fees_never_take_reserved_money(env):
    fee_series(env, quantity=1)
    with env.store.transaction(write=True) as txn:
        c = get_card(txn, env.store, card_key(60, 0))
        c.reserved = 950_000
        put_card(txn, env.store, card_key(60, 0), c)
    env.clock.advance(DAY)
    report = fees.run_fees(env.store, env.clock)
    assert (report.fees, report.fees_written_off) == (50_000, 50_000)
    assert card(env, 60, 0).balance == 950_000 and card(env, 60, 0).status == CardStatus.ACTIVATED


def test_expiry_by_period_date_and_pending(env):
    fee_series(env, 61, maintenance_fee=0, maintenance_period_hours=0, expiry_period_days=2)
    fee_series(env, 62, maintenance_fee=0, maintenance_period_hours=0, expiry_date=NOW + DAY)
    make_series(env, 63, quantity=4, expiry_date=NOW + DAY)
    env.clock.advance(DAY)
    report = fees.run_fees(env.store, env.clock)
    assert (report.expired_by_date, report.pending_expired, report.expired_by_period) == (10, 4, 0)
    env.clock.advance(DAY)
    report = fees.run_fees(env.store, env.clock)
    assert (report.expired_by_period, report.expired_by_date) == (10, 0)
    assert {card(env, n, 0).status for n in (61, 62, 63)} == {CardStatus.EXPIRED}


def test_fees_stop_at_expiry(env):
    fee_series(env, expiry_period_days=2, quantity=1)
    env.clock.advance(10 * DAY)
    report = fees.run_fees(env.store, env.clock)
    assert (report.periods_charged, report.expired_by_period) == (2, 1)


def test_dry_run_writes_nothing(env):
    fee_series(env)
    env.clock.advance(DAY)
    dry = fees.run_fees(env.store, env.clock, dry_run=True)
    assert dry.fees == 1_000_000 and card(env, 60, 0).balance == 1_000_000
    assert fees.run_fees(env.store, env.clock).fees == 1_000_000


def test_interrupted_fee_run_resumes_to_the_same_result(env):
    fee_series(env, quantity=25)
    env.clock.advance(2 * DAY)

    class Stop(Exception):
        pass

    def stop_after_first(done, total):
        raise Stop

    with pytest.raises(Stop):
        fees.run_fees(env.store, env.clock, chunk_size=10, progress=stop_after_first)
    assert card(env, 60, 0).balance == 800_000 and card(env, 60, 24).balance == 1_000_000
    report = fees.run_fees(env.store, env.clock, chunk_size=10)
    assert report.cards_charged == 15 and report.fees == 15 * 200_000
    assert {card(env, 60, s).balance for s in range(25)} == {800_000}
    entries, _ = audit.list_audit(env.store, ADMIN, target="series/60")
    assert entries[0].rpc == "RunFees" and entries[0].actor == "system:scheduler"


def test_reseller_fee_run_sees_own_series_only(env):
    fee_series(env, 60, reseller="r1")
    fee_series(env, 61)
    env.clock.advance(DAY)
    assert fees.run_fees(env.store, env.clock, principal=R1).cards_charged == 10
    with pytest.raises(NotFound):
        fees.run_fees(env.store, env.clock, principal=R1, series=61)
    assert card(env, 61, 0).balance == 1_000_000


# --- catalog, rates ---------------------------------------------------------------------------------

def test_catalog_delete_refused_while_used(env):
    make_series(env, 45, tax_profile="vat", routing_plan="gw", reseller="r1")
    for kind, name in ((catalog.TAX_PROFILES, "vat"), (catalog.ROUTING_PLANS, "gw"), (catalog.RESELLERS, "r1")):
        with pytest.raises(catalog.Refused):
            catalog.delete(env.store, ADMIN, kind, name, clock=env.clock)
    with pytest.raises(catalog.Refused):
        rates.delete_rate_table(env.store, ADMIN, "std", clock=env.clock)
    assert catalog.update(env.store, ADMIN, catalog.TAX_PROFILES, "vat", {"percent_ppm": 70_000},
                          clock=env.clock).percent_ppm == 70_000
    with pytest.raises(Invalid, match="name"):
        catalog.update(env.store, ADMIN, catalog.TAX_PROFILES, "vat", {"name": "x"}, clock=env.clock)


def test_import_all_or_nothing_then_partial(env):
    data = b"prefix,price_per_minute\n33,0.02\n34,bad\n"
    report = rates.import_rates(env.store, ADMIN, "std", data, clock=env.clock)
    assert report.imported == 0 and [(e.line, e.field) for e in report.errors] == [(3, "price_per_minute")]
    assert [r.prefix for r in rates.list_rates(env.store, ADMIN, "std")[0]] == ["", "44"]
    report = rates.import_rates(env.store, ADMIN, "std", data, allow_partial=True, clock=env.clock)
    assert report.imported == 1
    assert [r.prefix for r in rates.list_rates(env.store, ADMIN, "std")[0]] == ["", "33", "44"]


# --- sessions ---------------------------------------------------------------------------------------

def _open_call(env, state):
    """What number authorization leaves behind: a reservation on the card and a session."""
    key = card_key(45, 1)
    skey = session_key("gw1", "conf-1")
    with env.store.transaction(write=True) as txn:
        c = get_card(txn, env.store, key)
        c.reserved, c.open_calls, c.status = 300_000, 1, CardStatus.ACTIVATED
        put_card(txn, env.store, key, c)
        put_session(txn, env.store, skey, Session(
            card_key=key, state=state, reserved=300_000, charged=120_000 if state else 0,
            opened_at=NOW, deadline=NOW + 600, last_session_time=90, price_per_minute=60_000,
            interval=60, min_volume=60, prefix="44", called="4420", conf_id="conf-1", nas="gw1"))
    return skey


@pytest.mark.parametrize("state", [SessionState.AUTHORIZED, SessionState.STARTED], ids=lambda s: s.label)
def test_release_session_equals_the_sweeper(tmp_path, state):
    results = []
    for how in ("release", "sweep"):
        with domain(tmp_path / how) as env:
            make_series(env, 45)
            skey = _open_call(env, state)
            if how == "release":
                listed, _ = sessions.list_sessions(env.store, ADMIN)
                assert [v.call_id for v in listed] == ["conf-1"]
                sessions.release_session(env.store, env.keyring, ADMIN, listed[0].id, clock=env.clock)
            else:
                with env.store.transaction(write=True) as txn:
                    Settlement(env.store, env.keyring, PrepaidConfig(), Lookups(env.store)).finish_call(
                        txn, skey, Session.unpack(txn.get(skey, db=env.store.sessions)), NOW,
                        sessions.TERMINATE_ADMIN_RESET)
            with env.store.transaction() as txn:
                cdrs = [replace(c, stop_time=0) for _, c in iter_card_cdrs(txn, env.store, card_key(45, 1))]
                after = get_session(txn, env.store, skey)
            state_only = replace(card(env, 45, 1), pin_digest=bytes(32), pin_blob=b"")  # PINs are random
            results.append((state_only, cdrs, after))
    assert results[0] == results[1]
    c, cdrs, after = results[0]
    assert c.reserved == 0 and c.open_calls == 0
    if state == SessionState.STARTED:  # settled for the time reported so far, CDR written
        assert after.state == SessionState.STOPPED and [x.cost for x in cdrs] == [120_000]
        assert c.balance == 5_000_000 and cdrs[0].terminate_cause == sessions.TERMINATE_ADMIN_RESET
    else:  # never started: the hold is given back and the call forgotten
        assert after is None and cdrs == []


def test_release_session_tenancy(env):
    make_series(env, 45, reseller="r1")
    _open_call(env, SessionState.AUTHORIZED)
    assert sessions.list_sessions(env.store, R2)[0] == []
    sid = sessions.list_sessions(env.store, R1)[0][0].id
    with pytest.raises(NotFound):  # another tenant's call looks like no call at all
        sessions.release_session(env.store, env.keyring, R2, sid, clock=env.clock)
    view, released = sessions.release_session(env.store, env.keyring, R1, sid, clock=env.clock)
    assert view is None and released == 300_000
    with pytest.raises(NotFound):
        sessions.release_session(env.store, env.keyring, R1, sid, clock=env.clock)


# --- export -----------------------------------------------------------------------------------------

def test_export_csv_stream(env):
    make_series(env, 45, name="=cmd()", quantity=3)
    events = list(export_cards(env.store, env.keyring, ADMIN, card_ops.CardFilter(series=45), fmt="csv",
                               clock=env.clock, chunk_bytes=64))
    data = b"".join(e.data for e in events if isinstance(e, Chunk)).decode()
    lines = data.splitlines()
    assert lines[0] == "Status,Number,Balance,PIN,Activated (UTC),Expires (UTC),Series"
    assert lines[1].startswith("pending,45-000000000,5.00,") and lines[1].endswith(",,,'=cmd()")
    assert len(lines) == 4
    assert events[-1] == Finished(3, 1, len(data.encode()))
    entries, _ = audit.list_audit(env.store, ADMIN, target="series/45")
    assert entries[0].rpc == "ExportCards" and json.dumps(entries[0].after).find("pins") == -1
