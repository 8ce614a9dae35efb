# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""The worker's datagram loop in C: recvmmsg in, common requests answered in place, sendmmsg out.

The Python loop in `radcore.server.Worker.handle_batch` is the reference: it decides every request
the same way, one Python object at a time. At tens of thousands of requests per second those objects
are the cost (a profile of a card authentication put a quarter of the time in the loop itself and a
sixth in one recvfrom/sendto pair per packet), so a worker on Linux runs its batches through a `Lane`:

1. `receive` drains up to `batch_max` datagrams from the worker's sockets with one recvmmsg per
   socket and pass, into buffers allocated once.
2. `serve` walks them in C. A request that a `FastAnswer` (the prepaid card-authentication lane,
   `radcore._cardauth`) can answer without writing anything is answered right there: no Request object,
   no attribute list, just the reply bytes. A request that a `WriteAnswer` (the prepaid write lane,
   `radcore._acctlane`: accounting and number authorization) can decide is applied in its one write
   transaction, and its reply held until that transaction is durable at the end of the walk: committed,
   or, when `_waiting` finds the next batch already queued, journaled (radcore.journal). A journal
   record is flushed on a thread of its own while the lane reads and decides the next batch; its
   batch's replies wait in `Unsettled` (_unsettled.pxi) and leave once the flush is done, checked
   every EARLY_SEND requests of that next walk and at its end. A request that reuses the duplicate-
   cache key of a reply still waiting takes the Python path, which runs after they have left.
   Answers are counted and stored in the duplicate cache exactly as the Python path would store them.
   Everything else (a wrong PIN, an activation, Accounting-On/Off, anything odd or malformed) becomes
   the `(datagram, address, socket, kind)` tuple the Python path takes, in arrival order, after the
   write lane's commit; once the write lane has declined a request that the Python path will act on,
   it leaves the rest of the batch to the Python path too, so no call is applied out of order.
3. The Python path's replies are queued with `queue` instead of being sent one by one, and `flush`
   sends every reply of the batch with one sendmmsg per socket, replies of one size for one
   destination coalesced into UDP GSO messages (`_outbox.pxi`). The read lane's answers go out in
   runs of `EARLY_SEND` while the batch is still being read: a full batch takes milliseconds, and
   the first request in it should not wait for the last.

A retransmission (its key and Request Authenticator already in the duplicate cache) always takes the
Python path, which answers it from the cache: the lane never has to reason about expiry. The cache is
the C one (`radcore._dupcache`), shared with the Python path, so the lane keys it straight from
each datagram's sockaddr.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.dict cimport PyDict_GetItem
from cpython.mem cimport PyMem_Free, PyMem_Malloc
from cpython.ref cimport PyObject
from libc.errno cimport EAGAIN, EINTR, errno
from libc.stdint cimport int64_t, uint8_t, uint16_t, uint32_t, uint64_t
from libc.string cimport memcmp, memcpy, memset, strerror

from radcore._dupcache cimport KEY_SIZE, DuplicateCache, sockaddr_key
from radcore._mmsg cimport (AF_INET, AF_INET6, MSG_DONTWAIT, htonl, htons, inet_ntop, inet_pton, iovec,
                            mmsghdr, msghdr, ntohl, ntohs, recvmmsg, sendmmsg, sockaddr, sockaddr_in,
                            sockaddr_in6, socklen_t)

from radcore.errors import PacketError


cdef enum:
    SLOT = 4096             # a datagram buffer: the largest RADIUS packet (RFC 2865 §3)
    NAME = 128              # sizeof(struct sockaddr_storage)
    MAX_SOCKETS = 8
    ADDR_TEXT = 64          # INET6_ADDRSTRLEN (46) with room to spare
    EARLY_SEND = 32         # lane answers go out in runs of this many, not at the end of the batch


cdef extern from "<poll.h>":
    cdef struct pollfd:
        int fd
        short events
        short revents
    int POLLIN
    int poll(pollfd* fds, unsigned long nfds, int timeout) nogil


#: The port kinds of radcore.dupcache (duplicate-cache key classes).
cdef int AUTH = 0
cdef int ACCT = 1


cdef class FastAnswer:
    """The interface `Lane.serve` calls; the base answers nothing, so every request goes to Python."""

    cdef int begin(self) except -1:
        return 0

    cdef object answer(self, const uint8_t* pkt, Py_ssize_t n, object client):
        return None

    cdef int end(self) except -1:
        return 0


