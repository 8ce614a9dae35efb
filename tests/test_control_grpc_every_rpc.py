"""Coverage of the API surface: one tour must call every method of every service in the proto, so a
method added to the proto fails here until the tour calls it, and the call fails until it is served.
A real gRPC server on 127.0.0.1:0 over a real LMDB store in tmp_path, driven through the generated
client stubs."""

from __future__ import annotations

from control._proto.radcore.v1 import radcore_pb2 as pb
from helpers_control import harness
from helpers_control_grpc import create, export_bytes, mask, open_call, run_fees
from radcore.store import SessionState

ALL_METHODS = {f"/{s.full_name}/{m.name}" for s in pb.DESCRIPTOR.services_by_name.values() for m in s.methods}


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
        open_call(hh, 80, 2, SessionState.AUTHORIZED)
        sid = a.sessions.ListSessions(pb.ListSessionsRequest()).sessions[0].id
        assert a.sessions.ReleaseSession(pb.ReleaseSessionRequest(id=sid)).released_micro == 300_000
        a.audit.ListAudit(pb.ListAuditRequest())
        tok = a.tokens.CreateToken(pb.CreateTokenRequest(role=pb.ROLE_ADMIN, note="tour"))
        a.tokens.ListTokens(pb.ListTokensRequest())
        a.tokens.RevokeToken(pb.RevokeTokenRequest(id=tok.token.id))
    assert called == ALL_METHODS, ALL_METHODS - called
