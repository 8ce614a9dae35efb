"""The prepaid business rules, decided in-process over a real LMDB store and the real codec.

Money is compared as exact integers against expectations computed independently here, by hand,
from the rate definitions in helpers_prepaid (not with radcore.rating).
"""

import pytest

from radcore import dictionary as d
from radcore.dictionary import AcctStatus, ReturnCode
from radcore.store import CardStatus, SeriesStatus, get_series, iter_card_cdrs, card_key, put_series

from helpers_prepaid import T0, attr_int, make_world, vsa

ACCEPT, REJECT, ACCT = d.Code.ACCESS_ACCEPT, d.Code.ACCESS_REJECT, d.Code.ACCOUNTING_RESPONSE


@pytest.fixture
def world(tmp_path):
    w = make_world(tmp_path)
    yield w
    w.handler.close()


def rc(reply) -> int:
    return int(vsa(reply, d.H323_RETURN_CODE))


def test_card_authentication_reports_available_credit(world):
    world.add_series(45, face_balance=12_345_678)
    reply = world.access(45, 0)
    assert reply[0] == ACCEPT
    assert rc(reply) == 0
    assert vsa(reply, d.H323_CREDIT_AMOUNT) == "12.34"  # rounded down, never promising more
    assert vsa(reply, d.H323_CURRENCY) == "USD"
    assert vsa(reply, d.H323_BILLING_MODEL) == "1"
    assert attr_int(reply, d.SESSION_TIMEOUT) is None  # stage 1 grants no time


def test_card_number_without_dash_is_accepted(world):
    world.add_series(45)
    assert world.access(45, 1, user_name="45000000001")[0] == ACCEPT


def test_full_call_debits_exactly_once_to_the_micro_unit(world):
    world.add_series(45, face_balance=10_000_000)
    reply = world.access(45, 0, called="+44 20 7946 0000", conf_id="C1")
    assert reply[0] == ACCEPT
    # UK: 0.12/min, 0.05 connection, 60 s minimum then 6 s steps. With 10.00:
    # 0.05 + billed * 0.002 <= 10.00  ->  billed <= 4975 s  ->  on the 60 + 6k grid: 4974 s.
    assert int(vsa(reply, d.H323_CREDIT_TIME)) == 4974
    assert attr_int(reply, d.SESSION_TIMEOUT) == 4974
    hold = 50_000 + 4974 * 2_000
    card = world.card(45, 0)
    assert (card.balance, card.reserved, card.open_calls) == (10_000_000, hold, 1)

    assert world.accounting(45, 0, AcctStatus.START, conf_id="C1", called="442079460000")[0] == ACCT
    assert world.accounting(45, 0, AcctStatus.INTERIM_UPDATE, conf_id="C1", session_time=30)[0] == ACCT
    after_interim = 50_000 + 60 * 2_000  # 30 s bills the 60 s minimum
    assert world.card(45, 0).balance == 10_000_000 - after_interim

    world.clock.advance(95)
    assert world.accounting(45, 0, AcctStatus.STOP, conf_id="C1", session_time=95)[0] == ACCT
    total = 50_000 + 96 * 2_000  # 95 s -> 60 + 6*6 = 96 s billed
    card = world.card(45, 0)
    assert (card.balance, card.reserved, card.open_calls) == (10_000_000 - total, 0, 0)

    with world.store.begin() as txn:
        cdrs = [cdr for _, cdr in iter_card_cdrs(txn, world.store, card_key(45, 0))]
    assert len(cdrs) == 1
    cdr = cdrs[0]
    assert (cdr.cost, cdr.duration, cdr.billed_seconds, cdr.prefix, cdr.called) == (
        total, 95, 96, "44", "442079460000")
    assert cdr.stop_time == T0 + 95 and cdr.start_time == T0


