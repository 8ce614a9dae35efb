"""gRPC servicers: translate messages to domain calls and domain errors to status codes, nothing else.

No LMDB access and no business rule lives here; each RPC converts its request, calls one function of
control.series / cards / rates / catalog / fees / export / sessions / audit / auth, and converts the
result. Enums on the wire are the domain values plus one (proto3 reserves 0 for "unspecified").
Money fields are the domain fields with a `_micro` suffix, which is what the generic converters rely on.

`ERRORS` is the one table from domain exceptions to status codes.
"""

from __future__ import annotations

import functools
import json
import logging
from enum import IntEnum
from typing import Any, Callable

import grpc
import lmdb
from google.protobuf import empty_pb2

from control import audit, catalog, export, fees, rates, sessions
from control import auth as tokens
from control import cards as card_ops
from control import series as series_ops
from control._proto.radcore.v1 import radcore_pb2 as pb
from control._proto.radcore.v1 import radcore_pb2_grpc as pb_grpc
from control.auth import Principal, Unauthenticated, principal_of
from control.catalog import Refused
from radcore.clock import Clock
from radcore.config import PrepaidConfig
from radcore.errors import Conflict, InsufficientBalance, Invalid, NotFound, StoreError
from radcore.keys import KeyRing
from radcore.rating import Rate
from radcore.store import CardStatus, RateTable, Series, SeriesStatus, Store

log = logging.getLogger(__name__)
Code = grpc.StatusCode

#: Domain exception -> status code; the first matching row wins.
ERRORS: tuple[tuple[type[BaseException], grpc.StatusCode], ...] = (
    (Unauthenticated, Code.UNAUTHENTICATED),
    (NotFound, Code.NOT_FOUND),
    (Invalid, Code.INVALID_ARGUMENT),
    (Conflict, Code.ALREADY_EXISTS),
    (Refused, Code.FAILED_PRECONDITION),
    (InsufficientBalance, Code.FAILED_PRECONDITION),
    (PermissionError, Code.PERMISSION_DENIED),
    (StoreError, Code.UNAVAILABLE),
)


