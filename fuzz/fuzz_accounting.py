#!/usr/bin/env python3
"""Fuzz target: Accounting-Request parsing, past the authenticator, against an independent oracle.

Most random datagrams die at the Request Authenticator; this target signs what it builds, so the
attribute extraction itself is fuzzed. The input is either (first byte even) a list of attributes
chosen from what gateways send in accounting (integers of right and wrong sizes, Cisco and Quintum
h323 VSAs bare and prefixed, Proxy-State, Message-Authenticator, anything), or (odd) raw octets
used as the attribute area as they are. Both are signed with the RFC 2866 §3 Request
Authenticator (and a Message-Authenticator when one is present).

- `parse_request` agrees between the codecs (result, or class and reason).
- Against an oracle written from `decode()`'s attribute list and RFC 2865/2866 alone: the packet
  is accepted exactly when the oracle expects it, with the same error reason otherwise, and every
  field the prepaid engine reads (User-Name, Acct-Status-Type, Acct-Session-Time, -1 when absent,
  Acct-Delay-Time, h323-conf-id, NAS-IP-Address, Proxy-States in order, ...) is what the oracle
  computes: the last occurrence wins, text is UTF-8 with replacement, h323 values lose their
  `name=` prefix.

    python fuzz/fuzz_accounting.py /tmp/accounting-corpus fuzz/corpus/accounting
"""

import hashlib
import struct

from _harness import Mismatch, Reader, main, packet, same

from radcore import dictionary as d

SECRET = b"fuzz-accounting-secret"
INTEGERS = (d.ACCT_STATUS_TYPE, d.ACCT_SESSION_TIME, d.ACCT_DELAY_TIME, d.ACCT_TERMINATE_CAUSE,
            d.EVENT_TIMESTAMP)
TEXTS = {d.USER_NAME: "user_name", d.NAS_IDENTIFIER: "nas_identifier", d.CALLED_STATION_ID: "called",
         d.CALLING_STATION_ID: "calling", d.ACCT_SESSION_ID: "session_id"}
H323 = {d.H323_CONF_ID: "conf_id", d.H323_CALL_ORIGIN: "call_origin",
        d.H323_REDIRECT_NUMBER: "redirect_number"}
CHOICES = (d.USER_NAME, d.NAS_IP_ADDRESS, d.NAS_IDENTIFIER, d.CALLED_STATION_ID, d.CALLING_STATION_ID,
           d.ACCT_SESSION_ID, d.PROXY_STATE, d.MESSAGE_AUTHENTICATOR, d.USER_PASSWORD, *INTEGERS)


def build_attributes(r: Reader) -> bytes:
    out = bytearray()
    while r.left() and len(out) < 3800:
        kind = r.byte()
        if kind < 150:
            atype = CHOICES[kind % len(CHOICES)]
            size = 4 if atype in INTEGERS or atype == d.NAS_IP_ADDRESS else 16 \
                if atype == d.MESSAGE_AUTHENTICATOR else r.int_in(0, 40)
            if r.byte() < 24:  # sometimes the wrong size
                size = r.int_in(0, 8)
            value = r.take(size)
            out += bytes((atype, len(value) + 2)) + value
        elif kind < 230:
            vendor = (d.VENDOR_CISCO, d.VENDOR_QUINTUM, 311)[kind % 3]
            subs = bytearray()
            for _ in range(r.int_in(0, 3)):
                vtype = (d.H323_CONF_ID, d.H323_CALL_ORIGIN, d.H323_REDIRECT_NUMBER, d.AVPAIR,
                         r.byte())[r.byte() % 5]
                text = r.take(r.int_in(0, 30))
                if vtype in d.H323_NAMES and r.flag():
                    text = d.H323_NAMES[vtype].encode() + b"=" + text
                subs += bytes((vtype, len(text) + 2)) + text
            value = struct.pack("!I", vendor) + bytes(subs[:240])
            out += bytes((d.VENDOR_SPECIFIC, len(value) + 2)) + value
        else:
            value = r.take(r.int_in(0, 30))
            out += bytes((r.byte(), len(value) + 2)) + value
    return bytes(out)


def sign(attributes: bytes) -> bytes:
    buf = bytearray(struct.pack("!BBH", d.Code.ACCOUNTING_REQUEST, 42, 20 + len(attributes)) + bytes(16)
                    + attributes)
    offset = _first_offset(bytes(buf), d.MESSAGE_AUTHENTICATOR)
    if offset is not None and offset + 16 <= len(buf):
        buf[offset:offset + 16] = packet.message_authenticator(bytes(buf), SECRET, bytes(16), offset)
    buf[4:20] = packet.request_authenticator(bytes(buf), SECRET)
    return bytes(buf)


def _first_offset(data: bytes, atype: int) -> int | None:
    pos = 20
    while pos + 2 <= len(data):
        if data[pos] == atype:
            return pos + 2
        if data[pos + 1] < 2:
            return None
        pos += data[pos + 1]
    return None


