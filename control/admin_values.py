"""Values people type and read in `radcore admin`: amounts, percentages, dates, enum labels, and the
JSON shape of messages.

Amounts are parsed with `decimal.Decimal` and converted exactly to integer micro-units (at most 6
decimal places; no exponents, no NaN, never a float). Argument parsers raise
`argparse.ArgumentTypeError`, so argparse reports them as one usage line. Times are UTC epoch
seconds on the wire and UTC ISO 8601 for people and in --json.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation, localcontext
from typing import Any

from radcore.replies import format_amount

MICRO = 1_000_000
MONEY_PLACES = 6
INT64_MAX = 2**63 - 1
UINT32_MAX = 2**32 - 1
#: Fields holding epoch seconds: tables and --json show them as UTC ISO 8601 (0 = not set).
TIME_FIELDS = frozenset({
    "created_at", "updated_at", "expiry_date", "activated_at", "expires_at", "fees_paid_until",
    "last_use", "locked_until", "effective_from", "effective_to", "opened_at", "deadline", "at",
    "now", "revoked_at", "since", "until",
})


# --- what people type ------------------------------------------------------------------------

_AMOUNT = re.compile(r"[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)")


def parse_amount(text: str, *, signed: bool = False, nonzero: bool = False) -> int:
    """"-1.50" -> -1_500_000 exactly; more than 6 decimal places, exponents, NaN are refused."""
    s = text.strip()
    if not _AMOUNT.fullmatch(s):
        raise argparse.ArgumentTypeError(f"{text!r} is not an amount like 5.00 or 0.0125")
    try:
        value = Decimal(s)
    except InvalidOperation:
        raise argparse.ArgumentTypeError(f"{text!r} is not an amount like 5.00") from None
    micro = _shift(value, MONEY_PLACES)
    if micro != micro.to_integral_value():
        raise argparse.ArgumentTypeError(f"{text!r} has more than {MONEY_PLACES} decimal places")
    micro_int = int(micro)
    if micro_int < 0 and not signed:
        raise argparse.ArgumentTypeError(f"{text!r} must not be negative")
    if nonzero and micro_int == 0:
        raise argparse.ArgumentTypeError("the amount must not be zero")
    if abs(micro_int) > INT64_MAX:
        raise argparse.ArgumentTypeError(f"{text!r} is too large")
    return micro_int


def _shift(value: Decimal, places: int) -> Decimal:
    """value * 10**places, exactly: the precision covers every digit typed, so nothing rounds."""
    with localcontext() as ctx:
        ctx.prec = len(value.as_tuple().digits) + places + 2
        return value.scaleb(places)


def amount(text: str) -> int:
    return parse_amount(text)


def signed_amount(text: str) -> int:
    return parse_amount(text, signed=True, nonzero=True)


def parse_percent(text: str) -> int:
    """"20" or "7.5" percent -> parts per million (200000, 75000), exactly."""
    s = text.strip().removesuffix("%")
    if not _AMOUNT.fullmatch(s) or s.startswith("-"):
        raise argparse.ArgumentTypeError(f"{text!r} is not a percentage like 20 or 7.5")
    ppm = _shift(Decimal(s), 4)
    if ppm != ppm.to_integral_value():
        raise argparse.ArgumentTypeError(f"{text!r} has more than 4 decimal places")
    return int(ppm)


def uint(text: str) -> int:
    s = text.strip()
    if not s.isascii() or not s.isdigit() or int(s) > UINT32_MAX:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number")
    return int(s)


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number of seconds")
    return value


def parse_time(text: str, *, end_of_day: bool = False) -> int:
    """YYYY-MM-DD (UTC midnight, or its last second with end_of_day), an ISO date-time (UTC unless
    it names an offset), or epoch seconds. "" and "none" mean 0 (not set)."""
    s = text.strip()
    if s.lower() in ("", "none", "never", "0"):
        return 0
    if s.isascii() and s.isdigit():
        return int(s)
    try:
        parsed = datetime.fromisoformat(s[:-1] + "+00:00" if s.endswith(("Z", "z")) else s)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a date (YYYY-MM-DD, YYYY-MM-DDTHH:MM:SS[Z] or epoch seconds)") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    if end_of_day and len(s) == 10:
        parsed += timedelta(days=1, seconds=-1)
    return int(parsed.timestamp())


def time_arg(text: str) -> int:
    return parse_time(text)


def end_time_arg(text: str) -> int:
    """An inclusive upper bound: a bare date means the end of that day."""
    return parse_time(text, end_of_day=True)


def enum_labels(enum: Any) -> list[str]:
    """Lower-case value names without the type prefix and without UNSPECIFIED: ["active", ...]."""
    prefix = _enum_prefix(enum.DESCRIPTOR)
    return [v.name.removeprefix(prefix).lower() for v in enum.DESCRIPTOR.values if v.number]


def enum_value(enum: Any, label: str) -> int:
    return enum.Value(_enum_prefix(enum.DESCRIPTOR) + label.upper())


def label(enum_descriptor: Any, number: int) -> str:
    value = enum_descriptor.values_by_number.get(number)
    if value is None:
        return str(number)
    return value.name.removeprefix(_enum_prefix(enum_descriptor)).lower()


def _enum_prefix(descriptor: Any) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", descriptor.name).upper() + "_"


# --- formatting ---------------------------------------------------------------------------------------

def utc(ts: int) -> str:
    """Epoch seconds as UTC ISO 8601 ("2023-11-14T22:13:20Z"); "" for 0 (not set)."""
    if not ts:
        return ""
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def exact(micro: int) -> str:
    """Micro-units as an exact decimal with 2 to 6 places: 12500 -> "0.0125", -1500000 -> "-1.50"."""
    whole, frac = divmod(abs(micro), MICRO)
    digits = f"{frac:06d}".rstrip("0").ljust(2, "0")
    return f"{'-' if micro < 0 else ''}{whole}.{digits}"


def money(micro: int, currency: str = "") -> str:
    """A balance for people: two places rounded down (what the switch announces) plus currency."""
    return f"{format_amount(micro)} {currency}".rstrip()


def price(micro: int, currency: str = "") -> str:
    """A price for people: exact (a per-minute rate of 0.0125 must not read 0.01)."""
    return f"{exact(micro)} {currency}".rstrip()


def percent(ppm: int) -> str:
    """Parts per million as a percentage: 200000 -> "20%", 75000 -> "7.5%"."""
    whole, frac = divmod(ppm, 10_000)
    return f"{whole}.{frac:04d}".rstrip("0").rstrip(".") + "%"


def duration(seconds: int) -> str:
    h, rest = divmod(int(seconds), 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}"


def to_dict(msg: Any) -> dict[str, Any]:
    """A message as JSON-able values: `x_micro` also as exact decimal `x`, times as UTC ISO (null for
    0), enums as lower-case labels, unset sub-messages as null."""
    out: dict[str, Any] = {}
    for field in msg.DESCRIPTOR.fields:
        value = getattr(msg, field.name)
        if field.message_type is not None:
            if field.is_repeated:
                out[field.name] = [to_dict(v) for v in value]
            else:
                out[field.name] = to_dict(value) if msg.HasField(field.name) else None
            continue
        convert = _scalar(field)
        out[field.name] = [convert(v) for v in value] if field.is_repeated else convert(value)
        if field.name.endswith("_micro") and not field.is_repeated:
            out[field.name.removesuffix("_micro")] = exact(value)
    return out


def _scalar(field: Any) -> Callable[[Any], Any]:
    if field.enum_type is not None:
        return lambda v: label(field.enum_type, v)
    if field.name in TIME_FIELDS:
        return lambda v: utc(v) or None
    if field.type == field.TYPE_BYTES:
        return lambda v: len(v)
    return lambda v: v
