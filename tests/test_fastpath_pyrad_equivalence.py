"""Both codec implementations against pyrad (`pyrad.packet` with tests/vectors/dictionary), the third
opinion: packets pyrad builds decode to the same attributes in both implementations as in pyrad
itself, requests we build verify in pyrad, our replies pass `VerifyReply` and pyrad's
Message-Authenticator check, and tests/vectors/vendors.txt is what pyrad makes, byte for byte.
"""

from __future__ import annotations

import hashlib
import pathlib
import random
from collections import OrderedDict

import pytest

from radcore import dictionary as d
from radcore import packet

from helpers_codec import CISCO, SEED, load_fastpath

pyrad_packet = pytest.importorskip("pyrad.packet")
pyrad_dictionary = pytest.importorskip("pyrad.dictionary")

VECTORS = pathlib.Path(__file__).parent / "vectors"


@pytest.fixture(scope="module")
def cy():
    """The compiled module; skipped without it, a failure under RADCORE_REQUIRE_EXTENSIONS."""
    return load_fastpath()


@pytest.fixture(scope="module", params=["py", "cy"], ids=["py", "cy"])
def codec(request, cy):
    return packet if request.param == "py" else cy


@pytest.fixture(scope="module")
def pyrad_dict():
    return pyrad_dictionary.Dictionary(str(VECTORS / "dictionary"))


# ---------------------------------------------------------------------------------------------
# pyrad: the third opinion


def _pyrad_key(key) -> int:
    return d.vsa_key(*key) if isinstance(key, tuple) else key


def _grouped(attributes) -> dict[int, list[bytes]]:
    out: dict[int, list[bytes]] = {}
    for key, value in attributes:
        out.setdefault(key, []).append(value)
    return out


def pyrad_requests(pyrad_dict, seed: int, count: int):
    """(pyrad request, its bytes, secret, PAP or CHAP password or "") for Access (PAP and CHAP),
    Accounting and Status-Server requests."""
    rng = random.Random(seed)
    for i in range(count):
        secret = rng.randbytes(rng.choice([6, 16, 64, 90]))
        kind = i % 4
        digits = "".join(rng.choice("0123456789") for _ in range(12))
        conf = " ".join(rng.randbytes(4).hex().upper() for _ in range(4))
        vendor_prefix = "" if kind == 3 else "Quintum-" if rng.random() < 0.3 else ""
        if kind in (0, 1):
            pkt = pyrad_packet.AuthPacket(code=1, id=i % 256, secret=secret, dict=pyrad_dict,
                                          authenticator=rng.randbytes(16),
                                          message_authenticator=kind == 0 or rng.random() < 0.5)
            pkt["User-Name"] = f"{rng.randrange(1, 99999)}-{digits[:9]}"
            password = digits[:rng.randrange(4, 12)]
            if kind == 0:
                pkt["User-Password"] = pkt.PwCrypt(password)
            else:
                challenge = rng.randbytes(16)
                pkt["CHAP-Password"] = b"\x05" + hashlib.md5(b"\x05" + password.encode() + challenge).digest()
                pkt["CHAP-Challenge"] = challenge
            pkt["Called-Station-Id"] = digits
            pkt["NAS-IP-Address"] = f"10.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(1, 255)}"
            pkt[vendor_prefix + "h323-conf-id"] = ("h323-conf-id=" if rng.random() < 0.5 else "") + conf
            pkt[vendor_prefix + "h323-call-origin"] = "answer"
            if rng.random() < 0.5:
                pkt["Proxy-State"] = [rng.randbytes(rng.randrange(1, 20)) for _ in range(rng.randrange(1, 3))]
            if not pkt.message_authenticator and "Proxy-State" in pkt:
                pkt.message_authenticator = True
        elif kind == 2:
            pkt = pyrad_packet.AcctPacket(code=4, id=i % 256, secret=secret, dict=pyrad_dict)
            pkt["User-Name"] = digits[:11]
            pkt["Acct-Status-Type"] = rng.choice(["Start", "Stop", "Interim-Update"])
            pkt["Acct-Session-Id"] = rng.randbytes(4).hex()
            pkt["Acct-Session-Time"] = rng.randrange(0, 1 << 32)
            pkt["Acct-Delay-Time"] = rng.randrange(0, 100)
            pkt["Event-Timestamp"] = rng.randrange(1 << 31)
            pkt["Called-Station-Id"] = digits
            pkt[vendor_prefix + "h323-conf-id"] = conf
            pkt[vendor_prefix + "h323-redirect-number"] = "h323-redirect-number=" + digits[:6]
            pkt[vendor_prefix + "h323-disconnect-cause"] = "h323-disconnect-cause=10"
            password = ""
        else:
            pkt = pyrad_packet.AuthPacket(code=12, id=i % 256, secret=secret, dict=pyrad_dict,
                                          authenticator=rng.randbytes(16), message_authenticator=True)
            pkt["NAS-Identifier"] = "probe"
            password = ""
        yield pkt, pkt.RequestPacket(), secret, password


