# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
# cython: embedsignature=True
"""The RADIUS codec in Cython: the same names, results and exceptions as `radcore.packet`.

`radcore.packet` is the reference; this module is judged against it (tests/test_fastpath_equivalence.py).
`radcore.fastpath` picks one of the two. What is different here is only how the work is done:

- Every read of a packet goes through one checked step, `_take(cur, n)` on a two-field `Cursor`
  (py-pgproto's `frb_read`). That single check is what makes `boundscheck=False, wraparound=False`
  safe: apart from the 20-octet header, which `_check_header` vouches for first, no code touches
  packet memory it did not take from a cursor. (The lenient Vendor-Specific split uses `_step`, the
  same check without the exception.)
- `parse_request` records where the values it needs lie (`Span`s) and makes the few `str`/`bytes`
  fields once, after the walk: no Python object per attribute.
- MD5 (RFC 1321) and HMAC-MD5 (RFC 2104) are implemented in C-level Cython (`_md5.pxi`), fed
  directly from packet memory, so nothing is concatenated or copied to be hashed, and no libcrypto
  is needed.
- Encoders (`_fastpath_encode.pxi`; the client side in `_fastpath_client.pxi`) write into a `Writer` that starts on the C stack; a reply is built with room for its header
  and Message-Authenticator in front, signed in place and copied once into the result `bytes`.

Inputs the reference handles only by accident of Python (a non-16-octet authenticator given to
`message_authenticator`, a vendor id beyond 32 bits, an out-of-range code) take a slow path written
with the same Python operations as the reference, so even those raise the same exceptions.
The exception messages of malformed attributes may be worded differently; classes and `reason`s never are.
Arguments documented as bytes also accept any bytes-like object (they are copied first).
"""

from cpython.buffer cimport PyObject_CheckBuffer
from cpython.bytes cimport (PyBytes_AS_STRING, PyBytes_CheckExact, PyBytes_FromStringAndSize,
                            PyBytes_GET_SIZE)
from cpython.long cimport PyLong_AsLongLongAndOverflow, PyLong_Check
from cpython.mem cimport PyMem_Free, PyMem_Malloc
from cpython.tuple cimport PyTuple_CheckExact, PyTuple_GET_SIZE
from cpython.unicode cimport PyUnicode_DecodeASCII, PyUnicode_DecodeUTF8
from libc.stdint cimport uint8_t, uint32_t, uint64_t
from libc.stdio cimport snprintf
from libc.string cimport memcpy, memset

import hashlib
import hmac
import struct

from . import dictionary
from .errors import AuthenticatorError, MessageAuthenticatorError, PacketError
from .packet import Packet

__all__ = (
    "Packet", "Request", "decode", "parse_request", "parse_batch", "encode_attributes", "encode",
    "encode_response", "encode_responses", "encode_access_request", "encode_accounting_request",
    "decode_response", "hide_password", "unhide_password", "chap_matches", "request_authenticator",
    "response_authenticator", "message_authenticator", "vsa_text",
)

# The same struct formats as radcore.packet; used only on slow paths, to raise struct.error exactly
# where the reference does (an out-of-range code, identifier or vendor).
cdef object _HEADER = struct.Struct("!BBH16s")
cdef object _VSA_HEADER = struct.Struct("!IBB")
cdef object _tuple_new = tuple.__new__
cdef object _MA_REPLY_CODES = frozenset({dictionary.Code.ACCESS_ACCEPT, dictionary.Code.ACCESS_REJECT,
                                         dictionary.Code.ACCESS_CHALLENGE})
cdef bytes _ZERO16 = bytes(16)
cdef uint8_t _ZEROS[16]
memset(_ZEROS, 0, 16)

#: vendor type -> b"<name>=", the prefix `vsa_text` strips (built from radcore.dictionary.H323_NAMES).
cdef dict _H323_PREFIXES = {vtype: (name + "=").encode("ascii")
                            for vtype, name in dictionary.H323_NAMES.items()}
cdef bytes _CONF_ID_PREFIX = _H323_PREFIXES[dictionary.H323_CONF_ID]
cdef bytes _CALL_ORIGIN_PREFIX = _H323_PREFIXES[dictionary.H323_CALL_ORIGIN]
cdef bytes _REDIRECT_NUMBER_PREFIX = _H323_PREFIXES[dictionary.H323_REDIRECT_NUMBER]


