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


cdef extern from "<sys/socket.h>":
    # Kernel receive timestamps (socket(7) SO_TIMESTAMPNS): a reply's arrival time, whatever this
    # process was doing when it arrived.
    cdef struct cmsghdr:
        size_t cmsg_len
        int cmsg_level
        int cmsg_type
    cmsghdr* CMSG_FIRSTHDR(void* msgh) nogil
    cmsghdr* CMSG_NXTHDR(void* msgh, cmsghdr* cmsg) nogil
    unsigned char* CMSG_DATA(cmsghdr* cmsg) nogil
    int SOL_SOCKET
    int SO_TIMESTAMPNS
    int SCM_TIMESTAMPNS
    int setsockopt(int fd, int level, int name, const void* value, unsigned int length)


cdef extern from "<poll.h>":
    cdef struct pollfd:
        int fd
        short events
        short revents
    ctypedef unsigned long nfds_t
    int POLLIN
    int ppoll(pollfd* fds, nfds_t nfds, const timespec* tmo, const void* sigmask) nogil


cdef extern from "_lg_primitives.h":
    ctypedef struct lg_md5:
        pass
    ctypedef struct lg_hmac:
        pass
    void lg_md5_init(lg_md5* m) nogil
    void lg_md5_update(lg_md5* m, const uint8_t* p, size_t n) nogil
    void lg_md5_final(lg_md5* m, uint8_t* out) nogil
    void lg_hmac_key(lg_hmac* h, const uint8_t* key, size_t n) nogil
    void lg_hmac_run(const lg_hmac* h, const uint8_t* p, size_t n, uint8_t* out) nogil
    int lg_hist_index(uint64_t v) nogil
    int LG_HIST_BUCKETS


# Operations a flow is made of, and the programs (flows) each mode runs.
cdef enum:
    OP_CARD_AUTH = 0        # Access-Request: card number + PIN (stage 1)
    OP_NUMBER_AUTH = 1      # Access-Request: card number + PIN + dialled number + h323-conf-id (stage 2)
    OP_START = 2            # Accounting-Request Start
    OP_STOP = 3             # Accounting-Request Stop with Acct-Session-Time
    N_OPS = 4
    MAX_STEPS = 4
    N_PROGRAMS = 4          # card-auth, number-auth, acct, call (mixed picks among them)

cdef enum:
    BATCH = 64              # datagrams per sendmmsg / recvmmsg call
    TX_SLOT = 1024          # octets reserved per request in the transmit buffers (requests are ~200)
    RX_SLOT = 4096          # octets per receive buffer: a whole RADIUS packet
    N_IDS = 256
    SCAN_NS = 5000000       # timeout scan and signal check every 5 ms
    RX_CONTROL = 64         # ancillary data per received datagram: one SCM_TIMESTAMPNS (32 octets)

OPS = ("card-auth", "number-auth", "acct-start", "acct-stop")
MODES = ("card-auth", "number-auth", "acct", "call", "mixed")
HIST_BUCKETS = LG_HIST_BUCKETS

cdef uint8_t _PROGRAMS[N_PROGRAMS][MAX_STEPS]
cdef int _PROGRAM_LEN[N_PROGRAMS]
_PROGRAMS[0][0] = OP_CARD_AUTH
_PROGRAM_LEN[0] = 1
_PROGRAMS[1][0] = OP_NUMBER_AUTH
_PROGRAM_LEN[1] = 1
_PROGRAMS[2][0] = OP_START
_PROGRAMS[2][1] = OP_STOP
_PROGRAM_LEN[2] = 2
_PROGRAMS[3][0] = OP_CARD_AUTH
_PROGRAMS[3][1] = OP_NUMBER_AUTH
_PROGRAMS[3][2] = OP_START
_PROGRAMS[3][3] = OP_STOP
_PROGRAM_LEN[3] = 4
# "mixed": of every 4 flows, 3 are whole calls and 1 is a balance check (card authentication only).
cdef int _MIXED[4]
_MIXED[:] = [3, 3, 0, 3]


