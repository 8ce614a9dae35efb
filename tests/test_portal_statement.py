"""The portal's domain rules without HTTP: card-holder login (sharing the failed-PIN counter with
RADIUS), who may log in, and the statement (local times, newest first, paging, period totals, CSV).

Calls are produced by the real prepaid handler from encoded RADIUS packets (helpers_prepaid), so the
statement is checked against CDRs exactly as settlement writes them. Expected money is computed by
hand from the rate in helpers_prepaid (UK: 0.05 connection + 0.12/min, 60 s minimum, 6 s steps).
"""

import csv
import io
import json
from datetime import date, datetime, timezone
from zoneinfo import ZoneInfo

import pytest

from control.portal.statement import (Call, Outcome, Period, authenticate, build_statement, calls_csv,
                                      csv_filename, csv_rows, load_holder, parse_period, sign_out)
from radcore import dictionary as d
from radcore.dictionary import AcctStatus, ReturnCode
from radcore.store import CardStatus, SeriesStatus, card_key, get_series, put_card, put_series

from helpers_prepaid import T0, make_world, vsa

LONDON = ZoneInfo("Europe/London")


@pytest.fixture
def world(tmp_path):
    w = make_world(tmp_path)
    w.add_series(45, control_panel=True, time_zone="Europe/London", name="Summer promo")
    w.add_series(46, control_panel=False)
    yield w
    w.handler.close()


def login(world, series, serial, pin=None, number=None):
    number = world.number(series, serial) if number is None else number
    pin = world.pins[series][serial] if pin is None else pin
    return authenticate(world.store, world.keyring, world.config.prepaid, number, pin, now=world.clock(),
                        client="192.0.2.7")


def call(world, serial, conf_id, seconds, called="442079460000", series=45):
    """One complete call through the RADIUS handler: authorize, start, stop after `seconds`."""
    assert world.access(series, serial, called=called, conf_id=conf_id)[0] == d.Code.ACCESS_ACCEPT
    world.accounting(series, serial, AcctStatus.START, conf_id=conf_id, called=called)
    world.clock.advance(seconds)
    world.accounting(series, serial, AcctStatus.STOP, conf_id=conf_id, session_time=seconds)


def audit_entries(world):
    with world.store.begin() as txn:
        return [json.loads(bytes(v)) for _, v in txn.cursor(db=world.store.audit)]


def set_series(world, number, **changes):
    with world.store.begin(write=True) as txn:
        series = get_series(txn, world.store, number)
        for name, value in changes.items():
            setattr(series, name, value)
        put_series(txn, world.store, series)


def set_card_status(world, serial, status):
    card = world.card(45, serial)
    card.status = status
    with world.store.begin(write=True) as txn:
        put_card(txn, world.store, card_key(45, serial), card)


# --- login ------------------------------------------------------------------------------------------

def test_card_number_with_or_without_dash_logs_in(world):
    for number in ("45-000000001", "45000000001", " 45-000 000 001 "):
        result = login(world, 45, 1, number=number)
        assert result.ok and result.card_key == card_key(45, 1) and result.number == "45-000000001"


def test_wrong_pin_counts_and_the_nth_locks_with_an_audit_entry(world):
    assert login(world, 45, 0, pin="0000000000").outcome is Outcome.WRONG_PIN
    assert world.card(45, 0).failed_pins == 1
    assert login(world, 45, 0, pin="0000000001").outcome is Outcome.WRONG_PIN
    assert audit_entries(world) == []
    assert login(world, 45, 0, pin="0000000002").outcome is Outcome.LOCKED_NOW  # max_failed_pins = 3
    card = world.card(45, 0)
    assert card.locked_until == T0 + 600 and card.failed_pins == 0
    [entry] = audit_entries(world)
    assert (entry["actor"], entry["rpc"], entry["target"]) == ("portal", "PortalLogin", "card/45-000000000")
    assert entry["before"] == {"failed_pins": 2, "locked_until": 0}
    assert entry["after"] == {"failed_pins": 0, "locked_until": T0 + 600, "client": "192.0.2.7"}
    assert "0000000002" not in json.dumps(entry)


def test_locked_card_refuses_even_the_right_pin_until_the_cool_down_ends(world):
    for _ in range(3):
        login(world, 45, 0, pin="9999999999")
    assert login(world, 45, 0).outcome is Outcome.LOCKED
    assert login(world, 45, 0, pin="1111111111").outcome is Outcome.LOCKED
    assert world.card(45, 0).failed_pins == 0  # guesses during the lock are not even checked
    world.clock.advance(600)
    assert login(world, 45, 0).ok


