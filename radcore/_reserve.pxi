# Number authorization in C: the second stage of a call (card number + PIN + dialled number) of an
# activated card, whose reservation must be written. Included into radcore/_acctlane.pyx, because it
# shares the accounting lane's write transaction: `WriteLane` is the accounting lane plus this.
#
# `radcore.prepaid.CardAuthenticator.authorize` (with `_reserve`) is the reference. The lane answers only
# a new call of an activated card with the right PIN, a dialled number that rates, a call identifier
# (h323-conf-id or Acct-Session-Id), room under the series' concurrency limit and money for more than the
# grace period; everything else (rejects, activation, re-authorization of the same call, PIN-only and
# redirect-number profiles, CHAP, Proxy-State, unusual spellings) is declined before anything is written.
# tests/test_acctlane.py compares the replies and the store with the reference's over generated calls.

from radcore._fastpath cimport _unhide

include "_sha256.pxi"

from radcore import dictionary as d
from radcore import replies
from radcore.fastpath import encode_attributes
from radcore.records import SeriesStatus

cdef enum:
    MA_VALUE = 22               # where a reply's Message-Authenticator value starts (first attribute)
    REPLY_ATTRS = 38            # where its other attributes start
    # What a piece of a reply plan (see `_reply_plan`) holds
    FIXED = 0                   # attribute bytes as they are
    AMOUNT = 1                  # h323-credit-amount: the VSA header, then prefix + amount
    CREDIT_TIME = 2             # h323-credit-time: the VSA header, then prefix + seconds
    SESSION_TIMEOUT = 3         # Session-Timeout (27): seconds as a 32-bit integer


def _reply_plan(profile, currency, language, route):
    """`radcore.replies.accept` for one profile and series as (kind, bytes) pieces around the values
    that change per call. The pieces come from `accept` itself: it is run twice with different
    amounts and times, and the attributes that differ are the ones written per call."""
    one = replies.accept(profile, available=10_000, currency=currency, credit_time=1, language=language,
                         route=route)
    two = replies.accept(profile, available=20_000, currency=currency, credit_time=2, language=language,
                         route=route)
    plan = []
    for (key, value), (_, other) in zip(one, two, strict=True):
        if value == other:
            fixed = encode_attributes([(key, value)])
            if plan and plan[len(plan) - 1][0] == FIXED:  # (no negative indexes: wraparound=False)
                plan[len(plan) - 1] = (FIXED, plan[len(plan) - 1][1] + fixed)
            else:
                plan.append((FIXED, fixed))
        elif key == d.SESSION_TIMEOUT and value == (1).to_bytes(4, "big"):
            plan.append((SESSION_TIMEOUT, b""))
        elif key == d.vsa_key(profile.vendor, d.H323_CREDIT_AMOUNT) and value.endswith(b"0.01"):
            plan.append((AMOUNT, value[:len(value) - 4]))
        elif key == d.vsa_key(profile.vendor, d.H323_CREDIT_TIME) and value.endswith(b"1"):
            plan.append((CREDIT_TIME, value[:len(value) - 1]))
        else:
            raise AssertionError(f"radcore.replies.accept varies attribute {key} in a way the lane cannot write")
    return tuple(plan)


cdef Py_ssize_t _decimal(uint8_t* out, uint64_t v) noexcept nogil:
    cdef uint8_t rev[24]
    cdef Py_ssize_t n = 0, i
    while True:
        rev[n] = <uint8_t>(48 + v % 10)
        n += 1
        v //= 10
        if v == 0:
            break
    for i in range(n):
        out[i] = rev[n - 1 - i]
    return n


cdef Py_ssize_t _vsa_text(uint8_t* p, uint32_t vendor, uint8_t vtype, bytes prefix, const uint8_t* text,
                          Py_ssize_t text_n):
    """One h323 VSA: Vendor-Specific header, vendor, vendor type, then prefix + text."""
    cdef Py_ssize_t value_n = PyBytes_GET_SIZE(prefix) + text_n
    p[0] = 26
    p[1] = <uint8_t>(value_n + 8)
    p[2] = <uint8_t>(vendor >> 24); p[3] = <uint8_t>(vendor >> 16); p[4] = <uint8_t>(vendor >> 8)
    p[5] = <uint8_t>vendor
    p[6] = vtype
    p[7] = <uint8_t>(value_n + 2)
    memcpy(p + 8, PyBytes_AS_STRING(prefix), PyBytes_GET_SIZE(prefix))
    memcpy(p + 8 + PyBytes_GET_SIZE(prefix), text, text_n)
    return value_n + 8


