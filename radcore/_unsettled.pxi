# Replies whose journal record is still being flushed. Included by _lane.pyx, after _outbox.pxi.
#
# Under a backlog the write lane journals a batch and flushes the record on a thread of its own
# (radcore._acctlane, _syncer.pxi) while the lane reads and decides the next batch. The batch's
# replies wait here meanwhile: they leave, and enter the duplicate cache, only once the record is
# on disk, or are dropped if the flush failed (the switch retransmits, and the Python path then
# decides the request again from what the store holds).


cdef class Unsettled:
    """One batch's held replies, with what the duplicate cache needs of each request."""

    cdef Outbox out                 # the replies, sent only by `release`
    cdef uint8_t* ids               # per reply: its duplicate-cache key, then the Request Authenticator
    cdef set keys                   # the same keys as bytes
    cdef readonly int accounting    # how many of them answer Accounting-Requests
    cdef double expires             # their duplicate-cache expiry
    cdef WriteAnswer by             # whose `settle` says when they may leave

    def __cinit__(self, fds, int capacity):
        self.out = Outbox(fds, capacity)
        self.ids = <uint8_t*>PyMem_Malloc(<size_t>capacity * (KEY_SIZE + 16))
        if self.ids == NULL:
            raise MemoryError()
        self.keys = set()

    def __dealloc__(self):
        PyMem_Free(self.ids)

    @property
    def length(self):
        return self.out.length

    cdef int add(self, WriteAnswer by, int k, bytes wire, const uint8_t* name, socklen_t namelen,
                 const uint8_t* key, const uint8_t* auth, bint accounting, double expires) except -1:
        """Hold `wire` (for `name` on socket `k`) until `by.settle()`; at most `capacity` at a time."""
        cdef int j = self.out.length
        if j == self.out.capacity:
            raise RuntimeError("more unsettled replies than a batch holds")
        self.out.add(k, wire, name, namelen)
        memcpy(self.ids + <size_t>j * (KEY_SIZE + 16), key, KEY_SIZE)
        memcpy(self.ids + <size_t>j * (KEY_SIZE + 16) + KEY_SIZE, auth, 16)
        self.keys.add(PyBytes_FromStringAndSize(<const char*>key, KEY_SIZE))
        self.accounting += accounting
        self.expires = expires
        self.by = by
        return 0

    cdef bint ready(self) except -1:
        """Whether there are held replies and `settle` would release them without waiting."""
        return self.out.length > 0 and self.by.flushed()

    cdef bint holds(self, const uint8_t* key) except -1:
        """Whether a held reply answers a request with this duplicate-cache key: a request reusing
        the key (a retransmission, or a new request with the same Identifier) must wait for it."""
        return self.out.length > 0 and PyBytes_FromStringAndSize(<const char*>key, KEY_SIZE) in self.keys

    cdef int settle(self, DuplicateCache cache, object on_error) except -2:
        """Wait until the held replies may leave, then send them and cache them; returns how many
        left, or -1 if their batch was lost (they are dropped and `on_error` gets the reason)."""
        cdef int j, n = self.out.length
        cdef uint8_t* ids
        if not n:
            return 0
        try:
            self.by.settle()
        except Exception as exc:
            self._forget()
            if on_error is not None:
                on_error(exc)
            return -1
        if cache.seconds > 0:
            for j in range(n):
                ids = self.ids + <size_t>j * (KEY_SIZE + 16)
                cache.put(ids, ids + KEY_SIZE, self.out.keep[j], self.expires)
        self.out.send()
        self._forget()
        return n

    cdef int _forget(self) except -1:
        self.out.length = 0
        self.out.keep = []
        self.keys.clear()
        self.accounting = 0
        self.by = None
        return 0

    cdef object results(self):
        """(sent, [(address text, error text), ...]) since the last call, as Outbox.flush reports."""
        result = (self.out.sent, self.out.failed)
        self.out.sent = 0
        self.out.failed = []
        return result
