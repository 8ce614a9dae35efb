# The send side of the worker's batch loop (included by radcore/_lane.pyx): replies queued with their
# destination sockaddr and sent with one sendmmsg per run of replies on the same socket.
#
# On loopback and on most NICs the cost of a small datagram is its trip through the stack, not its
# bytes: a profile of the full call flow put 28 % of the worker in sendmmsg (route, IP output,
# queueing, and on loopback the receiver's softirq). So replies of equal size for the same
# destination go out as one UDP GSO message (UDP_SEGMENT, Linux 4.18): the stack is walked once and
# the segments are cut at the end, each an ordinary datagram on the wire. That took an accounting
# request's socket time from 6.2 to 1.2 µs under the profiler (README, Benchmarks). A switch sends
# all its RADIUS traffic from one address and port, so under load most of a batch's replies share a
# destination. A path that cannot segment (no checksum offload, a socket without UDP checksums)
# refuses the first such message; the outbox then sends its replies one by one and, if they go,
# stops coalescing.

from libc.errno cimport EINVAL, EIO, EOPNOTSUPP


cdef extern from *:
    """
    #include <string.h>
    #include <sys/socket.h>
    #include <netinet/udp.h>
    #ifndef UDP_SEGMENT
    #define UDP_SEGMENT 103
    #endif
    #ifndef SOL_UDP
    #define SOL_UDP 17
    #endif
    #define RADCORE_GSO_CTL CMSG_SPACE(sizeof(uint16_t))

    /* Make `h` one UDP GSO message: its payload is cut into `size`-octet datagrams. */
    static void radcore_udp_segment(struct msghdr* h, char* buf, uint16_t size) {
        struct cmsghdr* c;
        h->msg_control = buf;
        h->msg_controllen = RADCORE_GSO_CTL;
        c = CMSG_FIRSTHDR(h);
        c->cmsg_level = SOL_UDP;
        c->cmsg_type = UDP_SEGMENT;
        c->cmsg_len = CMSG_LEN(sizeof(uint16_t));
        memcpy(CMSG_DATA(c), &size, sizeof(uint16_t));
    }
    """
    int GSO_CTL "RADCORE_GSO_CTL"
    void radcore_udp_segment(msghdr* h, char* buf, uint16_t size) nogil


cdef enum:
    GSO_SEGMENTS = 64       # datagrams per GSO message (the kernel's UDP_MAX_SEGMENTS is 64 or more)
    GSO_MAX_SIZE = 512      # larger replies go alone: a segment must fit the path MTU (IPv4's minimum is 576)


cdef inline uint64_t _group_hash(const uint8_t* name, socklen_t namelen, size_t size) noexcept:
    """FNV-1a over a destination and a reply size: which replies may share a GSO message."""
    cdef uint64_t h = <uint64_t>0xcbf29ce484222325 ^ size
    cdef socklen_t b
    for b in range(namelen):
        h = (h ^ name[b]) * <uint64_t>0x100000001b3
    return h ^ (h >> 29)


