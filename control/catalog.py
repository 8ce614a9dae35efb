"""Tax profiles, routing plans and resellers: small named records that series refer to.

All three behave the same way, so one set of functions serves them, parameterised by a `Kind`:
create / get / list / update / delete, each one transaction with its audit entry, each bumping
`config_version` so RADIUS workers drop their cached copies (a new tax rate applies to the next
authorization). Deleting a record that a series which is not deleted still refers to is refused
(`Refused`): a live card must never point at nothing. Deleted series are not counted, like
`radcore.rating.delete_rate_table` does; restoring such a series re-checks its references.

Reads of tax profiles and routing plans are open to every principal (resellers pick them for their
series); a reseller reads only its own reseller record. Every write is admin-only.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, replace
from typing import Any, Callable

import lmdb

from control import audit
from control.auth import Principal, check_owner, require_admin, token_records
from radcore.clock import Clock
from radcore.errors import Conflict, Invalid, NotFound, RadcoreError
from radcore.store import (Reseller, RoutingPlan, Series, SeriesStatus, Store, TaxProfile, bump_version,
                           name_key)

_RESELLER_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")
MAX_PPM = 1_000_000
#: A route travels in one RADIUS attribute (253 bytes) next to its "name=" prefix.
MAX_ROUTE_BYTES = 200


class Refused(RadcoreError):
    """The change is valid but the object's state forbids it now (in use, already finished)."""


def _text(name: str, value: Any, limit: int) -> str:
    if not isinstance(value, str) or len(value) > limit:
        raise Invalid(name, f"must be text of at most {limit} characters")
    return value


def _check_tax(rec: TaxProfile) -> None:
    name_key(rec.name, "name")
    if type(rec.percent_ppm) is not int or not 0 <= rec.percent_ppm <= MAX_PPM:
        raise Invalid("percent_ppm", f"must be 0..{MAX_PPM} (parts per million; 20% = 200000)")
    _text("description", rec.description, 500)


def _check_route(rec: RoutingPlan) -> None:
    name_key(rec.name, "name")
    if not isinstance(rec.route, str) or len(rec.route.encode()) > MAX_ROUTE_BYTES:
        raise Invalid("route", f"must be text of at most {MAX_ROUTE_BYTES} bytes")
    if any(ord(c) < 32 for c in rec.route):
        raise Invalid("route", "must not contain control characters")
    _text("description", rec.description, 500)


def _check_reseller(rec: Reseller) -> None:
    if not isinstance(rec.id, str) or not _RESELLER_ID.fullmatch(rec.id):
        raise Invalid("id", "must be 1-64 letters, digits, '.', '_' or '-'")
    _text("name", rec.name, 200)


@dataclass(frozen=True, slots=True)
class Kind:
    """What differs between the three record types."""

    label: str             # for messages: "tax profile"
    noun: str              # for RPC names and audit targets: "TaxProfile", "tax_profile"
    target: str
    key_field: str         # "name" or "id"
    db: str                # Store attribute
    cls: type
    series_field: str      # Series attribute that refers to this kind
    editable: tuple[str, ...]
    check: Callable[[Any], None]
    tenant_scoped: bool = False


TAX_PROFILES = Kind("tax profile", "TaxProfile", "tax_profile", "name", "tax_profiles", TaxProfile,
                    "tax_profile", ("percent_ppm", "description"), _check_tax)
ROUTING_PLANS = Kind("routing plan", "RoutingPlan", "routing_plan", "name", "routing_plans", RoutingPlan,
                     "routing_plan", ("route", "description"), _check_route)
RESELLERS = Kind("reseller", "Reseller", "reseller", "id", "resellers", Reseller, "reseller", ("name",),
                 _check_reseller, tenant_scoped=True)


def _key(kind: Kind, name: str) -> bytes:
    return name_key(name, kind.key_field)


def _read(txn: lmdb.Transaction, store: Store, kind: Kind, name: str) -> Any:
    try:
        raw = txn.get(_key(kind, name), db=getattr(store, kind.db))
    except lmdb.Error as e:
        raise store.error(e) from e
    if raw is None:
        raise NotFound(f"{kind.label} {name!r} does not exist")
    return kind.cls.from_bytes(raw)


def _name(kind: Kind, rec: Any) -> str:
    return getattr(rec, kind.key_field)


