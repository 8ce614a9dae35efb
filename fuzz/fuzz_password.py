#!/usr/bin/env python3
"""Fuzz target: User-Password hiding and unhiding (RFC 2865 §5.2), alone and inside a request.

Input: a secret (0..70 octets), a Request Authenticator (16 octets, or fewer when the input runs
out: both codecs must treat a short one alike), then the hidden value.

- `unhide_password` agrees between the codecs for any value (bad lengths are `bad_password`).
- Round trip: for a password p of at most 128 octets, `hide_password` agrees between the codecs,
  the hidden form is 16..128 octets in steps of 16, and unhiding it gives p without its trailing
  NULs, in both codecs.
- In a signed Access-Request (Message-Authenticator first, so it verifies), `parse_request` agrees,
  and a parsed `password` is exactly what `unhide_password` returns.

    python fuzz/fuzz_password.py /tmp/password-corpus fuzz/corpus/password
"""

from _harness import Mismatch, Reader, main, packet, same

from radcore import dictionary as d


def test_one_input(data: bytes) -> None:
    r = Reader(data)
    secret = r.take(r.int_in(0, 70))
    authenticator = r.take(16)
    hidden = r.rest()

    unhidden = same("unhide_password", hidden, secret, authenticator)
    if unhidden[0] == "ok" and len(unhidden[1]) > len(hidden):
        raise Mismatch("unhiding made the value longer")

    password = hidden[:128]
    made = same("hide_password", password, secret, authenticator)
    if made[0] == "ok":
        wire = made[1]
        if len(wire) != max(16, -(-len(password) // 16) * 16):
            raise Mismatch(f"hidden length {len(wire)} for a {len(password)}-octet password")
        back = same("unhide_password", wire, secret, authenticator)
        if len(authenticator) == 16 and back != ("ok", password.rstrip(b"\x00")):
            raise Mismatch(f"unhide(hide(p)) != p: {password!r} -> {back!r}")

    if len(authenticator) == 16 and len(hidden) <= 253 and secret:
        attrs = [(d.USER_NAME, b"45-001122333"), (d.USER_PASSWORD, hidden)]
        request = packet.encode_access_request(7, authenticator, attrs, secret)
        parsed = same("parse_request", request, secret, True)
        if parsed[0] == "ok":
            fields = dict(zip(packet.Request._fields, parsed[1][1]))
            if ("ok", fields["password"]) != unhidden:
                raise Mismatch("parse_request and unhide_password disagree on the password")
        elif parsed[1:] != unhidden[1:]:
            raise Mismatch(f"a signed request failed for another reason than its password: {parsed!r}")


if __name__ == "__main__":
    main(test_one_input)