def test_right_pin_resets_the_run_of_wrong_ones(world):
    login(world, 45, 0, pin="9999999999")
    login(world, 45, 0, pin="9999999999")
    assert login(world, 45, 0).ok
    assert world.card(45, 0).failed_pins == 0
    login(world, 45, 0, pin="9999999999")
    assert login(world, 45, 0, pin="9999999999").outcome is Outcome.WRONG_PIN  # 2 again, not locked


def test_failed_pins_are_shared_with_radius(world):
    # Two wrong PINs at the switch, the third at the portal: locked for both doors.
    for _ in range(2):
        reply = world.access(45, 1, pin="5555555555")
        assert int(vsa(reply, d.H323_RETURN_CODE)) == ReturnCode.INVALID_PASSWORD
    assert login(world, 45, 1, pin="5555555555").outcome is Outcome.LOCKED_NOW
    reply = world.access(45, 1)  # the right PIN, over RADIUS
    assert reply[0] == d.Code.ACCESS_REJECT
    assert int(vsa(reply, d.H323_RETURN_CODE)) == ReturnCode.RETRIES_EXCEEDED
    assert len(audit_entries(world)) == 1


def test_radius_lockout_closes_the_portal_too(world):
    login(world, 45, 2, pin="5555555555")
    login(world, 45, 2, pin="5555555555")
    world.access(45, 2, pin="5555555555")
    assert world.card(45, 2).locked_until == T0 + 600
    assert login(world, 45, 2).outcome is Outcome.LOCKED


def test_series_without_control_panel_cannot_log_in_and_guesses_do_not_count(world):
    assert login(world, 46, 0).outcome is Outcome.NOT_ALLOWED
    for _ in range(5):
        assert login(world, 46, 0, pin="1231231231").outcome is Outcome.NOT_ALLOWED
    assert world.card(46, 0).failed_pins == 0 and world.card(46, 0).locked_until == 0


def test_deleted_series_and_blocked_card_cannot_log_in(world):
    set_card_status(world, 1, CardStatus.BLOCKED)
    assert login(world, 45, 1).outcome is Outcome.BLOCKED
    assert login(world, 45, 0).ok
    set_series(world, 45, status=SeriesStatus.DELETED)
    assert login(world, 45, 0).outcome is Outcome.NOT_ALLOWED


def test_unknown_and_malformed_numbers_are_refused(world):
    assert login(world, 45, 0, number="45-000000099").outcome is Outcome.UNKNOWN
    assert login(world, 45, 0, number="99-000000000").outcome is Outcome.UNKNOWN
    result = login(world, 45, 0, number="not a card")
    assert result.outcome is Outcome.UNKNOWN and result.number == "" and result.card_key is None


def test_holder_disappears_when_the_card_or_series_loses_access(world):
    assert load_holder(world.store, card_key(45, 0), 0) is not None
    set_card_status(world, 0, CardStatus.BLOCKED)
    assert load_holder(world.store, card_key(45, 0), 0) is None
    assert load_holder(world.store, card_key(45, 1), 0) is not None
    set_series(world, 45, control_panel=False)
    assert load_holder(world.store, card_key(45, 1), 0) is None
    assert load_holder(world.store, b"short", 0) is None


def test_sign_out_ends_sessions_of_older_counts_for_that_card_only(world):
    key = card_key(45, 0)
    result = login(world, 45, 0)
    assert result.ok and result.sessions_epoch == 0
    assert sign_out(world.store, key) == 1
    assert load_holder(world.store, key, 0) is None, "a session from before the sign-out is over"
    assert load_holder(world.store, card_key(45, 1), 0) is not None
    again = login(world, 45, 0)
    assert again.sessions_epoch == 1 and load_holder(world.store, key, 1) is not None
    assert sign_out(world.store, key) == 2 and load_holder(world.store, key, 1) is None


# --- the statement ----------------------------------------------------------------------------------

def test_statement_shows_card_and_calls_in_the_series_time_zone(world):
    call(world, 0, "A1", 95)
    holder = load_holder(world.store, card_key(45, 0), 0)
    assert (holder.number, holder.status, holder.series.name) == ("45-000000000", "activated", "Summer promo")
    assert holder.balance == "9.75 USD"  # 10.00 - (0.05 + 96 s * 0.002) = 9.758, rounded down
    assert holder.activated == "2026-09-21" and holder.expires == ""
    st = build_statement(world.store, holder, Period())
    [row] = st.calls
    # T0 is 14:13:20 UTC; London is on BST (+01:00) in September.
    assert row.started == datetime(2026, 9, 21, 15, 13, 20, tzinfo=LONDON)
    assert (row.when, row.called, row.duration, row.duration_text, row.billed_seconds) == (
        "2026-09-21 15:13:20", "442079460000", 95, "1:35", 96)
    assert row.cost == 242_000 and st.cost_text(row) == "0.24"
    assert (st.count, st.total_duration, st.total_billed, st.total_cost) == (1, 95, 96, 242_000)
    assert st.total_cost_text == "0.24 USD"