cdef class WriteAnswer:
    """The interface for accounting answered in C; the base answers nothing."""

    cdef int begin(self) except -1:
        return 0

    cdef object account(self, const uint8_t* pkt, Py_ssize_t n, object client, object ip):
        self.inert = False
        return None

    cdef object authorize(self, const uint8_t* pkt, Py_ssize_t n, object client, object ip):
        self.inert = False
        return None

    cdef int commit(self, bint more) except -1:
        return 0

    cdef int settle(self) except -1:
        return 0

    cdef bint flushed(self) except -1:
        return True

    cdef int abort(self) except -1:
        return 0


include "_addresses.pxi"
include "_outbox.pxi"
include "_unsettled.pxi"


cdef class Lane:
    """One worker's sockets and batch buffers (see the module docstring)."""

    cdef int nsocks
    cdef int fds[MAX_SOCKETS]
    cdef int kinds[MAX_SOCKETS]
    cdef list socks                 # the socket objects, by index (kept alive: we hold their fds)
    cdef int cap                    # datagrams per batch (server.batch_max)
    # receive side
    cdef uint8_t* rx                # cap slots of SLOT octets
    cdef uint8_t* rx_names          # cap source addresses of NAME octets
    cdef iovec* rx_iov
    cdef mmsghdr* rx_msg
    cdef int* rx_sock               # socket index of each received datagram
    cdef readonly int received
    cdef uint8_t* fate              # per datagram of the batch: who answers it (see serve)
    cdef readonly int accounted     # of the last serve's answers, how many were Accounting-Requests
    cdef Outbox out                 # replies waiting for sendmmsg: up to 2 * cap (answers + cache resends)
    cdef dict ip_text               # IPv4 address (host order) -> its dotted-quad str
    cdef object config              # the radcore.config.Config the client memo belongs to
    cdef dict clients               # source (IPv4: 32-bit address; IPv6: text) -> Client or None
    cdef int* held_at               # datagrams whose replies wait for the write lane's commit
    cdef Unsettled unsettled        # the last batch's write replies, while its journal record is flushed
    cdef public object on_recv_error   # called with the error text when recvmmsg fails
    cdef public object on_lane_error   # called with the exception when the fast answer raises

    def __cinit__(self, socks, int batch_max):
        cdef int i
        if not 1 <= len(socks) <= MAX_SOCKETS:
            raise ValueError(f"a lane serves 1..{MAX_SOCKETS} sockets, got {len(socks)}")
        if batch_max < 1:
            raise ValueError("batch_max must be positive")
        self.nsocks = len(socks)
        self.socks = []
        for i, (sock, kind) in enumerate(socks):
            self.socks.append(sock)
            self.fds[i] = sock.fileno()
            self.kinds[i] = kind
        self.cap = batch_max
        self.rx = <uint8_t*>PyMem_Malloc(<size_t>batch_max * SLOT)
        self.rx_names = <uint8_t*>PyMem_Malloc(<size_t>batch_max * NAME)
        self.rx_iov = <iovec*>PyMem_Malloc(batch_max * sizeof(iovec))
        self.rx_msg = <mmsghdr*>PyMem_Malloc(batch_max * sizeof(mmsghdr))
        self.rx_sock = <int*>PyMem_Malloc(batch_max * sizeof(int))
        self.fate = <uint8_t*>PyMem_Malloc(batch_max)
        self.held_at = <int*>PyMem_Malloc(batch_max * sizeof(int))
        if (self.rx == NULL or self.rx_names == NULL or self.rx_iov == NULL or self.rx_msg == NULL
                or self.rx_sock == NULL or self.fate == NULL or self.held_at == NULL):
            raise MemoryError()
        self.out = Outbox([sock.fileno() for sock, _ in socks], 2 * batch_max)
        self.unsettled = Unsettled([sock.fileno() for sock, _ in socks], batch_max)
        self.ip_text = {}
        self.config = None
        self.clients = {}
        self.on_recv_error = None
        self.on_lane_error = None

    def __dealloc__(self):
        PyMem_Free(self.rx)
        PyMem_Free(self.rx_names)
        PyMem_Free(self.rx_iov)
        PyMem_Free(self.rx_msg)
        PyMem_Free(self.rx_sock)
        PyMem_Free(self.fate)
        PyMem_Free(self.held_at)

    # -- receive --------------------------------------------------------------------------------

    def receive(self, ready):
        """Drain the sockets at the given indexes round-robin, up to `batch_max` datagrams in all.

        Each pass gives every still-readable socket an equal share of what is left, so a flood on
        one port cannot starve the other. Returns how many datagrams were received.
        """
        cdef int active[MAX_SOCKETS]
        cdef int nactive = 0, still, j, k, got, share, want, err
        cdef int total = 0
        for k in ready:
            active[nactive] = k
            nactive += 1
        while nactive and total < self.cap:
            share = (self.cap - total) // nactive
            if share < 1:
                share = 1
            still = 0
            for j in range(nactive):
                k = active[j]
                want = self.cap - total
                if want > share:
                    want = share
                if want <= 0:
                    break
                got = self._recv(k, total, want, &err)
                if got < 0:
                    if err != EAGAIN and err != EINTR and self.on_recv_error is not None:
                        self.on_recv_error(strerror(err).decode())
                    continue
                total += got
                if got == want:
                    active[still] = k
                    still += 1
            nactive = still
        self.received = total
        return total

    def spin(self, double seconds):
        """Poll the sockets without sleeping for up to `seconds`; the indexes of those with datagrams.

        A worker that has just answered a batch calls this before it blocks in epoll: more requests
        usually follow within microseconds, and reading them straight away saves the wakeup of a
        sleeping process (tens of microseconds on a virtual machine, where an idle vCPU is halted).
        """
        cdef pollfd pfds[MAX_SOCKETS]
        cdef int k, got
        cdef int64_t deadline = _monotonic_ns() + <int64_t>(seconds * 1e9)
        for k in range(self.nsocks):
            pfds[k].fd = self.fds[k]
            pfds[k].events = POLLIN
        while True:
            with nogil:
                got = poll(pfds, self.nsocks, 0)
            if got > 0:
                return [k for k in range(self.nsocks) if pfds[k].revents & POLLIN]
            if got < 0 and errno != EINTR:
                return []
            if _monotonic_ns() >= deadline:
                return []

    cdef bint _waiting(self) except -1:
        """Whether a socket already holds the next batch's datagrams (one poll, no waiting)."""
        return bool(self.spin(0))

    cdef int _recv(self, int k, int first, int want, int* err) noexcept:
        cdef int i, got
        for i in range(first, first + want):
            self.rx_iov[i].iov_base = self.rx + <size_t>i * SLOT
            self.rx_iov[i].iov_len = SLOT
            memset(&self.rx_msg[i], 0, sizeof(mmsghdr))
            self.rx_msg[i].msg_hdr.msg_name = self.rx_names + <size_t>i * NAME
            self.rx_msg[i].msg_hdr.msg_namelen = NAME
            self.rx_msg[i].msg_hdr.msg_iov = &self.rx_iov[i]
            self.rx_msg[i].msg_hdr.msg_iovlen = 1
        with nogil:
            got = recvmmsg(self.fds[k], &self.rx_msg[first], want, MSG_DONTWAIT, NULL)
        if got < 0:
            err[0] = errno
            return -1
        for i in range(first, first + got):
            self.rx_sock[i] = k
        return got

    # -- serve ----------------------------------------------------------------------------------

    def serve(self, FastAnswer fast, config, DuplicateCache cache, WriteAnswer write=None):
        """Answer what `fast` and `write` can; return (answered, [(datagram, address, socket, kind), ...]
        for the rest, in arrival order). `accounted` then holds how many of `answered` were
        Accounting-Requests.

        `fast` answers Access-Requests from a read transaction; `write` answers Accounting-Requests
        in one write transaction whose replies are held until it is durable: a commit, or a journal
        record whose flush this call may leave running (`settle` and the next `serve` send those
        replies once it is done, and count them in their `answered`). Either may be
        None (everything goes to the Python path, still batched on the wire). `config` is the
        worker's radcore.config.Config (its clients), `cache` its duplicate cache (the C one, which
        the Python path uses too), whose entries the lane writes as `store` would, with one expiry
        time and one trim per batch.

        Once `write` declines a request that the Python path will act on, the rest of the batch's
        accounting goes there too, after it, so no call's packets are applied out of order. If the
        write transaction fails, everything it held takes the Python path instead.
        """
        cdef list rest = []
        cdef list held = []             # replies awaiting the commit; their datagrams are in held_at
        cdef int* held_at = self.held_at
        cdef set held_keys = set()      # their duplicate-cache keys, as bytes
        cdef int i, j, k, kind
        cdef Py_ssize_t n
        cdef const uint8_t* pkt
        cdef uint8_t key[KEY_SIZE]
        cdef bytes key_bytes
        cdef object client, wire
        cdef int answered = 0, released
        cdef bint began = False, wbegan = False, committed = False, flushing = False
        cdef bint enabled = fast is not None
        cdef bint writing = write is not None
        cdef bint caching = cache.seconds > 0
        cdef double now = cache.clock() if caching else 0   # one expiry time for the batch's entries
        cdef double expires = now + cache.seconds
        cdef uint8_t* fate = self.fate  # 0: Python path, 1: answered, 2: held for the commit
        memset(fate, 0, self.received)
        self.accounted = 0
        if config is not self.config:
            self.config = config
            self.clients = {}
        try:
            for i in range(self.received):
                if (i & (EARLY_SEND - 1)) == 0 and self.unsettled.ready():
                    # The previous batch's record is on disk: its replies need not wait for the
                    # end of this walk, and the switches' next requests may arrive during it.
                    released = self._settle(cache, held, fate)
                    if released >= 0:
                        answered += released
                    else:
                        writing = False
                pkt = self.rx + <size_t>i * SLOT
                n = self.rx_msg[i].msg_len
                if n < 20:
                    continue
                k = self.rx_sock[i]
                kind = self.kinds[k]
                if not (((enabled or writing) and kind == AUTH and pkt[0] == 1)
                        or (writing and kind == ACCT and pkt[0] == 4)):
                    continue
                if sockaddr_key(<const sockaddr*>(self.rx_names + <size_t>i * NAME), pkt[1], kind, key) < 0:
                    continue
                client = self._client_at(i)
                if client is None:
                    continue
                # Same key and authenticator: a retransmission, answered from the cache by the
                # Python path. Same key, new authenticator: a new request that reuses the
                # Identifier, and its reply replaces the entry.
                if cache.holds(key, pkt + 4) or self.unsettled.holds(key):
                    continue
                if kind == AUTH and enabled:
                    wire = None
                    try:
                        if not began:
                            began = True
                            fast.begin()
                        wire = fast.answer(pkt, n, client)
                    except Exception as exc:
                        # The store failed under the lane (a reader-table or I/O error): stop
                        # using it for this batch; the Python path meets the same error and
                        # answers as the handler documents (or not at all).
                        enabled = False
                        if self.on_lane_error is not None:
                            self.on_lane_error(exc)
                    if wire is not None:
                        self.out.add(k, wire, self.rx_names + <size_t>i * NAME, self.rx_msg[i].msg_hdr.msg_namelen)
                        if caching:
                            cache.put(key, pkt + 4, wire, expires)
                        fate[i] = 1
                        answered += 1
                        if self.out.length >= EARLY_SEND:
                            self.out.send()  # don't hold answers back for a whole batch
                        continue
                if not writing:
                    continue
                # Writes: accounting, and the Access-Requests the read lane declined (number
                # authorizations among them).
                key_bytes = PyBytes_FromStringAndSize(<const char*>key, KEY_SIZE)
                if key_bytes in held_keys:
                    writing = False  # the same Identifier twice in one batch: keep it simple
                    continue
                wire = None
                try:
                    if not wbegan:
                        wbegan = True
                        write.begin()
                    if kind == ACCT:
                        wire = write.account(pkt, n, client, self._ip_text(i))
                    else:
                        wire = write.authorize(pkt, n, client, self._ip_text(i))
                except Exception as exc:
                    writing = False
                    self._drop_held(held, fate)
                    if self.on_lane_error is not None:
                        self.on_lane_error(exc)
                    continue
                if wire is None:
                    if not write.inert:
                        writing = False
                    continue
                held_at[len(held)] = i
                held.append(wire)
                held_keys.add(key_bytes)
                fate[i] = 2
            # The previous batch's replies, once its journal record is on disk: its flush ran
            # while this batch was read and decided.
            released = self._settle(cache, held, fate)
            if released >= 0:
                answered += released
            if wbegan and held:
                try:
                    flushing = write.commit(self.received >= self.cap or self._waiting())
                    committed = True
                except Exception as exc:
                    self._drop_held(held, fate)
                    if self.on_lane_error is not None:
                        self.on_lane_error(exc)
        finally:
            if began:
                fast.end()
            if wbegan and not committed:
                write.abort()
        for j in range(len(held)):  # durable now, or once the journal record is flushed
            i = held_at[j]
            wire = held[j]
            k = self.rx_sock[i]
            pkt = self.rx + <size_t>i * SLOT
            sockaddr_key(<const sockaddr*>(self.rx_names + <size_t>i * NAME), pkt[1], self.kinds[k], key)
            if flushing:
                self.unsettled.add(write, k, wire, self.rx_names + <size_t>i * NAME,
                                   self.rx_msg[i].msg_hdr.msg_namelen, key, pkt + 4, self.kinds[k] == ACCT,
                                   expires)
                continue
            self.out.add(k, wire, self.rx_names + <size_t>i * NAME, self.rx_msg[i].msg_hdr.msg_namelen)
            if self.kinds[k] == ACCT:
                self.accounted += 1
            if caching:
                cache.put(key, pkt + 4, wire, expires)
        if not flushing:
            answered += len(held)
        if caching:
            cache.trim(now)
        for i in range(self.received):
            if fate[i] == 0:
                k = self.rx_sock[i]
                rest.append((PyBytes_FromStringAndSize(<const char*>self.rx + <size_t>i * SLOT,
                                                       self.rx_msg[i].msg_len),
                             self._address(i), self.socks[k], self.kinds[k]))
        return answered, rest

    cdef int _settle(self, DuplicateCache cache, list held, uint8_t* fate) except -2:
        """Release the unsettled replies (see Unsettled.settle), counting them in `accounted`. If
        their batch was lost, so is its transaction with this batch's writes so far: those (`held`)
        go to the Python path, and -1 is returned."""
        cdef int accounting = self.unsettled.accounting
        cdef int released = self.unsettled.settle(cache, self.on_lane_error)
        if released > 0:
            self.accounted += accounting
        elif released < 0:
            self._drop_held(held, fate)
        return released

    def settle(self, DuplicateCache cache):
        """Release the replies of a batch whose journal record was still being flushed when `serve`
        returned: before anything else in the worker writes, and before it goes idle. Returns
        (replies released, how many of them answer Accounting-Requests); they are sent at once."""
        self.accounted = 0
        released = self._settle(cache, [], self.fate)
        return max(released, 0), self.accounted

    cdef int _drop_held(self, list held, uint8_t* fate) except -1:
        """The write transaction is lost: what it held goes to the Python path."""
        cdef Py_ssize_t j
        for j in range(len(held)):
            fate[self.held_at[j]] = 0
        del held[:]
        return 0

    cdef object _client_at(self, int i):
        """`config.client_for(ip)` of datagram i's source, memoised until the config is replaced
        (IPv4 sources by their 32-bit address, so a hit builds no text)."""
        cdef const sockaddr* sa = <const sockaddr*>(self.rx_names + <size_t>i * NAME)
        cdef object source
        cdef PyObject* hit
        if sa.sa_family == AF_INET:
            source = ntohl((<const sockaddr_in*>sa).sin_addr.s_addr)
        else:
            source = self._ip_text(i)
        hit = PyDict_GetItem(self.clients, source)
        if hit != NULL:
            return <object>hit
        client = self.config.client_for(self._ip_text(i))
        if len(self.clients) > 65536:
            self.clients.clear()
        self.clients[source] = client
        return client

    cdef str _ip_text(self, int i):
        """Datagram i's source address as text, as the socket module reports it (IPv4 memoised)."""
        return _source_text(<const sockaddr*>(self.rx_names + <size_t>i * NAME), self.ip_text)

    cdef object _address(self, int i):
        """The source as Python's socket module reports it: (ip, port) or (ip, port, flow, scope)."""
        return _source_address(<const sockaddr*>(self.rx_names + <size_t>i * NAME), self.ip_text)

    # -- send (radcore/_outbox.pxi) ----------------------------------------------------------------

    def queue(self, sock, bytes wire, addr):
        """Send `wire` to `addr` (a socket-module address tuple) from `sock` at the next `flush`."""
        cdef uint8_t name[NAME]
        cdef int k = self.socks.index(sock)
        self.out.add(k, wire, name, _sockaddr_of(addr, name))

    @property
    def held_replies(self):
        """Replies waiting for their journal record's flush (see `settle`)."""
        return self.unsettled.length

    @property
    def gso(self):
        """Whether replies of one size for one destination still leave as one UDP GSO message."""
        return self.out.gso and self.unsettled.out.gso

    def flush(self):
        """Send every queued reply, one sendmmsg per run of replies on the same socket.

        Returns (sent, [(address text, error text), ...]) since the last flush, including what
        `serve` already sent early; refused replies (a full send buffer, an unreachable route) are
        dropped, as a single sendto failure would be.
        """
        sent, failed = self.out.flush()
        early, refused = self.unsettled.results()
        return sent + early, failed + refused

