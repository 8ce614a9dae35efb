# Sessions and CDRs as C reads and writes them, and the rating arithmetic they are charged with: shared
# by the write lanes (radcore/_acctlane.pyx: accounting and number authorization). The layouts are
# radcore.records' SESSION_FORMAT and CDR_FORMAT, the arithmetic radcore.rating's cost, billed_seconds
# and max_duration, in 128-bit integers so no product of micro-units can overflow.

cdef extern from *:
    ctypedef long long int128 "__int128"

cdef enum:
    STRINGS = 5                 # a session's strings: prefix, called, acct_session_id, conf_id, nas
    S_PREFIX = 0
    S_CALLED = 1
    S_SESSION_ID = 2
    S_CONF_ID = 3
    S_NAS = 4
    PPM = 1000000

cdef int64_t INT64_MAX = 0x7FFFFFFFFFFFFFFF


cdef struct Span:
    const uint8_t* p
    Py_ssize_t n


# A session's fixed part (radcore.records.SESSION_FORMAT) and its strings.
cdef struct Sess:
    uint8_t card_key[8]
    int64_t reserved, charged, opened_at, deadline, price_per_minute, connection_fee
    uint32_t last_session_time, min_volume, interval, grace, tax_ppm
    uint8_t state
    Span s[STRINGS]


cdef inline bint _ascii(Span s) noexcept nogil:
    """The reference decodes text as UTF-8 with replacement; plain ASCII decodes the same either way."""
    cdef Py_ssize_t i
    for i in range(s.n):
        if s.p[i] >= 0x80:
            return False
    return True


cdef inline uint32_t _be32(const uint8_t* p) noexcept nogil:
    return (<uint32_t>p[0] << 24) | (<uint32_t>p[1] << 16) | (<uint32_t>p[2] << 8) | p[3]


cdef bint _unpack_session(bytes raw, Sess* s) noexcept:
    """radcore.records.Session.unpack over the bytes LMDB returned; False if it would not decode."""
    cdef const uint8_t* p = <const uint8_t*>PyBytes_AS_STRING(raw)
    cdef Py_ssize_t n = PyBytes_GET_SIZE(raw), pos = SESSION_SIZE, ln
    cdef int j
    if n < SESSION_SIZE:
        return False
    memcpy(s.card_key, p, 8)
    s.reserved = _le64(p + 8)
    s.charged = _le64(p + 16)
    s.opened_at = _le64(p + 24)
    s.deadline = _le64(p + 32)
    s.price_per_minute = _le64(p + 40)
    s.connection_fee = _le64(p + 48)
    s.last_session_time = _le32(p + 56)
    s.min_volume = _le32(p + 60)
    s.interval = _le32(p + 64)
    s.grace = _le32(p + 68)
    s.tax_ppm = _le32(p + 72)
    s.state = p[76]
    if s.state > SESSION_STOPPED:
        return False
    for j in range(STRINGS):
        if pos + 2 > n:
            return False
        ln = p[pos] | (<Py_ssize_t>p[pos + 1] << 8)
        pos += 2
        if pos + ln > n:
            return False
        s.s[j].p = p + pos
        s.s[j].n = ln
        if not _ascii(s.s[j]):
            return False
        pos += ln
    return True


cdef bytes _pack_session(Sess* s):
    cdef Py_ssize_t n = SESSION_SIZE, j
    for j in range(STRINGS):
        n += 2 + s.s[j].n
    cdef bytes out = PyBytes_FromStringAndSize(NULL, n)
    cdef uint8_t* p = <uint8_t*>PyBytes_AS_STRING(out)
    memcpy(p, s.card_key, 8)
    _put_le64(p + 8, s.reserved)
    _put_le64(p + 16, s.charged)
    _put_le64(p + 24, s.opened_at)
    _put_le64(p + 32, s.deadline)
    _put_le64(p + 40, s.price_per_minute)
    _put_le64(p + 48, s.connection_fee)
    _put_le32(p + 56, s.last_session_time)
    _put_le32(p + 60, s.min_volume)
    _put_le32(p + 64, s.interval)
    _put_le32(p + 68, s.grace)
    _put_le32(p + 72, s.tax_ppm)
    p[76] = s.state
    p[77] = p[78] = p[79] = 0
    cdef Py_ssize_t pos = SESSION_SIZE
    for j in range(STRINGS):
        pos = _put_string(p, pos, s.s[j])
    return out


