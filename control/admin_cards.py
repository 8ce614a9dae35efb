"""`radcore admin cards ...`: search, inspect, adjust balances, block/unblock/unlock, export.

`list` and `export` share one set of filter options (`add_filters` / `card_filter`), which map 1:1
onto the proto's CardFilter. `export` writes the streamed file to a temporary file beside the target
(mode 0600: it holds PINs), fsyncs it and renames it into place, so the path never holds half a file.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from typing import Any

from control import admin as a
from control import admin_values as v
from control._proto.radcore.v1 import radcore_pb2 as pb

_CARD_STATUS = pb.CardStatus.DESCRIPTOR
_FORMATS = {"xlsx": pb.EXPORT_FORMAT_XLSX, "csv": pb.EXPORT_FORMAT_CSV}

FILTER_EXAMPLES = """\
  --series 45 --status activated --status used     (statuses combine with OR, filters with AND)
  --prefix 45-0011                                 (card number prefix, dash optional)
  --min-balance 0.01 --max-balance 2.00            (inclusive, in the series currency)
  --activated-from 2025-01-01 --activated-to 2025-01-31   (UTC; a bare end date includes that day)"""


def add_filters(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("filters (all combine with AND)")
    g.add_argument("--series", type=v.uint, default=0, metavar="N",
                   help="only this series (deleted or generating series only when named here)")
    g.add_argument("--status", action="append", choices=v.enum_labels(pb.CardStatus), metavar="STATUS",
                   help="pending, activated, expired, used or blocked; repeat for several")
    g.add_argument("--prefix", default="", metavar="DIGITS", help="card number starts with, e.g. 45-0011")
    g.add_argument("--pin", default="", metavar="PIN", help="exact PIN, spaces ignored (admin only)")
    g.add_argument("--min-balance", type=v.amount, metavar="AMOUNT", help="balance at least AMOUNT")
    g.add_argument("--max-balance", type=v.amount, metavar="AMOUNT", help="balance at most AMOUNT")
    g.add_argument("--activated-from", type=v.time_arg, default=0, metavar="WHEN",
                   help="activated at or after WHEN (YYYY-MM-DD, ISO date-time, epoch seconds)")
    g.add_argument("--activated-to", type=v.end_time_arg, default=0, metavar="WHEN",
                   help="activated at or before WHEN (a bare date includes the whole day)")


def card_filter(args: argparse.Namespace) -> pb.CardFilter:
    flt = pb.CardFilter(series=args.series, number_prefix=args.prefix, pin=args.pin,
                        statuses=[v.enum_value(pb.CardStatus, s) for s in args.status or ()],
                        activated_from=args.activated_from, activated_to=args.activated_to)
    if args.min_balance is not None:
        flt.balance_min_micro = args.min_balance
    if args.max_balance is not None:
        flt.balance_max_micro = args.max_balance
    return flt


def register(groups: argparse._SubParsersAction) -> None:
    commands = a.add_group(groups, "cards", "cards: search, show, adjust balance, block, export",
                           "Card numbers are written <series>-<serial>, e.g. 45-000000001 (the dash is "
                           "optional).")

    p = a.add_command(commands, "list", cmd_list, "search cards",
                      examples="""\
  radcore admin cards list --series 45
  radcore admin cards list --series 45 --status activated --min-balance 1.00 --limit 0
  radcore admin cards list --pin '1234 5678 90'            # which card has this PIN (admin)
  radcore admin cards list --series 45 --show-pins --json > pins.json