def _check_numbers():
    """Fail the import if the compiled-in numbers drifted from radcore.dictionary."""
    Code = dictionary.Code
    pairs = [
        (CODE_ACCESS_REQUEST, Code.ACCESS_REQUEST), (CODE_ACCESS_ACCEPT, Code.ACCESS_ACCEPT),
        (CODE_ACCESS_REJECT, Code.ACCESS_REJECT), (CODE_ACCOUNTING_REQUEST, Code.ACCOUNTING_REQUEST),
        (CODE_ACCOUNTING_RESPONSE, Code.ACCOUNTING_RESPONSE),
        (CODE_ACCESS_CHALLENGE, Code.ACCESS_CHALLENGE), (CODE_STATUS_SERVER, Code.STATUS_SERVER),
        (HEADER_LENGTH, dictionary.HEADER_LENGTH), (MAX_PACKET_LENGTH, dictionary.MAX_PACKET_LENGTH),
        (AUTH_LENGTH, dictionary.AUTHENTICATOR_LENGTH),
        (ATTR_USER_NAME, dictionary.USER_NAME), (ATTR_USER_PASSWORD, dictionary.USER_PASSWORD),
        (ATTR_CHAP_PASSWORD, dictionary.CHAP_PASSWORD), (ATTR_NAS_IP_ADDRESS, dictionary.NAS_IP_ADDRESS),
        (ATTR_VENDOR_SPECIFIC, dictionary.VENDOR_SPECIFIC),
        (ATTR_CALLED_STATION_ID, dictionary.CALLED_STATION_ID),
        (ATTR_CALLING_STATION_ID, dictionary.CALLING_STATION_ID),
        (ATTR_NAS_IDENTIFIER, dictionary.NAS_IDENTIFIER), (ATTR_PROXY_STATE, dictionary.PROXY_STATE),
        (ATTR_ACCT_STATUS_TYPE, dictionary.ACCT_STATUS_TYPE),
        (ATTR_ACCT_DELAY_TIME, dictionary.ACCT_DELAY_TIME),
        (ATTR_ACCT_SESSION_ID, dictionary.ACCT_SESSION_ID),
        (ATTR_ACCT_SESSION_TIME, dictionary.ACCT_SESSION_TIME),
        (ATTR_ACCT_TERMINATE_CAUSE, dictionary.ACCT_TERMINATE_CAUSE),
        (ATTR_EVENT_TIMESTAMP, dictionary.EVENT_TIMESTAMP), (ATTR_CHAP_CHALLENGE, dictionary.CHAP_CHALLENGE),
        (ATTR_MESSAGE_AUTHENTICATOR, dictionary.MESSAGE_AUTHENTICATOR),
        (VENDOR_CISCO, dictionary.VENDOR_CISCO), (VENDOR_QUINTUM, dictionary.VENDOR_QUINTUM),
        (VSA_H323_CONF_ID, dictionary.H323_CONF_ID), (VSA_H323_CALL_ORIGIN, dictionary.H323_CALL_ORIGIN),
        (VSA_H323_REDIRECT_NUMBER, dictionary.H323_REDIRECT_NUMBER),
    ]
    for mine, theirs in pairs:
        if mine != theirs:
            raise ImportError(f"radcore._fastpath was built with {mine} where radcore.dictionary has "
                              f"{theirs!r}; rebuild the extension")


_check_numbers()


include "_md5.pxi"


# =============================================================================================
# Cursor and helpers


cdef inline const uint8_t* _step(Cursor* cur, Py_ssize_t n) noexcept nogil:
    """The one bounds check: move past `n` octets and return where they start, or NULL if fewer remain."""
    cdef const uint8_t* p = cur.buf
    if n > cur.len:
        return NULL
    cur.buf += n
    cur.len -= n
    return p


cdef inline const uint8_t* _take(Cursor* cur, Py_ssize_t n) except NULL:
    """`_step` for the strict walks: running past Length is a malformed packet (RFC 2865 §5)."""
    cdef const uint8_t* p = _step(cur, n)
    if p == NULL:
        _overrun(cur, n)
    return p


cdef const uint8_t* _overrun(Cursor* cur, Py_ssize_t n) except NULL:
    raise PacketError(f"attribute runs past Length: {n} octets needed, {cur.len} left", "bad_attribute")


cdef inline uint32_t _be32(const uint8_t* p) noexcept nogil:
    return (<uint32_t>p[0] << 24) | (<uint32_t>p[1] << 16) | (<uint32_t>p[2] << 8) | <uint32_t>p[3]


cdef inline bytes _bytes_of(object obj):
    """`obj` as exact bytes: itself, or a copy of any other bytes-like object; TypeError otherwise."""
    if PyBytes_CheckExact(obj):
        return <bytes>obj
    if PyObject_CheckBuffer(obj):
        return bytes(memoryview(obj))
    raise TypeError(f"a bytes-like object is required, not {type(obj).__name__!r}")


cdef inline const uint8_t* _ptr(bytes b) noexcept:
    return <const uint8_t*>PyBytes_AS_STRING(b)


cdef inline bytes _bytes_at(const uint8_t* p, Py_ssize_t n):
    return PyBytes_FromStringAndSize(<const char*>p, n)


cdef inline str _text(Span s):
    """A string attribute as the reference decodes it: UTF-8 with U+FFFD for bad sequences."""
    if s.p == NULL or s.n == 0:
        return ""
    return PyUnicode_DecodeUTF8(<const char*>s.p, s.n, "replace")


