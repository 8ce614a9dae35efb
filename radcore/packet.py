"""The pure-Python reference RADIUS codec.

`radcore._fastpath` implements the same names with the same results and the same exceptions; the
tests cross-check the two on known answers, random packets and mutations. This module favours
clarity over speed: it is what the Cython code is judged against.

Attributes are `(key, value)` pairs of an int key (see `radcore.dictionary`: standard type, or
`vendor << 8 | vendor_type` for a vendor attribute in the RFC 2865 §5.26 suggested format) and the
raw value bytes.

Server side: `parse_request` validates one datagram from a known client, checks its authenticators
and pulls out the handful of fields the prepaid logic needs into a flat `Request`, without building
an object per attribute. `encode_response` answers it. `parse_batch`/`encode_responses` are the
batch entry points the server calls once per wakeup.

Client side (tests, load generator): `encode_access_request`, `encode_accounting_request`,
`decode_response`.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from typing import Iterable, NamedTuple, Sequence

from . import dictionary as d
from .errors import AuthenticatorError, MessageAuthenticatorError, PacketError

Attribute = tuple[int, bytes]

_ZERO16 = bytes(16)
_HEADER = struct.Struct("!BBH16s")
_U32 = struct.Struct("!I")
_VSA_HEADER = struct.Struct("!IBB")

#: Vendors whose attributes are split into keyed sub-attributes; other vendors' VSAs stay raw (key 26).
_SPLIT_VENDORS = frozenset({d.VENDOR_CISCO, d.VENDOR_QUINTUM})


class Packet(NamedTuple):
    """A decoded packet: header fields and every attribute in wire order."""

    code: int
    identifier: int
    authenticator: bytes
    attributes: tuple[Attribute, ...]


class Request(NamedTuple):
    """What the prepaid logic needs from a verified request; absent strings are "", absent ints 0.

    `password` is the unhidden User-Password with its NUL padding removed (RFC 2865 §5.2).
    `session_time` is -1 when Acct-Session-Time is absent, so a Stop without it is told apart from 0 s.
    `proxy_states` must be echoed in the reply in order (RFC 2865 §5.33).
    """

    code: int
    identifier: int
    authenticator: bytes
    user_name: str
    password: bytes | None
    chap_password: bytes | None
    chap_challenge: bytes | None
    nas_ip: str
    nas_identifier: str
    called: str
    calling: str
    status_type: int
    session_id: str
    session_time: int
    delay_time: int
    terminate_cause: int
    event_timestamp: int
    conf_id: str
    call_origin: str
    redirect_number: str
    proxy_states: tuple[bytes, ...]
    has_message_authenticator: bool


# ---------------------------------------------------------------------------------------------
# Decoding


def decode(data: bytes) -> Packet:
    """Decode any RADIUS packet with full structural validation.

    Checks, in order: at least a header; Length field within 20..4096 (RFC 2865 §3) and not beyond
    the datagram (octets past Length are padding and ignored); every attribute at least 2 octets
    long and the attributes exactly filling Length. Vendor-Specific attributes of the vendors radcore
    speaks (Cisco, Quintum) are split into keyed sub-attributes when they follow the suggested format.
    """
    length = _check_header(data)
    return Packet(data[0], data[1], bytes(data[4:20]), tuple(_walk(data, length)))


def _check_header(data: bytes) -> int:
    if len(data) < d.HEADER_LENGTH:
        raise PacketError(f"packet of {len(data)} bytes is shorter than the 20-byte header", "short")
    length = (data[2] << 8) | data[3]
    if length < d.MIN_PACKET_LENGTH or length > d.MAX_PACKET_LENGTH:
        raise PacketError(f"Length field {length} outside 20..4096", "bad_length")
    if length > len(data):
        raise PacketError(f"Length field {length} exceeds the {len(data)}-byte datagram", "truncated")
    return length


def _walk(data: bytes, length: int) -> Iterable[Attribute]:
    pos = d.HEADER_LENGTH
    while pos < length:
        if pos + 2 > length:
            raise PacketError(f"attribute header at offset {pos} runs past Length", "bad_attribute")
        atype, alen = data[pos], data[pos + 1]
        if alen < 2:
            raise PacketError(f"attribute {atype} at offset {pos} has length {alen} < 2", "bad_attribute")
        end = pos + alen
        if end > length:
            raise PacketError(f"attribute {atype} at offset {pos} runs past Length", "bad_attribute")
        value = bytes(data[pos + 2:end])
        if atype == d.VENDOR_SPECIFIC:
            yield from _split_vsa(value)
        else:
            yield atype, value
        pos = end


def _split_vsa(value: bytes) -> Iterable[Attribute]:
    """Split a Vendor-Specific value into sub-attributes (RFC 2865 §5.26), or keep it whole.

    A VSA of another vendor, or one that does not follow the suggested vendor-type/vendor-length
    format exactly, is returned as a raw (26, value) pair rather than rejected.
    """
    if len(value) < 4:
        return [(d.VENDOR_SPECIFIC, value)]
    vendor = _U32.unpack_from(value)[0]
    if vendor not in _SPLIT_VENDORS:
        return [(d.VENDOR_SPECIFIC, value)]
    out = []
    pos = 4
    while pos < len(value):
        if pos + 2 > len(value):
            return [(d.VENDOR_SPECIFIC, value)]
        vtype, vlen = value[pos], value[pos + 1]
        if vlen < 2 or pos + vlen > len(value):
            return [(d.VENDOR_SPECIFIC, value)]
        out.append((d.vsa_key(vendor, vtype), value[pos + 2:pos + vlen]))
        pos += vlen
    if not out:
        return [(d.VENDOR_SPECIFIC, value)]
    return out


def vsa_text(value: bytes, vendor_type: int) -> str:
    """The text of an h323 VSA value, accepting bare (`360`) and prefixed (`h323-credit-time=360`)."""
    text = value.decode("utf-8", "replace")
    name = d.H323_NAMES.get(vendor_type)
    if name is not None and text.startswith(name) and text[len(name):len(name) + 1] == "=":
        return text[len(name) + 1:]
    return text


# ---------------------------------------------------------------------------------------------
# Authenticators and password hiding


def request_authenticator(data: bytes, secret: bytes) -> bytes:
    """Accounting-Request Request Authenticator: MD5(header with 16 zero octets + attributes + secret).

    RFC 2866 §3; the same construction covers Response Authenticators when `data` carries the
    Request Authenticator in place (RFC 2865 §3).
    """
    return hashlib.md5(bytes(data[:4]) + _ZERO16 + bytes(data[20:]) + secret).digest()


def response_authenticator(data: bytes, request_auth: bytes, secret: bytes) -> bytes:
    """ResponseAuth = MD5(Code+ID+Length+RequestAuth+Attributes+Secret) (RFC 2865 §3)."""
    return hashlib.md5(bytes(data[:4]) + request_auth + bytes(data[20:]) + secret).digest()


def hide_password(password: bytes, secret: bytes, authenticator: bytes) -> bytes:
    """User-Password hiding, RFC 2865 §5.2: pad to 16, XOR with the chained MD5 stream."""
    if len(password) > 128:
        raise ValueError("User-Password longer than 128 octets")
    padded = password + bytes((-len(password)) % 16 if password else 16)
    out = bytearray()
    prev = authenticator
    for i in range(0, len(padded), 16):
        key = hashlib.md5(secret + prev).digest()
        block = bytes(a ^ b for a, b in zip(padded[i:i + 16], key))
        out += block
        prev = block
    return bytes(out)


def unhide_password(hidden: bytes, secret: bytes, authenticator: bytes) -> bytes:
    """Reverse `hide_password`; the trailing NUL padding is removed (RFC 2865 §5.2)."""
    if not hidden or len(hidden) % 16 or len(hidden) > 128:
        raise PacketError(f"User-Password of {len(hidden)} octets is not 16..128 in steps of 16",
                          "bad_password")
    out = bytearray()
    prev = authenticator
    for i in range(0, len(hidden), 16):
        key = hashlib.md5(secret + prev).digest()
        block = hidden[i:i + 16]
        out += bytes(a ^ b for a, b in zip(block, key))
        prev = block
    return bytes(out).rstrip(b"\x00")


def chap_matches(chap_password: bytes, challenge: bytes, password: bytes) -> bool:
    """CHAP check, RFC 2865 §2.2 / RFC 1994: MD5(CHAP ident + password + challenge) == response."""
    if len(chap_password) != 17:
        return False
    expected = hashlib.md5(chap_password[:1] + password + challenge).digest()
    return hmac.compare_digest(expected, chap_password[1:])


def message_authenticator(data: bytes, secret: bytes, authenticator: bytes, offset: int) -> bytes:
    """HMAC-MD5 over the packet with the Message-Authenticator value zeroed (RFC 3579 §3.2).

    `offset` is where the 16-octet value starts; `authenticator` is what the header's
    authenticator field holds during the computation (request: itself, or zeros for accounting;
    response: the Request Authenticator).
    """
    buf = bytearray(data)
    buf[4:20] = authenticator
    buf[offset:offset + 16] = _ZERO16
    return hmac.new(secret, bytes(buf), hashlib.md5).digest()


# ---------------------------------------------------------------------------------------------
# Server side: one request in, one flat Request out


def parse_request(data: bytes, secret: bytes, require_message_authenticator: bool = True) -> Request:
    """Validate and verify one request from a known client and extract its prepaid fields.

    Raises `PacketError` (structure), `AuthenticatorError` (Accounting-Request authenticator) or
    `MessageAuthenticatorError` (missing where required, wrong size, or wrong value). A
    Status-Server must carry a Message-Authenticator (RFC 5997 §3); so must an Access-Request that
    carries Proxy-State (the BlastRADIUS mitigation), whatever the client's setting.
    """
    length = _check_header(data)
    code = data[0]
    if code not in d.REQUEST_CODES:
        raise PacketError(f"code {code} is not a request a server accepts", "bad_code")
    authenticator = bytes(data[4:20])

    user_name = nas_ip = nas_identifier = called = calling = session_id = ""
    conf_id = call_origin = redirect_number = ""
    hidden = chap_password = chap_challenge = None
    status_type = delay_time = terminate_cause = event_timestamp = 0
    session_time = -1
    proxy_states: list[bytes] = []
    ma_offset = -1

    for key, value in _walk(data, length):
        vlen = len(value)
        if key == d.MESSAGE_AUTHENTICATOR:
            if vlen != 16:
                raise MessageAuthenticatorError(f"Message-Authenticator of {vlen} octets, not 16")
            if ma_offset >= 0:
                raise MessageAuthenticatorError("more than one Message-Authenticator")
            ma_offset = attribute_offset(data, d.MESSAGE_AUTHENTICATOR, length)
        elif key == d.USER_NAME:
            user_name = value.decode("utf-8", "replace")
        elif key == d.USER_PASSWORD:
            hidden = value
        elif key == d.CHAP_PASSWORD:
            chap_password = value
        elif key == d.CHAP_CHALLENGE:
            chap_challenge = value
        elif key == d.NAS_IP_ADDRESS:
            if vlen != 4:
                raise PacketError(f"NAS-IP-Address of {vlen} octets, not 4", "bad_attribute")
            nas_ip = "%d.%d.%d.%d" % tuple(value)
        elif key == d.NAS_IDENTIFIER:
            nas_identifier = value.decode("utf-8", "replace")
        elif key == d.CALLED_STATION_ID:
            called = value.decode("utf-8", "replace")
        elif key == d.CALLING_STATION_ID:
            calling = value.decode("utf-8", "replace")
        elif key == d.ACCT_SESSION_ID:
            session_id = value.decode("utf-8", "replace")
        elif key == d.PROXY_STATE:
            proxy_states.append(value)
        elif key in _INTEGER_FIELDS:
            if vlen != 4:
                raise PacketError(f"{d.attribute_name(key)} of {vlen} octets, not 4", "bad_attribute")
            number = _U32.unpack(value)[0]
            if key == d.ACCT_STATUS_TYPE:
                status_type = number
            elif key == d.ACCT_SESSION_TIME:
                session_time = number
            elif key == d.ACCT_DELAY_TIME:
                delay_time = number
            elif key == d.ACCT_TERMINATE_CAUSE:
                terminate_cause = number
            else:
                event_timestamp = number
        elif key > 0xFF:
            vtype = key & 0xFF
            if vtype == d.H323_CONF_ID:
                conf_id = vsa_text(value, vtype)
            elif vtype == d.H323_CALL_ORIGIN:
                call_origin = vsa_text(value, vtype)
            elif vtype == d.H323_REDIRECT_NUMBER:
                redirect_number = vsa_text(value, vtype)

    if code == d.Code.ACCOUNTING_REQUEST:
        expected = request_authenticator(data[:length], secret)
        if not hmac.compare_digest(expected, authenticator):
            raise AuthenticatorError("Accounting-Request authenticator does not match the secret")
        ma_auth = _ZERO16
    else:
        ma_auth = authenticator

    if ma_offset >= 0:
        expected = message_authenticator(data[:length], secret, ma_auth, ma_offset)
        if not hmac.compare_digest(expected, bytes(data[ma_offset:ma_offset + 16])):
            raise MessageAuthenticatorError("Message-Authenticator does not match the secret")
    elif code == d.Code.STATUS_SERVER:
        raise MessageAuthenticatorError("Status-Server without Message-Authenticator",
                                        "missing_message_authenticator")
    elif code == d.Code.ACCESS_REQUEST and (require_message_authenticator or proxy_states):
        raise MessageAuthenticatorError("Access-Request without Message-Authenticator",
                                        "missing_message_authenticator")

    password = unhide_password(hidden, secret, authenticator) if hidden is not None else None
    if chap_password is not None and chap_challenge is None:
        chap_challenge = authenticator
    return Request(code, data[1], authenticator, user_name, password, chap_password, chap_challenge,
                   nas_ip, nas_identifier, called, calling, status_type, session_id, session_time,
                   delay_time, terminate_cause, event_timestamp, conf_id, call_origin,
                   redirect_number, tuple(proxy_states), ma_offset >= 0)


_INTEGER_FIELDS = frozenset({d.ACCT_STATUS_TYPE, d.ACCT_SESSION_TIME, d.ACCT_DELAY_TIME,
                             d.ACCT_TERMINATE_CAUSE, d.EVENT_TIMESTAMP})


def attribute_offset(data: bytes, atype: int, length: int | None = None) -> int | None:
    """Offset of the value of the first top-level attribute of `atype` within the first `length`
    octets (default: all of `data`), or None: absent, or the attribute list breaks first (a length
    below 2). Safe on any bytes, so tests and fuzz targets signing arbitrary packets use it too."""
    end = len(data) if length is None else length
    pos = d.HEADER_LENGTH
    while pos + 2 <= end:
        if data[pos] == atype:
            return pos + 2
        if data[pos + 1] < 2:
            return None
        pos += data[pos + 1]
    return None


def parse_batch(items: Sequence[tuple[bytes, bytes, bool]]) -> list[Request | PacketError]:
    """`parse_request` over a batch of (datagram, secret, require_message_authenticator).

    A bad datagram yields its `PacketError` in place instead of raising, so one bad packet never
    costs the rest of the batch.
    """
    out: list[Request | PacketError] = []
    for data, secret, require in items:
        try:
            out.append(parse_request(data, secret, require))
        except PacketError as exc:
            out.append(exc)
    return out


# ---------------------------------------------------------------------------------------------
# Encoding


def encode_attributes(attributes: Iterable[Attribute]) -> bytes:
    """Wire form of attributes; vendor keys become Vendor-Specific (26) with one sub-attribute each."""
    out = bytearray()
    for key, value in attributes:
        if len(value) > 253 or (key > 0xFF and len(value) > 247):
            raise ValueError(f"value of {d.attribute_name(key)} is {len(value)} octets, too long")
        if key > 0xFF:
            vendor, vtype = key >> 8, key & 0xFF
            out += bytes((d.VENDOR_SPECIFIC, len(value) + 8))
            out += _VSA_HEADER.pack(vendor, vtype, len(value) + 2)
        else:
            if key < 1:
                raise ValueError(f"attribute type {key} out of range")
            out += bytes((key, len(value) + 2))
        out += value
    return bytes(out)


def encode(code: int, identifier: int, authenticator: bytes, attributes: Iterable[Attribute]) -> bytes:
    """Raw packet from its parts; no authenticator is computed."""
    body = encode_attributes(attributes)
    length = d.HEADER_LENGTH + len(body)
    if length > d.MAX_PACKET_LENGTH:
        raise ValueError(f"packet of {length} octets exceeds 4096")
    return _HEADER.pack(code, identifier, length, authenticator) + body


def _sign_reply(code: int, identifier: int, request_auth: bytes, body: bytes, secret: bytes,
                with_ma: bool) -> bytes:
    if with_ma:
        body = bytes((d.MESSAGE_AUTHENTICATOR, 18)) + _ZERO16 + body
    length = d.HEADER_LENGTH + len(body)
    if length > d.MAX_PACKET_LENGTH:
        raise ValueError(f"packet of {length} octets exceeds 4096")
    buf = bytearray(_HEADER.pack(code, identifier, length, request_auth) + body)
    if with_ma:
        buf[22:38] = hmac.new(secret, bytes(buf), hashlib.md5).digest()
    buf[4:20] = hashlib.md5(bytes(buf) + secret).digest()
    return bytes(buf)


def encode_response(request: Request, code: int, attributes: Iterable[Attribute], secret: bytes) -> bytes:
    """Reply to `request`: Message-Authenticator first on Access-* replies and on any answer to a
    Status-Server (RFC 3579 §3.2, RFC 5997 §3), Proxy-State echoed last, Response Authenticator set."""
    body = encode_attributes(attributes) + b"".join(
        bytes((d.PROXY_STATE, len(p) + 2)) + p for p in request.proxy_states)
    with_ma = code in _MA_REPLY_CODES or request.code == d.Code.STATUS_SERVER
    return _sign_reply(code, request.identifier, request.authenticator, body, secret, with_ma)


_MA_REPLY_CODES = frozenset({d.Code.ACCESS_ACCEPT, d.Code.ACCESS_REJECT, d.Code.ACCESS_CHALLENGE})


def encode_responses(items: Sequence[tuple[Request, int, Sequence[Attribute], bytes]]) -> list[bytes]:
    """`encode_response` over a batch of (request, code, attributes, secret)."""
    return [encode_response(req, code, attrs, secret) for req, code, attrs, secret in items]


# ---------------------------------------------------------------------------------------------
# Client side (tests, load generator)


def encode_access_request(identifier: int, authenticator: bytes, attributes: Sequence[Attribute],
                          secret: bytes, *, password: bytes | None = None,
                          message_authenticator: bool = True, code: int = d.Code.ACCESS_REQUEST) -> bytes:
    """An Access-Request (or Status-Server with `code`) with a hidden User-Password and, by default,
    a Message-Authenticator as its first attribute."""
    attrs = list(attributes)
    if password is not None:
        attrs.append((d.USER_PASSWORD, hide_password(password, secret, authenticator)))
    body = encode_attributes(attrs)
    if not message_authenticator:
        return _HEADER.pack(code, identifier, d.HEADER_LENGTH + len(body), authenticator) + body
    body = bytes((d.MESSAGE_AUTHENTICATOR, 18)) + _ZERO16 + body
    buf = bytearray(_HEADER.pack(code, identifier, d.HEADER_LENGTH + len(body), authenticator) + body)
    buf[22:38] = hmac.new(secret, bytes(buf), hashlib.md5).digest()
    return bytes(buf)


def encode_accounting_request(identifier: int, attributes: Sequence[Attribute], secret: bytes) -> bytes:
    """An Accounting-Request with its Request Authenticator computed (RFC 2866 §3)."""
    buf = bytearray(encode(d.Code.ACCOUNTING_REQUEST, identifier, _ZERO16, attributes))
    buf[4:20] = request_authenticator(buf, secret)
    return bytes(buf)


def decode_response(data: bytes, request_auth: bytes, secret: bytes) -> Packet:
    """Decode a reply and verify its Response Authenticator and, when present, Message-Authenticator."""
    pkt = decode(data)
    length = (data[2] << 8) | data[3]
    expected = response_authenticator(data[:length], request_auth, secret)
    if not hmac.compare_digest(expected, pkt.authenticator):
        raise AuthenticatorError("Response Authenticator does not match the secret")
    if any(key == d.MESSAGE_AUTHENTICATOR for key, _ in pkt.attributes):
        offset = attribute_offset(data, d.MESSAGE_AUTHENTICATOR, length)
        mac = message_authenticator(data[:length], secret, request_auth, offset)
        if not hmac.compare_digest(mac, bytes(data[offset:offset + 16])):
            raise MessageAuthenticatorError("reply Message-Authenticator does not match the secret")
    return pkt