cdef bytes _write_plan(tuple plan, uint32_t vendor, int64_t available, int64_t seconds):
    """The attributes of `plan` with this call's amount and seconds (`replies.format_amount` of a
    positive amount: units, ".", two digits, rounded down)."""
    cdef uint8_t out[MAX_PACKET]
    cdef uint8_t text[32]
    cdef Py_ssize_t pos = 0, n
    cdef int64_t cents = available // 10000
    cdef uint64_t timeout = <uint64_t>seconds if seconds <= 0xFFFFFFFF else 0xFFFFFFFF
    cdef int kind
    cdef bytes piece
    for kind, piece in plan:
        if pos + PyBytes_GET_SIZE(piece) + 40 > MAX_PACKET - REPLY_ATTRS:
            return None
        if kind == FIXED:
            memcpy(out + pos, PyBytes_AS_STRING(piece), PyBytes_GET_SIZE(piece))
            pos += PyBytes_GET_SIZE(piece)
        elif kind == AMOUNT:
            n = _decimal(text, <uint64_t>(cents // 100))
            text[n] = 46  # "."
            text[n + 1] = <uint8_t>(48 + (cents % 100) // 10)
            text[n + 2] = <uint8_t>(48 + cents % 10)
            pos += _vsa_text(out + pos, vendor, 101, piece, text, n + 3)
        elif kind == CREDIT_TIME:
            n = _decimal(text, <uint64_t>seconds)
            pos += _vsa_text(out + pos, vendor, 102, piece, text, n)
        else:
            out[pos] = 27
            out[pos + 1] = 6
            out[pos + 2] = <uint8_t>(timeout >> 24); out[pos + 3] = <uint8_t>(timeout >> 16)
            out[pos + 4] = <uint8_t>(timeout >> 8); out[pos + 5] = <uint8_t>timeout
            pos += 6
    return PyBytes_FromStringAndSize(<const char*>out, pos)


# The fields of an Access-Request a number authorization reads (radcore.packet.Request's).
cdef struct Access:
    Span user
    Span hidden
    Span called
    Span session_id
    Span conf_id
    Span nas_identifier
    const uint8_t* nas_ip
    Py_ssize_t ma_offset        # where the Message-Authenticator value starts, -1 without one


cdef bint _parse_access(const uint8_t* pkt, Py_ssize_t length, Access* a) noexcept nogil:
    """Walk the attributes as radcore.packet.parse_request does; False for what the lane leaves alone."""
    cdef Py_ssize_t pos = HEADER, alen, vlen
    cdef const uint8_t* v
    cdef int atype
    a.user.n = a.hidden.n = a.called.n = a.session_id.n = a.conf_id.n = a.nas_identifier.n = 0
    a.user.p = a.hidden.p = a.called.p = a.session_id.p = a.conf_id.p = a.nas_identifier.p = NULL
    a.nas_ip = NULL
    a.ma_offset = -1
    while pos < length:
        if pos + 2 > length:
            return False
        atype = pkt[pos]
        alen = pkt[pos + 1]
        if alen < 2 or pos + alen > length:
            return False
        v = pkt + pos + 2
        vlen = alen - 2
        if atype == 1:
            a.user.p = v; a.user.n = vlen
        elif atype == 2:
            a.hidden.p = v; a.hidden.n = vlen
        elif atype == 80:
            if vlen != 16 or a.ma_offset >= 0:
                return False
            a.ma_offset = pos + 2
        elif atype == 3 or atype == 60 or atype == 33:
            return False  # CHAP, CHAP-Challenge, Proxy-State
        elif atype == 30:
            a.called.p = v; a.called.n = vlen
        elif atype == 44:
            a.session_id.p = v; a.session_id.n = vlen
        elif atype == 32:
            a.nas_identifier.p = v; a.nas_identifier.n = vlen
        elif atype == 4:
            if vlen != 4:
                return False
            a.nas_ip = v
        elif atype == 40 or atype == 46 or atype == 41 or atype == 49 or atype == 55:
            if vlen != 4:
                return False
        elif atype == 26 and not _h323_vsa(v, vlen, &a.conf_id):
            return False
        pos += alen
    return (_ascii(a.user) and _ascii(a.called) and _ascii(a.session_id) and _ascii(a.conf_id)
            and _ascii(a.nas_identifier))


cdef class WriteLane(AccountingLane):
    """The worker's write lane: accounting (`AccountingLane`) and number authorization, one transaction."""

    cdef HmacSha256 pepper          # the PIN digest's HMAC key (radcore.keys.KeyRing.pin_pepper)
    cdef int64_t max_call           # max_call_seconds: the longest call granted
    cdef int64_t hold_grace         # reservation_grace_seconds
    cdef dict series                # series number -> (currency, language, max calls, route) or None
    cdef dict plans                 # (_Client, series number) -> reply plan (see _reply_plan)

    def __init__(self, store, settlement, lookups, clock):
        AccountingLane.__init__(self, store, settlement, lookups, clock)
        cdef bytes pepper = settlement.keyring.pin_pepper
        _hmac_sha256_key(&self.pepper, <const uint8_t*>PyBytes_AS_STRING(pepper), PyBytes_GET_SIZE(pepper))
        self.max_call = settlement.config.max_call_seconds
        self.hold_grace = settlement.config.reservation_grace_seconds
        self.series = {}
        self.plans = {}

    cdef int begin(self) except -1:
        cdef long long version = self.version
        AccountingLane.begin(self)
        if self.version != version:
            self.series.clear()
            self.plans.clear()
        return 0

    cdef object _series(self, uint32_t number):
        try:
            return self.series[number]
        except KeyError:
            pass
        s = self.lookups.get_series(self.txn, number)
        found = None
        if s is not None and s.complete and s.status == SeriesStatus.ACTIVE and s.max_concurrent_calls >= 0:
            found = (s.currency, s.language, s.max_concurrent_calls, self.lookups.route(self.txn, s.routing_plan))
        self.series[number] = found
        return found

    cdef object authorize(self, const uint8_t* pkt, Py_ssize_t n, object client, object ip):
        self.inert = False
        cdef _Client c = self._client(client)
        cdef Py_ssize_t length = (<Py_ssize_t>pkt[2] << 8) | pkt[3]
        if pkt[0] != 1 or length < HEADER or length > MAX_PACKET or length > n:
            return None
        cdef Access a
        if not c.eligible or not c.plain_number or not _parse_access(pkt, length, &a):
            return None
        cdef uint8_t mac[16]
        if a.ma_offset < 0:
            if c.require_ma:
                self.inert = True  # dropped by the reference
                return None
        else:
            _packet_hmac(mac, pkt, length, pkt + 4, a.ma_offset, c.secret)
            if not _equal(mac, pkt + a.ma_offset, 16):
                self.inert = True
                return None
        if a.called.n == 0 or a.hidden.n == 0 or a.hidden.n % 16 or a.hidden.n > 128:
            return None
        cdef Span cid = a.conf_id if a.conf_id.n else a.session_id
        if cid.n == 0:
            return None  # filed by card and number: the reference's fallback key
        cdef uint32_t series_no, serial
        if not _card_number(a.user.p, a.user.n, &series_no, &serial):
            return None
        cdef bytes pin = _unhide(a.hidden.p, a.hidden.n, c.secret, pkt + 4, 16)
        cdef const uint8_t* pp = <const uint8_t*>PyBytes_AS_STRING(pin)
        cdef Py_ssize_t i
        if PyBytes_GET_SIZE(pin) == 0:
            return None
        for i in range(PyBytes_GET_SIZE(pin)):
            if pp[i] >= 0x80:
                return None

        # The card: activated, unlocked, unexpired, with money, and this PIN.
        cdef uint8_t key[8]
        _card_key(key, series_no, serial)
        cdef bytes ckey = PyBytes_FromStringAndSize(<const char*>key, 8)
        cdef bytes card_raw = self._get(ckey, None, self.cards_db)
        if card_raw is None or PyBytes_GET_SIZE(card_raw) < CARD_SIZE:
            return None
        cdef const uint8_t* cr = <const uint8_t*>PyBytes_AS_STRING(card_raw)
        if cr[OFF_STATUS] != STATUS_ACTIVATED or _le64(cr + OFF_LOCKED_UNTIL) > self.now:
            return None
        cdef int64_t expires = _le64(cr + OFF_EXPIRES_AT)
        if expires and self.now >= expires:
            return None
        cdef int64_t balance = _le64(cr + OFF_BALANCE), reserved = _le64(cr + OFF_RESERVED)
        cdef int64_t available = balance - reserved
        if available <= 0:
            return None
        series = self._series(series_no)
        if series is None:
            return None
        cdef uint8_t digest[32]
        _hmac_sha256(&self.pepper, pp, PyBytes_GET_SIZE(pin), digest)
        if not _equal(digest, cr + OFF_PIN_DIGEST, 32):
            return None  # a wrong PIN is counted by the reference
        cdef uint16_t open_calls = cr[OFF_OPEN_CALLS] | (<uint16_t>cr[OFF_OPEN_CALLS + 1] << 8)
        if open_calls >= <long long>series[2] or open_calls == 0xFFFF:
            return None  # account in use

        # The rate, and a new call (a re-authorization replaces its hold: the reference's job).
        rate = self._rate(series_no, c, a.called)
        if rate is None:
            return None
        cdef bytes nas = self._nas(a.nas_identifier, a.nas_ip, ip)
        if nas is None or PyBytes_GET_SIZE(nas) + 1 + cid.n > MAX_KEY:
            return None
        cdef bytes skey = nas + b"\0" + PyBytes_FromStringAndSize(<const char*>cid.p, cid.n)
        if (self._get(skey, None, self.sessions_db) is not None
                or self._get(TOMBSTONE + skey, None, self.sessions_db) is not None):
            return None  # a re-authorization, or of a call already stopped: the reference's job

        # CardAuthenticator._reserve: the longest affordable call, and its cost held.
        cdef Sess s
        _rate_into(&s, rate)
        cdef int64_t seconds = <int64_t>_max_duration(&s, available, self.max_call)
        if seconds <= s.grace and _cost(&s, <int128>s.grace + 1) > available:
            return None  # insufficient balance
        cdef int128 hold = _cost(&s, seconds)
        if hold > available:
            return None
        memcpy(s.card_key, key, 8)
        s.state = SESSION_AUTHORIZED
        s.reserved = <int64_t>hold
        s.charged = 0
        s.opened_at = self.now
        s.deadline = self.now + seconds + self.hold_grace
        s.last_session_time = 0
        s.s[S_SESSION_ID] = a.session_id
        s.s[S_CONF_ID] = a.conf_id
        s.s[S_NAS].p = <const uint8_t*>PyBytes_AS_STRING(nas)
        s.s[S_NAS].n = PyBytes_GET_SIZE(nas)

        memo = (c, series_no)
        plan = self.plans.get(memo)
        if plan is None:
            profile = c.client.profile
            plan = _reply_plan(profile, series[0], series[1], series[3])
            if len(self.plans) > 65536:
                self.plans.clear()
            self.plans[memo] = plan
        attrs = _write_plan(plan, c.vendor, available, seconds)
        if attrs is None:
            return None  # an operator's very long language tag or route: let the reference refuse it

        cdef bytes card = PyBytes_FromStringAndSize(<const char*>cr, PyBytes_GET_SIZE(card_raw))
        cdef uint8_t* cp = <uint8_t*>PyBytes_AS_STRING(card)
        _put_le64(cp + OFF_RESERVED, reserved + <int64_t>hold)
        _put_le64(cp + OFF_LAST_USE, self.now)
        cp[OFF_FAILED_PINS] = 0
        open_calls += 1
        cp[OFF_OPEN_CALLS] = <uint8_t>(open_calls & 0xFF)
        cp[OFF_OPEN_CALLS + 1] = <uint8_t>(open_calls >> 8)
        self._put_session(skey, None, False, &s)
        self._put(ckey, card, True, self.cards_db, DB_CARDS)
        self.answered += 1
        return _signed_accept(pkt, attrs, c.secret)


cdef bytes _signed_accept(const uint8_t* req, bytes attrs, bytes secret):
    """Access-Accept: Message-Authenticator first, then `attrs`, as `_fastpath._sign` writes it."""
    cdef Py_ssize_t n = REPLY_ATTRS + PyBytes_GET_SIZE(attrs)
    cdef bytes out = PyBytes_FromStringAndSize(NULL, n)
    cdef uint8_t* p = <uint8_t*>PyBytes_AS_STRING(out)
    p[0] = 2
    p[1] = req[1]
    p[2] = <uint8_t>(n >> 8)
    p[3] = <uint8_t>n
    memcpy(p + 4, req + 4, 16)
    p[HEADER] = 80
    p[HEADER + 1] = 18
    memset(p + MA_VALUE, 0, 16)
    memcpy(p + REPLY_ATTRS, PyBytes_AS_STRING(attrs), PyBytes_GET_SIZE(attrs))
    cdef uint8_t mac[16]
    _packet_hmac(mac, p, n, req + 4, MA_VALUE, secret)
    memcpy(p + MA_VALUE, mac, 16)
    _packet_md5(mac, p, n, req + 4, 16, secret)
    memcpy(p + 4, mac, 16)
    return out
