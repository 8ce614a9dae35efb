"""`radcore admin series ...`: create (with a progress bar), list, show, edit, status.

The editable settings are declared once (`SETTINGS`) and become both the `create` options and the
explicit `edit` flags; `edit --set FIELD=VALUE` reaches any Series field by its proto name, and every
given field becomes one path of the UpdateSeries field mask. Which fields are immutable, and what an
edit means for existing cards, is the server's business (the proto documents it): the CLI passes the
paths through and prints the server's answer, which names the field.
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
class Setting:
    field: str            # Series field name
    flags: tuple[str, ...]
    kind: str             # text, money, uint, time, bool, status
    help: str
    metavar: str = ""


_KINDS: dict[str, Callable[[str], Any]] = {
    "text": str, "money": v.amount, "uint": v.uint, "time": v.time_arg,
}

#: Settings both `create` and `edit` take.
SETTINGS = (
    Setting("name", ("--name",), "text", "name shown to operators", "TEXT"),
    Setting("face_balance_micro", ("--face-balance", "--face-value"), "money",
            "balance every card starts with, e.g. 5.00 (on edit: descriptive only, existing cards "
            "keep their balance)", "AMOUNT"),
    Setting("rate_table", ("--rate-table",), "text", "rate table pricing the calls (same currency)",
            "NAME"),
    Setting("tax_profile", ("--tax-profile",), "text", "tax profile added on top of every call "
            "('' = none)", "NAME"),
    Setting("routing_plan", ("--routing-plan",), "text", "routing plan sent to the switch with each "
            "authorized call ('' = none)", "NAME"),
    Setting("reseller", ("--reseller",), "text", "owning reseller id ('' = the carrier; admin only)",
            "ID"),
    Setting("activation_fee_micro", ("--activation-fee",), "money",
            "charged once at first use, e.g. 0.50", "AMOUNT"),
    Setting("maintenance_fee_micro", ("--maintenance-fee",), "money",
            "charged every --maintenance-period-hours after activation", "AMOUNT"),
    Setting("maintenance_period_hours", ("--maintenance-period-hours",), "uint",
            "hours between maintenance fees", "HOURS"),
    Setting("expiry_date", ("--expiry-date",), "time",
            "hard expiry of every card: YYYY-MM-DD, ISO date-time or 'none'", "DATE"),
    Setting("expiry_period_days", ("--expiry-period-days",), "uint",
            "cards expire this many days after activation (0 = never)", "DAYS"),
    Setting("max_concurrent_calls", ("--max-concurrent-calls",), "uint",
            "simultaneous calls per card (default 1)", "N"),
    Setting("time_zone", ("--time-zone",), "text", "IANA zone for dates shown to people, e.g. "
            "Europe/Berlin (default UTC)", "ZONE"),
    Setting("language", ("--language",), "text", "h323-preferred-lang for the switch's prompts, e.g. en, es "
            "(default: none sent)", "TAG"),
    Setting("notes", ("--notes",), "text", "free text for operators", "TEXT"),
    Setting("control_panel", ("--control-panel",), "bool",
            "card holders may log in to the web portal (--no-control-panel: may not)"),
)

#: Settings fixed once the cards exist: only `create` takes them.
CREATE_ONLY = (
    Setting("currency", ("--currency",), "text", "ISO 4217 code (default: the rate table's)", "CODE"),
    Setting("pin_length", ("--pin-length",), "uint", "digits per PIN, 8..16 (default 10)", "N"),
    Setting("initial_status", ("--initial-status",), "status",
            "pending (default; activated at first use) or activated (expiry period starts now)"),
    Setting("first_serial", ("--first-serial",), "uint", "first card serial (default 0)", "N"),
)


def _add_setting(parser: argparse.ArgumentParser, s: Setting) -> None:
    if s.kind == "bool":
        parser.add_argument(*s.flags, dest=s.field, action=argparse.BooleanOptionalAction, default=None,
                            help=s.help)
    elif s.kind == "status":
        parser.add_argument(*s.flags, dest=s.field, choices=("pending", "activated"), default=None,
                            help=s.help)
    else:
        parser.add_argument(*s.flags, dest=s.field, type=_KINDS[s.kind], default=None,
                            metavar=s.metavar, help=s.help)


def _apply(series: pb.Series, field: str, value: Any) -> None:
    if field == "initial_status":
        value = v.enum_value(pb.CardStatus, value)
    setattr(series, field, value)


def register(groups: argparse._SubParsersAction) -> None:
    commands = a.add_group(groups, "series", "card series: create, list, show, edit, stop/delete",
                           "A series is a batch of cards sharing settings. Card numbers are "
                           "<series>-<serial as 9 digits>, e.g. 45-000000001.")

    p = a.add_command(commands, "create", cmd_create, "generate a new series of cards",
                      description="Generate a series. The cards are written in chunks while a progress "
                                  "bar runs; if the command is interrupted the server rolls the whole "
                                  "series back, so a series exists completely or not at all.",
                      examples="""\
  radcore admin series create 45 --name "Promo 5 USD" --quantity 10000 --face-value 5.00 --rate-table std
  radcore admin series create 46 --quantity 500 --face-value 10 --rate-table std --tax-profile vat \\
      --maintenance-fee 0.10 --maintenance-period-hours 168 --expiry-date 2026-12-31""")
    p.add_argument("number", type=v.uint, metavar="NUMBER", help="series number 1..99999 (unique)")
    p.add_argument("--quantity", "-n", type=v.uint, required=True, metavar="N", help="number of cards")
    for s in SETTINGS + CREATE_ONLY:
        _add_setting(p, s)

    p = a.add_command(commands, "list", cmd_list, "search series",
                      examples="""\
  radcore admin series list
  radcore admin series list --status all --search promo
  radcore admin series list --reseller acme --json""")
    p.add_argument("--status", action="append", metavar="STATUS",
                   choices=v.enum_labels(pb.SeriesStatus) + ["all"],
                   help="active (default), stopped, deleted or all; repeat for several")
    p.add_argument("--reseller", default="", metavar="ID", help="only this reseller's series")
    p.add_argument("--search", default="", metavar="TEXT",
                   help="name contains TEXT (any case), or the number starts with it")

    p = a.add_command(commands, "show", cmd_show, "show every setting of one series",
                      examples="  radcore admin series show 45")
    p.add_argument("number", type=v.uint, metavar="NUMBER")

    p = a.add_command(commands, "edit", cmd_edit, "change settings of a series",
                      description="Change settings (UpdateSeries). Price, tax, routing and fee changes "
                                  "apply from the next call or fee run; expiry date changes only reach "
                                  "cards not yet activated; --face-value does not rewrite existing "
                                  "balances (use 'cards adjust'). Number, quantity, PIN length, initial "
                                  "status, currency and first serial are fixed.",
                      examples="""\
  radcore admin series edit 45 --rate-table std2 --maintenance-fee 0.05
  radcore admin series edit 45 --tax-profile ''            # remove the tax profile
  radcore admin series edit 45 --set notes="reprinted batch" --set max_concurrent_calls=2
  radcore admin series edit 45 --set maintenance_fee=0.10   # amounts in currency units
  radcore admin series edit 45 --set maintenance_fee_micro=100000""")
    p.add_argument("number", type=v.uint, metavar="NUMBER")
    for s in SETTINGS:
        _add_setting(p, s)
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE", dest="assignments",
                   help="any Series field by name (repeatable); names ending in _micro take micro-units, "
                        "the same name without _micro takes an amount like 0.10")

    p = a.add_command(commands, "status", cmd_status, "activate, stop or (soft) delete a series",
                      description="stopped: every card is refused at authentication, balances are kept. "
                                  "deleted: also hidden from default searches; restorable with "
                                  "'status NUMBER active' while its rate table exists.",
                      examples="""\
  radcore admin series status 45 stopped
  radcore admin series status 45 active""")
    p.add_argument("number", type=v.uint, metavar="NUMBER")
    p.add_argument("status", choices=v.enum_labels(pb.SeriesStatus), metavar="STATUS",
                   help="active, stopped or deleted")


# --- handlers ----------------------------------------------------------------------------------------

def cmd_create(ctx: a.Context, args: argparse.Namespace) -> int:
    series = pb.Series(number=args.number, quantity=args.quantity)
    for s in SETTINGS + CREATE_ONLY:
        value = getattr(args, s.field)
        if value is not None:
            _apply(series, s.field, value)
    done: pb.Series | None = None
    with a.ProgressBar(ctx, f"Generating series {args.number}") as bar:
        for step in a.stream(ctx.service("SeriesService").CreateSeries(pb.CreateSeriesRequest(series=series))):
            bar.update(step.done, step.total)
            if step.HasField("series"):
                done = step.series
    if done is None:
        raise a.Failure("the server ended the stream without the created series")
    if ctx.json:
        a.print_json(v.to_dict(done))
    else:
        show_series(ctx, done, title=f"Created series {done.number}: {done.quantity} cards")
    return 0


def cmd_list(ctx: a.Context, args: argparse.Namespace) -> int:
    labels = args.status or []
    if "all" in labels:
        labels = v.enum_labels(pb.SeriesStatus)
    statuses = [v.enum_value(pb.SeriesStatus, s) for s in labels]
    service = ctx.service("SeriesService")
    total = 0

    def fetch(size: int, token: str) -> Any:
        nonlocal total
        response = service.ListSeries(pb.ListSeriesRequest(
            statuses=statuses, reseller=args.reseller, text=args.search, page_size=size, page_token=token))
        total = response.total_count
        return response

    found, _ = a.collect(fetch, "series", 0)
    if ctx.json:
        a.print_json({"series": [v.to_dict(s) for s in found], "total_count": total})
        return 0
    rows = [(s.number, s.name, v.label(pb.SeriesStatus.DESCRIPTOR, s.status),
             v.money(s.face_balance_micro, s.currency), s.quantity, s.rate_table, s.tax_profile,
             s.reseller, v.utc(s.created_at)) for s in found]
    a.table(ctx, ("Number", "Name", "Status", "Face value", "Cards", "Rate table", "Tax", "Reseller",
                  "Created (UTC)"), rows, right=("Number", "Face value", "Cards"),
            caption=f"{len(found)} series")
    return 0


def cmd_show(ctx: a.Context, args: argparse.Namespace) -> int:
    series = ctx.service("SeriesService").GetSeries(pb.GetSeriesRequest(number=args.number))
    if ctx.json:
        a.print_json(v.to_dict(series))
    else:
        show_series(ctx, series, title=f"Series {series.number}")
    return 0


def cmd_edit(ctx: a.Context, args: argparse.Namespace) -> int:
    series = pb.Series(number=args.number)
    paths: list[str] = []
    for s in SETTINGS:
        value = getattr(args, s.field)
        if value is not None:
            _apply(series, s.field, value)
            paths.append(s.field)
    for assignment in args.assignments:
        field, value = parse_assignment(assignment)
        _apply(series, field, value)
        paths.append(field)
    if not paths:
        raise a.UsageError("series edit: nothing to change; give an option such as --rate-table or "
                           "--set FIELD=VALUE")
    paths = list(dict.fromkeys(paths))
    request = pb.UpdateSeriesRequest(series=series, update_mask=field_mask_pb2.FieldMask(paths=paths))
    updated = ctx.service("SeriesService").UpdateSeries(request)
    if ctx.json:
        a.print_json(v.to_dict(updated))
    else:
        show_series(ctx, updated, title=f"Series {updated.number} updated: {', '.join(paths)}")
    return 0


def cmd_status(ctx: a.Context, args: argparse.Namespace) -> int:
    request = pb.SetSeriesStatusRequest(number=args.number,
                                        status=v.enum_value(pb.SeriesStatus, args.status))
    series = ctx.service("SeriesService").SetSeriesStatus(request)
    if ctx.json:
        a.print_json(v.to_dict(series))
    else:
        print(f"Series {series.number} is now {v.label(pb.SeriesStatus.DESCRIPTOR, series.status)}.")
    return 0


# --- helpers -----------------------------------------------------------------------------------------

_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


def parse_assignment(text: str) -> tuple[str, Any]:
    """`FIELD=VALUE` -> (Series field, typed value). `maintenance-fee=0.10` works too: hyphens are
    underscores, and a money field named without `_micro` takes a decimal amount."""
    name, sep, raw = text.partition("=")
    name = name.strip().replace("-", "_")
    known = pb.Series.DESCRIPTOR.fields_by_name
    if not sep or not name:
        raise a.UsageError(f"--set {text!r}: write FIELD=VALUE, e.g. --set notes=reprint")
    try:
        if name not in known and f"{name}_micro" in known:
            return f"{name}_micro", v.amount(raw)
        field = known.get(name)
        if field is None:
            raise a.UsageError(f"--set {name}: not a series field (one of: {', '.join(sorted(known))})")
        if field.enum_type is not None:
            choices = v.enum_labels(pb.CardStatus) if name == "initial_status" else []
            if raw.strip().lower() not in choices:
                raise a.UsageError(f"--set {name}: must be one of {', '.join(choices) or '(none)'}")
            return name, raw.strip().lower()
        if field.type == field.TYPE_BOOL:
            if raw.strip().lower() not in _TRUE + _FALSE:
                raise a.UsageError(f"--set {name}: must be true or false")
            return name, raw.strip().lower() in _TRUE
        if name in v.TIME_FIELDS:
            return name, v.time_arg(raw)
        if field.type == field.TYPE_STRING:
            return name, raw
        value = int(raw.strip())
    except argparse.ArgumentTypeError as e:
        raise a.UsageError(f"--set {name}: {e}") from None
    except ValueError:
        raise a.UsageError(f"--set {name}: {raw!r} is not a whole number") from None
    if value < 0 and field.type in (field.TYPE_UINT32, field.TYPE_UINT64):
        raise a.UsageError(f"--set {name}: must not be negative")
    return name, value


def show_series(ctx: a.Context, s: pb.Series, *, title: str) -> None:
    cur = s.currency
    cards = f"{s.quantity}" if s.generated >= s.quantity else f"{s.generated} of {s.quantity} generated"
    a.fields(ctx, [
        ("Number", s.number), ("Name", s.name),
        ("Status", v.label(pb.SeriesStatus.DESCRIPTOR, s.status)),
        ("Cards", cards), ("Serials", f"{s.first_serial} .. {s.first_serial + max(s.quantity, 1) - 1}"),
        ("Currency", cur), ("Face value", v.money(s.face_balance_micro, cur)),
        ("PIN length", s.pin_length),
        ("Initial status", v.label(pb.CardStatus.DESCRIPTOR, s.initial_status)),
        ("Rate table", s.rate_table), ("Tax profile", s.tax_profile), ("Routing plan", s.routing_plan),
        ("Reseller", s.reseller),
        ("Activation fee", v.price(s.activation_fee_micro, cur)),
        ("Maintenance fee", (f"{v.price(s.maintenance_fee_micro, cur)} every "
                             f"{s.maintenance_period_hours} h") if s.maintenance_period_hours
         else v.price(s.maintenance_fee_micro, cur)),
        ("Expiry date (UTC)", v.utc(s.expiry_date) or "none"),
        ("Expiry period", f"{s.expiry_period_days} days after activation" if s.expiry_period_days
         else "none"),
        ("Max concurrent calls", s.max_concurrent_calls), ("Time zone", s.time_zone),
        ("Language", s.language or "none"),
        ("Control panel", "yes" if s.control_panel else "no"), ("Notes", s.notes),
        ("Created (UTC)", v.utc(s.created_at)), ("Updated (UTC)", v.utc(s.updated_at)),
    ], title=title)