cdef inline str _h323_text(Span s, bytes name_eq):
    """`vsa_text` on a Span: the value without its `h323-...=` prefix (`name_eq`), if it has one.

    The prefix is ASCII, so comparing octets is the same as the reference comparing decoded text.
    """
    cdef const uint8_t* prefix = _ptr(name_eq)
    cdef Py_ssize_t plen = PyBytes_GET_SIZE(name_eq)
    cdef Py_ssize_t i
    if s.p == NULL:
        return ""
    if s.n >= plen:
        for i in range(plen):
            if s.p[i] != prefix[i]:
                break
        else:
            s.p += plen
            s.n -= plen
    return _text(s)


cdef Py_ssize_t _check_header(const uint8_t* p, Py_ssize_t n) except -1:
    """The Length field after the header checks of RFC 2865 §3; octets past Length are padding."""
    if n < HEADER_LENGTH:
        raise PacketError(f"packet of {n} bytes is shorter than the 20-byte header", "short")
    cdef Py_ssize_t length = (<Py_ssize_t>p[2] << 8) | p[3]
    if length < HEADER_LENGTH or length > MAX_PACKET_LENGTH:
        raise PacketError(f"Length field {length} outside 20..4096", "bad_length")
    if length > n:
        raise PacketError(f"Length field {length} exceeds the {n}-byte datagram", "truncated")
    return length


cdef inline int _small_int(object obj, long long lo, long long hi, long long* out) except -1:
    """1 and `out` set if `obj` is an int within lo..hi, else 0 (the caller takes the slow path)."""
    cdef int overflow = 0
    cdef long long v
    if not PyLong_Check(obj):
        return 0
    v = PyLong_AsLongLongAndOverflow(obj, &overflow)
    if overflow or v < lo or v > hi:
        return 0
    out[0] = v
    return 1


# =============================================================================================
# Request: the flat result of parse_request


cdef tuple _REQUEST_FIELDS = (
    "code", "identifier", "authenticator", "user_name", "password", "chap_password",
    "chap_challenge", "nas_ip", "nas_identifier", "called", "calling", "status_type", "session_id",
    "session_time", "delay_time", "terminate_cause", "event_timestamp", "conf_id", "call_origin",
    "redirect_number", "proxy_states", "has_message_authenticator",
)


cdef class Request:
    """What the prepaid logic needs from a verified request: `radcore.packet.Request`, field for field.

    Why a `cdef class` and not the reference NamedTuple, measured on CPython 3.11 with gcc -O3:
    making one costs 55 ns, against 220 ns for the NamedTuple through `tuple.__new__` (95 ns if filled
    through the C API, which leans on tuple-subtype internals CPython does not promise to keep).
    Reading a field from Python costs about 40 ns here and 28 ns on a NamedTuple, so Python code that
    reads ten fields comes out about even, while Cython code that cimports this class (the batch
    handler the design calls for) reads them as C struct members, for nothing.

    It behaves like the NamedTuple where callers look: it compares equal to a `packet.Request` or tuple
    with the same fields (and hashes the same), iterates and indexes in field order, and has `_fields`,
    `_asdict()`, `_replace()` and `as_tuple()`; it pickles.
    """

    _fields = _REQUEST_FIELDS

    def __init__(self, int code, int identifier, bytes authenticator, str user_name, password,
                 chap_password, chap_challenge, str nas_ip, str nas_identifier, str called, str calling,
                 long long status_type, str session_id, long long session_time, long long delay_time,
                 long long terminate_cause, long long event_timestamp, str conf_id, str call_origin,
                 str redirect_number, tuple proxy_states, bint has_message_authenticator):
        self.code = code
        self.identifier = identifier
        self.authenticator = authenticator
        self.user_name = user_name
        self.password = password
        self.chap_password = chap_password
        self.chap_challenge = chap_challenge
        self.nas_ip = nas_ip
        self.nas_identifier = nas_identifier
        self.called = called
        self.calling = calling
        self.status_type = status_type
        self.session_id = session_id
        self.session_time = session_time
        self.delay_time = delay_time
        self.terminate_cause = terminate_cause
        self.event_timestamp = event_timestamp
        self.conf_id = conf_id
        self.call_origin = call_origin
        self.redirect_number = redirect_number
        self.proxy_states = proxy_states
        self.has_message_authenticator = has_message_authenticator

    cpdef tuple as_tuple(self):
        """The fields in order, as a plain tuple (what the reference NamedTuple is)."""
        return (self.code, self.identifier, self.authenticator, self.user_name, self.password,
                self.chap_password, self.chap_challenge, self.nas_ip, self.nas_identifier,
                self.called, self.calling, self.status_type, self.session_id, self.session_time,
                self.delay_time, self.terminate_cause, self.event_timestamp, self.conf_id,
                self.call_origin, self.redirect_number, self.proxy_states,
                self.has_message_authenticator)

    def _asdict(self):
        return dict(zip(_REQUEST_FIELDS, self.as_tuple()))

    def _replace(self, **changes):
        fields = self._asdict()
        unknown = changes.keys() - fields.keys()
        if unknown:
            raise ValueError(f"Got unexpected field names: {sorted(unknown)!r}")
        fields.update(changes)
        return Request(**fields)

    def __eq__(self, other):
        if isinstance(other, Request):
            return self.as_tuple() == (<Request>other).as_tuple()
        if isinstance(other, tuple):
            return self.as_tuple() == other
        return NotImplemented

    def __ne__(self, other):
        result = self.__eq__(other)
        return result if result is NotImplemented else not result

    def __hash__(self):
        return hash(self.as_tuple())

    def __iter__(self):
        return iter(self.as_tuple())

    def __len__(self):
        return len(_REQUEST_FIELDS)

    def __getitem__(self, index):
        return self.as_tuple()[index]

    def __repr__(self):
        return "Request(" + ", ".join(
            f"{name}={value!r}" for name, value in zip(_REQUEST_FIELDS, self.as_tuple())) + ")"

    def __reduce__(self):
        return (Request, self.as_tuple())