def test_duplicate_and_reidentified_stops_debit_once(world):
    world.add_series(45)
    world.access(45, 0, called="442079460000", conf_id="C2")
    world.accounting(45, 0, AcctStatus.START, conf_id="C2")
    for delay in (0, 0, 3, 10):  # the same Stop, then retransmissions with new id and delay
        assert world.accounting(45, 0, AcctStatus.STOP, conf_id="C2", session_time=61, delay=delay)[0] == ACCT
    world.accounting(45, 0, AcctStatus.INTERIM_UPDATE, conf_id="C2", session_time=40)  # late interim
    expected = 50_000 + 66 * 2_000  # 61 s -> 66 s billed
    assert world.card(45, 0).balance == 10_000_000 - expected
    with world.store.begin() as txn:
        assert len(list(iter_card_cdrs(txn, world.store, card_key(45, 0)))) == 1


def test_out_of_order_interims_never_charge_backwards(world):
    world.add_series(45)
    world.access(45, 0, called="15551234567", conf_id="C3")
    # US: 0.01/min per second, 3 s grace.
    world.accounting(45, 0, AcctStatus.INTERIM_UPDATE, conf_id="C3", session_time=120)
    world.accounting(45, 0, AcctStatus.INTERIM_UPDATE, conf_id="C3", session_time=60)
    assert world.card(45, 0).balance == 10_000_000 - 20_000
    world.accounting(45, 0, AcctStatus.STOP, conf_id="C3", session_time=2)
    assert world.card(45, 0).balance == 10_000_000 - 20_000


def test_concurrent_calls_never_grant_more_than_the_balance(world):
    world.add_series(46, face_balance=1_000_000, max_concurrent_calls=3)
    granted = []
    for conf in ("A", "B", "C"):
        reply = world.access(46, 0, called="447700900123", conf_id=conf)
        if reply[0] == ACCEPT:
            granted.append(int(vsa(reply, d.H323_CREDIT_TIME)))
    # UK mobile 0.30/min, min 30 then 6 s: 1.00 buys 198 s = 0.99; the next call finds 0.01 left.
    assert granted == [198]
    card = world.card(46, 0)
    assert card.reserved == 990_000 and card.reserved <= card.balance
    fourth = world.access(46, 0, called="447700900123", conf_id="D")
    assert fourth[0] == REJECT and rc(fourth) == ReturnCode.INSUFFICIENT_BALANCE


def test_concurrency_limit_rejects_account_in_use(world):
    world.add_series(47, max_concurrent_calls=1)
    assert world.access(47, 0, called="15551230000", conf_id="X")[0] == ACCEPT
    reply = world.access(47, 0, called="15551230000", conf_id="Y")
    assert reply[0] == REJECT and rc(reply) == ReturnCode.ACCOUNT_IN_USE
    # Re-authorizing the same call replaces its hold instead of counting a second call.
    assert world.access(47, 0, called="15551230000", conf_id="X")[0] == ACCEPT
    assert world.card(47, 0).open_calls == 1


def test_unrated_number_is_blocked(world):
    world.add_series(45)
    reply = world.access(45, 0, called="999123", conf_id="N")
    assert reply[0] == REJECT and rc(reply) == ReturnCode.CALLED_NUMBER_BLOCKED


def test_reject_codes(world):
    world.add_series(50, face_balance=0, initial_status=CardStatus.ACTIVATED)
    assert rc(world.access(50, 0)) == ReturnCode.ZERO_BALANCE

    world.add_series(51, expiry_period_days=1)
    assert world.access(51, 0)[0] == ACCEPT  # activates; expires a day later
    world.clock.advance(86_400)
    reply = world.access(51, 0)
    assert reply[0] == REJECT and rc(reply) == ReturnCode.CARD_EXPIRED
    assert world.card(51, 0).status == CardStatus.EXPIRED

    world.add_series(52)
    with world.store.begin(write=True) as txn:
        series = get_series(txn, world.store, 52)
        series.status = SeriesStatus.STOPPED
        put_series(txn, world.store, series)
    assert rc(world.access(52, 0)) == ReturnCode.USER_DENIED

    assert rc(world.access(52, 1, pin="0000000000")) == ReturnCode.INVALID_PASSWORD
    assert rc(world.access(99, 5, pin="0000000000")) == ReturnCode.INVALID_ACCOUNT
    assert rc(world.access(52, 1, user_name="not-a-card")) == ReturnCode.INVALID_CARD_NUMBER


