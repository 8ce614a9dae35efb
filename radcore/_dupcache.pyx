# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""The duplicate cache in C: `radcore.dupcache.DuplicateCache`'s behaviour without its objects.

The reference keeps an OrderedDict of `(ip, port, Identifier, kind)` tuples. Under load its cost
was not the logic but the objects: per answered request a key tuple, an address string, a value
tuple, a pop and an insert that touch a dozen scattered allocations. With them the batch loop took
11 µs of a durable accounting request's 50 under the profiler; without them, under 5. Here an entry is one fixed-size struct: the key is 24
octets built straight from the datagram's sockaddr (`sockaddr_key`), the table is open addressing
over a preallocated array, and insertion order is an index-linked list, so the oldest entry is
still the first to expire or be evicted, as in the reference.

The Python methods (`lookup`, `store`, `discard`, `expire`, `len()`) take the reference's tuple keys
and behave as its methods do; the batch loop uses the C methods in `_dupcache.pxd`. Hashing is
keyed with a per-process random seed, so no client can aim its Identifiers at one probe chain.
"""

import os
import time

from cpython.bytes cimport PyBytes_AS_STRING
from cpython.mem cimport PyMem_Free, PyMem_Malloc
from cpython.ref cimport Py_INCREF, Py_XDECREF
from libc.stdint cimport int32_t, uint8_t, uint16_t, uint64_t
from libc.string cimport memcmp, memcpy, memset

from radcore._mmsg cimport AF_INET, AF_INET6, inet_pton, ntohs, sockaddr, sockaddr_in, sockaddr_in6


cdef uint64_t SEED
memcpy(&SEED, PyBytes_AS_STRING(os.urandom(8)), 8)


cdef int sockaddr_key(const sockaddr* sa, uint8_t ident, int kind, uint8_t* key) noexcept:
    cdef uint16_t port
    memset(key, 0, KEY_SIZE)
    if sa.sa_family == AF_INET:
        key[0] = 4
        port = ntohs((<const sockaddr_in*>sa).sin_port)
        memcpy(key + 8, &(<const sockaddr_in*>sa).sin_addr, 4)
    elif sa.sa_family == AF_INET6:
        key[0] = 6
        port = ntohs((<const sockaddr_in6*>sa).sin6_port)
        memcpy(key + 8, &(<const sockaddr_in6*>sa).sin6_addr, 16)
    else:
        return -1
    key[1] = ident
    key[2] = <uint8_t>kind
    memcpy(key + 4, &port, 2)
    return 0


cdef int tuple_key(object key, uint8_t* out) except -1:
    """The reference's (ip text, port, Identifier, kind) as the 24 octets `sockaddr_key` builds.

    A scope suffix ("fe80::1%eth0", as the socket module reports link-local sources) is not part
    of the address the lane sees, so it is not part of the key either.
    """
    ip, port, ident, kind = key
    cdef bytes host = ip.partition("%")[0].encode("ascii")
    cdef uint16_t p = port
    memset(out, 0, KEY_SIZE)
    if inet_pton(AF_INET, host, out + 8) == 1:
        out[0] = 4
    elif inet_pton(AF_INET6, host, out + 8) == 1:
        out[0] = 6
    else:
        raise ValueError(f"not an IP address: {ip!r}")
    out[1] = <uint8_t>ident
    out[2] = <uint8_t>kind
    memcpy(out + 4, &p, 2)
    return 0


cdef inline uint64_t _mix(uint64_t h, uint64_t word) noexcept:
    h = (h ^ word) * <uint64_t>0x9E3779B97F4A7C15
    return h ^ (h >> 31)


cdef inline uint64_t key_hash(const uint8_t* key) noexcept:
    cdef uint64_t a, b, c
    memcpy(&a, key, 8)
    memcpy(&b, key + 8, 8)
    memcpy(&c, key + 16, 8)
    return _mix(_mix(_mix(SEED, a), b), c)


cdef inline bytes _auth16(object authenticator):
    cdef bytes auth = bytes(authenticator)
    if len(auth) != AUTH_SIZE:
        raise ValueError(f"a Request Authenticator is {AUTH_SIZE} octets, got {len(auth)}")
    return auth


cdef class DuplicateCache:
    """Bounded map key → (Request Authenticator, reply bytes, expiry), oldest first, in C.

    Same contract as `radcore.dupcache.DuplicateCache`: `seconds = 0` disables it, `clock`
    returns seconds and is injectable, at most `max_entries` entries are kept.
    """

    def __cinit__(self, double seconds, Py_ssize_t max_entries=65536, clock=time.monotonic):
        cdef Py_ssize_t size = 2, i
        if max_entries < 0 or max_entries >= 2 ** 29:
            raise ValueError(f"max_entries must be in 0..{2 ** 29 - 1}, got {max_entries}")
        self.seconds = seconds
        self.max_entries = max_entries
        self.clock = clock
        while size < 2 * (max_entries + 1):
            size *= 2
        self.mask = size - 1
        self.entries = <Entry*>PyMem_Malloc((max_entries + 1) * sizeof(Entry))
        self.slots = <int32_t*>PyMem_Malloc(size * sizeof(int32_t))
        if self.entries == NULL or self.slots == NULL:
            raise MemoryError()
        for i in range(size):
            self.slots[i] = -1
        for i in range(max_entries + 1):
            self.entries[i].reply = NULL
            self.entries[i].newer = <int32_t>(i + 1) if i < max_entries else -1
        self.free = 0
        self.oldest = -1
        self.newest = -1
        self.count = 0

    def __dealloc__(self):
        cdef int32_t e = self.oldest
        if self.entries != NULL:
            while e >= 0:
                Py_XDECREF(self.entries[e].reply)
                e = self.entries[e].newer
        PyMem_Free(self.entries)
        PyMem_Free(self.slots)

    def __len__(self):
        return self.count

    # -- the reference's API, for the Python path and tests ---------------------------------------

    def lookup(self, key, authenticator):
        """The cached reply if this is an identical retransmission within the window, else None."""
        cdef uint8_t k[KEY_SIZE]
        cdef bytes auth = _auth16(authenticator)
        tuple_key(key, k)
        cdef int32_t e = self._find(k, key_hash(k))
        if e < 0:
            return None
        if self.entries[e].expires <= self.clock():
            self._remove(e)
            return None
        if memcmp(self.entries[e].auth, PyBytes_AS_STRING(auth), AUTH_SIZE) != 0:
            return None
        return <object>self.entries[e].reply

    def store(self, key, authenticator, bytes reply):
        """Remember the reply sent for (key, authenticator), replacing any older request's entry."""
        cdef uint8_t k[KEY_SIZE]
        cdef bytes auth = _auth16(authenticator)
        if self.seconds <= 0:
            return
        tuple_key(key, k)
        now = self.clock()
        self.put(k, <const uint8_t*>PyBytes_AS_STRING(auth), reply, now + self.seconds)
        self.trim(now)

    def discard(self, key):
        """Forget a key: its newest request got no reply, so a retransmission is processed again."""
        cdef uint8_t k[KEY_SIZE]
        tuple_key(key, k)
        cdef int32_t e = self._find(k, key_hash(k))
        if e >= 0:
            self._remove(e)

    def expire(self):
        """Drop expired entries now (the worker calls this from its idle tick); returns how many."""
        cdef Py_ssize_t before = self.count
        self.trim(self.clock())
        return before - self.count

    # -- C API (see _dupcache.pxd) ---------------------------------------------------------------

    cdef bint holds(self, const uint8_t* key, const uint8_t* auth) noexcept:
        cdef int32_t e = self._find(key, key_hash(key))
        return e >= 0 and memcmp(self.entries[e].auth, auth, AUTH_SIZE) == 0

    cdef int put(self, const uint8_t* key, const uint8_t* auth, bytes reply, double expires) except -1:
        cdef uint64_t h = key_hash(key)
        cdef uint64_t s
        cdef int32_t e = self._find(key, h)
        if e >= 0:
            self._remove(e)  # re-inserted last: the list is oldest first
        e = self.free  # one is always free: between calls at most max_entries of max_entries + 1 are used
        self.free = self.entries[e].newer
        memcpy(self.entries[e].key, key, KEY_SIZE)
        memcpy(self.entries[e].auth, auth, AUTH_SIZE)
        self.entries[e].expires = expires
        self.entries[e].hash = h
        Py_INCREF(reply)
        self.entries[e].reply = <PyObject*>reply
        self.entries[e].older = self.newest
        self.entries[e].newer = -1
        if self.newest >= 0:
            self.entries[self.newest].newer = e
        else:
            self.oldest = e
        self.newest = e
        s = h & self.mask
        while self.slots[s] >= 0:
            s = (s + 1) & self.mask
        self.slots[s] = e
        self.count += 1
        if self.count > self.max_entries:
            self._remove(self.oldest)
        return 0

    cdef int trim(self, double now) except -1:
        while self.oldest >= 0:
            if self.entries[self.oldest].expires > now and self.count <= self.max_entries:
                break
            self._remove(self.oldest)
        return 0

    # -- internals -------------------------------------------------------------------------------

    cdef int32_t _find(self, const uint8_t* key, uint64_t h) noexcept:
        cdef uint64_t s = h & self.mask
        cdef int32_t e
        while True:
            e = self.slots[s]
            if e < 0:
                return -1
            if self.entries[e].hash == h and memcmp(self.entries[e].key, key, KEY_SIZE) == 0:
                return e
            s = (s + 1) & self.mask

    cdef void _remove(self, int32_t e) noexcept:
        """Unlink entry `e` from the table and the order list, release its reply, free it."""
        cdef uint64_t s = self.entries[e].hash & self.mask
        cdef uint64_t j, home
        cdef int32_t older = self.entries[e].older, newer = self.entries[e].newer
        cdef PyObject* reply = self.entries[e].reply
        while self.slots[s] != e:
            s = (s + 1) & self.mask
        # Backward-shift deletion: pull later members of the probe run into the hole when their
        # home slot does not lie cyclically in (hole, their slot], so no lookup stops early.
        j = s
        while True:
            j = (j + 1) & self.mask
            if self.slots[j] < 0:
                break
            home = self.entries[self.slots[j]].hash & self.mask
            if ((j - home) & self.mask) >= ((j - s) & self.mask):
                self.slots[s] = self.slots[j]
                s = j
        self.slots[s] = -1
        if older >= 0:
            self.entries[older].newer = newer
        else:
            self.oldest = newer
        if newer >= 0:
            self.entries[newer].older = older
        else:
            self.newest = older
        self.entries[e].reply = NULL
        self.entries[e].newer = self.free
        self.free = e
        self.count -= 1
        Py_XDECREF(reply)