cdef inline Py_ssize_t _put_string(uint8_t* p, Py_ssize_t pos, Span s) noexcept nogil:
    p[pos] = <uint8_t>(s.n & 0xFF)
    p[pos + 1] = <uint8_t>(s.n >> 8)
    if s.n:
        memcpy(p + pos + 2, s.p, s.n)
    return pos + 2 + s.n


cdef bytes _pack_cdr(Sess* s, int64_t stop_time, int64_t billed, uint32_t cause):
    """radcore.records.Cdr.pack: "<3q3I4x" then nas, acct_session_id, conf_id, called, prefix."""
    cdef Py_ssize_t n = 40 + 10 + s.s[S_NAS].n + s.s[S_SESSION_ID].n + s.s[S_CONF_ID].n \
        + s.s[S_CALLED].n + s.s[S_PREFIX].n
    cdef bytes out = PyBytes_FromStringAndSize(NULL, n)
    cdef uint8_t* p = <uint8_t*>PyBytes_AS_STRING(out)
    _put_le64(p, stop_time - s.last_session_time)
    _put_le64(p + 8, stop_time)
    _put_le64(p + 16, s.charged)
    _put_le32(p + 24, s.last_session_time)
    _put_le32(p + 28, <uint32_t>billed)
    _put_le32(p + 32, cause)
    p[36] = p[37] = p[38] = p[39] = 0
    cdef Py_ssize_t pos = 40
    pos = _put_string(p, pos, s.s[S_NAS])
    pos = _put_string(p, pos, s.s[S_SESSION_ID])
    pos = _put_string(p, pos, s.s[S_CONF_ID])
    pos = _put_string(p, pos, s.s[S_CALLED])
    _put_string(p, pos, s.s[S_PREFIX])
    return out


# --- rating: radcore.rating's billed_seconds, cost and max_duration in 128-bit integers ------------

cdef inline int128 _ceil_div(int128 a, int128 b) noexcept nogil:
    return (a + b - 1) // b  # a >= 0, b > 0 here


cdef inline int128 _with_tax(int128 base, int128 tax_ppm) noexcept nogil:
    return base + _ceil_div(base * tax_ppm, PPM)


cdef inline int128 _billed(Sess* s, int128 duration) noexcept nogil:
    if duration <= s.grace:
        return 0
    if duration <= s.min_volume:
        return s.min_volume
    return s.min_volume + _ceil_div(duration - s.min_volume, s.interval) * s.interval


cdef inline int128 _cost(Sess* s, int128 duration) noexcept nogil:
    if duration <= s.grace:
        return 0
    cdef int128 base = s.connection_fee + _ceil_div(_billed(s, duration) * s.price_per_minute, 60)
    return _with_tax(base, s.tax_ppm)


cdef int128 _max_duration(Sess* s, int128 available, int128 cap) noexcept nogil:
    """radcore.rating.max_duration over the session's rate: the longest call whose cost fits."""
    if available < 0:
        return 0
    cdef int128 free = s.grace if s.grace < cap else cap
    if s.price_per_minute == 0:
        return cap if _with_tax(s.connection_fee, s.tax_ppm) <= available else free
    cdef int128 max_base = available * PPM // (PPM + s.tax_ppm)
    while _with_tax(max_base + 1, s.tax_ppm) <= available:
        max_base += 1
    while max_base >= 0 and _with_tax(max_base, s.tax_ppm) > available:
        max_base -= 1
    cdef int128 budget = max_base - s.connection_fee
    if budget < 0:
        return free
    cdef int128 billed = 60 * budget // s.price_per_minute
    if billed < s.min_volume:
        return free
    cdef int128 grid = s.min_volume + (billed - s.min_volume) // s.interval * s.interval
    if grid < s.grace:
        grid = s.grace
    return grid if grid < cap else cap


