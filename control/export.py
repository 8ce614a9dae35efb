"""Card exports (XLSX and CSV) as a stream of events, in constant memory.

XLSX goes through openpyxl's write-only mode: rows are serialised to a temporary XML file per sheet as
they are appended (strings inline, no shared-string table growing with the card count), and `save`
zips those files into a temporary file that is then streamed out in chunks. A sheet holds at most
1,048,576 rows, one of them the header, so larger exports continue on "Cards 2", "Cards 3", ...
CSV is written and streamed as it goes.

Spreadsheet formula injection: a text cell beginning with = + - @ TAB or CR could be run as a formula
by whoever opens the file. In XLSX every text cell is written with an explicit string type, which
spreadsheets never evaluate; CSV has no types, so such a cell gets a leading apostrophe (the OWASP
advice). The series name is the column where operator-typed text reaches the file.

The export is audited before the first row is produced: the PINs are in it.
"""

from __future__ import annotations

import csv
import io
import tempfile
from datetime import datetime, timezone
from decimal import Decimal
from typing import Any, Iterator, NamedTuple

from openpyxl import Workbook
from openpyxl.cell import WriteOnlyCell

from control.auth import Principal
from control.cards import CardFilter, audit_pin_access, scan, view
from control.rates import format_money
from radcore.clock import Clock
from radcore.errors import Invalid
from radcore.keys import KeyRing
from radcore.store import Card, Series, Store

XLSX_MAX_ROWS = 1_048_575
#: The operator's card list, plus the series name (exports may span series).
HEADERS = ("Status", "Number", "Balance", "PIN", "Activated (UTC)", "Expires (UTC)", "Series")
FORMULA_TRIGGERS = ("=", "+", "-", "@", "\t", "\r")
CHUNK_BYTES = 64 * 1024
PROGRESS_EVERY = 1000
XLSX_TYPE = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
CSV_TYPE = "text/csv; charset=utf-8"
_MICRO = Decimal(1_000_000)


class Started(NamedTuple):
    filename: str
    content_type: str


class Rows(NamedTuple):
    count: int


class Chunk(NamedTuple):
    data: bytes


class Finished(NamedTuple):
    rows: int
    sheets: int
    size: int


def neutralise(text: str) -> str:
    """CSV cell text that no spreadsheet will run as a formula."""
    return "'" + text if text.startswith(FORMULA_TRIGGERS) else text


def _utc(ts: int) -> datetime | None:
    return datetime.fromtimestamp(ts, timezone.utc).replace(tzinfo=None) if ts else None


def _first_and_rest(store: Store, keyring: KeyRing, principal: Principal,
                    flt: CardFilter) -> tuple[tuple[Series, int, Card] | None, Iterator]:
    """Start the scan so visibility errors (NotFound, PermissionError) surface before the audit
    entry and before any byte of the file."""
    rows = scan(store, keyring, principal, flt)
    return next(rows, None), rows


def export_cards(store: Store, keyring: KeyRing, principal: Principal, flt: CardFilter, *,
                 fmt: str = "xlsx", rows_per_sheet: int = XLSX_MAX_ROWS, clock: Clock,
                 chunk_bytes: int = CHUNK_BYTES) -> Iterator[Started | Rows | Chunk | Finished]:
    """Started, Rows (every PROGRESS_EVERY rows), the file as Chunks in order, then Finished."""
    if fmt not in ("xlsx", "csv"):
        raise Invalid("format", "must be xlsx or csv")
    if not 1 <= rows_per_sheet <= XLSX_MAX_ROWS:
        raise Invalid("rows_per_sheet", f"must be 1..{XLSX_MAX_ROWS}")
    first, rest = _first_and_rest(store, keyring, principal, flt)
    tenant = first[0].reseller if first and flt.series else ""
    audit_pin_access(store, principal, "ExportCards", flt, None, now=clock(), tenant=tenant,
                     extra={"format": fmt})
    yield Started(f"cards-{flt.series or 'all'}.{fmt}", XLSX_TYPE if fmt == "xlsx" else CSV_TYPE)

    def rows() -> Iterator[tuple[Any, ...]]:
        if first is None:
            return
        yield _row(keyring, *first)
        for item in rest:
            yield _row(keyring, *item)

    writer = _xlsx if fmt == "xlsx" else _csv
    yield from writer(rows(), rows_per_sheet, chunk_bytes)