""" + "\nfilters:\n" + FILTER_EXAMPLES)
    add_filters(p)
    p.add_argument("--show-pins", action="store_true", help="decrypt and show PINs (audited)")
    a.add_limit(p, 100, "cards")

    p = a.add_command(commands, "show", cmd_show, "show one card",
                      examples="  radcore admin cards show 45-000000001 --show-pin")
    p.add_argument("number", metavar="CARD")
    p.add_argument("--show-pin", action="store_true", help="decrypt and show the PIN (audited)")

    p = a.add_command(commands, "adjust", cmd_adjust, "add to or take from a card's balance",
                      description="Add AMOUNT (negative to debit) to the balance in the series currency, "
                                  "exactly (at most 6 decimal places). The balance may not drop below "
                                  "what calls in progress hold. A top-up makes a used card usable "
                                  "again; a debit to zero makes it used. The reason goes to the audit "
                                  "log.",
                      examples="""\
  radcore admin cards adjust 45-000000001 5.00 --reason "top-up, ticket 1182"
  radcore admin cards adjust 45-000000001 -1.50 --reason "refund of a failed call\"""")
    p.add_argument("number", metavar="CARD")
    p.add_argument("amount", type=v.signed_amount, metavar="AMOUNT", help='e.g. 5.00 or "-1.50"')
    p.add_argument("--reason", required=True, metavar="TEXT", help="why (kept in the audit log)")

    for name, handler, help_text, example in (
            ("block", cmd_block, "refuse cards at authentication (balance is kept)",
             "  radcore admin cards block 45-000000001 45-000000002"),
            ("unblock", cmd_unblock, "let blocked cards call again (activated, or pending if never used)",
             "  radcore admin cards unblock 45-000000001"),
            ("unlock", cmd_unlock, "clear the wrong-PIN counter and lockout",
             "  radcore admin cards unlock 45-000000001")):
        p = a.add_command(commands, name, handler, help_text, examples=example)
        p.add_argument("numbers", nargs="+", metavar="CARD")

    p = a.add_command(commands, "export", cmd_export, "write cards with PINs to .xlsx or .csv",
                      description="Export matching cards (Status, Number, Balance, PIN, Activated, "
                                  "Expires, Series; times in UTC) for printing or a distributor. The "
                                  "file contains PINs: it is created mode 0600 and the export is "
                                  "audited. Written atomically: a temporary file renamed into place.",
                      examples="""\
  radcore admin cards export cards-45.xlsx --series 45
  radcore admin cards export pending.csv --series 45 --status pending
  radcore admin cards export all.xlsx --rows-per-sheet 100000 --force""")
    p.add_argument("path", metavar="PATH", help="output file; the format follows .xlsx or .csv")
    p.add_argument("--format", choices=sorted(_FORMATS), help="override the format the extension implies")
    p.add_argument("--rows-per-sheet", type=v.uint, default=0, metavar="N",
                   help="XLSX rows per sheet before continuing on the next (default: Excel's maximum)")
    p.add_argument("--force", action="store_true", help="overwrite PATH if it exists")
    add_filters(p)


# --- handlers ----------------------------------------------------------------------------------------

def cmd_list(ctx: a.Context, args: argparse.Namespace) -> int:
    service = ctx.service("CardService")
    flt = card_filter(args)

    def fetch(size: int, token: str) -> Any:
        return service.ListCards(pb.ListCardsRequest(filter=flt, include_pins=args.show_pins,
                                                     page_size=size, page_token=token))

    cards, more = a.collect(fetch, "cards", args.limit)
    if ctx.json:
        a.print_json({"cards": [v.to_dict(c) for c in cards], "more": more})
        return 0
    columns = ["Number", "Status", "Balance", "Available", "Activated (UTC)", "Expires (UTC)",
               "Last use (UTC)"] + (["PIN"] if args.show_pins else [])
    rows = [[c.number, _status(c), v.money(c.balance_micro, c.currency),
             v.money(c.available_micro, c.currency), v.utc(c.activated_at), v.utc(c.expires_at),
             v.utc(c.last_use)] + ([c.pin] if args.show_pins else []) for c in cards]
    caption = f"{len(cards)} cards"
    if more:
        caption += " shown; more match (raise --limit, or use 'cards export')"
    a.table(ctx, columns, rows, caption=caption, right=("Balance", "Available"))
    return 0


def cmd_show(ctx: a.Context, args: argparse.Namespace) -> int:
    card = ctx.service("CardService").GetCard(pb.GetCardRequest(number=args.number,
                                                                include_pin=args.show_pin))
    if ctx.json:
        a.print_json(v.to_dict(card))
    else:
        show_card(ctx, card)
    return 0


def cmd_adjust(ctx: a.Context, args: argparse.Namespace) -> int:
    request = pb.UpdateCardRequest(number=args.number, balance_adjustment_micro=args.amount,
                                   reason=args.reason)
    card = ctx.service("CardService").UpdateCard(request)
    if ctx.json:
        a.print_json({"card": v.to_dict(card), "adjustment_micro": args.amount,
                      "adjustment": v.exact(args.amount)})
        return 0
    before = card.balance_micro - args.amount
    print(f"Card {card.number}: balance {v.price(before)} -> {v.price(card.balance_micro, card.currency)} "
          f"({'+' if args.amount > 0 else ''}{v.exact(args.amount)}), status {_status(card)}.")
    return 0


def cmd_block(ctx: a.Context, args: argparse.Namespace) -> int:
    return _update_each(ctx, args.numbers, lambda n: pb.UpdateCardRequest(
        number=n, status=pb.CARD_STATUS_BLOCKED), "blocked")


def cmd_unblock(ctx: a.Context, args: argparse.Namespace) -> int:
    service = ctx.service("CardService")

    def request(number: str) -> pb.UpdateCardRequest:
        # Back to what the card was before it was blocked: pending if it never called, else activated
        # (the server refuses that for a card whose expiry has passed).
        card = service.GetCard(pb.GetCardRequest(number=number))
        status = pb.CARD_STATUS_ACTIVATED if card.activated_at else pb.CARD_STATUS_PENDING
        return pb.UpdateCardRequest(number=number, status=status)

    return _update_each(ctx, args.numbers, request, "unblocked")


