# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""The load generator's engine: many UDP sockets, a window of requests in flight on each, batched syscalls.

`bench.loadgen` is the command line and the multi-process orchestration; this module is the part that
must never be the bottleneck. Per process it drives `sockets` non-blocking UDP sockets, each with
`window` *flows* in flight. A flow is one program of requests run in order (a card authentication; a
number authorization; Accounting Start then Stop; a whole call: card auth, number auth, Start, Stop),
and a new flow starts on a fresh card as soon as the previous one ends. So `window` is exactly the
number of outstanding requests per socket.

How the work is kept small:
- One `sendmmsg` per socket per loop turn sends every request that is due; one `recvmmsg` drains up to
  64 replies at a time. `ppoll` sleeps only when there is nothing to send and nothing to read.
- Requests are written straight into per-socket transmit buffers from pre-encoded attribute bytes
  (card numbers, PINs, the dialled number); per request only the Identifier, a fresh random Request
  Authenticator, the hidden User-Password, the call identifiers and the MACs change.
- MD5 and HMAC-MD5 are C (`_lg_primitives.h`, with the latency histogram), HMAC keyed once per run
  (the ipad/opad states are copied, not recomputed). This is an implementation independent of radcore's, so the generator is also an oracle:
  every reply's Response Authenticator (RFC 2865 §3) and, when present, Message-Authenticator
  (RFC 3579 §3.2) is verified; a reply that fails is counted as `bad`, never as an answer.
