"""The control plane end to end: a real gRPC server on 127.0.0.1:0 over a real LMDB store in tmp_path,
driven through the generated client stubs."""

from __future__ import annotations

import csv
import datetime
import io
import json
import time
from decimal import Decimal

import grpc
import openpyxl
import pytest
from google.protobuf import empty_pb2, field_mask_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from control._proto.radcore.v1 import radcore_pb2 as pb
from control.grpc_server import create_server
from helpers_control import NOW, UK, harness, rpc_error
from radcore import rating
from radcore.config import ControlConfig
from radcore.errors import ConfigError
from radcore.store import Session, SessionState, card_key, get_card, put_card, put_session, session_key

C = grpc.StatusCode
DAY = 86_400
ALL_METHODS = {f"/{s.full_name}/{m.name}" for s in pb.DESCRIPTOR.services_by_name.values() for m in s.methods}


@pytest.fixture
def h(tmp_path):
    with harness(tmp_path) as hh:
        yield hh


def create(client, timeout=30, **fields):
    values = dict(name="test", quantity=10, face_balance_micro=5_000_000, rate_table="std")
    values.update(fields)
    progress = list(client.series.CreateSeries(pb.CreateSeriesRequest(series=pb.Series(**values)),
                                               timeout=timeout))
    assert progress[-1].HasField("series")
    return progress


def mask(*paths):
    return field_mask_pb2.FieldMask(paths=list(paths))


def all_cards(client, series, **kw):
    out, token = [], ""
    while True:
        page = client.cards.ListCards(pb.ListCardsRequest(filter=pb.CardFilter(series=series), page_size=1000,
                                                          page_token=token, **kw))
        out += page.cards
        token = page.next_page_token
        if not token:
            return out


def export_bytes(client, **kw):
    parts = list(client.cards.ExportCards(pb.ExportCardsRequest(**kw), timeout=60))
    assert parts[0].HasField("started") and parts[-1].HasField("finished")
    data = b"".join(p.chunk for p in parts if p.WhichOneof("kind") == "chunk")
    assert parts[-1].finished.bytes == len(data)
    return parts, data


# --- access -----------------------------------------------------------------------------------------