def walk(data: bytes):
    """RFC 2865 §5 attributes of a packet whose Length is len(data), in order, with Cisco/Quintum
    VSAs split (§5.26 suggested format; anything else stays one raw Vendor-Specific). A structural
    fault is yielded where the walk meets it, as (None, the error it must produce)."""
    pos = 20
    while pos < len(data):
        if pos + 2 > len(data) or data[pos + 1] < 2 or pos + data[pos + 1] > len(data):
            yield None, ("error", "PacketError", "bad_attribute")
            return
        atype, value = data[pos], data[pos + 2:pos + data[pos + 1]]
        pos += data[pos + 1]
        if atype != d.VENDOR_SPECIFIC:
            yield atype, value
            continue
        vendor = int.from_bytes(value[:4], "big") if len(value) >= 4 else None
        subs, rest = [], value[4:]
        while vendor in (d.VENDOR_CISCO, d.VENDOR_QUINTUM) and rest:
            if len(rest) < 2 or rest[1] < 2 or rest[1] > len(rest):
                subs = []
                break
            subs.append((vendor << 8 | rest[0], rest[2:rest[1]]))
            rest = rest[rest[1]:]
        yield from subs or [(d.VENDOR_SPECIFIC, value)]


def expected(data: bytes) -> tuple:
    """What parse_request must return for a signed Accounting-Request, from the RFCs alone."""
    fields = {name: "" for name in (*TEXTS.values(), *H323.values(), "nas_ip")}
    fields.update(status_type=0, session_time=-1, delay_time=0, terminate_cause=0, event_timestamp=0)
    proxy_states, mas = [], 0
    hidden = chap_password = chap_challenge = None
    for key, value in walk(data):
        if key is None:
            return value
        if key == d.MESSAGE_AUTHENTICATOR:
            if len(value) != 16 or mas:
                return ("error", "MessageAuthenticatorError", "bad_message_authenticator")
            mas += 1
        elif key in TEXTS:
            fields[TEXTS[key]] = value.decode("utf-8", "replace")
        elif key == d.NAS_IP_ADDRESS:
            if len(value) != 4:
                return ("error", "PacketError", "bad_attribute")
            fields["nas_ip"] = ".".join(str(b) for b in value)
        elif key == d.PROXY_STATE:
            proxy_states.append(value)
        elif key == d.USER_PASSWORD:
            hidden = value
        elif key == d.CHAP_PASSWORD:
            chap_password = value
        elif key == d.CHAP_CHALLENGE:
            chap_challenge = value
        elif key in INTEGERS:
            if len(value) != 4:
                return ("error", "PacketError", "bad_attribute")
            name = {d.ACCT_STATUS_TYPE: "status_type", d.ACCT_SESSION_TIME: "session_time",
                    d.ACCT_DELAY_TIME: "delay_time", d.ACCT_TERMINATE_CAUSE: "terminate_cause",
                    d.EVENT_TIMESTAMP: "event_timestamp"}[key]
            fields[name] = int.from_bytes(value, "big")
        elif key > 0xFF and (key & 0xFF) in H323:
            fields[H323[key & 0xFF]] = packet.vsa_text(value, key & 0xFF)
    fields["proxy_states"] = tuple(proxy_states)
    fields["has_message_authenticator"] = bool(mas)
    fields.update(code=d.Code.ACCOUNTING_REQUEST, identifier=42, authenticator=data[4:20],
                  chap_password=chap_password,
                  chap_challenge=data[4:20] if chap_password is not None and chap_challenge is None
                  else chap_challenge)
    # RFC 2865 §5.2: 16..128 octets in steps of 16, checked after the authenticators.
    if hidden is not None and (not hidden or len(hidden) % 16 or len(hidden) > 128):
        return ("error", "PacketError", "bad_password")
    fields["password"] = None if hidden is None else _unhide(hidden, data[4:20])
    return ("ok", fields)


def _unhide(hidden: bytes, authenticator: bytes) -> bytes:
    """RFC 2865 §5.2 written out again, independently of the codecs."""
    out, prev = bytearray(), authenticator
    for i in range(0, len(hidden), 16):
        key = hashlib.md5(SECRET + prev).digest()
        out += bytes(a ^ b for a, b in zip(hidden[i:i + 16], key))
        prev = hidden[i:i + 16]
    return bytes(out).rstrip(b"\0")


def test_one_input(data: bytes) -> None:
    r = Reader(data)
    raw = r.flag()
    attributes = r.rest()[:4076] if raw else build_attributes(r)
    signed = sign(attributes)
    got = same("parse_request", signed, SECRET, True)
    same("parse_request", signed, SECRET + b"x", True)  # the wrong secret: refused alike
    walked = list(walk(signed))
    decoded = same("decode", signed)
    if walked and walked[-1][0] is None:
        if decoded != walked[-1][1]:
            raise Mismatch(f"decode {decoded!r}, oracle {walked[-1][1]!r}")
    elif decoded != ("ok", packet.Packet(d.Code.ACCOUNTING_REQUEST, 42, signed[4:20], tuple(walked))):
        raise Mismatch(f"decode {decoded!r}, oracle {walked!r}")
    want = expected(signed)
    if want[0] != "ok":
        if got != want:
            raise Mismatch(f"parse_request {got!r}, oracle {want!r}")
        return
    if got[0] != "ok":
        raise Mismatch(f"a valid signed Accounting-Request was refused: {got!r}")
    fields = dict(zip(packet.Request._fields, got[1][1]))
    if set(want[1]) != set(fields):
        raise Mismatch(f"oracle and Request disagree on the fields: {set(want[1]) ^ set(fields)}")
    for name, value in want[1].items():
        if fields[name] != value:
            raise Mismatch(f"{name}: parse_request {fields[name]!r}, oracle {value!r}")


if __name__ == "__main__":
    main(test_one_input)
