"""A series over the wire: creation streams its progress and holds up at 100,000 cards, edits and
status changes show in listings, and a bad or cancelled request leaves no cards behind. A real gRPC
server on 127.0.0.1:0 over a real LMDB store in tmp_path, driven through the generated client stubs."""

from __future__ import annotations

import time

import pytest

from control._proto.radcore.v1 import radcore_pb2 as pb
from helpers_control import NOW, harness, rpc_error
from helpers_control_grpc import C, all_cards, create, mask


@pytest.fixture
def h(tmp_path):
    with harness(tmp_path) as hh:
        yield hh


def test_hundred_thousand_card_series_lifecycle(h):
    started = time.monotonic()
    progress = create(h.admin, timeout=300, number=45, name="Big promo", quantity=100_000, pin_length=10,
                      notes="=SUM(A1)", tax_profile="vat", routing_plan="gw", maintenance_fee_micro=10_000,
                      maintenance_period_hours=720, expiry_period_days=90, currency="USD")
    elapsed = time.monotonic() - started
    assert len(progress) >= 10 and [p.done for p in progress] == sorted(p.done for p in progress)
    assert progress[-1].done == progress[-1].total == 100_000
    print(f"100,000-card series created in {elapsed:.1f}s")
    created = progress[-1].series
    assert created.generated == 100_000 and created.status == pb.SERIES_STATUS_ACTIVE

    found = h.admin.series.ListSeries(pb.ListSeriesRequest(text="big"))
    assert [s.number for s in found.series] == [45] and found.total_count == 1
    assert found.series[0].face_balance_micro == 5_000_000 and found.series[0].rate_table == "std"
    page = h.admin.cards.ListCards(pb.ListCardsRequest(filter=pb.CardFilter(series=45, number_prefix="45-00009999"),
                                                       include_pins=True, page_size=4))
    assert [c.number for c in page.cards] == [f"45-00009999{i}" for i in range(4)] and page.next_page_token
    assert all(len(c.pin) == 12 and c.pin[4] == " " for c in page.cards)
    nxt = h.admin.cards.ListCards(pb.ListCardsRequest(filter=pb.CardFilter(series=45, number_prefix="45-00009999"),
                                                      page_size=10, page_token=page.next_page_token))
    assert [c.number for c in nxt.cards] == [f"45-00009999{i}" for i in range(4, 10)]
    assert not nxt.next_page_token and nxt.cards[0].pin == ""
    pin = page.cards[2].pin
    by_pin = h.admin.cards.ListCards(pb.ListCardsRequest(filter=pb.CardFilter(pin=pin)))
    assert [c.number for c in by_pin.cards] == ["45-000099992"]

    edited = h.admin.series.UpdateSeries(pb.UpdateSeriesRequest(
        series=pb.Series(number=45, name="Big promo 2", activation_fee_micro=100_000, face_balance_micro=200_000),
        update_mask=mask("name", "activation_fee_micro", "face_balance_micro")))
    assert (edited.name, edited.activation_fee_micro, edited.face_balance_micro) == ("Big promo 2", 100_000, 200_000)
    assert h.admin.cards.GetCard(pb.GetCardRequest(number="45-000000000")).balance_micro == 5_000_000
    err = rpc_error(h.admin.series.UpdateSeries, pb.UpdateSeriesRequest(series=pb.Series(number=45, quantity=5),
                                                                        update_mask=mask("quantity")))
    assert err.code() == C.INVALID_ARGUMENT and err.details().startswith("quantity")
    spoken = h.admin.series.UpdateSeries(pb.UpdateSeriesRequest(series=pb.Series(number=45, language="pt-BR"),
                                                                update_mask=mask("language")))
    assert spoken.language == "pt-BR" and spoken.name == "Big promo 2"
    err = rpc_error(h.admin.series.UpdateSeries, pb.UpdateSeriesRequest(series=pb.Series(number=45, language="-x"),
                                                                        update_mask=mask("language")))
    assert err.code() == C.INVALID_ARGUMENT and err.details().startswith("language")

    stopped = h.admin.series.SetSeriesStatus(pb.SetSeriesStatusRequest(number=45, status=pb.SERIES_STATUS_STOPPED))
    assert stopped.status == pb.SERIES_STATUS_STOPPED
    assert h.admin.series.ListSeries(pb.ListSeriesRequest()).series == []
    h.admin.series.SetSeriesStatus(pb.SetSeriesStatusRequest(number=45, status=pb.SERIES_STATUS_DELETED))
    hidden = h.admin.series.ListSeries(pb.ListSeriesRequest(statuses=[pb.SERIES_STATUS_ACTIVE,
                                                                      pb.SERIES_STATUS_STOPPED]))
    assert hidden.series == []
    shown = h.admin.series.ListSeries(pb.ListSeriesRequest(statuses=[pb.SERIES_STATUS_DELETED]))
    assert [s.number for s in shown.series] == [45]
    assert h.admin.series.GetSeries(pb.GetSeriesRequest(number=45)).status == pb.SERIES_STATUS_DELETED


@pytest.mark.parametrize("fields, field", [
    (dict(pin_length=6), "pin_length"), (dict(quantity=0), "quantity"),
    (dict(quantity=100_000_001), "quantity"), (dict(rate_table="nope"), "rate_table"),
    (dict(rate_table=""), "rate_table"), (dict(activation_fee_micro=-1), "activation_fee"),
    (dict(maintenance_fee_micro=-5, maintenance_period_hours=1), "maintenance_fee"),
    (dict(expiry_date=NOW - 1), "expiry_date"), (dict(number=0), "number"),
    (dict(number=100_000), "number"), (dict(time_zone="Mars/Base"), "time_zone"),
    (dict(reseller="ghost"), "reseller"), (dict(currency="EUR"), "rate_table"),
    (dict(initial_status=pb.CARD_STATUS_USED), "initial_status"),
    (dict(language="e s"), "language"), (dict(language="x" * 17), "language"),
])
def test_create_series_invalid_argument_names_field(h, fields, field):
    values = dict(number=50, quantity=10, rate_table="std")
    values.update(fields)
    err = rpc_error(h.admin.series.CreateSeries, pb.CreateSeriesRequest(series=pb.Series(**values)))
    assert err.code() == C.INVALID_ARGUMENT and err.details().startswith(field), err.details()
    assert rpc_error(h.admin.series.GetSeries, pb.GetSeriesRequest(number=values["number"])).code() in (
        C.NOT_FOUND, C.INVALID_ARGUMENT)
    with h.env.store.transaction() as txn:
        assert txn.stat(h.env.store.cards)["entries"] == 0


def test_series_number_taken_is_already_exists(h):
    create(h.admin, number=51)
    err = rpc_error(h.admin.series.CreateSeries, pb.CreateSeriesRequest(
        series=pb.Series(number=51, quantity=5, rate_table="std")))
    assert err.code() == C.ALREADY_EXISTS
    assert len(all_cards(h.admin, 51)) == 10


def test_cancelled_creation_leaves_nothing(h):
    stream = h.admin.series.CreateSeries(pb.CreateSeriesRequest(series=pb.Series(
        number=52, quantity=60_000, rate_table="std")), timeout=120)
    first = next(stream)
    assert 0 < first.done < 60_000
    stream.cancel()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        with h.env.store.transaction() as txn:
            left = txn.stat(h.env.store.cards)["entries"] + txn.stat(h.env.store.series)["entries"]
        if not left:
            break
        time.sleep(0.05)
    assert left == 0
    assert rpc_error(h.admin.series.GetSeries, pb.GetSeriesRequest(number=52)).code() == C.NOT_FOUND
