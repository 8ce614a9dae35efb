# The send side of the worker's batch loop (included by radcore/_lane.pyx): replies queued with their
# destination sockaddr and sent with one sendmmsg per run of replies on the same socket.


cdef class Outbox:
    """Up to `capacity` replies waiting to be sent; a full outbox sends before it takes more."""

    cdef int nsocks
    cdef int fds[MAX_SOCKETS]
    cdef int capacity
    cdef readonly int length        # replies queued now
    cdef uint8_t* names             # destination sockaddrs, NAME octets each
    cdef iovec* iov
    cdef mmsghdr* msg
    cdef int* sock                  # socket index of each queued reply
    cdef list keep                  # the reply bytes the iovecs point into, alive until sent
    cdef int sent                   # replies sent since the last flush
    cdef list failed                # (address, error) of replies refused since the last flush

    def __cinit__(self, fds, int capacity):
        cdef int k
        if not 1 <= len(fds) <= MAX_SOCKETS or capacity < 1:
            raise ValueError("an outbox needs 1..MAX_SOCKETS sockets and room for a reply")
        self.nsocks = len(fds)
        for k in range(self.nsocks):
            self.fds[k] = fds[k]
        self.capacity = capacity
        self.names = <uint8_t*>PyMem_Malloc(<size_t>capacity * NAME)
        self.iov = <iovec*>PyMem_Malloc(capacity * sizeof(iovec))
        self.msg = <mmsghdr*>PyMem_Malloc(capacity * sizeof(mmsghdr))
        self.sock = <int*>PyMem_Malloc(capacity * sizeof(int))
        if self.names == NULL or self.iov == NULL or self.msg == NULL or self.sock == NULL:
            raise MemoryError()
        self.keep = []
        self.failed = []

    def __dealloc__(self):
        PyMem_Free(self.names)
        PyMem_Free(self.iov)
        PyMem_Free(self.msg)
        PyMem_Free(self.sock)

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
        """One sendmmsg per run of replies on the same socket; a refused reply is recorded and skipped."""
        cdef int start = 0, end, got, sent = 0, err
        cdef list failed = self.failed
        while start < self.length:
            end = start + 1
            while end < self.length and self.sock[end] == self.sock[start]:
                end += 1
            while start < end:
                with nogil:
                    got = sendmmsg(self.fds[self.sock[start]], &self.msg[start], end - start, MSG_DONTWAIT)
                if got < 0:
                    err = errno
                    if err == EINTR:
                        continue
                    failed.append((self._name_text(start), strerror(err).decode()))
                    start += 1  # the first message failed; the rest may still go
                    continue
                sent += got
                start += got
            start = end
        self.length = 0
        self.keep = []
        self.sent += sent
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
