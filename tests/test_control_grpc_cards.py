"""Single cards and bulk exports: balance adjustments and blocking need a reason and respect the
balance, and an XLSX or CSV export holds exactly what ListCards shows, with text a spreadsheet would
run as a formula kept as text. A real gRPC server on 127.0.0.1:0 over a real LMDB store in tmp_path,
driven through the generated client stubs."""

from __future__ import annotations

import csv
import datetime
import io
from decimal import Decimal

import openpyxl
import pytest

from control._proto.radcore.v1 import radcore_pb2 as pb
from helpers_control import harness, rpc_error
from helpers_control_grpc import C, all_cards, create, export_bytes


@pytest.fixture
def h(tmp_path):
    with harness(tmp_path) as hh:
        yield hh


def test_update_card_rpc(h):
    create(h.admin, number=53)
    card = h.admin.cards.UpdateCard(pb.UpdateCardRequest(number="53-000000002", balance_adjustment_micro=-1_500_000,
                                                         reason="goodwill"))
    assert card.balance_micro == 3_500_000
    card = h.admin.cards.UpdateCard(pb.UpdateCardRequest(number="53000000002", status=pb.CARD_STATUS_BLOCKED))
    assert card.status == pb.CARD_STATUS_BLOCKED
    assert rpc_error(h.admin.cards.UpdateCard, pb.UpdateCardRequest(
        number="53-000000002", balance_adjustment_micro=-9_000_000, reason="x")).code() == C.FAILED_PRECONDITION
    err = rpc_error(h.admin.cards.UpdateCard, pb.UpdateCardRequest(number="53-000000002",
                                                                    balance_adjustment_micro=5))
    assert err.code() == C.INVALID_ARGUMENT and err.details().startswith("reason")
    err = rpc_error(h.admin.cards.GetCard, pb.GetCardRequest(number="53-12"))
    assert err.code() == C.INVALID_ARGUMENT and err.details().startswith("card_number")
    assert rpc_error(h.admin.cards.GetCard, pb.GetCardRequest(number="53-000000099")).code() == C.NOT_FOUND
    listed = h.admin.cards.ListCards(pb.ListCardsRequest(filter=pb.CardFilter(
        series=53, statuses=[pb.CARD_STATUS_BLOCKED], balance_min_micro=3_000_000, balance_max_micro=4_000_000)))
    assert [c.number for c in listed.cards] == ["53-000000002"]


def _stamp(ts):
    return datetime.datetime.fromtimestamp(ts, datetime.timezone.utc).replace(tzinfo=None) if ts else None


def test_export_xlsx_matches_cards_and_spills_onto_next_sheet(h, tmp_path):
    create(h.admin, number=54, quantity=25, name="=HYPERLINK(\"http://evil\")", initial_status=pb.CARD_STATUS_ACTIVATED,
           expiry_period_days=30)
    parts, data = export_bytes(h.admin, filter=pb.CardFilter(series=54), rows_per_sheet=10)
    assert parts[0].started.filename == "cards-54.xlsx" and parts[-1].finished.sheets == 3
    path = tmp_path / "cards.xlsx"
    path.write_bytes(data)
    book = openpyxl.load_workbook(path)
    assert book.sheetnames == ["Cards", "Cards 2", "Cards 3"]
    rows = []
    for ws in book.worksheets:
        values = list(ws.iter_rows(values_only=True))
        assert values[0] == ("Status", "Number", "Balance", "PIN", "Activated (UTC)", "Expires (UTC)", "Series")
        rows += values[1:]
        cell = ws["G2"]
        assert cell.data_type == "s" and cell.value.startswith("=")  # text, never a formula
    assert [len(list(ws.iter_rows())) - 1 for ws in book.worksheets] == [10, 10, 5]
    expected = [("activated", c.number, Decimal(c.balance_micro) / 1_000_000, c.pin, _stamp(c.activated_at),
                 _stamp(c.expires_at), "=HYPERLINK(\"http://evil\")")
                for c in all_cards(h.admin, 54, include_pins=True)]
    assert [(r[0], r[1], Decimal(str(r[2])), *r[3:]) for r in rows] == expected
    entries = h.admin.audit.ListAudit(pb.ListAuditRequest(target="series/54")).entries
    assert any(e.rpc == "ExportCards" for e in entries)


def test_export_csv(h):
    create(h.admin, number=55, quantity=12, name="@SUM(1)")
    h.admin.cards.UpdateCard(pb.UpdateCardRequest(number="55-000000003", balance_adjustment_micro=-12_500, reason="t"))
    parts, data = export_bytes(h.admin, filter=pb.CardFilter(series=55), format=pb.EXPORT_FORMAT_CSV)
    assert parts[0].started.content_type.startswith("text/csv")
    rows = list(csv.reader(io.StringIO(data.decode())))
    cards = all_cards(h.admin, 55, include_pins=True)
    assert rows[1:] == [["pending", c.number, "5.00" if c.balance_micro == 5_000_000 else "4.9875", c.pin, "", "",
                         "'@SUM(1)"] for c in cards]
    assert rows[4][2] == "4.9875" and parts[-1].finished.rows == 12
