# Declarations of the Cython fast path (radcore/_fastpath.pyx). Cython code elsewhere in radcore
# (the batch handler) can `from radcore._fastpath cimport Request` and read its fields at C speed.
#
# Glossary, as in the .pyx: `p`/`end` walk a buffer, `cur` is a Cursor, `n`/`len` count octets,
# `pkt` is a whole datagram, `secret` is the client's shared secret.

from libc.stdint cimport uint8_t, uint32_t, uint64_t


cdef enum:
    # Packet codes (RFC 2865 §3, RFC 2866 §3, RFC 5997 §3); checked against radcore.dictionary at import.
    CODE_ACCESS_REQUEST = 1         # client -> server, authentication and number authorization
    CODE_ACCESS_ACCEPT = 2          # server -> client
    CODE_ACCESS_REJECT = 3          # server -> client
    CODE_ACCOUNTING_REQUEST = 4     # client -> server, call Start/Interim/Stop
    CODE_ACCOUNTING_RESPONSE = 5    # server -> client
    CODE_ACCESS_CHALLENGE = 11      # server -> client
    CODE_STATUS_SERVER = 12         # client -> server, liveness probe; must carry a Message-Authenticator

cdef enum:
    # Wire sizes (RFC 2865 §3).
    HEADER_LENGTH = 20              # Code, Identifier, Length, Authenticator
    MAX_PACKET_LENGTH = 4096        # largest Length field a packet may carry
    AUTH_LENGTH = 16                # Request/Response Authenticator and Message-Authenticator value
    MA_ATTRIBUTE_LENGTH = 18        # Message-Authenticator attribute: type, length, 16-octet HMAC
    MAX_PASSWORD_LENGTH = 128       # longest hidden User-Password (RFC 2865 §5.2)
    WRITER_LOCAL = 4096 + 64        # octets a Writer holds before it moves to the heap

cdef enum:
    # Attribute types the fast path reads by number (radcore.dictionary has the full list).
    ATTR_USER_NAME = 1
    ATTR_USER_PASSWORD = 2
    ATTR_CHAP_PASSWORD = 3
    ATTR_NAS_IP_ADDRESS = 4
    ATTR_VENDOR_SPECIFIC = 26
    ATTR_CALLED_STATION_ID = 30
    ATTR_CALLING_STATION_ID = 31
    ATTR_NAS_IDENTIFIER = 32
    ATTR_PROXY_STATE = 33
    ATTR_ACCT_STATUS_TYPE = 40
    ATTR_ACCT_DELAY_TIME = 41
    ATTR_ACCT_SESSION_ID = 44
    ATTR_ACCT_SESSION_TIME = 46
    ATTR_ACCT_TERMINATE_CAUSE = 49
    ATTR_EVENT_TIMESTAMP = 55
    ATTR_CHAP_CHALLENGE = 60
    ATTR_MESSAGE_AUTHENTICATOR = 80
    VENDOR_CISCO = 9                # Vendor-Specific values of these two vendors are split into keys
    VENDOR_QUINTUM = 6618
    VSA_H323_CONF_ID = 24           # vendor types read by parse_request (same numbers for both vendors)
    VSA_H323_CALL_ORIGIN = 26
    VSA_H323_REDIRECT_NUMBER = 106


cdef struct Cursor:
    # A read position inside one packet (the py-pgproto FRBuffer shape). `_take` is the only code that
    # moves it and the only bounds check the attribute walks need.
    const uint8_t* buf              # next unread octet
    Py_ssize_t len                  # octets left before the end of the packet (its Length field, not the datagram)


cdef struct Span:
    # Where a value lies inside the packet being parsed: recorded instead of creating an object.
    const uint8_t* p                # first octet of the value; NULL while the attribute has not been seen
    Py_ssize_t n                    # octets in the value


cdef struct Md5:
    # An MD5 computation in progress (RFC 1321).
    uint32_t state[4]               # chaining variables A, B, C, D (§3.3)
    uint64_t count                  # octets fed so far; its bit count is appended by the final padding (§3.2)
    uint8_t block[64]               # octets waiting for a full 64-octet block


