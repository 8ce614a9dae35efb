"""`radcore admin rates ...`: rate tables, single rates, CSV decks, and call quotes.

Prices are shown exactly (a per-minute price of 0.0125 must not read 0.01); amounts typed on the
command line are converted exactly to micro-units. `import` sends the CSV file as it is: the server
parses it (one parser for every client) and returns the errors per line, which are printed as a table.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from google.protobuf import field_mask_pb2

from control import admin as a
from control import admin_values as v
from control._proto.radcore.v1 import radcore_pb2 as pb

CATCH_ALL = ("*", "any")


def _prefix(text: str) -> str:
    """Destination prefix: digits; "" or "*" is the catch-all rate."""
    s = text.strip()
    if s in CATCH_ALL:
        return ""
    if s and not (s.isascii() and s.isdigit()):
        raise argparse.ArgumentTypeError(f"{text!r} is not a prefix of digits (use '*' for the catch-all)")
    return s


def register(groups: argparse._SubParsersAction) -> None:
    commands = a.add_group(groups, "rates", "rate tables, rates, CSV import, call quotes",
                           "A rate table prices calls by longest destination prefix. Reads are open to "
                           "every token; changes need an admin token.")

    a.add_command(commands, "tables", cmd_tables, "list rate tables",
                  examples="  radcore admin rates tables")

    p = a.add_command(commands, "create-table", cmd_create_table, "create an empty rate table",
                      examples="  radcore admin rates create-table std --currency USD --description "
                               "'retail 2025'")
    p.add_argument("name", metavar="NAME")
    p.add_argument("--currency", required=True, metavar="CODE", help="ISO 4217, e.g. USD")
    p.add_argument("--description", default="", metavar="TEXT")

    p = a.add_command(commands, "edit-table", cmd_edit_table, "change a table's description or currency",
                      description="The currency can change only while no series uses the table.",
                      examples="  radcore admin rates edit-table std --description 'retail 2026'")
    p.add_argument("name", metavar="NAME")
    p.add_argument("--description", metavar="TEXT")
    p.add_argument("--currency", metavar="CODE")

    p = a.add_command(commands, "delete-table", cmd_delete_table, "delete a rate table and its rates",
                      description="Refused while a series that is not deleted uses the table.",
                      examples="  radcore admin rates delete-table old-2019")
    p.add_argument("name", metavar="NAME")

    p = a.add_command(commands, "list", cmd_list, "list the rates of a table",
                      examples="""\
  radcore admin rates list std
  radcore admin rates list std --prefix 44 --limit 0""")
    p.add_argument("table", metavar="TABLE")
    p.add_argument("--prefix", default="", type=_prefix, metavar="DIGITS",
                   help="only prefixes starting with DIGITS")
    a.add_limit(p, 500, "rates")

    p = a.add_command(commands, "put", cmd_put, "create or replace one rate",
                      description="Create or replace the rate for (table, prefix, --from). Billing: free "
                                  "up to --grace seconds, else --min-volume seconds plus whole "
                                  "--interval steps, at PRICE per minute, plus the connection fee and "
                                  "tax; every rounding goes up. Applies to calls authorized from now on.",
                      examples="""\
  radcore admin rates put std 44 0.06 --connection-fee 0.01 --min-volume 60 --interval 60
  radcore admin rates put std 4475 0.12 --interval 1 --from 2025-07-01
  radcore admin rates put std '*' 0.25                      # catch-all for any other number""")
    p.add_argument("table", metavar="TABLE")
    p.add_argument("prefix", type=_prefix, metavar="PREFIX", help="digits; '*' is the catch-all")
    p.add_argument("price", type=v.amount, metavar="PRICE", help="price per minute, e.g. 0.0125")
    p.add_argument("--connection-fee", type=v.amount, default=0, metavar="AMOUNT")
    p.add_argument("--min-volume", type=v.uint, default=0, metavar="SECONDS",
                   help="minimum billed seconds (default 0)")
    p.add_argument("--interval", type=v.uint, default=1, metavar="SECONDS",
                   help="billing increment after the minimum (default 1)")
    p.add_argument("--grace", type=v.uint, default=0, metavar="SECONDS",
                   help="calls up to this long are free (default 0)")
    p.add_argument("--from", dest="effective_from", type=v.time_arg, default=0, metavar="WHEN",
                   help="effective from (YYYY-MM-DD or ISO date-time, UTC; default: always)")
    p.add_argument("--to", dest="effective_to", type=v.time_arg, default=0, metavar="WHEN",
                   help="effective until, exclusive (default: open-ended)")

    p = a.add_command(commands, "delete", cmd_delete, "delete one rate",
                      examples="""\
  radcore admin rates delete std 44
  radcore admin rates delete std 4475 --from 2025-07-01""")
    p.add_argument("table", metavar="TABLE")
    p.add_argument("prefix", type=_prefix, metavar="PREFIX", help="digits; '*' is the catch-all")
    p.add_argument("--from", dest="effective_from", type=v.time_arg, default=0, metavar="WHEN",
                   help="the period's start, if the prefix has several")

    p = a.add_command(commands, "import", cmd_import, "import a CSV rate deck",
                      description="Columns (header row optional, any order): prefix, price_per_minute, "
                                  "connection_fee, min_volume, interval, grace, effective_from, "
                                  "effective_to. Only prefix and price_per_minute are required. Money as "
                                  "decimals (0.0125), dates as YYYY-MM-DD, ISO date-time or epoch "
                                  "seconds. By default any bad line imports nothing and every bad line "
                                  "is listed; exit code 2.",
                      examples="""\
  radcore admin rates import std deck.csv
  radcore admin rates import std deck.csv --allow-partial
  some-converter | radcore admin rates import std -

deck.csv:
  prefix,price_per_minute,connection_fee,interval
  44,0.0600,0.01,60
  4475,0.1200,,1""")
    p.add_argument("table", metavar="TABLE")
    p.add_argument("file", metavar="FILE", help="CSV file, UTF-8; '-' reads stdin")
    p.add_argument("--allow-partial", action="store_true",
                   help="write the good lines even when some lines have errors")

    p = a.add_command(commands, "quote", cmd_quote, "price a call and its longest affordable duration",
                      description="The same arithmetic as RADIUS number authorization: the matching "
                                  "rate, the cost of --duration seconds (tax included), and the longest "
                                  "call the balance pays for.",
                      examples="""\
  radcore admin rates quote +44 20 7946 0000 --card 45-000000001
  radcore admin rates quote 4420794600 --table std --balance 5.00 --tax-profile vat --duration 300""")
    p.add_argument("number", nargs="+", metavar="NUMBER",
                   help="dialed number; '+', '00' and separators are removed")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--card", metavar="CARD", help="use this card's rates, tax and available balance")
    source.add_argument("--table", metavar="TABLE", help="use this rate table")
    p.add_argument("--balance", type=v.amount, default=0, metavar="AMOUNT",
                   help="with --table: balance for the longest duration")
    p.add_argument("--tax-profile", default="", metavar="NAME", help="with --table: tax profile")
    p.add_argument("--duration", type=v.uint, default=60, metavar="SECONDS",
                   help="call length to price (default 60)")
    p.add_argument("--at", type=v.time_arg, default=0, metavar="WHEN", help="price as of WHEN (default now)")


