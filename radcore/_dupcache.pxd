# Declarations of the duplicate cache in C (radcore/_dupcache.pyx), so the worker's batch loop
# (radcore/_lane.pyx) can look up and store entries by a key built from a sockaddr, with no Python
# objects per datagram.

from cpython.ref cimport PyObject
from libc.stdint cimport int32_t, uint8_t, uint64_t

from radcore._mmsg cimport sockaddr


cdef enum:
    # family (4 or 6), Identifier, code class, 0, port (2, host order), 0, 0, address (16)
    KEY_SIZE = 24
    AUTH_SIZE = 16


cdef struct Entry:
    uint8_t key[KEY_SIZE]
    uint8_t auth[AUTH_SIZE]
    double expires
    PyObject* reply          # a strong reference to the reply bytes
    uint64_t hash
    int32_t older            # insertion order, -1 at the ends; `newer` also chains the free entries
    int32_t newer


# The key of a datagram from `sa` with this Identifier and code class (radcore.dupcache.AUTH/ACCT);
# -1 if the address family is neither IPv4 nor IPv6.
cdef int sockaddr_key(const sockaddr* sa, uint8_t ident, int kind, uint8_t* key) noexcept


cdef class DuplicateCache:
    cdef public double seconds
    cdef readonly Py_ssize_t max_entries
    cdef public object clock
    cdef Entry* entries           # max_entries + 1 of them (an insert may precede the eviction)
    cdef int32_t* slots           # open addressing, linear probing: entry index or -1
    cdef uint64_t mask
    cdef Py_ssize_t count
    cdef int32_t oldest
    cdef int32_t newest
    cdef int32_t free

    # Whether `key` holds a reply to a request with this Request Authenticator (expired or not):
    # a retransmission, for the Python path to answer with `lookup`.
    cdef bint holds(self, const uint8_t* key, const uint8_t* auth) noexcept
    # `store` with the expiry given and no trimming (the caller trims once per batch); the bound
    # `max_entries` still holds after every call.
    cdef int put(self, const uint8_t* key, const uint8_t* auth, bytes reply, double expires) except -1
    # Drop expired entries and any beyond `max_entries`, oldest first.
    cdef int trim(self, double now) except -1

    cdef int32_t _find(self, const uint8_t* key, uint64_t h) noexcept
    cdef void _remove(self, int32_t e) noexcept
