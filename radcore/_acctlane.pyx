# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Accounting settled in C: Start, Interim-Update and Stop of ordinary calls, with no Python objects per packet.

`radcore.settlement.Settlement` is the reference; this lane is the same arithmetic over the same
record layouts (`radcore.records`: the card, session and CDR structs), run inside the worker's C loop
(`radcore._lane.Lane.serve`) in a write transaction that is durable before any reply leaves: committed
at the end of the batch or, while more requests are already waiting, kept open for the next batch
with this batch's puts and deletes appended to the write-ahead journal (`radcore.journal`) and
flushed; it commits (a checkpoint) within `server.checkpoint_ms`, once the backlog is gone, at the
end of a batch during which another writer started waiting for the lock, or as soon as anything else
in the process wants to write. What it answers:

- Start of a call authorized earlier (the session exists): the session becomes `started`.
- Start, Interim-Update or Stop of a call nobody authorized (a Stop-only NAS, or auth answered
  elsewhere), of a card in a plain spelling: the call is rated now, as the reference does, and opened.
- Interim-Update and Stop: charge = cost(highest Acct-Session-Time) - already charged, drawn from the
  reservation and the balance; a Stop releases the rest, closes the session and writes the CDR.

It declines (returns None, and the request takes the Python path after this batch's commit) whatever
the reference does something else with or logs: Accounting-On/Off, a call with no identifier, an unknown
card, an authorization filed without a call id, an unrated number, a call that overruns its balance,
a longer report after a Stop (its CDR is amended), a Proxy-State, text that is not plain ASCII,
anything malformed. A Message-Authenticator is verified here, as the reference does (RFC 3579).
tests/test_acctlane.py checks that the lane and the reference leave the same bytes in the store and
send the same replies, over generated call flows.

`WriteLane`, the class a worker uses, adds number authorization in the same transaction
(`_reserve.pxi`, included at the end); `_sessions.pxi` holds the record layouts, keys and the
rating arithmetic both parts share, `_acctparse.pxi` the reading of an Accounting-Request.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from libc.stdint cimport int64_t, uint8_t, uint16_t, uint32_t, uint64_t
from libc.stdio cimport snprintf
from libc.string cimport memcpy, memset

from radcore._fastpath cimport _equal, _packet_hmac, _packet_md5
from radcore._lane cimport WriteAnswer

include "_records.pxi"
include "_sessions.pxi"

from radcore.store import DB_NAMES
from radcore.store import TOMBSTONE as _TOMBSTONE
from radcore.store import next_cdr_key

cdef bytes TOMBSTONE = _TOMBSTONE  # a stopped call's session key starts with it (radcore.store)
# The databases the lane writes, as the journal names them (their index in radcore.store.DB_NAMES).
cdef uint8_t DB_CARDS = DB_NAMES.index("cards")
cdef uint8_t DB_SESSIONS = DB_NAMES.index("sessions")
cdef uint8_t DB_CDRS = DB_NAMES.index("cdrs")
cdef uint8_t DB_DEADLINES = DB_NAMES.index("session_deadlines")

cdef enum:
    HEADER = 20
    MAX_PACKET = 4096
    MAX_KEY = 502               # a session key's size limit (radcore.records.MAX_SESSION_KEY_SIZE)
    START = 1
    STOP = 2
    INTERIM = 3

cdef const uint8_t* _ZEROS = <const uint8_t*>b"\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0"
cdef const uint8_t* _CONF_NAME = <const uint8_t*>b"h323-conf-id="


include "_acctparse.pxi"
include "_held.pxi"


cdef class _Client:
    """What the lane needs of one radcore.config.Client."""
    cdef object client              # kept alive: the lane's cache is keyed by id(client)
    cdef bytes secret
    cdef bint eligible              # PIN-only profiles identify the card by PIN: not this lane
    cdef bint require_ma            # an Access-Request without a Message-Authenticator is dropped
    cdef bint plain_number          # the dialled number is Called-Station-Id (no redirect-number profile)
    cdef uint32_t vendor            # the profile's VSA vendor (0: none)


cdef class AccountingLane(WriteAnswer):
    """Plugs into `radcore._lane.Lane.serve`; one per worker, owned by its PrepaidHandler."""

    cdef object store
    cdef object settlement          # radcore.settlement.Settlement: rates a call nobody authorized
    cdef object lookups             # radcore.prepaid.Lookups, shared with the handler
    cdef object clock
    cdef object cards_db, sessions_db, deadlines_db, cdrs_db
    cdef readonly HeldTransaction held  # the write transaction, its commits and journal (_held.pxi)
    cdef object txn                 # held.txn as of this batch
    cdef object session_cursor      # over `sessions` in txn
    cdef dict by_number             # NAS identity -> whether it has calls filed by card and number
    cdef object _get                # txn.get, called with positional arguments (no keyword parsing)
    cdef int64_t now
    cdef int64_t call_seconds       # max_call_seconds + reservation_grace_seconds
    cdef int64_t retention          # session_retention_seconds
    cdef long long version
    cdef int64_t rated_at           # the second `rated` belongs to (rates have effective dates)
    cdef dict rated                 # (series, _Client, called) -> rate tuple, or None: not here
    cdef dict clients               # id(Client) -> _Client
    cdef _Client last_client        # the last one `_client` returned
    cdef bytes last_nas             # the NAS identity last built from a NAS-IP-Address ...
    cdef uint32_t last_nas_ip       # ... and that address
    cdef public long long answered  # requests this lane answered (the tests' view)

    def __init__(self, store, settlement, lookups, clock):
        self.store = store
        self.settlement = settlement
        self.lookups = lookups
        self.clock = clock
        self.cards_db = store.cards
        self.sessions_db = store.sessions
        self.deadlines_db = store.session_deadlines
        self.cdrs_db = store.cdrs
        config = settlement.config
        self.call_seconds = config.max_call_seconds + config.reservation_grace_seconds
        self.retention = config.session_retention_seconds
        self.held = HeldTransaction(store)
        self.txn = None
        self.version = -2
        self.rated_at = -1
        self.rated = {}
        self.clients = {}
        self.answered = 0

    def hold(self, int checkpoint_ms):
        """Keep the write transaction open across batches for up to `checkpoint_ms` while requests
        are waiting, journaling each batch instead of committing it (0: commit every batch)."""
        self.held.hold(checkpoint_ms)

    def flush(self):
        """Commit the transaction kept open across batches, if any (a checkpoint)."""
        self.held.flush()

    def flush_due(self):
        """Commit the transaction kept open across batches once it is `checkpoint_ms` old."""
        self.held.flush_due()

    @property
    def appends(self):
        """Batches made durable by a journal append (metrics, tests)."""
        return self.held.appends

    @property
    def checkpoints(self):
        """Commits of a transaction that held journaled batches."""
        return self.held.checkpoints

    cdef int begin(self) except -1:
        self.now = self.clock()
        self.by_number = {}
        if not self.held.open():
            # Still open from an earlier batch, which held the write lock since: the lookups
            # cannot have changed, only the clock.
            if self.now != self.rated_at:
                self.rated_at = self.now
                self.rated.clear()
            return 0
        self.txn = self.held.txn
        self.session_cursor = self.txn.cursor(db=self.sessions_db)
        self._get = self.txn.get
        self.lookups.refresh(self.txn)
        if self.lookups.version != self.version or self.now != self.rated_at:
            if self.lookups.version != self.version:
                self.clients.clear()
            self.version = self.lookups.version
            self.rated_at = self.now
            self.rated.clear()
        return 0

    cdef int commit(self, bint more) except -1:
        return self.held.end_batch(more)

    cdef int settle(self) except -1:
        return self.held.settle()

    cdef bint flushed(self) except -1:
        return self.held.flushed()

    cdef int abort(self) except -1:
        self.held.abort_batch()
        return 0

    cdef inline bint _put(self, bytes key, bytes value, bint overwrite, object db, uint8_t dbid) except -1:
        return self.held.put(key, value, overwrite, db, dbid)

    cdef inline int _delete(self, bytes key, object db, uint8_t dbid) except -1:
        return self.held.delete(key, db, dbid)

    def run_batch(self, items, bint more=False):
        """[(datagram, client, source ip), ...] in one write transaction, as `Lane.serve` runs a
        batch: each answered (reply bytes) or declined (None); made durable once if any was answered
        (`more`: as if more requests were waiting, so it may be journaled instead of committed)."""
        cdef bytes pkt
        out = []
        self.begin()
        try:
            for data, client, ip in items:
                pkt = bytes(data)
                if PyBytes_GET_SIZE(pkt) < HEADER:
                    out.append(None)
                elif (<const uint8_t*>PyBytes_AS_STRING(pkt))[0] == 4:
                    out.append(self.account(<const uint8_t*>PyBytes_AS_STRING(pkt), PyBytes_GET_SIZE(pkt),
                                            client, ip))
                else:
                    out.append(self.authorize(<const uint8_t*>PyBytes_AS_STRING(pkt), PyBytes_GET_SIZE(pkt),
                                              client, ip))
            if any(wire is not None for wire in out):
                if self.commit(more):
                    self.settle()
            else:
                self.abort()
        except BaseException:
            self.abort()
            raise
        return out

    def decide(self, data, client, ip):
        """One datagram in its own write transaction, committed if answered (tests, cross-check)."""
        return self.run_batch([(data, client, ip)])[0]

    cdef _Client _client(self, object client):
        cdef _Client c = self.last_client
        if c is not None and c.client is client:
            return c  # a batch mostly comes from one NAS
        c = self.clients.get(id(client))
        if c is not None and c.client is client:
            self.last_client = c
            return c
        c = _Client.__new__(_Client)
        c.client = client
        c.secret = bytes(client.secret)
        c.eligible = not client.profile.pin_only
        c.require_ma = bool(client.require_message_authenticator)
        c.plain_number = client.profile.number_attribute != "h323-redirect-number"
        c.vendor = client.profile.vendor
        if len(self.clients) > 4096:
            self.clients.clear()
        self.clients[id(client)] = c
        self.last_client = c
        return c

    cdef object account(self, const uint8_t* pkt, Py_ssize_t n, object client, object ip):
        self.inert = False
        cdef _Client c = self._client(client)
        cdef Py_ssize_t length = (<Py_ssize_t>pkt[2] << 8) | pkt[3]
        if pkt[0] != 4 or length < HEADER or length > MAX_PACKET or length > n:
            self.inert = True  # the reference drops it
            return None
        cdef uint8_t mac[16]
        _packet_md5(mac, pkt, length, _ZEROS, 16, c.secret)
        if not _equal(mac, pkt + 4, 16):
            self.inert = True  # a bad authenticator: dropped and counted by the reference
            return None
        cdef Acct a
        if not c.eligible or not _parse(pkt, length, &a):
            return None
        if a.ma_offset >= 0:
            # RFC 3579 §3.2: over the packet with a zero Request Authenticator and a zero MAC value.
            _packet_hmac(mac, pkt, length, _ZEROS, a.ma_offset, c.secret)
            if not _equal(mac, pkt + a.ma_offset, 16):
                self.inert = True  # dropped and counted by the reference
                return None
        if a.status != START and a.status != STOP and a.status != INTERIM:
            return None
        cdef Span cid = a.conf_id if a.conf_id.n else a.session_id
        if cid.n == 0:
            return None

        # The session key: NAS identity (NAS-Identifier, else NAS-IP-Address, else the source) + NUL + call id.
        cdef bytes nas
        cdef char number[32]
        cdef int number_n
        cdef Py_ssize_t i
        nas = self._nas(a.nas_identifier, a.nas_ip, ip)
        if nas is None or PyBytes_GET_SIZE(nas) + 1 + cid.n > MAX_KEY:
            return None
        cdef bytes skey = nas + b"\0" + PyBytes_FromStringAndSize(<const char*>cid.p, cid.n)

        cdef Sess s
        cdef bint tombstone = False      # session_raw is a stopped call's, in the tombstone range
        cdef bytes session_raw = self._get(skey, None, self.sessions_db)
        if session_raw is None:
            session_raw = self._get(TOMBSTONE + skey, None, self.sessions_db)
            tombstone = session_raw is not None
        cdef bytes card_raw
        cdef bint fresh = False          # a call nobody authorized, opened by this request
        cdef object rate
        cdef uint32_t series_no, serial
        cdef uint8_t key[8]
        if session_raw is not None:
            if not _unpack_session(session_raw, &s):
                return None
        else:
            # A call nobody authorized: the reference's Settlement._unauthorized_session.
            if not _card_number(a.user.p, a.user.n, &series_no, &serial):
                return None
            _card_key(key, series_no, serial)
            memcpy(s.card_key, key, 8)
            card_raw = self._get(PyBytes_FromStringAndSize(<const char*>key, 8), None, self.cards_db)
            if card_raw is None:
                return None
            # The key of an authorization filed without a call id (prepaid.fallback_call_id).
            number[0] = 0  # the NUL between NAS and call id
            number_n = 1 + snprintf(number + 1, 31, "auth:%u-%09u:", series_no, serial)
            if PyBytes_GET_SIZE(nas) + number_n + a.called.n > MAX_KEY:
                return None
            fallback_key = nas + PyBytes_FromStringAndSize(number, number_n) + \
                PyBytes_FromStringAndSize(<const char*>a.called.p, a.called.n)
            if self._files_by_number(nas) and self._get(fallback_key, None, self.sessions_db) is not None:
                return None  # an authorization filed without a call id: the reference adopts it
            rate = self._rate(series_no, c, a.called)
            if rate is None:
                return None
            s.state = SESSION_STARTED
            s.reserved = s.charged = 0
            s.opened_at = self.now
            s.deadline = self.now + self.call_seconds
            s.last_session_time = 0
            _rate_into(&s, rate)
            fresh = True
            s.s[S_SESSION_ID] = a.session_id
            s.s[S_CONF_ID] = a.conf_id
            s.s[S_NAS].p = <const uint8_t*>PyBytes_AS_STRING(nas)
            s.s[S_NAS].n = PyBytes_GET_SIZE(nas)

        if s.state != SESSION_STOPPED and s.s[S_SESSION_ID].n == 0:
            s.s[S_SESSION_ID] = a.session_id  # the first accounting packet binds Acct-Session-Id
        if a.status == START:
            if s.state == SESSION_AUTHORIZED:
                s.state = SESSION_STARTED
            if fresh and not self._open_call(card_raw, key):
                return None
            self._put_session(skey, session_raw, tombstone, &s)
            return self._reply(pkt, c.secret)

        # Interim-Update or Stop: settle on the card.
        cdef bytes ckey = PyBytes_FromStringAndSize(<const char*>s.card_key, 8)
        if not fresh:
            card_raw = self._get(ckey, None, self.cards_db)
            if card_raw is None:
                return None
        if PyBytes_GET_SIZE(card_raw) < CARD_SIZE or (<const uint8_t*>PyBytes_AS_STRING(card_raw))[OFF_STATUS] > STATUS_BLOCKED:
            return None
        if s.interval == 0 or s.price_per_minute < 0 or s.connection_fee < 0:
            return None
        cdef bytes card = PyBytes_FromStringAndSize(PyBytes_AS_STRING(card_raw), PyBytes_GET_SIZE(card_raw))
        cdef uint8_t* cp = <uint8_t*>PyBytes_AS_STRING(card)
        cdef uint16_t open_calls = cp[OFF_OPEN_CALLS] | (<uint16_t>cp[OFF_OPEN_CALLS + 1] << 8)
        if fresh:
            if open_calls == 0xFFFF:
                return None
            open_calls += 1
        cdef int64_t balance = _le64(cp + OFF_BALANCE), reserved = _le64(cp + OFF_RESERVED)
        cdef int64_t charged_before = s.charged

        # Settlement._settle
        cdef int64_t reported = a.session_time if a.session_time > 0 else 0
        if reported > s.last_session_time:
            s.last_session_time = <uint32_t>reported
        cdef int128 total = _cost(&s, s.last_session_time)
        if total > INT64_MAX:
            return None
        cdef int64_t owed = <int64_t>total - s.charged, release, debit
        if owed > 0:
            release = owed if owed < s.reserved else s.reserved
            s.reserved -= release
            reserved -= release
            debit = balance if balance > 0 else 0
            if owed < debit:
                debit = owed
            if debit < owed:
                return None  # an overrun: the reference logs it
            balance -= debit
            s.charged += debit

        cdef bytes cdr = None
        cdef int64_t stop_time = 0
        cdef int128 billed
        if s.state == SESSION_STOPPED:
            if s.charged != charged_before:
                return None  # a longer report after the Stop: the reference amends the CDR
        elif a.status == STOP:
            # Settlement._close
            stop_time = self.now - a.delay_time
            reserved -= s.reserved
            s.reserved = 0
            if open_calls:
                open_calls -= 1
            s.state = SESSION_STOPPED
            s.deadline = self.now + self.retention
            if balance <= 0 and cp[OFF_STATUS] == STATUS_ACTIVATED:
                cp[OFF_STATUS] = STATUS_USED
            billed = _billed(&s, s.last_session_time)
            if billed > 0xFFFFFFFF:
                return None
            cdr = _pack_cdr(&s, stop_time, <int64_t>billed, a.terminate_cause)
        _put_le64(cp + OFF_BALANCE, balance)
        _put_le64(cp + OFF_RESERVED, reserved)
        _put_le64(cp + OFF_LAST_USE, self.now)
        cp[OFF_OPEN_CALLS] = <uint8_t>(open_calls & 0xFF)
        cp[OFF_OPEN_CALLS + 1] = <uint8_t>(open_calls >> 8)
        if cdr is not None:
            # The first call of this card to stop in this second takes sequence number 0 (CDRs are
            # never deleted, so a free 0 means no other); a second one, rare, asks radcore.store.
            if not self._put(_cdr_key(ckey, stop_time, 0), cdr, False, self.cdrs_db, DB_CDRS):
                self._put(next_cdr_key(self.txn, self.store, ckey, stop_time), cdr, True, self.cdrs_db, DB_CDRS)
        self._put_session(skey, session_raw, tombstone, &s)
        self._put(ckey, card, True, self.cards_db, DB_CARDS)
        return self._reply(pkt, c.secret)

    cdef bint _files_by_number(self, bytes nas) except -1:
        """Whether any call of this NAS is filed by card and number (prepaid.fallback_call_id): one
        cursor seek per NAS and batch instead of a lookup per call. Exact for the batch, because only
        the Python path files or adopts such calls, never inside the lane's transaction."""
        found = self.by_number.get(nas)
        if found is None:
            prefix = nas + b"\0auth:"
            cursor = self.session_cursor
            found = bool(cursor.set_range(prefix)) and cursor.key().startswith(prefix)
            self.by_number[nas] = found
        return found

    cdef bytes _nas(self, Span nas_identifier, const uint8_t* nas_ip, object ip):
        """prepaid.nas_identity: NAS-Identifier, else NAS-IP-Address, else the source address; None
        where it holds a NUL (the reference refuses such a session key)."""
        cdef char quad[16]
        cdef bytes nas
        if nas_identifier.n:
            nas = PyBytes_FromStringAndSize(<const char*>nas_identifier.p, nas_identifier.n)
        elif nas_ip != NULL:
            if self.last_nas is not None and _be32(nas_ip) == self.last_nas_ip:
                return self.last_nas
            nas = PyBytes_FromStringAndSize(quad, snprintf(quad, 16, "%u.%u.%u.%u", nas_ip[0], nas_ip[1],
                                                           nas_ip[2], nas_ip[3]))
            self.last_nas, self.last_nas_ip = nas, _be32(nas_ip)
        else:
            nas = ip.encode()
        return None if b"\0" in nas else nas

    cdef bint _open_call(self, bytes card_raw, uint8_t* key) except -1:
        """One more call holds the card (the reference's open_calls += 1 for a call it rated)."""
        if PyBytes_GET_SIZE(card_raw) < CARD_SIZE or (<const uint8_t*>PyBytes_AS_STRING(card_raw))[OFF_STATUS] > STATUS_BLOCKED:
            return False
        cdef bytes card = PyBytes_FromStringAndSize(PyBytes_AS_STRING(card_raw), PyBytes_GET_SIZE(card_raw))
        cdef uint8_t* cp = <uint8_t*>PyBytes_AS_STRING(card)
        cdef uint16_t open_calls = cp[OFF_OPEN_CALLS] | (<uint16_t>cp[OFF_OPEN_CALLS + 1] << 8)
        if open_calls == 0xFFFF:
            return False
        open_calls += 1
        cp[OFF_OPEN_CALLS] = <uint8_t>(open_calls & 0xFF)
        cp[OFF_OPEN_CALLS + 1] = <uint8_t>(open_calls >> 8)
        self._put(PyBytes_FromStringAndSize(<const char*>key, 8), card, True, self.cards_db, DB_CARDS)
        return True

    cdef int _put_session(self, bytes skey, bytes old, bint old_tombstone, Sess* s) except -1:
        """radcore.store.put_session: the session and its entry in the deadline index, a stopped
        call's under TOMBSTONE + key. `old` is what the call had, found in the tombstone range if
        `old_tombstone` (a call is never in both ranges)."""
        cdef int64_t old_deadline
        cdef bint indexed = False
        cdef bint tombstone = s.state == SESSION_STOPPED
        cdef bytes where = TOMBSTONE + skey if tombstone else skey
        cdef bytes was
        if old is not None:
            was = TOMBSTONE + skey if old_tombstone else skey
            old_deadline = _le64(<const uint8_t*>PyBytes_AS_STRING(old) + 32)
            if old_tombstone != tombstone or old_deadline != s.deadline:
                self._delete(_deadline_key(old_deadline, was), self.deadlines_db, DB_DEADLINES)
            else:
                indexed = True  # put_session keeps the entry of a stored session's deadline
            if old_tombstone != tombstone:
                self._delete(was, self.sessions_db, DB_SESSIONS)
        self._put(where, _pack_session(s), True, self.sessions_db, DB_SESSIONS)
        if not indexed:
            self._put(_deadline_key(s.deadline, where), b"", True, self.deadlines_db, DB_DEADLINES)
        return 0

    cdef object _rate(self, uint32_t series_no, _Client c, Span called):
        """(price, connection fee, min volume, interval, grace, tax ppm, prefix + digits, len(prefix))
        for a call nobody authorized, from the reference's own rating; None where it would not rate."""
        cdef bytes number = PyBytes_FromStringAndSize(<const char*>called.p, called.n)
        memo = (series_no, c, number)  # the _Client itself: its profile decides the digits
        try:
            return self.rated[memo]
        except KeyError:
            pass
        rate, tax_ppm, digits = self.settlement.rate_unannounced(self.txn, series_no, c.client,
                                                                 number.decode(), self.now)
        found = _rate_tuple(rate, tax_ppm, digits)
        if len(self.rated) > 65536:
            self.rated.clear()
        self.rated[memo] = found
        return found

    cdef bytes _reply(self, const uint8_t* req, bytes secret):
        """Accounting-Response with no attributes: MD5(Code + Identifier + Length + RequestAuth + secret)."""
        cdef uint8_t out[HEADER]
        out[0] = 5
        out[1] = req[1]
        out[2] = 0
        out[3] = HEADER
        memcpy(out + 4, req + 4, 16)
        cdef uint8_t mac[16]
        _packet_md5(mac, out, HEADER, req + 4, 16, secret)
        memcpy(out + 4, mac, 16)
        self.answered += 1
        return PyBytes_FromStringAndSize(<const char*>out, HEADER)


include "_reserve.pxi"
