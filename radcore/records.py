"""Record layouts and key encodings: the one place radcore's persisted bytes are defined.

Hot records (cards, sessions, CDRs) are fixed little-endian structs so the Cython fast path can
read fields at known offsets without decoding; configuration records (series, rate tables, ...) are
JSON because they are read rarely, cached by `config_version`, and benefit from being inspectable
and forward-compatible (unknown keys are ignored). Keys are big-endian so that LMDB's bytewise
order is numeric order (a series is one key range). `radcore.store` re-exports everything here,
so callers import persistence from one module.
"""

from __future__ import annotations

import json
import re
import struct
from dataclasses import dataclass, fields
from enum import IntEnum
from operator import attrgetter
from typing import Any, ClassVar

from radcore.errors import Invalid, StoreError

MAX_SERIES = 99_999
MAX_SERIAL = 99_999_999
MAX_KEY_SIZE = 511  # LMDB's compiled-in default (mdb_env_get_maxkeysize)
#: A session key is also stored behind a one-octet tombstone mark and an 8-octet deadline
#: (`radcore.store`), and each of those keys must fit MAX_KEY_SIZE too.
MAX_SESSION_KEY_SIZE = MAX_KEY_SIZE - 9

_U16 = struct.Struct("<H")
_SERIES_KEY = struct.Struct(">I")
_CARD_KEY = struct.Struct(">II")
_CDR_TAIL = struct.Struct(">QI")

# --- keys -------------------------------------------------------------------------------------------

def series_key(number: int) -> bytes:
    return _SERIES_KEY.pack(number)


def card_key(series: int, serial: int) -> bytes:
    """8 bytes: u32 BE series + u32 BE serial, so one series is one contiguous key range."""
    return _CARD_KEY.pack(series, serial)


def split_card_key(key: bytes) -> tuple[int, int]:
    if len(key) != 8:
        raise Invalid("card_key", f"must be 8 bytes, got {len(key)}")
    return _CARD_KEY.unpack(key)


def _check_card_range(series: int, serial: int) -> None:
    if not 1 <= series <= MAX_SERIES:
        raise Invalid("card_number", f"series must be 1..{MAX_SERIES}, got {series}")
    if not 0 <= serial <= MAX_SERIAL:
        raise Invalid("card_number", f"serial must be 0..{MAX_SERIAL}, got {serial}")


def format_card_number(series: int, serial: int) -> str:
    """The number printed on the card: `<series>-<serial as 9 digits>`, e.g. 45-001122333."""
    _check_card_range(series, serial)
    return f"{series}-{serial:09d}"


_CARD_NUMBER = re.compile(r"([0-9]{1,5})-?([0-9]{9})")


def parse_card_number(text: str) -> tuple[int, int]:
    """Parse a card number typed by a person: with or without the dash, spaces anywhere ignored.

    Without a dash the last 9 digits are the serial and the rest the series. Only ASCII digits count
    (str.isdigit would accept other scripts' digits that no keypad sends).
    """
    if not isinstance(text, str):
        raise Invalid("card_number", "must be text")
    m = _CARD_NUMBER.fullmatch("".join(text.split()))
    if m is None:
        raise Invalid("card_number", f"expected <series>-<9-digit serial> such as 45-001122333, got {text!r}")
    series, serial = int(m.group(1)), int(m.group(2))
    _check_card_range(series, serial)
    return series, serial


def name_key(name: str, field: str = "name") -> bytes:
    """Key of a named object (rate table, tax profile, ...). NUL is a separator in composite keys."""
    if not isinstance(name, str) or not name:
        raise Invalid(field, "must be non-empty text")
    raw = name.encode()
    if b"\x00" in raw or len(raw) > 255:
        raise Invalid(field, "must be at most 255 bytes of UTF-8 without NUL")
    return raw


def session_key(nas: str, call_id: str) -> bytes:
    """utf-8 NAS identity + NUL + call id (h323-conf-id or Acct-Session-Id)."""
    raw = nas.encode() + b"\x00" + call_id.encode()
    if "\x00" in nas or len(raw) > MAX_SESSION_KEY_SIZE:
        raise Invalid("session", f"NAS identity must not contain NUL and the key must fit "
                                 f"{MAX_SESSION_KEY_SIZE} bytes")
    return raw


def cdr_key(card_key: bytes, stop_time: int, seq: int) -> bytes:
    """card key + u64 BE stop time + u32 BE seq: a card's CDRs are one range, in stop-time order."""
    return card_key + _CDR_TAIL.pack(stop_time, seq)


# --- enums ------------------------------------------------------------------------------------------