def _row(keyring: KeyRing, series: Series, serial: int, card: Card) -> tuple[Any, ...]:
    v = view(keyring, series, serial, card, with_pin=True)
    return (card.status.label, v.number, card.balance, v.pin, card.activated_at, card.expires_at,
            series.name)


def _xlsx(rows: Iterator[tuple[Any, ...]], rows_per_sheet: int,
          chunk_bytes: int) -> Iterator[Rows | Chunk | Finished]:
    wb = Workbook(write_only=True)
    saved = False
    try:
        ws = None
        in_sheet = count = sheets = 0
        for status, number, balance, pin, activated, expires, name in rows:
            if ws is None or in_sheet == rows_per_sheet:
                sheets += 1
                ws = wb.create_sheet("Cards" if sheets == 1 else f"Cards {sheets}")
                ws.append([_text(ws, h) for h in HEADERS])
                in_sheet = 0
            ws.append([_text(ws, status), _text(ws, number), _money(ws, balance), _text(ws, pin),
                       _date(ws, activated), _date(ws, expires), _text(ws, name)])
            in_sheet += 1
            count += 1
            if count % PROGRESS_EVERY == 0:
                yield Rows(count)
        if ws is None:
            sheets = 1
            ws = wb.create_sheet("Cards")
            ws.append([_text(ws, h) for h in HEADERS])
        with tempfile.TemporaryFile() as out:
            wb.save(out)
            saved = True
            size = out.tell()
            out.seek(0)
            while data := out.read(chunk_bytes):
                yield Chunk(data)
        yield Finished(count, sheets, size)
    finally:
        if not saved:
            _discard(wb)


def _discard(wb: Workbook) -> None:
    """Remove the per-sheet temporary files of an export abandoned before save (a cancelled client);
    openpyxl would otherwise keep them until the process exits."""
    for ws in wb.worksheets:
        writer = getattr(ws, "_writer", None)
        if writer is not None:
            try:
                writer.close()
                writer.cleanup()
            except (OSError, ValueError, RuntimeError):
                pass


def _text(ws: Any, value: str) -> WriteOnlyCell:
    cell = WriteOnlyCell(ws, value)
    cell.data_type = "s"  # explicit string: never a formula, whatever the text starts with
    return cell


def _money(ws: Any, micro: int) -> WriteOnlyCell:
    cell = WriteOnlyCell(ws, Decimal(micro) / _MICRO)  # exact: Decimal, never a float
    cell.number_format = "#,##0.00####"
    return cell


def _date(ws: Any, ts: int) -> WriteOnlyCell:
    cell = WriteOnlyCell(ws, _utc(ts))
    if ts:
        cell.number_format = "yyyy-mm-dd hh:mm:ss"
    return cell


def _iso(ts: int) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ") if ts else ""


def _csv(rows: Iterator[tuple[Any, ...]], rows_per_sheet: int,
         chunk_bytes: int) -> Iterator[Rows | Chunk | Finished]:
    buf = io.StringIO()
    out = csv.writer(buf, lineterminator="\r\n")
    out.writerow(HEADERS)
    count = size = 0
    for status, number, balance, pin, activated, expires, name in rows:
        out.writerow([status, number, format_money(balance), pin, _iso(activated), _iso(expires),
                      neutralise(name)])
        count += 1
        if count % PROGRESS_EVERY == 0:
            yield Rows(count)
        if buf.tell() >= chunk_bytes:
            data = buf.getvalue().encode()
            size += len(data)
            yield Chunk(data)
            buf.seek(0)
            buf.truncate()
    data = buf.getvalue().encode()
    if data:
        size += len(data)
        yield Chunk(data)
    yield Finished(count, 1, size)