def cmd_unlock(ctx: a.Context, args: argparse.Namespace) -> int:
    return _update_each(ctx, args.numbers, lambda n: pb.UpdateCardRequest(number=n, unlock=True),
                        "unlocked")


def _update_each(ctx: a.Context, numbers: list[str], build: Any, verb: str) -> int:
    """One UpdateCard per card, in order; the first refusal stops (earlier ones stay applied)."""
    service = ctx.service("CardService")
    done = []
    for number in numbers:
        card = service.UpdateCard(build(number))
        done.append(card)
        if not ctx.json:
            print(f"Card {card.number} {verb}; status {_status(card)}.")
    if ctx.json:
        a.print_json({"cards": [v.to_dict(c) for c in done]})
    return 0


def cmd_export(ctx: a.Context, args: argparse.Namespace) -> int:
    path = os.path.abspath(args.path)
    ext = os.path.splitext(path)[1].lower().lstrip(".")
    fmt = args.format or ext
    if fmt not in _FORMATS:
        raise a.UsageError(f"cards export: cannot tell the format of {args.path!r}; name it .xlsx or "
                           ".csv, or give --format")
    if args.format and ext in _FORMATS and ext != args.format:
        raise a.UsageError(f"cards export: {args.path!r} ends in .{ext} but --format is {args.format}")
    if os.path.exists(path) and not args.force:
        raise a.UsageError(f"cards export: {args.path} exists (give --force to overwrite it)")
    directory = os.path.dirname(path)
    if not os.path.isdir(directory):
        raise a.UsageError(f"cards export: directory {directory} does not exist")
    request = pb.ExportCardsRequest(filter=card_filter(args), format=_FORMATS[fmt],
                                    rows_per_sheet=args.rows_per_sheet)
    finished = _download(ctx, request, path)
    if ctx.json:
        a.print_json({"path": path, "format": fmt, "rows": finished.rows, "sheets": finished.sheets,
                      "bytes": finished.bytes})
    else:
        sheets = f" on {finished.sheets} sheets" if fmt == "xlsx" and finished.sheets > 1 else ""
        print(f"Wrote {finished.rows} cards{sheets} to {args.path} ({finished.bytes} bytes).")
    return 0


def _download(ctx: a.Context, request: pb.ExportCardsRequest, path: str) -> pb.ExportFinished:
    """Stream the export into a temporary file beside `path`, then rename it into place."""
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".part",
                                   dir=os.path.dirname(path))
    except OSError as e:
        raise a.Failure(f"cards export: cannot write in {os.path.dirname(path)}: {e.strerror}") from None
    finished: pb.ExportFinished | None = None
    try:
        with os.fdopen(fd, "wb") as out, a.ProgressBar(ctx, "Exporting cards") as bar:
            written = rows = 0
            for msg in a.stream(ctx.service("CardService").ExportCards(request)):
                kind = msg.WhichOneof("kind")
                if kind == "progress_rows":
                    rows = msg.progress_rows
                    bar.update(rows, None, f"Exporting cards: {rows} rows")
                elif kind == "chunk":
                    out.write(msg.chunk)
                    written += len(msg.chunk)
                    bar.update(written, None, "Receiving the file (bytes)")
                elif kind == "finished":
                    finished = msg.finished
                    bar.update(written, written or 1, f"Exported {finished.rows} cards (bytes)")
            if finished is None:
                raise a.Failure("cards export: the server ended the stream before the file was complete")
            if finished.bytes != written:
                raise a.Failure(f"cards export: received {written} bytes, the server sent "
                                f"{finished.bytes}; nothing was written")
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
        tmp = ""
    except OSError as e:
        raise a.Failure(f"cards export: cannot write {path}: {e.strerror}") from None
    finally:
        if tmp:
            try:
                os.unlink(tmp)
            except OSError:
                pass
    return finished


# --- helpers -----------------------------------------------------------------------------------------

def _status(card: pb.Card) -> str:
    status = v.label(_CARD_STATUS, card.status)
    return f"{status} (locked until {v.utc(card.locked_until)})" if card.locked_until else status


def show_card(ctx: a.Context, c: pb.Card) -> None:
    cur = c.currency
    pairs = [("Number", c.number), ("Series", c.series), ("Status", _status(c)),
             ("Balance", v.money(c.balance_micro, cur)), ("Reserved by calls", v.money(c.reserved_micro, cur)),
             ("Available", v.money(c.available_micro, cur)), ("Open calls", c.open_calls),
             ("Activated (UTC)", v.utc(c.activated_at)), ("Expires (UTC)", v.utc(c.expires_at) or "never"),
             ("Fees paid until (UTC)", v.utc(c.fees_paid_until)), ("Last use (UTC)", v.utc(c.last_use)),
             ("Wrong PINs in a row", c.failed_pins)]
    if c.pin:
        pairs.append(("PIN", c.pin))
    a.fields(ctx, pairs, title=f"Card {c.number}")