# =============================================================================================
# Decoding


cdef int _split_vsa(list out, const uint8_t* p, Py_ssize_t n) except -1:
    """Append the sub-attributes of a Vendor-Specific value (RFC 2865 §5.26), or the raw (26, value).

    Same rule as the reference: only Cisco and Quintum values that follow the suggested
    vendor-type/vendor-length format exactly, with at least one sub-attribute, are split.
    """
    cdef Cursor cur
    cdef const uint8_t* sub
    cdef const uint8_t* val
    cdef uint32_t vendor
    cdef long base_key
    if n >= 4:
        vendor = _be32(p)
        if (vendor == VENDOR_CISCO or vendor == VENDOR_QUINTUM) and n > 4 and _vsa_well_formed(p, n):
            base_key = <long>vendor << 8
            cur.buf = p + 4
            cur.len = n - 4
            while cur.len > 0:
                sub = _step(&cur, 2)
                val = _step(&cur, sub[1] - 2)
                out.append((base_key | sub[0], _bytes_at(val, sub[1] - 2)))
            return 0
    out.append((ATTR_VENDOR_SPECIFIC, _bytes_at(p, n)))
    return 0


cdef bint _vsa_well_formed(const uint8_t* p, Py_ssize_t n) noexcept nogil:
    """Whether the sub-attributes after the vendor id exactly fill the value, each at least 2 long."""
    cdef Cursor cur
    cdef const uint8_t* sub
    cur.buf = p + 4
    cur.len = n - 4
    while cur.len > 0:
        sub = _step(&cur, 2)
        if sub == NULL or sub[1] < 2 or _step(&cur, sub[1] - 2) == NULL:
            return False
    return True


cdef object _decode(bytes data, Py_ssize_t* ma_offset):
    """`decode`; also stores the value offset of the first Message-Authenticator (or -1)."""
    cdef const uint8_t* base = _ptr(data)
    cdef Py_ssize_t length = _check_header(base, PyBytes_GET_SIZE(data))
    cdef Cursor cur
    cdef const uint8_t* hdr
    cdef const uint8_t* val
    cdef list attributes = []
    cur.buf = base + HEADER_LENGTH
    cur.len = length - HEADER_LENGTH
    ma_offset[0] = -1
    while cur.len > 0:
        hdr = _take(&cur, 2)
        if hdr[1] < 2:
            raise PacketError(f"attribute {hdr[0]} at offset {hdr - base} has length {hdr[1]} < 2",
                              "bad_attribute")
        val = _take(&cur, hdr[1] - 2)
        if hdr[0] == ATTR_VENDOR_SPECIFIC:
            _split_vsa(attributes, val, hdr[1] - 2)
            continue
        if hdr[0] == ATTR_MESSAGE_AUTHENTICATOR and ma_offset[0] < 0:
            ma_offset[0] = val - base
        attributes.append((hdr[0], _bytes_at(val, hdr[1] - 2)))
    return _tuple_new(Packet, (base[0], base[1], _bytes_at(base + 4, AUTH_LENGTH), tuple(attributes)))


def decode(data):
    """Decode any RADIUS packet with full structural validation; see `radcore.packet.decode`."""
    cdef Py_ssize_t ma_offset
    return _decode(_bytes_of(data), &ma_offset)


def vsa_text(value, vendor_type):
    """The text of an h323 VSA value, accepting bare (`360`) and prefixed (`h323-credit-time=360`)."""
    cdef bytes v = _bytes_of(value)
    cdef object prefix = _H323_PREFIXES.get(vendor_type)
    cdef Span s
    s.p = _ptr(v)
    s.n = PyBytes_GET_SIZE(v)
    if prefix is None:
        return _text(s)
    return _h323_text(s, <bytes>prefix)


