#!/usr/bin/env python3
"""Fuzz target: packet decoding, both implementations, with a decode -> encode -> decode round trip.

The input is one datagram as a NAS (or an attacker) would send it.

- `decode`, `parse_request` (with and without the Message-Authenticator requirement) and
  `decode_response` agree between the reference and the fast path, result or exception class and
  reason (see _harness).
- Round trip: a decoded packet re-encoded by either codec gives the same bytes in both, and those
  bytes decode to the same packet. (Re-encoding may legitimately differ from the input: padding
  after Length is dropped and a multi-attribute Cisco/Quintum VSA is written as one VSA per
  sub-attribute. Attribute type 0, which the decoder passes through but the encoder refuses, and a
  re-encoding that outgrows 4096 octets must be refused with ValueError, by both.)

    python fuzz/fuzz_decode.py /tmp/decode-corpus fuzz/corpus/decode -max_len=4200
"""

from _harness import Mismatch, main, packet, same

SECRET = b"fuzz-shared-secret"
REQUEST_AUTH = bytes(range(16))


def test_one_input(data: bytes) -> None:
    decoded = same("decode", data)
    same("parse_request", data, SECRET, True)
    same("parse_request", data, SECRET, False)
    same("decode_response", data, REQUEST_AUTH, SECRET)
    if decoded[0] != "ok":
        return
    pkt = decoded[1]
    if len(data) >= 20 and (pkt.code, pkt.identifier, pkt.authenticator) != (data[0], data[1], data[4:20]):
        raise Mismatch("header fields not taken from the header")
    encoded = same("encode", pkt.code, pkt.identifier, pkt.authenticator, pkt.attributes)
    if encoded[0] != "ok":
        body = sum(len(v) + (8 if k > 0xFF else 2) for k, v in pkt.attributes)
        if encoded != ("raise", "ValueError") or (all(k >= 1 for k, _ in pkt.attributes)
                                                   and 20 + body <= 4096):
            raise Mismatch(f"re-encoding a decoded packet failed: {encoded!r}")
        return
    again = same("decode", encoded[1])
    if again != ("ok", pkt):
        raise Mismatch(f"round trip changed the packet: {pkt!r} -> {again!r}")
    if packet.encode(*again[1]) != encoded[1]:
        raise Mismatch("second encoding differs from the first")


if __name__ == "__main__":
    main(test_one_input)
