"""What a series refers to: rate tables and rates (edited one by one or imported from CSV), call
quotes that must agree with the rating engine the RADIUS side charges by, and tax profiles, routing
plans and resellers, none deletable while in use. A real gRPC server on 127.0.0.1:0 over a real LMDB
store in tmp_path, driven through the generated client stubs."""

from __future__ import annotations

import pytest

from control._proto.radcore.v1 import radcore_pb2 as pb
from helpers_control import NOW, UK, harness, rpc_error
from helpers_control_grpc import C, create, mask
from radcore import rating


@pytest.fixture
def h(tmp_path):
    with harness(tmp_path) as hh:
        yield hh


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