cdef class Outbox:
    """Up to `capacity` replies waiting to be sent; a full outbox sends before it takes more."""

    cdef int nsocks
    cdef int fds[MAX_SOCKETS]
    cdef int capacity
    cdef readonly int length        # replies queued now
    cdef readonly bint gso          # replies of one size and destination leave as one GSO message
    cdef uint8_t* names             # destination sockaddrs, NAME octets each
    cdef iovec* iov
    cdef mmsghdr* msg
    cdef int* sock                  # socket index of each queued reply
    cdef list keep                  # the reply bytes the iovecs point into, alive until sent
    cdef int sent                   # replies sent since the last flush
    cdef list failed                # (address, error) of replies refused since the last flush
    # the coalesced form of one socket's run: messages over a reordered copy of the iovecs
    cdef iovec* giov                # the run's iovecs, grouped
    cdef int* member                # the queued reply behind each of them
    cdef mmsghdr* gmsg
    cdef int* gfirst                # per message: its first entry in giov ...
    cdef int* gcount                # ... and how many replies it carries
    cdef char* gctl                 # per message: room for its UDP_SEGMENT control message
    cdef int* gnext                 # per queued reply: the next one of its group (-1: the last)
    cdef int* gtail                 # per queued reply heading a group: its group's last; else -1
    cdef int* table                 # open addressing over group heads: a power of two >= 2 * run slots

    def __cinit__(self, fds, int capacity):
        cdef int k
        if not 1 <= len(fds) <= MAX_SOCKETS or capacity < 1:
            raise ValueError("an outbox needs 1..MAX_SOCKETS sockets and room for a reply")
        self.nsocks = len(fds)
        for k in range(self.nsocks):
            self.fds[k] = fds[k]
        self.capacity = capacity
        self.gso = True
        self.names = <uint8_t*>PyMem_Malloc(<size_t>capacity * NAME)
        self.iov = <iovec*>PyMem_Malloc(capacity * sizeof(iovec))
        self.msg = <mmsghdr*>PyMem_Malloc(capacity * sizeof(mmsghdr))
        self.sock = <int*>PyMem_Malloc(capacity * sizeof(int))
        self.giov = <iovec*>PyMem_Malloc(capacity * sizeof(iovec))
        self.member = <int*>PyMem_Malloc(capacity * sizeof(int))
        self.gmsg = <mmsghdr*>PyMem_Malloc(capacity * sizeof(mmsghdr))
        self.gfirst = <int*>PyMem_Malloc(capacity * sizeof(int))
        self.gcount = <int*>PyMem_Malloc(capacity * sizeof(int))
        self.gctl = <char*>PyMem_Malloc(<size_t>capacity * GSO_CTL)
        self.gnext = <int*>PyMem_Malloc(capacity * sizeof(int))
        self.gtail = <int*>PyMem_Malloc(capacity * sizeof(int))
        self.table = <int*>PyMem_Malloc(4 * capacity * sizeof(int))
        if (self.names == NULL or self.iov == NULL or self.msg == NULL or self.sock == NULL
                or self.giov == NULL or self.member == NULL or self.gmsg == NULL or self.gfirst == NULL
                or self.gcount == NULL or self.gctl == NULL or self.gnext == NULL or self.gtail == NULL
                or self.table == NULL):
            raise MemoryError()
        self.keep = []
        self.failed = []

    def __dealloc__(self):
        PyMem_Free(self.names)
        PyMem_Free(self.iov)
        PyMem_Free(self.msg)
        PyMem_Free(self.sock)
        PyMem_Free(self.giov)
        PyMem_Free(self.member)
        PyMem_Free(self.gmsg)
        PyMem_Free(self.gfirst)
        PyMem_Free(self.gcount)
        PyMem_Free(self.gctl)
        PyMem_Free(self.gnext)
        PyMem_Free(self.gtail)
        PyMem_Free(self.table)

    cdef int add(self, int k, bytes wire, const uint8_t* name, socklen_t namelen) except -1:
        """Queue `wire` for the sockaddr `name` on socket index `k`."""
        cdef int j
        if self.length == self.capacity:
            self.send()
        j = self.length
        memcpy(self.names + <size_t>j * NAME, name, namelen)
        self.iov[j].iov_base = PyBytes_AS_STRING(wire)
        self.iov[j].iov_len = PyBytes_GET_SIZE(wire)
        memset(&self.msg[j], 0, sizeof(mmsghdr))
        self.msg[j].msg_hdr.msg_name = self.names + <size_t>j * NAME
        self.msg[j].msg_hdr.msg_namelen = namelen
        self.msg[j].msg_hdr.msg_iov = &self.iov[j]
        self.msg[j].msg_hdr.msg_iovlen = 1
        self.sock[j] = k
        self.keep.append(wire)
        self.length += 1
        return 0

    cdef object flush(self):
        """Send what is queued; (sent, [(address text, error text), ...]) since the last flush."""
        self.send()
        result = (self.sent, self.failed)
        self.sent = 0
        self.failed = []
        return result

    cdef int send(self) except -1:
        """Send every queued reply, socket by socket; a refused reply is recorded and skipped."""
        cdef int start = 0, end
        while start < self.length:
            end = start + 1
            while end < self.length and self.sock[end] == self.sock[start]:
                end += 1
            if self.gso and end - start > 1:
                self._send_grouped(start, end)
            else:
                self._send_each(start, end)
            start = end
        self.length = 0
        self.keep = []
        return 0

    cdef int _send_each(self, int start, int end) except -1:
        """One datagram per message, one sendmmsg for the run."""
        cdef int got, err
        cdef int fd = self.fds[self.sock[start]]
        while start < end:
            with nogil:
                got = sendmmsg(fd, &self.msg[start], end - start, MSG_DONTWAIT)
            if got < 0:
                err = errno
                if err == EINTR:
                    continue
                self.failed.append((self._name_text(start), strerror(err).decode()))
                start += 1  # the first message failed; the rest may still go
                continue
            self.sent += got
            start += got
        return 0

    cdef int _send_grouped(self, int start, int end) except -1:
        """The run's replies grouped by destination and size into GSO messages, one sendmmsg."""
        cdef int n = end - start, m, r = 0, i, got, err, before
        cdef int fd = self.fds[self.sock[start]]
        self._chain(start, end)
        m = self._lay_out(start, end)
        while r < m:
            with nogil:
                got = sendmmsg(fd, &self.gmsg[r], m - r, MSG_DONTWAIT)
            if got < 0:
                err = errno
                if err == EINTR:
                    continue
                if self.gcount[r] > 1 and (err == EIO or err == EINVAL or err == EOPNOTSUPP):
                    # The path may not segment, or the destination is refused (port 0 is EINVAL
                    # too): the message's replies go alone, and if that works, so does the rest.
                    before = self.sent
                    self._send_alone(self.gfirst[r], self.gfirst[r] + self.gcount[r])
                    r += 1
                    if self.sent > before:
                        self.gso = False
                        self._send_alone(self.gfirst[r] if r < m else n, n)
                        return 0
                    continue
                for i in range(self.gfirst[r], self.gfirst[r] + self.gcount[r]):
                    self.failed.append((self._name_text(self.member[i]), strerror(err).decode()))
                r += 1
                continue
            for i in range(r, r + got):
                self.sent += self.gcount[i]
            r += got
        return 0

    cdef int _chain(self, int start, int end) except -1:
        """Link each reply of the run to the first queued one of its group (same destination, same
        size, at most GSO_MAX_SIZE): `gtail` >= 0 marks a group's head, `gnext` walks it."""
        cdef int tsize = 1, j, g
        cdef size_t size
        cdef uint64_t slot
        cdef socklen_t namelen
        cdef const uint8_t* name
        while tsize < 2 * (end - start):
            tsize *= 2
        memset(self.table, 0xFF, tsize * sizeof(int))
        for j in range(start, end):
            self.gnext[j] = -1
            self.gtail[j] = j
            size = self.iov[j].iov_len
            if size > GSO_MAX_SIZE:
                continue
            name = self.names + <size_t>j * NAME
            namelen = self.msg[j].msg_hdr.msg_namelen
            slot = _group_hash(name, namelen, size) & (tsize - 1)
            while True:
                g = self.table[slot]
                if g < 0:
                    self.table[slot] = j
                    break
                if (self.iov[g].iov_len == size and self.msg[g].msg_hdr.msg_namelen == namelen
                        and memcmp(self.names + <size_t>g * NAME, name, namelen) == 0):
                    self.gnext[self.gtail[g]] = j
                    self.gtail[g] = j
                    self.gtail[j] = -1
                    break
                slot = (slot + 1) & (tsize - 1)
        return 0

    cdef int _lay_out(self, int start, int end) except -1:
        """The groups as messages of up to GSO_SEGMENTS replies, in order of their first reply;
        returns how many messages."""
        cdef int i = 0, j, g, count, first, m = 0
        cdef size_t size
        for j in range(start, end):
            if self.gtail[j] < 0:
                continue
            size = self.iov[j].iov_len
            g = j
            while g >= 0:
                first = i
                count = 0
                while g >= 0 and count < GSO_SEGMENTS:
                    self.giov[i] = self.iov[g]
                    self.member[i] = g
                    i += 1
                    count += 1
                    g = self.gnext[g]
                memset(&self.gmsg[m], 0, sizeof(mmsghdr))
                self.gmsg[m].msg_hdr.msg_name = self.msg[j].msg_hdr.msg_name
                self.gmsg[m].msg_hdr.msg_namelen = self.msg[j].msg_hdr.msg_namelen
                self.gmsg[m].msg_hdr.msg_iov = &self.giov[first]
                self.gmsg[m].msg_hdr.msg_iovlen = count
                if count > 1:
                    radcore_udp_segment(&self.gmsg[m].msg_hdr, self.gctl + <size_t>m * GSO_CTL,
                                        <uint16_t>size)
                self.gfirst[m] = first
                self.gcount[m] = count
                m += 1
        return m

    cdef int _send_alone(self, int first, int last) except -1:
        """The replies behind giov[first:last], one datagram each."""
        cdef int i
        for i in range(first, last):
            self._send_each(self.member[i], self.member[i] + 1)
        return 0

    cdef str _name_text(self, int j):
        cdef const sockaddr* sa = <const sockaddr*>(self.names + <size_t>j * NAME)
        cdef char text[ADDR_TEXT]
        if sa.sa_family == AF_INET:
            inet_ntop(AF_INET, &(<const sockaddr_in*>sa).sin_addr, text, ADDR_TEXT)
        elif sa.sa_family == AF_INET6:
            inet_ntop(AF_INET6, &(<const sockaddr_in6*>sa).sin6_addr, text, ADDR_TEXT)
        else:
            return "?"
        return text.decode("ascii")
