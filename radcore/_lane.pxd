# Declarations of the worker's C batch loop (radcore/_lane.pyx), so a prepaid module can plug a fast
# answer into it without the loop knowing anything about cards.

from libc.stdint cimport int64_t, uint8_t
from posix.time cimport CLOCK_MONOTONIC, clock_gettime, timespec


cdef inline int64_t _monotonic_ns() noexcept nogil:
    # CLOCK_MONOTONIC in nanoseconds: the batch loop's poll deadlines, the write lane's checkpoint age.
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return <int64_t>ts.tv_sec * 1000000000 + ts.tv_nsec


cdef class FastAnswer:
    # Answers the common requests of a batch in C; anything it declines takes the Python path.
    # Called before the first `answer` of a batch, and `end` after its last.
    cdef int begin(self) except -1
    # The reply datagram for one verified-by-you request, or None to hand it to the Python path.
    # `pkt` is the datagram (`n` octets as received); `client` is the radcore.config.Client.
    cdef object answer(self, const uint8_t* pkt, Py_ssize_t n, object client)
    cdef int end(self) except -1


cdef class WriteAnswer:
    # Answers the common Accounting-Requests of a batch in C inside one write transaction; its
    # replies are held by the lane and sent only after `commit` has made the writes durable.
    # `begin` opens the transaction before the first `account` of a batch.
    cdef int begin(self) except -1
    # The reply datagram for one request, or None to hand it to the Python path. After None,
    # `inert` says whether the request could change nothing there (a bad authenticator: dropped),
    # so later requests may still be answered here without reordering anything that matters.
    cdef object account(self, const uint8_t* pkt, Py_ssize_t n, object client, object ip)
    # The same for an Access-Request the read lane (FastAnswer) declined: a number authorization.
    cdef object authorize(self, const uint8_t* pkt, Py_ssize_t n, object client, object ip)
    cdef bint inert
    # Make everything `account` wrote durable before its replies leave: a commit, or, where `more`
    # requests are already waiting, possibly a journal append that a later commit catches up with
    # (radcore.journal). `abort` forgets what this batch wrote. `commit` returns 1 when the append
    # is still being flushed: then the replies wait for `settle`, which returns once they may leave
    # and raises if the batch was lost; the lane calls it before the next `commit`. `flushed` says
    # whether `settle` would return at once.
    cdef int commit(self, bint more) except -1
    cdef int settle(self) except -1
    cdef bint flushed(self) except -1
    cdef int abort(self) except -1