cdef struct Flow:
    int64_t sent_ns         # when the outstanding request was sent
    int64_t sent_rt         # the same on the realtime clock, just before its sendmmsg (latency origin)
    int64_t start_ns        # when the flow's first request was sent
    uint64_t call           # call number, unique in this process; feeds the session identifiers
    int32_t card            # index into the card table
    int16_t ident           # Identifier of the outstanding request, -1 when none is
    uint8_t program         # index into _PROGRAMS
    uint8_t step            # position in the program of the outstanding (or next) request
    uint8_t auth[16]        # Request Authenticator of the outstanding request


cdef struct Sock:
    int fd
    int nflows
    Flow* flows
    int16_t id_flow[N_IDS]  # Identifier -> flow index, -1 when free
    uint8_t free_ids[N_IDS] # FIFO ring of free Identifiers
    int free_head
    int free_count
    int* ready              # ring of flow indices waiting to send their next request
    int ready_head
    int ready_count
    int inflight


cdef inline int64_t _now() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return <int64_t>ts.tv_sec * 1000000000 + ts.tv_nsec


cdef inline int64_t _realtime() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_REALTIME, &ts)
    return <int64_t>ts.tv_sec * 1000000000 + ts.tv_nsec


cdef inline int64_t _arrival(mmsghdr* msg) noexcept nogil:
    """The kernel's receive timestamp of a datagram (realtime ns), or 0 if it brought none."""
    cdef cmsghdr* c = CMSG_FIRSTHDR(&msg.msg_hdr)
    cdef timespec ts
    while c != NULL:
        if c.cmsg_level == SOL_SOCKET and c.cmsg_type == SCM_TIMESTAMPNS:
            memcpy(&ts, CMSG_DATA(c), sizeof(timespec))
            return <int64_t>ts.tv_sec * 1000000000 + ts.tv_nsec
        c = CMSG_NXTHDR(&msg.msg_hdr, c)
    return 0


cdef inline uint32_t _mix32(uint32_t h) noexcept nogil:
    """MurmurHash3's finalizer: every input bit flips about half the output bits."""
    h ^= h >> 16
    h *= <uint32_t>0x85EBCA6B
    h ^= h >> 13
    h *= <uint32_t>0xC2B2AE35
    h ^= h >> 16
    return h


cdef inline void _put16(uint8_t* p, uint32_t v) noexcept nogil:
    p[0] = (v >> 8) & 0xFF
    p[1] = v & 0xFF


cdef inline void _put32(uint8_t* p, uint32_t v) noexcept nogil:
    p[0] = (v >> 24) & 0xFF
    p[1] = (v >> 16) & 0xFF
    p[2] = (v >> 8) & 0xFF
    p[3] = v & 0xFF


cdef inline uint8_t* _attr(uint8_t* p, uint8_t atype, const uint8_t* value, Py_ssize_t n) noexcept nogil:
    p[0] = atype
    p[1] = <uint8_t>(n + 2)
    memcpy(p + 2, value, n)
    return p + 2 + n


cdef inline uint8_t* _attr32(uint8_t* p, uint8_t atype, uint32_t value) noexcept nogil:
    p[0] = atype
    p[1] = 6
    _put32(p + 2, value)
    return p + 6


def md5(data) -> bytes:
    """MD5 of `data` with this module's implementation (checked against hashlib by the tests)."""
    cdef bytes b = bytes(data)
    cdef lg_md5 m
    cdef uint8_t out[16]
    lg_md5_init(&m)
    lg_md5_update(&m, <const uint8_t*>PyBytes_AS_STRING(b), PyBytes_GET_SIZE(b))
    lg_md5_final(&m, out)
    return PyBytes_FromStringAndSize(<char*>out, 16)


def hmac_md5(key, data) -> bytes:
    """HMAC-MD5(key, data) with this module's implementation."""
    cdef bytes k = bytes(key)
    cdef bytes b = bytes(data)
    cdef lg_hmac h
    cdef uint8_t out[16]
    lg_hmac_key(&h, <const uint8_t*>PyBytes_AS_STRING(k), PyBytes_GET_SIZE(k))
    lg_hmac_run(&h, <const uint8_t*>PyBytes_AS_STRING(b), PyBytes_GET_SIZE(b), out)
    return PyBytes_FromStringAndSize(<char*>out, 16)


