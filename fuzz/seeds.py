"""Writes the seed corpus, fuzz/corpus/<target>/ (committed; re-run after changing a target's input layout).

    python fuzz/seeds.py

Seeds are deterministic: every packet of tests/vectors/*.txt, requests and replies as Cisco and
Quintum gateways send them (built with the reference codec), and the edge cases of RFC 2865 §3 and
RFC 6613 §2.6.4 (Length 19, 20, 4096 and 4097, attribute lengths 0 and 1, an attribute past Length,
a stray octet). The structured targets get the same packets laid out as their Reader expects.
Names are the content's SHA-1, as libFuzzer names corpus files, so re-running only adds.

The committed corpus also holds inputs atheris found that add coverage, merged in after long runs:

    PATH=.venv/bin:$PATH PYTHONPATH=.:fuzz fuzz/fuzz_decode.py -merge=1 -max_len=4200 \
        fuzz/corpus/decode /tmp/corpus-decode
"""

from __future__ import annotations

import hashlib
import random
import struct
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from radcore import dictionary as d
from radcore import packet

SECRET = b"seed-secret-0123"
CISCO_CONF = d.vsa_key(d.VENDOR_CISCO, d.H323_CONF_ID)
QUINTUM_CONF = d.vsa_key(d.VENDOR_QUINTUM, d.H323_CONF_ID)


def vector_packets() -> list[bytes]:
    out: list[bytes] = []
    for path in sorted((HERE.parent / "tests" / "vectors").glob("*.txt")):
        current = None
        for line in path.read_text("utf-8").splitlines():
            word, _, rest = line.strip().partition(" ")
            if word == "vector":
                if current:
                    out.append(current)
                current = b""
            elif word in ("packet", "request") and current is not None:
                if word == "request":
                    out.append(bytes.fromhex(rest.replace(" ", "")))
                else:
                    current += bytes.fromhex(rest.replace(" ", ""))
        if current:
            out.append(current)
    return out


def gateway_packets(rng: random.Random) -> list[bytes]:
    out = []
    for conf_key in (CISCO_CONF, QUINTUM_CONF):
        auth = rng.randbytes(16)
        attrs = [(d.USER_NAME, b"45-001122333"), (d.NAS_IP_ADDRESS, bytes([10, 0, 0, 1])),
                 (d.CALLED_STATION_ID, b"442079460000"), (d.CALLING_STATION_ID, b"12125551234"),
                 (conf_key, b"h323-conf-id=3A2B1C0D 11223344 55667788 99AABBCC")]
        out.append(packet.encode_access_request(1, auth, attrs, SECRET, password=b"1234567890"))
        out.append(packet.encode_access_request(2, auth, attrs + [(d.PROXY_STATE, b"hop")], SECRET,
                                                password=b"0" * 40))
        out.append(packet.encode_access_request(3, auth, attrs, SECRET, password=b"12345678",
                                                message_authenticator=False))
        for status, extra in ((1, []), (3, [(d.ACCT_SESSION_TIME, (45).to_bytes(4, "big"))]),
                              (2, [(d.ACCT_SESSION_TIME, (187).to_bytes(4, "big")),
                                   (d.ACCT_DELAY_TIME, (2).to_bytes(4, "big")),
                                   (d.ACCT_TERMINATE_CAUSE, (1).to_bytes(4, "big"))]),
                              (7, []), (8, [])):
            out.append(packet.encode_accounting_request(
                status, attrs + [(d.ACCT_STATUS_TYPE, status.to_bytes(4, "big")),
                                 (d.ACCT_SESSION_ID, b"0000ABCD")] + extra, SECRET))
    out.append(packet.encode_access_request(9, rng.randbytes(16), [], SECRET, code=d.Code.STATUS_SERVER))
    req = packet.parse_request(out[0], SECRET)
    out.append(packet.encode_response(req, d.Code.ACCESS_ACCEPT,
                                      [(d.vsa_key(d.VENDOR_CISCO, d.H323_CREDIT_TIME), b"h323-credit-time=360"),
                                       (d.SESSION_TIMEOUT, (360).to_bytes(4, "big"))], SECRET))
    return out


def edge_packets(base: bytes) -> list[bytes]:
    header = bytes([d.Code.ACCESS_REQUEST, 7]) + (22).to_bytes(2, "big") + bytes(16)
    big_attrs = b"".join(bytes((d.REPLY_MESSAGE, 255)) + bytes(253) for _ in range(16))[:4076]
    full = struct.pack("!BBH", 1, 1, 4096) + bytes(16) + big_attrs
    return [
        b"", base[:19], base[:20],
        base[:2] + (19).to_bytes(2, "big") + base[4:],
        base[:2] + (20).to_bytes(2, "big") + base[4:],
        base[:2] + (len(base) + 1).to_bytes(2, "big") + base[4:],
        base + b"\x00" * 7,                      # padding past Length
        full, full + b"\x00",                    # 4096 and a 4097-octet datagram
        struct.pack("!BBH", 1, 1, 4097) + bytes(16) + big_attrs + b"\x00",
        header + bytes([d.USER_NAME, 0]), header + bytes([d.USER_NAME, 1]),
        header[:2] + (23).to_bytes(2, "big") + header[4:] + bytes([d.USER_NAME, 5, 0x41]),
        header[:2] + (21).to_bytes(2, "big") + header[4:] + b"\x01",
        bytes([d.Code.ACCESS_ACCEPT]) + base[1:], bytes([0]) + base[1:], bytes([255]) + base[1:],
    ]


def reader_layouts(packets: list[bytes], rng: random.Random) -> dict[str, list[bytes]]:
    """The same material in the byte layouts of the structured targets' Readers."""
    password, ma, accounting = [], [], []
    for pw in (b"", b"1234", b"1234567890", b"0" * 16, b"9" * 17, b"x" * 128):
        auth = rng.randbytes(16)
        hidden = packet.hide_password(pw, SECRET, auth)
        password.append(bytes([len(SECRET)]) + SECRET + auth + hidden)
    password.append(bytes([0]) + rng.randbytes(16) + rng.randbytes(17))
    for pkt in packets:
        if len(pkt) < 20:
            continue
        attrs = pkt[20:]
        for code in (0, 1, 2):  # Access-Request, Accounting-Request (no authenticator read), Status-Server
            auth = b"" if code == 1 else rng.randbytes(16)
            ma.append(bytes([len(SECRET) - 1]) + SECRET + bytes([code]) + auth
                      + bytes([rng.randrange(40), rng.randrange(2)]) + rng.randbytes(6) + attrs)
        accounting.append(b"\x01" + attrs)
    for _ in range(8):
        accounting.append(b"\x00" + rng.randbytes(rng.randrange(20, 200)))
    return {"password": password, "message_authenticator": ma, "accounting": accounting}


def write(target: str, items: list[bytes]) -> int:
    directory = HERE / "corpus" / target
    directory.mkdir(parents=True, exist_ok=True)
    for data in items:
        (directory / hashlib.sha1(data).hexdigest()).write_bytes(data)
    return len(set(items))


def main() -> None:
    rng = random.Random(20251125)
    packets = vector_packets() + gateway_packets(rng)
    decode = packets + edge_packets(packets[-3])
    counts = {"decode": write("decode", decode)}
    for target, items in reader_layouts(packets, rng).items():
        counts[target] = write(target, items)
    print(", ".join(f"{t}: {n} seeds" for t, n in counts.items()))


if __name__ == "__main__":
    main()