@pytest.fixture(scope="module")
def pyrad_made(pyrad_dict):
    return list(pyrad_requests(pyrad_dict, SEED + 5, 240))


def test_pyrad_requests_decode_alike(codec, pyrad_dict, pyrad_made):
    for pkt, raw, secret, password in pyrad_made:
        ours = codec.decode(raw)
        assert ours == packet.decode(raw)
        theirs = pyrad_packet.Packet(packet=raw, dict=pyrad_dict, secret=secret)
        assert _grouped(ours.attributes) == {_pyrad_key(k): list(v) for k, v in OrderedDict.items(theirs)}
        req = codec.parse_request(raw, secret, False)
        assert req == packet.parse_request(raw, secret, False)
        assert req.has_message_authenticator == bool(theirs.message_authenticator)
        if req.has_message_authenticator:
            assert theirs.verify_message_authenticator()
        if req.code == d.Code.ACCOUNTING_REQUEST:
            theirs = pyrad_packet.AcctPacket(packet=raw, dict=pyrad_dict, secret=secret)
            assert theirs.VerifyAcctRequest()
            assert req.session_time == theirs["Acct-Session-Time"][0]
            assert req.status_type == int.from_bytes(theirs[d.ACCT_STATUS_TYPE][0], "big")
            assert req.redirect_number == pkt.get("h323-redirect-number", pkt.get(
                "Quintum-h323-redirect-number"))[0].partition("=")[2]
        elif req.code == d.Code.ACCESS_REQUEST:
            theirs = pyrad_packet.AuthPacket(packet=raw, dict=pyrad_dict, secret=secret)
            if req.password is not None:
                assert req.password.decode() == password == theirs.PwDecrypt(theirs[d.USER_PASSWORD][0])
            else:
                assert codec.chap_matches(req.chap_password, req.chap_challenge, password.encode())
                assert theirs.VerifyChapPasswd(password)
            assert req.user_name == pkt["User-Name"][0] and req.called == pkt["Called-Station-Id"][0]
            assert req.nas_ip == pkt["NAS-IP-Address"][0]
            assert req.proxy_states == tuple(OrderedDict.get(pkt, d.PROXY_STATE, []))
            conf = pkt.get("h323-conf-id", pkt.get("Quintum-h323-conf-id"))[0]
            assert req.conf_id == conf.removeprefix("h323-conf-id=") and req.call_origin == "answer"


