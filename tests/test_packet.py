"""The RADIUS codec, run against both implementations: the reference (`py`) and the Cython fast path (`cy`).

Known answers come from tests/vectors/*.txt (RFC 2865 §7 byte for byte, pyrad-made Cisco/Quintum
packets, one malformed packet per drop reason); the rest checks the protocol rules one at a time and
round-trips random attribute lists with hypothesis. tests/test_packet_auth.py holds the MD5, HMAC,
password-hiding and authenticator checks; tests/test_fastpath_{decode,encode,auth}_equivalence.py compare
the two implementations with each other, and tests/test_fastpath_pyrad_equivalence.py both with pyrad.
"""

from __future__ import annotations

import ast
import os
import pathlib
import pickle
import subprocess
import sys
from dataclasses import dataclass, field
from types import ModuleType

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from radcore import dictionary as d
from radcore import errors, packet

from helpers_codec import AUTH, SECRET, codec_for, load_fastpath


@pytest.fixture(scope="module", params=["py", "cy"], ids=["py", "cy"])
def codec(request) -> ModuleType:
    """One codec implementation; module-scoped so hypothesis tests can use it."""
    return codec_for(request.param)


VECTORS = pathlib.Path(__file__).parent / "vectors"
ROOT = pathlib.Path(__file__).parent.parent


def fields(req) -> dict:
    """A parsed request as a dict, whichever implementation made it."""
    return dict(zip(packet.Request._fields, tuple(req)))


# ---------------------------------------------------------------------------------------------
# Vector files (format documented at the top of each tests/vectors/*.txt)


@dataclass
class Vector:
    name: str
    source: str
    secret: bytes = b""
    packet: bytes = b""
    request: bytes = b""
    require_ma: bool = True
    decode: tuple[int, int] | None = None
    attrs: list[tuple[int, bytes]] = field(default_factory=list)
    fields: dict[str, object] = field(default_factory=dict)
    encode_reply: int | None = None
    error: tuple[str, str] | None = None


def _key(text: str) -> int:
    if ":" in text:
        vendor, vtype = text.split(":")
        return d.vsa_key(int(vendor), int(vtype))
    return int(text)


def _value(text: str) -> bytes:
    if text.startswith('"'):
        return ast.literal_eval(text).encode("utf-8")
    return bytes.fromhex(text)