# --- handlers ----------------------------------------------------------------------------------------

def cmd_tables(ctx: a.Context, args: argparse.Namespace) -> int:
    tables = ctx.service("RateService").ListRateTables(pb.ListRateTablesRequest()).tables
    if ctx.json:
        a.print_json({"tables": [v.to_dict(t) for t in tables]})
        return 0
    a.table(ctx, ("Name", "Currency", "Rates", "Description", "Created (UTC)"),
            [(t.name, t.currency, t.rate_count, t.description, v.utc(t.created_at)) for t in tables],
            right=("Rates",), caption=f"{len(tables)} rate tables")
    return 0


def cmd_create_table(ctx: a.Context, args: argparse.Namespace) -> int:
    table = ctx.service("RateService").CreateRateTable(pb.CreateRateTableRequest(table=pb.RateTable(
        name=args.name, currency=args.currency.upper(), description=args.description)))
    return _print_table(ctx, table, "Created")


def cmd_edit_table(ctx: a.Context, args: argparse.Namespace) -> int:
    msg = pb.RateTable(name=args.name)
    paths = []
    for field in ("description", "currency"):
        value = getattr(args, field)
        if value is not None:
            setattr(msg, field, value.upper() if field == "currency" else value)
            paths.append(field)
    if not paths:
        raise a.UsageError("rates edit-table: nothing to change; give --description or --currency")
    table = ctx.service("RateService").UpdateRateTable(pb.UpdateRateTableRequest(
        table=msg, update_mask=field_mask_pb2.FieldMask(paths=paths)))
    return _print_table(ctx, table, "Updated")


def _print_table(ctx: a.Context, t: pb.RateTable, verb: str) -> int:
    if ctx.json:
        a.print_json(v.to_dict(t))
    else:
        print(f"{verb} rate table {t.name} ({t.currency}, {t.rate_count} rates).")
    return 0


def cmd_delete_table(ctx: a.Context, args: argparse.Namespace) -> int:
    response = ctx.service("RateService").DeleteRateTable(pb.DeleteRateTableRequest(name=args.name))
    if ctx.json:
        a.print_json({"name": args.name, "rates_deleted": response.rates_deleted})
    else:
        print(f"Deleted rate table {args.name} and its {response.rates_deleted} rates.")
    return 0


