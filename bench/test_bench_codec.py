"""Per-packet cost of the RADIUS codec: the Cython fast path, the pure-Python reference and pyrad.

Each benchmark times what a server does with one request from a Cisco gateway: decode it, verify it
(Message-Authenticator on an Access-Request, the Request Authenticator on an Accounting-Request),
read the fields the prepaid logic needs, and encode the signed reply. Packets and replies are the
same for all three implementations and are built outside the timed callable; the assertions after
each run check that the reply verifies.

Run: .venv/bin/python -m pytest bench/test_bench_codec.py
(group "access-request" and group "accounting-request"; compare the means within a group).
"""

from __future__ import annotations

import os
import pathlib

import pytest

from radcore import dictionary as d
from radcore import packet

pyrad_packet = pytest.importorskip("pyrad.packet")
pyrad_dictionary = pytest.importorskip("pyrad.dictionary")

DICTIONARY = pathlib.Path(__file__).parent.parent / "tests" / "vectors" / "dictionary"
SECRET = b"cisco-gw-secret"
REQUEST_AUTH = bytes.fromhex("5d8e2f6a0b4c19e3a7d0c4f1e2b3a495")
CISCO = d.VENDOR_CISCO


def _cython():
    try:
        from radcore import _fastpath
    except ImportError as exc:
        if os.environ.get("RADCORE_REQUIRE_EXTENSIONS"):
            pytest.fail(f"radcore._fastpath does not import: {exc}")
        pytest.skip(f"radcore._fastpath is not built: {exc}")
    return _fastpath


# A typical card-authorization request from a Cisco IOS gateway (debit-card application): the PIN
# as User-Password, the dialled number, the gateway address, h323-conf-id and h323-call-origin,
# signed with a Message-Authenticator as its first attribute (BlastRADIUS).
ACCESS_REQUEST = packet.encode_access_request(
    42, REQUEST_AUTH,
    [(d.USER_NAME, b"45-001122333"),
     (d.CALLED_STATION_ID, b"4915112345678"),
     (d.NAS_IP_ADDRESS, bytes([10, 20, 30, 40])),
     (d.vsa_key(CISCO, d.H323_CONF_ID), b"h323-conf-id=3A2B1C0D 11223344 55667788 99AABBCC"),
     (d.vsa_key(CISCO, d.H323_CALL_ORIGIN), b"h323-call-origin=answer")],
    SECRET, password=b"73519264")

# The Access-Accept radcore sends back: return code, credit, currency, time limit.
ACCEPT_ATTRS = [
    (d.vsa_key(CISCO, d.H323_RETURN_CODE), b"h323-return-code=0"),
    (d.vsa_key(CISCO, d.H323_CREDIT_AMOUNT), b"h323-credit-amount=12.50"),
    (d.vsa_key(CISCO, d.H323_CURRENCY), b"h323-currency=USD"),
    (d.vsa_key(CISCO, d.H323_CREDIT_TIME), b"h323-credit-time=360"),
    (d.SESSION_TIMEOUT, (360).to_bytes(4, "big")),
]

# A Stop: session time and the h323 call-detail VSAs a Cisco gateway sends.
ACCOUNTING_REQUEST = packet.encode_accounting_request(
    7,
    [(d.USER_NAME, b"45-001122333"),
     (d.ACCT_STATUS_TYPE, (2).to_bytes(4, "big")),
     (d.ACCT_SESSION_ID, b"0000ABCD"),
     (d.ACCT_SESSION_TIME, (125).to_bytes(4, "big")),
     (d.ACCT_DELAY_TIME, (0).to_bytes(4, "big")),
     (d.NAS_IP_ADDRESS, bytes([10, 20, 30, 40])),
     (d.CALLED_STATION_ID, b"4915112345678"),
     (d.vsa_key(CISCO, d.H323_CONF_ID), b"h323-conf-id=3A2B1C0D 11223344 55667788 99AABBCC"),
     (d.vsa_key(CISCO, d.H323_CALL_ORIGIN), b"h323-call-origin=answer"),
     (d.vsa_key(CISCO, d.H323_SETUP_TIME), b"h323-setup-time=12:00:00.000 UTC Mon Nov 25 2024"),
     (d.vsa_key(CISCO, d.H323_CONNECT_TIME), b"h323-connect-time=12:00:05.000 UTC Mon Nov 25 2024"),
     (d.vsa_key(CISCO, d.H323_DISCONNECT_TIME), b"h323-disconnect-time=12:02:10.000 UTC Mon Nov 25 2024"),
     (d.vsa_key(CISCO, d.H323_DISCONNECT_CAUSE), b"h323-disconnect-cause=10")],
    SECRET)


def _radcore_access(codec):
    parse_request, encode_response = codec.parse_request, codec.encode_response
    data, secret, attrs, accept = ACCESS_REQUEST, SECRET, ACCEPT_ATTRS, d.Code.ACCESS_ACCEPT

    def run():
        req = parse_request(data, secret)  # structure, Message-Authenticator, User-Password
        return encode_response(req, accept, attrs, secret)

    return run