class _Labelled(IntEnum):
    @property
    def label(self) -> str:
        """Lower-case name for people and APIs (`activated`), stable across releases."""
        return self.name.lower()


class CardStatus(_Labelled):
    PENDING = 0
    ACTIVATED = 1
    EXPIRED = 2
    USED = 3
    BLOCKED = 4


class SeriesStatus(_Labelled):
    ACTIVE = 0
    STOPPED = 1
    DELETED = 2


class SessionState(_Labelled):
    AUTHORIZED = 0
    STARTED = 1
    STOPPED = 2


# --- hot-path records (struct) ----------------------------------------------------------------------

#: Card value layout; see `Card` for the offsets. `CARD_OFFSETS` names them for C code and tests.
CARD_FORMAT = "<7qBBH4x32s"
_CARD = struct.Struct(CARD_FORMAT)
CARD_FIXED_SIZE = _CARD.size
CARD_OFFSETS = {"balance": 0, "reserved": 8, "activated_at": 16, "expires_at": 24, "fees_paid_until": 32,
                "last_use": 40, "locked_until": 48, "status": 56, "failed_pins": 57, "open_calls": 58,
                "pin_digest": 64, "pin_blob": 96}
assert CARD_FIXED_SIZE == 96


@dataclass(slots=True)
class Card:
    """A card's state: one LMDB value read and rewritten by every RADIUS packet that touches the card.

    Value = fixed part (CARD_FORMAT, little-endian, no implicit padding) + variable pin_blob tail. The
    Cython fast path reads and patches the fixed part in place at these offsets; LMDB hands values out
    only 2-byte aligned, so C code must memcpy fields rather than cast pointers:

        off  type  field
          0  i64   balance          micro-units
          8  i64   reserved         micro-units held by open reservations (available = balance - reserved)
         16  i64   activated_at     epoch s, 0 = never
         24  i64   expires_at       epoch s, 0 = never
         32  i64   fees_paid_until  epoch s: maintenance fees are paid up to here
         40  i64   last_use         epoch s, 0 = never
         48  i64   locked_until     epoch s: end of a PIN lockout, 0 = not locked
         56  u8    status           CardStatus
         57  u8    failed_pins      consecutive wrong PINs
         58  u16   open_calls       sessions holding a reservation
         60  4     spare            written as zero
         64  32    pin_digest       HMAC-SHA256(pepper, PIN), also the `pins` index key
         96  ...   pin_blob         to the end of the value: KeyRing.encrypt_pin output (45+ bytes)
    """

    status: CardStatus = CardStatus.PENDING
    balance: int = 0
    reserved: int = 0
    open_calls: int = 0
    activated_at: int = 0
    expires_at: int = 0
    fees_paid_until: int = 0
    last_use: int = 0
    failed_pins: int = 0
    locked_until: int = 0
    pin_digest: bytes = bytes(32)
    pin_blob: bytes = b""

    @property
    def available(self) -> int:
        return self.balance - self.reserved

    def pack(self) -> bytes:
        if len(self.pin_digest) != 32:
            raise Invalid("pin_digest", "must be 32 bytes")
        try:
            fixed = _CARD.pack(self.balance, self.reserved, self.activated_at, self.expires_at,
                               self.fees_paid_until, self.last_use, self.locked_until, self.status,
                               self.failed_pins, self.open_calls, self.pin_digest)
        except struct.error as e:
            raise Invalid("card", f"a field is out of its stored range: {e}") from e
        return fixed + self.pin_blob

    @classmethod
    def unpack(cls, buf: bytes | memoryview) -> Card:
        if len(buf) < CARD_FIXED_SIZE:
            raise StoreError(f"corrupt card record: {len(buf)} bytes, need at least {CARD_FIXED_SIZE}")
        (balance, reserved, activated_at, expires_at, fees_paid_until, last_use, locked_until, status,
         failed_pins, open_calls, digest) = _CARD.unpack_from(buf)
        try:
            status = CardStatus(status)
        except ValueError as e:
            raise StoreError(f"corrupt card record: unknown status {status}") from e
        return cls(status, balance, reserved, open_calls, activated_at, expires_at, fees_paid_until,
                   last_use, failed_pins, locked_until, digest, bytes(buf[CARD_FIXED_SIZE:]))


def _pack_strings(values: tuple[str, ...] | list[str]) -> bytes:
    parts = []
    for v in values:
        if not isinstance(v, str):
            raise Invalid("string", f"expected text, got {type(v).__name__}")
        raw = v.encode()
        if len(raw) > 0xFFFF:
            raise Invalid("string", "longer than 65535 bytes")
        parts.append(_U16.pack(len(raw)))
        parts.append(raw)
    return b"".join(parts)