def cmd_list(ctx: a.Context, args: argparse.Namespace) -> int:
    service = ctx.service("RateService")
    table = service.GetRateTable(pb.GetRateTableRequest(name=args.table))

    def fetch(size: int, token: str) -> Any:
        return service.ListRates(pb.ListRatesRequest(rate_table=args.table, prefix=args.prefix,
                                                     page_size=size, page_token=token))

    rates, more = a.collect(fetch, "rates", args.limit)
    if ctx.json:
        a.print_json({"rate_table": v.to_dict(table), "rates": [v.to_dict(r) for r in rates],
                      "more": more})
        return 0
    cur = table.currency
    rows = [(r.prefix or "*", v.price(r.price_per_minute_micro, cur), v.price(r.connection_fee_micro, cur),
             r.min_volume, r.interval, r.grace, v.utc(r.effective_from), v.utc(r.effective_to))
            for r in rates]
    caption = f"{len(rates)} rates" + (" shown; more match (raise --limit)" if more else "")
    a.table(ctx, ("Prefix", "Per minute", "Connection", "Min s", "Interval s", "Grace s", "From (UTC)",
                  "To (UTC)"), rows, title=f"Rate table {table.name} ({cur})", caption=caption,
            right=("Per minute", "Connection", "Min s", "Interval s", "Grace s"))
    return 0


def cmd_put(ctx: a.Context, args: argparse.Namespace) -> int:
    rate = pb.Rate(prefix=args.prefix, price_per_minute_micro=args.price,
                   connection_fee_micro=args.connection_fee, min_volume=args.min_volume,
                   interval=args.interval, grace=args.grace, effective_from=args.effective_from,
                   effective_to=args.effective_to)
    saved = ctx.service("RateService").PutRate(pb.PutRateRequest(rate_table=args.table, rate=rate))
    if ctx.json:
        a.print_json(v.to_dict(saved))
    else:
        print(f"Rate {args.table}/{saved.prefix or '*'}: {v.price(saved.price_per_minute_micro)} per "
              f"minute, connection {v.price(saved.connection_fee_micro)}, billed "
              f"{saved.min_volume}/{saved.interval} s, grace {saved.grace} s.")
    return 0


def cmd_delete(ctx: a.Context, args: argparse.Namespace) -> int:
    ctx.service("RateService").DeleteRate(pb.DeleteRateRequest(
        rate_table=args.table, prefix=args.prefix, effective_from=args.effective_from))
    if ctx.json:
        a.print_json({"rate_table": args.table, "prefix": args.prefix, "deleted": True})
    else:
        print(f"Deleted rate {args.table}/{args.prefix or '*'}.")
    return 0


def cmd_import(ctx: a.Context, args: argparse.Namespace) -> int:
    try:
        if args.file == "-":
            data = sys.stdin.buffer.read()
        else:
            with open(args.file, "rb") as f:
                data = f.read()
    except OSError as e:
        raise a.UsageError(f"rates import: cannot read {args.file}: {e.strerror}") from None
    if len(data) > a.MAX_MESSAGE_BYTES - 4096:
        raise a.UsageError(f"rates import: {args.file} is larger than {a.MAX_MESSAGE_BYTES >> 20} MiB; "
                           "split the deck into several files")
    response = ctx.service("RateService").ImportRates(pb.ImportRatesRequest(
        rate_table=args.table, csv=data, allow_partial=args.allow_partial))
    errors = list(response.errors)
    if ctx.json:
        a.print_json(v.to_dict(response))
    elif errors:
        a.table(ctx, ("Line", "Field", "Problem"), [(e.line, e.field, e.message) for e in errors],
                title=f"{len(errors)} lines with errors in {args.file}", right=("Line",))
    if not errors:
        if not ctx.json:
            print(f"Imported {response.imported} rates into {args.table}.")
        return 0
    if args.allow_partial:
        ctx.note(f"radcore: imported {response.imported} rates into {args.table}; skipped "
                 f"{len(errors)} lines with errors")
        return 0
    raise a.UsageError(f"rates import: {len(errors)} lines with errors (first: line {errors[0].line}, "
                       f"{errors[0].field}: {errors[0].message}); nothing was imported "
                       "(fix them, or give --allow-partial)")


def cmd_quote(ctx: a.Context, args: argparse.Namespace) -> int:
    if args.card and (args.balance or args.tax_profile):
        raise a.UsageError("rates quote: --balance and --tax-profile go with --table; a card uses its "
                           "own balance and tax")
    request = pb.QuoteCallRequest(number=" ".join(args.number), duration_seconds=args.duration,
                                  at=args.at)
    if args.card:
        request.card_number = args.card
    else:
        request.rate_table = args.table
        request.balance_micro = args.balance
        request.tax_profile = args.tax_profile
    q = ctx.service("RateService").QuoteCall(request)
    if ctx.json:
        a.print_json(v.to_dict(q))
        return 0
    cur, r = q.currency, q.rate
    a.fields(ctx, [
        ("Number rated", q.normalized_number),
        ("Matched prefix", r.prefix or "* (catch-all)"),
        ("Rate", (f"{v.price(r.price_per_minute_micro, cur)}/min, connection "
                  f"{v.price(r.connection_fee_micro, cur)}, billed {r.min_volume}/{r.interval} s, "
                  f"grace {r.grace} s")),
        ("Tax", v.percent(q.tax_ppm)),
        (f"Cost of {args.duration} s", f"{v.price(q.cost_micro, cur)} (billed {q.billed_seconds} s)"),
        ("Available balance", v.money(q.available_micro, cur)),
        ("Max duration", f"{q.max_duration_seconds} s ({v.duration(q.max_duration_seconds)})"),
    ], title="Quote")
    return 0
