# Declarations of the worker's C batch loop (radcore/_lane.pyx), so a prepaid module can plug a fast
# answer into it without the loop knowing anything about cards.

from libc.stdint cimport uint8_t


cdef class FastAnswer:
    # Answers the common requests of a batch in C; anything it declines takes the Python path.
    # Called before the first `answer` of a batch, and `end` after its last.
    cdef int begin(self) except -1
    # The reply datagram for one verified-by-you request, or None to hand it to the Python path.
    # `pkt` is the datagram (`n` octets as received); `client` is the radcore.config.Client.
    cdef object answer(self, const uint8_t* pkt, Py_ssize_t n, object client)
    cdef int end(self) except -1