# =============================================================================================
# Authenticators and password hiding


cdef void _md5_of(uint8_t* out, const uint8_t* a, Py_ssize_t na, const uint8_t* b, Py_ssize_t nb,
                  const uint8_t* c, Py_ssize_t nc, const uint8_t* d, Py_ssize_t nd) noexcept nogil:
    """MD5 of up to four concatenated pieces, without concatenating them."""
    cdef Md5 m
    _md5_init(&m)
    _md5_update(&m, a, na)
    _md5_update(&m, b, nb)
    _md5_update(&m, c, nc)
    _md5_update(&m, d, nd)
    _md5_final(&m, out)


cdef void _packet_md5(uint8_t* out, const uint8_t* pkt, Py_ssize_t n, const uint8_t* auth,
                      Py_ssize_t nauth, bytes secret) noexcept:
    """MD5(pkt[:4] + auth + pkt[20:] + secret): Request (RFC 2866 §3) and Response (RFC 2865 §3)
    Authenticators, with the reference's slicing for packets shorter than a header."""
    _md5_of(out, pkt, 4 if n > 4 else n, auth, nauth,
            pkt + HEADER_LENGTH, n - HEADER_LENGTH if n > HEADER_LENGTH else 0,
            _ptr(secret), PyBytes_GET_SIZE(secret))


def request_authenticator(data, secret):
    """Accounting-Request Request Authenticator: MD5(header with 16 zero octets + attributes + secret).

    RFC 2866 §3; the same construction covers Response Authenticators when `data` carries the
    Request Authenticator in place (RFC 2865 §3).
    """
    cdef bytes pkt = _bytes_of(data)
    cdef bytes key = _bytes_of(secret)
    cdef uint8_t out[16]
    _packet_md5(out, _ptr(pkt), PyBytes_GET_SIZE(pkt), _ZEROS, AUTH_LENGTH, key)
    return _bytes_at(out, 16)


def response_authenticator(data, request_auth, secret):
    """ResponseAuth = MD5(Code+ID+Length+RequestAuth+Attributes+Secret) (RFC 2865 §3)."""
    cdef bytes pkt = _bytes_of(data)
    cdef bytes auth = _bytes_of(request_auth)
    cdef bytes key = _bytes_of(secret)
    cdef uint8_t out[16]
    _packet_md5(out, _ptr(pkt), PyBytes_GET_SIZE(pkt), _ptr(auth), PyBytes_GET_SIZE(auth), key)
    return _bytes_at(out, 16)


cdef Py_ssize_t _hide(uint8_t* out, const uint8_t* pw, Py_ssize_t n, bytes secret,
                      const uint8_t* auth, Py_ssize_t nauth) noexcept:
    """RFC 2865 §5.2 hiding of n <= 128 octets into `out`; returns the hidden length."""
    cdef Py_ssize_t total = 16 if n == 0 else (n + 15) & ~15
    cdef uint8_t key[16]
    cdef Py_ssize_t i, j
    cdef const uint8_t* prev = auth
    cdef Py_ssize_t nprev = nauth
    memset(out, 0, total)
    memcpy(out, pw, n)
    for i in range(0, total, 16):
        _md5_of(key, _ptr(secret), PyBytes_GET_SIZE(secret), prev, nprev, NULL, 0, NULL, 0)
        for j in range(16):
            out[i + j] ^= key[j]
        prev = out + i
        nprev = 16
    return total


def hide_password(password, secret, authenticator):
    """User-Password hiding, RFC 2865 §5.2: pad to 16, XOR with the chained MD5 stream."""
    if len(password) > MAX_PASSWORD_LENGTH:
        raise ValueError("User-Password longer than 128 octets")
    cdef bytes pw = _bytes_of(password)
    cdef bytes key = _bytes_of(secret)
    cdef bytes auth = _bytes_of(authenticator)
    cdef uint8_t out[MAX_PASSWORD_LENGTH]
    cdef Py_ssize_t n = _hide(out, _ptr(pw), PyBytes_GET_SIZE(pw), key, _ptr(auth), PyBytes_GET_SIZE(auth))
    return _bytes_at(out, n)


cdef bytes _unhide(const uint8_t* hidden, Py_ssize_t n, bytes secret, const uint8_t* auth,
                   Py_ssize_t nauth):
    """Reverse `_hide`; the trailing NUL padding is removed (RFC 2865 §5.2)."""
    cdef uint8_t out[MAX_PASSWORD_LENGTH]
    cdef uint8_t key[16]
    cdef Py_ssize_t i, j
    cdef const uint8_t* prev = auth
    cdef Py_ssize_t nprev = nauth
    if n == 0 or n % 16 or n > MAX_PASSWORD_LENGTH:
        raise PacketError(f"User-Password of {n} octets is not 16..128 in steps of 16", "bad_password")
    for i in range(0, n, 16):
        _md5_of(key, _ptr(secret), PyBytes_GET_SIZE(secret), prev, nprev, NULL, 0, NULL, 0)
        for j in range(16):
            out[i + j] = hidden[i + j] ^ key[j]
        prev = hidden + i
        nprev = 16
    while n > 0 and out[n - 1] == 0:
        n -= 1
    return _bytes_at(out, n)


