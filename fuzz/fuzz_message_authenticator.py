#!/usr/bin/env python3
"""Fuzz target: Message-Authenticator (RFC 3579 §3.2) computation and verification.

Input: a secret, a packet code (Access-Request, Accounting-Request or Status-Server), a Request
Authenticator, attribute bytes (any structure), where to put the Message-Authenticator, and an
optional tampering (one flipped bit at a chosen offset).

- `message_authenticator` agrees between the codecs for any offset, valid or not.
- The packet is signed by the reference (and given its Request Authenticator when it is
  accounting). Untampered, a structurally valid packet never fails with a Message-Authenticator
  error; with one bit flipped anywhere inside Length it must be rejected (some PacketError);
  `parse_request` agrees between the codecs either way.
- Replies: `encode_response` to a parsed request is accepted by `decode_response` in both codecs,
  and one flipped bit makes both refuse it.

    python fuzz/fuzz_message_authenticator.py /tmp/ma-corpus fuzz/corpus/message_authenticator
"""

import struct

from _harness import Mismatch, Reader, main, packet, same

from radcore import dictionary as d

CODES = (d.Code.ACCESS_REQUEST, d.Code.ACCOUNTING_REQUEST, d.Code.STATUS_SERVER)
MA = bytes((d.MESSAGE_AUTHENTICATOR, 18)) + bytes(16)


def test_one_input(data: bytes) -> None:
    r = Reader(data)
    secret = r.take(r.int_in(1, 64))
    code = CODES[r.byte() % len(CODES)]
    authenticator = bytes(16) if code == d.Code.ACCOUNTING_REQUEST else r.take(16).ljust(16, b"\0")
    where = r.int_in(0, 255)
    tamper = r.flag()
    flip = r.int_in(0, 65535)
    odd_offset = r.int_in(0, 300)
    attrs = r.rest()[:4000]

    cut = min(where, len(attrs))
    body = attrs[:cut] + MA + attrs[cut:]
    buf = bytearray(struct.pack("!BBH", code, 1, 20 + len(body)) + authenticator + body)
    same("message_authenticator", bytes(buf), secret, authenticator, odd_offset)
    offset = packet.attribute_offset(bytes(buf), d.MESSAGE_AUTHENTICATOR)
    if offset is None or offset + 16 > len(buf):
        same("parse_request", bytes(buf), secret, True)
        return
    mac = same("message_authenticator", bytes(buf), secret, authenticator, offset)
    if mac[0] != "ok":
        raise Mismatch(f"cannot compute a Message-Authenticator at a valid offset: {mac!r}")
    buf[offset:offset + 16] = mac[1]
    if code == d.Code.ACCOUNTING_REQUEST:
        buf[4:20] = packet.request_authenticator(bytes(buf), secret)
    signed = bytes(buf)
    parsed = same("parse_request", signed, secret, True)
    # A well-formed packet we signed may fail for its other attributes, or because it carries a
    # second (or odd-sized) Message-Authenticator; never because our signature is wrong.
    if parsed[0] == "error" and same("decode", signed)[0] == "ok" and (
            parsed[1] == "AuthenticatorError"
            or (parsed[1] == "MessageAuthenticatorError" and _only_one_good_ma(signed))):
        raise Mismatch(f"a correctly signed packet was refused: {parsed!r}")

    if tamper:
        bit = flip % (len(signed) * 8)
        forged = bytearray(signed)
        forged[bit // 8] ^= 1 << (bit % 8)
        result = same("parse_request", bytes(forged), secret, True)
        if result[0] == "ok":
            raise Mismatch(f"a packet with bit {bit} flipped was accepted")

    if parsed[0] == "ok":
        _check_reply(signed, secret)


def _only_one_good_ma(data: bytes) -> bool:
    """One Message-Authenticator, 16 octets: then a MessageAuthenticatorError is a false refusal."""
    found = 0
    for key, value in packet.decode(data).attributes:
        if key == d.MESSAGE_AUTHENTICATOR:
            found += 1
            if len(value) != 16:
                return False
    return found == 1


def _check_reply(request_bytes: bytes, secret: bytes) -> None:
    req = packet.parse_request(request_bytes, secret, True)
    reply_code = d.Code.ACCOUNTING_RESPONSE if req.code == d.Code.ACCOUNTING_REQUEST else d.Code.ACCESS_ACCEPT
    try:
        wire = packet.encode_response(req, reply_code, [(d.REPLY_MESSAGE, b"ok")], secret)
    except ValueError:
        return  # Proxy-States too long to echo within 4096 octets
    ok = same("decode_response", wire, req.authenticator, secret)
    if ok[0] != "ok":
        raise Mismatch(f"our own reply does not verify: {ok!r}")
    for bit in (0, 8 * 4 + 3, len(wire) * 8 - 1):
        forged = bytearray(wire)
        forged[bit // 8] ^= 1 << (bit % 8)
        if same("decode_response", bytes(forged), req.authenticator, secret)[0] == "ok":
            raise Mismatch(f"a reply with bit {bit} flipped was accepted")


if __name__ == "__main__":
    main(test_one_input)