def _radcore_accounting(codec):
    parse_request, encode_response = codec.parse_request, codec.encode_response
    data, secret, response = ACCOUNTING_REQUEST, SECRET, d.Code.ACCOUNTING_RESPONSE

    def run():
        req = parse_request(data, secret)  # structure, Request Authenticator
        return encode_response(req, response, (), secret)

    return run


def _check_access(wire: bytes) -> None:
    pkt = packet.decode_response(wire, REQUEST_AUTH, SECRET)
    assert pkt.code == d.Code.ACCESS_ACCEPT and pkt.attributes[0][0] == d.MESSAGE_AUTHENTICATOR


def _check_accounting(wire: bytes) -> None:
    pkt = packet.decode_response(wire, ACCOUNTING_REQUEST[4:20], SECRET)
    assert pkt.code == d.Code.ACCOUNTING_RESPONSE


@pytest.mark.benchmark(group="access-request")
def test_access_request_cython(benchmark):
    """radcore._fastpath: parse_request (walk, Message-Authenticator, PIN unhide, the prepaid fields)
    plus encode_response (Access-Accept with h323 VSAs, Message-Authenticator, Response Authenticator)."""
    run = _radcore_access(_cython())
    benchmark.extra_info["implementation"] = "cython"
    _check_access(benchmark(run))


@pytest.mark.benchmark(group="access-request")
def test_access_request_python(benchmark):
    """radcore.packet, the pure-Python reference: the same parse_request plus encode_response."""
    run = _radcore_access(packet)
    benchmark.extra_info["implementation"] = "python"
    _check_access(benchmark(run))


@pytest.mark.benchmark(group="access-request")
def test_access_request_pyrad(benchmark):
    """pyrad 2.6 doing the same work: decode with the dictionary, verify the Message-Authenticator,
    decrypt the PIN, read User-Name, Called-Station-Id, NAS-IP-Address and the two h323 VSAs,
    then CreateReply with the same attributes and ReplyPacket (which signs it)."""
    dictionary = pyrad_dictionary.Dictionary(str(DICTIONARY))
    AuthPacket = pyrad_packet.AuthPacket
    data, secret = ACCESS_REQUEST, SECRET
    benchmark.extra_info["implementation"] = "pyrad"

    def run():
        pkt = AuthPacket(packet=data, secret=secret, dict=dictionary)
        if not pkt.verify_message_authenticator():
            raise AssertionError("Message-Authenticator")
        fields = (pkt["User-Name"][0], pkt.PwDecrypt(pkt[2][0]), pkt["Called-Station-Id"][0],
                  pkt["NAS-IP-Address"][0], pkt["h323-conf-id"][0], pkt["h323-call-origin"][0])
        reply = pkt.CreateReply()
        reply["h323-return-code"] = "h323-return-code=0"
        reply["h323-credit-amount"] = "h323-credit-amount=12.50"
        reply["h323-currency"] = "h323-currency=USD"
        reply["h323-credit-time"] = "h323-credit-time=360"
        reply["Session-Timeout"] = 360
        assert fields[1] == "73519264"
        return reply.ReplyPacket()

    _check_access(benchmark(run))


@pytest.mark.benchmark(group="accounting-request")
def test_accounting_request_cython(benchmark):
    """radcore._fastpath: parse_request of a Stop (walk, Request Authenticator, integers and h323
    VSAs) plus encode_response (Accounting-Response, Response Authenticator)."""
    run = _radcore_accounting(_cython())
    benchmark.extra_info["implementation"] = "cython"
    _check_accounting(benchmark(run))


@pytest.mark.benchmark(group="accounting-request")
def test_accounting_request_python(benchmark):
    """radcore.packet, the pure-Python reference: the same parse_request plus encode_response."""
    run = _radcore_accounting(packet)
    benchmark.extra_info["implementation"] = "python"
    _check_accounting(benchmark(run))


@pytest.mark.benchmark(group="accounting-request")
def test_accounting_request_pyrad(benchmark):
    """pyrad 2.6 doing the same work: decode with the dictionary, VerifyAcctRequest, read the fields
    the settlement needs (status, session id and time, delay, h323-conf-id, call origin, called
    number), then CreateReply and ReplyPacket."""
    dictionary = pyrad_dictionary.Dictionary(str(DICTIONARY))
    AcctPacket = pyrad_packet.AcctPacket
    data, secret = ACCOUNTING_REQUEST, SECRET
    benchmark.extra_info["implementation"] = "pyrad"

    def run():
        pkt = AcctPacket(packet=data, secret=secret, dict=dictionary)
        if not pkt.VerifyAcctRequest():
            raise AssertionError("Request Authenticator")
        fields = (pkt["User-Name"][0], pkt["Acct-Status-Type"][0], pkt["Acct-Session-Id"][0],
                  pkt["Acct-Session-Time"][0], pkt["Acct-Delay-Time"][0], pkt["Called-Station-Id"][0],
                  pkt["h323-conf-id"][0], pkt["h323-call-origin"][0])
        assert fields[3] == 125
        return pkt.CreateReply().ReplyPacket()

    _check_accounting(benchmark(run))