def _unpack_strings(buf: bytes | memoryview, offset: int, count: int, what: str) -> list[str]:
    out = []
    try:
        for _ in range(count):
            (n,) = _U16.unpack_from(buf, offset)
            offset += 2
            if offset + n > len(buf):
                raise StoreError(f"corrupt {what} record: string runs past the end")
            out.append(bytes(buf[offset:offset + n]).decode())
            offset += n
    except (struct.error, UnicodeDecodeError) as e:
        raise StoreError(f"corrupt {what} record: {e}") from e
    return out


class _StructRecord:
    """A fixed little-endian struct (`_FIXED`, fields `_FIXED_FIELDS` in order) followed by strings
    (`_STRINGS`), each a u16 LE byte length + UTF-8. Fixed first, so C code reads it at fixed offsets."""

    __slots__ = ()
    _FIXED: ClassVar[struct.Struct]
    _FIXED_FIELDS: ClassVar[tuple[str, ...]]
    _STRINGS: ClassVar[tuple[str, ...]]
    _ENUMS: ClassVar[dict[str, type]] = {}

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        # Sessions and CDRs are packed on every accounting request: fetch the fields in one call.
        if "_FIXED_FIELDS" in cls.__dict__:
            cls._fixed_values = staticmethod(attrgetter(*cls._FIXED_FIELDS))
            cls._string_values = staticmethod(attrgetter(*cls._STRINGS))

    def pack(self) -> bytes:
        try:
            fixed = self._FIXED.pack(*self._fixed_values(self))
        except struct.error as e:
            raise Invalid(type(self).__name__.lower(), f"a field is out of its stored range: {e}") from e
        return fixed + _pack_strings(self._string_values(self))

    @classmethod
    def unpack(cls, buf: bytes | memoryview) -> Any:
        what = cls.__name__.lower()
        if len(buf) < cls._FIXED.size:
            raise StoreError(f"corrupt {what} record: {len(buf)} bytes, need at least {cls._FIXED.size}")
        kwargs = dict(zip(cls._FIXED_FIELDS, cls._FIXED.unpack_from(buf)))
        kwargs.update(zip(cls._STRINGS, _unpack_strings(buf, cls._FIXED.size, len(cls._STRINGS), what)))
        try:
            for name, enum in cls._ENUMS.items():
                kwargs[name] = enum(kwargs[name])
        except ValueError as e:
            raise StoreError(f"corrupt {what} record: {e}") from e
        return cls(**kwargs)


#: Session value: fixed part, then strings prefix, called, acct_session_id, conf_id, nas.
#:   0 card_key 8s | 8 reserved i64 | 16 charged i64 | 24 opened_at i64 | 32 deadline i64 |
#:   40 price_per_minute i64 | 48 connection_fee i64 | 56 last_session_time u32 | 60 min_volume u32 |
#:   64 interval u32 | 68 grace u32 | 72 tax_ppm u32 | 76 state u8 | 77..79 spare
SESSION_FORMAT = "<8s6q5IB3x"


@dataclass(slots=True)
class Session(_StructRecord):
    """An open call: the reservation made at number authorization, the rate it was priced with (so a
    rate change mid-call does not re-price it) and what has been charged so far."""

    _FIXED: ClassVar[struct.Struct] = struct.Struct(SESSION_FORMAT)
    _FIXED_FIELDS: ClassVar[tuple[str, ...]] = (
        "card_key", "reserved", "charged", "opened_at", "deadline", "price_per_minute", "connection_fee",
        "last_session_time", "min_volume", "interval", "grace", "tax_ppm", "state")
    _STRINGS: ClassVar[tuple[str, ...]] = ("prefix", "called", "acct_session_id", "conf_id", "nas")
    _ENUMS: ClassVar[dict[str, type]] = {"state": SessionState}

    card_key: bytes
    state: SessionState = SessionState.AUTHORIZED
    reserved: int = 0
    charged: int = 0
    opened_at: int = 0
    deadline: int = 0
    last_session_time: int = 0
    price_per_minute: int = 0
    connection_fee: int = 0
    min_volume: int = 0
    interval: int = 1
    grace: int = 0
    tax_ppm: int = 0
    prefix: str = ""
    called: str = ""
    acct_session_id: str = ""
    conf_id: str = ""
    nas: str = ""

    def __post_init__(self) -> None:
        # struct's "8s" would silently pad or truncate; a wrong card key must never be stored.
        if len(self.card_key) != 8:
            raise Invalid("card_key", f"must be 8 bytes, got {len(self.card_key)}")