def test_our_replies_verify_in_pyrad(codec, pyrad_made):
    rng = random.Random(SEED + 6)
    for pkt, raw, secret, _ in pyrad_made:
        req = codec.parse_request(raw, secret, False)
        if req.code == d.Code.ACCOUNTING_REQUEST:
            code, attrs = d.Code.ACCOUNTING_RESPONSE, []
        else:
            code = rng.choice([d.Code.ACCESS_ACCEPT, d.Code.ACCESS_REJECT, d.Code.ACCESS_CHALLENGE])
            attrs = [(d.REPLY_MESSAGE, rng.randbytes(rng.randrange(0, 40))),
                     (d.vsa_key(CISCO, d.H323_RETURN_CODE), b"h323-return-code=0"),
                     (d.vsa_key(CISCO, d.H323_CREDIT_TIME), b"360"), (d.SESSION_TIMEOUT, (360).to_bytes(4, "big"))]
        wire = codec.encode_response(req, code, attrs, secret)
        reply = pkt.CreateReply(packet=wire)
        assert reply.code == code
        assert pkt.VerifyReply(reply, wire, enforce_ma=req.code != d.Code.ACCOUNTING_REQUEST)
        if req.code != d.Code.ACCOUNTING_REQUEST:
            assert reply.verify_message_authenticator(original_authenticator=pkt.authenticator,
                                                      original_code=pkt.code)
        # and a forged one does not verify (the last octet is a value octet)
        forged = wire[:-1] + bytes([wire[-1] ^ 1]) if len(wire) > 20 else wire[:4] + bytes(16)
        assert not pkt.VerifyReply(pkt.CreateReply(packet=forged), forged)


def test_our_requests_verify_in_pyrad(codec, pyrad_dict):
    rng = random.Random(SEED + 7)
    for i in range(100):
        secret = rng.randbytes(rng.choice([8, 64, 70]))
        auth = rng.randbytes(16)
        attrs = [(d.USER_NAME, b"45-001122333"), (d.vsa_key(CISCO, d.H323_CONF_ID), b"h323-conf-id=AB"),
                 (d.CALLED_STATION_ID, b"4930123")]
        password = rng.randbytes(rng.randrange(1, 40)).hex().encode()[:rng.randrange(1, 60)]
        wire = codec.encode_access_request(i, auth, attrs, secret, password=password)
        theirs = pyrad_packet.AuthPacket(packet=wire, dict=pyrad_dict, secret=secret)
        assert theirs.message_authenticator and theirs.verify_message_authenticator()
        assert theirs.PwDecrypt(theirs[2][0]) == password.decode()
        assert theirs["h323-conf-id"] == ["h323-conf-id=AB"]
        wire = codec.encode_accounting_request(i, attrs + [(d.ACCT_SESSION_TIME, (i * 7).to_bytes(4, "big"))], secret)
        theirs = pyrad_packet.AcctPacket(packet=wire, dict=pyrad_dict, secret=secret)
        assert theirs.VerifyAcctRequest() and theirs["Acct-Session-Time"] == [i * 7]


def _vector_packets(name: str) -> dict[str, bytes]:
    """The `packet` of each vector in one tests/vectors file (the full loader is in test_packet.py)."""
    out: dict[str, bytes] = {}
    current = None
    for line in (VECTORS / name).read_text("utf-8").splitlines():
        word, _, rest = line.strip().partition(" ")
        if word == "vector":
            current = rest
            out[current] = b""
        elif word == "packet" and current:
            out[current] += bytes.fromhex(rest.replace(" ", ""))
    return out


