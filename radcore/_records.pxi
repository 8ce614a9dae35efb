# Card records and card numbers as C reads them: shared by the prepaid lanes (_cardauth, _acctlane).
# The layouts are radcore.records' (CARD_FORMAT, SESSION_FORMAT, CDR_FORMAT): little-endian, read and
# written with memcpy-free byte loops because LMDB hands values out only 2-byte aligned.

from libc.stdint cimport int64_t, uint8_t, uint16_t, uint32_t, uint64_t

from radcore.records import (CARD_FIXED_SIZE, CARD_OFFSETS, SESSION_FIXED_SIZE, CardStatus,
                             SessionState)

cdef enum:
    MAX_SERIES = 99999
    MAX_SERIAL = 99999999
    # Card: radcore.records.Card's offsets (checked below against CARD_OFFSETS)
    CARD_SIZE = 96
    OFF_BALANCE = 0
    OFF_RESERVED = 8
    OFF_EXPIRES_AT = 24
    OFF_LAST_USE = 40
    OFF_LOCKED_UNTIL = 48
    OFF_STATUS = 56
    OFF_FAILED_PINS = 57
    OFF_OPEN_CALLS = 58
    OFF_PIN_DIGEST = 64
    STATUS_ACTIVATED = 1
    STATUS_USED = 3
    STATUS_BLOCKED = 4
    # Session: radcore.records.SESSION_FORMAT "<8s6q5IB3x", then five strings
    SESSION_SIZE = 80
    SESSION_AUTHORIZED = 0
    SESSION_STARTED = 1
    SESSION_STOPPED = 2

assert CARD_FIXED_SIZE == CARD_SIZE and SESSION_FIXED_SIZE == SESSION_SIZE
assert (CardStatus.ACTIVATED, CardStatus.USED, CardStatus.BLOCKED) == (STATUS_ACTIVATED, STATUS_USED,
                                                                       STATUS_BLOCKED)
assert (SessionState.AUTHORIZED, SessionState.STARTED, SessionState.STOPPED) == (
    SESSION_AUTHORIZED, SESSION_STARTED, SESSION_STOPPED)
assert (CARD_OFFSETS["balance"], CARD_OFFSETS["reserved"], CARD_OFFSETS["expires_at"],
        CARD_OFFSETS["last_use"], CARD_OFFSETS["locked_until"], CARD_OFFSETS["status"],
        CARD_OFFSETS["failed_pins"], CARD_OFFSETS["open_calls"], CARD_OFFSETS["pin_digest"]) == (
    OFF_BALANCE, OFF_RESERVED, OFF_EXPIRES_AT, OFF_LAST_USE, OFF_LOCKED_UNTIL, OFF_STATUS,
    OFF_FAILED_PINS, OFF_OPEN_CALLS, OFF_PIN_DIGEST)


cdef inline int64_t _le64(const uint8_t* p) noexcept nogil:
    cdef uint64_t v = 0
    cdef int i
    for i in range(7, -1, -1):
        v = (v << 8) | p[i]
    return <int64_t>v


cdef inline uint32_t _le32(const uint8_t* p) noexcept nogil:
    return (<uint32_t>p[3] << 24) | (<uint32_t>p[2] << 16) | (<uint32_t>p[1] << 8) | p[0]


cdef inline void _put_le64(uint8_t* p, int64_t value) noexcept nogil:
    cdef uint64_t v = <uint64_t>value
    cdef int i
    for i in range(8):
        p[i] = <uint8_t>(v & 0xFF)
        v >>= 8


cdef inline void _put_le32(uint8_t* p, uint32_t v) noexcept nogil:
    p[0] = <uint8_t>v
    p[1] = <uint8_t>(v >> 8)
    p[2] = <uint8_t>(v >> 16)
    p[3] = <uint8_t>(v >> 24)


cdef inline void _card_key(uint8_t* key, uint32_t series, uint32_t serial) noexcept nogil:
    """radcore.records.card_key: u32 BE series + u32 BE serial."""
    key[0] = series >> 24; key[1] = series >> 16; key[2] = series >> 8; key[3] = series
    key[4] = serial >> 24; key[5] = serial >> 16; key[6] = serial >> 8; key[7] = serial


cdef bint _card_number(const uint8_t* p, Py_ssize_t n, uint32_t* series, uint32_t* serial) noexcept nogil:
    """`radcore.records.parse_card_number` for the plain spellings only: `45-001122333` and
    `45001122333`. Anything else (spaces, other digits) is left to the reference."""
    cdef Py_ssize_t dash = -1, i
    cdef uint64_t head = 0, tail = 0
    for i in range(n):
        if p[i] == 45:  # "-"
            if dash >= 0:
                return False
            dash = i
        elif p[i] < 48 or p[i] > 57:
            return False
    if dash >= 0:
        if dash < 1 or dash > 5 or n - dash - 1 != 9:
            return False
    elif n < 10 or n > 14:
        return False
    cdef Py_ssize_t split = dash if dash >= 0 else n - 9
    for i in range(split):
        head = head * 10 + (p[i] - 48)
    for i in range(n - 9, n):
        tail = tail * 10 + (p[i] - 48)
    if head < 1 or head > MAX_SERIES or tail > MAX_SERIAL:
        return False
    series[0] = <uint32_t>head
    serial[0] = <uint32_t>tail
    return True