def create(store: Store, principal: Principal, kind: Kind, rec: Any, *, clock: Clock) -> Any:
    require_admin(principal, f"creating a {kind.label}")
    kind.check(rec)
    now = clock()
    if kind is RESELLERS:
        rec = replace(rec, created_at=now)
    with store.transaction(write=True) as txn:
        key = _key(kind, _name(kind, rec))
        if not txn.put(key, rec.to_bytes(), db=getattr(store, kind.db), overwrite=False):
            raise Conflict(f"{kind.label} {_name(kind, rec)!r} already exists")
        bump_version(txn, store)
        audit.record(txn, store, principal, f"Create{kind.noun}", f"{kind.target}/{_name(kind, rec)}",
                     now=now, tenant=_name(kind, rec) if kind.tenant_scoped else "", after=asdict(rec))
    return rec


def get(store: Store, principal: Principal, kind: Kind, name: str) -> Any:
    if kind.tenant_scoped:
        check_owner(principal, name, f"{kind.label} {name!r}")
    with store.transaction() as txn:
        return _read(txn, store, kind, name)


def list_all(store: Store, principal: Principal, kind: Kind) -> list[Any]:
    """All records by name (there are tens of them, not thousands: no paging)."""
    with store.transaction() as txn:
        try:
            recs = [kind.cls.from_bytes(raw) for raw in txn.cursor(db=getattr(store, kind.db))
                    .iternext(keys=False)]
        except lmdb.Error as e:
            raise store.error(e) from e
    if kind.tenant_scoped and not principal.is_admin:
        recs = [r for r in recs if _name(kind, r) == principal.reseller]
    return recs


def update(store: Store, principal: Principal, kind: Kind, name: str, changes: dict[str, Any], *,
           clock: Clock) -> Any:
    """Apply `changes` (field -> new value) to the editable fields; anything else is Invalid."""
    require_admin(principal, f"changing a {kind.label}")
    if not changes:
        raise Invalid("update_mask", "names no field to change")
    for field in changes:
        if field not in kind.editable:
            raise Invalid(field, f"cannot be changed on a {kind.label} (editable: "
                                 f"{', '.join(kind.editable)})")
    now = clock()
    with store.transaction(write=True) as txn:
        old = _read(txn, store, kind, name)
        new = replace(old, **changes)
        kind.check(new)
        txn.put(_key(kind, name), new.to_bytes(), db=getattr(store, kind.db))
        bump_version(txn, store)
        before, after = audit.diff(asdict(old), asdict(new))
        audit.record(txn, store, principal, f"Update{kind.noun}", f"{kind.target}/{name}", now=now,
                     tenant=name if kind.tenant_scoped else "", before=before, after=after)
    return new


def series_using(txn: lmdb.Transaction, store: Store, field: str, value: str) -> list[int]:
    """Numbers of the series that are not deleted and whose `field` equals `value`."""
    try:
        return [s.number for s in map(Series.from_bytes, txn.cursor(db=store.series).iternext(keys=False))
                if getattr(s, field) == value and s.status != SeriesStatus.DELETED]
    except lmdb.Error as e:
        raise store.error(e) from e


def delete(store: Store, principal: Principal, kind: Kind, name: str, *, clock: Clock) -> None:
    require_admin(principal, f"deleting a {kind.label}")
    now = clock()
    with store.transaction(write=True) as txn:
        old = _read(txn, store, kind, name)
        users = series_using(txn, store, kind.series_field, name)
        if users:
            raise Refused(f"{kind.label} {name!r} is used by series {', '.join(map(str, users[:20]))}")
        if kind is RESELLERS:
            _refuse_live_tokens(txn, store, name)
        txn.delete(_key(kind, name), db=getattr(store, kind.db))
        bump_version(txn, store)
        audit.record(txn, store, principal, f"Delete{kind.noun}", f"{kind.target}/{name}", now=now,
                     tenant=name if kind.tenant_scoped else "", before=asdict(old))


def _refuse_live_tokens(txn: lmdb.Transaction, store: Store, reseller: str) -> None:
    live = [rec.id for _, rec in token_records(txn, store) if rec.reseller == reseller and not rec.revoked]
    if live:
        raise Refused(f"reseller {reseller!r} still has tokens {', '.join(live)}: revoke them first")


def check_references(txn: lmdb.Transaction, store: Store, series: Series) -> None:
    """Every named record the series points at exists (Invalid naming the field otherwise)."""
    for field, kind in (("tax_profile", TAX_PROFILES), ("routing_plan", ROUTING_PLANS),
                        ("reseller", RESELLERS)):
        value = getattr(series, field)
        try:
            if value and txn.get(_key(kind, value), db=getattr(store, kind.db)) is None:
                raise Invalid(field, f"{kind.label} {value!r} does not exist")
        except lmdb.Error as e:
            raise store.error(e) from e


__all__ = ["Kind", "Refused", "TAX_PROFILES", "ROUTING_PLANS", "RESELLERS", "create", "get", "list_all",
           "update", "delete", "series_using", "check_references"]