def test_health_and_reflection_need_no_token(h):
    health = health_pb2_grpc.HealthStub(h.channel)
    for name in ("", "radcore.v1.SeriesService", "radcore.v1.TokenService"):
        assert health.Check(health_pb2.HealthCheckRequest(service=name)).status == \
            health_pb2.HealthCheckResponse.SERVING
    stub = reflection_pb2_grpc.ServerReflectionStub(h.channel)
    reply = next(stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")])))
    names = {s.name for s in reply.list_services_response.service}
    assert {"radcore.v1.CardService", "radcore.v1.FeeService", "grpc.health.v1.Health"} <= names


def test_every_rpc_without_or_with_bad_token_is_unauthenticated(h):
    for token in (None, "not-a-token"):
        for service in pb.DESCRIPTOR.services_by_name.values():
            for method in service.methods:
                path = f"/{service.full_name}/{method.name}"
                request = getattr(pb, method.input_type.name, None) or empty_pb2.Empty
                call = (h.channel.unary_stream if method.server_streaming else h.channel.unary_unary)(
                    path, request_serializer=lambda m: m.SerializeToString(),
                    response_deserializer=lambda b: b)
                md = [("authorization", f"Bearer {token}")] if token else None
                err = rpc_error(call, request(), metadata=md)
                assert err.code() == C.UNAUTHENTICATED, path


def test_tokens_create_list_revoke(h):
    reply = h.admin.tokens.CreateToken(pb.CreateTokenRequest(role=pb.ROLE_RESELLER, reseller="r1",
                                                             note="shop"))
    assert reply.secret and reply.token.role == pb.ROLE_RESELLER and reply.token.reseller == "r1"
    shop = h.client(reply.secret)
    assert [t.id for t in shop.tokens.ListTokens(pb.ListTokensRequest()).tokens] == [reply.token.id]
    listed = h.admin.tokens.ListTokens(pb.ListTokensRequest()).tokens
    assert {t.id for t in listed} == {h.admin_id, reply.token.id}
    assert rpc_error(shop.tokens.RevokeToken, pb.RevokeTokenRequest(id=h.admin_id)).code() == C.PERMISSION_DENIED
    assert rpc_error(h.admin.tokens.CreateToken, pb.CreateTokenRequest(role=pb.ROLE_RESELLER,
                                                                       reseller="nope")).code() == C.INVALID_ARGUMENT
    assert h.admin.tokens.RevokeToken(pb.RevokeTokenRequest(id=reply.token.id)).revoked
    err = rpc_error(shop.series.ListSeries, pb.ListSeriesRequest())
    assert err.code() == C.UNAUTHENTICATED and "revoked" in err.details()
    assert len(h.admin.tokens.ListTokens(pb.ListTokensRequest(include_revoked=True)).tokens) == 2


def test_reseller_isolation(h):
    _, r1 = h.token("reseller", "r1")
    _, r2 = h.token("reseller", "r2")
    done = create(r1, number=70, reseller="r2")[-1].series
    assert done.reseller == "r1"  # forced to the caller's own reseller
    number = "70-000000001"
    nf = C.NOT_FOUND
    cases = [
        (r2.series.GetSeries, pb.GetSeriesRequest(number=70), nf),
        (r2.series.UpdateSeries, pb.UpdateSeriesRequest(series=pb.Series(number=70, name="x"),
                                                        update_mask=mask("name")), nf),
        (r2.series.SetSeriesStatus, pb.SetSeriesStatusRequest(number=70, status=pb.SERIES_STATUS_STOPPED), nf),
        (r2.cards.ListCards, pb.ListCardsRequest(filter=pb.CardFilter(series=70)), nf),
        (r2.cards.GetCard, pb.GetCardRequest(number=number), nf),
        (r2.cards.UpdateCard, pb.UpdateCardRequest(number=number, unlock=True), nf),
        (r2.cards.ExportCards, pb.ExportCardsRequest(filter=pb.CardFilter(series=70)), nf),
        (r2.fees.RunFees, pb.RunFeesRequest(series=70), nf),
        (r2.rates.QuoteCall, pb.QuoteCallRequest(card_number=number, number="44", duration_seconds=1), nf),
        (r2.resellers.GetReseller, pb.ResellerRef(id="r1"), nf),
        (r1.series.UpdateSeries, pb.UpdateSeriesRequest(series=pb.Series(number=70, reseller="r2"),
                                                        update_mask=mask("reseller")), C.PERMISSION_DENIED),
        (r1.cards.ListCards, pb.ListCardsRequest(filter=pb.CardFilter(pin="1234567890")), C.PERMISSION_DENIED),
        (r1.rates.CreateRateTable, pb.CreateRateTableRequest(table=pb.RateTable(name="x", currency="USD")),
         C.PERMISSION_DENIED),
        (r1.rates.UpdateRateTable, pb.UpdateRateTableRequest(table=pb.RateTable(name="std"),
                                                             update_mask=mask("description")), C.PERMISSION_DENIED),
        (r1.rates.DeleteRateTable, pb.DeleteRateTableRequest(name="eur"), C.PERMISSION_DENIED),
        (r1.rates.PutRate, pb.PutRateRequest(rate_table="std", rate=pb.Rate(prefix="1")), C.PERMISSION_DENIED),
        (r1.rates.DeleteRate, pb.DeleteRateRequest(rate_table="std", prefix="44"), C.PERMISSION_DENIED),
        (r1.rates.ImportRates, pb.ImportRatesRequest(rate_table="std", csv=b"1,1"), C.PERMISSION_DENIED),
        (r1.taxes.CreateTaxProfile, pb.TaxProfile(name="t"), C.PERMISSION_DENIED),
        (r1.taxes.DeleteTaxProfile, pb.TaxProfileRef(name="vat"), C.PERMISSION_DENIED),
        (r1.routes.UpdateRoutingPlan, pb.UpdateRoutingPlanRequest(plan=pb.RoutingPlan(name="gw"),
                                                                  update_mask=mask("route")), C.PERMISSION_DENIED),
        (r1.resellers.CreateReseller, pb.Reseller(id="r3"), C.PERMISSION_DENIED),
        (r1.tokens.CreateToken, pb.CreateTokenRequest(role=pb.ROLE_ADMIN), C.PERMISSION_DENIED),
    ]
    for call, request, code in cases:
        err = rpc_error(call, request)
        assert err.code() == code, (call._method, err.details())
    assert [s.number for s in r2.series.ListSeries(pb.ListSeriesRequest()).series] == []
    assert [s.number for s in r1.series.ListSeries(pb.ListSeriesRequest()).series] == [70]
    assert r2.cards.ListCards(pb.ListCardsRequest()).cards == []
    assert [r.id for r in r2.resellers.ListResellers(pb.ListResellersRequest()).resellers] == ["r2"]
    assert r2.audit.ListAudit(pb.ListAuditRequest(target="series/70")).entries == []
    assert r1.audit.ListAudit(pb.ListAuditRequest(target="series/70")).entries[0].rpc == "CreateSeries"
    # a reseller's own series: full access
    assert r1.cards.GetCard(pb.GetCardRequest(number=number, include_pin=True)).pin
    # sessions: other tenants' calls are invisible, and releasing them is an admin operation
    skey = _open_call(h, 70, 1)
    assert r2.sessions.ListSessions(pb.ListSessionsRequest()).sessions == []
    sid = r1.sessions.ListSessions(pb.ListSessionsRequest()).sessions[0].id
    assert rpc_error(r2.sessions.ReleaseSession, pb.ReleaseSessionRequest(id=sid)).code() == C.NOT_FOUND
    assert r1.sessions.ReleaseSession(pb.ReleaseSessionRequest(id=sid)).released_micro == 300_000
    assert skey


# --- series -----------------------------------------------------------------------------------------

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


# --- cards, exports ---------------------------------------------------------------------------------

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


# --- rates, quotes, catalog -------------------------------------------------------------------------

def test_rate_tables_and_rates_crud(h):
    t = h.admin.rates.CreateRateTable(pb.CreateRateTableRequest(table=pb.RateTable(name="vip", currency="USD")))
    assert t.created_at == NOW
    assert rpc_error(h.admin.rates.CreateRateTable, pb.CreateRateTableRequest(
        table=pb.RateTable(name="vip", currency="USD"))).code() == C.ALREADY_EXISTS
    for prefix in ("1", "12", "123"):
        h.admin.rates.PutRate(pb.PutRateRequest(rate_table="vip", rate=pb.Rate(prefix=prefix,
                                                                                price_per_minute_micro=1000)))
    assert h.admin.rates.GetRateTable(pb.GetRateTableRequest(name="vip")).rate_count == 3
    page = h.admin.rates.ListRates(pb.ListRatesRequest(rate_table="vip", page_size=2))
    rest = h.admin.rates.ListRates(pb.ListRatesRequest(rate_table="vip", page_token=page.next_page_token))
    assert [r.prefix for r in page.rates] + [r.prefix for r in rest.rates] == ["1", "12", "123"]
    assert [r.prefix for r in h.admin.rates.ListRates(pb.ListRatesRequest(rate_table="vip", prefix="12")).rates] \
        == ["12", "123"]
    h.admin.rates.DeleteRate(pb.DeleteRateRequest(rate_table="vip", prefix="12"))
    assert rpc_error(h.admin.rates.DeleteRate, pb.DeleteRateRequest(rate_table="vip", prefix="12")).code() == \
        C.NOT_FOUND
    upd = h.admin.rates.UpdateRateTable(pb.UpdateRateTableRequest(table=pb.RateTable(name="vip", description="d"),
                                                                  update_mask=mask("description")))
    assert upd.description == "d" and upd.rate_count == 2
    assert {t.name for t in h.admin.rates.ListRateTables(pb.ListRateTablesRequest()).tables} == {"std", "eur", "vip"}
    create(h.admin, number=56, rate_table="vip")
    assert rpc_error(h.admin.rates.DeleteRateTable, pb.DeleteRateTableRequest(name="vip")).code() == \
        C.FAILED_PRECONDITION
    assert h.admin.rates.DeleteRateTable(pb.DeleteRateTableRequest(name="eur")).rates_deleted == 0
    err = rpc_error(h.admin.rates.PutRate, pb.PutRateRequest(rate_table="vip", rate=pb.Rate(
        prefix="1", price_per_minute_micro=-1)))
    assert err.code() == C.INVALID_ARGUMENT and err.details().startswith("price_per_minute")


def test_csv_import_reports_bad_lines(h):
    deck = b"prefix,price_per_minute,connection_fee,interval\n33,0.0125,0,60\n34,0.0000001,0,60\n35,0.02,x,60\n"
    reply = h.admin.rates.ImportRates(pb.ImportRatesRequest(rate_table="std", csv=deck))
    assert reply.imported == 0
    assert [(e.line, e.field) for e in reply.errors] == [(3, "price_per_minute"), (4, "connection_fee")]
    assert "decimal places" in reply.errors[0].message
    prefixes = [r.prefix for r in h.admin.rates.ListRates(pb.ListRatesRequest(rate_table="std")).rates]
    assert "33" not in prefixes
    reply = h.admin.rates.ImportRates(pb.ImportRatesRequest(rate_table="std", csv=deck, allow_partial=True))
    assert reply.imported == 1 and len(reply.errors) == 2
    rate = [r for r in h.admin.rates.ListRates(pb.ListRatesRequest(rate_table="std", prefix="33")).rates][0]
    assert (rate.price_per_minute_micro, rate.interval) == (12_500, 60)
    assert rpc_error(h.admin.rates.ImportRates, pb.ImportRatesRequest(rate_table="nope", csv=deck)).code() == \
        C.NOT_FOUND


@pytest.mark.parametrize("duration", [0, 1, 59, 60, 61, 3600])
@pytest.mark.parametrize("balance, tax", [(1_000_000, ""), (37_777, "vat"), (0, "")])
def test_quote_call_equals_rating(h, duration, balance, tax):
    ppm = 200_000 if tax else 0
    q = h.admin.rates.QuoteCall(pb.QuoteCallRequest(rate_table="std", number="+44 (20) 7946-0000",
                                                    duration_seconds=duration, balance_micro=balance,
                                                    tax_profile=tax))
    assert q.normalized_number == "442079460000" and q.rate.prefix == "44" and q.tax_ppm == ppm
    assert q.cost_micro == rating.cost(UK, duration, ppm)
    assert q.max_duration_seconds == rating.max_duration(UK, balance, ppm)
    assert q.billed_seconds == rating.billed_seconds(UK, duration)


def test_quote_call_for_card_uses_its_series(h):
    create(h.admin, number=57, tax_profile="vat", face_balance_micro=2_000_000)
    h.admin.cards.UpdateCard(pb.UpdateCardRequest(number="57-000000000", balance_adjustment_micro=-500_000, reason="t"))
    q = h.admin.rates.QuoteCall(pb.QuoteCallRequest(card_number="57-000000000", number="0049301234",
                                                    duration_seconds=90))
    assert q.rate.prefix == "" and q.available_micro == 1_500_000 and q.currency == "USD"
    from helpers_control import ANY
    assert q.cost_micro == rating.cost(ANY, 90, 200_000)
    assert q.max_duration_seconds == rating.max_duration(ANY, 1_500_000, 200_000)
    err = rpc_error(h.admin.rates.QuoteCall, pb.QuoteCallRequest(rate_table="std", number="*21#"))
    assert err.code() == C.INVALID_ARGUMENT and err.details().startswith("number")


def test_catalog_services_crud(h):
    a = h.admin
    assert a.taxes.CreateTaxProfile(pb.TaxProfile(name="gst", percent_ppm=100_000)).percent_ppm == 100_000
    assert rpc_error(a.taxes.CreateTaxProfile, pb.TaxProfile(name="gst")).code() == C.ALREADY_EXISTS
    assert rpc_error(a.taxes.CreateTaxProfile, pb.TaxProfile(name="big", percent_ppm=2_000_000)).code() == \
        C.INVALID_ARGUMENT
    assert a.taxes.UpdateTaxProfile(pb.UpdateTaxProfileRequest(profile=pb.TaxProfile(name="gst", percent_ppm=5),
                                                               update_mask=mask("percent_ppm"))).percent_ppm == 5
    assert a.taxes.GetTaxProfile(pb.TaxProfileRef(name="gst")).percent_ppm == 5
    assert {p.name for p in a.taxes.ListTaxProfiles(pb.ListTaxProfilesRequest()).profiles} == {"gst", "vat"}
    a.taxes.DeleteTaxProfile(pb.TaxProfileRef(name="gst"))
    assert rpc_error(a.taxes.GetTaxProfile, pb.TaxProfileRef(name="gst")).code() == C.NOT_FOUND

    assert a.routes.CreateRoutingPlan(pb.RoutingPlan(name="alt", route="0022#")).route == "0022#"
    assert a.routes.UpdateRoutingPlan(pb.UpdateRoutingPlanRequest(plan=pb.RoutingPlan(name="alt", route="9#"),
                                                                  update_mask=mask("route"))).route == "9#"
    assert a.routes.GetRoutingPlan(pb.RoutingPlanRef(name="alt")).route == "9#"
    assert len(a.routes.ListRoutingPlans(pb.ListRoutingPlansRequest()).plans) == 2
    create(a, number=58, routing_plan="alt", reseller="r2")
    assert rpc_error(a.routes.DeleteRoutingPlan, pb.RoutingPlanRef(name="alt")).code() == C.FAILED_PRECONDITION

    assert a.resellers.CreateReseller(pb.Reseller(id="r3", name="Three")).created_at == NOW
    assert rpc_error(a.resellers.CreateReseller, pb.Reseller(id="bad id")).code() == C.INVALID_ARGUMENT
    assert a.resellers.UpdateReseller(pb.UpdateResellerRequest(reseller=pb.Reseller(id="r3", name="3"),
                                                               update_mask=mask("name"))).name == "3"
    assert a.resellers.GetReseller(pb.ResellerRef(id="r3")).name == "3"
    assert len(a.resellers.ListResellers(pb.ListResellersRequest()).resellers) == 3
    a.resellers.DeleteReseller(pb.ResellerRef(id="r3"))
    assert rpc_error(a.resellers.DeleteReseller, pb.ResellerRef(id="r2")).code() == C.FAILED_PRECONDITION


# --- fees -------------------------------------------------------------------------------------------

def run_fees(client, **kw):
    replies = list(client.fees.RunFees(pb.RunFeesRequest(**kw), timeout=60))
    assert replies[-1].HasField("report") and all(r.HasField("progress") for r in replies[:-1])
    return replies[-1].report


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

def _open_call(h, series, serial, state=SessionState.STARTED):
    store, key = h.env.store, card_key(series, serial)
    skey = session_key("gw1", f"conf-{series}-{serial}")
    with store.transaction(write=True) as txn:
        card = get_card(txn, store, key)
        card.reserved, card.open_calls = 300_000, 1
        put_card(txn, store, key, card)
        put_session(txn, store, skey, Session(card_key=key, state=state, reserved=300_000, opened_at=NOW,
                                              deadline=NOW + 900, price_per_minute=60_000, interval=60,
                                              called="4420", prefix="44", nas="gw1"))
    return skey


def test_sessions_list_and_release(h):
    create(h.admin, number=63)
    _open_call(h, 63, 4)
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


# --- server wiring ----------------------------------------------------------------------------------

def test_refuses_non_loopback_without_tls(h):
    with pytest.raises(ConfigError, match="loopback"):
        create_server(h.env.store, h.env.keyring, ControlConfig(), address="0.0.0.0:0")


def test_tls_from_config(h, tmp_path):
    cert, key = _self_signed(tmp_path)
    server, port = create_server(h.env.store, h.env.keyring, ControlConfig(tls_cert=str(cert), tls_key=str(key)),
                                 address="127.0.0.1:0", clock=h.env.clock)
    server.start()
    try:
        creds = grpc.ssl_channel_credentials(root_certificates=cert.read_bytes())
        with grpc.secure_channel(f"localhost:{port}", creds) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            assert health.Check(health_pb2.HealthCheckRequest(), timeout=10).status == \
                health_pb2.HealthCheckResponse.SERVING
    finally:
        server.stop(0).wait()


def _self_signed(tmp_path):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


def test_every_rpc_is_exercised(tmp_path):
    """A tour through every method of every service, with the client recording what it called."""
    called: set[str] = set()
    with harness(tmp_path, called) as hh:
        a = hh.admin
        create(a, number=80)
        a.series.GetSeries(pb.GetSeriesRequest(number=80))
        a.series.ListSeries(pb.ListSeriesRequest())
        a.series.UpdateSeries(pb.UpdateSeriesRequest(series=pb.Series(number=80, notes="n"), update_mask=mask("notes")))
        a.series.SetSeriesStatus(pb.SetSeriesStatusRequest(number=80, status=pb.SERIES_STATUS_ACTIVE))
        a.cards.ListCards(pb.ListCardsRequest())
        a.cards.GetCard(pb.GetCardRequest(number="80-000000000"))
        a.cards.UpdateCard(pb.UpdateCardRequest(number="80-000000000", unlock=True))
        export_bytes(a, format=pb.EXPORT_FORMAT_CSV)
        a.rates.CreateRateTable(pb.CreateRateTableRequest(table=pb.RateTable(name="t", currency="USD")))
        a.rates.GetRateTable(pb.GetRateTableRequest(name="t"))
        a.rates.ListRateTables(pb.ListRateTablesRequest())
        a.rates.UpdateRateTable(pb.UpdateRateTableRequest(table=pb.RateTable(name="t", currency="EUR"),
                                                          update_mask=mask("currency")))
        a.rates.PutRate(pb.PutRateRequest(rate_table="t", rate=pb.Rate(prefix="1", price_per_minute_micro=1)))
        a.rates.ListRates(pb.ListRatesRequest(rate_table="t"))
        a.rates.DeleteRate(pb.DeleteRateRequest(rate_table="t", prefix="1"))
        a.rates.ImportRates(pb.ImportRatesRequest(rate_table="t", csv=b"1,0.01\n"))
        a.rates.QuoteCall(pb.QuoteCallRequest(card_number="80-000000001", number="4420", duration_seconds=60))
        a.rates.DeleteRateTable(pb.DeleteRateTableRequest(name="t"))
        for stub, noun, msg, ref, field in (
                (a.taxes, "TaxProfile", pb.TaxProfile(name="x", percent_ppm=1), pb.TaxProfileRef(name="x"), "profile"),
                (a.routes, "RoutingPlan", pb.RoutingPlan(name="x"), pb.RoutingPlanRef(name="x"), "plan"),
                (a.resellers, "Reseller", pb.Reseller(id="x"), pb.ResellerRef(id="x"), "reseller")):
            getattr(stub, f"Create{noun}")(msg)
            getattr(stub, f"Get{noun}")(ref)
            getattr(stub, f"List{noun}s")(getattr(pb, f"List{noun}sRequest")())
            getattr(stub, f"Update{noun}")(getattr(pb, f"Update{noun}Request")(
                **{field: msg, "update_mask": mask("description" if noun != "Reseller" else "name")}))
            getattr(stub, f"Delete{noun}")(ref)
        run_fees(a)
        _open_call(hh, 80, 2, SessionState.AUTHORIZED)
        sid = a.sessions.ListSessions(pb.ListSessionsRequest()).sessions[0].id
        assert a.sessions.ReleaseSession(pb.ReleaseSessionRequest(id=sid)).released_micro == 300_000
        a.audit.ListAudit(pb.ListAuditRequest())
        tok = a.tokens.CreateToken(pb.CreateTokenRequest(role=pb.ROLE_ADMIN, note="tour"))
        a.tokens.ListTokens(pb.ListTokensRequest())
        a.tokens.RevokeToken(pb.RevokeTokenRequest(id=tok.token.id))
    assert called == ALL_METHODS, ALL_METHODS - called