def status_for(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    for cls, code in ERRORS:
        if isinstance(exc, cls):
            if cls is StoreError and (isinstance(exc.__cause__, lmdb.MapFullError)
                                      or "map is full" in str(exc)):
                code = Code.RESOURCE_EXHAUSTED
            return code, str(exc)
    log.exception("unexpected error in RPC", exc_info=exc)
    return Code.INTERNAL, f"internal error: {type(exc).__name__}"


def _abort(context: grpc.ServicerContext, exc: Exception) -> None:
    code, message = status_for(exc)
    context.abort(code, message)


def unary(fn: Callable) -> Callable:
    @functools.wraps(fn)
    def handler(self: Any, request: Any, context: grpc.ServicerContext) -> Any:
        try:
            return fn(self, request, context, principal_of(context))
        except Exception as e:  # noqa: BLE001 - every error leaves as a status, mapped above
            _abort(context, e)
    return handler


def streaming(fn: Callable) -> Callable:
    @functools.wraps(fn)
    def handler(self: Any, request: Any, context: grpc.ServicerContext) -> Any:
        try:
            yield from fn(self, request, context, principal_of(context))
        except Exception as e:  # noqa: BLE001
            _abort(context, e)
    return handler


# --- converters -------------------------------------------------------------------------------------

def to_pb(msg_cls: Any, obj: Any, **overrides: Any) -> Any:
    """Fill `msg_cls` from same-named attributes of `obj` (`x_micro` <- `x`, enums + 1)."""
    kwargs = {}
    for field in msg_cls.DESCRIPTOR.fields:
        if field.name in overrides:
            continue
        attr = field.name.removesuffix("_micro")
        if hasattr(obj, attr):
            value = getattr(obj, attr)
            kwargs[field.name] = int(value) + 1 if isinstance(value, IntEnum) else value
    kwargs.update(overrides)
    return msg_cls(**kwargs)


def _enum(value: int, enum: type[IntEnum], field: str, default: IntEnum | None = None) -> Any:
    if value == 0:
        if default is None:
            raise Invalid(field, "must be set")
        return default
    try:
        return enum(value - 1)
    except ValueError as e:
        raise Invalid(field, f"unknown value {value}") from e


def changes_from(msg: Any, mask: Any, *, renames: dict[str, str] | None = None) -> dict[str, Any]:
    """FieldMask paths -> {domain field: new value}; an unknown path is Invalid naming it."""
    names = {f.name for f in msg.DESCRIPTOR.fields}
    out = {}
    for path in mask.paths:
        if path not in names:
            raise Invalid(path, "is not a field of " + msg.DESCRIPTOR.name)
        out[(renames or {}).get(path, path.removesuffix("_micro"))] = getattr(msg, path)
    return out


def series_from_pb(msg: pb.Series) -> Series:
    fields = {f.name.removesuffix("_micro"): getattr(msg, f.name) for f in msg.DESCRIPTOR.fields
              if f.name not in ("status", "initial_status", "created_at", "updated_at", "generated")}
    return Series(**fields, initial_status=_enum(msg.initial_status, CardStatus, "initial_status",
                                                 CardStatus.PENDING))


def card_pb(v: card_ops.CardView) -> pb.Card:
    return to_pb(pb.Card, v.card, number=v.number, series=v.series, serial=v.serial, currency=v.currency,
                 pin=v.pin, available_micro=v.card.available)


def card_filter(msg: pb.CardFilter) -> card_ops.CardFilter:
    return card_ops.CardFilter(
        series=msg.series, statuses=tuple(_enum(s, CardStatus, "statuses") for s in msg.statuses),
        number_prefix=msg.number_prefix, pin=msg.pin,
        balance_min=msg.balance_min_micro if msg.HasField("balance_min_micro") else None,
        balance_max=msg.balance_max_micro if msg.HasField("balance_max_micro") else None,
        activated_from=msg.activated_from, activated_to=msg.activated_to)


def rate_from_pb(msg: pb.Rate) -> Rate:
    return Rate(prefix=msg.prefix, price_per_minute=msg.price_per_minute_micro,
                connection_fee=msg.connection_fee_micro, min_volume=msg.min_volume,
                interval=msg.interval or 1, grace=msg.grace, effective_from=msg.effective_from,
                effective_to=msg.effective_to)


def session_pb(v: sessions.SessionView) -> pb.CallSession:
    return to_pb(pb.CallSession, v.session, id=v.id, card_number=v.card_number, nas=v.nas,
                 call_id=v.call_id, session_time=v.session.last_session_time)


_ROLES = {tokens.ADMIN: pb.ROLE_ADMIN, tokens.RESELLER: pb.ROLE_RESELLER}


def token_pb(rec: tokens.TokenRecord) -> pb.Token:
    return to_pb(pb.Token, rec, role=_ROLES.get(rec.role, pb.ROLE_UNSPECIFIED))


def _json(doc: Any) -> str:
    return "" if doc is None else json.dumps(doc, sort_keys=True)


# --- servicers --------------------------------------------------------------------------------------

class App:
    """What every servicer needs; one instance per server."""

    def __init__(self, store: Store, keyring: KeyRing, clock: Clock, prepaid: PrepaidConfig | None = None):
        self.store, self.keyring, self.clock = store, keyring, clock
        self.prepaid = prepaid or PrepaidConfig()


class _Servicer:
    def __init__(self, app: App):
        self.app = app
        self.store, self.keyring, self.clock = app.store, app.keyring, app.clock


class SeriesService(_Servicer, pb_grpc.SeriesServiceServicer):
    @streaming
    def CreateSeries(self, request: Any, context: Any, who: Principal) -> Any:
        steps = series_ops.create_series(self.store, self.keyring, who, series_from_pb(request.series),
                                         clock=self.clock)
        try:
            for step in steps:
                if step.series is not None:
                    yield pb.CreateSeriesProgress(done=step.done, total=step.total,
                                                  series=to_pb(pb.Series, step.series))
                elif not context.is_active():
                    return  # cancelled: closing `steps` rolls the series back
                else:
                    yield pb.CreateSeriesProgress(done=step.done, total=step.total)
        finally:
            steps.close()

    @unary
    def GetSeries(self, request: Any, context: Any, who: Principal) -> Any:
        return to_pb(pb.Series, series_ops.get(self.store, who, request.number))

    @unary
    def ListSeries(self, request: Any, context: Any, who: Principal) -> Any:
        found, token, total = series_ops.list_series(
            self.store, who, statuses=tuple(_enum(s, SeriesStatus, "statuses") for s in request.statuses),
            reseller=request.reseller, text=request.text, page_size=request.page_size,
            page_token=request.page_token)
        return pb.ListSeriesResponse(series=[to_pb(pb.Series, s) for s in found], next_page_token=token,
                                     total_count=total)

    @unary
    def UpdateSeries(self, request: Any, context: Any, who: Principal) -> Any:
        changes = changes_from(request.series, request.update_mask)
        return to_pb(pb.Series, series_ops.update_series(self.store, who, request.series.number, changes,
                                                         clock=self.clock))

    @unary
    def SetSeriesStatus(self, request: Any, context: Any, who: Principal) -> Any:
        status = _enum(request.status, SeriesStatus, "status")
        return to_pb(pb.Series, series_ops.set_status(self.store, who, request.number, status,
                                                      clock=self.clock))


class CardService(_Servicer, pb_grpc.CardServiceServicer):
    @unary
    def ListCards(self, request: Any, context: Any, who: Principal) -> Any:
        found, token = card_ops.list_cards(self.store, self.keyring, who, card_filter(request.filter),
                                           include_pins=request.include_pins, page_size=request.page_size,
                                           page_token=request.page_token, clock=self.clock)
        return pb.ListCardsResponse(cards=[card_pb(v) for v in found], next_page_token=token)

    @unary
    def GetCard(self, request: Any, context: Any, who: Principal) -> Any:
        return card_pb(card_ops.get_card(self.store, self.keyring, who, request.number,
                                         include_pin=request.include_pin, clock=self.clock))

    @unary
    def UpdateCard(self, request: Any, context: Any, who: Principal) -> Any:
        status = (_enum(request.status, CardStatus, "status") if request.HasField("status") else None)
        return card_pb(card_ops.update_card(self.store, who, request.number, status=status,
                                            balance_delta=request.balance_adjustment_micro,
                                            reason=request.reason, unlock=request.unlock,
                                            clock=self.clock))

    @streaming
    def ExportCards(self, request: Any, context: Any, who: Principal) -> Any:
        fmt = "csv" if request.format == pb.EXPORT_FORMAT_CSV else "xlsx"
        events = export.export_cards(self.store, self.keyring, who, card_filter(request.filter), fmt=fmt,
                                     rows_per_sheet=request.rows_per_sheet or export.XLSX_MAX_ROWS,
                                     clock=self.clock)
        try:
            for ev in events:
                if not context.is_active():
                    return
                if isinstance(ev, export.Chunk):
                    yield pb.ExportCardsResponse(chunk=ev.data)
                elif isinstance(ev, export.Rows):
                    yield pb.ExportCardsResponse(progress_rows=ev.count)
                elif isinstance(ev, export.Started):
                    yield pb.ExportCardsResponse(started=pb.ExportStarted(
                        filename=ev.filename, content_type=ev.content_type))
                else:
                    yield pb.ExportCardsResponse(finished=pb.ExportFinished(
                        rows=ev.rows, sheets=ev.sheets, bytes=ev.size))
        finally:
            events.close()


def _table_pb(table: RateTable, count: int) -> pb.RateTable:
    return to_pb(pb.RateTable, table, rate_count=count)


class RateService(_Servicer, pb_grpc.RateServiceServicer):
    @unary
    def CreateRateTable(self, request: Any, context: Any, who: Principal) -> Any:
        t = request.table
        table = RateTable(name=t.name, currency=t.currency, description=t.description)
        return _table_pb(rates.create_rate_table(self.store, who, table, clock=self.clock), 0)

    @unary
    def GetRateTable(self, request: Any, context: Any, who: Principal) -> Any:
        return _table_pb(*rates.get_rate_table(self.store, who, request.name))

    @unary
    def ListRateTables(self, request: Any, context: Any, who: Principal) -> Any:
        return pb.ListRateTablesResponse(tables=[_table_pb(t, n)
                                                 for t, n in rates.list_rate_tables(self.store, who)])

    @unary
    def UpdateRateTable(self, request: Any, context: Any, who: Principal) -> Any:
        changes = changes_from(request.table, request.update_mask)
        rates.update_rate_table(self.store, who, request.table.name, changes, clock=self.clock)
        return _table_pb(*rates.get_rate_table(self.store, who, request.table.name))

    @unary
    def DeleteRateTable(self, request: Any, context: Any, who: Principal) -> Any:
        removed = rates.delete_rate_table(self.store, who, request.name, clock=self.clock)
        return pb.DeleteRateTableResponse(rates_deleted=removed)

    @unary
    def PutRate(self, request: Any, context: Any, who: Principal) -> Any:
        rate = rates.put_rate(self.store, who, request.rate_table, rate_from_pb(request.rate),
                              clock=self.clock)
        return to_pb(pb.Rate, rate)

    @unary
    def ListRates(self, request: Any, context: Any, who: Principal) -> Any:
        found, token = rates.list_rates(self.store, who, request.rate_table, prefix=request.prefix,
                                        page_size=request.page_size, page_token=request.page_token)
        return pb.ListRatesResponse(rates=[to_pb(pb.Rate, r) for r in found], next_page_token=token)

    @unary
    def DeleteRate(self, request: Any, context: Any, who: Principal) -> Any:
        rates.delete_rate(self.store, who, request.rate_table, request.prefix, request.effective_from,
                          clock=self.clock)
        return empty_pb2.Empty()

    @unary
    def ImportRates(self, request: Any, context: Any, who: Principal) -> Any:
        report = rates.import_rates(self.store, who, request.rate_table, request.csv,
                                    allow_partial=request.allow_partial, clock=self.clock)
        return pb.ImportRatesResponse(imported=report.imported, errors=[
            pb.ImportLineError(line=e.line, field=e.field, message=e.message) for e in report.errors])

    @unary
    def QuoteCall(self, request: Any, context: Any, who: Principal) -> Any:
        source = request.WhichOneof("source")
        q = rates.quote_call(self.store, who, number=request.number, duration=request.duration_seconds,
                             card_number=request.card_number if source == "card_number" else "",
                             rate_table=request.rate_table if source == "rate_table" else "",
                             balance=request.balance_micro, tax_profile=request.tax_profile,
                             at=request.at, clock=self.clock)
        return pb.QuoteCallResponse(rate=to_pb(pb.Rate, q.rate), normalized_number=q.digits,
                                    cost_micro=q.cost, billed_seconds=q.billed_seconds,
                                    available_micro=q.available, max_duration_seconds=q.max_duration,
                                    tax_ppm=q.tax_ppm, currency=q.currency)


def _catalog_servicer(kind: catalog.Kind, base: type, msg_cls: Any, plural: str, list_field: str,
                      update_field: str) -> type:
    """One servicer class per catalog kind: the five RPCs differ only in names and message types."""
    noun, key = kind.noun, kind.key_field
    list_response = getattr(pb, f"List{plural}Response")
    empty = empty_pb2.Empty

    def record(msg: Any) -> Any:
        return kind.cls(**{f.name: getattr(msg, f.name) for f in msg.DESCRIPTOR.fields
                           if f.name != "created_at"})

    @unary
    def create(self: Any, request: Any, context: Any, who: Principal) -> Any:
        return to_pb(msg_cls, catalog.create(self.store, who, kind, record(request), clock=self.clock))

    @unary
    def get(self: Any, request: Any, context: Any, who: Principal) -> Any:
        return to_pb(msg_cls, catalog.get(self.store, who, kind, getattr(request, key)))

    @unary
    def list_(self: Any, request: Any, context: Any, who: Principal) -> Any:
        return list_response(**{list_field: [to_pb(msg_cls, r)
                                             for r in catalog.list_all(self.store, who, kind)]})

    @unary
    def update(self: Any, request: Any, context: Any, who: Principal) -> Any:
        msg = getattr(request, update_field)
        changes = changes_from(msg, request.update_mask)
        return to_pb(msg_cls, catalog.update(self.store, who, kind, getattr(msg, key), changes,
                                             clock=self.clock))

    @unary
    def delete(self: Any, request: Any, context: Any, who: Principal) -> Any:
        catalog.delete(self.store, who, kind, getattr(request, key), clock=self.clock)
        return empty()

    methods = {f"Create{noun}": create, f"Get{noun}": get, f"List{plural}": list_,
               f"Update{noun}": update, f"Delete{noun}": delete}
    return type(f"{noun}Service", (_Servicer, base), methods)


TaxProfileService = _catalog_servicer(catalog.TAX_PROFILES, pb_grpc.TaxProfileServiceServicer,
                                      pb.TaxProfile, "TaxProfiles", "profiles", "profile")
RoutingPlanService = _catalog_servicer(catalog.ROUTING_PLANS, pb_grpc.RoutingPlanServiceServicer,
                                       pb.RoutingPlan, "RoutingPlans", "plans", "plan")
ResellerService = _catalog_servicer(catalog.RESELLERS, pb_grpc.ResellerServiceServicer, pb.Reseller,
                                    "Resellers", "resellers", "reseller")


class FeeService(_Servicer, pb_grpc.FeeServiceServicer):
    @streaming
    def RunFees(self, request: Any, context: Any, who: Principal) -> Any:
        run = fees.FeeRun(self.store, self.clock, series=request.series or None, dry_run=request.dry_run,
                          principal=who)
        for done, total in run.steps():
            yield pb.RunFeesResponse(progress=pb.FeeProgress(done=done, total=total))
        r = run.report
        yield pb.RunFeesResponse(report=to_pb(pb.FeeReport, r))


class SessionService(_Servicer, pb_grpc.SessionServiceServicer):
    @unary
    def ListSessions(self, request: Any, context: Any, who: Principal) -> Any:
        found, token = sessions.list_sessions(
            self.store, who, card_number=request.card_number, nas=request.nas,
            include_stopped=request.include_stopped, page_size=request.page_size,
            page_token=request.page_token)
        return pb.ListSessionsResponse(sessions=[session_pb(v) for v in found], next_page_token=token)

    @unary
    def ReleaseSession(self, request: Any, context: Any, who: Principal) -> Any:
        after, released = sessions.release_session(self.store, self.keyring, who, request.id,
                                                   clock=self.clock, prepaid=self.app.prepaid)
        return pb.ReleaseSessionResponse(session=session_pb(after) if after else None,
                                         released_micro=released)


class AuditService(_Servicer, pb_grpc.AuditServiceServicer):
    @unary
    def ListAudit(self, request: Any, context: Any, who: Principal) -> Any:
        found, token = audit.list_audit(self.store, who, target=request.target, actor=request.actor,
                                        since=request.since, until=request.until,
                                        page_size=request.page_size, page_token=request.page_token)
        return pb.ListAuditResponse(next_page_token=token, entries=[
            to_pb(pb.AuditEntry, e, role=_ROLES.get(e.role, pb.ROLE_UNSPECIFIED),
                  before_json=_json(e.before), after_json=_json(e.after)) for e in found])


class TokenService(_Servicer, pb_grpc.TokenServiceServicer):
    @unary
    def CreateToken(self, request: Any, context: Any, who: Principal) -> Any:
        roles = {v: k for k, v in _ROLES.items()}
        if request.role not in roles:
            raise Invalid("role", "must be ROLE_ADMIN or ROLE_RESELLER")
        token_id, secret = tokens.create_token(self.store, roles[request.role], request.reseller,
                                               note=request.note, clock=self.clock, principal=who)
        rec = next(r for r in tokens.list_tokens(self.store, who) if r.id == token_id)
        return pb.CreateTokenResponse(token=token_pb(rec), secret=secret)

    @unary
    def ListTokens(self, request: Any, context: Any, who: Principal) -> Any:
        return pb.ListTokensResponse(tokens=[token_pb(r) for r in tokens.list_tokens(
            self.store, who, include_revoked=request.include_revoked)])

    @unary
    def RevokeToken(self, request: Any, context: Any, who: Principal) -> Any:
        return token_pb(tokens.revoke_token(self.store, who, request.id, clock=self.clock))


#: (servicer class, generated add_*_to_server, full service name) for every radcore service.
SERVICES = tuple(
    (cls, getattr(pb_grpc, f"add_{cls.__name__}Servicer_to_server"),
     pb.DESCRIPTOR.services_by_name[cls.__name__].full_name)
    for cls in (SeriesService, CardService, RateService, TaxProfileService, RoutingPlanService,
                ResellerService, FeeService, SessionService, AuditService, TokenService))


def add_services(server: grpc.Server, app: App) -> list[str]:
    """Register every servicer on `server`; returns the full service names (for health/reflection)."""
    for cls, add, _ in SERVICES:
        add(cls(app), server)
    return [name for _, _, name in SERVICES]