def test_wrong_pins_lock_the_card_for_the_cool_down(world):
    world.add_series(45)
    for _ in range(2):
        assert rc(world.access(45, 2, pin="1111111111")) == ReturnCode.INVALID_PASSWORD
    assert rc(world.access(45, 2, pin="1111111111")) == ReturnCode.RETRIES_EXCEEDED
    # Even the right PIN is refused while locked ...
    assert rc(world.access(45, 2)) == ReturnCode.RETRIES_EXCEEDED
    # ... and accepted after the cool-down (600 s in the test config).
    world.clock.advance(600)
    assert world.access(45, 2)[0] == ACCEPT
    assert world.card(45, 2).failed_pins == 0


def test_activation_fee_and_expiry_apply_on_first_use(world):
    expiry_date = T0 + 10 * 86_400
    world.add_series(48, face_balance=5_000_000, activation_fee=750_000, expiry_period_days=30,
                     expiry_date=expiry_date)
    assert world.card(48, 0).status == CardStatus.PENDING
    world.clock.advance(3600)
    reply = world.access(48, 0)
    assert reply[0] == ACCEPT and vsa(reply, d.H323_CREDIT_AMOUNT) == "4.25"
    card = world.card(48, 0)
    assert card.status == CardStatus.ACTIVATED
    assert card.balance == 4_250_000
    assert card.activated_at == T0 + 3600
    assert card.expires_at == expiry_date  # the date comes before activation + 30 days
    world.access(48, 0)
    assert world.card(48, 0).balance == 4_250_000  # charged once


def test_tax_is_added_on_top(world):
    world.add_series(49, face_balance=10_000_000, tax_profile="vat20")
    world.access(49, 0, called="15550001111", conf_id="T")
    world.accounting(49, 0, AcctStatus.STOP, conf_id="T", session_time=90)
    # 90 s at 0.01/min = 15_000, +20% = 18_000
    assert world.card(49, 0).balance == 10_000_000 - 18_000


def test_stop_only_nas_is_charged(world):
    world.add_series(45)
    world.accounting(45, 1, AcctStatus.STOP, conf_id="S1", session_time=600, called="15557654321")
    assert world.card(45, 1).balance == 10_000_000 - 100_000
    world.accounting(45, 1, AcctStatus.STOP, conf_id="S1", session_time=600, called="15557654321")
    assert world.card(45, 1).balance == 10_000_000 - 100_000
    assert world.card(45, 1).open_calls == 0


def test_card_becomes_used_when_balance_reaches_zero(world):
    world.add_series(53, face_balance=20_000)
    reply = world.access(53, 0, called="15550000000", conf_id="Z")
    assert int(vsa(reply, d.H323_CREDIT_TIME)) == 120
    world.accounting(53, 0, AcctStatus.STOP, conf_id="Z", session_time=120)
    card = world.card(53, 0)
    assert (card.balance, card.status) == (0, CardStatus.USED)
    assert rc(world.access(53, 0)) == ReturnCode.ZERO_BALANCE


def test_accounting_on_releases_the_nas_reservations(world):
    world.add_series(45)
    world.access(45, 0, called="442079460000", conf_id="R1")
    world.accounting(45, 0, AcctStatus.START, conf_id="R1")
    world.accounting(45, 0, AcctStatus.INTERIM_UPDATE, conf_id="R1", session_time=60)
    world.access(45, 1, called="442079460000", conf_id="R2")
    assert world.nas_event(AcctStatus.ACCOUNTING_ON)[0] == ACCT
    for serial, charged in ((0, 50_000 + 120_000), (1, 0)):
        card = world.card(45, serial)
        assert (card.reserved, card.open_calls, card.balance) == (0, 0, 10_000_000 - charged)