def unhide_password(hidden, secret, authenticator):
    """Reverse `hide_password`; the trailing NUL padding is removed (RFC 2865 §5.2)."""
    cdef bytes h = _bytes_of(hidden)
    cdef bytes key = _bytes_of(secret)
    cdef bytes auth = _bytes_of(authenticator)
    return _unhide(_ptr(h), PyBytes_GET_SIZE(h), key, _ptr(auth), PyBytes_GET_SIZE(auth))


def chap_matches(chap_password, challenge, password):
    """CHAP check, RFC 2865 §2.2 / RFC 1994: MD5(CHAP ident + password + challenge) == response."""
    cdef bytes chap = _bytes_of(chap_password)
    cdef bytes chal
    cdef bytes pw
    cdef uint8_t expected[16]
    if PyBytes_GET_SIZE(chap) != 17:
        return False
    pw = _bytes_of(password)
    chal = _bytes_of(challenge)
    _md5_of(expected, _ptr(chap), 1, _ptr(pw), PyBytes_GET_SIZE(pw), _ptr(chal), PyBytes_GET_SIZE(chal),
            NULL, 0)
    return bool(_equal(expected, _ptr(chap) + 1, 16))


cdef void _packet_hmac(uint8_t* out, const uint8_t* pkt, Py_ssize_t n, const uint8_t* auth,
                       Py_ssize_t offset, bytes secret):
    """HMAC-MD5 over pkt[:4] + auth + pkt[20:offset] + 16 zeros + pkt[offset+16:n] (RFC 3579 §3.2).

    Requires 20 <= offset and offset + 16 <= n; `auth` is 16 octets.
    """
    cdef HmacMd5 h
    _hmac_start(&h, secret)
    _md5_update(&h.inner, pkt, 4)
    _md5_update(&h.inner, auth, AUTH_LENGTH)
    _md5_update(&h.inner, pkt + HEADER_LENGTH, offset - HEADER_LENGTH)
    _md5_update(&h.inner, _ZEROS, AUTH_LENGTH)
    _md5_update(&h.inner, pkt + offset + AUTH_LENGTH, n - offset - AUTH_LENGTH)
    _hmac_final(&h, out)


def _message_authenticator_slow(data, secret, authenticator, offset):
    """The reference's computation, literally, for arguments the C path does not take."""
    buf = bytearray(data)
    buf[4:20] = authenticator
    buf[offset:offset + 16] = _ZERO16
    return hmac.new(secret, bytes(buf), hashlib.md5).digest()


def message_authenticator(data, secret, authenticator, offset):
    """HMAC-MD5 over the packet with the Message-Authenticator value zeroed (RFC 3579 §3.2).

    `offset` is where the 16-octet value starts; `authenticator` is what the header's
    authenticator field holds during the computation (request: itself, or zeros for accounting;
    response: the Request Authenticator).
    """
    cdef long long off
    cdef bytes pkt, auth, key
    cdef uint8_t out[16]
    if (PyBytes_CheckExact(data) and PyBytes_CheckExact(authenticator) and PyBytes_CheckExact(secret)
            and PyBytes_GET_SIZE(authenticator) == AUTH_LENGTH
            and _small_int(offset, HEADER_LENGTH, PyBytes_GET_SIZE(data) - AUTH_LENGTH, &off)):
        pkt = <bytes>data
        auth = <bytes>authenticator
        key = <bytes>secret
        _packet_hmac(out, _ptr(pkt), PyBytes_GET_SIZE(pkt), _ptr(auth), off, key)
        return _bytes_at(out, 16)
    return _message_authenticator_slow(data, secret, authenticator, offset)


# =============================================================================================
# Server side: one request in, one flat Request out


