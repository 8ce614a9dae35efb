"""`radcore admin taxes|routes|resellers ...`: the small named records series refer to.

The three services have the same five RPCs (create, get, list, update, delete) and differ only in
names, key field and settable fields, so one `Catalog` description per kind drives one set of
handlers. Reads are open to every token; writes need an admin token (the server enforces it).
Deleting a record that a live series uses is refused by the server (FAILED_PRECONDITION, exit 2).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from google.protobuf import field_mask_pb2

from control import admin as a
from control import admin_values as v
from control._proto.radcore.v1 import radcore_pb2 as pb


@dataclass(frozen=True)
class Option:
    field: str
    flag: str
    type: Callable[[str], Any]
    help: str
    metavar: str
    required: bool = False   # on create


@dataclass(frozen=True)
class Catalog:
    group: str              # CLI word: "taxes"
    label: str              # for people: "tax profile"
    noun: str               # RPC noun: "TaxProfile"
    plural: str             # "TaxProfiles"
    key: str                # "name" or "id"
    list_field: str         # ListTaxProfilesResponse.profiles
    update_field: str       # UpdateTaxProfileRequest.profile
    options: tuple[Option, ...]
    columns: tuple[str, ...]
    row: Callable[[Any], tuple[Any, ...]]
    examples: str

    @property
    def service(self) -> str:
        return f"{self.noun}Service"

    @property
    def message(self) -> Any:
        return getattr(pb, self.noun)

    @property
    def ref(self) -> Any:
        return getattr(pb, f"{self.noun}Ref")


CATALOGS = (
    Catalog("taxes", "tax profile", "TaxProfile", "TaxProfiles", "name", "profiles", "profile",
            (Option("percent_ppm", "--percent", v.parse_percent,
                    "tax added on top of each call charge, e.g. 20 or 7.5", "PERCENT", required=True),
             Option("description", "--description", str, "free text", "TEXT")),
            ("Name", "Tax", "Description"),
            lambda r: (r.name, v.percent(r.percent_ppm), r.description),
            """\
  radcore admin taxes create vat --percent 20 --description "VAT UK"
  radcore admin taxes edit vat --percent 17.5
  radcore admin taxes list"""),
    Catalog("routes", "routing plan", "RoutingPlan", "RoutingPlans", "name", "plans", "plan",
            (Option("route", "--route", str, "sent to the switch with each authorized call through the "
                    "NAS profile's routing_avpair, e.g. a tech prefix", "TEXT", required=True),
             Option("description", "--description", str, "free text", "TEXT")),
            ("Name", "Route", "Description"),
            lambda r: (r.name, r.route, r.description),
            """\
  radcore admin routes create premium --route "0011#" --description "carrier A"
  radcore admin routes edit premium --route "0012#"
  radcore admin routes delete premium"""),
    Catalog("resellers", "reseller", "Reseller", "Resellers", "id", "resellers", "reseller",
            (Option("name", "--name", str, "display name", "TEXT", required=True),),
            ("ID", "Name", "Created (UTC)"),
            lambda r: (r.id, r.name, v.utc(r.created_at)),
            """\
  radcore admin resellers create acme --name "ACME Telecom"
  radcore admin token create --role reseller --reseller acme --note "ACME portal"
  radcore admin resellers list"""),
)


def register(groups: argparse._SubParsersAction) -> None:
    for cat in CATALOGS:
        _register(groups, cat)


def _register(groups: argparse._SubParsersAction, cat: Catalog) -> None:
    key = cat.key.upper()
    commands = a.add_group(groups, cat.group, f"{cat.label}s: list, create, show, edit, delete")

    a.add_command(commands, "list", _handler(_list, cat), f"list {cat.label}s",
                  examples=f"  radcore admin {cat.group} list")

    p = a.add_command(commands, "create", _handler(_create, cat), f"create a {cat.label} (admin)",
                      examples=cat.examples)
    p.add_argument("key", metavar=key)
    for opt in cat.options:
        p.add_argument(opt.flag, dest=opt.field, type=opt.type, required=opt.required,
                       default=None, metavar=opt.metavar, help=opt.help)

    p = a.add_command(commands, "show", _handler(_show, cat), f"show one {cat.label}",
                      examples=f"  radcore admin {cat.group} show {key}")
    p.add_argument("key", metavar=key)

    p = a.add_command(commands, "edit", _handler(_edit, cat), f"change a {cat.label} (admin)",
                      description=f"Change a {cat.label}; only the options given change. Applies to "
                                  "calls authorized from now on.",
                      examples=cat.examples)
    p.add_argument("key", metavar=key)
    for opt in cat.options:
        p.add_argument(opt.flag, dest=opt.field, type=opt.type, default=None, metavar=opt.metavar,
                       help=opt.help)

    p = a.add_command(commands, "delete", _handler(_delete, cat), f"delete a {cat.label} (admin)",
                      description=f"Refused while a series that is not deleted uses the {cat.label}"
                                  + (" or it holds an unrevoked token." if cat.key == "id" else "."),
                      examples=f"  radcore admin {cat.group} delete {key}")
    p.add_argument("key", metavar=key)


def _handler(fn: Callable[..., int], cat: Catalog) -> Callable[[a.Context, argparse.Namespace], int]:
    return lambda ctx, args: fn(ctx, args, cat)


def _print(ctx: a.Context, cat: Catalog, records: list[Any], *, title: str = "") -> None:
    if ctx.json:
        a.print_json({cat.list_field: [v.to_dict(r) for r in records]})
    else:
        a.table(ctx, cat.columns, [cat.row(r) for r in records], title=title,
                caption="" if title else f"{len(records)} {cat.label}s")


def _list(ctx: a.Context, args: argparse.Namespace, cat: Catalog) -> int:
    response = getattr(ctx.service(cat.service), f"List{cat.plural}")(
        getattr(pb, f"List{cat.plural}Request")())
    _print(ctx, cat, list(getattr(response, cat.list_field)))
    return 0


def _one(ctx: a.Context, cat: Catalog, record: Any, title: str) -> int:
    if ctx.json:
        a.print_json(v.to_dict(record))
    else:
        a.fields(ctx, zip(cat.columns, cat.row(record)), title=title)
    return 0


def _create(ctx: a.Context, args: argparse.Namespace, cat: Catalog) -> int:
    msg = cat.message(**{cat.key: args.key})
    for opt in cat.options:
        if getattr(args, opt.field) is not None:
            setattr(msg, opt.field, getattr(args, opt.field))
    record = getattr(ctx.service(cat.service), f"Create{cat.noun}")(msg)
    return _one(ctx, cat, record, f"Created {cat.label} {args.key}")


def _show(ctx: a.Context, args: argparse.Namespace, cat: Catalog) -> int:
    record = getattr(ctx.service(cat.service), f"Get{cat.noun}")(cat.ref(**{cat.key: args.key}))
    return _one(ctx, cat, record, f"{cat.label.capitalize()} {args.key}")


def _edit(ctx: a.Context, args: argparse.Namespace, cat: Catalog) -> int:
    msg = cat.message(**{cat.key: args.key})
    paths = []
    for opt in cat.options:
        value = getattr(args, opt.field)
        if value is not None:
            setattr(msg, opt.field, value)
            paths.append(opt.field)
    if not paths:
        flags = " or ".join(opt.flag for opt in cat.options)
        raise a.UsageError(f"{cat.group} edit: nothing to change; give {flags}")
    request = getattr(pb, f"Update{cat.noun}Request")(
        **{cat.update_field: msg, "update_mask": field_mask_pb2.FieldMask(paths=paths)})
    record = getattr(ctx.service(cat.service), f"Update{cat.noun}")(request)
    return _one(ctx, cat, record, f"Updated {cat.label} {args.key}")


def _delete(ctx: a.Context, args: argparse.Namespace, cat: Catalog) -> int:
    getattr(ctx.service(cat.service), f"Delete{cat.noun}")(cat.ref(**{cat.key: args.key}))
    if ctx.json:
        a.print_json({cat.key: args.key, "deleted": True})
    else:
        print(f"Deleted {cat.label} {args.key}.")
    return 0