def test_sweeper_releases_expired_reservations(world):
    world.add_series(45)
    reply = world.access(45, 0, called="15551112222", conf_id="W")
    granted = int(vsa(reply, d.H323_CREDIT_TIME))
    assert world.card(45, 0).reserved > 0
    world.clock.advance(granted + 61)
    with world.store.begin(write=True) as txn:
        assert world.handler.settlement.sweep(txn, world.clock()) == 1
    card = world.card(45, 0)
    assert (card.reserved, card.open_calls, card.balance) == (0, 0, 10_000_000)


def test_quintum_profile_uses_its_codes_and_bare_values(world):
    world.add_series(45, face_balance=10)
    world.access(45, 0, client="tenor")  # activate
    reply = world.access(45, 0, called="15550000000", conf_id="Q", client="tenor")
    assert reply[0] == REJECT
    assert vsa(reply, d.H323_RETURN_CODE, d.VENDOR_QUINTUM) == "11"
    ok = world.access(45, 1, client="tenor")
    raw = dict(ok[1])[d.vsa_key(d.VENDOR_QUINTUM, d.H323_CREDIT_AMOUNT)]
    assert raw == b"0.00"


def test_pin_only_dialing(world):
    world.add_series(45)
    pin = world.pins[45][2]
    reply = world.access(45, 2, user_name="", client="tenor-pin")
    assert reply[0] == ACCEPT
    assert world.card(45, 2).status == CardStatus.ACTIVATED
    assert world.card(45, 1).status == CardStatus.PENDING
    assert pin
    bad = world.access(45, 2, user_name="", pin="0123456789", client="tenor-pin")
    assert bad[0] == REJECT


def test_batch_is_one_transaction_and_sees_its_own_holds(world):
    from radcore import packet
    world.add_series(54, face_balance=1_000_000, max_concurrent_calls=5)
    reqs = []
    for conf in ("B1", "B2"):
        raw = packet.encode_access_request(
            1, bytes(16), [(d.USER_NAME, b"54-000000000"), (d.CALLED_STATION_ID, b"447700900000"),
                           (d.vsa_key(9, d.H323_CONF_ID), conf.encode())],
            b"prepaid-test-secret-0123", password=world.pins[54][0].encode())
        reqs.append((packet.parse_request(raw, b"prepaid-test-secret-0123", True),
                     world.client(), ("127.0.0.1", 1)))
    first, second = world.handler.handle(reqs)
    assert first[0] == ACCEPT and second[0] == REJECT
    assert world.card(54, 0).reserved == 990_000


def test_plain_card_authentication_writes_nothing(world):
    """The common case is answered from a read transaction: no writer lock, no fsync."""
    world.add_series(55, initial_status=CardStatus.ACTIVATED)
    before = world.store.env.info()["last_txnid"]
    for _ in range(3):
        assert world.access(55, 0)[0] == ACCEPT
        assert rc(world.access(99, 1, pin="0000000000")) == ReturnCode.INVALID_ACCOUNT
    assert world.store.env.info()["last_txnid"] == before
    # A wrong PIN must be counted, so it does take the write path.
    world.access(55, 0, pin="0000000000")
    assert world.store.env.info()["last_txnid"] == before + 1
    assert world.card(55, 0).failed_pins == 1


def test_a_rate_added_while_running_is_used_by_the_next_authorization(world):
    """Workers cache each table's prefixes per config version; a rate edit bumps it."""
    from radcore.rating import Rate, put_rate

    world.add_series(45, face_balance=10_000_000)
    assert world.access(45, 0, called="999123", conf_id="A")[0] == REJECT  # no rate for 9...
    with world.store.begin(write=True) as txn:
        put_rate(txn, world.store, "retail", Rate(prefix="999", price_per_minute=600_000, connection_fee=0,
                                                  min_volume=60, interval=60))
    reply = world.access(45, 0, called="999123", conf_id="B")
    assert reply[0] == ACCEPT
    # 10.00 at 0.60/min in whole minutes: 16 minutes.
    assert int(vsa(reply, d.H323_CREDIT_TIME)) == 960
