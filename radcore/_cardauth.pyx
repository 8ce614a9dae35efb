# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Card authentication answered in C: the prepaid engine's most frequent decision, with no Python objects.

Stage 1 of a call (card number + PIN, no dialled number) of an activated card with money on it changes
nothing in the store, so it is the one request a worker can answer straight from a read transaction.
`CardAuthLane` does exactly that inside the worker's C loop (`radcore._lane`): it walks the datagram,
verifies the Message-Authenticator, unhides the PIN, reads the card at its fixed offsets
(`radcore.records.CARD_OFFSETS`), checks the PIN digest, and writes the Access-Accept bytes.

It only ever answers the happy path, and declines (returns None) everything else, which then takes the
Python path (`radcore.handler.PrepaidHandler`, the reference): a wrong PIN (that must be counted), a
pending card (activated on first use), a locked, blocked, expired or empty card, a stopped series, a
dialled number (a reservation), CHAP, PIN-only profiles, Proxy-State, anything malformed or unusual in
how the card number is written. The reply is byte-for-byte what the Python path sends for the same
request (tests/test_lane.py checks that over generated traffic), because its attribute bytes come from
`radcore.replies.accept` itself, built once per client and series and cached until the control plane
bumps `config_version`.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from libc.stdint cimport int64_t, uint8_t, uint32_t
from libc.string cimport memcpy, memset

from radcore._fastpath cimport _equal, _packet_hmac, _packet_md5, _unhide
from radcore._lane cimport FastAnswer

include "_sha256.pxi"
include "_records.pxi"

from radcore import dictionary as d
from radcore import replies
from radcore.fastpath import encode_attributes
from radcore.records import SeriesStatus

cdef enum:
    HEADER = 20
    MA_VALUE = 22               # where a reply's Message-Authenticator value starts (first attribute)
    REPLY_ATTRS = 38            # where its other attributes start
    MAX_REPLY = 4096

cdef bytes _AMOUNT_KEY_NAME = b"h323-credit-amount="


