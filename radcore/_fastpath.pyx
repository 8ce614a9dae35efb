# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
# cython: embedsignature=True
"""The RADIUS codec in Cython: the same names, results and exceptions as `radcore.packet`.

`radcore.packet` is the reference; this module is judged against it (tests/test_fastpath_*_equivalence.py).
`radcore.fastpath` picks one of the two. What is different here is only how the work is done:

- Every read of a packet goes through one checked step, `_take(cur, n)` on a two-field `Cursor`
  (py-pgproto's `frb_read`). That single check is what makes `boundscheck=False, wraparound=False`
  safe: apart from the 20-octet header, which `_check_header` vouches for first, no code touches
  packet memory it did not take from a cursor. (The lenient Vendor-Specific split uses `_step`, the
  same check without the exception.)
- `parse_request` (`_fastpath_parse.pxi`) records where the values it needs lie (`Span`s) and makes
  the few `str`/`bytes` fields once, after the walk: no Python object per attribute.
- MD5 (RFC 1321) and HMAC-MD5 (RFC 2104) are implemented in C-level Cython (`_md5.pxi`), fed
  directly from packet memory, so nothing is concatenated or copied to be hashed, and no libcrypto
  is needed; the authenticators, password hiding and Message-Authenticator built on them are in
  `_fastpath_auth.pxi`.
- Encoders (`_fastpath_encode.pxi`; the client side in `_fastpath_client.pxi`) write into a
  `Writer` that starts on the C stack; a reply is built with room for its header and
  Message-Authenticator in front, signed in place and copied once into the result `bytes`.

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


include "_fastpath_auth.pxi"
include "_fastpath_parse.pxi"
include "_fastpath_encode.pxi"
include "_fastpath_client.pxi"