cdef Request _parse_request(bytes data, bytes secret, bint require_ma):
    cdef const uint8_t* base = _ptr(data)
    cdef Py_ssize_t length = _check_header(base, PyBytes_GET_SIZE(data))
    cdef int code = base[0]
    if code != CODE_ACCESS_REQUEST and code != CODE_ACCOUNTING_REQUEST and code != CODE_STATUS_SERVER:
        raise PacketError(f"code {code} is not a request a server accepts", "bad_code")

    cdef Span user_name, hidden, chap_password, chap_challenge, nas_ip, nas_identifier
    cdef Span called, calling, session_id, conf_id, call_origin, redirect_number
    user_name.p = hidden.p = chap_password.p = chap_challenge.p = nas_ip.p = nas_identifier.p = NULL
    called.p = calling.p = session_id.p = conf_id.p = call_origin.p = redirect_number.p = NULL
    user_name.n = hidden.n = chap_password.n = chap_challenge.n = nas_ip.n = nas_identifier.n = 0
    called.n = calling.n = session_id.n = conf_id.n = call_origin.n = redirect_number.n = 0
    cdef long long status_type = 0, session_time = -1, delay_time = 0
    cdef long long terminate_cause = 0, event_timestamp = 0
    cdef Py_ssize_t ma_offset = -1, first_proxy = -1, proxy_count = 0

    cdef Cursor cur
    cdef Cursor sub_cur
    cdef const uint8_t* hdr
    cdef const uint8_t* val
    cdef const uint8_t* sub
    cdef Py_ssize_t vlen
    cdef int atype
    cdef uint32_t vendor
    cur.buf = base + HEADER_LENGTH
    cur.len = length - HEADER_LENGTH
    while cur.len > 0:
        hdr = _take(&cur, 2)
        atype = hdr[0]
        if hdr[1] < 2:
            raise PacketError(f"attribute {atype} at offset {hdr - base} has length {hdr[1]} < 2",
                              "bad_attribute")
        vlen = hdr[1] - 2
        val = _take(&cur, vlen)
        if atype == ATTR_MESSAGE_AUTHENTICATOR:
            # RFC 3579 §3.2: exactly one, 16 octets.
            if vlen != AUTH_LENGTH:
                raise MessageAuthenticatorError(f"Message-Authenticator of {vlen} octets, not 16")
            if ma_offset >= 0:
                raise MessageAuthenticatorError("more than one Message-Authenticator")
            ma_offset = val - base
        elif atype == ATTR_USER_NAME:
            user_name.p = val; user_name.n = vlen
        elif atype == ATTR_USER_PASSWORD:
            hidden.p = val; hidden.n = vlen
        elif atype == ATTR_CHAP_PASSWORD:
            chap_password.p = val; chap_password.n = vlen
        elif atype == ATTR_CHAP_CHALLENGE:
            chap_challenge.p = val; chap_challenge.n = vlen
        elif atype == ATTR_NAS_IP_ADDRESS:
            if vlen != 4:
                raise PacketError(f"NAS-IP-Address of {vlen} octets, not 4", "bad_attribute")
            nas_ip.p = val; nas_ip.n = vlen
        elif atype == ATTR_NAS_IDENTIFIER:
            nas_identifier.p = val; nas_identifier.n = vlen
        elif atype == ATTR_CALLED_STATION_ID:
            called.p = val; called.n = vlen
        elif atype == ATTR_CALLING_STATION_ID:
            calling.p = val; calling.n = vlen
        elif atype == ATTR_ACCT_SESSION_ID:
            session_id.p = val; session_id.n = vlen
        elif atype == ATTR_PROXY_STATE:
            if proxy_count == 0:
                first_proxy = hdr - base
            proxy_count += 1
        elif (atype == ATTR_ACCT_STATUS_TYPE or atype == ATTR_ACCT_SESSION_TIME
              or atype == ATTR_ACCT_DELAY_TIME or atype == ATTR_ACCT_TERMINATE_CAUSE
              or atype == ATTR_EVENT_TIMESTAMP):
            if vlen != 4:
                raise PacketError(f"{dictionary.attribute_name(atype)} of {vlen} octets, not 4",
                                  "bad_attribute")
            if atype == ATTR_ACCT_STATUS_TYPE:
                status_type = _be32(val)
            elif atype == ATTR_ACCT_SESSION_TIME:
                session_time = _be32(val)
            elif atype == ATTR_ACCT_DELAY_TIME:
                delay_time = _be32(val)
            elif atype == ATTR_ACCT_TERMINATE_CAUSE:
                terminate_cause = _be32(val)
            else:
                event_timestamp = _be32(val)
        elif atype == ATTR_VENDOR_SPECIFIC and vlen > 4:
            vendor = _be32(val)
            if (vendor == VENDOR_CISCO or vendor == VENDOR_QUINTUM) and _vsa_well_formed(val, vlen):
                sub_cur.buf = val + 4
                sub_cur.len = vlen - 4
                while sub_cur.len > 0:
                    sub = _step(&sub_cur, 2)
                    if sub[0] == VSA_H323_CONF_ID:
                        conf_id.p = sub + 2; conf_id.n = sub[1] - 2
                    elif sub[0] == VSA_H323_CALL_ORIGIN:
                        call_origin.p = sub + 2; call_origin.n = sub[1] - 2
                    elif sub[0] == VSA_H323_REDIRECT_NUMBER:
                        redirect_number.p = sub + 2; redirect_number.n = sub[1] - 2
                    _step(&sub_cur, sub[1] - 2)

    cdef uint8_t expected[16]
    cdef const uint8_t* ma_auth
    if code == CODE_ACCOUNTING_REQUEST:
        # RFC 2866 §3: MD5(Code + Identifier + Length + 16 zero octets + attributes + secret).
        _packet_md5(expected, base, length, _ZEROS, AUTH_LENGTH, secret)
        if not _equal(expected, base + 4, AUTH_LENGTH):
            raise AuthenticatorError("Accounting-Request authenticator does not match the secret")
        ma_auth = _ZEROS
    else:
        ma_auth = base + 4

    if ma_offset >= 0:
        _packet_hmac(expected, base, length, ma_auth, ma_offset, secret)
        if not _equal(expected, base + ma_offset, AUTH_LENGTH):
            raise MessageAuthenticatorError("Message-Authenticator does not match the secret")
    elif code == CODE_STATUS_SERVER:
        raise MessageAuthenticatorError("Status-Server without Message-Authenticator",
                                        "missing_message_authenticator")
    elif code == CODE_ACCESS_REQUEST and (require_ma or proxy_count):
        raise MessageAuthenticatorError("Access-Request without Message-Authenticator",
                                        "missing_message_authenticator")

    cdef Request req = Request.__new__(Request)
    req.code = code
    req.identifier = base[1]
    req.authenticator = _bytes_at(base + 4, AUTH_LENGTH)
    req.password = (None if hidden.p == NULL
                    else _unhide(hidden.p, hidden.n, secret, base + 4, AUTH_LENGTH))
    req.user_name = _text(user_name)
    req.chap_password = None if chap_password.p == NULL else _bytes_at(chap_password.p, chap_password.n)
    if chap_challenge.p != NULL:
        req.chap_challenge = _bytes_at(chap_challenge.p, chap_challenge.n)
    elif chap_password.p != NULL:
        req.chap_challenge = req.authenticator
    else:
        req.chap_challenge = None
    cdef char quad[16]
    cdef int quad_len
    if nas_ip.p == NULL:
        req.nas_ip = ""
    else:
        quad_len = snprintf(quad, sizeof(quad), "%u.%u.%u.%u",
                            <unsigned>nas_ip.p[0], <unsigned>nas_ip.p[1], <unsigned>nas_ip.p[2],
                            <unsigned>nas_ip.p[3])
        req.nas_ip = PyUnicode_DecodeASCII(quad, quad_len, NULL)
    req.nas_identifier = _text(nas_identifier)
    req.called = _text(called)
    req.calling = _text(calling)
    req.status_type = status_type
    req.session_id = _text(session_id)
    req.session_time = session_time
    req.delay_time = delay_time
    req.terminate_cause = terminate_cause
    req.event_timestamp = event_timestamp
    req.conf_id = _h323_text(conf_id, _CONF_ID_PREFIX)
    req.call_origin = _h323_text(call_origin, _CALL_ORIGIN_PREFIX)
    req.redirect_number = _h323_text(redirect_number, _REDIRECT_NUMBER_PREFIX)
    req.proxy_states = () if proxy_count == 0 else _proxy_states(base, first_proxy, length, proxy_count)
    req.has_message_authenticator = ma_offset >= 0
    return req