cdef struct HmacMd5:
    # HMAC-MD5 in progress (RFC 2104 §2), the Message-Authenticator MAC (RFC 3579 §3.2).
    Md5 inner                       # already fed the key XOR ipad; then fed the message
    Md5 outer                       # already fed the key XOR opad; fed the inner digest at the end


cdef struct Writer:
    # An output buffer for encoders: starts in `local`, moves to PyMem memory only when it outgrows it.
    uint8_t* buf                    # first octet of the output (`local` or a PyMem block)
    Py_ssize_t len                  # octets written so far
    Py_ssize_t cap                  # octets `buf` can hold
    uint8_t local[WRITER_LOCAL]     # inline storage: a whole reply fits without an allocation


cdef class Request:
    # What the prepaid logic needs from a verified request: radcore.packet.Request field for field
    # (RFC numbers in that class's docstring). Absent strings are "", absent integers 0.
    cdef readonly int code                      # packet code: Access-Request, Accounting-Request or Status-Server
    cdef readonly int identifier                # Identifier octet, echoed in the reply
    cdef readonly bytes authenticator           # Request Authenticator; the reply is signed over it
    cdef readonly str user_name                 # User-Name (1), UTF-8 with replacement
    cdef readonly object password               # unhidden User-Password (2) without NUL padding, or None
    cdef readonly object chap_password          # CHAP-Password (3) raw (ident + 16-octet response), or None
    cdef readonly object chap_challenge         # CHAP-Challenge (60); the Request Authenticator when absent
    cdef readonly str nas_ip                    # NAS-IP-Address (4) in dotted quad
    cdef readonly str nas_identifier            # NAS-Identifier (32)
    cdef readonly str called                    # Called-Station-Id (30): the dialled number
    cdef readonly str calling                   # Calling-Station-Id (31): the caller (ANI)
    cdef readonly long long status_type         # Acct-Status-Type (40): 1 Start, 2 Stop, 3 Interim, 7/8 On/Off
    cdef readonly str session_id                # Acct-Session-Id (44)
    cdef readonly long long session_time        # Acct-Session-Time (46) in seconds; -1 when absent
    cdef readonly long long delay_time          # Acct-Delay-Time (41)
    cdef readonly long long terminate_cause     # Acct-Terminate-Cause (49)
    cdef readonly long long event_timestamp     # Event-Timestamp (55), UTC epoch seconds
    cdef readonly str conf_id                   # h323-conf-id VSA value, "h323-conf-id=" prefix removed
    cdef readonly str call_origin               # h323-call-origin VSA value (answer/originate)
    cdef readonly str redirect_number           # h323-redirect-number VSA value
    cdef readonly tuple proxy_states            # Proxy-State (33) values, to echo in order (RFC 2865 §5.33)
    cdef readonly bint has_message_authenticator  # a Message-Authenticator (80) was present and verified

    cpdef tuple as_tuple(self)


# Functions other Cython modules of radcore (the card-auth lane, radcore/_lane.pyx) call at C speed.
cdef void _md5_update(Md5* m, const uint8_t* p, Py_ssize_t n) noexcept nogil
cdef void _md5_of(uint8_t* out, const uint8_t* a, Py_ssize_t na, const uint8_t* b, Py_ssize_t nb,
                  const uint8_t* c, Py_ssize_t nc, const uint8_t* d, Py_ssize_t nd) noexcept nogil
cdef void _packet_md5(uint8_t* out, const uint8_t* pkt, Py_ssize_t n, const uint8_t* auth,
                      Py_ssize_t nauth, bytes secret) noexcept
cdef void _packet_hmac(uint8_t* out, const uint8_t* pkt, Py_ssize_t n, const uint8_t* auth,
                       Py_ssize_t offset, bytes secret)
cdef bytes _unhide(const uint8_t* hidden, Py_ssize_t n, bytes secret, const uint8_t* auth,
                   Py_ssize_t nauth)


cdef inline bint _equal(const uint8_t* a, const uint8_t* b, Py_ssize_t n) noexcept nogil:
    """Constant-time comparison (as hmac.compare_digest): no early exit on the first difference."""
    cdef uint8_t acc = 0
    cdef Py_ssize_t i
    for i in range(n):
        acc |= a[i] ^ b[i]
    return acc == 0
