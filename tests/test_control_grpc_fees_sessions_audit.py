"""Operating on cards already sold: maintenance fee runs charge each elapsed period once and expire or
use up cards, an operator can see and release a stuck call's reservation, and every mutation leaves
an audit entry with its before and after. A real gRPC server on 127.0.0.1:0 over a real LMDB store in
tmp_path, driven through the generated client stubs."""

from __future__ import annotations

import json

import pytest

from control._proto.radcore.v1 import radcore_pb2 as pb
from helpers_control import NOW, harness, rpc_error
from helpers_control_grpc import C, all_cards, create, mask, open_call, run_fees

DAY = 86_400


@pytest.fixture
def h(tmp_path):
    with harness(tmp_path) as hh:
        yield hh


# --- fees -------------------------------------------------------------------------------------------

def balances(h, series):
    return {c.balance_micro for c in all_cards(h.admin, series)}


def test_fee_runs_after_zero_one_and_five_periods(h):
    create(h.admin, number=60, quantity=2500, face_balance_micro=1_000_000, initial_status=pb.CARD_STATUS_ACTIVATED,
           maintenance_fee_micro=30_000, maintenance_period_hours=24)
    report = run_fees(h.admin, series=60)
    assert (report.cards_scanned, report.periods_charged, report.fees_micro) == (2500, 0, 0)
    h.env.clock.advance(DAY)
    dry = run_fees(h.admin, series=60, dry_run=True)
    assert dry.dry_run and dry.fees_micro == 2500 * 30_000 and balances(h, 60) == {1_000_000}
    report = run_fees(h.admin, series=60)
    assert (report.cards_charged, report.periods_charged, report.fees_micro) == (2500, 2500, 75_000_000)
    assert balances(h, 60) == {970_000}
    assert run_fees(h.admin, series=60).fees_micro == 0
    h.env.clock.advance(4 * DAY + 3600)
    report = run_fees(h.admin)
    assert (report.periods_charged, report.fees_micro) == (4 * 2500, 4 * 2500 * 30_000)
    assert balances(h, 60) == {1_000_000 - 5 * 30_000}
    assert run_fees(h.admin).fees_micro == 0
    card = h.admin.cards.GetCard(pb.GetCardRequest(number="60-000000000"))
    assert card.fees_paid_until == NOW + 5 * DAY
    entries = h.admin.audit.ListAudit(pb.ListAuditRequest(target="series/60", actor=h.admin_id)).entries
    assert [e.rpc for e in entries[:2]] == ["RunFees", "RunFees"]
    assert json.loads(entries[0].after_json)["fees"] == 4 * 2500 * 30_000


def test_fee_run_expires_and_uses_up(h):
    create(h.admin, number=61, quantity=3, face_balance_micro=50_000, initial_status=pb.CARD_STATUS_ACTIVATED,
           maintenance_fee_micro=100_000, maintenance_period_hours=1)
    create(h.admin, number=62, quantity=4, expiry_date=NOW + 3600)
    h.env.clock.advance(2 * 3600)
    report = run_fees(h.admin)
    assert (report.fees_micro, report.fees_written_off_micro, report.used, report.pending_expired) == \
        (150_000, 3 * 200_000 - 150_000, 3, 4)
    statuses = {c.status for c in all_cards(h.admin, 61)} | {c.status for c in all_cards(h.admin, 62)}
    assert statuses == {pb.CARD_STATUS_USED, pb.CARD_STATUS_EXPIRED}


# --- sessions, audit --------------------------------------------------------------------------------

def test_sessions_list_and_release(h):
    create(h.admin, number=63)
    open_call(h, 63, 4)
    listed = h.admin.sessions.ListSessions(pb.ListSessionsRequest(card_number="63-000000004"))
    assert [(s.card_number, s.nas, s.call_id, s.reserved_micro, s.state) for s in listed.sessions] == [
        ("63-000000004", "gw1", "conf-63-4", 300_000, pb.SESSION_STATE_STARTED)]
    assert h.admin.sessions.ListSessions(pb.ListSessionsRequest(nas="gw2")).sessions == []
    reply = h.admin.sessions.ReleaseSession(pb.ReleaseSessionRequest(id=listed.sessions[0].id))
    assert reply.released_micro == 300_000 and reply.session.state == pb.SESSION_STATE_STOPPED
    card = h.admin.cards.GetCard(pb.GetCardRequest(number="63-000000004"))
    assert (card.reserved_micro, card.open_calls) == (0, 0)
    assert h.admin.sessions.ListSessions(pb.ListSessionsRequest()).sessions == []
    assert len(h.admin.sessions.ListSessions(pb.ListSessionsRequest(include_stopped=True)).sessions) == 1
    assert rpc_error(h.admin.sessions.ReleaseSession, pb.ReleaseSessionRequest(
        id=listed.sessions[0].id)).code() == C.FAILED_PRECONDITION
    assert rpc_error(h.admin.sessions.ReleaseSession, pb.ReleaseSessionRequest(id="!!")).code() == \
        C.INVALID_ARGUMENT


def test_audit_records_mutations_with_before_and_after(h):
    create(h.admin, number=64)
    h.admin.series.UpdateSeries(pb.UpdateSeriesRequest(series=pb.Series(number=64, name="renamed"),
                                                       update_mask=mask("name")))
    h.admin.cards.UpdateCard(pb.UpdateCardRequest(number="64-000000001", status=pb.CARD_STATUS_BLOCKED))
    h.admin.cards.GetCard(pb.GetCardRequest(number="64-000000001", include_pin=True))
    entries = h.admin.audit.ListAudit(pb.ListAuditRequest(target="series/64")).entries
    assert [e.rpc for e in entries] == ["GetCard", "UpdateSeries", "CreateSeries"]
    update = entries[1]
    assert update.actor == h.admin_id and update.role == pb.ROLE_ADMIN and update.at == NOW
    assert json.loads(update.before_json) == {"name": "test"} and json.loads(update.after_json) == {"name": "renamed"}
    card = h.admin.audit.ListAudit(pb.ListAuditRequest(target="card/64-")).entries[0]
    assert json.loads(card.after_json) == {"status": "blocked"}
    page = h.admin.audit.ListAudit(pb.ListAuditRequest(page_size=2))
    assert len(page.entries) == 2 and page.next_page_token
    older = h.admin.audit.ListAudit(pb.ListAuditRequest(page_size=2, page_token=page.next_page_token))
    assert older.entries[0].seq < page.entries[-1].seq
    assert h.admin.audit.ListAudit(pb.ListAuditRequest(since=NOW + 1)).entries == []
