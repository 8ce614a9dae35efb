"""Who may reach the control service and what they may see: the health and reflection services stay
open, every RPC needs a live token, a reseller's token never reaches another reseller's data or an
admin operation, and the listener only leaves loopback with TLS. A real gRPC server on 127.0.0.1:0
over a real LMDB store in tmp_path, driven through the generated client stubs."""

from __future__ import annotations

import datetime

import grpc
import pytest
from google.protobuf import empty_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from control._proto.radcore.v1 import radcore_pb2 as pb
from control.grpc_server import create_server
from helpers_control import harness, rpc_error
from helpers_control_grpc import C, create, mask, open_call
from radcore.config import ControlConfig
from radcore.errors import ConfigError


@pytest.fixture
def h(tmp_path):
    with harness(tmp_path) as hh:
        yield hh


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
    skey = open_call(h, 70, 1)
    assert r2.sessions.ListSessions(pb.ListSessionsRequest()).sessions == []
    sid = r1.sessions.ListSessions(pb.ListSessionsRequest()).sessions[0].id
    assert rpc_error(r2.sessions.ReleaseSession, pb.ReleaseSessionRequest(id=sid)).code() == C.NOT_FOUND
    assert r1.sessions.ReleaseSession(pb.ReleaseSessionRequest(id=sid)).released_micro == 300_000
    assert skey


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