def load_vectors() -> list[Vector]:
    vectors: list[Vector] = []
    for path in sorted(VECTORS.glob("*.txt")):
        current: Vector | None = None
        for lineno, raw in enumerate(path.read_text("utf-8").splitlines(), 1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            word, _, rest = line.partition(" ")
            where = f"{path.name}:{lineno}"
            if word == "vector":
                current = Vector(rest, where)
                vectors.append(current)
                continue
            if current is None:
                raise ValueError(f"{where}: {word!r} before the first vector")
            if word == "secret":
                current.secret = rest.encode("utf-8")
            elif word == "packet":
                current.packet += bytes.fromhex(rest.replace(" ", ""))
            elif word == "request":
                current.request += bytes.fromhex(rest.replace(" ", ""))
            elif word == "require-ma":
                current.require_ma = {"yes": True, "no": False}[rest]
            elif word == "decode":
                code, ident = rest.split()
                current.decode = (int(code), int(ident))
            elif word == "attr":
                key, _, value = rest.partition(" ")
                current.attrs.append((_key(key), _value(value)))
            elif word == "field":
                name, _, literal = rest.partition(" ")
                if name not in packet.Request._fields:
                    raise ValueError(f"{where}: no Request field {name!r}")
                current.fields[name] = ast.literal_eval(literal)
            elif word == "encode-reply":
                current.encode_reply = int(rest)
            elif word == "error":
                cls, reason = rest.split()
                current.error = (cls, reason)
            else:
                raise ValueError(f"{where}: unknown directive {word!r}")
    names = [v.name for v in vectors]
    assert len(names) == len(set(names)), "vector names must be unique"
    return vectors


VECTOR_LIST = load_vectors()
REQUEST_VECTORS = [v for v in VECTOR_LIST if not v.request]
REPLY_VECTORS = [v for v in VECTOR_LIST if v.request]
DECODE_VECTORS = [v for v in VECTOR_LIST if v.decode is not None]


def _ids(vectors):
    return [v.name for v in vectors]


def test_vectors_cover_every_drop_reason():
    """Each reason the server counts has at least one vector (the codec's whole failure vocabulary)."""
    reasons = {v.error[1] for v in VECTOR_LIST if v.error}
    assert reasons >= {"short", "bad_length", "truncated", "bad_attribute", "bad_code",
                       "bad_authenticator", "bad_message_authenticator",
                       "missing_message_authenticator", "bad_password"}


@pytest.mark.parametrize("vector", DECODE_VECTORS, ids=_ids(DECODE_VECTORS))
def test_vector_decode(codec, vector):
    pkt = codec.decode(vector.packet)
    assert (pkt.code, pkt.identifier) == vector.decode
    assert pkt.authenticator == vector.packet[4:20]
    assert list(pkt.attributes) == vector.attrs
    assert isinstance(pkt, packet.Packet)


@pytest.mark.parametrize("vector", REQUEST_VECTORS, ids=_ids(REQUEST_VECTORS))
def test_vector_parse_request(codec, vector):
    if vector.error:
        cls, reason = vector.error
        with pytest.raises(getattr(errors, cls)) as info:
            codec.parse_request(vector.packet, vector.secret, vector.require_ma)
        assert type(info.value) is getattr(errors, cls)
        assert info.value.reason == reason
        return
    got = fields(codec.parse_request(vector.packet, vector.secret, vector.require_ma))
    assert {name: got[name] for name in vector.fields} == vector.fields
    assert got["code"] == vector.packet[0] and got["identifier"] == vector.packet[1]
    assert got["authenticator"] == vector.packet[4:20]


@pytest.mark.parametrize("vector", REPLY_VECTORS, ids=_ids(REPLY_VECTORS))
def test_vector_reply(codec, vector):
    request_auth = vector.request[4:20]
    if vector.error:
        cls, reason = vector.error
        with pytest.raises(getattr(errors, cls)) as info:
            codec.decode_response(vector.packet, request_auth, vector.secret)
        assert type(info.value) is getattr(errors, cls)
        assert info.value.reason == reason
        return
    pkt = codec.decode_response(vector.packet, request_auth, vector.secret)
    assert pkt == codec.decode(vector.packet)
    assert codec.response_authenticator(vector.packet, request_auth, vector.secret) == vector.packet[4:20]
    if vector.encode_reply is not None:
        req = codec.parse_request(vector.request, vector.secret)
        own = [(k, v) for k, v in pkt.attributes if k not in (d.MESSAGE_AUTHENTICATOR, d.PROXY_STATE)]
        assert codec.encode_response(req, vector.encode_reply, own, vector.secret) == vector.packet


# ---------------------------------------------------------------------------------------------
# RFC 2865 §7.1 known answers, spelled out

RFC_SECRET = b"xyzzy5461"
RFC_REQUEST = bytes.fromhex(
    "010000380f403f9473978057bd83d5cb98f4227a01066e656d6f02120dbe708d93d413ce3196e43f782a0aee"
    "0406c0a80110050600000003")
RFC_ACCEPT = bytes.fromhex(
    "0200002686fe220e7624ba2a1005f6bf9b55e0b20606000000010f06000000000e06c0a80103")
RFC_AUTH = RFC_REQUEST[4:20]
RFC_HIDDEN = bytes.fromhex("0dbe708d93d413ce3196e43f782a0aee")


def test_rfc2865_unhide_arctangent(codec):
    assert codec.unhide_password(RFC_HIDDEN, RFC_SECRET, RFC_AUTH) == b"arctangent"


def test_rfc2865_hide_arctangent(codec):
    assert codec.hide_password(b"arctangent", RFC_SECRET, RFC_AUTH) == RFC_HIDDEN


def test_rfc2865_access_accept_response_authenticator(codec):
    assert codec.response_authenticator(RFC_ACCEPT, RFC_AUTH, RFC_SECRET).hex() == \
        "86fe220e7624ba2a1005f6bf9b55e0b2"


def test_rfc2865_access_request_encodes_byte_for_byte(codec):
    attrs = [(d.USER_NAME, b"nemo")]
    wire = codec.encode_access_request(0, RFC_AUTH, attrs, RFC_SECRET, password=b"arctangent",
                                       message_authenticator=False)
    # The RFC puts User-Password second and the NAS attributes after it; we append the password.
    assert codec.decode(wire).attributes == ((1, b"nemo"), (2, RFC_HIDDEN))
    wire = codec.encode(1, 0, RFC_AUTH, [(1, b"nemo"), (2, RFC_HIDDEN), (4, bytes([192, 168, 1, 16])),
                                         (5, (3).to_bytes(4, "big"))])
    assert wire == RFC_REQUEST


@pytest.mark.parametrize("data, reason", [
    (b"", "short"),
    (bytes([1, 0, 0, 20]) + bytes(15), "short"),
    (bytes([1, 0, 0, 19]) + bytes(16), "bad_length"),
    (bytes([1, 0, 0x10, 1]) + bytes(4100), "bad_length"),
    (bytes([1, 0, 0, 30]) + bytes(16), "truncated"),
    (bytes([1, 0, 0, 21]) + bytes(16) + b"\x01", "bad_attribute"),
    (bytes([1, 0, 0, 22]) + bytes(16) + b"\x01\x00", "bad_attribute"),
    (bytes([1, 0, 0, 23]) + bytes(16) + b"\x01\x04\x00", "bad_attribute"),
    (bytes([1, 0, 0, 25]) + bytes(16) + b"\x1a\x07\x00\x00\x00" + bytes(2), "bad_attribute"),
], ids=["empty", "19-octets", "length-19", "length-4097", "length-beyond-datagram", "lone-type-octet",
        "attribute-length-0", "attribute-past-length", "vsa-past-length"])
def test_structural_reasons(codec, data, reason):
    """decode and parse_request agree on structure (parse_request checks the code first)."""
    for call in (lambda: codec.decode(data), lambda: codec.parse_request(data, SECRET, False)):
        with pytest.raises(errors.PacketError) as info:
            call()
        assert type(info.value) is errors.PacketError and info.value.reason == reason


def test_bad_code_reasons(codec):
    for code in (0, 2, 3, 5, 11, 13, 40, 255):
        with pytest.raises(errors.PacketError) as info:
            codec.parse_request(bytes([code, 0, 0, 20]) + bytes(16), SECRET, False)
        assert info.value.reason == "bad_code"


def test_integer_fields_must_be_4_octets(codec):
    for key in (d.ACCT_STATUS_TYPE, d.ACCT_SESSION_TIME, d.ACCT_DELAY_TIME, d.ACCT_TERMINATE_CAUSE,
                d.EVENT_TIMESTAMP, d.NAS_IP_ADDRESS):
        wire = codec.encode_accounting_request(1, [(key, b"\x00\x01")], SECRET)
        with pytest.raises(errors.PacketError) as info:
            codec.parse_request(wire, SECRET)
        assert type(info.value) is errors.PacketError and info.value.reason == "bad_attribute"


def test_trailing_padding_ignored(codec):
    wire = codec.encode_access_request(9, AUTH, [(d.CALLED_STATION_ID, b"4930")], SECRET, password=b"pin")
    for pad in (b"\x00", b"\xff" * 7, bytes(300)):
        assert codec.parse_request(wire + pad, SECRET) == codec.parse_request(wire, SECRET)
        assert codec.decode(wire + pad) == codec.decode(wire)
    req = codec.parse_request(wire, SECRET)
    reply = codec.encode_response(req, d.Code.ACCESS_ACCEPT, [(d.SESSION_TIMEOUT, bytes(4))], SECRET)
    assert codec.decode_response(reply + b"\x00\x00", AUTH, SECRET) == codec.decode(reply)


def test_last_value_wins_and_first_message_authenticator_offset(codec):
    attrs = [(d.USER_NAME, b"first"), (d.USER_NAME, b"second"), (d.CALLED_STATION_ID, b"1"),
             (d.CALLED_STATION_ID, b"2")]
    req = codec.parse_request(codec.encode_access_request(1, AUTH, attrs, SECRET), SECRET)
    assert (req.user_name, req.called) == ("second", "2")


def test_text_fields_replace_bad_utf8(codec):
    attrs = [(d.USER_NAME, b"ab\xffcd"), (d.NAS_IDENTIFIER, "Zürich".encode())]
    req = codec.parse_request(codec.encode_access_request(1, AUTH, attrs, SECRET), SECRET)
    assert (req.user_name, req.nas_identifier) == ("ab\ufffdcd", "Zürich")


# ---------------------------------------------------------------------------------------------
# Replies: Message-Authenticator first, Proxy-State echoed last and in order


def _request(codec, code=d.Code.ACCESS_REQUEST, proxy_states=()):
    attrs = [(d.USER_NAME, b"45-001122333"), *((d.PROXY_STATE, p) for p in proxy_states)]
    if code == d.Code.ACCOUNTING_REQUEST:
        wire = codec.encode_accounting_request(77, attrs, SECRET)
    else:
        wire = codec.encode_access_request(77, AUTH, attrs, SECRET, code=code)
    return codec.parse_request(wire, SECRET)


@pytest.mark.parametrize("request_code, reply_code, with_ma", [
    (d.Code.ACCESS_REQUEST, d.Code.ACCESS_ACCEPT, True),
    (d.Code.ACCESS_REQUEST, d.Code.ACCESS_REJECT, True),
    (d.Code.ACCESS_REQUEST, d.Code.ACCESS_CHALLENGE, True),
    (d.Code.ACCOUNTING_REQUEST, d.Code.ACCOUNTING_RESPONSE, False),
    (d.Code.STATUS_SERVER, d.Code.ACCESS_ACCEPT, True),
    (d.Code.STATUS_SERVER, d.Code.ACCOUNTING_RESPONSE, True),
])
def test_message_authenticator_first_in_replies(codec, request_code, reply_code, with_ma):
    req = _request(codec, request_code)
    attrs = [(d.REPLY_MESSAGE, b"hello"), (d.vsa_key(d.VENDOR_CISCO, d.H323_RETURN_CODE), b"0")]
    reply = codec.encode_response(req, reply_code, attrs, SECRET)
    pkt = codec.decode_response(reply, req.authenticator, SECRET)
    keys = [k for k, _ in pkt.attributes]
    assert (keys[0] == d.MESSAGE_AUTHENTICATOR) is with_ma
    assert keys.count(d.MESSAGE_AUTHENTICATOR) == int(with_ma)
    assert [a for a in pkt.attributes if a[0] != d.MESSAGE_AUTHENTICATOR] == attrs
    assert (pkt.code, pkt.identifier) == (reply_code, 77)


def test_proxy_state_echo_order(codec):
    states = (b"\x01hop-one", b"", b"hop-three" * 20)
    req = _request(codec, proxy_states=states)
    assert req.proxy_states == states
    reply = codec.encode_response(req, d.Code.ACCESS_REJECT, [(d.REPLY_MESSAGE, b"no")], SECRET)
    pkt = codec.decode_response(reply, AUTH, SECRET)
    assert pkt.attributes[1:] == ((d.REPLY_MESSAGE, b"no"), *((d.PROXY_STATE, s) for s in states))


def test_reply_to_tampered_or_foreign_request_fails(codec):
    req = _request(codec)
    reply = codec.encode_response(req, d.Code.ACCESS_ACCEPT, [], SECRET)
    with pytest.raises(errors.AuthenticatorError):
        codec.decode_response(reply, bytes(16), SECRET)
    with pytest.raises(errors.AuthenticatorError):
        codec.decode_response(reply, AUTH, SECRET + b"x")


def test_encode_batches(codec):
    reqs = [_request(codec), _request(codec, d.Code.ACCOUNTING_REQUEST)]
    items = [(reqs[0], 2, [(d.SESSION_TIMEOUT, bytes(4))], SECRET), (reqs[1], 5, [], SECRET)]
    assert codec.encode_responses(items) == [codec.encode_response(*item) for item in items]
    good = codec.encode_access_request(1, AUTH, [], SECRET)
    out = codec.parse_batch([(good, SECRET, True), (b"junk", SECRET, True), (good, b"wrong", True)])
    assert out[0] == codec.parse_request(good, SECRET)
    assert [type(x).__name__ for x in out[1:]] == ["PacketError", "MessageAuthenticatorError"]
    assert out[1].reason == "short"


@pytest.mark.parametrize("attrs", [
    [(0, b"")], [(-1, b"")], [(1, bytes(254))], [(d.vsa_key(9, 1), bytes(248))], [(1, "text")],
    [(1, b"x", 3)],
])
def test_encode_refuses_what_does_not_fit(codec, attrs):
    with pytest.raises((ValueError, TypeError)) as info:
        codec.encode_attributes(attrs)
    with pytest.raises(type(info.value)):
        packet.encode_attributes(attrs)


def test_encode_attributes_beyond_a_packet(codec):
    """encode_attributes has no 4096 limit of its own (the fast path's buffer then moves to the heap)."""
    attrs = [(d.CLASS, bytes([i]) * 253) for i in range(40)] + [(d.vsa_key(9, 1), b"v" * 247)] * 3
    wire = codec.encode_attributes(attrs)
    assert len(wire) == 40 * 255 + 3 * 255 and wire == packet.encode_attributes(attrs)


def test_encode_refuses_oversized_packets(codec):
    attrs = [(d.CLASS, bytes(253))] * 17
    with pytest.raises(ValueError):
        codec.encode(2, 1, AUTH, attrs)
    with pytest.raises(ValueError):
        codec.encode_response(_request(codec), 2, attrs, SECRET)
    with pytest.raises(ValueError):
        codec.encode_accounting_request(1, attrs, SECRET)


# ---------------------------------------------------------------------------------------------
# Vendor-Specific: keyed Cisco/Quintum sub-attributes, bare and prefixed values


CONF = d.vsa_key(d.VENDOR_CISCO, d.H323_CONF_ID)
ORIGIN = d.vsa_key(d.VENDOR_QUINTUM, d.H323_CALL_ORIGIN)
REDIRECT = d.vsa_key(d.VENDOR_CISCO, d.H323_REDIRECT_NUMBER)


@pytest.mark.parametrize("value, vendor_type, text", [
    (b"360", d.H323_CREDIT_TIME, "360"),
    (b"h323-credit-time=360", d.H323_CREDIT_TIME, "360"),
    (b"h323-credit-time=", d.H323_CREDIT_TIME, ""),
    (b"h323-credit-time360", d.H323_CREDIT_TIME, "h323-credit-time360"),
    (b"h323-credit-amount=5", d.H323_CREDIT_TIME, "h323-credit-amount=5"),
    (b"h323-conf-id=A\xffB", d.H323_CONF_ID, "A\ufffdB"),
    (b"x=1", 250, "x=1"),
    (b"", d.H323_CONF_ID, ""),
])
def test_vsa_text(codec, value, vendor_type, text):
    assert codec.vsa_text(value, vendor_type) == text


def test_h323_fields_bare_and_prefixed(codec):
    attrs = [(CONF, b"h323-conf-id=AB 01"), (ORIGIN, b"originate"),
             (REDIRECT, b"h323-redirect-number=4930")]
    req = codec.parse_request(codec.encode_access_request(1, AUTH, attrs, SECRET), SECRET)
    assert (req.conf_id, req.call_origin, req.redirect_number) == ("AB 01", "originate", "4930")
    # A prefix belongs to its own attribute only.
    attrs = [(CONF, b"h323-call-origin=answer")]
    req = codec.parse_request(codec.encode_access_request(1, AUTH, attrs, SECRET), SECRET)
    assert req.conf_id == "h323-call-origin=answer"


def test_vendor_specific_split_rules(codec):
    cisco_two = (26, b"\x00\x00\x00\x09" + b"\x18\x04ab" + b"\x1a\x03c")
    other_vendor = (26, b"\x00\x00\x01\x37" + b"\x01\x03x")
    bad_sub = (26, b"\x00\x00\x00\x09" + b"\x18\x09ab")
    vendor_only = (26, b"\x00\x00\x00\x09")
    short = (26, b"\x00\x09")
    attrs = [cisco_two, other_vendor, bad_sub, vendor_only, short]
    pkt = codec.decode(codec.encode(2, 0, AUTH, attrs))
    assert pkt.attributes == ((CONF, b"ab"), (d.vsa_key(9, 26), b"c"), other_vendor, bad_sub,
                              vendor_only, short)
    # parse_request takes h323 fields only from well-formed Cisco/Quintum VSAs
    req = codec.parse_request(codec.encode_access_request(1, AUTH, attrs, SECRET), SECRET)
    assert (req.conf_id, req.call_origin) == ("ab", "c")
    req = codec.parse_request(codec.encode_access_request(1, AUTH, [bad_sub], SECRET), SECRET)
    assert req.conf_id == ""


# ---------------------------------------------------------------------------------------------
# hypothesis round trips

standard_keys = st.integers(1, 255).filter(lambda k: k != d.VENDOR_SPECIFIC)
vendor_keys = st.builds(d.vsa_key, st.sampled_from([d.VENDOR_CISCO, d.VENDOR_QUINTUM]),
                        st.integers(0, 255))
attribute = st.one_of(
    st.tuples(standard_keys, st.binary(max_size=253)),
    st.tuples(vendor_keys, st.binary(max_size=247)),
)
attribute_lists = st.lists(attribute, max_size=12)
fast = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@fast
@given(attrs=attribute_lists, code=st.integers(0, 255), ident=st.integers(0, 255),
       auth=st.binary(min_size=16, max_size=16))
def test_encode_decode_encode(codec, attrs, code, ident, auth):
    wire = codec.encode(code, ident, auth, attrs)
    pkt = codec.decode(wire)
    assert pkt == (code, ident, auth, tuple(attrs))
    assert codec.encode(pkt.code, pkt.identifier, pkt.authenticator, pkt.attributes) == wire


@fast
@given(attrs=attribute_lists.filter(lambda a: all(k != d.MESSAGE_AUTHENTICATOR for k, _ in a)),
       request_code=st.sampled_from([1, 4, 12]), reply_code=st.sampled_from([2, 3, 5, 11]),
       proxy_states=st.lists(st.binary(max_size=40), max_size=3), secret=st.binary(min_size=1, max_size=80),
       auth=st.binary(min_size=16, max_size=16))
def test_encode_response_verifies(codec, attrs, request_code, reply_code, proxy_states, secret, auth):
    req_attrs = [(d.PROXY_STATE, p) for p in proxy_states]
    if request_code == d.Code.ACCOUNTING_REQUEST:
        wire = codec.encode_accounting_request(9, req_attrs, secret)
    else:
        wire = codec.encode_access_request(9, auth, req_attrs, secret, code=request_code)
    req = codec.parse_request(wire, secret)
    try:
        reply = codec.encode_response(req, reply_code, attrs, secret)
    except ValueError:
        return  # more than 4096 octets
    pkt = codec.decode_response(reply, req.authenticator, secret)
    own = [a for a in pkt.attributes if a[0] not in (d.MESSAGE_AUTHENTICATOR,)]
    assert own == attrs + [(d.PROXY_STATE, p) for p in proxy_states]


# ---------------------------------------------------------------------------------------------
# The Cython Request type and the implementation switch


def test_cython_request_behaves_like_the_namedtuple():
    fp = load_fastpath()
    wire = packet.encode_access_request(5, AUTH, [(d.USER_NAME, b"u"), (d.PROXY_STATE, b"p")], SECRET,
                                        password=b"pw")
    cy, py = fp.parse_request(wire, SECRET), packet.parse_request(wire, SECRET)
    assert type(cy) is fp.Request and type(py) is packet.Request
    assert cy == py and py == cy and not (cy != py)
    assert cy == tuple(py) and hash(cy) == hash(py)
    assert repr(cy) == repr(py)
    assert tuple(cy) == tuple(py) == cy.as_tuple() and len(cy) == len(py) == 22
    assert cy[3] == py[3] == "u" and cy[-1] is True
    assert cy._asdict() == py._asdict()
    assert fp.Request._fields == packet.Request._fields
    assert cy._replace(user_name="v") == py._replace(user_name="v")
    assert pickle.loads(pickle.dumps(cy)) == cy
    assert fp.Request(*py) == cy
    assert cy != py._replace(code=4)
    with pytest.raises(AttributeError):
        cy.user_name = "x"
    with pytest.raises(ValueError):
        cy._replace(nope=1)
    # a reply to either kind of Request is the same
    assert fp.encode_response(py, 2, [], SECRET) == fp.encode_response(cy, 2, [], SECRET) == \
        packet.encode_response(cy, 2, [], SECRET)


def _implementation(env: dict[str, str], block_extension: bool = False) -> subprocess.CompletedProcess:
    code = "import sys\n"
    if block_extension:
        code += "sys.modules['radcore._fastpath'] = None\n"
    code += "from radcore import fastpath\nprint(fastpath.IMPLEMENTATION, fastpath.parse_request.__module__)\n"
    clean = {k: v for k, v in os.environ.items() if not k.startswith("RADCORE_")}
    clean["PYTHONPATH"] = str(ROOT)
    return subprocess.run([sys.executable, "-c", code], env={**clean, **env}, capture_output=True,
                          text=True, timeout=60)


def test_switch_no_extensions():
    out = _implementation({"RADCORE_NO_EXTENSIONS": "1"})
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["python", "radcore.packet"]


def test_switch_prefers_the_extension():
    load_fastpath()
    out = _implementation({})
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[0] == "cython"


def test_switch_falls_back_or_fails():
    out = _implementation({}, block_extension=True)
    assert out.returncode == 0 and out.stdout.split()[0] == "python", out.stderr
    out = _implementation({"RADCORE_REQUIRE_EXTENSIONS": "1"}, block_extension=True)
    assert out.returncode != 0 and "import of radcore._fastpath halted" in out.stderr
    out = _implementation({"RADCORE_REQUIRE_EXTENSIONS": "1", "RADCORE_NO_EXTENSIONS": "1"},
                          block_extension=True)
    assert out.returncode == 0 and out.stdout.split()[0] == "python", out.stderr


def test_fastpath_exports_match():
    from radcore import fastpath
    fp = load_fastpath()
    names = set(fastpath.__all__) - {"IMPLEMENTATION"}
    assert names <= set(dir(fp)) and names <= set(dir(packet))
    assert set(fp.__all__) == names
    assert fp.Packet is packet.Packet