- Identifiers are tracked per socket: 256 of them, handed out from a FIFO ring so that an Identifier
  freed by a timeout is reused as late as possible (a late reply then finds no request, or fails
  verification against the new one's authenticator, and is counted, not mistaken for an answer).
- A request's latency runs from just before the sendmmsg that sent it to its reply's arrival as the
  kernel stamped it (SO_TIMESTAMPNS), not to when this process got round to reading it: at high rates
  the generator is busy building and verifying other packets, and that wait is not the server's.
- Latencies go into log-linear histograms (64 sub-buckets per power of two: under 1.6% error) that
  sum across processes, so percentiles of a multi-process run are exact merges, not averages.

Nothing here retransmits: a request without a reply after `timeout` is a timeout and its flow is
abandoned (a real gateway would retry; a benchmark must count).

The module's parts: `_lg_flows.pxi` the programs, flows and per-socket rings; `_lg_wire.pxi` the
RADIUS encoding of requests and the checks of replies; `_lg_stats.pxi` the clocks and the latency
histograms. The `Engine` below drives them.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.exc cimport PyErr_CheckSignals
from libc.errno cimport EAGAIN, EINTR, errno
from libc.stdint cimport int16_t, int32_t, int64_t, uint8_t, uint16_t, uint32_t, uint64_t
from libc.stdio cimport snprintf
from libc.stdlib cimport calloc, free
from libc.string cimport memcmp, memcpy, memset
from posix.time cimport CLOCK_MONOTONIC, CLOCK_REALTIME, clock_gettime, nanosleep, timespec

from radcore._mmsg cimport (AF_INET, MSG_DONTWAIT, htons, inet_pton, iovec, mmsghdr, recvmmsg, sendmmsg,
                            sockaddr_in)

import os


cdef extern from "<poll.h>":
    cdef struct pollfd:
        int fd
        short events
        short revents
    ctypedef unsigned long nfds_t
    int POLLIN
    int ppoll(pollfd* fds, nfds_t nfds, const timespec* tmo, const void* sigmask) nogil


cdef enum:
    BATCH = 64              # datagrams per sendmmsg / recvmmsg call
    TX_SLOT = 1024          # octets reserved per request in the transmit buffers (requests are ~200)
    RX_SLOT = 4096          # octets per receive buffer: a whole RADIUS packet
    SCAN_NS = 5000000       # timeout scan and signal check every 5 ms
    RX_CONTROL = 64         # ancillary data per received datagram: one SCM_TIMESTAMPNS (32 octets)


include "_lg_flows.pxi"
include "_lg_wire.pxi"
include "_lg_stats.pxi"


cdef class Engine:
    """One process's share of a load: sockets, flows, counters and histograms. Use `run()` once."""

    # configuration
    cdef int nsocks, window, mode, proc, nprocs, ncards
    cdef double rate_per_ns          # requests per nanosecond for this process; 0 = as fast as possible
    cdef int64_t duration_ns, warmup_ns, timeout_ns, start_at
    cdef bytes secret
    cdef lg_hmac hmac
    cdef sockaddr_in dest[2]         # 0 = auth port, 1 = acct port
    cdef uint8_t nas_ip[4]
    cdef bytes called, calling
    cdef uint32_t nonce
    # cards: fixed-width records
    cdef uint8_t* names
    cdef uint8_t* name_len
    cdef uint8_t* pins
    cdef uint8_t* pin_len
    # sockets and buffers
    cdef Sock* socks
    cdef pollfd* pfds
    cdef uint8_t* tx
    cdef uint8_t* rx
    cdef uint8_t* scratch
    cdef mmsghdr txm[BATCH]
    cdef iovec txv[BATCH]
    cdef mmsghdr rxm[BATCH]
    cdef uint8_t rxc[BATCH][RX_CONTROL]
    cdef iovec rxv[BATCH]
    cdef int tx_flow[BATCH]
    # state
    cdef uint64_t rng
    cdef uint64_t next_card, next_call, next_flow
    cdef int64_t warm_end, end_ns
    # results
    cdef uint64_t sent[N_OPS]
    cdef uint64_t ok[N_OPS]
    cdef uint64_t rejects[N_OPS]
    cdef uint64_t timeouts[N_OPS]
    cdef uint64_t bad[N_OPS]
    cdef uint64_t late, send_errors, send_blocked, no_credit, flows_done, flows_failed, tokens_dropped
    cdef uint64_t* hist               # (N_OPS + 2) x LG_HIST_BUCKETS: per op, all requests, whole flows

    def __cinit__(self):
        self.socks = NULL
        self.pfds = NULL
        self.tx = NULL
        self.rx = NULL
        self.scratch = NULL
        self.names = self.name_len = self.pins = self.pin_len = NULL
        self.hist = NULL

    def __init__(self, *, fds, auth, acct, secret, cards, mode, window, rate=0.0, duration=5.0,
                 warmup=0.0, timeout=1.0, proc=0, nprocs=1, start_at=0, nas_ip="192.0.2.10",
                 called="442079460000", calling="15550100000", seed=None):
        """`fds`: bound non-blocking UDP socket fds (the caller keeps the socket objects alive).
        `auth`/`acct`: (IPv4 address, port). `cards`: sequence of (card number bytes, PIN bytes).
        `rate`: requests/s for this process, 0 for as fast as possible. `start_at`: CLOCK_MONOTONIC
        nanoseconds to start at (so several processes start together), 0 for now."""
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}")
        if not 1 <= window <= 255:
            raise ValueError("window must be 1..255 (Identifiers per socket)")
        if not cards:
            raise ValueError("no cards")
        self.mode = MODES.index(mode)
        self.window = window
        self.nsocks = len(fds)
        if self.nsocks < 1:
            raise ValueError("need at least one socket")
        self.rate_per_ns = float(rate) / 1e9 if rate else 0.0
        self.duration_ns = <int64_t>(duration * 1e9)
        self.warmup_ns = <int64_t>(warmup * 1e9)
        self.timeout_ns = <int64_t>(timeout * 1e9)
        self.start_at = start_at
        self.proc = proc
        self.nprocs = nprocs
        self.secret = bytes(secret)
        if not 1 <= len(self.secret) <= 128:
            raise ValueError("secret must be 1..128 octets")
        lg_hmac_key(&self.hmac, <const uint8_t*>PyBytes_AS_STRING(self.secret), len(self.secret))
        self._dest(0, auth)
        self._dest(1, acct)
        if inet_pton(AF_INET, nas_ip.encode(), self.nas_ip) != 1:
            raise ValueError(f"bad NAS-IP-Address {nas_ip!r}")
        self.called = called.encode()
        self.calling = calling.encode()
        seed_bytes = seed if seed is not None else os.urandom(12)
        self.rng = int.from_bytes(seed_bytes[:8], "little") | 1
        self.nonce = int.from_bytes(seed_bytes[8:12].ljust(4, b"\0"), "little")
        self._load_cards(cards)
        self._alloc(list(fds))

    cdef _dest(self, int which, addr):
        host, port = addr
        memset(&self.dest[which], 0, sizeof(sockaddr_in))
        self.dest[which].sin_family = AF_INET
        self.dest[which].sin_port = htons(port)
        if inet_pton(AF_INET, host.encode(), &self.dest[which].sin_addr) != 1:
            raise ValueError(f"{host!r} is not an IPv4 address")

    cdef _load_cards(self, cards):
        cdef Py_ssize_t i, n = len(cards)
        self.ncards = n
        self.names = <uint8_t*>calloc(n, 64)
        self.name_len = <uint8_t*>calloc(n, 1)
        self.pins = <uint8_t*>calloc(n, 128)
        self.pin_len = <uint8_t*>calloc(n, 1)
        if not self.names or not self.name_len or not self.pins or not self.pin_len:
            raise MemoryError()
        for i in range(n):
            name, pin = cards[i]
            if not 1 <= len(name) <= 64 or not 1 <= len(pin) <= 128:
                raise ValueError(f"card {i}: number must be 1..64 and PIN 1..128 octets")
            memcpy(self.names + 64 * i, <char*>name, len(name))
            self.name_len[i] = len(name)
            memcpy(self.pins + 128 * i, <char*>pin, len(pin))
            self.pin_len[i] = len(pin)

    cdef _alloc(self, list fds):
        cdef int s, j
        cdef Sock* sk
        self.socks = <Sock*>calloc(self.nsocks, sizeof(Sock))
        self.pfds = <pollfd*>calloc(self.nsocks, sizeof(pollfd))
        self.tx = <uint8_t*>calloc(BATCH, TX_SLOT)
        self.rx = <uint8_t*>calloc(BATCH, RX_SLOT)
        self.scratch = <uint8_t*>calloc(1, RX_SLOT)
        self.hist = <uint64_t*>calloc((N_OPS + 2) * LG_HIST_BUCKETS, sizeof(uint64_t))
        if not self.socks or not self.pfds or not self.tx or not self.rx or not self.scratch or not self.hist:
            raise MemoryError()
        cdef int one = 1
        for s in range(self.nsocks):
            sk = &self.socks[s]
            _sock_init(sk, fds[s], self.window)
            setsockopt(sk.fd, SOL_SOCKET, SO_TIMESTAMPNS, &one, sizeof(int))  # without it: user-space stamps
            self.pfds[s].fd = fds[s]
            self.pfds[s].events = POLLIN
        for j in range(BATCH):
            self.txv[j].iov_base = self.tx + j * TX_SLOT
            memset(&self.txm[j], 0, sizeof(mmsghdr))
            self.txm[j].msg_hdr.msg_iov = &self.txv[j]
            self.txm[j].msg_hdr.msg_iovlen = 1
            self.txm[j].msg_hdr.msg_namelen = sizeof(sockaddr_in)
            self.rxv[j].iov_base = self.rx + j * RX_SLOT
            self.rxv[j].iov_len = RX_SLOT
            memset(&self.rxm[j], 0, sizeof(mmsghdr))
            self.rxm[j].msg_hdr.msg_iov = &self.rxv[j]
            self.rxm[j].msg_hdr.msg_iovlen = 1

    def __dealloc__(self):
        cdef int s
        if self.socks != NULL:
            for s in range(self.nsocks):
                _sock_free(&self.socks[s])
            free(self.socks)
        free(self.pfds)
        free(self.tx)
        free(self.rx)
        free(self.scratch)
        free(self.names)
        free(self.name_len)
        free(self.pins)
        free(self.pin_len)
        free(self.hist)

    # -- flows ------------------------------------------------------------------------------------

    cdef inline uint64_t _rand(self) noexcept nogil:
        # xorshift64*: authenticators must be unique per request, not secret, in a benchmark.
        self.rng ^= self.rng >> 12
        self.rng ^= self.rng << 25
        self.rng ^= self.rng >> 27
        return self.rng * 0x2545F4914F6CDD1DULL

    cdef inline void _new_flow(self, Flow* f) noexcept nogil:
        """Start the next program on the next card (cards interleave across processes)."""
        if self.mode == 4:
            f.program = _MIXED[self.next_flow & 3]
        else:
            f.program = self.mode
        self.next_flow += 1
        f.step = 0
        f.card = <int32_t>((self.proc + <uint64_t>self.nprocs * self.next_card) % <uint64_t>self.ncards)
        self.next_card += 1
        f.call = self.next_call
        self.next_call += 1
        f.start_ns = 0

    # -- requests ---------------------------------------------------------------------------------

    cdef Py_ssize_t _build(self, Sock* sk, int si, Flow* f, uint8_t* out, int ident) noexcept:
        """Write the flow's next request into `out`; returns its length. Sets f.auth."""
        cdef int op = _PROGRAMS[f.program][f.step]
        cdef uint8_t* p
        cdef const uint8_t* key = <const uint8_t*>PyBytes_AS_STRING(self.secret)
        cdef Py_ssize_t klen = PyBytes_GET_SIZE(self.secret)
        cdef Py_ssize_t length
        cdef uint64_t r1, r2
        cdef char conf[64]
        cdef char sess[32]
        cdef int conf_len, sess_len
        cdef uint32_t tag = (<uint32_t>self.proc << 16) | <uint32_t>si
        # A gateway's conf-ids look random from the first word on, so its calls' session keys
        # land all over the server's key space; a leading counter would file them in one run per
        # socket and flatter any store keyed by them. The rest keeps every conf-id unique.
        conf_len = snprintf(conf, sizeof(conf), b"h323-conf-id=%08X %08X %08X %08X",
                            _mix32(<uint32_t>f.call ^ (<uint32_t>(f.call >> 32) * <uint32_t>0x85EBCA6B)
                                   ^ (tag * <uint32_t>0x9E3779B9) ^ self.nonce),
                            self.nonce, tag, <uint32_t>f.call)
        sess_len = snprintf(sess, sizeof(sess), b"%08X%04X%08X", self.nonce, tag & 0xFFFF,
                            <uint32_t>f.call)
        out[1] = <uint8_t>ident
        p = out + 20
        if op == OP_CARD_AUTH or op == OP_NUMBER_AUTH:
            out[0] = 1
            r1 = self._rand()
            r2 = self._rand()
            memcpy(out + 4, &r1, 8)
            memcpy(out + 12, &r2, 8)
            memcpy(f.auth, out + 4, 16)
            p[0] = 80                   # Message-Authenticator first, zero while the HMAC is computed
            p[1] = 18
            memset(p + 2, 0, 16)
            p += 18
            p = _attr(p, 1, self.names + 64 * f.card, self.name_len[f.card])
            p = _user_password(p, self.pins + 128 * f.card, self.pin_len[f.card], key, klen, f.auth)
            p = _attr(p, 4, self.nas_ip, 4)
            p = _attr(p, 31, <const uint8_t*>PyBytes_AS_STRING(self.calling), PyBytes_GET_SIZE(self.calling))
            if op == OP_NUMBER_AUTH:
                p = _attr(p, 30, <const uint8_t*>PyBytes_AS_STRING(self.called), PyBytes_GET_SIZE(self.called))
                p = _conf_vsa(p, conf, conf_len)
            length = p - out
            _put16(out + 2, <uint32_t>length)
            lg_hmac_run(&self.hmac, out, length, out + 22)
        else:
            out[0] = 4
            memset(out + 4, 0, 16)
            p = _attr(p, 1, self.names + 64 * f.card, self.name_len[f.card])
            p = _attr(p, 4, self.nas_ip, 4)
            p = _attr32(p, 40, 1 if op == OP_START else 2)
            p = _attr(p, 44, <const uint8_t*>sess, sess_len)
            p = _attr(p, 30, <const uint8_t*>PyBytes_AS_STRING(self.called), PyBytes_GET_SIZE(self.called))
            p = _attr(p, 31, <const uint8_t*>PyBytes_AS_STRING(self.calling), PyBytes_GET_SIZE(self.calling))
            p = _conf_vsa(p, conf, conf_len)
            p = _attr32(p, 41, 0)                                   # Acct-Delay-Time
            if op == OP_STOP:
                p = _attr32(p, 46, <uint32_t>(30 + f.call % 271))  # Acct-Session-Time
                p = _attr32(p, 49, 1)                               # Acct-Terminate-Cause User-Request
            length = p - out
            _put16(out + 2, <uint32_t>length)
            _acct_authenticator(out, length, key, klen)
            memcpy(f.auth, out + 4, 16)
        return length

    cdef int _send(self, int si, double* tokens, int64_t now) except -1:
        """Send every request of socket `si` that is ready and allowed; returns how many were sent."""
        cdef Sock* sk = &self.socks[si]
        cdef int n = 0, k, r, fi, ident, op
        cdef Flow* f
        cdef Py_ssize_t length
        while sk.ready_count > 0 and sk.free_count > 0 and n < BATCH:
            if self.rate_per_ns > 0.0:
                if tokens[0] < 1.0:
                    break
                tokens[0] -= 1.0
            fi = _pop_ready(sk)
            f = &sk.flows[fi]
            ident = _take_id(sk)
            sk.id_flow[ident] = <int16_t>fi
            f.ident = <int16_t>ident
            length = self._build(sk, si, f, self.tx + n * TX_SLOT, ident)
            op = _PROGRAMS[f.program][f.step]
            self.txv[n].iov_len = length
            self.txm[n].msg_hdr.msg_name = &self.dest[0 if op <= OP_NUMBER_AUTH else 1]
            self.tx_flow[n] = fi
            n += 1
        if n == 0:
            return 0
        cdef int64_t before = _realtime()
        r = sendmmsg(sk.fd, self.txm, n, MSG_DONTWAIT)
        if r < 0:
            if errno != EAGAIN and errno != EINTR:
                self.send_errors += 1
            r = 0
        now = _now()
        for k in range(n):
            f = &sk.flows[self.tx_flow[k]]
            if k < r:
                op = _PROGRAMS[f.program][f.step]
                f.sent_ns = now
                f.sent_rt = before
                if f.step == 0:
                    f.start_ns = now
                if now >= self.warm_end:
                    self.sent[op] += 1
                sk.inflight += 1
            else:
                # Not sent (socket buffer full): give the Identifier back and retry the same step later.
                self.send_blocked += 1
                _give_id(sk, f.ident)
                f.ident = -1
                _push_ready(sk, self.tx_flow[k])
                if self.rate_per_ns > 0.0:
                    tokens[0] += 1.0
        return r

    # -- replies ----------------------------------------------------------------------------------

    cdef int _recv(self, int si) except -1:
        """Drain socket `si`; returns the number of datagrams read."""
        cdef Sock* sk = &self.socks[si]
        cdef int r, k, total = 0
        cdef int64_t now, read_rt, arrived
        while True:
            for k in range(BATCH):
                self.rxm[k].msg_hdr.msg_control = self.rxc[k]
                self.rxm[k].msg_hdr.msg_controllen = RX_CONTROL
            r = recvmmsg(sk.fd, self.rxm, BATCH, MSG_DONTWAIT, NULL)
            if r <= 0:
                return total
            now = _now()
            read_rt = _realtime()
            for k in range(r):
                arrived = _arrival(&self.rxm[k])
                self._reply(sk, self.rx + k * RX_SLOT, self.rxm[k].msg_len, now,
                            arrived if arrived > 0 else read_rt)
            total += r
            if r < BATCH:
                return total

    cdef void _reply(self, Sock* sk, uint8_t* pkt, Py_ssize_t n, int64_t now, int64_t arrived) noexcept:
        cdef int ident, fi, op, code, ok, check
        cdef Flow* f
        cdef Py_ssize_t length
        cdef bint credit = False
        cdef const uint8_t* key = <const uint8_t*>PyBytes_AS_STRING(self.secret)
        if n < 20:
            self.late += 1
            return
        ident = pkt[1]
        fi = sk.id_flow[ident]
        if fi < 0:
            self.late += 1          # answer to a request that already timed out (or a stray datagram)
            return
        f = &sk.flows[fi]
        op = _PROGRAMS[f.program][f.step]
        length = (<Py_ssize_t>pkt[2] << 8) | pkt[3]
        if length < 20 or length > n:
            self.bad[op] += 1
            return
        check = _check_reply(pkt, length, f.auth, key, PyBytes_GET_SIZE(self.secret), &self.hmac,
                             self.scratch, &credit)
        if check == REPLY_STRAY:
            self.bad[op] += 1       # not an answer to this request: keep waiting for the real one
            return
        if check == REPLY_BAD:
            self._finish(sk, f, fi, op, 2, now, arrived)
            return
        code = pkt[0]
        if op <= OP_NUMBER_AUTH:
            ok = 0 if code == 2 else (1 if code == 3 else 2)
            if ok == 0 and op == OP_CARD_AUTH and not credit and now >= self.warm_end:
                self.no_credit += 1
        else:
            ok = 0 if code == 5 else 2
        self._finish(sk, f, fi, op, ok, now, arrived)

    cdef void _finish(self, Sock* sk, Flow* f, int fi, int op, int outcome, int64_t now,
                      int64_t arrived) noexcept:
        """Account for the answer (0 ok, 1 reject, 2 bad) and move the flow on; its latency runs from
        just before the request's sendmmsg to the reply's arrival (realtime ns)."""
        cdef bint measured = now >= self.warm_end and now <= self.end_ns
        cdef uint64_t lat = <uint64_t>(arrived - f.sent_rt if arrived > f.sent_rt else 0)
        _give_id(sk, f.ident)
        f.ident = -1
        sk.inflight -= 1
        if measured and f.sent_ns >= self.warm_end:
            if outcome == 0:
                self.ok[op] += 1
            elif outcome == 1:
                self.rejects[op] += 1
            else:
                self.bad[op] += 1
            self.hist[op * LG_HIST_BUCKETS + lg_hist_index(lat)] += 1
            self.hist[N_OPS * LG_HIST_BUCKETS + lg_hist_index(lat)] += 1
        if outcome == 0 and f.step + 1 < _PROGRAM_LEN[f.program]:
            f.step += 1
        else:
            if measured and f.start_ns >= self.warm_end:
                if outcome == 0:
                    self.flows_done += 1
                    self.hist[(N_OPS + 1) * LG_HIST_BUCKETS + lg_hist_index(<uint64_t>(now - f.start_ns))] += 1
                else:
                    self.flows_failed += 1
            self._new_flow(f)
        _push_ready(sk, fi)

    cdef void _scan(self, int64_t now) noexcept:
        """Time out requests older than `timeout`; their flows are abandoned and restarted."""
        cdef int s, j, op
        cdef Sock* sk
        cdef Flow* f
        for s in range(self.nsocks):
            sk = &self.socks[s]
            if sk.inflight == 0:
                continue
            for j in range(sk.nflows):
                f = &sk.flows[j]
                if f.ident >= 0 and now - f.sent_ns > self.timeout_ns:
                    op = _PROGRAMS[f.program][f.step]
                    if f.sent_ns >= self.warm_end and now <= self.end_ns + self.timeout_ns:
                        self.timeouts[op] += 1
                        if f.start_ns >= self.warm_end:
                            self.flows_failed += 1
                    _give_id(sk, f.ident)
                    f.ident = -1
                    sk.inflight -= 1
                    self._new_flow(f)
                    _push_ready(sk, j)

    # -- main loop --------------------------------------------------------------------------------

    def run(self):
        """Run the load; returns a dict of counters and histograms (see `bench.loadgen`)."""
        cdef int64_t now, start, next_scan, wait, last, stop
        cdef int s, first = 0
        cdef int sent, got
        cdef double tokens = 1.0, burst
        cdef timespec ts
        cdef Flow* f
        cdef int j
        for s in range(self.nsocks):
            for j in range(self.socks[s].nflows):
                self._new_flow(&self.socks[s].flows[j])
        now = _now()
        if self.start_at > now:
            ts.tv_sec = (self.start_at - now) // 1000000000
            ts.tv_nsec = (self.start_at - now) % 1000000000
            nanosleep(&ts, NULL)
        start = _now()
        self.warm_end = start + self.warmup_ns
        self.end_ns = self.warm_end + self.duration_ns
        # Up to 20 ms of requests may be sent late in a burst (a wakeup delayed by a busy machine);
        # what falls further behind is dropped and reported as `rate_shortfall`.
        burst = self.rate_per_ns * 2e7 if self.rate_per_ns * 2e7 > 1.0 else 1.0
        last = start
        next_scan = start + SCAN_NS
        while True:
            now = _now()
            if now >= self.end_ns:
                break
            if self.rate_per_ns > 0.0:
                tokens += (now - last) * self.rate_per_ns
                last = now
                if tokens > burst:
                    if now >= self.warm_end:
                        self.tokens_dropped += <uint64_t>(tokens - burst)
                    tokens = burst
            sent = 0
            got = 0
            for s in range(self.nsocks):       # rotate the first socket so a rate limit is fair
                sent += self._send((first + s) % self.nsocks, &tokens, now)
            first = (first + 1) % self.nsocks
            for s in range(self.nsocks):
                got += self._recv(s)
            now = _now()
            if now >= next_scan:
                self._scan(now)
                next_scan = now + SCAN_NS
                if PyErr_CheckSignals() < 0:
                    return None
            if sent == 0 and got == 0:
                wait = min(next_scan, self.end_ns) - now
                if self.rate_per_ns > 0.0 and tokens < 1.0 and self._any_ready():
                    wait = min(wait, <int64_t>((1.0 - tokens) / self.rate_per_ns) + 1)
                if wait > 0:
                    ts.tv_sec = wait // 1000000000
                    ts.tv_nsec = wait % 1000000000
                    with nogil:
                        ppoll(self.pfds, self.nsocks, &ts, NULL)
        stop = _now()
        self._drain(stop + min(self.timeout_ns, 300000000))
        return self._results((stop - self.warm_end) / 1e9)

    cdef bint _any_ready(self) noexcept:
        cdef int s
        for s in range(self.nsocks):
            if self.socks[s].ready_count > 0 and self.socks[s].free_count > 0:
                return True
        return False

    cdef _drain(self, int64_t until):
        """Read the answers still in flight (not counted), so the next run starts on a quiet server."""
        cdef int s, inflight
        cdef timespec ts
        ts.tv_sec = 0
        ts.tv_nsec = 10000000
        while _now() < until:
            inflight = 0
            for s in range(self.nsocks):
                self._recv(s)
                inflight += self.socks[s].inflight
            if inflight == 0:
                return
            with nogil:
                ppoll(self.pfds, self.nsocks, &ts, NULL)

    cdef dict _results(self, double elapsed):
        cdef int op
        per_op = {}
        for op in range(N_OPS):
            per_op[OPS[op]] = {"sent": self.sent[op], "ok": self.ok[op], "rejects": self.rejects[op],
                               "timeouts": self.timeouts[op], "bad": self.bad[op]}
        hist = PyBytes_FromStringAndSize(<char*>self.hist,
                                         (N_OPS + 2) * LG_HIST_BUCKETS * sizeof(uint64_t))
        return {"elapsed": elapsed, "ops": per_op, "late": self.late, "send_errors": self.send_errors,
                "send_blocked": self.send_blocked, "no_credit": self.no_credit,
                "flows_done": self.flows_done, "flows_failed": self.flows_failed,
                "tokens_dropped": self.tokens_dropped, "hist": hist}