SESSION_FIXED_SIZE = Session._FIXED.size

#: CDR value: fixed part, then strings nas, acct_session_id, conf_id, called, prefix.
#:   0 start_time i64 | 8 stop_time i64 | 16 cost i64 | 24 duration u32 | 28 billed_seconds u32 |
#:   32 terminate_cause u32 | 36..39 spare
CDR_FORMAT = "<3q3I4x"


@dataclass(slots=True)
class Cdr(_StructRecord):
    """One settled call. Card and stop time are also in the key; the value repeats stop_time so an
    exported record is self-contained."""

    _FIXED: ClassVar[struct.Struct] = struct.Struct(CDR_FORMAT)
    _FIXED_FIELDS: ClassVar[tuple[str, ...]] = (
        "start_time", "stop_time", "cost", "duration", "billed_seconds", "terminate_cause")
    _STRINGS: ClassVar[tuple[str, ...]] = ("nas", "acct_session_id", "conf_id", "called", "prefix")

    nas: str = ""
    acct_session_id: str = ""
    conf_id: str = ""
    called: str = ""
    prefix: str = ""
    start_time: int = 0
    stop_time: int = 0
    duration: int = 0
    billed_seconds: int = 0
    cost: int = 0
    terminate_cause: int = 0


# --- configuration records (JSON) -------------------------------------------------------------------

class _JsonRecord:
    """JSON (de)serialisation for dataclasses read off the hot path; unknown keys are ignored so an
    older release can read records written by a newer one."""

    __slots__ = ()
    _ENUMS: ClassVar[dict[str, type]] = {}

    def to_bytes(self) -> bytes:
        data = {f.name: getattr(self, f.name) for f in fields(self)}  # type: ignore[arg-type]
        return json.dumps(data, separators=(",", ":"), sort_keys=True).encode()

    @classmethod
    def from_bytes(cls, raw: bytes | memoryview) -> Any:
        try:
            data = json.loads(bytes(raw))
            known = {f.name for f in fields(cls)}  # type: ignore[arg-type]
            kwargs = {k: v for k, v in data.items() if k in known}
            for name, enum in cls._ENUMS.items():
                if name in kwargs:
                    kwargs[name] = enum(kwargs[name])
            return cls(**kwargs)
        except (ValueError, TypeError, AttributeError) as e:
            raise StoreError(f"corrupt {cls.__name__} record: {e}") from e


@dataclass(slots=True)
class Series(_JsonRecord):
    """A batch of cards sharing settings. Cards are serials first_serial .. first_serial+quantity-1.

    `generated` counts cards written so far; a series is visible to RADIUS, listings and exports only
    when `complete` (generation writes in chunks, and an interrupted one leaves generated < quantity).
    """

    _ENUMS: ClassVar[dict[str, type]] = {"status": SeriesStatus, "initial_status": CardStatus}

    number: int
    name: str = ""
    status: SeriesStatus = SeriesStatus.ACTIVE
    currency: str = "USD"
    face_balance: int = 0
    quantity: int = 0
    pin_length: int = 10
    initial_status: CardStatus = CardStatus.PENDING
    control_panel: bool = False
    notes: str = ""
    reseller: str = ""
    rate_table: str = ""
    tax_profile: str = ""
    routing_plan: str = ""
    activation_fee: int = 0
    maintenance_fee: int = 0
    maintenance_period_hours: int = 0
    expiry_date: int = 0
    expiry_period_days: int = 0
    max_concurrent_calls: int = 1
    time_zone: str = "UTC"
    language: str = ""  # h323-preferred-lang for the switch's IVR prompts ("en", "es", ...); "" = unset
    created_at: int = 0
    updated_at: int = 0
    generated: int = 0
    first_serial: int = 0

    @property
    def complete(self) -> bool:
        return self.generated >= self.quantity > 0


@dataclass(slots=True)
class RateTable(_JsonRecord):
    name: str
    currency: str = "USD"
    description: str = ""
    created_at: int = 0


@dataclass(slots=True)
class TaxProfile(_JsonRecord):
    """Tax added on top of a call's charge, in parts per million (20% = 200_000): no floats."""

    name: str
    percent_ppm: int = 0
    description: str = ""


@dataclass(slots=True)
class RoutingPlan(_JsonRecord):
    """`route` is sent to the switch as-is (e.g. a Cisco h323-redirect-number or tech prefix)."""

    name: str
    route: str = ""
    description: str = ""


@dataclass(slots=True)
class Reseller(_JsonRecord):
    id: str
    name: str = ""
    created_at: int = 0