def hist_value(int index) -> float:
    """The latency in nanoseconds a histogram bucket stands for (its midpoint)."""
    if index < 128:
        return float(index)
    cdef int e = (index - 128) // 64 + 1
    cdef uint64_t m = (index - 128) % 64 + 64
    return ((m << e) + ((m + 1) << e) - 1) / 2.0


def hist_index(uint64_t value) -> int:
    return lg_hist_index(value)


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
            sk.fd = fds[s]
            setsockopt(sk.fd, SOL_SOCKET, SO_TIMESTAMPNS, &one, sizeof(int))  # without it: user-space stamps
            self.pfds[s].fd = fds[s]
            self.pfds[s].events = POLLIN
            sk.nflows = self.window
            sk.flows = <Flow*>calloc(self.window, sizeof(Flow))
            sk.ready = <int*>calloc(self.window, sizeof(int))
            if not sk.flows or not sk.ready:
                raise MemoryError()
            for j in range(N_IDS):
                sk.id_flow[j] = -1
                sk.free_ids[j] = <uint8_t>j
            sk.free_head = 0
            sk.free_count = N_IDS
            for j in range(self.window):
                sk.flows[j].ident = -1
                sk.ready[j] = j
            sk.ready_head = 0
            sk.ready_count = self.window
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
                free(self.socks[s].flows)
                free(self.socks[s].ready)
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

    cdef inline void _push_ready(self, Sock* sk, int fi) noexcept nogil:
        sk.ready[(sk.ready_head + sk.ready_count) % sk.nflows] = fi
        sk.ready_count += 1

    cdef inline int _pop_ready(self, Sock* sk) noexcept nogil:
        cdef int fi = sk.ready[sk.ready_head]
        sk.ready_head = (sk.ready_head + 1) % sk.nflows
        sk.ready_count -= 1
        return fi

    cdef inline int _take_id(self, Sock* sk) noexcept nogil:
        cdef int ident = sk.free_ids[sk.free_head]
        sk.free_head = (sk.free_head + 1) & (N_IDS - 1)
        sk.free_count -= 1
        return ident

    cdef inline void _give_id(self, Sock* sk, int ident) noexcept nogil:
        sk.free_ids[(sk.free_head + sk.free_count) & (N_IDS - 1)] = <uint8_t>ident
        sk.free_count += 1
        sk.id_flow[ident] = -1

    # -- requests ---------------------------------------------------------------------------------

    cdef Py_ssize_t _build(self, Sock* sk, int si, Flow* f, uint8_t* out, int ident) noexcept:
        """Write the flow's next request into `out`; returns its length. Sets f.auth."""
        cdef int op = _PROGRAMS[f.program][f.step]
        cdef uint8_t* p
        cdef uint8_t* pw
        cdef const uint8_t* key = <const uint8_t*>PyBytes_AS_STRING(self.secret)
        cdef Py_ssize_t klen = PyBytes_GET_SIZE(self.secret)
        cdef Py_ssize_t length, npin, hidden, i, j
        cdef uint64_t r1, r2
        cdef char conf[64]
        cdef char sess[32]
        cdef int conf_len, sess_len
        cdef lg_md5 m
        cdef uint8_t block[16]
        cdef const uint8_t* prev
        cdef const uint8_t* pin
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
            # User-Password, RFC 2865 §5.2: b1 = MD5(S + RA), c1 = p1 xor b1, b2 = MD5(S + c1), ...
            npin = self.pin_len[f.card]
            pin = self.pins + 128 * f.card
            hidden = (npin + 15) & ~15
            p[0] = 2
            p[1] = <uint8_t>(hidden + 2)
            pw = p + 2
            prev = f.auth
            for i in range(0, hidden, 16):
                lg_md5_init(&m)
                lg_md5_update(&m, key, klen)
                lg_md5_update(&m, prev, 16)
                lg_md5_final(&m, block)
                for j in range(16):
                    pw[i + j] = block[j] ^ (pin[i + j] if i + j < npin else 0)
                prev = pw + i
            p += 2 + hidden
            p = _attr(p, 4, self.nas_ip, 4)
            p = _attr(p, 31, <const uint8_t*>PyBytes_AS_STRING(self.calling), PyBytes_GET_SIZE(self.calling))
            if op == OP_NUMBER_AUTH:
                p = _attr(p, 30, <const uint8_t*>PyBytes_AS_STRING(self.called), PyBytes_GET_SIZE(self.called))
                p = self._conf_vsa(p, conf, conf_len)
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
            p = self._conf_vsa(p, conf, conf_len)
            p = _attr32(p, 41, 0)                                   # Acct-Delay-Time
            if op == OP_STOP:
                p = _attr32(p, 46, <uint32_t>(30 + f.call % 271))  # Acct-Session-Time
                p = _attr32(p, 49, 1)                               # Acct-Terminate-Cause User-Request
            length = p - out
            _put16(out + 2, <uint32_t>length)
            # RFC 2866 §3: MD5(Code + Identifier + Length + 16 zero octets + attributes + secret)
            lg_md5_init(&m)
            lg_md5_update(&m, out, length)
            lg_md5_update(&m, key, klen)
            lg_md5_final(&m, out + 4)
            memcpy(f.auth, out + 4, 16)
        return length

    cdef inline uint8_t* _conf_vsa(self, uint8_t* p, const char* conf, int n) noexcept nogil:
        # Vendor-Specific (26), Cisco (9), h323-conf-id (24), RFC 2865 §5.26 suggested format.
        p[0] = 26
        p[1] = <uint8_t>(n + 8)
        _put32(p + 2, 9)
        p[6] = 24
        p[7] = <uint8_t>(n + 2)
        memcpy(p + 8, conf, n)
        return p + 8 + n

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
            fi = self._pop_ready(sk)
            f = &sk.flows[fi]
            ident = self._take_id(sk)
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
                self._give_id(sk, f.ident)
                f.ident = -1
                self._push_ready(sk, self.tx_flow[k])
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
        cdef int ident, fi, op, code, ok
        cdef Flow* f
        cdef Py_ssize_t length, pos, ma = -1, alen
        cdef lg_md5 m
        cdef uint8_t digest[16]
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
        # Response Authenticator: MD5(Code + Identifier + Length + Request Authenticator + attributes + secret)
        lg_md5_init(&m)
        lg_md5_update(&m, pkt, 4)
        lg_md5_update(&m, f.auth, 16)
        lg_md5_update(&m, pkt + 20, length - 20)
        lg_md5_update(&m, key, PyBytes_GET_SIZE(self.secret))
        lg_md5_final(&m, digest)
        if memcmp(digest, pkt + 4, 16) != 0:
            self.bad[op] += 1       # not an answer to this request: keep waiting for the real one
            return
        pos = 20
        while pos < length:
            if pos + 2 > length:
                break
            alen = pkt[pos + 1]
            if alen < 2 or pos + alen > length:
                break
            if pkt[pos] == 80 and alen == 18 and ma < 0:
                ma = pos + 2
            elif (pkt[pos] == 26 and alen >= 8 and pkt[pos + 2] == 0 and pkt[pos + 3] == 0
                  and pkt[pos + 4] == 0 and pkt[pos + 5] == 9 and pkt[pos + 6] == 101):
                credit = True       # Cisco h323-credit-amount
            pos += alen
        if pos != length:
            self._finish(sk, f, fi, op, 2, now, arrived)
            return
        if ma >= 0:
            memcpy(self.scratch, pkt, length)
            memcpy(self.scratch + 4, f.auth, 16)
            memset(self.scratch + ma, 0, 16)
            lg_hmac_run(&self.hmac, self.scratch, length, digest)
            if memcmp(digest, pkt + ma, 16) != 0:
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
        self._give_id(sk, f.ident)
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
        self._push_ready(sk, fi)

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
                    self._give_id(sk, f.ident)
                    f.ident = -1
                    sk.inflight -= 1
                    self._new_flow(f)
                    self._push_ready(sk, j)

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