def test_pyrad_made_vectors(pyrad_dict):
    """tests/vectors/vendors.txt is what pyrad builds from these inputs, byte for byte."""
    want = _vector_packets("vendors.txt")
    P = pyrad_packet

    req = P.AuthPacket(code=1, id=42, secret=b"cisco-gw-secret", dict=pyrad_dict,
                       authenticator=bytes.fromhex("5d8e2f6a0b4c19e3a7d0c4f1e2b3a495"), message_authenticator=True)
    req["User-Name"] = "45-001122333"
    req["User-Password"] = req.PwCrypt("73519264")
    req["Called-Station-Id"] = "4915112345678"
    req["Calling-Station-Id"] = "12125551234"
    req["NAS-IP-Address"] = "10.20.30.40"
    req["NAS-Port-Type"] = "Virtual"
    req["h323-conf-id"] = "h323-conf-id=3A2B1C0D 11223344 55667788 99AABBCC"
    req["h323-call-origin"] = "answer"
    req["Cisco-AVPair"] = "h323-ivr-out=transactionID:42"
    assert req.RequestPacket() == want["cisco-access-request"]
    rep = req.CreateReply()
    rep["h323-return-code"] = "h323-return-code=0"
    rep["h323-credit-amount"] = "h323-credit-amount=12.50"
    rep["h323-currency"] = "h323-currency=USD"
    rep["h323-credit-time"] = "h323-credit-time=360"
    rep["Session-Timeout"] = 360
    assert rep.ReplyPacket() == want["cisco-access-accept"]

    acct = P.AcctPacket(code=4, id=7, secret=b"cisco-gw-secret", dict=pyrad_dict)
    for name, value in [("User-Name", "45-001122333"), ("Acct-Status-Type", "Stop"),
                        ("Acct-Session-Id", "0000ABCD"), ("Acct-Session-Time", 125), ("Acct-Delay-Time", 2),
                        ("Acct-Terminate-Cause", "User-Request"), ("Event-Timestamp", 1732550400),
                        ("NAS-IP-Address", "10.20.30.40"), ("Called-Station-Id", "4915112345678"),
                        ("Calling-Station-Id", "12125551234"),
                        ("h323-conf-id", "h323-conf-id=3A2B1C0D 11223344 55667788 99AABBCC"),
                        ("h323-call-origin", "h323-call-origin=answer"),
                        ("h323-setup-time", "h323-setup-time=12:00:00.000 UTC Mon Nov 25 2024"),
                        ("h323-disconnect-cause", "h323-disconnect-cause=10")]:
        acct[name] = value
    assert acct.RequestPacket() == want["cisco-accounting-stop"]
    assert acct.CreateReply().ReplyPacket() == want["cisco-accounting-response"]

    q = P.AcctPacket(code=4, id=200, secret=b"tenor-secret", dict=pyrad_dict)
    for name, value in [("User-Name", "45001122333"), ("Acct-Status-Type", "Start"), ("Acct-Session-Id", "Q-77"),
                        ("NAS-Identifier", "tenor-a"), ("Called-Station-Id", "0049301234567"),
                        ("Quintum-h323-conf-id", "C0FFEE00 11111111 22222222 33333333"),
                        ("Quintum-h323-call-origin", "h323-call-origin=originate"),
                        ("Quintum-h323-redirect-number", "h323-redirect-number=4930999"),
                        ("Quintum-Trunkid-In", "7")]:
        q[name] = value
    assert q.RequestPacket() == want["quintum-accounting-start"]

    s = P.AcctPacket(code=12, id=9, secret=b"probe", dict=pyrad_dict,
                     authenticator=bytes.fromhex("00112233445566778899aabbccddeeff"))
    s["NAS-Identifier"] = "probe-1"
    assert s.RequestPacket() == want["status-server"]
    assert s.CreateReply().ReplyPacket() == want["status-server-response"]

    pxy = P.AuthPacket(code=1, id=3, secret=b"proxy-secret", dict=pyrad_dict,
                       authenticator=bytes.fromhex("f0e1d2c3b4a5968778695a4b3c2d1e0f"), message_authenticator=True)
    pxy["User-Name"] = "45-000000001"
    pxy["User-Password"] = pxy.PwCrypt("0000000000000000x")
    pxy["Proxy-State"] = [b"first-hop", b"\x00\x01second"]
    assert pxy.RequestPacket() == want["proxied-access-request"]
    reject = pxy.CreateReply(Reply_Message="insufficient balance")
    reject.code = P.AccessReject
    assert reject.ReplyPacket() == want["proxied-access-reject"]
