"""What the codec tests share: either implementation by name, a NAS's secret and authenticator, and
for the cross-checks of the two implementations a way to compare their results (`outcome`) and a
seeded corpus of random requests, valid and mutated (`CORPUS`)."""

from __future__ import annotations

import os
import random
import struct
from types import ModuleType

import pytest

from radcore import dictionary as d
from radcore import errors, packet

REQUIRE_EXTENSIONS = bool(os.environ.get("RADCORE_REQUIRE_EXTENSIONS"))
SECRET = b"s3cret-of-the-nas"
AUTH = bytes(range(0xA0, 0xB0))


def load_fastpath() -> ModuleType:
    """The compiled module; skips the test without it, fails it under RADCORE_REQUIRE_EXTENSIONS."""
    try:
        from radcore import _fastpath
    except ImportError as exc:
        if REQUIRE_EXTENSIONS:
            pytest.fail(f"RADCORE_REQUIRE_EXTENSIONS is set but radcore._fastpath does not import: {exc}")
        pytest.skip(f"radcore._fastpath is not built: {exc}")
    return _fastpath


def codec_for(name: str) -> ModuleType:
    """The implementation a test module's `codec` fixture runs: `py` (the reference) or `cy`."""
    return packet if name == "py" else load_fastpath()


def normalize(value):
    """A result in a form both implementations can be compared in."""
    if isinstance(value, list):
        return [normalize(v) for v in value]
    if isinstance(value, errors.PacketError):
        return ("error", type(value).__name__, value.reason)
    if type(value).__name__ == "Request":
        return ("Request", tuple(value))
    return value


def outcome(fn, *args, **kwargs):
    """("ok", result) or the exception: class and reason for PacketError, class for the rest."""
    try:
        return ("ok", normalize(fn(*args, **kwargs)))
    except errors.PacketError as exc:
        return ("error", type(exc).__name__, exc.reason)
    except (ValueError, TypeError, OverflowError, struct.error) as exc:
        return ("raise", type(exc).__name__)


# ---------------------------------------------------------------------------------------------
# Random packets

CISCO, QUINTUM = d.VENDOR_CISCO, d.VENDOR_QUINTUM
TEXT_TYPES = [d.USER_NAME, d.NAS_IDENTIFIER, d.CALLED_STATION_ID, d.CALLING_STATION_ID, d.ACCT_SESSION_ID,
              d.REPLY_MESSAGE]
INTEGER_TYPES = [d.ACCT_STATUS_TYPE, d.ACCT_SESSION_TIME, d.ACCT_DELAY_TIME, d.ACCT_TERMINATE_CAUSE,
                 d.EVENT_TIMESTAMP, d.NAS_PORT, d.SESSION_TIMEOUT]
H323_TYPES = [d.H323_CONF_ID, d.H323_CALL_ORIGIN, d.H323_REDIRECT_NUMBER, d.H323_CREDIT_TIME, d.AVPAIR,
              d.H323_SETUP_TIME, 0, 255]


def random_text(rng: random.Random) -> bytes:
    kind = rng.random()
    if kind < 0.5:
        return "".join(rng.choice("0123456789-") for _ in range(rng.randrange(0, 20))).encode()
    if kind < 0.8:
        return "".join(rng.choice("aZ09 =äß€\u0416\U0001f4de") for _ in range(rng.randrange(0, 12))).encode()
    return rng.randbytes(rng.randrange(0, 30))  # often invalid UTF-8


def random_vsa_value(rng: random.Random) -> bytes:
    """A Vendor-Specific value: mostly Cisco/Quintum suggested format, sometimes not."""
    kind = rng.random()
    if kind < 0.08:
        return rng.randbytes(rng.randrange(0, 5))  # too short for a vendor id
    vendor = rng.choice([CISCO, QUINTUM, CISCO, QUINTUM, 311, 0, 0xFFFFFFFF])
    out = struct.pack("!I", vendor)
    for _ in range(rng.randrange(0 if kind < 0.15 else 1, 4)):
        vtype = rng.choice(H323_TYPES)
        value = random_text(rng)
        if vtype in d.H323_NAMES and rng.random() < 0.5:
            value = d.H323_NAMES[vtype if rng.random() < 0.9 else d.H323_CONF_ID].encode() + b"=" + value
        out += bytes([vtype, len(value) + 2]) + value
    if rng.random() < 0.1:  # break the sub-attribute lengths
        out = out[:-1] if len(out) > 4 and rng.random() < 0.5 else out + b"\x01"
    return out[:253]