def test_calls_are_newest_first_and_paged_with_totals_over_the_whole_period(world):
    for i, seconds in enumerate((30, 61, 125, 7)):
        call(world, 0, f"P{i}", seconds)
        world.clock.advance(3600)
    holder = load_holder(world.store, card_key(45, 0), 0)
    first = build_statement(world.store, holder, Period(), page=1, page_size=3)
    second = build_statement(world.store, holder, Period(), page=2, page_size=3)
    assert [c.duration for c in first.calls] == [7, 125, 61] and [c.duration for c in second.calls] == [30]
    assert (first.page, first.pages, second.page) == (1, 2, 2)
    # billed: 30 -> 60, 61 -> 66, 125 -> 126, 7 -> 60; cost = 0.05 + billed * 0.002 each
    billed = 60 + 66 + 126 + 60
    for st in (first, second):
        assert (st.count, st.total_duration, st.total_billed) == (4, 223, billed)
        assert st.total_cost == 4 * 50_000 + billed * 2_000
    assert build_statement(world.store, holder, Period(), page=99, page_size=3).page == 2
    assert build_statement(world.store, holder, Period(), page=-1, page_size=3).page == 1


def test_period_uses_local_days_inclusive(world):
    # 23:30 UTC on the 21st is 00:30 on the 22nd in London: that call belongs to the 22nd.
    late = int(datetime(2026, 9, 21, 23, 30, tzinfo=timezone.utc).timestamp())
    call(world, 0, "D1", 60)  # 2026-09-21 15:13 local
    world.clock.now = late
    call(world, 0, "D2", 60)
    holder = load_holder(world.store, card_key(45, 0), 0)

    def durations_started(start, end):
        return [c.started.strftime("%d %H:%M") for c in
                build_statement(world.store, holder, Period(start, end)).calls]

    assert durations_started(date(2026, 9, 21), date(2026, 9, 21)) == ["21 15:13"]
    assert durations_started(date(2026, 9, 22), None) == ["22 00:30"]
    assert durations_started(None, date(2026, 9, 22)) == ["22 00:30", "21 15:13"]
    assert durations_started(date(2026, 9, 23), None) == []


def test_parse_period_keeps_good_fields_and_explains_bad_ones():
    assert parse_period("2026-09-01", "2026-09-30") == (Period(date(2026, 9, 1), date(2026, 9, 30)), "")
    assert parse_period("", "") == (Period(), "")
    period, error = parse_period("yesterday", "2026-09-30")
    assert period == Period(None, date(2026, 9, 30)) and "From" in error
    period, error = parse_period("2026-10-01", "2026-09-30")
    assert period == Period() and "after" in error
    assert Period(date(2026, 9, 1), None).query == {"from": "2026-09-01"}


def test_csv_has_every_call_of_the_period_with_exact_amounts(world):
    call(world, 0, "C1", 95)
    call(world, 0, "C2", 30, called="14155550100")
    holder = load_holder(world.store, card_key(45, 0), 0)
    rows = list(csv.reader(io.StringIO(calls_csv(world.store, holder, Period()))))
    assert rows[0] == ["Date and time", "Time zone", "Called number", "Duration (s)", "Billed (s)", "Cost",
                       "Currency"]
    # US: 0.01/min per second after 3 s grace; 30 s -> 0.005 -> shown rounded down
    assert rows[1] == ["2026-09-21T15:14:55+01:00", "Europe/London", "14155550100", "30", "30", "0.00", "USD"]
    assert rows[2] == ["2026-09-21T15:13:20+01:00", "Europe/London", "442079460000", "95", "96", "0.24", "USD"]
    assert csv_filename(holder, Period(date(2026, 9, 1), None)) == "calls-45-000000000-from-2026-09-01.csv"


def test_csv_neutralises_formulas_in_called_numbers(world):
    holder = load_holder(world.store, card_key(45, 0), 0)
    evil = [Call(datetime(2026, 9, 21, tzinfo=LONDON), '=HYPERLINK("x")', 1, 1, 0)]
    assert csv_rows(holder, evil)[1][2] == "'=HYPERLINK(\"x\")"


def test_a_card_sees_only_its_own_calls(world):
    call(world, 0, "M1", 95)
    call(world, 1, "O1", 30)
    mine = build_statement(world.store, load_holder(world.store, card_key(45, 0), 0), Period())
    theirs = build_statement(world.store, load_holder(world.store, card_key(45, 1), 0), Period())
    assert [c.duration for c in mine.calls] == [95] and [c.duration for c in theirs.calls] == [30]