cdef int _rate_into(Sess* s, tuple rate) except -1:
    """Copy a memoised rate tuple (see `_rate_tuple`) into the session's rate fields and its prefix
    and called strings, which point into the tuple's bytes: keep `rate` alive while `s` is used."""
    cdef bytes strings = rate[6]
    s.price_per_minute = rate[0]
    s.connection_fee = rate[1]
    s.min_volume = rate[2]
    s.interval = rate[3]
    s.grace = rate[4]
    s.tax_ppm = rate[5]
    s.s[S_PREFIX].p = <const uint8_t*>PyBytes_AS_STRING(strings)
    s.s[S_PREFIX].n = <Py_ssize_t>rate[7]
    s.s[S_CALLED].p = s.s[S_PREFIX].p + s.s[S_PREFIX].n
    s.s[S_CALLED].n = PyBytes_GET_SIZE(strings) - s.s[S_PREFIX].n
    return 0


def _rate_tuple(rate, tax_ppm, digits):
    """(price, connection fee, min volume, interval, grace, tax ppm, prefix + digits, len(prefix)), or
    None where the values do not fit the session's fields or the arithmetic's assumptions."""
    if rate is None or not (rate.price_per_minute >= 0 and rate.connection_fee >= 0 and rate.min_volume >= 0
                            and rate.grace >= 0 and rate.interval > 0 and 0 <= tax_ppm <= 0xFFFFFFFF
                            and rate.min_volume <= 0xFFFFFFFF and rate.interval <= 0xFFFFFFFF
                            and rate.grace <= 0xFFFFFFFF):
        return None
    prefix = rate.prefix.encode()
    return (rate.price_per_minute, rate.connection_fee, rate.min_volume, rate.interval, rate.grace,
            tax_ppm, prefix + digits.encode(), len(prefix))


def cost(price_per_minute, connection_fee, min_volume, interval, grace, tax_ppm, duration):
    """`radcore.rating.cost` as the lanes compute it (the tests check one against the other)."""
    cdef Sess s
    _rate_into(&s, (price_per_minute, connection_fee, min_volume, interval, grace, tax_ppm, b"", 0))
    return <int64_t>_cost(&s, <int128>duration)


def max_duration(price_per_minute, connection_fee, min_volume, interval, grace, tax_ppm, available, cap):
    """`radcore.rating.max_duration` as the write lane computes it."""
    cdef Sess s
    _rate_into(&s, (price_per_minute, connection_fee, min_volume, interval, grace, tax_ppm, b"", 0))
    return <int64_t>_max_duration(&s, <int128>(<int64_t>available), <int128>(<int64_t>cap))


cdef bytes _deadline_key(int64_t deadline, bytes skey):
    """radcore.store._deadline_key: u64 BE max(deadline, 0) + session key."""
    cdef uint8_t head[8]
    cdef uint64_t v = <uint64_t>(deadline if deadline > 0 else 0)
    cdef int i
    for i in range(8):
        head[7 - i] = <uint8_t>(v & 0xFF)
        v >>= 8
    return PyBytes_FromStringAndSize(<const char*>head, 8) + skey


cdef bytes _cdr_key(bytes ckey, int64_t stop_time, uint32_t seq):
    """radcore.records.cdr_key: card key + u64 BE stop time + u32 BE sequence number."""
    cdef uint8_t tail[12]
    cdef uint64_t t = <uint64_t>stop_time
    cdef int i
    for i in range(8):
        tail[7 - i] = <uint8_t>(t & 0xFF)
        t >>= 8
    tail[8] = <uint8_t>(seq >> 24); tail[9] = <uint8_t>(seq >> 16)
    tail[10] = <uint8_t>(seq >> 8); tail[11] = <uint8_t>seq
    return ckey + PyBytes_FromStringAndSize(<const char*>tail, 12)