def random_attribute(rng: random.Random, secret: bytes, auth: bytes) -> bytes:
    """One attribute on the wire (type, length, value), occasionally malformed in its value."""
    kind = rng.random()
    if kind < 0.15:
        atype, value = rng.choice(TEXT_TYPES), random_text(rng)
    elif kind < 0.25:
        atype = d.USER_PASSWORD
        if rng.random() < 0.9:
            value = packet.hide_password(rng.randbytes(rng.randrange(0, 40)), secret, auth)
        else:
            value = rng.randbytes(rng.choice([0, 1, 15, 17, 144, 160]))
    elif kind < 0.32:
        atype = rng.choice([d.CHAP_PASSWORD, d.CHAP_CHALLENGE])
        value = rng.randbytes(17 if rng.random() < 0.9 else rng.choice([16, 5]))
    elif kind < 0.40:
        atype, value = d.NAS_IP_ADDRESS, rng.randbytes(4 if rng.random() < 0.95 else rng.choice([3, 5]))
    elif kind < 0.55:
        atype = rng.choice(INTEGER_TYPES)
        value = rng.randbytes(4 if rng.random() < 0.95 else rng.choice([2, 0, 6]))
    elif kind < 0.63:
        atype, value = d.PROXY_STATE, rng.randbytes(rng.randrange(0, 30))
    elif kind < 0.88:
        atype, value = d.VENDOR_SPECIFIC, random_vsa_value(rng)
    else:
        atype, value = rng.randrange(1, 256), rng.randbytes(rng.randrange(0, 20))
    return bytes([atype, len(value) + 2]) + value


def random_request(rng: random.Random, secret: bytes) -> bytes:
    """A request with valid structure and authenticators (unless its attributes are the point)."""
    code = rng.choice([1, 4, 12, 1, 4]) if rng.random() < 0.9 else rng.choice([2, 3, 5, 11, 40, 0, 255])
    auth = bytes(16) if code == d.Code.ACCOUNTING_REQUEST else rng.randbytes(16)
    chunks = [random_attribute(rng, secret, auth) for _ in range(rng.randrange(0, 14))]
    ma = rng.random()
    if ma < 0.55:
        chunks.insert(0 if ma < 0.4 else rng.randrange(0, len(chunks) + 1), b"\x50\x12" + bytes(16))
    elif ma < 0.6:
        chunks.insert(rng.randrange(0, len(chunks) + 1), b"\x50\x12" + bytes(16))
        chunks.insert(rng.randrange(0, len(chunks) + 1), b"\x50\x12" + rng.randbytes(16))
    elif ma < 0.63:
        n = rng.choice([0, 15, 17])
        chunks.insert(rng.randrange(0, len(chunks) + 1), bytes([80, n + 2]) + bytes(n))
    body = b"".join(chunks)[:4076]
    data = bytearray(struct.pack("!BBH", code, rng.randrange(256), 20 + len(body)) + auth + body)
    # Sign: Message-Authenticator (RFC 3579 §3.2) with the authenticator the packet carries (zeros
    # for accounting), then the accounting Request Authenticator (RFC 2866 §3) over the result.
    offset = packet.attribute_offset(bytes(data), d.MESSAGE_AUTHENTICATOR)
    if offset is not None and offset + 16 <= len(data):
        data[offset:offset + 16] = packet.message_authenticator(bytes(data), secret, auth, offset)
    if code == d.Code.ACCOUNTING_REQUEST:
        data[4:20] = packet.request_authenticator(bytes(data), secret)
    return bytes(data)


def mutate(rng: random.Random, data: bytes) -> bytes:
    """One of the ways a datagram goes wrong on the way (or is forged)."""
    buf = bytearray(data)
    kind = rng.randrange(8)
    if kind == 0 and buf:
        for _ in range(rng.randrange(1, 4)):
            buf[rng.randrange(len(buf))] ^= 1 << rng.randrange(8)
    elif kind == 1:
        del buf[rng.randrange(len(buf) + 1):]
    elif kind == 2:
        buf += rng.randbytes(rng.randrange(1, 40))  # padding past Length
    elif kind == 3 and len(buf) >= 4:
        buf[2:4] = struct.pack("!H", max(0, len(buf) + rng.randrange(-6, 7)))
    elif kind == 4 and len(buf) >= 4:
        buf[2:4] = struct.pack("!H", rng.randrange(0, 65536))
    elif kind == 5 and buf:
        buf[0] = rng.randrange(256)
    elif kind == 6 and len(buf) > 21:
        buf[rng.randrange(20, len(buf))] = rng.choice([0, 1, 2, 255])  # an attribute length, likely
    elif kind == 7 and len(buf) > 20:
        pos = rng.randrange(20, len(buf))
        buf[pos:pos] = rng.randbytes(rng.randrange(1, 5))
    return bytes(buf)


def corpus(seed: int, count: int) -> list[tuple[bytes, bytes, bool]]:
    """(datagram, secret, require_message_authenticator): valid packets followed by mutants."""
    rng = random.Random(seed)
    items = []
    for _ in range(count):
        secret = rng.randbytes(rng.choice([1, 8, 16, 63, 64, 65, 100]))
        data = random_request(rng, secret)
        require = rng.random() < 0.7
        items.append((data, secret, require))
        for _ in range(2):
            wrong = rng.random() < 0.1
            items.append((mutate(rng, data), secret + b"x" if wrong else secret, require))
    return items


SEED = 20240711
CORPUS = corpus(SEED, 1500)
