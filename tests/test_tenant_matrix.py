"""Generated authorization matrix: every RPC of every radcore service x every caller x every target.

The RPC list comes from the generated descriptor, so a new RPC without a case here fails the matrix.
One rule table (`expected`) decides every cell:

- no token / bad token                         -> UNAUTHENTICATED
- admin                                        -> OK
- reseller on an ADMIN-only operation          -> PERMISSION_DENIED (whatever the target: the admin
  check runs before any lookup, so it leaks nothing)
- reseller on an OPEN operation (catalog reads, listings scoped to the caller, CreateSeries whose owner
  is forced to the caller)                     -> OK
- reseller on a TENANT operation: own object   -> OK; foreign object -> the spec's `foreign` code,
  NOT_FOUND, exactly like an object that does not exist.

Every audited call that succeeds must leave an audit entry with its RPC name and the caller's token id;
every refused call must leave no entry by that caller at all.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any, Callable

import grpc
import pytest
from google.protobuf import empty_pb2, field_mask_pb2

from control import audit, catalog
from control import cards as card_ops
from control import series as series_ops
from control import sessions as session_ops
from control._proto.radcore.v1 import radcore_pb2 as pb
from control.auth import LOCAL, create_token
from control.rates import create_rate_table, put_rate
from helpers_control import NOW, harness
from radcore.rating import Rate
from radcore.store import (CardStatus, RateTable, Reseller, RoutingPlan, Series, SeriesStatus, Session,
                           SessionState, TaxProfile, card_key, get_card, put_card, put_session, session_key)

C = grpc.StatusCode
OK = C.OK
OWN, OTHER, NONE = "A", "other", "-"
CALLERS = ("admin", "resA", "resB", "no_token", "bad_token")
CALLER_RESELLER = {"admin": "", "resA": "r1", "resB": "r2"}
#: Who owns the object of each target, per object family (the operator "" or a third tenant r3).
OWNERS = {"series": {OWN: "r1", OTHER: ""}, "reseller": {OWN: "r1", OTHER: "r3"}}
OPEN, TENANT, ADMIN_ONLY = "open", "tenant", "admin"
SERIES_A, SERIES_OP = 101, 102
_seq = itertools.count(1)


def mask(*paths: str) -> field_mask_pb2.FieldMask:
    return field_mask_pb2.FieldMask(paths=list(paths))


def uniq(prefix: str) -> str:
    return f"{prefix}{next(_seq)}"


# --- the world ----------------------------------------------------------------------------------------

@dataclass
class World:
    h: Any
    tokens: dict[str, str | None] = field(default_factory=dict)  # caller -> bearer secret
    ids: dict[str, str] = field(default_factory=dict)  # caller -> token id
    next_series: Any = field(default_factory=lambda: itertools.count(300))
    next_serial: Any = field(default_factory=lambda: itertools.count(10))

    @property
    def store(self):
        return self.h.env.store

    @property
    def clock(self):
        return self.h.env.clock

    def series_of(self, target: str) -> int:
        return SERIES_A if target == OWN else SERIES_OP

    def card_of(self, target: str, serial: int = 1) -> str:
        return f"{self.series_of(target)}-{serial:09d}"

    def fresh_series(self, target: str) -> int:
        number = next(self.next_series)
        series_ops.create_series_blocking(
            self.store, self.h.env.keyring, LOCAL,
            Series(number=number, name=f"fresh {number}", quantity=2, face_balance=5_000_000,
                   rate_table="std", reseller=OWNERS["series"][target]), clock=self.clock)
        return number

    def open_call(self, target: str) -> str:
        """An authorized (never started) call holding 300,000 on a fresh card of the target series."""
        number = self.series_of(target)
        serial = 10 + next(self.next_serial) % 10
        key = card_key(number, serial)
        skey = session_key("gw1", uniq("conf-"))
        with self.store.transaction(write=True) as txn:
            card = get_card(txn, self.store, key)
            card.reserved += 300_000
            card.open_calls += 1
            put_card(txn, self.store, key, card)
            put_session(txn, self.store, skey, Session(card_key=key, state=SessionState.AUTHORIZED,
                                                       reserved=300_000, opened_at=NOW, deadline=NOW + 900,
                                                       price_per_minute=60_000, interval=60, called="4420",
                                                       prefix="44", nas="gw1"))
        return session_ops.session_id(skey)

    def expire_a_card(self, target: str) -> None:
        """Make one card of the target series due for expiry, so a fee run changes (and audits) it."""
        key = card_key(self.series_of(target), 2)
        with self.store.transaction(write=True) as txn:
            card = get_card(txn, self.store, key)
            card.status, card.activated_at, card.expires_at = CardStatus.ACTIVATED, NOW - 100, NOW - 1
            put_card(txn, self.store, key, card)

    def pin_of(self, target: str) -> str:
        return card_ops.get_card(self.store, self.h.env.keyring, LOCAL, self.card_of(target, 3),
                                 include_pin=True, clock=self.clock).pin

    def fresh_token(self, target: str) -> str:
        token_id, _ = create_token(self.store, "reseller", OWNERS["reseller"][target], note="victim",
                                   clock=self.clock)
        return token_id

    def reset(self) -> None:
        for number in (SERIES_A, SERIES_OP):
            series_ops.set_status(self.store, LOCAL, number, SeriesStatus.ACTIVE, clock=self.clock)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    with harness(tmp_path_factory.mktemp("matrix")) as h:
        env = h.env
        catalog.create(env.store, LOCAL, catalog.RESELLERS, Reseller("r3", "R3"), clock=env.clock)
        for number, owner in ((SERIES_A, "r1"), (SERIES_OP, "")):
            series_ops.create_series_blocking(
                env.store, env.keyring, LOCAL,
                Series(number=number, name=f"world {number}", quantity=20, face_balance=5_000_000,
                       rate_table="std", reseller=owner), clock=env.clock)
        w = World(h)
        w.tokens.update(no_token=None, bad_token="not-a-token")
        for caller, role, reseller in (("admin", "admin", ""), ("resA", "reseller", "r1"),
                                       ("resB", "reseller", "r2")):
            w.ids[caller], w.tokens[caller] = create_token(env.store, role, reseller, note=caller,
                                                           clock=env.clock)
        yield w


# --- the case table -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Spec:
    rpc: str  # full name "radcore.v1.Service/Method"
    build: Callable[[World, str], Any]  # (world, target) -> request; may set up fresh objects
    access: str  # OPEN, TENANT or ADMIN_ONLY
    targets: tuple[str, ...] = (NONE,)
    family: str = "series"  # which OWNERS row the targets refer to
    foreign: C = C.NOT_FOUND  # TENANT only: a reseller on another tenant's object
    audited: bool = False
    variant: str = ""
    check: Callable[[World, str, str, Any], None] | None = None  # (world, caller, target, replies)

    @property
    def id(self) -> str:
        return self.rpc.split("/")[1] + (f"[{self.variant}]" if self.variant else "")


def _owner_is_caller_or_requested(w: World, caller: str, target: str, replies: list) -> None:
    created = replies[-1].series
    want = OWNERS["series"][target] if caller == "admin" else CALLER_RESELLER[caller]
    assert created.reseller == want, "a reseller's new series must belong to that reseller"


def _only_own_series(w: World, caller: str, target: str, reply: Any) -> None:
    numbers = {s.number for s in reply.series}
    if caller == "admin":
        assert {SERIES_A, SERIES_OP} <= numbers
    else:
        assert SERIES_OP not in numbers and (SERIES_A in numbers) == (caller == "resA")


def _only_own_resellers(w: World, caller: str, target: str, reply: Any) -> None:
    ids = {r.id for r in reply.resellers}
    assert ids >= {"r1", "r2", "r3"} if caller == "admin" else ids == {CALLER_RESELLER[caller]}


def _only_own_tokens(w: World, caller: str, target: str, reply: Any) -> None:
    if caller != "admin":
        assert reply.tokens and all(t.reseller == CALLER_RESELLER[caller] for t in reply.tokens)


def _only_own_sessions(w: World, caller: str, target: str, reply: Any) -> None:
    seen = {s.card_number.split("-")[0] for s in reply.sessions}
    if caller == "admin":
        assert seen >= {str(SERIES_A), str(SERIES_OP)}
    else:
        assert seen == ({str(SERIES_A)} if caller == "resA" else set())


def _only_own_cards(w: World, caller: str, target: str, reply: Any) -> None:
    seen = {c.series for c in reply.cards}
    if caller == "admin":
        assert {SERIES_A, SERIES_OP} <= seen
    else:
        owners = {series_ops.get(w.store, LOCAL, n).reseller for n in seen}
        assert owners <= {CALLER_RESELLER[caller]} and (SERIES_A in seen) == (caller == "resA")


def _only_own_audit(w: World, caller: str, target: str, reply: Any) -> None:
    visible = caller == "admin" or OWNERS["series"][target] == CALLER_RESELLER[caller]
    assert bool(reply.entries) == visible, "audit entries about another tenant's series leaked"


def _list_sessions_request(w: World, t: str) -> Any:
    w.open_call(OWN)
    w.open_call(OTHER)
    return pb.ListSessionsRequest(page_size=1000)


def _pin_hit(w: World, caller: str, target: str, reply: Any) -> None:
    assert [c.number for c in reply.cards] == [w.card_of(target, 3)]


S, CS, RS = "radcore.v1.SeriesService/", "radcore.v1.CardService/", "radcore.v1.RateService/"
TX, RP, RE = "radcore.v1.TaxProfileService/", "radcore.v1.RoutingPlanService/", "radcore.v1.ResellerService/"
BOTH = (OWN, OTHER)


def _fresh_table(w: World) -> str:
    name = uniq("tbl")
    create_rate_table(w.store, LOCAL, RateTable(name, "USD"), clock=w.clock)
    return name


def _fresh_rate(w: World) -> str:
    prefix = f"77{next(_seq)}"
    put_rate(w.store, LOCAL, "std", Rate(prefix=prefix, price_per_minute=1, interval=1), clock=w.clock)
    return prefix


def _fresh(kind: Any, cls: Any) -> Callable[[World], str]:
    def make(w: World) -> str:
        name = uniq("x")
        catalog.create(w.store, LOCAL, kind, cls(name, *(("y",) if cls is RoutingPlan else ())),
                       clock=w.clock)
        return name
    return make


_fresh_tax, _fresh_plan = _fresh(catalog.TAX_PROFILES, TaxProfile), _fresh(catalog.ROUTING_PLANS, RoutingPlan)
_fresh_reseller = _fresh(catalog.RESELLERS, Reseller)


def _set_status_request(w: World, t: str) -> Any:
    w.reset()
    return pb.SetSeriesStatusRequest(number=w.series_of(t), status=pb.SERIES_STATUS_STOPPED)


def _run_fees_request(w: World, t: str) -> Any:
    w.expire_a_card(t)
    return pb.RunFeesRequest(series=w.series_of(t))


SPECS: tuple[Spec, ...] = (
    # series
    Spec(S + "CreateSeries", lambda w, t: pb.CreateSeriesRequest(series=pb.Series(
        number=next(w.next_series), name="new", quantity=2, face_balance_micro=1_000_000, rate_table="std",
        reseller=OWNERS["series"][t])), OPEN, BOTH, audited=True, check=_owner_is_caller_or_requested),
    Spec(S + "GetSeries", lambda w, t: pb.GetSeriesRequest(number=w.series_of(t)), TENANT, BOTH),
    Spec(S + "ListSeries", lambda w, t: pb.ListSeriesRequest(), OPEN, check=_only_own_series),
    Spec(S + "UpdateSeries", lambda w, t: pb.UpdateSeriesRequest(
        series=pb.Series(number=w.series_of(t), notes=uniq("n")), update_mask=mask("notes")),
        TENANT, BOTH, audited=True),
    Spec(S + "UpdateSeries", lambda w, t: pb.UpdateSeriesRequest(
        series=pb.Series(number=w.fresh_series(t), reseller="r2"), update_mask=mask("reseller")),
        ADMIN_ONLY, BOTH, audited=True, variant="reseller"),
    Spec(S + "SetSeriesStatus", _set_status_request, TENANT, BOTH, audited=True),
    # cards
    Spec(CS + "ListCards", lambda w, t: pb.ListCardsRequest(filter=pb.CardFilter(series=w.series_of(t)),
                                                            include_pins=True, page_size=5),
         TENANT, BOTH, audited=True),
    Spec(CS + "ListCards", lambda w, t: pb.ListCardsRequest(page_size=1000), OPEN, variant="all",
         check=_only_own_cards),
    Spec(CS + "ListCards", lambda w, t: pb.ListCardsRequest(filter=pb.CardFilter(pin=w.pin_of(t))),
         ADMIN_ONLY, BOTH, variant="pin", check=_pin_hit),
    Spec(CS + "GetCard", lambda w, t: pb.GetCardRequest(number=w.card_of(t), include_pin=True),
         TENANT, BOTH, audited=True),
    Spec(CS + "UpdateCard", lambda w, t: pb.UpdateCardRequest(number=w.card_of(t), unlock=True),
         TENANT, BOTH, audited=True),
    Spec(CS + "ExportCards", lambda w, t: pb.ExportCardsRequest(filter=pb.CardFilter(series=w.series_of(t)),
                                                                format=pb.EXPORT_FORMAT_CSV),
         TENANT, BOTH, audited=True),
    # rates: reads open, writes admin only
    Spec(RS + "CreateRateTable", lambda w, t: pb.CreateRateTableRequest(
        table=pb.RateTable(name=uniq("new"), currency="USD")), ADMIN_ONLY, audited=True),
    Spec(RS + "GetRateTable", lambda w, t: pb.GetRateTableRequest(name="std"), OPEN),
    Spec(RS + "ListRateTables", lambda w, t: pb.ListRateTablesRequest(), OPEN),
    Spec(RS + "UpdateRateTable", lambda w, t: pb.UpdateRateTableRequest(
        table=pb.RateTable(name="std", description=uniq("d")), update_mask=mask("description")),
        ADMIN_ONLY, audited=True),
    Spec(RS + "DeleteRateTable", lambda w, t: pb.DeleteRateTableRequest(name=_fresh_table(w)),
         ADMIN_ONLY, audited=True),
    Spec(RS + "PutRate", lambda w, t: pb.PutRateRequest(rate_table="std", rate=pb.Rate(
        prefix=f"66{next(_seq)}", price_per_minute_micro=1, interval=1)), ADMIN_ONLY, audited=True),
    Spec(RS + "ListRates", lambda w, t: pb.ListRatesRequest(rate_table="std"), OPEN),
    Spec(RS + "DeleteRate", lambda w, t: pb.DeleteRateRequest(rate_table="std", prefix=_fresh_rate(w)),
         ADMIN_ONLY, audited=True),
    Spec(RS + "ImportRates", lambda w, t: pb.ImportRatesRequest(
        rate_table="std", csv=f"55{next(_seq)},0.01\n".encode()), ADMIN_ONLY, audited=True),
    Spec(RS + "QuoteCall", lambda w, t: pb.QuoteCallRequest(card_number=w.card_of(t), number="4420",
                                                            duration_seconds=60), TENANT, BOTH),
    Spec(RS + "QuoteCall", lambda w, t: pb.QuoteCallRequest(rate_table="std", number="4420",
                                                            duration_seconds=60, balance_micro=1_000_000),
         OPEN, variant="rate_table"),
    # tax profiles
    Spec(TX + "CreateTaxProfile", lambda w, t: pb.TaxProfile(name=uniq("t"), percent_ppm=1), ADMIN_ONLY,
         audited=True),
    Spec(TX + "GetTaxProfile", lambda w, t: pb.TaxProfileRef(name="vat"), OPEN),
    Spec(TX + "ListTaxProfiles", lambda w, t: pb.ListTaxProfilesRequest(), OPEN),
    Spec(TX + "UpdateTaxProfile", lambda w, t: pb.UpdateTaxProfileRequest(
        profile=pb.TaxProfile(name="vat", description=uniq("d")), update_mask=mask("description")),
        ADMIN_ONLY, audited=True),
    Spec(TX + "DeleteTaxProfile", lambda w, t: pb.TaxProfileRef(name=_fresh_tax(w)), ADMIN_ONLY, audited=True),
    # routing plans
    Spec(RP + "CreateRoutingPlan", lambda w, t: pb.RoutingPlan(name=uniq("p"), route="9#"), ADMIN_ONLY,
         audited=True),
    Spec(RP + "GetRoutingPlan", lambda w, t: pb.RoutingPlanRef(name="gw"), OPEN),
    Spec(RP + "ListRoutingPlans", lambda w, t: pb.ListRoutingPlansRequest(), OPEN),
    Spec(RP + "UpdateRoutingPlan", lambda w, t: pb.UpdateRoutingPlanRequest(
        plan=pb.RoutingPlan(name="gw", description=uniq("d")), update_mask=mask("description")),
        ADMIN_ONLY, audited=True),
    Spec(RP + "DeleteRoutingPlan", lambda w, t: pb.RoutingPlanRef(name=_fresh_plan(w)), ADMIN_ONLY,
         audited=True),
    # resellers: a reseller reads only its own record
    Spec(RE + "CreateReseller", lambda w, t: pb.Reseller(id=uniq("new"), name="N"), ADMIN_ONLY, audited=True),
    Spec(RE + "GetReseller", lambda w, t: pb.ResellerRef(id=OWNERS["reseller"][t]), TENANT, BOTH,
         family="reseller"),
    Spec(RE + "ListResellers", lambda w, t: pb.ListResellersRequest(), OPEN, check=_only_own_resellers),
    Spec(RE + "UpdateReseller", lambda w, t: pb.UpdateResellerRequest(
        reseller=pb.Reseller(id=OWNERS["reseller"][t], name=uniq("N")), update_mask=mask("name")),
        ADMIN_ONLY, BOTH, family="reseller", audited=True),
    Spec(RE + "DeleteReseller", lambda w, t: pb.ResellerRef(id=_fresh_reseller(w)), ADMIN_ONLY, audited=True),
    # fees
    Spec("radcore.v1.FeeService/RunFees", _run_fees_request, TENANT, BOTH, audited=True),
    # sessions: releasing another tenant's call is documented as an admin operation
    Spec("radcore.v1.SessionService/ListSessions", _list_sessions_request, OPEN, check=_only_own_sessions),
    Spec("radcore.v1.SessionService/ReleaseSession", lambda w, t: pb.ReleaseSessionRequest(id=w.open_call(t)),
         TENANT, BOTH, audited=True),
    # audit
    Spec("radcore.v1.AuditService/ListAudit", lambda w, t: pb.ListAuditRequest(
        target=f"series/{w.series_of(t)}", page_size=5), OPEN, BOTH, check=_only_own_audit),
    # tokens
    Spec("radcore.v1.TokenService/CreateToken", lambda w, t: pb.CreateTokenRequest(
        role=pb.ROLE_RESELLER, reseller=OWNERS["reseller"][t], note="m"), ADMIN_ONLY, BOTH,
        family="reseller", audited=True),
    Spec("radcore.v1.TokenService/ListTokens", lambda w, t: pb.ListTokensRequest(), OPEN,
         check=_only_own_tokens),
    Spec("radcore.v1.TokenService/RevokeToken", lambda w, t: pb.RevokeTokenRequest(id=w.fresh_token(t)),
         ADMIN_ONLY, BOTH, family="reseller", audited=True),
)


def expected(spec: Spec, caller: str, target: str) -> C:
    """The one rule table."""
    if caller in ("no_token", "bad_token"):
        return C.UNAUTHENTICATED
    if caller == "admin":
        return OK
    if spec.access == ADMIN_ONLY:
        return C.PERMISSION_DENIED
    if spec.access == OPEN:
        return OK
    return OK if OWNERS[spec.family][target] == CALLER_RESELLER[caller] else spec.foreign


# --- generation from the descriptor -------------------------------------------------------------------

METHODS = {f"{s.full_name}/{m.name}": m for s in pb.DESCRIPTOR.services_by_name.values() for m in s.methods}


def _cells() -> list[Any]:
    out = []
    for rpc in METHODS:
        specs = [s for s in SPECS if s.rpc == rpc]
        if not specs:  # a new RPC without a case: one failing cell names it
            out.append(pytest.param(rpc, None, "-", "-", id=f"{rpc.split('/')[1]}-NO-CASE"))
        for spec in specs:
            for caller in CALLERS:
                for target in spec.targets:
                    out.append(pytest.param(rpc, spec, caller, target, id=f"{spec.id}-{caller}-{target}"))
    return out


CELLS = _cells()


def test_every_rpc_has_a_case_and_every_case_an_rpc():
    assert set(METHODS) == {s.rpc for s in SPECS}


def _audit_seq(w: World) -> int:
    entries, _ = audit.list_audit(w.store, LOCAL, page_size=1)
    return entries[0].seq if entries else 0


def _new_entries(w: World, since: int) -> list[audit.AuditEntry]:
    entries, _ = audit.list_audit(w.store, LOCAL, page_size=1000)
    return [e for e in entries if e.seq > since]


def _call(w: World, rpc: str, request: Any, token: str | None) -> tuple[C, Any, str]:
    method = METHODS[rpc]
    out_cls = getattr(pb, method.output_type.name, None) or empty_pb2.Empty
    make = w.h.channel.unary_stream if method.server_streaming else w.h.channel.unary_unary
    call = make(f"/{rpc}", request_serializer=lambda m: m.SerializeToString(),
                response_deserializer=out_cls.FromString)
    md = None if token is None else [("authorization", f"Bearer {token}")]
    try:
        reply = call(request, metadata=md, timeout=30)
        if method.server_streaming:
            reply = list(reply)  # consume the whole stream
        return OK, reply, ""
    except grpc.RpcError as e:
        return e.code(), None, e.details()


@pytest.mark.parametrize("rpc,spec,caller,target", CELLS)
def test_matrix(world, rpc, spec, caller, target):
    assert spec is not None, f"{rpc} has no case in the tenant matrix: add a Spec"
    w = world
    try:
        request = spec.build(w, target)
        assert type(request).DESCRIPTOR.full_name == METHODS[rpc].input_type.full_name
        before = _audit_seq(w)
        code, reply, details = _call(w, rpc, request, w.tokens[caller])
        want = expected(spec, caller, target)
        assert code == want, f"{spec.id} as {caller} on {target}: got {code.name} ({details}), want {want.name}"
        mine = [e for e in _new_entries(w, before) if not e.actor.startswith("system:")]
        if code == OK:
            if spec.audited:
                assert any(e.rpc == rpc.split("/")[1] and e.actor == w.ids[caller] for e in mine), \
                    f"{spec.id} by {caller} succeeded without an audit entry: {mine}"
            if spec.check is not None:
                spec.check(w, caller, target, reply)
        else:
            assert mine == [], f"refused {spec.id} by {caller} still wrote audit entries: {mine}"
    finally:
        w.reset()