cdef tuple _proxy_states(const uint8_t* base, Py_ssize_t first, Py_ssize_t length, Py_ssize_t count):
    """The Proxy-State values in wire order, from a packet the walk has already validated."""
    cdef Cursor cur
    cdef const uint8_t* hdr
    cdef const uint8_t* val
    cdef list states = []
    cur.buf = base + first
    cur.len = length - first
    while len(states) < count:
        hdr = _take(&cur, 2)
        val = _take(&cur, hdr[1] - 2)
        if hdr[0] == ATTR_PROXY_STATE:
            states.append(_bytes_at(val, hdr[1] - 2))
    return tuple(states)


def parse_request(data, secret, require_message_authenticator=True):
    """Validate and verify one request from a known client and extract its prepaid fields.

    Raises `PacketError` (structure), `AuthenticatorError` (Accounting-Request authenticator) or
    `MessageAuthenticatorError` (missing where required, wrong size, or wrong value). A
    Status-Server must carry a Message-Authenticator (RFC 5997 §3); so must an Access-Request that
    carries Proxy-State (the BlastRADIUS mitigation), whatever the client's setting.
    """
    return _parse_request(_bytes_of(data), _bytes_of(secret), bool(require_message_authenticator))


def parse_batch(items):
    """`parse_request` over a batch of (datagram, secret, require_message_authenticator).

    A bad datagram yields its `PacketError` in place instead of raising, so one bad packet never
    costs the rest of the batch.
    """
    cdef list out = []
    for data, secret, require in items:
        try:
            out.append(_parse_request(_bytes_of(data), _bytes_of(secret), bool(require)))
        except PacketError as exc:
            out.append(exc)
    return out


include "_fastpath_encode.pxi"
include "_fastpath_client.pxi"