cdef Py_ssize_t _amount(char* out, long long cents) noexcept nogil:
    """`radcore.replies.format_amount` for a positive amount in cents: units, ".", two digits."""
    cdef char rev[24]
    cdef Py_ssize_t n = 0, i
    cdef long long units = cents // 100
    while True:
        rev[n] = <char>(48 + units % 10)
        n += 1
        units //= 10
        if units == 0:
            break
    for i in range(n):
        out[i] = rev[n - 1 - i]
    out[n] = 46  # "."
    out[n + 1] = <char>(48 + (cents % 100) // 10)
    out[n + 2] = <char>(48 + cents % 10)
    return n + 3


def plain_card_number(data):
    """(series, serial) as the lane reads `data`, or None where it leaves the spelling to the reference."""
    cdef bytes raw = bytes(data)
    cdef uint32_t series, serial
    if _card_number(<const uint8_t*>PyBytes_AS_STRING(raw), PyBytes_GET_SIZE(raw), &series, &serial):
        return series, serial
    return None


def amount_text(long long micro):
    """The h323-credit-amount text the lane writes for a positive amount of micro-units."""
    cdef char out[32]
    if micro <= 0:
        raise ValueError("the lane answers only positive amounts")
    return PyBytes_FromStringAndSize(out, _amount(out, micro // 10000)).decode()


cdef class _Client:
    """What the lane needs of one radcore.config.Client, and its reply pieces per series."""
    cdef object client              # kept alive: the lane's cache is keyed by id(client)
    cdef bytes secret
    cdef bint require_ma
    cdef bint eligible              # PIN-only profiles identify the card by PIN: not this lane
    cdef bint number_in_redirect    # the profile reads the dialled number from h323-redirect-number
    cdef dict pieces                # series number -> _Reply


cdef class _Reply:
    """An Access-Accept's attributes around the one value that changes per card, the credit amount."""
    cdef bytes head                 # attributes before h323-credit-amount (h323-return-code)
    cdef bytes tail                 # attributes after it (currency, billing model, language)
    cdef uint32_t vendor            # 0: the profile sends no VSAs, so no amount either
    cdef bytes amount_prefix        # b"h323-credit-amount=" for profiles that prefix values


cdef class CardAuthLane(FastAnswer):
    """Plugs into `radcore._lane.Lane.serve`; one per worker, owned by its PrepaidHandler."""

    cdef object store
    cdef object cards_db
    cdef object lookups             # radcore.prepaid.Lookups, shared with the handler
    cdef object clock               # the handler's clock: UTC epoch seconds
    cdef HmacSha256 pepper          # the PIN digest's HMAC key, ipad/opad states prepared once
    cdef object txn
    cdef object held                # the write lane's HeldTransaction, read through while it is open
    cdef bint borrowed              # txn is held.txn, not a read transaction of our own
    cdef long long now
    cdef long long version
    cdef dict series                # series number -> (currency, language), or None: not for the lane
    cdef dict clients               # id(Client) -> _Client
    cdef public long long answered    # requests this lane answered (the tests' view; /metrics counts per worker)

    def __init__(self, store, keyring, lookups, clock):
        self.store = store
        self.clock = clock
        self.cards_db = store.cards
        self.lookups = lookups
        cdef bytes pepper = keyring.pin_pepper
        _hmac_sha256_key(&self.pepper, <const uint8_t*>PyBytes_AS_STRING(pepper), PyBytes_GET_SIZE(pepper))
        self.txn = None
        self.held = None
        self.version = -2
        self.series = {}
        self.clients = {}
        self.answered = 0

    def read_through(self, held):
        """Read through `held.txn` (the worker's write lane, radcore._acctlane) whenever it is open:
        under a backlog that transaction holds batches the journal has made durable and the store
        has not committed yet, and a card authentication must see their debits."""
        self.held = held

    cdef int begin(self) except -1:
        self.now = self.clock()
        held = self.held.txn if self.held is not None else None
        self.borrowed = held is not None
        self.txn = held if self.borrowed else self.store.begin()
        self.lookups.refresh(self.txn)
        if self.lookups.version != self.version:
            self.version = self.lookups.version
            self.series.clear()
            self.clients.clear()
        return 0

    cdef int end(self) except -1:
        txn, self.txn = self.txn, None
        if txn is not None and not self.borrowed:
            txn.abort()
        return 0

    def pin_digest(self, pin):
        """HMAC-SHA256(pepper, pin) as this lane computes it (checked against KeyRing.pin_digest)."""
        cdef bytes raw = bytes(pin)
        cdef uint8_t out[32]
        _hmac_sha256(&self.pepper, <const uint8_t*>PyBytes_AS_STRING(raw), PyBytes_GET_SIZE(raw), out)
        return PyBytes_FromStringAndSize(<const char*>out, 32)

    def decide(self, data, client):
        """One datagram through the lane in its own read transaction (tests and the cross-check)."""
        cdef bytes pkt = bytes(data)
        self.begin()
        try:
            return self.answer(<const uint8_t*>PyBytes_AS_STRING(pkt), PyBytes_GET_SIZE(pkt), client)
        finally:
            self.end()

    cdef _Client _client(self, object client):
        cdef _Client c = self.clients.get(id(client))
        if c is not None and c.client is client:
            return c
        c = _Client.__new__(_Client)
        c.client = client
        c.secret = bytes(client.secret)
        c.require_ma = bool(client.require_message_authenticator)
        profile = client.profile
        c.eligible = not profile.pin_only
        c.number_in_redirect = profile.number_attribute == "h323-redirect-number"
        c.pieces = {}
        if len(self.clients) > 4096:
            self.clients.clear()
        self.clients[id(client)] = c
        return c

    cdef object _series(self, uint32_t number):
        cdef object found
        try:
            return self.series[number]
        except KeyError:
            pass
        s = self.lookups.get_series(self.txn, number)
        found = None
        if s is not None and s.complete and s.status == SeriesStatus.ACTIVE:
            found = (s.currency, s.language)
        self.series[number] = found
        return found

    cdef _Reply _reply(self, _Client c, uint32_t number, tuple series):
        cdef _Reply r = c.pieces.get(number)
        if r is not None:
            return r
        profile = c.client.profile
        attrs = replies.accept(profile, available=1, currency=series[0], language=series[1])
        r = _Reply.__new__(_Reply)
        r.vendor = profile.vendor
        if profile.vendor:
            amount_key = d.vsa_key(profile.vendor, d.H323_CREDIT_AMOUNT)
            if len(attrs) < 2 or attrs[1][0] != amount_key:
                raise AssertionError("radcore.replies.accept no longer puts the credit amount second")
            r.head = encode_attributes(attrs[:1])
            r.tail = encode_attributes(attrs[2:])
            r.amount_prefix = _AMOUNT_KEY_NAME if profile.prefixed_values else b""
        else:
            r.head = encode_attributes(attrs)
            r.tail = b""
            r.amount_prefix = b""
        c.pieces[number] = r
        return r

    cdef object answer(self, const uint8_t* pkt, Py_ssize_t n, object client):
        cdef object wire = self._answer(pkt, n, client)
        if wire is not None:
            self.answered += 1
        return wire

    cdef object _answer(self, const uint8_t* pkt, Py_ssize_t n, object client):
        cdef _Reply reply
        cdef _Client c = self._client(client)
        if not c.eligible:
            return None
        cdef Py_ssize_t length = (<Py_ssize_t>pkt[2] << 8) | pkt[3]
        if pkt[0] != 1 or length < HEADER or length > MAX_REPLY or length > n:
            return None

        # Walk the attributes; decline anything the reference would treat specially.
        cdef const uint8_t* user = NULL
        cdef const uint8_t* hidden = NULL
        cdef Py_ssize_t user_n = 0, hidden_n = 0, ma_offset = -1, pos = HEADER, alen, sub, vlen
        cdef int atype
        cdef uint32_t vendor
        while pos < length:
            if pos + 2 > length:
                return None
            atype = pkt[pos]
            alen = pkt[pos + 1]
            if alen < 2 or pos + alen > length:
                return None
            vlen = alen - 2
            if atype == 1:
                user = pkt + pos + 2
                user_n = vlen
            elif atype == 2:
                hidden = pkt + pos + 2
                hidden_n = vlen
            elif atype == 80:
                if vlen != 16 or ma_offset >= 0:
                    return None
                ma_offset = pos + 2
            elif atype == 3 or atype == 60 or atype == 33:
                return None  # CHAP, CHAP-Challenge, Proxy-State
            elif atype == 30:
                if vlen:
                    return None  # a dialled number: number authorization
            elif atype == 4 or atype == 40 or atype == 41 or atype == 46 or atype == 49 or atype == 55:
                if vlen != 4:
                    return None
            elif atype == 26 and c.number_in_redirect and vlen > 4:
                vendor = ((<uint32_t>pkt[pos + 2] << 24) | (<uint32_t>pkt[pos + 3] << 16)
                          | (<uint32_t>pkt[pos + 4] << 8) | pkt[pos + 5])
                if vendor == 9 or vendor == 6618:
                    sub = pos + 6
                    while sub + 2 <= pos + alen:
                        if pkt[sub] == 106:
                            return None  # h323-redirect-number: the dialled number
                        if pkt[sub + 1] < 2:
                            break
                        sub += pkt[sub + 1]
            pos += alen

        cdef uint8_t mac[16]
        if ma_offset < 0:
            if c.require_ma:
                return None
        else:
            _packet_hmac(mac, pkt, length, pkt + 4, ma_offset, c.secret)
            if not _equal(mac, pkt + ma_offset, 16):
                return None
        if hidden == NULL or hidden_n == 0 or hidden_n % 16 or hidden_n > 128 or user == NULL:
            return None

        cdef uint32_t series_no, serial
        if not _card_number(user, user_n, &series_no, &serial):
            return None
        cdef bytes pin = _unhide(hidden, hidden_n, c.secret, pkt + 4, 16)
        cdef const uint8_t* pp = <const uint8_t*>PyBytes_AS_STRING(pin)
        cdef Py_ssize_t i
        if PyBytes_GET_SIZE(pin) == 0:
            return None
        for i in range(PyBytes_GET_SIZE(pin)):
            if pp[i] >= 0x80:
                return None  # the reference decodes the PIN as UTF-8 with replacement

        cdef uint8_t key[8]
        _card_key(key, series_no, serial)
        raw = self.txn.get(PyBytes_FromStringAndSize(<const char*>key, 8), None, self.cards_db)
        if raw is None or PyBytes_GET_SIZE(raw) < CARD_SIZE:
            return None
        cdef const uint8_t* card = <const uint8_t*>PyBytes_AS_STRING(raw)
        if card[OFF_STATUS] != STATUS_ACTIVATED or card[OFF_FAILED_PINS] != 0:
            return None
        if _le64(card + OFF_LOCKED_UNTIL) > self.now:
            return None
        cdef int64_t expires = _le64(card + OFF_EXPIRES_AT)
        if expires and self.now >= expires:
            return None
        cdef int64_t available = _le64(card + OFF_BALANCE) - _le64(card + OFF_RESERVED)
        if available <= 0:
            return None
        series = self._series(series_no)
        if series is None:
            return None
        cdef uint8_t digest[32]
        _hmac_sha256(&self.pepper, pp, PyBytes_GET_SIZE(pin), digest)
        if not _equal(digest, card + OFF_PIN_DIGEST, 32):
            return None
        reply = self._reply(c, series_no, series)
        if REPLY_ATTRS + PyBytes_GET_SIZE(reply.head) + PyBytes_GET_SIZE(reply.tail) + 300 > MAX_REPLY:
            return None  # an operator's very long language tag: let the reference encode (or refuse) it
        return self._accept(pkt, reply, available, c.secret)

    cdef bytes _accept(self, const uint8_t* req, _Reply r, int64_t available, bytes secret):
        """Access-Accept: Message-Authenticator first, then the attributes, as `_fastpath._sign`."""
        cdef uint8_t out[MAX_REPLY]
        cdef char amount[48]
        cdef Py_ssize_t pos = REPLY_ATTRS, head_n = PyBytes_GET_SIZE(r.head), tail_n = PyBytes_GET_SIZE(r.tail)
        cdef Py_ssize_t prefix_n = PyBytes_GET_SIZE(r.amount_prefix), amount_n, value_n
        cdef long long cents = available // 10000
        memcpy(out + pos, PyBytes_AS_STRING(r.head), head_n)
        pos += head_n
        if r.vendor:
            amount_n = _amount(amount, cents)
            value_n = prefix_n + amount_n
            out[pos] = 26
            out[pos + 1] = <uint8_t>(value_n + 8)
            out[pos + 2] = <uint8_t>(r.vendor >> 24)
            out[pos + 3] = <uint8_t>(r.vendor >> 16)
            out[pos + 4] = <uint8_t>(r.vendor >> 8)
            out[pos + 5] = <uint8_t>r.vendor
            out[pos + 6] = 101  # h323-credit-amount
            out[pos + 7] = <uint8_t>(value_n + 2)
            memcpy(out + pos + 8, PyBytes_AS_STRING(r.amount_prefix), prefix_n)
            memcpy(out + pos + 8 + prefix_n, amount, amount_n)
            pos += value_n + 8
        memcpy(out + pos, PyBytes_AS_STRING(r.tail), tail_n)
        pos += tail_n
        out[0] = 2  # Access-Accept
        out[1] = req[1]
        out[2] = <uint8_t>(pos >> 8)
        out[3] = <uint8_t>pos
        memcpy(out + 4, req + 4, 16)
        out[HEADER] = 80
        out[HEADER + 1] = 18
        memset(out + MA_VALUE, 0, 16)
        cdef uint8_t mac[16]
        _packet_hmac(mac, out, pos, req + 4, MA_VALUE, secret)
        memcpy(out + MA_VALUE, mac, 16)
        _packet_md5(mac, out, pos, req + 4, 16, secret)
        memcpy(out + 4, mac, 16)
        return PyBytes_FromStringAndSize(<const char*>out, pos)
